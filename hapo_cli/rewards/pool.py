"""A process pool for grading with a hard per-item timeout.

math-verify bounds its own work with `signal.alarm`, which only works in a main thread and
cannot interrupt long C-level computations (sympy evaluating `9^{9^{9^9}}`). A pathological
answer must not hang training or evaluation, so math-verify runs in worker processes:

- each worker is a fresh interpreter (`python -m hapo_cli.rewards._worker`) fed one item at a
  time over a pipe; it never inherits the parent's threads, CUDA context or model;
- an item that runs past `timeout` seconds gets its worker killed (SIGKILL) and replaced; the
  item counts as wrong, is reported (`TaskResult.timed_out`, a warning on the "hapo.grading"
  logger, `pool.events`), and the rest of the batch goes on on the other workers;
- a worker that dies (crash, OOM kill) is replaced the same way and its item is an error;
- workers are recycled after `max_tasks_per_worker` items (sympy caches grow);
- on Linux a worker is killed with its parent (PR_SET_PDEATHSIG), and it exits when its stdin
  closes, so no grading process outlives the run.

A pool serves one caller at a time (not thread-safe); keep one per process and reuse it.

Only the slow part goes through the pool: `GradingPool.grade` does extraction and exact match in
this process and sends just the answers that need math-verify.

    with GradingPool(num_workers=2, timeout=10) as pool:
        results = pool.grade(completions, golds, prefer="boxed")   # list[GradeResult]
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hapo_cli.errors import HapoError
from hapo_cli.rewards.verify import GradeResult, _precheck_parts, math_verify_check

log = logging.getLogger("hapo.grading")

_FRAME = struct.Struct(">I")
_START_TIMEOUT = 120.0  # seconds a worker may take to import math-verify and say "ready"
_MAX_START_FAILURES = 3  # consecutive failed starts before the pool gives up


@dataclass
class TaskResult:
    """The outcome of one item of `GradingPool.map`."""

    ok: bool  # the function returned (value holds its result)
    value: Any = None
    error: str | None = None  # exception text, "timeout after ...", or "worker died ..."
    timed_out: bool = False  # killed at the per-item deadline
    crashed: bool = False  # the worker process died while running the item
    seconds: float = 0.0  # wall time from dispatch to result


class _Worker:
    """One worker process and the item it is running."""

    def __init__(self, env: dict[str, str]):
        if threading.current_thread() is threading.main_thread():
            # PR_SET_PDEATHSIG fires when the spawning THREAD exits: only ask for it from the main thread
            env = {**env, "HAPO_GRADING_PARENT": str(os.getpid())}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hapo_cli.rewards._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            bufsize=0,
            close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.state = "starting"  # starting | idle | busy | dead
        self.t_state = time.monotonic()
        self.tasks_done = 0
        self.item: int | None = None
        self.deadline = float("inf")
        self._buf = bytearray()

    def send(self, obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_FRAME.pack(len(data)) + data)
        while view:
            view = view[self.proc.stdin.write(view) :]

    def read_available(self) -> list:
        """Messages that have fully arrived; raises EOFError when the worker is gone."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            raise EOFError
        self._buf += chunk
        msgs = []
        while len(self._buf) >= _FRAME.size:
            (n,) = _FRAME.unpack_from(self._buf)
            if len(self._buf) < _FRAME.size + n:
                break
            msgs.append(pickle.loads(bytes(self._buf[_FRAME.size : _FRAME.size + n])))
            del self._buf[: _FRAME.size + n]
        return msgs

    def kill(self) -> None:
        self.state = "dead"
        try:
            self.proc.kill()
        except OSError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Ask the worker to exit (closing its stdin), kill it if it does not."""
        if self.state == "dead":
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path if p is not None]
    paths = [p for p in paths if os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


class GradingPool:
    """Worker processes that run picklable functions with a hard per-item timeout.

    Args:
        num_workers: processes to run (default: CPU count, at most 8); 0 runs items serially in
            this process (no hard timeout: for debugging only).
        timeout: seconds one item may take before its worker is killed and it counts as wrong.
        max_tasks_per_worker: a worker is replaced after this many items.
        mv_timeout: math-verify's own per-call timeout inside a worker (default timeout / 4).
        warmup: import math-verify and run one comparison in each worker before it takes items
            (off only for pools that run other functions).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout: float = 10.0,
        max_tasks_per_worker: int = 1000,
        mv_timeout: float | None = None,
        warmup: bool = True,
    ):
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0 or timeout <= 0 or max_tasks_per_worker < 1:
            raise ValueError("num_workers >= 0, timeout > 0 and max_tasks_per_worker >= 1 required")
        self.num_workers = num_workers
        self.timeout = float(timeout)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.mv_timeout = float(mv_timeout) if mv_timeout is not None else max(1.0, self.timeout / 4)
        self.warmup = warmup
        self.events: list[dict] = []  # one entry per timed-out or crashed item (reported)
        self.n_items = 0
        self.n_timeouts = 0
        self.n_crashes = 0
        self.n_restarts = 0
        self._workers: list[_Worker] = []
        self._env: dict[str, str] | None = None
        self._start_failures = 0
        self._closed = False
        _LIVE_POOLS.add(self)

    # ---- lifecycle ----
    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        for w in self._workers:
            w.stop()
        self._workers = []
        self._closed = True

    def start(self) -> GradingPool:
        """Start the workers now (they otherwise start on first use); returns self."""
        if self._closed:
            raise RuntimeError("GradingPool is closed")
        if self._env is None:
            self._env = _worker_env()
            self._env["HAPO_GRADING_WARMUP"] = "1" if self.warmup else "0"
        self._workers = [w for w in self._workers if w.state != "dead"]
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._env))
        return self

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self._workers.append(_Worker(self._env))
        self.n_restarts += 1

    # ---- running ----
    def map(
        self,
        fn: Callable,
        items: Sequence[tuple],
        *,
        kwargs: dict | None = None,
        timeout: float | None = None,
        describe: Callable[[int], str] | None = None,
    ) -> list[TaskResult]:
        """Run `fn(*items[i], **kwargs)` for every i; results in item order.

        `fn` must be importable by name (a module-level function). An item past `timeout`
        (default: the pool's) is a TaskResult with timed_out=True; the rest still run.
        """
        kwargs = kwargs or {}
        limit = self.timeout if timeout is None else float(timeout)
        n = len(items)
        self.n_items += n
        if n == 0:
            return []
        if self.num_workers == 0:
            return [self._run_inline(fn, args, kwargs) for args in items]
        self.start()
        results: list[TaskResult | None] = [None] * n
        t_sent = [0.0] * n
        queue = deque(range(n))
        remaining = n
        while remaining:
            now = time.monotonic()
            for w in self._workers:
                if w.state == "idle" and queue:
                    i = queue.popleft()
                    try:
                        w.send((i, pickle.dumps((fn, items[i], kwargs), protocol=pickle.HIGHEST_PROTOCOL)))
                    except (BrokenPipeError, OSError):
                        queue.appendleft(i)
                        self._replace(w)
                        break
                    except (pickle.PicklingError, TypeError, AttributeError) as err:
                        results[i] = TaskResult(False, error=f"cannot send item to a worker: {err}")
                        remaining -= 1
                        continue
                    w.state, w.item, w.deadline, w.t_state = "busy", i, now + limit, now
                    t_sent[i] = now
            if not remaining:
                break
            live = {w.fd: w for w in self._workers if w.state in ("starting", "busy")}
            deadlines = [w.deadline for w in live.values() if w.state == "busy"]
            deadlines += [w.t_state + _START_TIMEOUT for w in live.values() if w.state == "starting"]
            wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.05
            ready, _, _ = select.select(list(live), [], [], min(wait, 1.0))
            for fd in ready:
                w = live[fd]
                try:
                    msgs = w.read_available()
                except (EOFError, OSError):
                    remaining -= self._on_worker_death(w, results, t_sent, queue)
                    continue
                for msg in msgs:
                    if msg[0] == "ready":
                        w.state, w.t_state = "idle", time.monotonic()
                        self._start_failures = 0
                    elif msg[0] == "result" and w.state == "busy" and msg[1] == w.item:
                        _, i, ok, value, err = msg
                        results[i] = TaskResult(ok, value, err, seconds=time.monotonic() - t_sent[i])
                        remaining -= 1
                        w.state, w.item, w.deadline = "idle", None, float("inf")
                        w.tasks_done += 1
                        if w.tasks_done >= self.max_tasks_per_worker:
                            w.stop()
                            self._workers.remove(w)
                            self._workers.append(_Worker(self._env))
            now = time.monotonic()
            for w in list(self._workers):
                if w.state == "busy" and now >= w.deadline:
                    i = w.item
                    what = describe(i) if describe else repr(items[i])[:200]
                    results[i] = TaskResult(
                        False, error=f"timeout after {limit:g}s", timed_out=True, seconds=now - t_sent[i]
                    )
                    remaining -= 1
                    self.n_timeouts += 1
                    self.events.append({"kind": "timeout", "item": i, "seconds": limit, "what": what})
                    log.warning("grading timed out after %gs (counted as wrong): %s", limit, what)
                    self._replace(w)
                elif w.state == "starting" and now - w.t_state > _START_TIMEOUT:
                    self._start_failed(w, "did not become ready in time")
        return results  # type: ignore[return-value]

    def _run_inline(self, fn: Callable, args: tuple, kwargs: dict) -> TaskResult:
        t0 = time.monotonic()
        try:
            return TaskResult(True, fn(*args, **kwargs), seconds=time.monotonic() - t0)
        except Exception as err:
            return TaskResult(False, error=f"{type(err).__name__}: {err}"[:500], seconds=time.monotonic() - t0)

    def _on_worker_death(self, w: _Worker, results, t_sent, queue) -> int:
        """Handle EOF from a worker; returns how many items it finished (0 or 1)."""
        if w.state == "starting":
            self._start_failed(w, f"exited with code {w.proc.poll()}")
            return 0
        done = 0
        if w.state == "busy" and w.item is not None:
            i = w.item
            try:
                code = w.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
            results[i] = TaskResult(
                False, error=f"worker died (exit code {code})", crashed=True, seconds=time.monotonic() - t_sent[i]
            )
            self.n_crashes += 1
            self.events.append({"kind": "crash", "item": i, "exit_code": code})
            log.warning("grading worker died on item %d (exit code %s); counted as wrong", i, code)
            done = 1
        self._replace(w)
        return done

    def _start_failed(self, w: _Worker, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES:
            self.close()
            raise HapoError(
                f"grading worker failed to start ({why}) {self._start_failures} times: "
                f"run `{sys.executable} -m hapo_cli.rewards._worker < /dev/null` to see why"
            )
        self._replace(w)

    # ---- grading ----
    def grade(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        *,
        prefer: str = "boxed",
        use_math_verify: bool = True,
    ) -> list[GradeResult]:
        """Grade completions against golds: exact match here, math-verify in the workers."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        out: list[GradeResult | None] = []
        todo: list[tuple[int, str, str]] = []
        for i, (c, g) in enumerate(zip(completions, golds)):
            res, pred, pred_norm = _precheck_parts(c, str(g), prefer=prefer)
            out.append(res)
            if res is None:
                if use_math_verify:
                    todo.append((i, pred, pred_norm))
                else:
                    out[i] = GradeResult(False, pred, pred_norm, "mismatch")
        if todo:
            items = [(str(golds[i]), pred, self.mv_timeout) for i, pred, _ in todo]
            outs = self.map(
                math_verify_check,
                items,
                describe=lambda j: f"gold={items[j][0][:60]!r} pred={items[j][1][:100]!r}",
            )
            for (i, pred, pred_norm), r in zip(todo, outs):
                if r.ok:
                    eq, timed_out = r.value
                    if timed_out:
                        out[i] = GradeResult(False, pred, pred_norm, "timeout", timed_out=True)
                    else:
                        out[i] = GradeResult(bool(eq), pred, pred_norm, "math_verify" if eq else "mismatch")
                elif r.timed_out:
                    out[i] = GradeResult(False, pred, pred_norm, "timeout", timed_out=True, error=r.error)
                else:
                    out[i] = GradeResult(False, pred, pred_norm, "error", error=r.error)
        return out  # type: ignore[return-value]


def grade_many(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    prefer: str = "boxed",
    pool: GradingPool | None = None,
    use_math_verify: bool = True,
) -> list[GradeResult]:
    """Grade a batch: through `pool` when given, else serially in this process."""
    if pool is not None:
        return pool.grade(completions, golds, prefer=prefer, use_math_verify=use_math_verify)
    from hapo_cli.rewards.verify import grade_completion

    return [
        grade_completion(c, str(g), prefer=prefer, use_math_verify=use_math_verify) for c, g in zip(completions, golds)
    ]


def dapo_rewards(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    pool: GradingPool | None = None,
    accept_boxed: bool = False,
) -> list[tuple[float, float]]:
    """`dapo_reward` for a batch -> [(score, accuracy)], math-verify through `pool` when given."""
    prefer = "answer" if accept_boxed else "answer_only"
    res = grade_many(completions, golds, prefer=prefer, pool=pool)
    return [(1.0, 1.0) if r.correct else (-1.0, 0.0) for r in res]
