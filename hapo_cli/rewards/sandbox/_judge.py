"""The TRUSTED side of a sandboxed run: runs the tests and writes the authenticated verdict.

Started by `hapo_cli.rewards.sandbox` as `python -I -S -c SOURCE` (inside bubblewrap, or as a
fresh session for the fallback). Standard library only; it reads ONE JSON line on stdin (the
job: program, tests, limits, the HMAC key and nonce), closes stdin, and:

1. makes itself non-dumpable (no ptrace, no /proc/PID/{mem,fd,environ} for other processes of
   its uid) and a child subreaper (orphaned grandchildren come back to it to be killed);
2. fallback as root only: unshares network, mount, IPC and UTS namespaces and puts private
   tmpfs over /tmp, /var/tmp and /dev/shm, so the program cannot reach the network or leave
   files behind;
3. starts the candidate (`_candidate.py`) in a fresh working directory, as an unprivileged uid
   (a fresh uid per run when we are root), in its own session, under rlimits, with a scrubbed
   environment and only three pipes: requests in, replies out, output (stdout+stderr);
4. runs the TESTS HERE, in this interpreter: every top-level callable of the program is a proxy
   that sends the call to the candidate and decodes the reply into plain data (None, bool, int,
   float, complex, str, bytes, tuple, list, set, frozenset, dict; anything else is an opaque
   handle that equals nothing). `assert`, `==`, builtins and exceptions are this interpreter's,
   compiled with asserts on, so nothing the program does can make an assertion true;
5. kills everything the candidate started, removes the working directory, and writes
   `HAPO-VERDICT <base64 json> <hmac-sha256>` on fd 1, a pipe the candidate never holds.
"""

import base64
import builtins
import ctypes
import errno as errno_mod
import hashlib
import hmac
import json
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

_FRAME = struct.Struct(">I")
_MAX_FRAME = 64 << 20
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG = 4, 36, 1
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x40000000
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x4000, 0x40000, 0x2, 0x4
_LIMIT_ERRNOS = {errno_mod.EAGAIN, errno_mod.EMFILE, errno_mod.ENFILE, errno_mod.EFBIG, errno_mod.ENOMEM,
                 errno_mod.ENOSPC, errno_mod.EDQUOT}
_LIBC = ctypes.CDLL(None, use_errno=True)


class Verdict(BaseException):  # BaseException: a test's `except Exception:` cannot swallow it
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


class CandidateError(Exception):
    """An exception the program raised that has no builtin counterpart here."""


class Opaque:
    """A value the program returned that is not plain data: it equals nothing and has no truth value."""

    def __init__(self, judge, h, typename):
        self._judge, self._h, self._type = judge, h, typename

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)

    def __bool__(self):
        raise TypeError(f"a {self._type} object returned by the program has no truth value here")

    def __repr__(self):
        return f"<program object {self._type}>"

    def __call__(self, *args, **kwargs):
        return self._judge.call({"op": "callh", "h": self._h, "attr": None}, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        judge, h = self._judge, self._h
        return lambda *a, **k: judge.call({"op": "callh", "h": h, "attr": name}, a, k)


def enc(v, depth=0):
    if depth > 200:
        raise ValueError("argument nested too deeply")
    t = type(v)
    if v is None:
        return ["n"]
    if t is bool:
        return ["b", v]
    if t is int:
        return ["i", format(v, "x")]
    if t is float:
        return ["f", repr(v) if v == v and abs(v) != float("inf") else str(v)]
    if t is complex:
        return ["c", repr(v.real), repr(v.imag)]
    if t is str:
        return ["s", v]
    if t in (bytes, bytearray):
        return ["y", bytes(v).hex()]
    if t is tuple:
        return ["t", [enc(x, depth + 1) for x in v]]
    if t is list:
        return ["l", [enc(x, depth + 1) for x in v]]
    if t is frozenset:
        return ["F", [enc(x, depth + 1) for x in v]]
    if t is set:
        return ["S", [enc(x, depth + 1) for x in v]]
    if t is dict:
        return ["d", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]]
    if isinstance(v, Opaque):
        return ["h", v._h]
    raise TypeError(f"cannot pass a {t.__name__} to the program")


def dec(e, judge, depth=0):
    """Plain data from the program's reply: built here, from JSON, so it carries no program code."""
    if depth > 200 or type(e) is not list or not e or type(e[0]) is not str:
        raise ValueError("malformed value from the program")
    tag = e[0]
    if tag == "n":
        return None
    if tag == "b":
        return e[1] is True
    if tag == "i":
        return int(str(e[1]), 16)
    if tag == "f":
        return float(str(e[1]))
    if tag == "c":
        return complex(float(str(e[1])), float(str(e[2])))
    if tag == "s":
        if type(e[1]) is not str:
            raise ValueError("malformed string from the program")
        return e[1]
    if tag == "y":
        return bytes.fromhex(str(e[1]))
    if tag in ("t", "l", "F", "S"):
        items = [dec(x, judge, depth + 1) for x in e[1]]
        return {"t": tuple, "l": list, "F": frozenset, "S": set}[tag](items)
    if tag == "d":
        return {dec(k, judge, depth + 1): dec(x, judge, depth + 1) for k, x in e[1]}
    if tag == "h":
        return Opaque(judge, int(e[1]), str(e[2])[:100])
    raise ValueError(f"unknown value tag from the program: {tag!r}")


