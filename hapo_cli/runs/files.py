"""File primitives: the one atomic writer and the one JSONL reader.

Torn-line policy (every reader of an appended JSONL file goes through `read_jsonl`): a LAST line
that does not parse is what a killed writer leaves behind; it is dropped and reported
(`JsonlRead.torn`). A bad line anywhere else is damage, not a crash artefact: one clear error
naming the file and its line number.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hapo_cli.errors import HapoError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers never see half a file.

    The file gets the permissions a plain `open(path, "w")` would (0666 minus the umask), not
    the 0600 of `mkstemp`, so a shared group can read results.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_jsonable) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _jsonable(x):
    if hasattr(x, "item") and getattr(x, "numel", lambda: 0)() == 1:  # a one-element tensor
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def append_jsonl(path: str | os.PathLike, records: list[dict[str, Any]] | dict[str, Any], fsync: bool = True) -> None:
    """Append records as lines and flush them to disk (nothing finished is lost if the process dies)."""
    if isinstance(records, dict):
        records = [records]
    text = "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


@dataclass
class JsonlRead:
    records: list[dict[str, Any]] = field(default_factory=list)
    torn: bool = False  # the last line was cut short (dropped)


def read_jsonl(path: str | os.PathLike, missing_ok: bool = True) -> JsonlRead:
    """All records of a JSONL file under the torn-line policy above."""
    p = Path(path)
    out = JsonlRead()
    if not p.is_file():
        if missing_ok:
            return out
        raise HapoError(f"{p} does not exist")
    lines = p.read_text(encoding="utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last:
                out.torn = True
                break
            raise HapoError(f"{p}:{i + 1} is not valid JSON ({err.msg}): the file is damaged; "
                            f"fix or remove that line") from None
        out.records.append(rec)
    return out


def iter_jsonl(path: str | os.PathLike):
    """The records of a JSONL file one at a time (same policy as `read_jsonl`; streams big files)."""
    p = Path(path)
    pending: tuple[int, str] | None = None
    with open(p, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if pending is not None:
                yield _parse_line(p, *pending)
            pending = (n, line)
    if pending is not None:
        try:
            yield json.loads(pending[1])
        except json.JSONDecodeError:
            return  # a torn last line: dropped


def _parse_line(p: Path, n: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise HapoError(f"{p}:{n} is not valid JSON ({err.msg}): the file is damaged; fix or remove that line") from None
