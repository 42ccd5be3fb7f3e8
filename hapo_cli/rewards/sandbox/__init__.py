"""Run a model's program against tests in a sandbox; the verdict cannot be forged by the program.

    run_sandboxed(program, tests, timeout=10, memory_mb=1024) -> ExecResult
    sandbox_kind() -> "bubblewrap" | "rlimit+netns" | "rlimit"      # what runs on this machine

Design: three processes, two trust levels.

    host (trainer/evaluator)  --job on stdin-->  JUDGE (trusted, _judge.py)  --calls-->  CANDIDATE
       verifies HMAC verdict  <--fd 1 pipe--     runs the tests itself       <--data--   (_candidate.py,
                                                                                          the program)

The model's program never runs in this process, and never in the interpreter that evaluates the
tests. The judge runs the test code (trusted, from the dataset) in its own interpreter; each
top-level callable of the program is a proxy there that sends `f(args)` to the candidate process
and decodes the reply into plain data built by the judge (JSON; no pickle). So `assert`, `==`,
builtins, the exit functions and the test code itself are out of the program's reach: redefining
them, `os._exit(0)`, atexit/excepthook tricks, re-running itself with `-O`, returning an object
whose `__eq__` is always true, or printing a success line change nothing the judge trusts. The
verdict goes to the host on the judge's stdout, a pipe the candidate never holds; it is a JSON
payload authenticated with HMAC-SHA256 under a fresh 256-bit key and nonce sent to the judge on
its stdin (read and closed before the candidate exists) and kept in the memory of a
non-dumpable process of another uid (no ptrace, no /proc/PID/mem). The exit code means nothing.
Where the candidate could still reach the judge (the unprivileged modes, same uid) it can at most
kill it: no verdict then reads as `error`, never as a pass.

Isolation, chosen once per process by `sandbox_kind()` (override with HAPO_SANDBOX=KIND):
- bubblewrap: `bwrap` with new pid, network, IPC and UTS namespaces, a read-only view of /usr,
  /etc and the Python prefix only (no /home, /root, /work, /var, /run), a private /tmp, /proc
  and /dev. Run by root, bwrap stays privileged (a user namespace would map the sandbox user to
  host root) and the judge starts the candidate as a fresh unprivileged uid; run by a normal
  user, bwrap makes a user namespace (--disable-userns inside). Ending the pid namespace ends
  every process the program started, `setsid` daemons included.
- rlimit+netns (root without a working bwrap): the judge unshares network, mount, IPC and UTS
  namespaces, mounts private tmpfs over /tmp, /var/tmp and /dev/shm, and runs the candidate as a
  fresh uid, which is then killed as a whole (`kill(-1)` from that uid).
- rlimit (a normal user without bwrap or user namespaces): limits, a fresh session, a subreaper
  judge, a scrubbed environment and a fresh directory only; no network or filesystem isolation.
Always: RLIMIT_AS (memory_mb), RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_FSIZE, no core
files; a wall-clock deadline after which the whole process tree is killed; an environment built
from scratch (PATH, HOME, LANG only: no WANDB_API_KEY, HF_TOKEN, cloud keys); a fresh working
directory removed afterwards; output (stdout+stderr) kept up to a cap, the program killed past
a flood limit.

Overhead: 150-230 ms per program measured on a shared, loaded 2-core machine (two interpreter
starts, bwrap's namespaces, the reaping); 2 pool workers give 7-9 programs/s there. See
benchmarks/code_exec_throughput.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hapo_cli.errors import HapoError

KINDS = ("bubblewrap", "rlimit+netns", "rlimit")
STATUSES = ("pass", "fail", "timeout", "error", "limit")
_HERE = Path(__file__).resolve().parent
_JUDGE_SRC = (_HERE / "_judge.py").read_text(encoding="utf-8")
_CANDIDATE_SRC = (_HERE / "_candidate.py").read_text(encoding="utf-8")
_GRACE = 10.0  # seconds past the deadline before the host kills a judge that has not answered


@dataclass(frozen=True)
class ExecResult:
    """The outcome of running one program against its tests."""

    status: str  # pass | fail | timeout | error | limit
    passed: bool  # status == "pass"
    seconds: float  # wall time on the host, sandbox start-up included
    output_tail: str  # the last output_cap bytes of the program's stdout+stderr
    detail: str = ""  # why: the failed assertion, the limit hit, the load error
    kind: str = ""  # the sandbox that ran it (see sandbox_kind)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run (the candidate process and everything it starts)."""

    timeout: float = 10.0  # wall-clock seconds for loading the program and all the tests
    memory_mb: int = 1024  # address-space limit (RLIMIT_AS) of each program process
    nproc: int = 64  # processes/threads the program may have at once (RLIMIT_NPROC)
    nofile: int = 64  # open file descriptors per process (RLIMIT_NOFILE)
    fsize_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    output_cap: int = 8192  # bytes of output kept (the tail)
    output_kill: int = 16 << 20  # bytes of output after which the program is killed (status limit)
    site_packages: bool = False  # let the program import installed third-party packages (numpy ...): ~50 ms more


