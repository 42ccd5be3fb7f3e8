"""A run directory and its provenance.

Layout (training run; `hapo eval` writes meta.json and its own files the same way)::

    config.yaml        resolved configuration
    meta.json          git commit, package versions, command line, start time
    metrics.jsonl      one JSON object per step (appended and flushed as it happens)
    rollouts/          a sample of each step's responses (runs/rollouts.py)
    checkpoints/       step_000020/ (model, tokenizer, trainer_state.pt) and LATEST (train/checkpoint.py)
    summary.json       final table (warm start vs final)
    wandb/             W&B files (offline runs can be synced later with `wandb sync`)
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from hapo_cli.runs.files import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def package_versions() -> dict[str, str]:
    names = ["hapo", "torch", "transformers", "accelerate", "datasets", "hydra-core", "wandb", "math-verify", "vllm", "trl"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_meta(run_dir: Path, argv: list[str] | None = None, **extra: Any) -> None:
    """meta.json: git commit, package versions, command line, host, start time (+ `extra`)."""
    import torch

    meta = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "argv": list(argv if argv is not None else sys.argv),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
    atomic_write_json(Path(run_dir) / META_FILE, meta)


def run_label(algo: str, components: str = "") -> str:
    """`dapo`, `dapo+B`, `hapo` (all four components are what HAPO is), `hapo+A+B+C`: the same label
    `hapo report` gives a run, so a DAPO+B run never reads like plain DAPO."""
    letters = [c for c in components if c.strip()]
    if not letters or (algo == "hapo" and sorted(letters) == ["A", "B", "C", "D"]):
        return algo
    return "+".join([algo, *letters])


def default_run_dir(output_dir: str, run_name: str | None, algo: str, data: str, components: str = "") -> Path:
    """<output_dir>/<run_name>, or <output_dir>/<algo>[+components]-<data>-<time> (e.g. dapo+B-synthetic-...);
    `components` are the letters switched on (`cfg.algorithm.letters()`)."""
    name = run_name or f"{run_label(algo, components)}-{Path(data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(output_dir) / name


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / SUMMARY_FILE
    return json.loads(p.read_text()) if p.is_file() else None


class MetricsLog:
    """metrics.jsonl: one object per step, appended and flushed immediately (torn lines: runs/files.py)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run redoes them) and a torn last line."""
        if not self.path.exists():
            return
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def append(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path).records

    def torn(self) -> bool:
        """The last line was cut short (a killed writer); readers drop it."""
        return read_jsonl(self.path).torn
