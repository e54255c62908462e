"""A minimal voice agent: an LLM's answer, streamed token by token, spoken as it is written.

    # any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp's server, ...)
    python examples/voice_agent.py --llm-base-url http://127.0.0.1:11434/v1 --llm-model llama3.2 \\
        "Tell me about the moon in three sentences."

    # no LLM at hand: a canned answer, sent at an LLM's pace
    python examples/voice_agent.py --offline

It opens one session on WS /v1/audio/speech/stream, forwards each token of the answer as it arrives
(input_text.append), asks for the rest to be spoken when the answer ends (session.close), and
writes the audio to a WAV file. The server starts speaking each sentence as soon as it is complete,
so the first audio does not wait for the answer to end. The script prints, for each sentence, the
time from its last character being sent to its first audio arriving.

Needs `pip install websockets openai` (openai only without --offline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import wave
from typing import AsyncIterator

import websockets

SAMPLE_RATE = 24000
OFFLINE_ANSWER = ("The moon is about a quarter of the size of the Earth. It has no air, so its sky is black "
                  "even during the day. Its gravity pulls on our oceans and makes the tides.")


async def offline_tokens(text: str, tokens_per_s: float) -> AsyncIterator[str]:
    """text in word-sized pieces with their leading space, as a chat model streams them."""
    words = text.split(" ")
    for i, word in enumerate(words):
        await asyncio.sleep(1 / tokens_per_s)
        yield word if i == 0 else " " + word


async def llm_tokens(args: argparse.Namespace) -> AsyncIterator[str]:
    from openai import AsyncOpenAI

    llm = AsyncOpenAI(base_url=args.llm_base_url, api_key=args.llm_api_key or os.environ.get("OPENAI_API_KEY", "-"))
    stream = await llm.chat.completions.create(
        model=args.llm_model, stream=True,
        messages=[{"role": "system", "content": "Answer in plain spoken sentences, no lists or markdown."},
                  {"role": "user", "content": args.prompt}])
    async for chunk in stream:
        if chunk.choices and (text := chunk.choices[0].delta.content):
            yield text


class Transcript:
    """What was sent, and when each character of it was."""

    def __init__(self):
        self.text = ""
        self.sent_at: list[float] = []  # per character

    def add(self, piece: str) -> None:
        self.text += piece
        self.sent_at += [time.perf_counter()] * len(piece)

    def end_time(self, spoken: str, search_from: int) -> tuple[float, int]:
        """When the last character of `spoken` (a part of the text, whitespace aside) was sent."""
        end = self.text.find(spoken, search_from) + len(spoken)
        return self.sent_at[end - 1], end


async def speak(tokens: AsyncIterator[str], args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    transcript, pcm = Transcript(), bytearray()
    async with websockets.connect(args.tts_url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.update", "voice": args.voice, "response_format": "pcm"}))

        async def send_answer() -> None:
            async for token in tokens:
                transcript.add(token)
                await ws.send(json.dumps({"type": "input_text.append", "text": token}))
            await ws.send(json.dumps({"type": "session.close"}))

        sender = asyncio.create_task(send_answer())
        searched, text_end, first_audio = 0, None, None
        async for message in ws:
            if isinstance(message, bytes):
                if first_audio is None:
                    first_audio = time.perf_counter()
                    print(f"  first audio {1000 * (first_audio - text_end):.0f} ms after its last character")
                pcm += message
                continue
            event = json.loads(message)
            if event["type"] == "speech.started":
                text_end, searched = transcript.end_time(event["text"], searched)
                first_audio = None
                print(f"speaking: {event['text']}")
            elif event["type"] == "error":
                print(f"error: {event['message']}")
            elif event["type"] == "session.closed":
                break
        await sender
    with wave.open(args.out, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(bytes(pcm))
    print(f"wrote {len(pcm) / 2 / SAMPLE_RATE:.1f} s of audio to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Speak an LLM's streamed answer through orpheus-local.")
    parser.add_argument("prompt", nargs="?", default="Tell me about the moon in three sentences.")
    parser.add_argument("--tts-url", default="ws://127.0.0.1:8000/v1/audio/speech/stream")
    parser.add_argument("--api-key", help="the orpheus-local server's key, if it has keys")
    parser.add_argument("--voice", default="tara")
    parser.add_argument("--llm-base-url", default="https://api.openai.com/v1")
    parser.add_argument("--llm-model", default="gpt-4o-mini")
    parser.add_argument("--llm-api-key", help="default: $OPENAI_API_KEY")
    parser.add_argument("--offline", action="store_true", help="a canned answer instead of an LLM")
    parser.add_argument("--tokens-per-s", type=float, default=30.0, help="--offline: the pace of the canned answer")
    parser.add_argument("--out", default="answer.wav")
    args = parser.parse_args()
    tokens = offline_tokens(OFFLINE_ANSWER, args.tokens_per_s) if args.offline else llm_tokens(args)
    asyncio.run(speak(tokens, args))


if __name__ == "__main__":
    main()
