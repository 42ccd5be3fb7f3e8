"""Saved rollouts: `rollouts/step_NNNNNN.jsonl` in a run directory, one response a line.

Each line: {"group", "text", "answer", "acc", "score", "tokens": [str], and one float list per
token column: "entropy", "h", "adv", "temperature"} (lists cut to the response length).
Written by the trainer (`write_step`), read by `hapo analyze` and `hapo report` (`read_rollouts`,
`step_files`, `spread`) under the one torn-line policy of runs/files.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hapo_cli.runs.files import iter_jsonl

ROLLOUTS_DIR = "rollouts"
TOKEN_COLUMNS = ("entropy", "h", "adv", "temperature")
_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / ROLLOUTS_DIR / f"step_{step:06d}.jsonl"


def write_step(run_dir: Path, step: int, rows: Sequence[dict[str, Any]], token_columns: dict[str, list[list[float]]],
               lengths: Sequence[int], digits: int = 5) -> Path:
    """Write one step's file: `rows[i]` (group, text, answer, acc, score, tokens) plus each token
    column's row i cut to `lengths[i]` and rounded to `digits`."""
    import json

    path = step_path(run_dir, step)
    path.parent.mkdir(exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            L = int(lengths[i])
            cols = {k: [round(x, digits) for x in v[i][:L]] for k, v in token_columns.items()}
            f.write(json.dumps({**row, **cols}) + "\n")
    return path


def step_files(run_dir: Path, first: int | None = None, last: int | None = None) -> list[tuple[int, Path]]:
    """(step, file) of the saved rollouts of a run within [first, last], in step order."""
    out = []
    for p in (Path(run_dir) / ROLLOUTS_DIR).glob("step_*.jsonl"):
        m = _STEP_FILE.match(p.name)
        if not m:
            continue
        step = int(m.group(1))
        if (first is None or step >= first) and (last is None or step <= last):
            out.append((step, p))
    return sorted(out)


def spread(files: list, max_files: int | None) -> list:
    """At most `max_files` of `files`, evenly spaced, first and last kept (None: all)."""
    if max_files is None or len(files) <= max_files:
        return list(files)
    if max_files == 1:
        return [files[-1]]
    return [files[round(i * (len(files) - 1) / (max_files - 1))] for i in range(max_files)]


def read_rollouts(path: Path) -> Iterator[dict[str, Any]]:
    """The responses of one rollout file, one dict each (streams; a torn last line is dropped)."""
    return iter_jsonl(path)
