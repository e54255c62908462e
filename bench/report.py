"""Per-level summaries of a run and the tables that show them, alone or two runs side by side."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .measure import RequestResult
from .playback import percentile

CLOSED, OPEN = "closed", "open"
REALTIME_TTFA_P99 = 0.5  # seconds; the spec's bar for a level whose streams count as real-time


@dataclass
class LevelSummary:
    mode: str  # CLOSED (fixed concurrency) or OPEN (Poisson arrivals)
    load: float  # concurrency, or requests per second
    requests: int
    succeeded: int
    errors: dict[str, int]  # failed requests by status code or failure kind
    error_rate: float
    wall_seconds: float
    audio_seconds: float  # of the successful requests
    ttfa_p50: float | None
    ttfa_p95: float | None
    ttfa_p99: float | None
    total_p50: float | None
    total_p95: float | None
    total_p99: float | None
    rtfx_p50: float | None  # of each request
    rtfx_aggregate: float | None  # audio seconds of all requests per second of the level's wall time
    streams_accounted: int  # successful requests whose playback could be followed chunk by chunk
    realtime_streams: int  # of those, the ones that never ran dry
    max_stall_seconds: float | None
    realtime: bool | None  # every request a real-time stream and p99 TTFA under 0.5 s; None: not streamed

    @property
    def label(self) -> str:
        return level_label(self.mode, self.load)


def level_label(mode: str, load: float) -> str:
    return f"concurrency {load:g}" if mode == CLOSED else f"rate {load:g}/s"


def summarize(mode: str, load: float, results: list[RequestResult], wall_seconds: float,
              streamed: bool) -> LevelSummary:
    """streamed: whether playback of these requests can be followed chunk by chunk."""
    ok = [r for r in results if r.ok]
    ttfa = [r.ttfa for r in ok]
    total = [r.total for r in ok]
    accounted = [r for r in ok if r.underruns is not None]
    realtime_streams = sum(r.underruns == 0 for r in accounted)
    audio = sum(r.audio_seconds for r in ok)
    realtime = None
    if streamed:
        realtime = bool(ok) and realtime_streams == len(results) and _pct(ttfa, 99) < REALTIME_TTFA_P99
    return LevelSummary(
        mode=mode, load=load, requests=len(results), succeeded=len(ok),
        errors=dict(Counter(r.error for r in results if not r.ok)),
        error_rate=(len(results) - len(ok)) / len(results) if results else 0.0,
        wall_seconds=wall_seconds, audio_seconds=audio,
        ttfa_p50=_pct(ttfa, 50), ttfa_p95=_pct(ttfa, 95), ttfa_p99=_pct(ttfa, 99),
        total_p50=_pct(total, 50), total_p95=_pct(total, 95), total_p99=_pct(total, 99),
        rtfx_p50=_pct([r.rtfx for r in ok], 50),
        rtfx_aggregate=audio / wall_seconds if ok and wall_seconds > 0 else None,
        streams_accounted=len(accounted), realtime_streams=realtime_streams,
        max_stall_seconds=max((r.stall_seconds for r in accounted), default=None),
        realtime=realtime,
    )


def _pct(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None  # None, not nan: results files are strict JSON


def realtime_capacity(levels: list[LevelSummary]) -> int | None:
    """The largest concurrency whose streams all stayed real-time (0 if none did); None when no
    closed-loop level was streamed."""
    streamed = [s for s in levels if s.mode == CLOSED and s.realtime is not None]
    if not streamed:
        return None
    return int(max((s.load for s in streamed if s.realtime), default=0))


_COLUMNS = ("level", "reqs", "errors", "ttfa p50", "p95", "p99", "rtfx p50", "rtfx all", "real-time", "max stall")


def _cells(s: LevelSummary) -> list[str]:
    realtime = f"{s.realtime_streams}/{s.streams_accounted}" if s.streams_accounted else "-"
    return [s.label, str(s.requests), f"{100 * s.error_rate:.1f}%", _ms(s.ttfa_p50), _ms(s.ttfa_p95),
            _ms(s.ttfa_p99), _x(s.rtfx_p50), _x(s.rtfx_aggregate), realtime, _s(s.max_stall_seconds)]


def table(levels: list[LevelSummary]) -> str:
    """One row per level: time to first audio percentiles, RTFx, real-time streams, error rate."""
    return _layout(_COLUMNS, [_cells(s) for s in levels])


def comparison(a: tuple[str, list[LevelSummary]], b: tuple[str, list[LevelSummary]]) -> str:
    """Two runs, named, level by level: each level's row from run a, then from run b."""
    (name_a, levels_a), (name_b, levels_b) = a, b
    by_level = {}
    for run, levels in ((name_a, levels_a), (name_b, levels_b)):
        for s in levels:
            by_level.setdefault((s.mode, s.load), []).append((run, s))
    rows = []
    for key in sorted(by_level):
        for n, (run, s) in enumerate(by_level[key]):
            cells = _cells(s)
            rows.append([cells[0] if n == 0 else "", run, *cells[1:]])
    return _layout((_COLUMNS[0], "run", *_COLUMNS[1:]), rows)


def error_lines(results: list[RequestResult]) -> list[str]:
    """One line per kind of failure: how many, and the first message seen for it."""
    counts = Counter(r.error for r in results if not r.ok)
    first = {}
    for r in results:
        if not r.ok:
            first.setdefault(r.error, r.message)
    return [f"{error}: {count} request{'s' * (count != 1)} ({first[error]})" for error, count in counts.most_common()]


def _layout(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    # Text columns (level, run) are left-aligned, figures right-aligned.
    text = {i for i, h in enumerate(headers) if h in ("level", "run")}
    lines = []
    for row in (headers, *rows):
        lines.append("  ".join(c.ljust(w) if i in text else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(line.rstrip() for line in lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f} ms"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"
