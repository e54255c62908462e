"""Admission: the in-flight limit and the overload check (a codec too far behind) both answer 429."""

from __future__ import annotations

import pytest

from server.errors import ApiError
from server.generation import Admission
from server.settings import ServerSettings
from server.state import ServerState


async def test_an_overloaded_check_refuses_with_429_and_retry_after_until_it_clears():
    reason: list[str | None] = ["the audio decoder is 3.0 s of work behind"]
    admission = Admission(4, overloaded=lambda: reason[0])

    with pytest.raises(ApiError) as refused:
        admission.acquire()
    assert refused.value.status == 429 and "audio decoder" in refused.value.message
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert admission.count == 0  # a refused request holds no place

    reason[0] = None
    with admission.hold():
        assert admission.count == 1
    assert admission.count == 0


async def test_the_in_flight_limit_still_applies_with_an_overload_check():
    admission = Admission(1, overloaded=lambda: None)
    admission.acquire()
    with pytest.raises(ApiError) as refused:
        admission.acquire()
    assert refused.value.status == 429 and "in flight" in refused.value.message
    admission.release()


class BackloggedSynth:
    def __init__(self, backlog_s: float):
        self.backlog_s = backlog_s

    def codec_backlog_s(self) -> float:
        return self.backlog_s


async def test_the_server_refuses_new_requests_while_the_codec_backlog_is_over_its_setting():
    state = ServerState(ServerSettings(max_codec_backlog_s=2.0))
    try:
        with state.admission.hold():  # no synthesizer yet: nothing to be behind on
            pass
        state.synth = BackloggedSynth(2.5)
        with pytest.raises(ApiError) as refused:
            state.admission.acquire()
        assert refused.value.status == 429 and "Retry-After" in refused.value.headers
        assert "2.5 s" in refused.value.message
        state.synth.backlog_s = 1.5
        with state.admission.hold():
            assert state.admission.count == 1
    finally:
        state.encoders.close()


def test_the_codec_backlog_setting_must_be_positive():
    assert ServerSettings().max_codec_backlog_s == 2.0
    with pytest.raises(ValueError):
        ServerSettings(max_codec_backlog_s=0)
