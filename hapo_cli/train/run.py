"""Run bookkeeping: the run directory, metrics.jsonl, atomic checkpoints, W&B.

Layout of a run directory::

    config.yaml        resolved configuration
    meta.json          git commit, package versions, command line, start time
    metrics.jsonl      one JSON object per step (appended and flushed as it happens)
    rollouts/          a sample of each step's responses (JSONL), for `hapo report`
    checkpoints/       step_000020/ (model, tokenizer, trainer_state.pt) and LATEST
    summary.json       final table (warm start vs final)
    wandb/             W&B files (offline runs can be synced later with `wandb sync`)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from hapo_cli.errors import HapoError
from hapo_cli.fileio import atomic_write_text


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


def default_run_dir(output_dir: str, run_name: str | None, algo: str, data: str) -> Path:
    name = run_name or f"{algo}-{Path(data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(output_dir) / name


class MetricsLog:
    """metrics.jsonl: one object per step, appended and flushed immediately."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run redoes them)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 1) -> Path:
    """Write checkpoints/step_NNNNNN atomically (temp folder + rename), then point LATEST at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:06d}.", dir=ckpt_root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(ckpt_root / "LATEST", final.name + "\n")
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / "LATEST"
    if pointer.exists():
        p = ckpt_root / pointer.read_text().strip()
        if (p / "trainer_state.pt").exists():
            return p
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(ckpt) / "trainer_state.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a broken file must be one line
        raise HapoError(f"cannot read checkpoint {ckpt}: {err}") from None


def capture_rng() -> dict[str, Any]:
    import random

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- W&B


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    """Thin W&B wrapper: online with credentials, otherwise offline files under the run directory."""

    def __init__(self, cfg, run_dir: Path, config_dict: dict, name: str, resume_id: str | None = None):
        self.run = None
        wcfg = cfg.logger.wandb
        mode = wcfg.mode
        if cfg.logger.name == "none" or mode == "disabled":
            return
        if mode == "auto":
            mode = "online" if wandb_has_credentials() else "offline"
            if mode == "offline":
                print(f"W&B: no credentials found, logging offline to {run_dir}/wandb (sync later: wandb sync {run_dir}/wandb/offline-run-*)",
                      file=sys.stderr)
        try:
            import wandb
        except ImportError:
            print("W&B: wandb is not installed; logging to metrics.jsonl only", file=sys.stderr)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=wcfg.project, entity=wcfg.entity, group=wcfg.group, tags=list(wcfg.tags) or None,
            name=name, dir=str(run_dir), mode=mode, config=config_dict,
            id=resume_id, resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def write_meta(run_dir: Path, argv: list[str]) -> None:
    meta = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "argv": argv,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(Path(run_dir) / "meta.json", json.dumps(meta, indent=2) + "\n")