def _is_root() -> bool:
    return os.geteuid() == 0


_uid_lock = threading.Lock()
_uid_next = [0]


def _fresh_uid() -> int:
    """An unused uid for one run (root only): not in the passwd database, not shared with another run."""
    with _uid_lock:
        if not _uid_next[0]:
            _uid_next[0] = 200_000 + secrets.randbelow(1_000_000) * 64
        while True:
            _uid_next[0] += 1
            uid = _uid_next[0]
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return uid


def _prefixes() -> list[str]:
    """Directories the interpreter needs inside bubblewrap (its prefix, a venv's, the real binary's)."""
    real = os.path.realpath(sys.executable)
    out = []
    for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(real))):
        p = os.path.realpath(p)
        if p not in out and p != "/" and not p.startswith("/usr/") and p != "/usr":
            out.append(p)
    return out


def _bwrap_cmd(root: bool) -> list[str]:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise HapoError("bubblewrap is not installed (apt-get install bubblewrap, or .ci/install-sandbox)")
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for d in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = f"/{d}"
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            cmd += ["--ro-bind", p, p]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    made = set()
    for prefix in _prefixes():
        parts = Path(prefix).parts
        for i in range(2, len(parts)):
            anc = str(Path(*parts[:i]))
            if anc not in made:
                cmd += ["--perms", "0755", "--dir", anc]
                made.add(anc)
        cmd += ["--ro-bind", prefix, prefix]
    if root:
        cmd += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-user", "--disable-userns"]
    return cmd + ["--chdir", "/tmp", "--"]


_candidate_python: dict[int, str] = {}


