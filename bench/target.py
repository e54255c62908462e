"""What the benchmark calls: a base URL, one of the two speech APIs, and the request it sends."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEGMIND_PATH = "/v1/orpheus-3b-0.1"
OPENAI_PATH = "/v1/audio/speech"
APIS = ("segmind", "openai")


@dataclass(frozen=True)
class Target:
    base_url: str
    api: str = "segmind"
    api_key: str | None = None
    stream: bool = True  # Segmind: ask for a chunked WAV ("stream": true, an orpheus-local extension)
    audio_format: str = "wav"  # OpenAI response_format
    stream_format: str = "audio"  # OpenAI: raw audio bytes or server-sent events
    model: str = "orpheus"  # OpenAI model field
    voice: str | None = None  # None: the server's default voice
    max_new_tokens: int | None = None
    seed: int | None = None  # an orpheus-local extension; other servers ignore or refuse it

    def __post_init__(self):
        if self.api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {self.api!r}")

    @property
    def url(self) -> str:
        # Segmind's and OpenAI's clients both take a base URL ending in /v1: accept it with or without.
        root = self.base_url.rstrip("/").removesuffix("/v1")
        return root + (SEGMIND_PATH if self.api == "segmind" else OPENAI_PATH)

    @property
    def response_format(self) -> str:
        return "wav" if self.api == "segmind" else self.audio_format

    @property
    def streamed(self) -> bool:
        """Whether audio is expected to arrive as it is generated (OpenAI's speech route always streams)."""
        return self.stream if self.api == "segmind" else True

    @property
    def playback_accounted(self) -> bool:
        """Whether each read's seconds of audio are known, to follow playback (wav and pcm streams)."""
        return self.streamed and self.response_format in ("wav", "pcm")

    @property
    def sse(self) -> bool:
        return self.api == "openai" and self.stream_format == "sse"

    def headers(self) -> dict[str, str]:
        if self.api_key is None:
            return {}
        # Each API's documented header; orpheus-local accepts either on every route.
        if self.api == "segmind":
            return {"x-api-key": self.api_key}
        return {"Authorization": f"Bearer {self.api_key}"}

    def body(self, text: str) -> dict:
        if self.api == "segmind":
            body = {"text": text}
            if self.stream:
                body["stream"] = True
        else:
            body = {"model": self.model, "input": text, "response_format": self.audio_format}
            if self.sse:
                body["stream_format"] = "sse"
        optional = {"voice": self.voice, "max_new_tokens": self.max_new_tokens, "seed": self.seed}
        return body | {name: value for name, value in optional.items() if value is not None}

    def describe(self) -> dict:
        """What a results file records about the target: everything but the key."""
        fields = asdict(self)
        del fields["api_key"]
        return {**fields, "url": self.url, "authenticated": self.api_key is not None}
