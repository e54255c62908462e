"""The playground at /, in a real browser: headless Chromium driven by Selenium against real
`orpheus-local serve --demo` processes, one open and one with API keys.

Without Chromium and its driver the browser tests are skipped, unless ORPHEUS_REQUIRE_BROWSER is set
(.ci/run sets it, so CI runs them). ORPHEUS_SCREENSHOT=docs/playground.png saves the screenshot
taken after a successful speak where the README shows it.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from support.process import start_server
from support.wav import wav_samples

from orpheus_local.text.tags import SUPPORTED_TAGS
from orpheus_local.tokens import SAMPLE_RATE
from server.auth import OPEN_PATHS
from server.routes import playground
from server.routes.playground import STATIC

ROOT = Path(__file__).resolve().parent.parent
KEY = "playground-key-3f9a1c"
TEXT = "Hello there, how are you?"
# Four sentences at the most tokens each: a request that runs far longer than the stop test needs.
LONG_TEXT = " ".join(f"This is sentence number {n} of a long reading." for n in range(1, 5))
QUICK = {"max_new_tokens": "100", "seed": "7"}  # a few seconds of audio (the random weights run to the cap)
WAIT_S = 60


def _browser_paths() -> tuple[str, str] | None:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


BROWSER = _browser_paths()
needs_browser = pytest.mark.skipif(
    BROWSER is None and not os.environ.get("ORPHEUS_REQUIRE_BROWSER"),
    reason="Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server(demo_config, demo_dirs):
    process = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu",
                           "--backend", demo_config.backend)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def keyed_server(demo_config, demo_dirs, tmp_path_factory):
    """With a key, and one request in flight at most: a second one gets 429."""
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"{KEY}\n")
    process = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu",
                           "--backend", demo_config.backend, "--api-keys-file", str(keys), "--max-in-flight", "1")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    assert BROWSER is not None, "ORPHEUS_REQUIRE_BROWSER is set but Chromium or chromedriver is missing"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER[0]
    # --no-sandbox: CI runs as root; the autoplay policy lets the AudioContext start without a real user
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(BROWSER[1]), options=options)
    yield driver
    driver.quit()


# --- helpers -------------------------------------------------------------------------------------


def until(driver, condition, timeout: float = WAIT_S, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(), message)


def by_testid(driver, testid: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def open_page(driver, server, key: str | None = None) -> None:
    """The page fresh, with key (or none) in its storage."""
    driver.get(server.base_url + "/")
    driver.execute_script("localStorage.clear(); if (arguments[0]) localStorage.setItem('orpheus-local.api-key', "
                          "arguments[0]);", key)
    driver.refresh()
    driver.get_log("browser")  # what is logged from here on is this page's


def voices_listed(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('[data-testid=voice] option')]"
                                 ".map(o => o.value)")


def fill(driver, fields: dict[str, str]) -> None:
    for name, value in fields.items():
        element = by_testid(driver, "text") if name == "input" else by_id(driver, name)
        element.clear()
        element.send_keys(value)


def take_state(driver) -> str:
    return by_id(driver, "take-state").get_attribute("data-state")


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def downloaded(folder: Path, name: str, timeout: float = WAIT_S) -> bytes:
    """A finished download's bytes (Chromium writes name.crdownload until it is done)."""
    path, deadline = folder / name, time.monotonic() + timeout
    while not path.exists() or path.with_name(name + ".crdownload").exists():
        assert time.monotonic() < deadline, f"{name} was not downloaded; {sorted(os.listdir(folder))}"
        time.sleep(0.05)
    return path.read_bytes()


def metrics(server, **headers) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics", headers=headers, timeout=10).text
    return {name: float(value) for name, value in re.findall(r"^(\w+) ([-\d.e+]+)$", text, re.MULTILINE)}


def api_message(server, body: dict, **headers) -> str:
    response = httpx.post(server.base_url + "/v1/audio/speech", json=body, headers=headers, timeout=30)
    assert response.status_code >= 400
    return response.json()["error"]["message"]


