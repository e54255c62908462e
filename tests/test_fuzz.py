"""Hostile input: every route fuzzed from the app's own OpenAPI document (schemathesis), and the
request fields and text fuzzed with hypothesis. Every answer must be a 2xx, or a 4xx with the
contract's error body; never a 5xx, a stack trace or a file path, and the server stays ready.

Generations are real (the tiny demo model) but stop at their first audio, and the app's limits are
small (texts of 300 characters, bodies of 4 KiB), so that hundreds of inputs, at and over every
limit, take seconds. Complete audio under load is tests/test_load.py's business.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from contextlib import aclosing
from pathlib import Path

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from schemathesis.python import asgi
from starlette.testclient import TestClient
from support.wav import wav_samples

from orpheus_local.audio.encoders import FORMATS
from orpheus_local.params import RANGES, SynthesisParams
from server.app import build_app
from server.settings import ServerSettings

V1 = "/v1/orpheus-3b-0.1"
V2 = "/v2/orpheus-3b-0.1"
SPEECH = "/v1/audio/speech"
MIN_TOKENS = RANGES["max_new_tokens"][0]
MAX_TEXT_CHARS = 300
MAX_BODY_BYTES = 4096
LIMITS = dict(warmup=False, max_text_chars=MAX_TEXT_CHARS, max_body_bytes=MAX_BODY_BYTES)
REPO = str(Path(__file__).resolve().parents[1])
FUZZED: Counter = Counter()  # answers by status, over every fuzz test of this module


class FirstAudioOnly:
    """The session's synthesizer, each generation stopped at its first audio chunk: the text has gone
    the whole way through tokenizer, engine and codec, at a fraction of a whole generation's cost."""

    def __init__(self, synth):
        self.synth = synth

    async def stream(self, params, request_id=None, **kw):
        shortest = params.replace(max_new_tokens=MIN_TOKENS)
        async with aclosing(self.synth.stream(shortest, request_id, **kw)) as chunks:
            async for pcm in chunks:
                yield pcm
                return

    def __getattr__(self, name):
        return getattr(self.synth, name)


def leaks_internals(text: str) -> bool:
    return "Traceback" in text or REPO in text or bool(re.search(r'File "[^"]+\.py"', text))


def check_answer(path: str, status: int, headers, content: bytes) -> None:
    """The contract's promise for any request: a 2xx, or a 4xx with the API's own error body."""
    FUZZED[status] += 1
    text = content.decode("utf-8", "replace")
    assert status < 500, f"{status} for {path}: {text[:300]}"
    if headers.get("content-type", "").startswith(("application/json", "text/")):
        assert not leaks_internals(text), text[:300]
    if status < 400:
        return
    assert headers["content-type"] == "application/json", headers
    error = json.loads(content)["error"]
    if path.startswith(("/v1/audio/", "/v1/models")):
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    else:
        assert isinstance(error, str) and error


def poll(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def wait_ready(get) -> None:
    poll(lambda: get("/ready").status_code == 200, 30, "ready")


def assert_ready_and_idle(app, get) -> None:
    """Ready, and nothing left in flight once the background v2 jobs are done."""
    state = app.state.server
    wait_ready(get)  # a new client starts the app's lifespan again: its store opens first

    def idle() -> bool:
        stats = state.synth.stats()
        return state.admission.count == 0 and not stats["running"] and not stats["queued"]

    poll(idle, 60, "idle")


# --- every route, from the OpenAPI document -----------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_app(synthesizer):
    app = build_app(FirstAudioOnly(synthesizer), ServerSettings(**LIMITS))
    yield app
    asgi.shutdown_lifespans()  # schemathesis runs the app's lifespan; end it with the module


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    with asgi.get_client(fuzzed_app) as client:
        wait_ready(client.get)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_route_answers_2xx_or_a_4xx_with_the_contract_error_body(case):
    response = case.call(timeout=60)
    headers = {name.lower(): values[0] for name, values in response.headers.items()}
    check_answer(case.path, response.status_code, headers, response.content)
    if response.status_code == 200 and case.path == V1:
        wav_samples(response.content)  # a whole WAV file, streamed or not
    if response.status_code == 200 and case.path == SPEECH:
        assert headers["content-type"].split(";")[0] in (
            {f.content_type for f in FORMATS.values()} | {"text/event-stream"})


def test_the_server_is_ready_and_idle_after_the_route_fuzzing(fuzzed_app):
    with asgi.get_client(fuzzed_app) as client:
        assert_ready_and_idle(fuzzed_app, client.get)
    print(f"\nfuzzed so far: {sum(FUZZED.values())} requests, answers by status {dict(sorted(FUZZED.items()))}")


# --- fields and text, with hypothesis ----------------------------------------------------------

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from([100, 2000, 0.1, 1.5, 1, 2, 2**63 - 1, 2**63, "0.6", "100", ""]),
)


