"""Security: keys on every route but the probes, compared in constant time and never shown; no
internals in any answer; bodies bounded before they are read in full; v2 results private to the key
that asked for them, behind random ids."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from contextlib import asynccontextmanager

import httpx
import pytest
from support.asgi import SHORT, SPEECH, V1, V2, FakeSynth, serve, wait_ready

from server import auth
from server.app import build_app
from server.settings import ServerSettings

KEYS = ("key-alpha-0123456789", "key-bravo-9876543210", "key-charlie-5555")
OPEN_ROUTES = set(auth.OPEN_PATHS)


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("".join(f"{key}\n" for key in KEYS))
    return path


def route_table(routes, prefix: str = ""):
    """(path, methods) of every route the app serves, included routers and mounts opened."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's wrapper of an included router
            yield from route_table(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "routes"):  # a mount, or a router included by copying its routes
            yield from route_table(route.routes, prefix + getattr(route, "path", ""))
        else:
            yield prefix + route.path, getattr(route, "methods", None) or {"GET"}


async def test_every_route_but_the_probes_requires_a_key(keys_file):
    async with serve(FakeSynth(), api_keys_file=keys_file) as (client, app):
        table = sorted(route_table(app.routes))
        documented = (await client.get("/openapi.json", headers={"x-api-key": KEYS[0]})).json()["paths"]
        assert set(documented) <= {path for path, _ in table}  # the walk saw every documented route
        answers = {}
        for path, methods in table:
            url = re.sub(r"\{[^}]+\}", "some-id", path)
            for method in methods:
                missing = await client.request(method, url)
                wrong = await client.request(method, url, headers={"authorization": f"Bearer {KEYS[0]}x"})
                answers[method, path] = (missing.status_code, wrong.status_code)
    let_through = {path for (_, path), codes in answers.items() if codes != (401, 401)}
    assert let_through == OPEN_ROUTES, answers
    assert {codes for (_, path), codes in answers.items() if path in OPEN_ROUTES} == {(200, 200)}
    assert len(answers) >= 20  # every method of every route: GET and HEAD, POST


async def test_unknown_paths_ask_for_a_key_before_saying_not_found(keys_file):
    async with serve(FakeSynth(), api_keys_file=keys_file) as (client, _):
        unknown = await client.get("/admin")
        known = await client.get("/admin", headers={"x-api-key": KEYS[1]})
    assert unknown.status_code == 401 and known.status_code == 404


@pytest.mark.parametrize("presented", [KEYS[0], KEYS[2], "key-alpha-0123456780", "", "k"])
def test_a_key_is_compared_with_every_configured_key_as_digests_of_one_length(monkeypatch, presented):
    compared, real_compare_digest = [], hmac.compare_digest

    def compare_digest(a, b):
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_digest)
    keys = tuple(key.encode() for key in KEYS)
    assert auth.key_index(presented, keys) == (KEYS.index(presented) if presented in KEYS else None)
    # no early exit on a match or a mismatch, and digests of one length: timing tells nothing
    assert [b for _, b in compared] == [hashlib.sha256(key).digest() for key in keys]
    assert {len(a) for a, _ in compared} == {32}


async def test_keys_never_reach_the_logs_or_any_answer(keys_file, caplog):
    caplog.set_level(logging.DEBUG)
    near_miss = KEYS[0][:-1] + "X"
    answers = []
    async with serve(FakeSynth(error=RuntimeError("boom")), api_keys_file=keys_file) as (client, _):
        for key in (KEYS[0], KEYS[1], near_miss):
            for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"}):
                answers += [await client.post(V1, json=SHORT, headers=headers),  # 500 (generation fails) or 401
                            await client.post(V1, json={"text": ""}, headers=headers),
                            await client.post(V2, json=SHORT, headers=headers),
                            await client.post(SPEECH, json={"input": "Hi", "voice": "x"}, headers=headers),
                            await client.get("/v2/requests/nope/status", headers=headers),
                            await client.get("/metrics", headers=headers)]
    assert {r.status_code for r in answers} >= {200, 400, 401, 404, 500}
    for key in (*KEYS, near_miss):
        assert key not in caplog.text
        for response in answers:
            assert key not in response.text and key not in str(response.headers)


class BrokenStats(FakeSynth):
    def stats(self) -> dict:
        raise RuntimeError(f"cannot read {__file__}")


