"""The sweep state file `sweep.json`: the plan and each run's status, rewritten atomically.

    {"version": 1, "name": ..., "created": ..., "updated": ..., "argv": [...],
     "base_overrides": [...], "reference_label": ..., "variants": [Variant.as_dict()...],
     "runs": [{"id", "variant", "seed", "overrides", "status", "attempts", "returncode",
               "error", "started", "finished", "seconds"}...]}

Run folders are `<sweep dir>/<run id>`. The files decide what a run needs, not the status
field (a sweep killed with -9 never wrote its last status): summary.json means finished,
metrics.jsonl without summary.json means interrupted (resume), neither means not started.
Read by `hapo ablate` (sweep/) and `hapo report` (report/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hapo_cli.errors import HapoError
from hapo_cli.runs.files import atomic_write_json

STATE_FILE = "sweep.json"
VERSION = 1

DONE, FAILED, PENDING, RUNNING, INTERRUPTED = "done", "failed", "pending", "running", "interrupted"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def load_state(sweep_dir: Path) -> dict[str, Any] | None:
    p = Path(sweep_dir) / STATE_FILE
    if not p.is_file():
        return None
    try:
        state = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HapoError(f"cannot read {p}: {err}; move it away to start the sweep again") from None
    if not isinstance(state, dict) or "runs" not in state or "variants" not in state:
        raise HapoError(f"{p} is not a hapo sweep state file; choose another --sweep-dir")
    return state


def save_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    state["updated"] = now()
    atomic_write_json(Path(sweep_dir) / STATE_FILE, state)


def run_files_status(run_dir: Path) -> str:
    """done (summary.json), interrupted (metrics.jsonl only) or pending (nothing yet)."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return DONE
    if (run_dir / "metrics.jsonl").is_file():
        return INTERRUPTED
    return PENDING


def plan_difference(saved: dict[str, Any], planned: list[dict[str, Any]]) -> list[str]:
    """Human-readable differences that make the saved plan incompatible (added runs are fine)."""
    old = {r["id"]: r for r in saved["runs"]}
    new_ids = {r["id"] for r in planned}
    diffs = []
    for r in planned:
        o = old.get(r["id"])
        if o is None or o["overrides"] == r["overrides"]:
            continue
        removed = [x for x in o["overrides"] if x not in r["overrides"]]
        added = [x for x in r["overrides"] if x not in o["overrides"]]
        change = ", ".join([f"now {x}" for x in added] + [f"was {x}" for x in removed]) or "order of overrides"
        diffs.append(f"{r['id']}: {change}")
    gone = [i for i in old if i not in new_ids]
    if gone:
        diffs.append(f"runs no longer planned: {', '.join(gone)}")
    return diffs