def full_page_png(driver) -> bytes:
    """The whole page, below the window's height too (Chromium's DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    return base64.b64decode(shot["data"])


# Set before Speak: what the page shows at the moment the time to first audio appears.
RECORD_FIRST_AUDIO = """
const ttfa = document.querySelector('[data-testid="ttfa"]');
window.atFirstAudio = null;
new MutationObserver((_, observer) => {
  if (!ttfa.textContent) return;
  window.atFirstAudio = {ttfa: ttfa.textContent, state: document.getElementById("take-state").dataset.state,
                         seconds: document.getElementById("seconds").textContent};
  observer.disconnect();
}).observe(ttfa, {childList: true, characterData: true, subtree: true});
"""


# --- the page over HTTP: open, self-contained ------------------------------------------------------


def test_the_page_and_its_assets_are_open_and_the_api_still_needs_a_key(keyed_server):
    with httpx.Client(base_url=keyed_server.base_url, timeout=10) as client:
        page = client.get("/")
        script, style = client.get("/playground/playground.js"), client.get("/playground/playground.css")
        tags = client.get("/playground/tags.json")
        unknown = client.get("/playground/secrets.txt")
        api = [client.get("/v1/audio/voices"), client.get("/openapi.json"), client.get("/metrics")]
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text == (STATIC / "index.html").read_text()
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == style.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert tags.json() == {"tags": list(SUPPORTED_TAGS)}
    assert unknown.status_code == 401  # like any other path: a key first, then "not found"
    assert [r.status_code for r in api] == [401, 401, 401]


def test_only_the_pages_own_paths_are_open(keyed_server):
    served = {route.path for route in playground.router.routes}
    assert served == set(OPEN_PATHS) - {"/health", "/ready"}
    # sent as written (an HTTP client would resolve the dots): no way around the key from an open path
    port = int(keyed_server.base_url.rsplit(":", 1)[1])
    for path in ("/playground/../metrics", "/playground/%2e%2e/metrics", "/playground/..%2fmetrics"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:200])
        assert b"orpheus_requests" not in answer


def test_the_page_loads_nothing_from_elsewhere():
    for name in ("index.html", "playground.js", "playground.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", text), name  # no CDN, works offline
        assert "@import" not in text and "url(" not in text, name
    references = re.findall(r'(?:src|href)="([^"]+)"', (STATIC / "index.html").read_text())
    assert references and all(ref.startswith(("/playground/", "data:")) for ref in references)


def test_the_package_ships_every_file_of_the_page():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = config["tool"]["setuptools"]["package-data"]["server"]
    files = [path.relative_to(STATIC.parent).as_posix() for path in STATIC.rglob("*") if path.is_file()]
    assert {"static/index.html", "static/playground.js", "static/playground.css"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in shipped)] == []


# --- in the browser --------------------------------------------------------------------------------


@needs_browser
def test_the_page_loads_without_console_errors_with_the_servers_voices_ranges_and_tags(browser, server):
    open_page(browser, server)
    until(browser, lambda: voices_listed(browser), message="no voices listed")
    voices = httpx.get(server.base_url + "/v1/audio/voices").json()
    schema = httpx.get(server.base_url + "/openapi.json").json()["paths"]["/v1/audio/speech"]["post"]
    properties = schema["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert voices_listed(browser) == voices["voices"] + list(voices["openai_voices"])
    assert by_testid(browser, "voice").get_attribute("value") == voices["default"]
    for name in ("temperature", "top_p", "repetition_penalty", "max_new_tokens", "speed"):
        field = by_id(browser, name)
        shown = [float(field.get_attribute(a)) for a in ("min", "max", "value")]
        assert shown == [properties[name]["minimum"], properties[name]["maximum"], properties[name]["default"]]
    tags = browser.execute_script("return [...document.querySelectorAll('#tags button')].map(b => b.textContent)")
    assert tags == [f"<{tag}>" for tag in SUPPORTED_TAGS]
    assert by_id(browser, "server-status").text == "Model ready"
    assert by_testid(browser, "speak").is_enabled() and not by_testid(browser, "stop").is_enabled()
    assert console_errors(browser) == []


@needs_browser
def test_every_control_is_labelled_and_the_page_fits_a_phone(browser, server):
    open_page(browser, server)
    until(browser, lambda: voices_listed(browser))
    unlabelled = browser.execute_script("""
        return [...document.querySelectorAll('input, select, textarea, button')]
          .filter(c => c.getAttribute('aria-hidden') !== 'true' && !c.closest('[hidden], template'))
          .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !c.textContent.trim())
          .map(c => c.outerHTML)""")
    assert unlabelled == []
    browser.set_window_size(390, 844)
    try:
        until(browser, lambda: browser.execute_script("return window.innerWidth") <= 390)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        assert by_testid(browser, "speak").is_displayed() and by_testid(browser, "text").is_displayed()
    finally:
        browser.set_window_size(1280, 900)


@needs_browser
def test_speak_plays_as_it_streams_and_offers_each_format(browser, server, downloads):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    until(browser, lambda: voices_listed(browser))
    text = by_testid(browser, "text")
    text.send_keys(TEXT + " ")
    browser.find_element(By.CSS_SELECTOR, "#tags button").click()  # <laugh> at the cursor
    assert text.get_attribute("value") == f"{TEXT} <laugh> "
    fill(browser, {"input": f"{TEXT} <laugh>", **QUICK})
    by_testid(browser, "voice").send_keys("tara")
    browser.execute_script(RECORD_FIRST_AUDIO)
    by_testid(browser, "speak").click()

    link = by_testid(browser, "download")
    until(browser, link.is_displayed, message="no download link")
    first = browser.execute_script("return window.atFirstAudio")
    # the time to first audio was shown while the answer was still streaming, with part of the audio
    assert re.fullmatch(r"\d+ ms", first["ttfa"]) and first["state"] == "streaming"
    generated = float(by_id(browser, "seconds").text.removesuffix(" s"))
    assert 0 < float(first["seconds"].removesuffix(" s")) < generated

    # the WAV of what was heard: as long as the same request answered as one file
    same = {"input": f"{TEXT} <laugh>", "voice": "tara", "max_new_tokens": 100, "seed": 7}
    whole = httpx.post(server.base_url + "/v1/audio/speech", json={**same, "response_format": "wav", "stream": False},
                       timeout=60)
    link.click()
    wav = downloaded(downloads, "orpheus-take-1-tara.wav")
    samples = wav_samples(wav)
    assert samples == wav_samples(whole.content) and f"{samples / SAMPLE_RATE:.2f} s" == f"{generated:.2f} s"
    # and all of it was played
    until(browser, lambda: take_state(browser) == "done", message="playback did not finish")
    assert by_id(browser, "waveform").get_attribute("data-played-s") == f"{generated:.2f}"

    take = browser.find_element(By.CSS_SELECTOR, "#takes .take")
    assert take.find_element(By.TAG_NAME, "audio").get_attribute("src").startswith("blob:")
    formats = [b.get_attribute("data-format") for b in take.find_elements(By.CSS_SELECTOR, ".downloads [data-format]")]
    assert sorted(formats) == ["aac", "flac", "mp3", "opus", "pcm", "wav"]
    take.find_element(By.CSS_SELECTOR, '[data-format="pcm"]').click()
    assert downloaded(downloads, "orpheus-take-1-tara.pcm") == wav[44:]
    take.find_element(By.CSS_SELECTOR, '[data-format="flac"]').click()  # made again by the server
    assert downloaded(downloads, "orpheus-take-1-tara.flac").startswith(b"fLaC")
    assert by_testid(browser, "error").text == ""
    assert console_errors(browser) == []

    shot = full_page_png(browser)
    assert shot.startswith(b"\x89PNG")
    if target := os.environ.get("ORPHEUS_SCREENSHOT"):
        Path(target).write_bytes(shot)


@needs_browser
def test_stop_cancels_the_request_on_the_server(browser, server):
    open_page(browser, server)
    until(browser, lambda: voices_listed(browser))
    completed = metrics(server)["orpheus_generation_seconds_count"]
    fill(browser, {"input": LONG_TEXT, "max_new_tokens": "2000"})
    by_testid(browser, "speak").click()
    until(browser, lambda: by_testid(browser, "ttfa").text, message="no first audio")
    until(browser, lambda: metrics(server)["orpheus_requests_running"] >= 1)  # a slot per sentence being read
    by_testid(browser, "stop").click()
    until(browser, lambda: take_state(browser) == "stopped")
    until(browser, lambda: metrics(server)["orpheus_requests_running"] == 0, timeout=20,
          message="the server kept generating")
    after = metrics(server)
    assert after["orpheus_requests_in_flight"] == 0
    assert after["orpheus_generation_seconds_count"] == completed  # cut short, never completed
    assert by_testid(browser, "speak").is_enabled() and not by_testid(browser, "stop").is_enabled()
    assert by_testid(browser, "error").text == ""


@needs_browser
def test_an_out_of_range_value_shows_the_apis_message_next_to_its_field(browser, server):
    open_page(browser, server)
    until(browser, lambda: voices_listed(browser))
    fill(browser, {"input": TEXT, "temperature": "3"})
    by_testid(browser, "speak").click()
    message = api_message(server, {"input": TEXT, "temperature": 3})
    assert message.startswith("temperature: ")
    until(browser, lambda: by_testid(browser, "error").text == message)
    assert by_id(browser, "temperature-error").text == message
    assert by_id(browser, "temperature").get_attribute("aria-invalid") == "true"
    assert take_state(browser) == "failed" and not by_testid(browser, "download").is_displayed()


@needs_browser
def test_a_server_with_keys_asks_for_one_refuses_a_wrong_one_and_works_with_the_right_one(browser, keyed_server):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, keyed_server)
    key = by_id(browser, "api-key")
    until(browser, key.is_displayed, message="no key prompt")
    until(browser, lambda: "Missing Authorization or x-api-key in header" in by_testid(browser, "error").text)
    assert voices_listed(browser) == [] and not by_testid(browser, "speak").is_enabled()

    key.send_keys("not-the-key", Keys.ENTER)
    wrong = "Unauthorized. API key is invalid or may have expired"
    until(browser, lambda: by_testid(browser, "error").text == f"The server needs a valid API key (401): {wrong}")
    assert by_id(browser, "api-key-error").text == wrong and voices_listed(browser) == []

    key.clear()
    key.send_keys(KEY, Keys.ENTER)
    until(browser, lambda: voices_listed(browser), message="no voices with the right key")
    assert by_testid(browser, "error").text == ""
    fill(browser, {"input": TEXT, **QUICK})
    by_testid(browser, "text").send_keys(Keys.CONTROL, Keys.ENTER)  # speaks from the keyboard
    until(browser, by_testid(browser, "download").is_displayed, message="no audio with the right key")

    browser.refresh()  # the key stays in the browser
    until(browser, lambda: voices_listed(browser))
    assert by_id(browser, "api-key").get_attribute("value") == KEY


@needs_browser
def test_a_busy_server_says_so(browser, keyed_server):
    open_page(browser, keyed_server, key=KEY)
    until(browser, lambda: voices_listed(browser))
    body = {"input": LONG_TEXT, "max_new_tokens": 2000, "response_format": "pcm"}
    with httpx.Client(base_url=keyed_server.base_url, timeout=30) as client:
        with client.stream("POST", "/v1/audio/speech", json=body, headers={"x-api-key": KEY}) as held:
            assert held.status_code == 200  # the only place in flight is taken
            fill(browser, {"input": TEXT, **QUICK})
            by_testid(browser, "speak").click()
            until(browser, lambda: by_testid(browser, "error").text.startswith("The server is busy (429): "))
    assert "too many requests" in by_testid(browser, "error").text and take_state(browser) == "failed"
