"""A grading worker process: `python -m hapo_cli.rewards._worker` (started by GradingPool).

Protocol on stdin/stdout, one frame per message: a 4-byte big-endian length, then a pickle.
Parent -> worker: `(task_id, blob)` where `blob = pickle.dumps((fn, args, kwargs))`, or None to
stop. Worker -> parent: `("ready", pid)` once, then `("result", task_id, ok, value, error)` per
task. The function runs in this process's main thread, so math-verify's own signal-based
timeouts work here; the parent's per-item deadline (it kills this process) is the hard limit.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import sys

_FRAME = struct.Struct(">I")


def _read_exact(fh, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = fh.read(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf)


def _send(fh, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_FRAME.pack(len(data)) + data)
    fh.flush()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a worker stuck in sympy never outlives it."""
    parent = os.environ.get("HAPO_GRADING_PARENT")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(0)


def main() -> None:
    _die_with_parent()
    # Keep the protocol pipe for ourselves; anything printed goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    if os.environ.get("HAPO_GRADING_WARMUP", "1") != "0":
        from hapo_cli.rewards.verify import math_verify_check

        # import sympy / the LaTeX parser and run one symbolic comparison before saying "ready",
        # so a task's deadline never pays for them
        math_verify_check("(x+1)^2", "x^2+2x+1", timeout=10)
    _send(out, ("ready", os.getpid()))
    while True:
        head = _read_exact(inp, _FRAME.size)
        if not head:
            break
        body = _read_exact(inp, _FRAME.unpack(head)[0])
        if not body:
            break
        msg = pickle.loads(body)
        if msg is None:
            break
        task_id, blob = msg
        try:
            fn, args, kwargs = pickle.loads(blob)
            reply = ("result", task_id, True, fn(*args, **kwargs), None)
        except BaseException as err:  # noqa: BLE001 - any failure is reported, the worker lives on
            reply = ("result", task_id, False, None, f"{type(err).__name__}: {err}"[:500])
        try:
            _send(out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            _send(out, ("result", task_id, False, None, f"unpicklable result: {err}"[:500]))


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
