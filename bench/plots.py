"""latency.png: time-to-first-audio percentiles and RTFx against the load of each level."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from .report import CLOSED, LevelSummary  # noqa: E402


def plot_latency(levels: list[LevelSummary], path: Path, title: str) -> None:
    levels = sorted(levels, key=lambda s: s.load)
    x = [s.load for s in levels]
    fig, (ttfa_ax, rtfx_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for name in ("p50", "p95", "p99"):
        ttfa_ax.plot(x, _series(levels, f"ttfa_{name}", 1000), marker="o", label=name)
    ttfa_ax.set_ylabel("time to first audio (ms)")
    ttfa_ax.set_ylim(bottom=0)
    rtfx_ax.plot(x, _series(levels, "rtfx_p50"), marker="o", label="per request (p50)")
    rtfx_ax.plot(x, _series(levels, "rtfx_aggregate"), marker="s", label="all requests together")
    rtfx_ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time")
    rtfx_ax.set_ylabel("RTFx (audio seconds per second)")
    rtfx_ax.set_ylim(bottom=0)
    closed = levels[0].mode == CLOSED if levels else True
    for ax in (ttfa_ax, rtfx_ax):
        ax.set_xlabel("concurrent requests" if closed else "requests per second")
        if x and max(x) / min(x) >= 8:  # levels like 1, 4, 16, 64 spread out evenly
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(levels: list[LevelSummary], name: str, scale: float = 1.0) -> list[float]:
    # A level with no successful request has no value: nan leaves a gap in the line.
    return [float("nan") if getattr(s, name) is None else scale * getattr(s, name) for s in levels]
