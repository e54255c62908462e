"""Hostile and careless clients against real uvicorn with the guarded protocol: slow senders, the
connection cap, clients that never read, and clients that leave before their first audio."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from support.asgi import SPEECH, V1, FakeSynth, call_asgi, serve
from support.uvicorn_thread import call_in_loop, uvicorn_in_thread

WAIT_S = 30  # bound on waiting for an event that must happen; never reached when things work
BODY = b'{"text": "Hello there.", "voice": "tara", "stream": true}'
STREAM_REQUEST = (b"POST /v1/orpheus-3b-0.1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY))


def connect(port: int, data: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting, so that the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", port))
    if data:
        sock.sendall(data)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


def health(port: int) -> bytes:
    return read_to_end(connect(port, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"))


def warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "server.requests" and hasattr(r, "fields")]


def test_slow_senders_are_closed_at_the_deadline_and_connections_over_the_cap_are_refused(caplog):
    caplog.set_level(logging.INFO)
    with uvicorn_in_thread(FakeSynth(), receive_timeout_s=0.5, max_connections=20) as (app, port, loop):
        # Slowloris: a request line and part of a header, the rest never comes.
        slow = [connect(port, b"POST /v1/orpheus-3b-0.1 HTTP/1.1\r\nhost: x\r\nx-slow: ") for _ in range(20)]
        # Over the cap: answered 503 at once. (They send nothing: a request left unread when the
        # server closes would turn the close into a reset, which drops the 503 on its way.)
        over = [read_to_end(connect(port)) for _ in range(5)]
        slow_answers = [read_to_end(s) for s in slow]
        after = health(port)
    assert len(set(over)) == 1 and over[0].startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in over[0] and over[0].endswith(b'{"error": "too many open connections; retry shortly"}')
    assert slow_answers == [b""] * 20  # closed at the deadline, without an answer
    assert after.startswith(b"HTTP/1.1 200 ")  # once they are gone, the cap lets clients in again
    # One warning line for each kind, however many connections (the log cannot be flooded).
    assert len(warnings(caplog, "refused connections over the cap of 20")) == 1
    assert len(warnings(caplog, "closed connections that did not send a whole request within 0.5 s")) == 1


def test_a_body_that_trickles_is_cut_at_the_deadline_and_logged(caplog):
    caplog.set_level(logging.INFO)
    synth = FakeSynth()
    with uvicorn_in_thread(synth, receive_timeout_s=0.5) as (app, port, loop):
        sock = connect(port, STREAM_REQUEST[: len(STREAM_REQUEST) - 10])  # headers, and the body but its end
        answer = read_to_end(sock)
        in_flight = call_in_loop(loop, lambda: app.state.server.admission.count)
    assert answer == b"" and in_flight == 0 and not synth.started.is_set()
    [line] = [f for f in access_lines(caplog) if f["route"] == V1]
    assert line["status"] == 499 and line["cut"] == "receive timeout"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback for a client's fault


def test_a_response_streams_past_the_receipt_deadline():
    synth = FakeSynth(chunks=1, wait=True)  # one chunk, then the stream waits to be released
    with uvicorn_in_thread(synth, receive_timeout_s=0.5) as (app, port, loop):
        sock = connect(port, STREAM_REQUEST)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ")
        # A connection opened after the stream's request has its deadline later: once it is closed,
        # the stream's own deadline is past too.
        assert read_to_end(connect(port, b"GET /he")) == b""
        loop.call_soon_threadsafe(synth.release.set)
        rest = read_to_end(sock)
    assert rest.endswith(b"0\r\n\r\n")  # the chunked body ended properly: nothing was cut


def test_a_client_that_stops_reading_is_dropped_and_frees_its_place(caplog):
    caplog.set_level(logging.INFO)
    synth = FakeSynth(chunks=4000, wait=True)  # 16 MB of WAV, far more than any socket buffers
    with uvicorn_in_thread(synth, send_timeout_s=0.5) as (app, port, loop):
        sock = connect(port, STREAM_REQUEST, rcvbuf=4096)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")  # then reads nothing more
        closed = asyncio.run_coroutine_threadsafe(synth.closed.wait(), loop)
        closed.result(timeout=WAIT_S)  # the generation was ended...
        in_flight = call_in_loop(loop, lambda: app.state.server.admission.count)
        with pytest.raises(ConnectionResetError):  # ...and the connection dropped, not left to drain
            read_to_end(sock)
    assert in_flight == 0
    assert len(warnings(caplog, "dropped clients that read nothing for 0.5 s")) == 1
    [line] = [f for f in access_lines(caplog) if f["route"] == V1]
    assert line["status"] == 200 and line["cut"] == "slow reader"


@pytest.mark.parametrize("path,payload", [
    (V1, {"text": "Hello there.", "stream": True}),
    (SPEECH, {"input": "Hello there."}),
    (SPEECH, {"input": "Hello there.", "stream_format": "sse"}),
])
async def test_a_client_gone_before_its_first_audio_ends_the_generation_and_is_logged_499(caplog, path, payload):
    caplog.set_level(logging.INFO)
    synth = FakeSynth(chunks=0, wait=True)  # queued or generating: no audio until released
    gone = asyncio.Event()
    async with serve(synth) as (client, app):
        call = asyncio.create_task(call_asgi(app, path, payload, disconnect_when=lambda message: gone.is_set(),
                                             gone=gone))
        await synth.started.wait()
        gone.set()  # the client hangs up
        await asyncio.wait_for(synth.closed.wait(), WAIT_S)  # the generation is ended, not left to run
        status, _, chunks = await asyncio.wait_for(call, WAIT_S)
        in_flight = app.state.server.admission.count
    assert status is None and chunks == [] and in_flight == 0
    assert [f["status"] for f in access_lines(caplog) if f["route"] == path] == [499]
