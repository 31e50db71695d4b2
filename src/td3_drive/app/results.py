"""Evaluation results and how they are written: JSON (strict, NaN as null) and CSV.  No pickle anywhere."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EvalResult:
    """Per-episode metrics (EpisodeMetrics dicts + ``return`` + ``seed``) of one agent / checkpoint."""

    agent: str
    episodes: list[dict[str, Any]]
    summary: dict[str, Any] | None
    ticks: int
    max_ticks_reached: bool
    wall_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "episodes": self.episodes, "summary": self.summary, "ticks": self.ticks,
                "max_ticks_reached": self.max_ticks_reached, "wall_s": self.wall_s, **self.meta}


def write_csv(result_rows: list[dict[str, Any]], csv_path: Path) -> None:
    """Rows (per episode, per agent, per test) -> CSV (one column per field, NaN as empty)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in result_rows:
        columns += [c for c in row if c not in columns]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in result_rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def write_json(data: Any, path: Path) -> None:
    """Strict JSON (NaN / inf -> null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=1, sort_keys=False))


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return value


def save_eval(result: EvalResult, out: Path) -> dict[str, str]:
    """``out/episodes.json`` (meta, per-episode rows, summary) and ``out/episodes.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result.to_dict(), out / "episodes.json")
    write_csv(result.episodes, out / "episodes.csv")
    return {"json": str(out / "episodes.json"), "csv": str(out / "episodes.csv")}
