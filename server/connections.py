"""GuardedHttpToolsProtocol: uvicorn's HTTP/1.1 protocol with the limits a server facing the open network needs.

It is uvicorn's httptools protocol: a C parser (at hundreds of streams the pure-Python h11 protocol
was a fifth of the event loop's work). uvicorn has no deadline for receiving a request (its keep-alive timer is reset by every byte) and no
cap on open connections, so a client sending a header byte every few seconds holds a socket for
ever, and enough of them exhaust the file descriptors; and its httptools parser has no limit on a
request's head. This protocol adds:

- a receipt deadline: a request's headers and body must have arrived `receive_timeout_s` after the
  connection opened (or after the previous response on a kept-alive connection), or the connection
  is closed. Once a request is complete its response streams for as long as it needs;
- a send deadline: a client that reads nothing for `send_timeout_s` while its response waits to be
  written (the socket's buffers full; the kernel queues at most UNSENT_BYTES unsent) is dropped,
  which ends its generation and frees its place;
- a head limit: a request line and headers over MAX_HEAD_BYTES are answered 400 and the connection
  closed (as h11 does at its 16 KiB);
- a connection cap: at `max_connections` open connections, a new one takes the place of the oldest
  connection that has not sent a whole request (a slow sender, or one idling between requests);
  when every connection has a request under way, the new one is answered 503 and closed at once. So
  the process never runs out of file descriptors, and slow senders cannot keep others out.

A WebSocket (GuardedWebSocketProtocol) keeps the send deadline: a voice agent that stops reading its
audio is dropped the same way.

Each kind of closing is logged as one warning per minute at most, with the count since the last.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger(__name__)

# Set in the request's ASGI scope when the connection was cut, for the access log.
CUT_KEY = "orpheus.cut"
RECEIVE_TIMEOUT, SLOW_READER = "receive timeout", "slow reader"
UNSENT_BYTES = 16 * 1024  # queued in the kernel per connection, beyond what is in flight
MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers

_REFUSAL_BODY = b'{"error": "too many open connections; retry shortly"}'
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY))


class RateLimitedWarning:
    """A warning logged at most once per `interval_s`, saying how many times it happened since."""

    def __init__(self, message: str, interval_s: float = 60.0, clock=time.monotonic):
        self.message = message
        self.interval_s = interval_s
        self.clock = clock
        self.count = 0  # since the last line
        self._last: float | None = None

    def note(self, detail: str = "") -> None:
        self.count += 1
        now = self.clock()
        if self._last is None or now - self._last >= self.interval_s:
            log.warning("%s: %d since the last report%s", self.message, self.count, f" (last: {detail})" if detail else "")
            self.count, self._last = 0, now


class ConnectionLimits:
    """The limits, shared by every connection of one server, and their counters."""

    def __init__(self, receive_timeout_s: float, send_timeout_s: float, max_connections: int):
        self.receive_timeout_s = receive_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_connections = max_connections
        self.refused = RateLimitedWarning(f"refused connections over the cap of {max_connections}")
        self.evicted = RateLimitedWarning(
            f"closed the oldest connections without a whole request, to make room under the cap of {max_connections}")
        self.receive_timeouts = RateLimitedWarning(
            f"closed connections that did not send a whole request within {receive_timeout_s:g} s")
        self.slow_readers = RateLimitedWarning(f"dropped clients that read nothing for {send_timeout_s:g} s")
        # Open connections by age, oldest first (a kept-alive one counts from its last response).
        self._by_age: dict[GuardedHttpToolsProtocol, None] = {}

    def opened(self, connection: GuardedHttpToolsProtocol) -> None:
        self._by_age.pop(connection, None)
        self._by_age[connection] = None

    def closed(self, connection: GuardedHttpToolsProtocol) -> None:
        self._by_age.pop(connection, None)

    def make_room(self) -> bool:
        """Close the oldest connection that has not sent a whole request; False if there is none."""
        for connection in list(self._by_age):
            if connection.waiting_for_request():
                self.closed(connection)
                self.evicted.note(_address(connection.client))
                connection.close_unfinished(RECEIVE_TIMEOUT)
                return True
        return False

    def protocol(self) -> type[HttpToolsProtocol]:
        """The protocol class to give uvicorn.Config(http=...)."""
        return self._bound(GuardedHttpToolsProtocol)

    def ws_protocol(self) -> type[WebSocketsSansIOProtocol]:
        """The WebSocket protocol class to give uvicorn.Config(ws=...)."""
        return self._bound(GuardedWebSocketProtocol)

    def _bound(self, protocol: type) -> type:
        """A subclass of protocol whose connections share these limits (uvicorn makes the instances)."""
        return type(f"Guarded{protocol.__name__}", (protocol,), {"limits": self})


class HeadTooLarge(ValueError):
    """Raised from the parser's callback: httptools turns it into the 400 its bad requests get."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ConnectionLimits  # set on the subclass ConnectionLimits.protocol() makes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over_cap = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self._receipt_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._requests_whole = self._responses_done = 0  # equal: no whole request waits for its answer
        if over_cap and not self.limits.make_room():
            self.limits.refused.note(_address(self.client))
            transport.write(_REFUSAL)
            transport.close()
            return
        self.limits.opened(self)
        _limit_unsent(transport)
        self._arm_receipt()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.limits.closed(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()  # the WebSocket protocol owns the connection from here on
        self.limits.closed(self)
        super().handle_websocket_upgrade()

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._requests_whole += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._responses_done += 1
        super().on_response_complete()
        if not self.transport.is_closing():
            self.limits.opened(self)  # waiting for its next request: as young as a new connection
            self._arm_receipt()  # the next request on this connection gets its own deadline

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"request line and headers over {MAX_HEAD_BYTES} bytes")

    def receiving(self) -> bool:
        """Open, ours (not handed to the WebSocket protocol), and its request not whole yet (or none
        sent since the last response)."""
        return (not self.transport.is_closing() and self.transport.get_protocol() is self
                and self._requests_whole == self._responses_done)

    def waiting_for_request(self) -> bool:
        """Receiving, with no response under way."""
        return self.receiving() and (
            self.cycle is None or not self.cycle.response_started or self.cycle.response_complete)

    def close_unfinished(self, why: str) -> None:
        """Close a connection whose request has not all arrived."""
        self._mark_cut(why)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # --- deadlines ---
    def _arm_receipt(self) -> None:
        if self._receipt_timer is not None:
            self._receipt_timer.cancel()
        self._receipt_timer = self.loop.call_later(self.limits.receive_timeout_s, self._receipt_expired)

    def _receipt_expired(self) -> None:
        self._receipt_timer = None
        if not self.receiving():
            return  # the request is in (its response takes as long as it takes), or gone
        self.limits.receive_timeouts.note(_address(self.client))
        self.close_unfinished(RECEIVE_TIMEOUT)

    def _send_expired(self) -> None:
        self._send_timer = None
        if self.transport.is_closing():
            return
        path = self.scope["path"] if self.scope else "-"
        self.limits.slow_readers.note(f"{_address(self.client)} {path}")
        self._mark_cut(SLOW_READER)
        _reset(self.transport)

    def _mark_cut(self, why: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.scope[CUT_KEY] = why

    def _cancel_timers(self) -> None:
        for timer in (self._receipt_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._receipt_timer = self._send_timer = None


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the send deadline: a client that reads nothing for
    send_timeout_s while frames wait to be written is reset, which ends its session."""

    limits: ConnectionLimits  # set on the subclass ConnectionLimits.ws_protocol() makes
    _send_timer: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_send_timer()
        super().connection_lost(exc)

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_expired(self) -> None:
        self._send_timer = None
        if not self.transport.is_closing():
            self.limits.slow_readers.note(f"{_address(self.client)} {self.scope.get('path', '-')}")
            _reset(self.transport)


def _reset(transport: asyncio.Transport) -> None:
    """Close with a reset, not a close: the bytes queued for the client (here and in the kernel) are
    dropped now instead of waiting for a reader that is not reading."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# accept() errors that asyncio reports through the loop's exception handler, with a traceback each
# time; it then pauses accepting for a second by itself.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log accept() failures for want of file descriptors or memory as one warning a minute, with
    their count, instead of one traceback each (which filled disks under a connection flood);
    every other error goes to the handler that was there."""
    warning = RateLimitedWarning("could not accept connections (out of file descriptors or memory)")
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            warning.note(str(exc))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _limit_unsent(transport: asyncio.Transport) -> None:
    """Keep at most UNSENT_BYTES queued in the kernel for a client: beyond that the transport's own
    buffer fills and pauses the response, so a client that stops reading is noticed after about a
    second of audio, not after the megabytes the kernel would otherwise queue for it. Only bytes not
    yet sent count: what is in flight (and so the throughput over a long path) is not limited."""
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT") and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_BYTES)
        except OSError:  # not TCP after all, or a kernel without it: the send deadline still holds
            pass


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown client"
