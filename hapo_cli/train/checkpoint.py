"""Checkpoints: `checkpoints/step_NNNNNN/` (model, tokenizer, trainer_state.pt) and `LATEST`.

Written to a temporary folder and renamed into place, so a checkpoint folder is complete or absent.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hapo_cli.errors import HapoError
from hapo_cli.runs.files import atomic_write_text

STATE_FILE = "trainer_state.pt"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 1) -> Path:
    """Write checkpoints/step_NNNNNN atomically (temp folder + rename), then point LATEST at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:06d}.", dir=ckpt_root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
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
        if (p / STATE_FILE).exists():
            return p
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a broken file must be one line
        raise HapoError(f"cannot read checkpoint {ckpt}: {err}") from None


def load_weights(ckpt: Path, model) -> None:
    """The checkpoint's safetensors into `model` (tied output embeddings re-tied)."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise HapoError(f"checkpoint {ckpt} does not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
