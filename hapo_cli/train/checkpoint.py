"""Checkpoints: `checkpoints/step_NNNNNN/` (model, tokenizer, trainer_state.pt, MANIFEST.json).

Written to a temporary folder, with MANIFEST.json (every file's size and checksum) written LAST,
then renamed into place: a checkpoint is complete exactly when its manifest verifies. Resume
takes the newest checkpoint that verifies (a damaged newest one: one warning line, the previous
one is used), and refuses in one line when none does. Leftovers of a killed save (`.step_*`
folders, `.LATEST.*` files) are removed at start. A full disk is one line naming the path and
the free space; the previous checkpoint stays intact.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from hapo_cli.errors import HapoError
from hapo_cli.runs.files import atomic_write_json, atomic_write_text, free_space, permissions_of_new_dir

STATE_FILE = "trainer_state.pt"
MANIFEST = "MANIFEST.json"


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"files": {str(p.relative_to(folder)): {"size": p.stat().st_size, "blake2b": _digest(p)} for p in files}}


def verify(folder: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong (one phrase)."""
    mf = folder / MANIFEST
    if not mf.is_file():
        return "no manifest (an unfinished save)"
    try:
        files = json.loads(mf.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "its manifest is damaged"
    for name, want in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["size"]:
            return f"{name} has {p.stat().st_size} bytes, expected {want['size']}"
        if _digest(p) != want["blake2b"]:
            return f"{name} does not match its checksum"
    return None


def clean_leftovers(run_dir: Path) -> list[str]:
    """Remove temporary folders and files of saves that were killed; -> their names."""
    root = Path(run_dir) / "checkpoints"
    gone = []
    for p in list(root.glob(".step_*")) + list(root.glob(".LATEST.*")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        gone.append(p.name)
    return gone


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 1) -> Path:
    """Write checkpoints/step_NNNNNN atomically (temp folder, manifest last, rename), then prune."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:06d}.", dir=ckpt_root))
    os.chmod(tmp, permissions_of_new_dir())
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        for p in tmp.rglob("*"):  # libraries write some files 0600: give them what the umask allows
            if p.is_file():
                os.chmod(p, 0o666 & permissions_of_new_dir())
        atomic_write_json(tmp / MANIFEST, _manifest(tmp))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as err:
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else 0
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not _no_space(err, ckpt_root, written):
            raise
        raise HapoError(f"no space left on the device writing checkpoint {final} ({free_space(ckpt_root)} free): "
                        f"the previous checkpoint and all finished metrics are intact; free space, then resume") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(ckpt_root / "LATEST", final.name + "\n")
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _no_space(err: BaseException | None, where: Path, written: int) -> bool:
    """Whether a failed save ran out of disk: ENOSPC in the error chain, or a write failure (torch's
    stream writer hides the errno) while the device has less room left than this save had written."""
    chain = err
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        chain = chain.__cause__ or chain.__context__
    text = str(err)
    write_failed = any(m in text for m in ("No space left", "unexpected pos", "file write failed", "failed writing"))
    return write_failed and shutil.disk_usage(where).free < max(written, 64 << 20)


def latest_checkpoint(run_dir: Path, warn=None) -> Path | None:
    """The newest checkpoint that verifies; a damaged newer one is reported through `warn` (one line each).

    Raises HapoError when checkpoints exist but none is intact.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    steps = sorted((p for p in (Path(run_dir) / "checkpoints").glob("step_*") if p.is_dir()), reverse=True)
    problems = []
    for p in steps:
        why = verify(p)
        if why is None:
            for q, w in problems:
                warn(f"warning: checkpoint {q} is not usable ({w}); resuming from {p.name} instead")
            return p
        problems.append((p.name, why))
    if problems:
        raise HapoError(f"no intact checkpoint in {Path(run_dir) / 'checkpoints'}: "
                        + "; ".join(f"{q}: {w}" for q, w in problems) + " (start a new run_dir)")
    return None


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
