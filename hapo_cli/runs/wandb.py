"""The W&B logger for `hapo train` and `hapo eval`: online with credentials, else offline files."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: str, run_dir: Path) -> str:
    """auto -> online with credentials, else offline (and say where the files go)."""
    if mode != "auto":
        return mode
    if wandb_has_credentials():
        return "online"
    print(f"W&B: no credentials found, logging offline to {run_dir}/wandb "
          f"(sync later: wandb sync {run_dir}/wandb/offline-run-*)", file=sys.stderr)
    return "offline"


class WandbLogger:
    """Thin W&B run: `log(record, step)`, `log_table`, `finish`; a no-op when disabled or not installed."""

    def __init__(self, run_dir: Path, config: dict, *, mode: str = "auto", project: str = "hapo",
                 entity: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 name: str | None = None, job_type: str | None = None, resume_id: str | None = None):
        self.run = None
        if mode == "disabled":
            return
        mode = resolve_mode(mode, Path(run_dir))
        try:
            import wandb
        except ImportError:
            print("W&B: wandb is not installed; logging to files only", file=sys.stderr)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project, entity=entity, group=group, tags=list(tags or []) or None, name=name,
            job_type=job_type, dir=str(run_dir), mode=mode, config=config,
            id=resume_id, resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def set_summary(self, key: str, value: Any) -> None:
        if self.run is not None:
            self.run.summary[key] = value

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
