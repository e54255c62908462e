// The playground: speaks through this server's own API, as any other client would. The ranges,
// defaults, voices, formats and tags all come from the server; nothing here is a copy of them.
"use strict";

(() => {
  const SPEECH = "/v1/audio/speech";
  // The API's pcm format: signed 16-bit little-endian samples, 24 kHz, mono.
  const SAMPLE_RATE = 24000;
  const BYTES_PER_SAMPLE = 2;
  const KEY_STORAGE = "orpheus-local.api-key";
  const NUMBER_FIELDS = ["temperature", "top_p", "repetition_penalty", "max_new_tokens", "speed"];
  // Built here from the streamed samples; the other formats are asked of the server again.
  const LOCAL_FORMATS = new Set(["wav", "pcm"]);
  const START_LEAD_S = 0.05; // scheduling a buffer for "now" would clip its first milliseconds
  const PEAK_SAMPLES = 240; // the waveform keeps one min/max pair per 10 ms
  const MIN_VIEW_S = 5; // the waveform's width shows at least this much, so it grows as audio comes
  const READY_POLL_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("server-status"),
    keyPanel: $("key-panel"),
    keyForm: $("key-form"),
    key: $("api-key"),
    forgetKey: $("forget-key"),
    form: $("speak-form"),
    text: $("text"),
    tags: $("tags"),
    voice: $("voice"),
    seed: $("seed"),
    reset: $("reset"),
    speak: $("speak"),
    stop: $("stop"),
    error: $("error"),
    ttfa: $("ttfa"),
    rtf: $("rtf"),
    seconds: $("seconds"),
    canvas: $("waveform"),
    takeState: $("take-state"),
    download: $("download"),
    downloads: $("current-downloads"),
    takes: $("takes"),
    takesEmpty: $("takes-empty"),
    template: $("take-template"),
  };

  const session = {
    properties: null, // the SpeechRequest schema's fields, from /openapi.json
    formats: [],
    context: null, // one AudioContext for the page, made on the first Speak (a user gesture)
    player: null,
    current: null, // the take being generated or played
    controller: null,
    takes: 0,
    watchingReadiness: false,
  };

  // --- the API ---------------------------------------------------------------------------------

  function storedKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return ""; // storage disabled: the page still works on an open server
    }
  }

  function authHeaders() {
    const key = storedKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // {status, message, param} from an answer that is not a success, in either of the API's shapes:
  // {"error": "message"} or {"error": {"message", "param", ...}}.
  async function apiError(response) {
    let message = "";
    let param = null;
    try {
      const { error } = await response.json();
      if (typeof error === "string") {
        message = error;
      } else if (error && typeof error === "object") {
        message = error.message || "";
        param = error.param || null;
      }
    } catch {
      // not JSON: the status says what there is to say
    }
    return { status: response.status, message: message || `HTTP ${response.status}`, param };
  }

  async function getJson(path, withKey = true) {
    const response = await fetch(path, { headers: withKey ? authHeaders() : {}, cache: "no-store" });
    if (!response.ok) throw await apiError(response);
    return response.json();
  }

  function speechRequest(body, signal) {
    return fetch(SPEECH, {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
  }

  // --- messages --------------------------------------------------------------------------------

  function describe(error) {
    switch (error.status) {
      case 0:
        return `The server could not be reached: ${error.message}`;
      case 401:
        return `The server needs a valid API key (401): ${error.message}`;
      case 429:
        return `The server is busy (429): ${error.message}`;
      case 503:
        return `The server is not ready (503): ${error.message}`;
      default:
        return error.message;
    }
  }

  function fieldInput(param) {
    return param === "input" ? ui.text : param === "api_key" ? ui.key : $(param);
  }

  function showFieldError(param, message) {
    const slot = document.querySelector(`[data-error-for="${CSS.escape(param)}"]`);
    if (!slot) return false;
    slot.textContent = message;
    const input = fieldInput(param);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
    return true;
  }

  function showError(error) {
    ui.error.textContent = describe(error);
    if (error.status === 401) {
      showKeyPanel();
      showFieldError("api_key", error.message);
    } else if (error.param) {
      // "voice.id" is the voice field's fault
      showFieldError(error.param, error.message) || showFieldError(error.param.split(".")[0], error.message);
    }
    if (error.status === 503) watchReadiness();
  }

  function clearErrors() {
    ui.error.textContent = "";
    for (const slot of document.querySelectorAll("[data-error-for]")) slot.textContent = "";
    for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  // /ready is open: it says whether the model is loaded before any key is known.
  async function watchReadiness() {
    if (session.watchingReadiness) return;
    session.watchingReadiness = true;
    try {
      for (;;) {
        let body = {};
        let ready = false;
        try {
          const response = await fetch("/ready", { cache: "no-store" });
          ready = response.ok;
          body = await response.json().catch(() => ({}));
        } catch {
          body = { status: "unreachable" };
        }
        if (ready) {
          setStatus("ready", "Model ready");
          return;
        }
        const texts = {
          loading: "Model loading…",
          draining: "Server stopping",
          failed: `Model failed to load: ${body.error || "see the server's log"}`,
          unreachable: "Server unreachable",
        };
        setStatus(body.status || "unknown", texts[body.status] || "Server not ready");
        if (body.status === "failed") return;
        await new Promise((resolve) => setTimeout(resolve, READY_POLL_MS));
      }
    } finally {
      session.watchingReadiness = false;
    }
  }

  // --- the API key -----------------------------------------------------------------------------

  function showKeyPanel() {
    ui.keyPanel.hidden = false;
    ui.key.value = storedKey();
  }

  function useKey(key) {
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      // storage disabled: nothing to keep it in
    }
    clearErrors();
    loadConfig();
  }

  // --- controls from the server's own schema ---------------------------------------------------

  function resolve(document_, schema) {
    while (schema && schema.$ref) {
      schema = schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node[key], document_);
    }
    return schema;
  }

  function speechProperties(openapi) {
    const body = openapi.paths[SPEECH].post.requestBody.content["application/json"].schema;
    return resolve(openapi, body).properties;
  }

  // A field's range and default; an optional field keeps its bounds in one of its anyOf variants.
  function bounds(property) {
    const variants = [property, ...(property.anyOf || [])];
    const first = (...names) => {
      for (const variant of variants) {
        for (const name of names) if (typeof variant[name] === "number") return variant[name];
      }
      return undefined;
    };
    return {
      min: first("minimum", "ge"),
      max: first("maximum", "le"),
      default: property.default,
    };
  }

  function numberField(name) {
    const box = document.querySelector(`[data-field="${name}"]`);
    return { box, number: $(name), range: box.querySelector('input[type="range"]'), hint: $(`${name}-range`) };
  }

  function applySchema(properties) {
    session.properties = properties;
    for (const name of NUMBER_FIELDS) {
      const { box, number, range, hint } = numberField(name);
      box.hidden = !properties[name];
      if (!properties[name]) continue;
      const { min, max, default: value } = bounds(properties[name]);
      for (const input of [number, range]) {
        input.min = min;
        input.max = max;
      }
      number.dataset.default = value;
      hint.textContent = `${min} to ${max}; default ${value}`;
    }
    const seed = properties.seed && bounds(properties.seed);
    if (seed) $("seed-range").textContent = `${seed.min} or more; empty: a new random seed each take.`;
    session.formats = (properties.response_format && properties.response_format.enum) || ["wav", "pcm"];
    resetSettings();
  }

  function resetSettings() {
    for (const name of NUMBER_FIELDS) {
      const { number, range } = numberField(name);
      if (number.dataset.default === undefined) continue;
      number.value = range.value = number.dataset.default;
    }
    ui.seed.value = "";
  }

  function fillVoices(voices) {
    ui.voice.replaceChildren();
    for (const name of voices.voices) ui.voice.add(new Option(name, name, false, name === voices.default));
    const mapped = Object.entries(voices.openai_voices || {});
    if (mapped.length) {
      const group = document.createElement("optgroup");
      group.label = "OpenAI voice names";
      for (const [name, voice] of mapped) group.append(new Option(`${name} (${voice})`, name));
      ui.voice.append(group);
    }
    ui.voice.disabled = false;
  }

  function fillTags(tags) {
    ui.tags.replaceChildren();
    for (const tag of tags) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "tag";
      button.textContent = `<${tag}>`;
      button.setAttribute("aria-label", `Insert the ${tag} tag`);
      button.addEventListener("click", () => insertAtCursor(`<${tag}>`));
      ui.tags.append(button);
    }
  }

  function insertAtCursor(tag) {
    const { text } = ui;
    const start = text.selectionStart;
    const end = text.selectionEnd;
    const before = text.value.slice(0, start);
    const after = text.value.slice(end);
    const lead = before && !/\s$/.test(before) ? " " : "";
    const trail = !after || !/^\s/.test(after) ? " " : "";
    text.setRangeText(lead + tag + trail, start, end, "end");
    text.focus();
  }

  async function loadConfig() {
    ui.speak.disabled = true;
    try {
      const [voices, openapi, tags] = await Promise.all([
        getJson("/v1/audio/voices"),
        getJson("/openapi.json"),
        getJson("/playground/tags.json", false),
      ]);
      applySchema(speechProperties(openapi));
      fillVoices(voices);
      fillTags(tags.tags);
      ui.speak.disabled = Boolean(session.controller);
      if (storedKey()) showKeyPanel();
    } catch (error) {
      showError(error.status === undefined ? { status: 0, message: String(error.message || error) } : error);
    }
  }

  // The request as the form says, for a streamed pcm answer; null (and the field's message) when
  // a number field holds something that is not a number.
  function requestBody() {
    const body = { input: ui.text.value, voice: ui.voice.value, response_format: "pcm", stream: true };
    for (const name of NUMBER_FIELDS) {
      const { box, number } = numberField(name);
      if (box.hidden) continue;
      if (number.validity.badInput) {
        ui.error.textContent = `${name}: not a number`;
        showFieldError(name, `${name}: not a number`);
        return null;
      }
      if (number.value !== "") body[name] = Number(number.value);
    }
    const seed = ui.seed.value.trim();
    if (seed === "") {
      body.seed = crypto.getRandomValues(new Uint32Array(1))[0]; // kept, so a take can be made again
    } else {
      // digits past JavaScript's exact integers go as written: the server reads them exactly
      body.seed = /^\d+$/.test(seed) && Number.isSafeInteger(Number(seed)) ? Number(seed) : seed;
    }
    return body;
  }

  // --- audio -----------------------------------------------------------------------------------

  // Bytes of s16le as they arrive (a read may split a sample) -> whole samples.
  class PcmAssembler {
    constructor() {
      this.carry = null;
      this.pieces = [];
      this.bytes = 0;
    }

    push(chunk) {
      let bytes = chunk;
      if (this.carry) {
        bytes = new Uint8Array(chunk.length + 1);
        bytes[0] = this.carry;
        bytes.set(chunk, 1);
        this.carry = null;
      }
      const whole = bytes.length - (bytes.length % BYTES_PER_SAMPLE);
      if (whole < bytes.length) this.carry = bytes[whole];
      const piece = bytes.subarray(0, whole);
      if (piece.length) {
        this.pieces.push(piece);
        this.bytes += piece.length;
      }
      return piece;
    }

    get samples() {
      return this.bytes / BYTES_PER_SAMPLE;
    }
  }

  function toFloat(piece) {
    const view = new DataView(piece.buffer, piece.byteOffset, piece.byteLength);
    const samples = new Float32Array(piece.byteLength / BYTES_PER_SAMPLE);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * BYTES_PER_SAMPLE, true) / 32768;
    return samples;
  }

  function wavHeader(dataBytes) {
    const header = new DataView(new ArrayBuffer(44));
    const ascii = (offset, text) => [...text].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
    ascii(0, "RIFF");
    header.setUint32(4, 36 + dataBytes, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    header.setUint32(16, 16, true); // the fmt chunk's size
    header.setUint16(20, 1, true); // integer PCM
    header.setUint16(22, 1, true); // mono
    header.setUint32(24, SAMPLE_RATE, true);
    header.setUint32(28, SAMPLE_RATE * BYTES_PER_SAMPLE, true);
    header.setUint16(32, BYTES_PER_SAMPLE, true);
    header.setUint16(34, 8 * BYTES_PER_SAMPLE, true);
    ascii(36, "data");
    header.setUint32(40, dataBytes, true);
    return header.buffer;
  }

  // Plays samples as they come: each piece is a buffer scheduled right after the one before, so
  // playback starts with the first piece and runs on while the rest is generated.
  class StreamPlayer {
    constructor(context) {
      this.context = context;
      this.sources = new Set();
      this.segments = []; // {at: context time, offset: first sample, length}
      this.samples = 0;
      this.end = 0; // context time at which everything scheduled has played
    }

    play(samples) {
      const { context } = this;
      const buffer = context.createBuffer(1, samples.length, SAMPLE_RATE);
      buffer.copyToChannel(samples, 0);
      const source = context.createBufferSource();
      source.buffer = buffer;
      source.connect(context.destination);
      // after an underrun (generation slower than playback) start again a little ahead of now
      const at = Math.max(this.end, context.currentTime + START_LEAD_S);
      source.start(at);
      source.addEventListener("ended", () => this.sources.delete(source));
      this.sources.add(source);
      this.segments.push({ at, offset: this.samples, length: samples.length });
      this.samples += samples.length;
      this.end = at + buffer.duration;
    }

    // Samples played so far.
    position() {
      const now = this.context.currentTime;
      let played = 0;
      for (const { at, offset, length } of this.segments) {
        if (now < at) break;
        played = offset + Math.min(length, (now - at) * SAMPLE_RATE);
      }
      return played;
    }

    get playing() {
      return this.sources.size > 0;
    }

    stop() {
      for (const source of this.sources) source.stop();
      this.sources.clear();
    }
  }

  // Min/max per PEAK_SAMPLES, kept as the samples come, drawn with the played part highlighted.
  class Waveform {
    constructor(canvas) {
      this.canvas = canvas;
      this.clear();
    }

    clear() {
      this.fit = false; // true once the audio is complete: it then fills the width
      this.lows = [];
      this.highs = [];
      this.filled = PEAK_SAMPLES; // samples in the last pair; full: the next sample opens a pair
    }

    add(samples) {
      for (const sample of samples) {
        if (this.filled === PEAK_SAMPLES) {
          this.lows.push(sample);
          this.highs.push(sample);
          this.filled = 0;
        }
        const last = this.lows.length - 1;
        if (sample < this.lows[last]) this.lows[last] = sample;
        if (sample > this.highs[last]) this.highs[last] = sample;
        this.filled++;
      }
    }

    draw(played = 0) {
      const { canvas } = this;
      const scale = window.devicePixelRatio || 1;
      const width = Math.max(1, Math.round(canvas.clientWidth * scale));
      const height = Math.max(1, Math.round(canvas.clientHeight * scale));
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
      const style = getComputedStyle(canvas);
      const g = canvas.getContext("2d");
      g.clearRect(0, 0, width, height);
      const middle = height / 2;
      g.fillStyle = style.getPropertyValue("--axis");
      g.fillRect(0, Math.floor(middle), width, Math.max(1, Math.round(scale)));
      const pairs = this.lows.length;
      const shown = this.fit ? pairs : Math.max(pairs, (MIN_VIEW_S * SAMPLE_RATE) / PEAK_SAMPLES);
      const perPixel = shown / width;
      const playedPairs = played / PEAK_SAMPLES;
      const colors = [style.getPropertyValue("--wave-played"), style.getPropertyValue("--wave")];
      for (let x = 0; x < width; x++) {
        const from = Math.floor(x * perPixel);
        if (from >= pairs) break;
        const to = Math.min(pairs, Math.max(from + 1, Math.floor((x + 1) * perPixel)));
        let low = 0;
        let high = 0;
        for (let i = from; i < to; i++) {
          low = Math.min(low, this.lows[i]);
          high = Math.max(high, this.highs[i]);
        }
        g.fillStyle = colors[from < playedPairs ? 0 : 1];
        g.fillRect(x, middle - high * middle, 1, Math.max(1, (high - low) * middle));
      }
    }
  }

  const waveform = new Waveform(ui.canvas);

  // The waveform, and how much of it has been heard (also as text, for screen readers and tests).
  function drawWaveform() {
    const played = session.player ? session.player.position() : 0;
    waveform.draw(played);
    const heard = seconds(played).toFixed(2);
    const total = seconds(session.current ? session.current.pcm.samples : 0).toFixed(2);
    ui.canvas.dataset.playedS = heard;
    ui.canvas.setAttribute("aria-label", `Waveform: ${heard} of ${total} s played`);
  }

  // --- takes -----------------------------------------------------------------------------------

  function seconds(samples) {
    return samples / SAMPLE_RATE;
  }

  function fileName(take, format) {
    return `orpheus-take-${take.number}-${take.body.voice}.${format}`;
  }

  function setTakeState(state, text) {
    ui.takeState.dataset.state = state;
    ui.takeState.textContent = text;
  }

  function showStats(take) {
    ui.ttfa.textContent = take.ttfaMs === null ? "" : `${Math.round(take.ttfaMs)} ms`;
    const audio = seconds(take.pcm.samples);
    ui.seconds.textContent = take.pcm.samples ? `${audio.toFixed(2)} s` : "";
    const elapsed = ((take.totalMs ?? performance.now() - take.started) || 0) / 1000;
    ui.rtf.textContent = audio > 0 ? `${(elapsed / audio).toFixed(2)}` : "";
  }

  function newTake(body) {
    session.takes += 1;
    return {
      number: session.takes,
      body,
      pcm: new PcmAssembler(),
      started: performance.now(),
      ttfaMs: null,
      totalMs: null,
      requestId: null,
      state: "connecting",
      complete: false, // the server sent all of it (not stopped, not cut)
      urls: {}, // format -> object URL of that file
    };
  }

  function localFile(take, format) {
    if (!take.urls[format]) {
      const parts = format === "wav" ? [wavHeader(take.pcm.bytes), ...take.pcm.pieces] : take.pcm.pieces;
      const type = format === "wav" ? "audio/wav" : "application/octet-stream";
      take.urls[format] = URL.createObjectURL(new Blob(parts, { type }));
    }
    return take.urls[format];
  }

  function downloadLink(take, format, link = document.createElement("a")) {
    link.href = take.urls[format];
    link.download = fileName(take, format);
    link.className = "button";
    link.textContent = format.toUpperCase();
    link.hidden = false;
    return link;
  }

  // Another format: the same request (text, voice, settings, seed) answered as one file.
  async function fetchFormat(take, format, button, errorSlot) {
    button.disabled = true;
    button.textContent = `${format.toUpperCase()}…`;
    errorSlot.textContent = "";
    try {
      const response = await speechRequest({ ...take.body, response_format: format, stream: false });
      if (!response.ok) {
        const error = await apiError(response);
        errorSlot.textContent = describe(error);
        if (error.status === 401) showKeyPanel();
        button.disabled = false;
        button.textContent = format.toUpperCase();
        return;
      }
      take.urls[format] = URL.createObjectURL(await response.blob());
    } catch (error) {
      errorSlot.textContent = describe({ status: 0, message: error.message });
      button.disabled = false;
      button.textContent = format.toUpperCase();
      return;
    }
    for (const other of document.querySelectorAll(`[data-take="${take.number}"][data-format="${format}"]`)) {
      const link = mark(downloadLink(take, format), take, format);
      other.replaceWith(link);
      if (other === button) link.click(); // the download asked for
    }
  }

  // Which take and format a download control is for (a link replaces a button once fetched).
  function mark(control, take, format) {
    control.dataset.take = take.number;
    control.dataset.format = format;
    control.setAttribute("aria-label", `Download take ${take.number} as ${format}`);
    return control;
  }

  // One download per format: wav and pcm from the samples here, the others on request.
  function fillDownloads(take, container, errorSlot, skip = new Set()) {
    for (const format of session.formats) {
      if (skip.has(format)) continue;
      let control;
      if (LOCAL_FORMATS.has(format)) {
        localFile(take, format);
        control = downloadLink(take, format);
      } else if (take.urls[format]) {
        control = downloadLink(take, format);
      } else if (take.complete) {
        control = document.createElement("button");
        control.type = "button";
        control.textContent = format.toUpperCase();
        control.title = `Made again by the server as ${format}, with the same seed`;
        control.addEventListener("click", () => fetchFormat(take, format, control, errorSlot));
      } else {
        continue; // a stopped take's other formats would be the whole audio, not what was heard
      }
      container.append(mark(control, take, format));
    }
  }

  function describeParams(body) {
    const names = [...NUMBER_FIELDS, "seed"].filter((name) => body[name] !== undefined);
    return names.map((name) => `${name} ${body[name]}`).join(" · ");
  }

  function addTake(take) {
    const item = ui.template.content.firstElementChild.cloneNode(true);
    const audio = seconds(take.pcm.samples);
    const stopped = take.state === "stopped" ? " (stopped)" : "";
    item.querySelector(".take-title").textContent =
      `Take ${take.number} · ${take.body.voice} · ${audio.toFixed(2)} s${stopped}`;
    const player = item.querySelector("audio");
    player.src = localFile(take, "wav");
    player.setAttribute("aria-label", `Take ${take.number}`);
    const rtf = audio > 0 ? (take.totalMs / 1000 / audio).toFixed(2) : "–";
    const ttfa = take.ttfaMs === null ? "–" : `${Math.round(take.ttfaMs)} ms`;
    item.querySelector(".take-stats").textContent =
      `first audio ${ttfa} · real-time factor ${rtf} · request ${take.requestId || "–"}`;
    item.querySelector(".take-params").textContent = describeParams(take.body);
    item.querySelector(".take-text").textContent = take.body.input;
    const downloads = item.querySelector(".downloads");
    downloads.setAttribute("aria-label", `Download take ${take.number}`);
    fillDownloads(take, downloads, item.querySelector(".take-error"));
    item.querySelector(".reuse").addEventListener("click", () => reuse(take.body));
    ui.takes.prepend(item);
    ui.takesEmpty.hidden = true;
  }

  function reuse(body) {
    ui.text.value = body.input;
    ui.voice.value = body.voice;
    for (const name of NUMBER_FIELDS) {
      const { number, range } = numberField(name);
      if (body[name] !== undefined) number.value = range.value = body[name];
    }
    ui.seed.value = String(body.seed);
    ui.text.focus();
  }

  function showCurrentDownloads(take) {
    for (const extra of ui.downloads.querySelectorAll("[data-format]:not(#download)")) extra.remove();
    if (!take) {
      ui.download.hidden = true;
      return;
    }
    localFile(take, "wav");
    downloadLink(take, "wav", ui.download).textContent = "Download WAV";
    fillDownloads(take, ui.downloads, ui.error, new Set(["wav"]));
  }

  // --- speaking --------------------------------------------------------------------------------

  function audioContext() {
    if (!session.context) session.context = new AudioContext({ latencyHint: "interactive" });
    if (session.context.state === "suspended") session.context.resume();
    return session.context;
  }

  function updateButtons() {
    const generating = Boolean(session.controller);
    ui.speak.disabled = generating || !session.properties;
    ui.stop.disabled = !generating && !(session.player && session.player.playing);
  }

  function animate() {
    const take = session.current;
    const player = session.player;
    if (!take || !player) return;
    drawWaveform();
    if (take.state === "streaming") showStats(take);
    if (take.state === "playing" && !player.playing) {
      take.state = "done";
      setTakeState("done", doneText(take));
    }
    updateButtons();
    if (take.state === "streaming" || take.state === "connecting" || player.playing) requestAnimationFrame(animate);
  }

  function doneText(take) {
    return `Done: ${seconds(take.pcm.samples).toFixed(2)} s of audio in ${(take.totalMs / 1000).toFixed(2)} s.`;
  }

  async function speak() {
    if (session.controller) return;
    clearErrors();
    const body = requestBody();
    if (!body) return;
    const context = audioContext(); // made and resumed here, within the click that asked for sound
    if (session.player) session.player.stop();
    const take = newTake(body);
    const player = new StreamPlayer(context);
    const controller = new AbortController();
    Object.assign(session, { current: take, player, controller });
    waveform.clear();
    showStats(take);
    showCurrentDownloads(null);
    setTakeState("connecting", "Waiting for the first audio…");
    updateButtons();
    requestAnimationFrame(animate);
    try {
      const response = await speechRequest(body, controller.signal);
      if (!response.ok) {
        take.state = "failed";
        showError(await apiError(response));
        setTakeState("failed", "No audio: see the message above.");
        return;
      }
      take.requestId = response.headers.get("X-Request-Id");
      take.state = "streaming";
      setTakeState("streaming", "Streaming: playing as it is generated…");
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const piece = take.pcm.push(value);
        if (!piece.length) continue;
        const samples = toFloat(piece);
        if (take.ttfaMs === null) take.ttfaMs = performance.now() - take.started;
        player.play(samples);
        waveform.add(samples);
        showStats(take);
      }
      take.totalMs = performance.now() - take.started;
      take.complete = true;
      waveform.fit = true;
      take.state = player.playing ? "playing" : "done";
      setTakeState(take.state, take.state === "done" ? doneText(take) : "Generated; playing the rest…");
    } catch (error) {
      if (!controller.signal.aborted) {
        take.state = "failed";
        showError({ status: 0, message: error.message });
        setTakeState("failed", "The audio stopped: see the message above.");
        if (!take.pcm.samples) return;
      }
      take.totalMs = performance.now() - take.started;
      take.state = "stopped";
      setTakeState("stopped", `Stopped after ${seconds(take.pcm.samples).toFixed(2)} s of audio.`);
    } finally {
      session.controller = null;
      updateButtons();
    }
    showStats(take);
    drawWaveform();
    if (take.pcm.samples) {
      showCurrentDownloads(take);
      addTake(take);
    }
  }

  function stop() {
    if (session.controller) session.controller.abort(); // the server sees the hang-up and stops generating
    if (session.player) session.player.stop();
    const take = session.current;
    if (take && take.state === "playing") {
      take.state = "done";
      setTakeState("done", doneText(take));
    }
    updateButtons();
  }

  // --- wiring ----------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    speak();
  });
  ui.stop.addEventListener("click", stop);
  ui.reset.addEventListener("click", resetSettings);
  ui.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !ui.stop.disabled) stop();
  });
  for (const name of NUMBER_FIELDS) {
    const { number, range } = numberField(name);
    range.addEventListener("input", () => {
      number.value = range.value;
    });
    number.addEventListener("input", () => {
      if (number.value !== "") range.value = number.value;
    });
  }
  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useKey(ui.key.value.trim());
  });
  ui.forgetKey.addEventListener("click", () => {
    ui.key.value = "";
    useKey("");
  });
  new ResizeObserver(drawWaveform).observe(ui.canvas);

  watchReadiness();
  loadConfig();
})();