@given(temperature=ANY_VALUE, top_p=ANY_VALUE, max_new_tokens=ANY_VALUE, repetition_penalty=ANY_VALUE, seed=ANY_VALUE)
@settings(max_examples=300, deadline=None, database=None)
def test_synthesis_params_accept_only_values_in_range_and_name_the_field_otherwise(**values):
    try:
        params = SynthesisParams(text="Hi.", **values)
    except ValueError as exc:
        assert str(exc).split(":", 1)[0] in values, str(exc)
        return
    for name, (low, high) in RANGES.items():
        assert low <= getattr(params, name) <= high
    assert type(params.max_new_tokens) is int
    assert params.seed is None or 0 <= params.seed < 2**63


SUPPORTED_TAGS = ("<laugh>", "<sigh>", "<chuckle>", "<gasp>")
PIECES = st.one_of(
    st.text(max_size=12),  # any code point hypothesis likes, surrogates excluded
    st.sampled_from([
        "Hello there.", " ", "\t", "\n", "\u00a0",  # words and whitespace
        "😀", "👩\u200d👩\u200d👧", "🇫🇷",  # emoji: one code point, a joined sequence, a flag
        "שלום", "مرحبا", "\u200f", "\u202e", "\u2066",  # right-to-left text and direction marks
        "\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad",  # zero-width characters
        "\ud800", "\udfff", "\udbff\udbff",  # lone surrogates (JSON can carry them as escapes)
        "\x00", "\x07", "\x1b[31m", "\x7f", "\u0085", "\r\n",  # control characters
        *SUPPORTED_TAGS, "<laugh", "laugh>", "<<sigh>>", "<laugh<sigh>>", "<sigh><sigh>", "<>", "< laugh >",
        "<whisper>", "<|eot_id|>", "<custom_token_4>", "</sigh>",  # unclosed, nested and unknown tags
        "e\u0301" * 3, "\U0010ffff", "\ufffd", "ﬁ", "𝔘𝔫𝔦",
    ]),
)
TEXTS = st.lists(PIECES, max_size=8).map("".join)


@pytest.fixture(scope="module")
def text_client(synthesizer):
    app = build_app(FirstAudioOnly(synthesizer), ServerSettings(**LIMITS))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client.get)
        yield client, app


@given(text=TEXTS, route=st.sampled_from([V1, SPEECH]))
@example(text="", route=V1)
@example(text=" \t\n\u00a0\u200b ", route=V1)
@example(text="\ud800", route=V1)
@example(text="<\udfff>", route=SPEECH)
@example(text="x" * MAX_TEXT_CHARS, route=V1)
@example(text="😀" * 200, route=V1)  # one part, but more prompt tokens than one generation takes
@example(text="x" * (MAX_TEXT_CHARS + 1), route=V1)
@example(text="😀" * (MAX_TEXT_CHARS + 1), route=SPEECH)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_text_gets_audio_or_a_4xx_naming_the_text(text_client, text, route):
    client, _ = text_client
    field = "text" if route == V1 else "input"
    body = {field: text, "voice": "tara", "max_new_tokens": MIN_TOKENS}
    if route == SPEECH:
        body["response_format"] = "wav"
    # ensure_ascii keeps lone surrogates as \\u escapes, as a client's JSON encoder would send them
    response = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    check_answer(route, response.status_code, response.headers, response.content)
    if response.status_code == 200:
        assert response.headers["content-type"] == "audio/wav"
        wav_samples(response.content)
    else:
        error = response.json()["error"]
        message = error if route == V1 else error["message"]
        # each API names the text with its own field
        assert response.status_code in (400, 413) and message.startswith(f"{field}:"), message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["text", "input", "voice", "temperature", "top_p", "max_new_tokens", "repetition_penalty", "seed",
          "stream", "speed", "model", "response_format", "stream_format"]
BODIES = st.one_of(
    st.binary(max_size=64),  # not JSON at all
    JSON_VALUES.map(json.dumps),  # JSON, rarely an object
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6).map(json.dumps),  # the API's fields, any type
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),  # nesting deep enough to hurt a parser
    st.integers(0, 3).map(lambda extra: json.dumps({"text": "x" * (MAX_BODY_BYTES + extra)})),  # over the body limit
)


@given(body=BODIES, route=st.sampled_from([V1, V2, SPEECH]),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "multipart/form-data",
                                     "multipart/form-data; boundary=x", "text/plain", ""]))
@example(body="[" * 2000 + "]" * 2000, route=V1, content_type="application/json")  # under the body limit
@example(body='{"text": "Hi", "temperature": NaN}', route=V1, content_type="application/json")
@example(body='{"text": "Hi", "max_new_tokens": 1e400}', route=V1, content_type="application/json")
@example(body='{"input": "Hi", "speed": -Infinity}', route=SPEECH, content_type="application/json")
@example(body='{"text": "Hi", "seed": ' + "9" * 5000 + "}", route=V2, content_type="application/json")
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_random_bodies_get_a_2xx_or_a_4xx_with_the_contract_error_body(text_client, body, route, content_type):
    client, _ = text_client
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(route, content=body, headers=headers)
    check_answer(route, response.status_code, response.headers, response.content)


def test_the_server_is_ready_and_idle_after_the_field_fuzzing(text_client):
    client, app = text_client
    assert_ready_and_idle(app, client.get)
    print(f"\nfuzzed in all: {sum(FUZZED.values())} requests, answers by status {dict(sorted(FUZZED.items()))}")
