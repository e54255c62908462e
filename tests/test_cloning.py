"""Zero-shot cloning in the library: the prompt layout against the official one, the reference
recording's checks and its SNAC ids, and the engine's cache of reference turns against recomputing
them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.recordings import flac_bytes, tone, wav_bytes

from orpheus_local import tokens as fmt
from orpheus_local.audio.recording import read_recording, reference_ids
from orpheus_local.audio.snac import SnacCodec
from orpheus_local.engine.core import EngineCore
from orpheus_local.engine.prefix_cache import PrefixCache
from orpheus_local.engine.runner import ModelRunner
from orpheus_local.errors import InputError
from orpheus_local.model.loader import load_llama
from orpheus_local.params import SynthesisParams, VoiceReference
from orpheus_local.pipeline.synthesizer import Synthesizer
from orpheus_local.voices import ENGLISH_VOICES, Voices
from orpheus_local.weights.checkpoint import load_snac, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(demo_dirs):
    return load_tokenizer(demo_dirs[0])


@pytest.fixture(scope="module")
def codec(demo_dirs):
    return SnacCodec(load_snac(demo_dirs[1]), "cpu", noise=False)


def random_audio_ids(frames: int, seed: int) -> list[int]:
    codes = np.random.default_rng(seed).integers(0, fmt.CODEBOOK_SIZE, size=(frames, fmt.FRAME_TOKENS))
    return fmt.frames_to_ids(codes)


# --- the prompt ---

def test_the_cloning_prompt_is_the_official_layout_id_by_id(tokenizer):
    # Canopy Labs' pretrained-model notebook (canopyai/Orpheus-TTS,
    # colabs/Orpheus_0_1_Pretrain_Inference.ipynb), written out with its own constants:
    #   zeroprompt = [128259] + tokenizer(transcript) + [128009, 128260, 128261, 128257] + audio + [128258, 128262]
    #   prompt     = zeroprompt + [128259] + tokenizer(text) + [128009, 128260, 128261, 128257]
    audio = random_audio_ids(5, seed=1)
    transcript, text = "It was a bright cold day in April.", "Hello <laugh> there."
    zeroprompt = [128259, *tokenizer(transcript)["input_ids"], 128009, 128260, 128261, 128257, *audio, 128258, 128262]
    official = [*zeroprompt, 128259, *tokenizer(text)["input_ids"], 128009, 128260, 128261, 128257]
    assert tokenizer(text)["input_ids"][0] == 128000  # the tokenizer's BOS, as in the notebook

    prompt = fmt.build_clone_prompt(tokenizer, text, transcript, audio)

    assert prompt == official
    assert fmt.reference_prefix_length(prompt) == len(zeroprompt)
    assert fmt.reference_turn(tokenizer, transcript, audio) == zeroprompt
    assert fmt.reference_prefix_length(fmt.build_prompt(tokenizer, text, "tara")) == 0


def test_a_cloned_voice_is_spoken_only_by_a_checkpoint_that_clones(tokenizer):
    reference = VoiceReference("me", "Hi there, it's me.", tuple(random_audio_ids(3, seed=2)))
    params = SynthesisParams(text="Say this.", voice="tara", reference=reference)
    assert params.voice is None  # the reference is the voice: no name before the text

    pretrained = Synthesizer(tokenizer, None, None, Voices.of([]))
    assert pretrained.voices.clones
    assert pretrained.prompt_ids(params) == fmt.build_clone_prompt(tokenizer, "Say this.", reference.transcript,
                                                                   reference.audio_ids)

    fine_tune = Synthesizer(tokenizer, None, None, ENGLISH_VOICES)
    with pytest.raises(InputError, match="cloned voices need a pretrained checkpoint") as caught:
        fine_tune.prompt_ids(params)
    assert caught.value.field == "voice"
    assert ENGLISH_VOICES.with_clones().clones and ENGLISH_VOICES.with_clones().names == ENGLISH_VOICES.names


# --- the reference recording ---

def test_snac_ids_of_a_known_signal_decode_back_within_the_codecs_own_error(codec):
    x = tone(4.0)
    pcm = read_recording(wav_bytes(x))  # 24 kHz mono 16-bit: the signal within its quantization
    np.testing.assert_allclose(pcm, x, atol=2 / 32768)

    ids = reference_ids(codec, pcm)

    with torch.inference_mode():
        codes = codec.model.encode(torch.from_numpy(pcm)[None, None])
        direct = codec.model.decode(codes)[0, 0, : len(x)].numpy()
    # Each id from SNAC's codes as the official notebook lays them out (tokenise_audio).
    c0, c1, c2 = (c[0].tolist() for c in codes)
    official = []
    for i in range(len(c0)):
        official += [c0[i] + 128266, c1[2 * i] + 128266 + 4096, c2[4 * i] + 128266 + 2 * 4096,
                     c2[4 * i + 1] + 128266 + 3 * 4096, c1[2 * i + 1] + 128266 + 4 * 4096,
                     c2[4 * i + 2] + 128266 + 5 * 4096, c2[4 * i + 3] + 128266 + 6 * 4096]
    assert ids == official and len(ids) == 7 * 47  # 4 s = 46.9 frames of 2048 samples: 47

    decoded = codec.decode(fmt.ids_to_frames(ids))[: len(x)]
    np.testing.assert_allclose(decoded, direct, atol=1e-5)  # the ids lose nothing of the codes
    codec_error = np.sqrt(np.mean((direct - x) ** 2))
    assert np.sqrt(np.mean((decoded - x) ** 2)) <= codec_error + 1e-4


def test_a_recording_at_another_rate_and_format_gives_the_ids_of_its_24_khz_signal(codec):
    at_24k = reference_ids(codec, read_recording(wav_bytes(tone(4.0))))
    resampled = reference_ids(codec, read_recording(flac_bytes(tone(4.0, rate=44100), rate=44100)))
    stereo = reference_ids(codec, read_recording(wav_bytes(tone(4.0, rate=48000), rate=48000, channels=2)))
    assert len(resampled) == len(stereo) == len(at_24k)
    # Resampling moves samples by far less than a code's cell: most coarse codes stay the same.
    coarse = slice(0, None, 7)
    assert np.mean(np.array(resampled[coarse]) == np.array(at_24k[coarse])) > 0.8
    assert np.mean(np.array(stereo[coarse]) == np.array(at_24k[coarse])) > 0.8


@pytest.mark.parametrize("data, message", [
    (wav_bytes(tone(2.5)), "the recording is 2.5 s long; a reference needs 3 to 30 s of speech"),
    (wav_bytes(tone(31.0, rate=8000), rate=8000), "the recording is longer than 30 s"),
    (wav_bytes(np.zeros(24000 * 5, dtype=np.float32)), "the recording is silent"),
    (wav_bytes(tone(5.0, amplitude=0.0005)), "the recording is silent"),
    (b"GIF89a" + bytes(500), "cannot read the file as audio"),
    (b"", "cannot read the file as audio"),
])
def test_a_recording_that_cannot_serve_says_why(data, message):
    with pytest.raises(InputError, match=message) as caught:
        read_recording(data)
    assert caught.value.field == "audio"


# --- the engine's cache of reference turns ---

SLOTS, REFERENCE = 4, 512


@pytest.fixture(scope="module")
def model(demo_dirs):
    return load_llama(demo_dirs[0], "cpu", "float32")


def engine(model, prefix_cache_tokens: int) -> EngineCore:
    runner = ModelRunner(model, SLOTS, 128, 200, max_reference_tokens=REFERENCE,
                         prefix_cache_tokens=prefix_cache_tokens)
    return EngineCore(runner, max_queue=16)


def run(core: EngineCore, prompts: list[list[int]], seed: int = 7) -> list[list[int]]:
    requests = [core.add(p, SynthesisParams(text="x", max_new_tokens=140, seed=seed + i), ignore_eos=True)
                for i, p in enumerate(prompts)]
    ids: dict = {}
    while core.has_work():
        for out in core.step():
            ids.setdefault(out.request, []).extend(out.ids)
    return [ids[r] for r in requests]


@pytest.fixture(scope="module")
def clone_prompts(tokenizer):
    one = ("Hello there, this is my voice.", random_audio_ids(40, seed=3))
    two = ("Another speaker altogether.", random_audio_ids(30, seed=4))
    texts = ["Say this first.", "And then <sigh> this.", "A third thing."]
    return ([fmt.build_clone_prompt(tokenizer, t, *one) for t in texts]
            + [fmt.build_clone_prompt(tokenizer, texts[0], *two), fmt.build_prompt(tokenizer, texts[0], "tara")])


def test_the_cached_reference_turn_gives_the_ids_of_recomputing_the_whole_prompt(model, clone_prompts):
    recomputed = run(engine(model, prefix_cache_tokens=0), clone_prompts)
    cached_core = engine(model, prefix_cache_tokens=4 * REFERENCE)
    cached = run(cached_core, clone_prompts)  # five requests, four slots: one is admitted later

    assert cached == recomputed
    assert all(len(ids) == 140 for ids in cached)
    prefixes = cached_core.runner.prefixes
    assert (prefixes.misses, prefixes.hits, len(prefixes)) == (2, 2, 2)  # one turn computed per voice
    # Again, with both turns already cached: the same ids.
    assert run(cached_core, clone_prompts) == recomputed and prefixes.hits == 6


def test_the_reference_turn_changes_the_ids(model, tokenizer, clone_prompts):
    plain = fmt.build_prompt(tokenizer, "Say this first.", None)
    cloned, other_voice = clone_prompts[0], clone_prompts[3]
    ids = run(engine(model, 4 * REFERENCE), [cloned, other_voice, plain], seed=7)
    alone = [run(engine(model, 4 * REFERENCE), [p], seed=7)[0] for p in (cloned, other_voice, plain)]
    assert alone[0] != alone[1] != alone[2] != alone[0]
    assert ids[0] == alone[0]


def test_a_reference_turn_over_the_engines_room_is_refused(model, tokenizer):
    core = engine(model, 4 * REFERENCE)
    long_turn = fmt.build_clone_prompt(tokenizer, "Hi.", "Too long.", random_audio_ids(80, seed=5))
    with pytest.raises(InputError, match="reference is too long") as caught:
        core.add(long_turn, SynthesisParams(text="x"))
    assert caught.value.field == "voice"


def test_the_prefix_cache_keeps_the_most_recently_used_within_its_tokens():
    cache = PrefixCache(max_tokens=10)
    kv = (torch.zeros(1), torch.zeros(1))
    cache.put((1, 2, 3, 4), *kv)
    cache.put((5, 6, 7), *kv)
    assert cache.get((1, 2, 3, 4)) is not None  # now the most recently used
    cache.put((8, 9, 10, 11), *kv)  # 7 + 4 tokens is over 10: the least recently used goes
    assert cache.get((5, 6, 7)) is None and cache.get((1, 2, 3, 4)) is not None
    assert cache.tokens == 8 and len(cache) == 2
    cache.put(tuple(range(11)), *kv)  # longer than the whole budget: not kept, nothing evicted
    assert len(cache) == 2 and cache.tokens == 8
    assert (cache.hits, cache.misses) == (2, 1)
