"""Training rows from a table (DAPO-Math-17k, any local parquet/jsonl/json file) and the prompt order.

Each row becomes {id, question, answer}; the Task (hapo_cli.tasks) turns questions into prompts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from hapo_cli import seeds
from hapo_cli.errors import HapoError

DAPO_MATH_ID = "BytedTsinghua-SIA/DAPO-Math-17k"


def _dig(row: dict, dotted: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _question_text(value: Any) -> str:
    """A question column may be a string or a chat list [{role, content}, ...] (verl style)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return users[-1]
    raise HapoError(f"cannot read a question from {type(value).__name__} value {str(value)[:60]!r}: set data.question_key to a text or chat-list column")


def read_table(path: str) -> list[dict]:
    """Rows of a local parquet / jsonl / json file, or of a Hub dataset id (train split)."""
    from hapo_cli.data.benchmarks import read_local_table
    from hapo_cli.models import is_local_path

    p = Path(path).expanduser()
    if p.exists():
        return read_local_table(str(p))
    if is_local_path(path):
        raise HapoError(f"data file {path!r} does not exist: give a local .parquet/.jsonl/.json file or a Hub dataset id")
    try:
        import datasets

        return list(datasets.load_dataset(path, split="train"))
    except Exception:  # noqa: BLE001 - any hub failure is the same advice
        raise HapoError(
            f"cannot load dataset {path!r} from the Hugging Face Hub (offline or not cached): "
            f"download it where there is network and set data.path=/path/to/file.parquet"
        ) from None


def train_source(data_cfg) -> str:
    """The file or Hub id the training rows come from."""
    if data_cfg.path:
        return data_cfg.path
    if data_cfg.name == "dapo_math":
        return DAPO_MATH_ID
    if data_cfg.name == "local":
        raise HapoError("data=local needs the file: add data.path=/path/to/train.parquet (or .jsonl / .json)")
    return data_cfg.name


def load_train_rows(data_cfg, stats: dict | None = None) -> list[dict]:
    """{id, question, answer} rows of a table for training (deduplicated by question text).

    `stats`, when given, receives {"rows_read", "duplicates_dropped", "rows"}.
    """
    source = train_source(data_cfg)
    table = read_table(source)
    rows, seen, dropped = [], set(), 0
    for i, r in enumerate(table):
        q = _dig(r, data_cfg.question_key)
        a = _dig(r, data_cfg.answer_key)
        if q is None or a is None:
            cols = ", ".join(sorted(r.keys()))
            raise HapoError(
                f"row {i} of {source!r} has no {data_cfg.question_key!r} or {data_cfg.answer_key!r}; "
                f"its columns are: {cols} (set data.question_key / data.answer_key)"
            )
        text = _question_text(q)
        key = hashlib.sha1(text.encode()).hexdigest()
        if key in seen:  # DAPO-Math-17k repeats each problem many times
            dropped += 1
            continue
        seen.add(key)
        ans = a[0] if isinstance(a, list) and a else a
        rows.append({"id": str(r.get("id", r.get("index", i))), "question": text, "answer": str(ans)})
        if data_cfg.max_train_rows is not None and len(rows) >= data_cfg.max_train_rows:
            break
    if not rows:
        raise HapoError(f"no training rows in {source!r}")
    if stats is not None:
        stats.update(rows_read=len(rows) + dropped, duplicates_dropped=dropped, rows=len(rows))
    return rows


class PromptSampler:
    """Epoch-shuffled prompt order, identical on every rank; its state is (epoch, position)."""

    def __init__(self, n_rows: int, seed: int):
        if n_rows <= 0:
            raise HapoError("the training set is empty")
        self.n, self.seed = n_rows, seed
        self.epoch, self.pos = 0, 0
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seeds.prompt_order(self.seed, epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm(self.epoch)
            take = min(k - len(out), self.n - self.pos)
            out.extend(self._order[self.pos : self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._perm(self.epoch)