def _python_for_uid(uid: int) -> str:
    """An interpreter that `uid` can run (sys.executable may live under root's 0700 home)."""
    if uid in _candidate_python:
        return _candidate_python[uid]
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            r = subprocess.run([exe, "-I", "-S", "-c", "pass"], user=uid, group=uid, extra_groups=[],
                               capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            _candidate_python.clear()
            _candidate_python[uid] = exe
            return exe
    raise HapoError("no Python interpreter the sandbox user can run: set HAPO_SANDBOX=bubblewrap or install python3")


def _kill_uid_from_host(uid: int, python: str) -> None:
    try:
        subprocess.run([python, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                       user=uid, group=uid, extra_groups=[], timeout=10, capture_output=True,
                       env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError):
        pass


MODES = ("functions", "stdio")


def run_sandboxed(program: str, tests: str, *, limits: Limits = Limits(), kind: str | None = None,
                  mode: str = "functions") -> ExecResult:
    """Run `program`, then `tests` against it, in the sandbox `kind` (default: `sandbox_kind()`).

    mode "functions": the program is loaded once and its top-level callables are proxies in the
    tests. mode "stdio": the program is not loaded; the tests call `stdio(input) -> output`, which
    runs the program as __main__ with that stdin and returns what it printed.
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise HapoError("program and tests must be strings of Python source")
    if mode not in MODES:
        raise HapoError(f"unknown execution mode {mode!r}: choose from {', '.join(MODES)}")
    if limits.timeout <= 0 or limits.memory_mb < 64:
        raise HapoError(f"timeout must be > 0 and memory_mb >= 64 (got {limits.timeout}, {limits.memory_mb})")
    kind = kind or sandbox_kind()
    if kind not in KINDS:
        raise HapoError(f"unknown sandbox kind {kind!r}: choose from {', '.join(KINDS)}")
    root = _is_root()
    key, nonce = secrets.token_bytes(32), secrets.token_hex(16)
    uid = _fresh_uid() if root else None
    workdir = None
    if kind == "bubblewrap":
        cmd = _bwrap_cmd(root)
        python = sys.executable
    elif kind == "rlimit+netns":
        if not root:
            raise HapoError("sandbox rlimit+netns needs root; use HAPO_SANDBOX=bubblewrap or rlimit")
        cmd = []
        python = _python_for_uid(65534)
    else:
        cmd = []
        python = _python_for_uid(65534) if root else sys.executable
        workdir = tempfile.mkdtemp(prefix="hapo-run-")
    nproc = limits.nproc
    if kind == "rlimit" and not root:  # RLIMIT_NPROC counts all of this user's processes
        nproc += _count_processes(os.getuid())
    job = {
        "key": key.hex(), "nonce": nonce, "program": program, "tests": tests, "timeout": float(limits.timeout),
        "memory_mb": int(limits.memory_mb), "cpu_seconds": int(limits.timeout) + 1, "nproc": nproc,
        "nofile": limits.nofile, "fsize_mb": limits.fsize_mb, "output_cap": limits.output_cap,
        "output_kill": limits.output_kill, "uid": uid, "python": python, "candidate_source": _CANDIDATE_SRC,
        "site": bool(limits.site_packages),
        "mode": mode, "isolate": kind == "rlimit+netns", "pidns": kind == "bubblewrap", "workdir": workdir,
    }
    cmd = cmd + [sys.executable, "-I", "-S", "-c", _JUDGE_SRC]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env, cwd="/", close_fds=True)
    try:
        out, err = proc.communicate((json.dumps(job) + "\n").encode(), timeout=limits.timeout + _GRACE)
        backstop = False
    except subprocess.TimeoutExpired:
        backstop = True
        _killpg(proc.pid)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            _killpg(proc.pid)
            proc.wait()
        if uid is not None and kind != "bubblewrap" and (backstop or proc.returncode != 0):
            _kill_uid_from_host(uid, python)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - t0
    if backstop:
        return ExecResult("timeout", False, seconds, "", f"the sandbox did not answer within {limits.timeout + _GRACE:.0f} s", kind)
    verdict = _verify(out, key, nonce)
    if verdict is None:
        tail = err.decode("utf-8", "replace").strip().splitlines()
        why = tail[-1] if tail else f"exit code {proc.returncode}"
        return ExecResult("error", False, seconds, "", f"no authenticated verdict from the sandbox ({why})", kind)
    status = verdict["status"] if verdict.get("status") in STATUSES else "error"
    return ExecResult(status, status == "pass", seconds, str(verdict.get("output_tail", "")),
                      str(verdict.get("detail", "")), kind)


def _verify(out: bytes, key: bytes, nonce: str) -> dict | None:
    for line in out.splitlines():
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] != b"HAPO-VERDICT":
            continue
        try:
            payload = base64.b64decode(parts[1], validate=True)
        except ValueError:
            continue
        good = hmac.new(key, payload, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(good, parts[2]):
            continue
        verdict = json.loads(payload)
        if verdict.get("nonce") == nonce:
            return verdict
    return None


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _count_processes(uid: int) -> int:
    n = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


_kind_cache: dict[str, str] = {}
_PROBE = ("def f(x):\n    return x + 1\n", "assert f(1) == 2\n")


def kind_works(kind: str) -> bool:
    """Whether sandbox `kind` runs here (one trivial program through it; cached per process)."""
    key = f"works:{kind}"
    if key not in _kind_cache:
        ok = False
        if kind == "bubblewrap" and not shutil.which("bwrap"):
            ok = False
        elif kind == "rlimit+netns" and not _is_root():
            ok = False
        else:
            try:
                ok = run_sandboxed(*_PROBE, limits=Limits(timeout=30), kind=kind).passed
            except HapoError:
                ok = False
        _kind_cache[key] = "1" if ok else ""
    return bool(_kind_cache[key])


def sandbox_kind(refresh: bool = False) -> str:
    """The sandbox this machine runs: "bubblewrap", "rlimit+netns" or "rlimit" (HAPO_SANDBOX forces one)."""
    if refresh:
        _kind_cache.clear()
    if "kind" in _kind_cache:
        return _kind_cache["kind"]
    want = os.environ.get("HAPO_SANDBOX", "auto").strip() or "auto"
    if want != "auto":
        if want not in KINDS:
            raise HapoError(f"HAPO_SANDBOX={want!r}: choose auto, {', '.join(KINDS)}")
        if not kind_works(want):
            raise HapoError(f"HAPO_SANDBOX={want}: that sandbox cannot run on this machine "
                            "(bubblewrap: apt-get install bubblewrap; rlimit+netns: needs root)")
        _kind_cache["kind"] = want
        return want
    for kind in KINDS:
        if kind == "rlimit" or kind_works(kind):
            _kind_cache["kind"] = kind
            return kind
    return "rlimit"  # pragma: no cover


__all__ = ["KINDS", "MODES", "STATUSES", "ExecResult", "Limits", "kind_works", "run_sandboxed", "sandbox_kind"]
