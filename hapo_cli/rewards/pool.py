"""A process pool for grading with a hard per-item timeout.

math-verify bounds its own work with `signal.alarm`, which only works in a main thread and
cannot interrupt long C-level computations (sympy evaluating `9^{9^{9^9}}`). A pathological
answer must not hang training or evaluation, so math-verify runs in worker processes:

- each worker is a fresh interpreter (`python -m hapo_cli.rewards._worker`) fed one item at a
  time over a pipe; it never inherits the parent's threads, CUDA context or model;
- an item that spends more than `timeout` seconds of CPU time (Linux: read from /proc, so a busy
  machine does not make a correct answer time out; elsewhere wall time), or more than
  `wall_timeout` seconds of wall time (a worker stuck sleeping), gets its worker killed (SIGKILL)
  and replaced. The item is retried once, after the items still queued (when a worker is idle);
  a second timeout counts it as wrong, reported (`TaskResult.timed_out`, a warning on the
  "hapo.grading" logger, `pool.events`), and the rest of the batch goes on on the other workers.
  Inside a worker math-verify itself has a CPU-time budget (`mv_timeout`, ITIMER_PROF); an answer
  that spends it is retried once too, then reported as a timeout;
- a worker that dies (crash, OOM kill) is replaced the same way and its item is an error;
- workers are recycled after `max_tasks_per_worker` items (sympy caches grow);
- on Linux a worker is killed with its parent (PR_SET_PDEATHSIG), and it exits when its stdin
  closes, so no grading process outlives the run.

A pool serves one caller at a time (not thread-safe); keep one per process and reuse it.

Only the slow part goes through the pool: `GradingPool.grade` does extraction and exact match in
this process and sends just the answers that need math-verify.

    with GradingPool(num_workers=2, timeout=10) as pool:
        results = pool.grade(completions, golds, prefer="boxed")         # list[GradeResult]
        rewards = pool.grade_rewards(completions, golds, reward="dapo")  # [(score, acc, timed_out)]
        pool.stats()  # {"grading/timeouts": ..., "grading/retries": ..., ...} for the metrics

Hand-written rather than pebble's ProcessPool (tried, pebble 5.2.3): its per-task timeout is wall time only (a CPU budget would need RLIMIT_CPU re-armed inside every task, whole seconds, its SIGXCPU death told from a crash only by exit code), its workers outlive a SIGKILLed parent, and it was no faster (2 workers, 400 answers, 2 cores under load 4-5: pebble/this pool wall time 1.20 and 1.02 on the math-verify mix, 0.54 and 0.99 on the realistic mix).
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
from hapo_cli.rewards.verify import GradeResult, _check, _mv_result, _precheck_parts

log = logging.getLogger("hapo.grading")

_FRAME = struct.Struct(">I")
_START_TIMEOUT = 120.0  # seconds a worker may take to import math-verify and say "ready"
_MAX_START_FAILURES = 3  # consecutive failed starts before the pool gives up
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_CPU_POLL = 0.2  # seconds between /proc reads of a worker past its item's CPU budget in wall time

# reward name -> (score when correct, score when wrong); accuracy is 1.0 / 0.0 for every reward
REWARDS = {"dapo": (1.0, -1.0), "binary": (1.0, 0.0)}


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process `pid`, or None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


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
        self.deadline = float("inf")  # wall time at which the item may first have spent its CPU budget
        self.hard_deadline = float("inf")  # wall-time backstop
        self.cpu0: float | None = None  # worker CPU seconds when the item was sent
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
        timeout: CPU seconds one item may use before its worker is killed (wall seconds where the
            platform cannot tell CPU time); the item is retried once, then counts as wrong.
        max_tasks_per_worker: a worker is replaced after this many items.
        mv_timeout: math-verify's own CPU-time budget inside a worker (default timeout / 2).
        wall_timeout: wall seconds after which an item's worker is killed whatever its CPU time
            (a worker blocked or starved; default 3 * timeout).
        retry_timeouts: retry a timed-out item once (after the queued items) before counting it.
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
        wall_timeout: float | None = None,
        retry_timeouts: bool = True,
    ):
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0 or timeout <= 0 or max_tasks_per_worker < 1:
            raise ValueError("num_workers >= 0, timeout > 0 and max_tasks_per_worker >= 1 required")
        self.num_workers = num_workers
        self.timeout = float(timeout)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.mv_timeout = float(mv_timeout) if mv_timeout is not None else max(1.0, self.timeout / 2)
        self.wall_timeout = float(wall_timeout) if wall_timeout is not None else 3 * self.timeout
        self.retry_timeouts = retry_timeouts
        self.warmup = warmup
        self.events: list[dict] = []  # one entry per timed-out, retried or crashed item (reported)
        self.n_items = 0
        self.n_timeouts = 0  # items counted as timed out (after their retry)
        self.n_retries = 0  # timed-out items run a second time
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

        `fn` must be importable by name (a module-level function). An item past `timeout` CPU
        seconds (default: the pool's) or `wall_timeout` wall seconds is retried once (when
        `retry_timeouts`), then is a TaskResult with timed_out=True; the rest still run.
        """
        kwargs = kwargs or {}
        limit = self.timeout if timeout is None else float(timeout)
        wall_limit = max(limit, self.wall_timeout if timeout is None else 3 * limit)
        retried: set[int] = set()
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
                    w.hard_deadline = now + wall_limit
                    w.cpu0 = _proc_cpu(w.proc.pid)
                    t_sent[i] = now
            if not remaining:
                break
            live = {w.fd: w for w in self._workers if w.state in ("starting", "busy")}
            deadlines = [w.deadline for w in live.values() if w.state == "busy"]  # re-checked every _CPU_POLL
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
                        w.state, w.item, w.deadline, w.hard_deadline = "idle", None, float("inf"), float("inf")
                        w.tasks_done += 1
                        if w.tasks_done >= self.max_tasks_per_worker:
                            w.stop()
                            self._workers.remove(w)
                            self._workers.append(_Worker(self._env))
            now = time.monotonic()
            for w in list(self._workers):
                if w.state == "busy" and now >= w.deadline and not self._over_budget(w, now, limit):
                    w.deadline = now + _CPU_POLL  # under its CPU budget (a busy machine): look again soon
                elif w.state == "busy" and now >= w.deadline:
                    i = w.item
                    what = describe(i) if describe else repr(items[i])[:200]
                    self._replace(w)
                    if self.retry_timeouts and i not in retried:
                        retried.add(i)
                        queue.append(i)  # once more, after the queued items, on whichever worker is idle
                        self.n_retries += 1
                        self.events.append({"kind": "retry", "item": i, "seconds": limit, "what": what})
                        log.info("grading timed out after %gs, retrying once: %s", limit, what)
                        continue
                    results[i] = TaskResult(
                        False, error=f"timeout after {limit:g}s", timed_out=True, seconds=now - t_sent[i]
                    )
                    remaining -= 1
                    self.n_timeouts += 1
                    self.events.append({"kind": "timeout", "item": i, "seconds": limit, "what": what})
                    log.warning("grading timed out after %gs (counted as wrong): %s", limit, what)
                elif w.state == "starting" and now - w.t_state > _START_TIMEOUT:
                    self._start_failed(w, "did not become ready in time")
        return results  # type: ignore[return-value]

    @staticmethod
    def _over_budget(w: _Worker, now: float, limit: float) -> bool:
        """The busy worker `w` has spent `limit` CPU seconds on its item (wall seconds where CPU
        time cannot be read), or reached its wall-time backstop."""
        if now >= w.hard_deadline:
            return True
        cpu = _proc_cpu(w.proc.pid) if w.cpu0 is not None else None
        return cpu is None or cpu - w.cpu0 >= limit

    def stats(self) -> dict[str, int]:
        """Counters for the run's metrics (totals since the pool started)."""
        return {"grading/items": self.n_items, "grading/timeouts": self.n_timeouts,
                "grading/retries": self.n_retries, "grading/crashes": self.n_crashes,
                "grading/restarts": self.n_restarts}

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
            outs = self._map_checks(items)
            soft = [j for j, r in enumerate(outs) if r.ok and r.value[1]]  # math-verify's own budget spent
            if soft and self.retry_timeouts:
                self.n_retries += len(soft)
                self.events += [{"kind": "retry", "item": todo[j][0], "seconds": self.mv_timeout,
                                 "what": f"pred={items[j][1][:100]!r}"} for j in soft]
                for j, r in zip(soft, self._map_checks([items[j] for j in soft])):
                    outs[j] = r
            for (i, pred, pred_norm), r in zip(todo, outs):
                if r.ok:
                    eq, timed_out, understood = r.value
                    out[i] = _mv_result(pred, pred_norm, eq, timed_out, understood)
                    if timed_out:
                        self.n_timeouts += 1
                        log.warning("grading used its %gs CPU budget twice (counted as wrong): pred=%r",
                                    self.mv_timeout, pred[:100])
                elif r.timed_out:
                    out[i] = GradeResult(False, pred, pred_norm, "timeout", timed_out=True, error=r.error)
                else:
                    out[i] = GradeResult(False, pred, pred_norm, "error", error=r.error)
        return out  # type: ignore[return-value]


    def _map_checks(self, items: list[tuple[str, str, float]]) -> list[TaskResult]:
        return self.map(_check, items, describe=lambda j: f"gold={items[j][0][:60]!r} pred={items[j][1][:100]!r}")

    def grade_rewards(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        reward: str = "dapo",
        *,
        accept_boxed: bool = False,
        prefer: str | None = None,
    ) -> list[tuple[float, float, bool]]:
        """Training rewards for a batch -> [(score, accuracy, timed_out)], one per completion.

        `reward`: "dapo" (+1 / -1, the answer on DAPO's `Answer:` line; a `\\boxed{}` answer
        only with `accept_boxed`, i.e. `data.accept_boxed`) or "binary" (1 / 0, same extraction).
        `prefer` overrides the extraction ("boxed", "answer", "answer_only", "raw"; see
        `hapo_cli.rewards.extract`). Each answer has the pool's CPU-time budget; one that overruns it
        twice (its worker killed) scores as wrong with timed_out=True. Count those for the metrics
        (`reward/grading_timeouts`), and see `stats()`.
        """
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {sorted(REWARDS)}, got {reward!r}")
        good, bad = REWARDS[reward]
        if prefer is None:
            prefer = "answer" if accept_boxed else "answer_only"
        res = self.grade(completions, golds, prefer=prefer)
        return [(good, 1.0, False) if r.correct else (bad, 0.0, r.timed_out) for r in res]


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
