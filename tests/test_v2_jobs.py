"""v2 jobs against hostile clients: one key's quota, a full store's Retry-After, DELETE, and links
built from public_url rather than from whatever Host a request sends."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from pydantic import ValidationError
from support.asgi import SHORT, V2, FakeSynth, serve

from server.settings import ServerSettings

KEYS = ("key-alpha-0123456789", "key-bravo-9876543210")
ALPHA, BRAVO = {"x-api-key": KEYS[0]}, {"authorization": f"Bearer {KEYS[1]}"}
ALPHA_OWNER = hashlib.sha256(KEYS[0].encode()).hexdigest()  # what the job store knows the key by


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("".join(f"{key}\n" for key in KEYS))
    return path


def not_found(job_id: str) -> dict:
    return {"error": f"request {job_id} not found (results are kept 1 h)"}


async def submit_and_finish(client, app, headers: dict | None = None, owner: str | None = None) -> str:
    response = await client.post(V2, json=SHORT, headers=headers)
    assert response.status_code == 200, response.text
    job_id = response.json()["request_id"]
    await app.state.server.jobs.get(job_id, owner=owner).task
    return job_id


async def test_one_key_at_its_quota_gets_429_until_its_oldest_result_expires(keys_file):
    async with serve(FakeSynth(), api_keys_file=keys_file, max_jobs_per_key=2) as (client, app):
        clock = app.state.server.jobs.clock = Clock(1000.0)
        await submit_and_finish(client, app, ALPHA, owner=ALPHA_OWNER)  # finished at 1000
        clock.now = 1030.0
        await submit_and_finish(client, app, ALPHA, owner=ALPHA_OWNER)  # finished at 1030
        clock.now = 1250.5
        refused = await client.post(V2, json=SHORT, headers=ALPHA)
        other_key = await client.post(V2, json=SHORT, headers=BRAVO)
        clock.now = 4600.0  # the first result's time is up
        again = await client.post(V2, json=SHORT, headers=ALPHA)

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3350"  # 1000 + 3600 - 1250.5, rounded up
    assert refused.json() == {"error": "too many requests: this API key's quota of 2 stored v2 jobs is used "
                                       "(finished ones count until their results expire); "
                                       "DELETE /v2/requests/{request_id} frees a place; retry in 3350 s"}
    assert other_key.status_code == 200 and other_key.json()["status"] == "QUEUED"
    assert again.status_code == 200 and again.json()["status"] == "QUEUED"


async def test_a_full_store_answers_429_with_retry_after_until_its_oldest_result_expires():
    synth = FakeSynth(wait=True)
    async with serve(synth, max_jobs=2) as (client, app):
        jobs = app.state.server.jobs
        clock = jobs.clock = Clock(1000.0)
        ids = [(await client.post(V2, json=SHORT)).json()["request_id"] for _ in range(2)]
        while_running = await client.post(V2, json=SHORT)

        clock.now = 1040.0
        synth.release.set()
        await asyncio.gather(*(jobs.get(job_id).task for job_id in ids))  # both finished at 1040
        clock.now = 2000.75
        while_kept = await client.post(V2, json=SHORT)
        clock.now = 4640.0
        once_expired = await client.post(V2, json=SHORT)

    assert while_running.status_code == 429 and while_running.headers["retry-after"] == "1"
    assert while_running.json() == {"error": "too many requests: 2 jobs are stored; retry shortly"}
    assert while_kept.status_code == 429 and while_kept.headers["retry-after"] == "2640"  # 1040 + 3600 - 2000.75
    assert while_kept.json() == {"error": "too many requests: 2 jobs are stored; retry in 2640 s"}
    assert once_expired.status_code == 200


async def test_delete_cancels_a_running_job_and_its_urls_answer_404_from_then_on():
    synth = FakeSynth(wait=True)
    async with serve(synth) as (client, app):
        state = app.state.server
        job = (await client.post(V2, json=SHORT)).json()
        job_id = job["request_id"]
        await asyncio.wait_for(synth.started.wait(), 10)
        assert state.admission.count == 1 and not synth.closed.is_set()

        deleted = await client.delete(f"/v2/requests/{job_id}")
        assert synth.closed.is_set()  # the generation was cancelled, not left to run
        assert state.admission.count == 0
        urls = [job["status_url"], job["response_url"], f"/v1/requests/{job_id}", f"/v2/requests/{job_id}/output.wav"]
        after = [await client.get(url) for url in urls]
        deleted_again = await client.delete(f"/v2/requests/{job_id}")

    assert deleted.status_code == 200
    assert deleted.json() == {"request_id": job_id, "status": "DELETED"}
    for response in after:
        assert response.status_code == 404 and response.json() == not_found(job_id)
    assert deleted_again.status_code == 404 and deleted_again.json() == not_found(job_id)


async def test_delete_of_another_keys_job_or_of_an_unknown_id_is_404(keys_file):
    async with serve(FakeSynth(), api_keys_file=keys_file) as (client, app):
        job_id = await submit_and_finish(client, app, ALPHA, owner=ALPHA_OWNER)
        as_bravo = await client.delete(f"/v2/requests/{job_id}", headers=BRAVO)
        still_there = await client.get(f"/v2/requests/{job_id}", headers=ALPHA)
        unknown = await client.delete("/v2/requests/unknown-id", headers=ALPHA)
        without_key = await client.delete(f"/v2/requests/{job_id}")
        as_alpha = await client.delete(f"/v2/requests/{job_id}", headers=ALPHA)

    assert as_bravo.status_code == 404 and as_bravo.json() == not_found(job_id)
    assert still_there.status_code == 200 and still_there.json()["status"] == "COMPLETED"
    assert unknown.status_code == 404 and unknown.json() == not_found("unknown-id")
    assert without_key.status_code == 401
    assert as_alpha.status_code == 200 and as_alpha.json() == {"request_id": job_id, "status": "DELETED"}


async def test_deleting_a_result_frees_a_place_in_its_keys_quota(keys_file):
    async with serve(FakeSynth(), api_keys_file=keys_file, max_jobs_per_key=1) as (client, app):
        job_id = await submit_and_finish(client, app, ALPHA, owner=ALPHA_OWNER)
        refused = await client.post(V2, json=SHORT, headers=ALPHA)
        deleted = await client.delete(f"/v2/requests/{job_id}", headers=ALPHA)
        accepted = await client.post(V2, json=SHORT, headers=ALPHA)
    assert (refused.status_code, deleted.status_code, accepted.status_code) == (429, 200, 200)


async def links_of_one_job(client, app, host: str) -> list[str]:
    """Every link a client is given for one job: on submit, in its status and in its result."""
    headers = {"host": host}
    job = (await client.post(V2, json=SHORT, headers=headers)).json()
    await app.state.server.jobs.get(job["request_id"]).task
    status = (await client.get(f"/v2/requests/{job['request_id']}/status", headers=headers)).json()
    result = (await client.get(f"/v2/requests/{job['request_id']}", headers=headers)).json()
    v1_result = (await client.get(f"/v1/requests/{job['request_id']}", headers=headers)).json()
    return [job["request_id"], job["poll_url"], job["status_url"], job["response_url"],
            status["status_url"], status["response_url"], result["output"], v1_result["output"]]


async def test_links_are_built_from_public_url_when_set_else_from_the_host_header():
    async with serve(FakeSynth(), public_url="https://tts.example.com/orpheus/") as (client, app):
        public = await links_of_one_job(client, app, "attacker.example:666")
    async with serve(FakeSynth()) as (client, app):
        from_host = await links_of_one_job(client, app, "tts.internal:8080")

    job_id, *links = public
    base = "https://tts.example.com/orpheus/v2/requests"
    assert links == [f"{base}/{job_id}/status"] * 2 + [f"{base}/{job_id}"] + [f"{base}/{job_id}/status", f"{base}/{job_id}"] \
        + [f"{base}/{job_id}/output.wav"] * 2
    job_id, *links = from_host
    base = "http://tts.internal:8080/v2/requests"
    assert links == [f"{base}/{job_id}/status"] * 2 + [f"{base}/{job_id}"] + [f"{base}/{job_id}/status", f"{base}/{job_id}"] \
        + [f"{base}/{job_id}/output.wav"] * 2


@pytest.mark.parametrize("given,kept", [
    ("https://tts.example.com", "https://tts.example.com"),
    ("https://tts.example.com/", "https://tts.example.com"),
    ("http://10.0.0.5:8000/orpheus/", "http://10.0.0.5:8000/orpheus"),
    ("", None),
])
def test_public_url_is_kept_without_its_trailing_slash(given, kept):
    assert ServerSettings(public_url=given).public_url == kept


@pytest.mark.parametrize("given", ["tts.example.com", "/v2", "ftp://tts.example.com", "https://", "http://h:99999",
                                   "https://tts.example.com/?a=1", "https://tts.example.com/#top"])
def test_public_url_must_be_an_absolute_http_url(given):
    with pytest.raises(ValidationError) as refused:
        ServerSettings(public_url=given)
    assert "public_url\n  Value error, must be an absolute http(s) URL such as https://tts.example.com" in str(refused.value)


def test_v2_jobs_and_links_settings_defaults():
    settings = ServerSettings()
    assert (settings.max_jobs_per_key, settings.public_url, settings.trusted_proxies) == (100, None, "")
    with pytest.raises(ValidationError):
        ServerSettings(max_jobs_per_key=0)
