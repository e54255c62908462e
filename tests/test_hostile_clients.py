"""Hostile and careless clients against real uvicorn with the guarded protocol: slow senders, the
connection cap, clients that never read, and clients that leave before their first audio."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest
from support.asgi import SPEECH, V1, FakeSynth, call_asgi, serve
from support.uvicorn_thread import call_in_loop, uvicorn_in_thread

from server import main as server_main
from server.connections import MAX_HEAD_BYTES, quiet_accept_errors

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


SLOW_START = b"POST /v1/orpheus-3b-0.1 HTTP/1.1\r\nhost: x\r\nx-slow: "  # and the rest never comes


def test_slow_senders_are_closed_at_the_receipt_deadline(caplog):
    caplog.set_level(logging.INFO)
    with uvicorn_in_thread(FakeSynth(), receive_timeout_s=0.5) as (app, port, loop):
        answers = [read_to_end(s) for s in [connect(port, SLOW_START) for _ in range(20)]]
        after = health(port)
    assert answers == [b""] * 20  # closed without an answer
    assert after.startswith(b"HTTP/1.1 200 ")
    # One warning line, however many connections: the log cannot be flooded.
    assert len(warnings(caplog, "closed connections that did not send a whole request within 0.5 s")) == 1


def test_a_request_head_over_the_limit_is_answered_400_and_closed_and_one_under_it_is_served():
    def health_with(header_bytes: int) -> bytes:
        padding = b"x-pad: " + b"a" * (header_bytes - 9) + b"\r\n"
        return read_to_end(connect(port, b"GET /health HTTP/1.1\r\nhost: x\r\n" + padding + b"connection: close\r\n\r\n"))

    with uvicorn_in_thread(FakeSynth()) as (app, port, loop):
        under, over = health_with(MAX_HEAD_BYTES // 2), health_with(MAX_HEAD_BYTES + 1)
        flood = connect(port, b"GET /health HTTP/1.1\r\nhost: x\r\n")
        try:  # headers that never end: the answer comes at the limit, not when the client stops
            for _ in range(MAX_HEAD_BYTES // 1000 + 2):
                flood.sendall(b"x-more: " + b"b" * 990 + b"\r\n")
        except OSError:  # closed under the sender's feet: the rest of the flood is refused
            pass
        flooded = b""
        with flood:  # the server closes with the flood unread, so a reset may follow its answer
            try:
                while chunk := flood.recv(65536):
                    flooded += chunk
            except ConnectionResetError:
                pass
    assert under.startswith(b"HTTP/1.1 200 ")
    assert over.startswith(b"HTTP/1.1 400 ") and flooded.startswith(b"HTTP/1.1 400 ")


def test_at_the_connection_cap_a_new_client_takes_the_place_of_the_oldest_slow_one(caplog):
    caplog.set_level(logging.INFO)
    with uvicorn_in_thread(FakeSynth(), receive_timeout_s=600, max_connections=20) as (app, port, loop):
        slow = [connect(port, SLOW_START) for _ in range(20)]
        # The cap is full of slow senders; five clients come, and stay (kept alive).
        kept = [connect(port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n") for _ in range(5)]
        answers = [s.recv(65536) for s in kept]
        evicted = [closed_by_server(s) for s in slow[:5]]
        for s in slow[5:] + kept:
            s.setblocking(False)
        still_open = sum(1 for s in slow[5:] + kept if _still_open(s))
        for s in slow[5:] + kept:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert evicted == [True] * 5 and still_open == 20  # the oldest five made room, the others wait on
    assert len(warnings(caplog, "closed the oldest connections without a whole request, to make room under the "
                                "cap of 20")) == 1


def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused_with_503(caplog):
    caplog.set_level(logging.INFO)
    synth = FakeSynth(chunks=1, wait=True)
    with uvicorn_in_thread(synth, max_connections=3) as (app, port, loop):
        streams = [connect(port, STREAM_REQUEST) for _ in range(3)]
        assert all(s.recv(65536).startswith(b"HTTP/1.1 200 ") for s in streams)  # three responses under way
        refused = read_to_end(connect(port))  # sends nothing: the close cannot turn into a reset
        loop.call_soon_threadsafe(synth.release.set)
        ended = [read_to_end(s) for s in streams]
    assert refused.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in refused
    assert refused.endswith(b'{"error": "too many open connections; retry shortly"}')
    assert all(e.endswith(b"0\r\n\r\n") for e in ended)  # the streams were not disturbed
    assert len(warnings(caplog, "refused connections over the cap of 3")) == 1


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed the connection without an answer (a reset when it closed before reading
    what the client had sent)."""
    try:
        return read_to_end(sock) == b""
    except ConnectionResetError:
        return True


def _still_open(sock: socket.socket) -> bool:
    """Not closed by the server (a non-blocking socket; what is left of an answer may be waiting)."""
    try:
        return sock.recv(65536) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


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


async def test_accept_failures_for_want_of_descriptors_are_one_warning_a_minute_not_a_traceback_each(caplog):
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    passed_on = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: passed_on.append(context["message"]))
    try:
        quiet_accept_errors(loop)
        for _ in range(1000):  # what asyncio reports for each failed accept()
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(errno.EMFILE, "Too many open files")})
        loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
    finally:
        loop.set_exception_handler(previous)
    assert len(warnings(caplog, "could not accept connections (out of file descriptors or memory)")) == 1
    assert passed_on == ["something else"]  # other errors still reach the handler that was there


@pytest.mark.parametrize("limits,wanted,raised_to,cap", [
    ((1024, 1024), 2048, None, 1024 - 128 - 511),  # no room to raise: the cap comes down to fit
    ((1024, 65536), 2048, 65536, 2048),  # the soft limit is raised to the hard one first
    ((4096, 4096), 100, None, 100),  # a cap that fits is kept
])
def test_the_connection_cap_fits_below_the_file_limit(monkeypatch, limits, wanted, raised_to, cap):
    raised = []
    monkeypatch.setattr(server_main.resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(server_main.resource, "setrlimit", lambda which, value: raised.append(value))
    assert server_main.fit_connections(wanted) == cap
    assert raised == ([] if raised_to is None else [(raised_to, raised_to)])
