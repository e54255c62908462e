"""First-sentence latency of a voice agent: the WebSocket session against one HTTP request.

    python bench/voice_agent.py                      # starts `orpheus-local serve --demo` on CPU
    python bench/voice_agent.py --base-url http://127.0.0.1:8000 --rounds 20

A voice agent streams its LLM's answer into WS /v1/audio/speech/stream a few characters at a time;
what the user waits for is the time from the end of the first sentence to its first audio. Here the
sentence is typed in 1-3 character pieces over an open session, and the clock starts when the
piece that completes it is sent: its end mark and the whitespace after it (the leading space of the
next token). The same sentence, with the same seed and settings, is then sent as one streaming HTTP
request (POST /v1/audio/speech, pcm) on a kept-alive connection, the clock starting when the request
is sent. Both stop at the first audio bytes. Rounds alternate the two; medians are compared in one
run. The WebSocket must not be slower.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server_process import ServeProcess  # noqa: E402

SENTENCE = "Hello there, how are you doing today?"
# The default max_new_tokens: a part may hold up to 136 characters, so the sentence is one utterance.
SETTINGS = {"voice": "tara", "seed": 11}


async def websocket_latency(ws_url: str, headers: dict, rng: random.Random) -> float:
    """Seconds from sending the piece that completes the sentence to its first audio frame."""
    async with websockets.connect(ws_url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.update", **SETTINGS}))
        head, last = SENTENCE[:-4], SENTENCE[-4:] + " "  # "day?" and the space the next token brings
        i = 0
        while i < len(head):
            n = rng.randint(1, 3)
            await ws.send(json.dumps({"type": "input_text.append", "text": head[i:i + n]}))
            i += n
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "input_text.append", "text": last}))
        while not isinstance(message := await ws.recv(), bytes):
            if json.loads(message)["type"] == "error":
                raise RuntimeError(message)
        latency = time.perf_counter() - started
        await ws.send(json.dumps({"type": "response.cancel"}))
        await ws.send(json.dumps({"type": "session.close"}))
        async for _ in ws:  # until the server closes
            pass
    return latency


async def http_latency(client: httpx.AsyncClient) -> float:
    """Seconds from sending the request to its first audio bytes."""
    body = {"input": SENTENCE, "response_format": "pcm", **SETTINGS}
    started = time.perf_counter()
    async with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for _ in response.aiter_raw():
            return time.perf_counter() - started
    raise RuntimeError("no audio")


async def measure(base_url: str, api_key: str | None, rounds: int) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ws_url = base_url.replace("http", "ws", 1) + "/v1/audio/speech/stream"
    rng = random.Random(0)
    ws_s, http_s = [], []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:
        await http_latency(client)  # warm both paths before measuring
        await websocket_latency(ws_url, headers, rng)
        for i in range(rounds):  # alternating which goes first
            if i % 2:
                http_s.append(await http_latency(client))
            ws_s.append(await websocket_latency(ws_url, headers, rng))
            if not i % 2:
                http_s.append(await http_latency(client))
    ws_ms, http_ms = 1000 * statistics.median(ws_s), 1000 * statistics.median(http_s)
    return {"rounds": rounds, "sentence": SENTENCE, **SETTINGS,
            "websocket_first_audio_ms_p50": round(ws_ms, 1), "http_first_audio_ms_p50": round(http_ms, 1),
            "websocket_over_http": round(ws_ms / http_ms, 3),
            "websocket_ms": [round(1000 * s, 1) for s in ws_s], "http_ms": [round(1000 * s, 1) for s in http_s]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="a running server; unset: start `serve --demo` on CPU")
    parser.add_argument("--api-key")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    server = None
    if args.base_url is None:
        server = ServeProcess(["--demo", "--device", "cpu"])
        server.wait_ready()
    try:
        result = asyncio.run(measure(args.base_url or server.base_url, args.api_key, args.rounds))
    finally:
        if server is not None:
            server.stop()
    print(f"first audio after the first sentence, median of {args.rounds}: "
          f"WebSocket {result['websocket_first_audio_ms_p50']:.0f} ms, "
          f"HTTP {result['http_first_audio_ms_p50']:.0f} ms, ratio {result['websocket_over_http']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
