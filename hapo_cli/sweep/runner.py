"""Running a sweep's `hapo train` processes: one at a time or N at a time, each teeing its output
to `<run dir>/train.log`, with the state file updated after every change.

A run whose folder has summary.json is skipped, one with metrics.jsonl but no summary.json is
resumed (`resume=true`), anything else (not started, failed before its first metrics) starts
fresh. A failed run is recorded with its exit code and last error line; the sweep goes on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from hapo_cli.runs import sweep as st
from hapo_cli.sweep.plan import hydra_quote

_ERROR_LINE = re.compile(r"^(error:|[A-Za-z_][\w.]*(Error|Exception)\b)")


def last_error_line(text: str, returncode: int) -> str:
    """The line that explains a failure: the CLI's `error:` line, else an exception line, else the last line."""
    lines = [x.strip() for x in re.split(r"[\r\n]+", text) if x.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:300]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    tail = lines[-1][:200] if lines else "no output"
    return f"exit code {returncode}; last output: {tail}"


def train_args(sweep_dir: Path, overrides: list[str], run_id: str, resume: bool = False) -> list[str]:
    """`train` and its overrides for one run of the sweep (absolute run_dir, resume=true to continue)."""
    rd = (Path(sweep_dir) / run_id).resolve()
    return ["train", *overrides, f"run_dir={hydra_quote(str(rd))}", *(["resume=true"] if resume else [])]


class SweepRunner:
    """Executes the runs of a sweep state (a dict from `state.py`), saving it as it goes."""

    def __init__(self, sweep_dir: Path, state: dict[str, Any], parallel: int = 1,
                 echo: Callable[[str], None] | None = None):
        self.sweep_dir = Path(sweep_dir)
        self.state = state
        self.parallel = max(1, parallel)
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.n = len(state["runs"])

    def _update(self, run: dict[str, Any], **fields: Any) -> None:
        with self.lock:
            run.update(fields)
            st.save_state(self.sweep_dir, self.state)

    def run_all(self) -> None:
        """Run every run that needs it; on Ctrl-C / SIGTERM stop the children and mark them interrupted."""
        old_term = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        todo = []
        try:
            for i, run in enumerate(self.state["runs"], 1):
                if st.run_files_status(self.sweep_dir / run["id"]) == st.DONE:
                    self.echo(f"[{i}/{self.n}] {run['id']}: finished earlier, skipped")
                    if run.get("status") != st.DONE:
                        self._update(run, status=st.DONE)
                else:
                    todo.append((i, run))
            if self.parallel == 1:
                for i, run in todo:
                    self.run_one(i, run, tee=True)
            else:
                self._run_parallel(todo)
        except KeyboardInterrupt:
            self._stop_children()
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, old_term)

    def _run_parallel(self, todo: list[tuple[int, dict[str, Any]]]) -> None:
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            pending = {pool.submit(self.run_one, i, run, False) for i, run in todo}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
            except KeyboardInterrupt:
                for f in pending:
                    f.cancel()
                self._stop_children()  # before the pool's exit waits for its threads
                raise

    def run_one(self, i: int, run: dict[str, Any], tee: bool) -> None:
        rd = self.sweep_dir / run["id"]
        resume = st.run_files_status(rd) == st.INTERRUPTED
        rd.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hapo_cli.cli", *train_args(self.sweep_dir, run["overrides"], run["id"], resume)]
        attempt = int(run.get("attempts", 0)) + 1
        how = "resuming from its last checkpoint" if resume else ("retrying" if attempt > 1 else "starting")
        self.echo(f"[{i}/{self.n}] {run['id']}: {how} (log: {rd / 'train.log'})")
        started = time.time()
        self._update(run, status=st.RUNNING, attempts=attempt, started=st.now(), finished=None,
                     returncode=None, error=None)
        log_path = rd / "train.log"
        with open(log_path, "ab") as log:
            header = f"\n=== hapo ablate: attempt {attempt}, {st.now()} ===\n$ {' '.join(cmd)}\n"
            log.write(header.encode())
            log.flush()
            offset = log.tell()
            # HAPO_PARENT_PID: the child ties its life to this process (hapo_cli.cli.die_with_parent)
            env = dict(os.environ, PYTHONUNBUFFERED="1", HAPO_PARENT_PID=str(os.getpid()))
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if tee else log, stderr=subprocess.STDOUT, env=env)
            with self.lock:
                self.procs[run["id"]] = proc
            try:
                if tee:
                    assert proc.stdout is not None
                    out = sys.stderr.buffer
                    while chunk := os.read(proc.stdout.fileno(), 65536):
                        log.write(chunk)
                        log.flush()
                        out.write(chunk)
                        out.flush()
                rc = proc.wait()
            except BaseException:
                _terminate([proc])
                self._stopping = True
                raise
            finally:
                with self.lock:
                    self.procs.pop(run["id"], None)
        seconds = round(time.time() - started, 1)
        if rc == 0 and st.run_files_status(rd) == st.DONE:
            self._update(run, status=st.DONE, returncode=0, finished=st.now(), seconds=seconds)
            self.echo(f"[{i}/{self.n}] {run['id']}: done in {seconds:.0f} s")
            return
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if rc == 0:
            error = "exited 0 without writing summary.json"
        else:
            error = last_error_line(text, rc)
        if self._stopping:
            self._update(run, status=st.INTERRUPTED, returncode=rc, finished=st.now(), seconds=seconds,
                         error="interrupted")
            return
        self._update(run, status=st.FAILED, returncode=rc, finished=st.now(), seconds=seconds, error=error)
        self.echo(f"[{i}/{self.n}] {run['id']}: FAILED (exit {rc}) after {seconds:.0f} s: {error}")

    _stopping = False

    def _stop_children(self) -> None:
        """Terminate running children (then kill after 10 s) and mark them interrupted."""
        self._stopping = True
        with self.lock:
            procs = list(self.procs.values())
        _terminate(procs)
        for run in self.state["runs"]:
            if run.get("status") == st.RUNNING:
                self._update(run, status=st.INTERRUPTED, error="interrupted", finished=st.now())


def _terminate(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt
