"""A run on disk: results.json (settings, per-level summaries, every request) and results.csv (one
row per request), and reading a results.json back for --compare."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .measure import RequestResult
from .report import LevelSummary

FORMAT = "orpheus-local-bench/1"


@dataclass
class Level:
    summary: LevelSummary
    requests: list[RequestResult]


@dataclass
class Run:
    meta: dict  # target, load settings, start time: what makes two runs comparable
    levels: list[Level]
    realtime_capacity: int | None


def write_json(path: Path, run: Run) -> None:
    doc = {
        "format": FORMAT,
        "meta": run.meta,
        "realtime_capacity": run.realtime_capacity,
        "levels": [{"summary": asdict(level.summary), "requests": [asdict(r) for r in level.requests]}
                   for level in run.levels],
    }
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


def write_csv(path: Path, run: Run) -> None:
    columns = ["mode", "load", *(f.name for f in fields(RequestResult))]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        for level in run.levels:
            for r in level.requests:
                writer.writerow({"mode": level.summary.mode, "load": level.summary.load, **asdict(r)})


def read_summaries(path: Path) -> tuple[dict, list[LevelSummary]]:
    """(meta, level summaries) of a results.json; ValueError if it is not one."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"expected format {FORMAT!r}")
        return doc["meta"], [LevelSummary(**level["summary"]) for level in doc["levels"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a benchmark results file: {exc}") from None