@asynccontextmanager
async def serve_answering_500s(synth, **settings):
    """Like serve(), but the client gets the 500 answer instead of the app's exception."""
    app = build_app(synth, ServerSettings(warmup=False, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await wait_ready(app)
            assert (await client.get("/ready")).status_code == 200
            yield client, app


async def test_no_stack_trace_or_file_path_in_any_answer():
    secret = f"failed in {__file__} line 1"
    async with serve_answering_500s(BrokenStats(error=RuntimeError(secret))) as (client, app):
        job = (await client.post(V2, json=SHORT)).json()
        await app.state.server.jobs.get(job["request_id"]).task
        answers = [await client.get("/metrics"),  # an unexpected error outside any generation
                   await client.post(V1, json=SHORT),
                   await client.post(V1, json={**SHORT, "stream": True}),
                   await client.post(SPEECH, json={"input": "Hi"}),
                   await client.get(job["status_url"]),
                   await client.post(V1, content=b"{", headers={"content-type": "application/json"})]
    assert [r.status_code for r in answers] == [500, 500, 500, 500, 422, 400]
    assert answers[0].json() == {"error": "internal server error"}
    for response in answers:
        assert "Traceback" not in response.text and ".py" not in response.text, response.text


async def test_a_body_over_the_limit_is_refused_before_it_is_read_in_full():
    pulled = 0

    async def endless(chunk: bytes):
        nonlocal pulled
        while True:
            pulled += 1
            yield chunk

    async with serve(FakeSynth(), max_body_bytes=4096) as (client, _):
        json_body = await client.post(V1, content=endless(b" " * 1024), headers={"content-type": "application/json"})
        json_pulled, pulled = pulled, 0
        form = await client.post(V1, content=endless(b"x" * 1024),
                                 headers={"content-type": "multipart/form-data; boundary=b"})
        form_pulled, pulled = pulled, 0
        # a declared length over the limit is refused before a single byte is read
        declared = await client.post(V1, content=endless(b"x"), headers={
            "content-type": "application/json", "content-length": str(10**12)})
    for response in (json_body, form, declared):
        assert response.status_code == 413
        assert response.json() == {"error": "request body larger than 4096 bytes"}
    assert json_pulled == form_pulled == 5 and pulled == 0


async def test_a_form_with_too_many_fields_is_400():
    fields = {f"field{i}": "1" for i in range(1500)}
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(V1, data={**fields, "text": "Hi."}, files={"file": ("a.txt", b"")})
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed multipart body: Too many fields")


async def test_v2_ids_are_random_and_unguessable():
    async with serve(FakeSynth(), max_jobs=200) as (client, _):
        jobs = [(await client.post(V2, json=SHORT)).json() for _ in range(64)]
    ids = [job["request_id"] for job in jobs]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22,}", job_id) for job_id in ids)  # 128 random bits or more
    assert all(len({job_id[i] for job_id in ids}) > 16 for i in range(21))  # no position is predictable
    assert all(job["response_url"].endswith(f"/v2/requests/{job['request_id']}") for job in jobs)


async def test_one_key_cannot_read_another_keys_job(keys_file):
    alpha, bravo = {"x-api-key": KEYS[0]}, {"authorization": f"Bearer {KEYS[1]}"}
    async with serve(FakeSynth(), api_keys_file=keys_file) as (client, app):
        job = (await client.post(V2, json=SHORT, headers=alpha)).json()
        job_id = job["request_id"]
        await app.state.server.jobs.get(job_id, owner=hashlib.sha256(KEYS[0].encode()).hexdigest()).task
        urls = [job["status_url"], job["response_url"], f"/v1/requests/{job_id}", f"/v2/requests/{job_id}/output.wav"]
        as_bravo = [await client.get(url, headers=bravo) for url in urls]
        as_alpha = [await client.get(url, headers=alpha) for url in urls]
        unknown = await client.get("/v2/requests/unknown-id/status", headers=bravo)
    assert [r.status_code for r in as_alpha] == [200, 200, 200, 200]
    for response in as_bravo:  # the same answer as for an id that does not exist
        assert response.status_code == 404
        assert response.json() == {"error": f"request {job_id} not found (results are kept 1 h)"}
    assert unknown.json() == {"error": "request unknown-id not found (results are kept 1 h)"}