class Output:
    """Drains the candidate's output pipe: keeps the last `cap` bytes, kills past `kill_at` bytes."""

    def __init__(self, fd, cap, kill_at, on_flood):
        self.fd, self.cap, self.kill_at, self.on_flood = fd, cap, kill_at, on_flood
        self.tail, self.total, self.flooded = bytearray(), 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            self.tail += chunk
            if len(self.tail) > 2 * self.cap:
                del self.tail[: len(self.tail) - self.cap]
            if self.total > self.kill_at and not self.flooded:
                self.flooded = True
                self.on_flood()

    def text(self):
        self.thread.join(timeout=2)
        return bytes(self.tail[-self.cap:]).decode("utf-8", "replace")


class Judge:
    def __init__(self, job):
        self.job = job
        self.deadline = time.monotonic() + float(job["timeout"])
        self.proc = None
        self.buf = b""
        self.calls = 0
        self.killed_for = None  # "output" | "timeout"

    # ---- the candidate process ----
    def start(self, workdir):
        job = self.job
        uid = job.get("uid")
        mem = int(job["memory_mb"]) << 20
        cpu = int(job["cpu_seconds"])
        nproc = int(job["nproc"])
        nofile, fsize = int(job["nofile"]), int(job["fsize_mb"]) << 20

        def limits():
            for res, val in (
                (resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_NPROC, nproc),
                (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0),
            ):
                soft, hard = val if isinstance(val, tuple) else (val, val)
                resource.setrlimit(res, (soft, hard))
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
        creds = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        self.proc = subprocess.Popen(
            [job["python"], "-I", *([] if job.get("site") else ["-S"]), "-c", job["candidate_source"]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=env,
            close_fds=True, start_new_session=True, preexec_fn=limits, bufsize=0, **creds,
        )
        self.out = Output(self.proc.stderr.fileno(), int(job["output_cap"]), int(job["output_kill"]),
                          lambda: self.kill("output"))

    def kill(self, why=None):
        if why and self.killed_for is None:
            self.killed_for = why
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass

    def send(self, obj):
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8", "surrogatepass")
        try:
            self.proc.stdin.write(_FRAME.pack(len(data)) + data)
        except (BrokenPipeError, OSError):
            raise self.died() from None

    def died(self):
        try:
            rc = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            rc = None
        if self.killed_for == "output":
            return Verdict("limit", f"output cap exceeded ({self.job['output_kill']} bytes)")
        if self.killed_for == "timeout":
            return Verdict("timeout", f"wall-clock timeout after {self.job['timeout']} s")
        if rc is not None and rc < 0:
            sig = -rc
            if sig == signal.SIGXCPU:
                return Verdict("timeout", f"CPU time limit ({self.job['cpu_seconds']} s)")
            if sig == signal.SIGXFSZ:
                return Verdict("limit", "file size limit")
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return CandidateDied(f"program killed by {name}")
        return CandidateDied(f"program exited (code {rc}) before answering")

    def recv(self):
        fd = self.proc.stdout.fileno()
        while True:
            if len(self.buf) >= _FRAME.size:
                (n,) = _FRAME.unpack_from(self.buf)
                if n > _MAX_FRAME:
                    self.kill()
                    raise CandidateDied("reply too large")
                if len(self.buf) >= _FRAME.size + n:
                    body = self.buf[_FRAME.size: _FRAME.size + n]
                    self.buf = self.buf[_FRAME.size + n:]
                    return json.loads(body.decode("utf-8", "surrogatepass"))
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.kill("timeout")
                raise Verdict("timeout", f"wall-clock timeout after {self.job['timeout']} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise self.died()
            self.buf += chunk

    def call(self, head, args, kwargs):
        self.calls += 1
        req = dict(head, args=[enc(a) for a in args], kwargs=[[str(k), enc(v)] for k, v in kwargs.items()])
        self.send(req)
        reply = self.recv()
        if type(reply) is not dict:
            raise CandidateDied("malformed reply")
        if reply.get("ok") is True:
            return dec(reply.get("value"), self)
        raise program_exception(reply)

    def proxy(self, name):
        judge = self

        def remote(*args, **kwargs):
            return judge.call({"op": "call", "name": name}, args, kwargs)

        remote.__name__ = remote.__qualname__ = name
        return remote


class CandidateDied(BaseException):  # the program died mid-call (BaseException: see Verdict)
    pass


class ProgramRaised(Exception):
    def __init__(self, typename, msg, err):
        super().__init__(f"{typename}: {msg}")
        self.typename, self.msg, self.errno = typename, msg, err


def program_exception(reply):
    typename, msg = str(reply.get("exc"))[:100], str(reply.get("msg"))[:2000]
    err = reply.get("errno") if type(reply.get("errno")) is int else None
    if typename == "MemoryError" or (err in _LIMIT_ERRNOS and typename in ("OSError", "BlockingIOError")):
        return Verdict("limit", f"resource limit in the program: {typename}: {msg}")
    base = getattr(builtins, typename, None)
    if isinstance(base, type) and issubclass(base, Exception):
        try:
            exc = base(msg)  # so `except ValueError:` in a test works; never SystemExit & co
            exc.from_program = True
            return exc
        except Exception:
            pass
    return ProgramRaised(typename, msg, err)


def _check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def isolate():
    """Fallback as root: private network/mount/IPC/UTS namespaces, private tmpfs on the shared temp dirs."""
    _check(_LIBC.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    _check(_LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(d):
            _check(_LIBC.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=256m,mode=1777"),
                   f"mount tmpfs {d}")


def kill_uid(uid):
    """Kill every process of `uid` (a fresh uid used by this run only): a child drops to it and kill(-1)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def reap_all(in_pidns):
    """Kill and reap every remaining descendant (we are their subreaper)."""
    me = os.getpid()
    for _ in range(200):
        kids = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == me:
                kids.append(int(p))
        if not kids:
            return
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        if in_pidns:
            try:
                os.kill(-1, signal.SIGKILL)  # everything else in this pid namespace (never ourselves)
            except OSError:
                pass
        for k in kids:
            try:
                os.waitpid(k, 0)
            except ChildProcessError:
                pass


def main():
    raw = sys.stdin.buffer.readline()
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # fd 0 again, pointing nowhere
    _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    verdict_fd = os.dup(1)
    os.dup2(2, 1)
    job = json.loads(raw)
    key = bytes.fromhex(job.pop("key"))
    t0 = time.monotonic()
    status, detail, workdir, output = "error", "", None, ""
    judge = Judge(job)
    isolation = []
    try:
        try:
            sys.set_int_max_str_digits(0)
        except AttributeError:
            pass
        if job.get("isolate"):
            isolate()
            isolation.append("netns")
        workdir = job.get("workdir") or tempfile.mkdtemp(prefix="hapo-run-", dir="/tmp")
        uid = job.get("uid")
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        try:
            judge.start(workdir)
        except Exception as e:
            raise Verdict("error", f"cannot start the program: {type(e).__name__}: {e}") from None
        ns = {"__name__": "__hapo_tests__", "__builtins__": builtins}
        if job.get("mode") == "stdio":
            program = job["program"]

            def stdio(stdin=""):
                if type(stdin) is not str:
                    raise TypeError("stdio() takes the input as a str")
                out = judge.call({"op": "stdio", "program": program}, (stdin,), {})
                if type(out) is not str:
                    raise CandidateDied("malformed stdio reply")
                return out

            ns["stdio"] = stdio
            reply = {"ok": True, "names": {}}
        else:
            judge.send({"op": "load", "program": job["program"]})
            reply = judge.recv()
        if type(reply) is not dict or reply.get("ok") is not True:
            exc = program_exception(reply if type(reply) is dict else {})
            if isinstance(exc, Verdict):
                raise exc
            raise Verdict("error", f"the program did not load: {reply.get('exc')}: {reply.get('msg')}")
        names = reply.get("names") or {}
        for name in names:
            if type(name) is str and name.isidentifier():
                ns[name] = judge.proxy(name)
        code = compile(job["tests"], "<tests>", "exec", optimize=0)
        exec(code, ns)
        status, detail = "pass", f"{judge.calls} calls checked"
    except Verdict as v:
        status, detail = v.status, v.detail
    except CandidateDied as e:
        status, detail = ("error", f"the program did not load: {e}") if judge.calls == 0 else ("fail", str(e))
    except AssertionError as e:
        status, detail = "fail", f"assertion failed{': ' + str(e)[:500] if str(e) else ''}"
    except RecursionError as e:
        status, detail = "fail", f"RecursionError: {e}"
    except Exception as e:
        status, detail = "fail", f"{type(e).__name__}: {str(e)[:500]}"
    except BaseException as e:  # noqa: B036 - a test calling exit() must not skip the verdict
        status, detail = "fail", f"{type(e).__name__} in the tests"
        if judge.proc is None:
            status = "error"
    finally:
        judge.kill()
        if judge.proc is not None:
            if job.get("uid") is not None:
                kill_uid(job["uid"])
            reap_all(job.get("pidns", False))
            try:
                judge.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            output = judge.out.text()
        if workdir and not job.get("workdir"):
            shutil.rmtree(workdir, ignore_errors=True)
    payload = json.dumps({
        "nonce": job["nonce"], "status": status, "detail": detail[:2000], "output_tail": output,
        "calls": judge.calls, "isolation": isolation, "seconds": round(time.monotonic() - t0, 4),
    }).encode()
    mac = hmac.new(key, payload, hashlib.sha256).hexdigest()
    line = b"HAPO-VERDICT " + base64.b64encode(payload) + b" " + mac.encode() + b"\n"
    while line:
        line = line[os.write(verdict_fd, line):]


main()
