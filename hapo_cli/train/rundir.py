"""Opening a training run's directory: new or resumed, locked, with honest provenance.

- A new run writes config.yaml and meta.json; `resume=true` never overwrites them: the resume's
  command line, time and allowed changes are appended to meta.json's "resumes".
- A resume that changes anything that alters the results is refused, naming the keys; keys in
  RESUME_FREE (more steps, checkpointing, logging) may change, and `resume_allow=[key,...]`
  allows others explicitly (recorded).
- One process per run directory (runs/lock.py); a folder this process created is removed again
  if the run fails before its first record (no stubs).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from hapo_cli.errors import HapoError
from hapo_cli.runs.files import atomic_write_json, atomic_write_text
from hapo_cli.runs.lock import DirLock
from hapo_cli.runs.rundir import CONFIG_FILE, META_FILE, METRICS_FILE, default_run_dir, write_meta

# keys a resume may change without changing what the steps already trained compute
RESUME_FREE = ("trainer.total_steps", "trainer.save_every", "trainer.keep_checkpoints", "trainer.num_threads",
               "trainer.val_every", "logger", "resume", "resume_allow", "run_dir", "run_name", "output_dir",
               "save_rollouts", "trainer.max_skipped_steps")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} of the leaves that differ."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _free(key: str, allowed: list[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in (*RESUME_FREE, *allowed))


class RunDir:
    """The run directory of this process (main rank): path, lock, whether we created it."""

    def __init__(self, cfg, raw_cfg, argv: list[str], main: bool, meta: dict | None = None):
        self.cfg, self.main = cfg, main
        self.path = self._path(cfg)
        self.created = False
        self.lock = DirLock(self.path, "hapo train")
        if not main:
            return
        if cfg.resume:
            if not (self.path / CONFIG_FILE).is_file():
                raise HapoError(f"resume=true but {self.path} holds no run (no {CONFIG_FILE}): check run_dir, "
                                "or drop resume=true to start a new run there")
            self.lock.acquire()
            self._record_resume(raw_cfg, argv)
            return
        if (self.path / METRICS_FILE).exists():
            raise HapoError(f"run directory {self.path} already has a run: add resume=true to continue it, or choose another run_dir")
        self.created = not self.path.exists()
        self.lock.acquire()
        from omegaconf import OmegaConf

        atomic_write_text(self.path / CONFIG_FILE, OmegaConf.to_yaml(raw_cfg))
        write_meta(self.path, argv, **(meta or {}))

    @staticmethod
    def _path(cfg) -> Path:
        if cfg.run_dir:
            return Path(cfg.run_dir)
        if cfg.resume:
            raise HapoError("resume=true needs run_dir=PATH (the run directory to continue)")
        return default_run_dir(cfg.output_dir, cfg.run_name, cfg.algorithm.name, cfg.data.path or cfg.data.name)

    def _record_resume(self, raw_cfg, argv: list[str]) -> None:
        import yaml
        from omegaconf import OmegaConf

        old = yaml.safe_load((self.path / CONFIG_FILE).read_text()) or {}
        new = OmegaConf.to_container(raw_cfg, resolve=True)
        changes = config_changes(old, new)
        allowed = list(self.cfg.resume_allow)
        refused = {k: v for k, v in changes.items() if not _free(k, allowed)}
        if refused:
            what = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in refused.items())
            raise HapoError(f"resume would change what this run computes: {what}; resume with the run's own settings, "
                            f"start a new run_dir, or allow it explicitly with resume_allow=[{','.join(refused)}]")
        meta_path = self.path / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.setdefault("resumes", []).append({
            "argv": list(argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "changed": {k: [a, b] for k, (a, b) in changes.items() if k not in ("resume",)},
        })
        atomic_write_json(meta_path, meta)

    def started(self) -> None:
        """The run wrote its first record: the folder is no longer ours to remove on failure."""
        self.created = False

    def close(self, failed: bool) -> None:
        if failed and self.created and self.main and not (self.path / METRICS_FILE).exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.lock.release()
