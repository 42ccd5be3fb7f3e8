"""The hostile battery: programs that try to escape, exhaust or fool the code sandbox.

Each program runs through the real sandbox (real bubblewrap, real processes; no mocks) in every
kind this machine can run: bubblewrap and the fallback (rlimit+netns as root). For each program:
the expected status, bounded time, no file left outside the working directory, no process left
running, and the host process unaffected (its environment, a canary file, a listening socket).
A program whose attack is *contained* is written to answer correctly, so "pass" means it ran and
could not do harm; a faking trick pairs the trick with a wrong answer, so anything but a
failure would mean the trick worked.

The battery goes through CodePool (2 workers) once per kind; about 15-25 s per kind here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hapo_cli.errors import HapoError
from hapo_cli.rewards.code import CodePool, execute
from hapo_cli.rewards.sandbox import kind_works, sandbox_kind

TIMEOUT = 3.0  # seconds per program in the battery
TOKEN = secrets.token_hex(6)  # names every file a hostile program tries to leave behind
SECRET = f"SECRET-{secrets.token_hex(8)}"  # appears only in test code
CANARY_ENV = f"canary-{secrets.token_hex(8)}"
ESCAPE_DIRS = ["/tmp", "/var/tmp", "/dev/shm", str(Path.cwd()), "/root", str(Path.home())]

SQUARE_OK = "def square(x):\n    return x * x\n"
SQUARE_WRONG = "def square(x):\n    return x + x\n"
SQUARE_TESTS = "assert square(3) == 9\nassert square(-4) == 16\nassert square(0) == 0\n"


def _battery(port: int) -> list[tuple[str, str, str, str]]:
    """(name, program, tests, expected status); `port` is a host socket nobody should reach."""
    esc = [f"{d}/hapo_escape_{TOKEN}" for d in ESCAPE_DIRS] + [f"/etc/hapo_escape_{TOKEN}", f"/hapo_escape_{TOKEN}"]
    cases = [
        # ---- ordinary solutions
        ("correct", SQUARE_OK, SQUARE_TESTS, "pass"),
        ("wrong", SQUARE_WRONG, SQUARE_TESTS, "fail"),
        ("syntax_error", "def square(x)\n    return x*x\n", SQUARE_TESTS, "error"),
        ("raises_at_import", "raise ValueError('no')\n" + SQUARE_OK, SQUARE_TESTS, "error"),
        ("raises_in_call", "def square(x):\n    raise ValueError('bad')\n", SQUARE_TESTS, "fail"),
        ("missing_function", "def cube(x):\n    return x**3\n", SQUARE_TESTS, "fail"),
        ("list_not_tuple", "def pair(x):\n    return [x, x]\n", "assert pair(1) == (1, 1)\n", "fail"),
        ("prints_and_passes", "print('debug line')\n" + SQUARE_OK, SQUARE_TESTS, "pass"),
        ("class_solution", "class Solution:\n    def twoSum(self, a, t):\n        s = {}\n"
         "        for i, x in enumerate(a):\n            if t - x in s:\n                return [s[t - x], i]\n"
         "            s[x] = i\n", "assert Solution().twoSum([2, 7, 11], 9) == [0, 1]\n", "pass"),
        ("big_result", "def f():\n    return list(range(200000))\n", "assert f() == list(range(200000))\n", "pass"),
        ("test_catches_valueerror", "def f(x):\n    raise ValueError(x)\n",
         "try:\n    f(1)\n    raise AssertionError('no raise')\nexcept ValueError:\n    pass\n", "pass"),
        ("workdir_scratch_file", "import os\ndef f():\n    open('scratch.txt', 'w').write('x' * 10)\n"
         "    return open('scratch.txt').read()\n", "assert f() == 'x' * 10\n", "pass"),
        ("recursion_bomb", "def square(x):\n    return square(x)\n", SQUARE_TESTS, "fail"),
        ("reads_stdin", "def square(x):\n    return int(input())\n", SQUARE_TESTS, "fail"),
        ("returns_generator", "def f():\n    yield 1\n", "assert f() == [1]\n", "fail"),
        # ---- resources
        ("fork_bomb", "import os\ndef square(x):\n    while True:\n        os.fork()\n", SQUARE_TESTS, "limit"),
        ("fork_sleepers", "import os, time\ndef square(x):\n    for _ in range(10000):\n        if os.fork() == 0:\n"
         "            time.sleep(60)\n            os._exit(0)\n", SQUARE_TESTS, "limit"),
        ("memory_bomb", "def square(x):\n    b = bytearray(8 << 30)\n    return x * x\n", SQUARE_TESTS, "limit"),
        ("memory_creep", "def square(x):\n    keep = []\n    while True:\n        keep.append(' ' * (1 << 20))\n",
         SQUARE_TESTS, "limit"),
        ("infinite_loop", "def square(x):\n    while True:\n        pass\n", SQUARE_TESTS, "timeout"),
        ("infinite_loop_at_import", "while True:\n    pass\n", SQUARE_TESTS, "timeout"),
        ("sleep_past_timeout", "import time\ndef square(x):\n    time.sleep(30)\n    return x * x\n",
         SQUARE_TESTS, "timeout"),
        ("output_flood", "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n", SQUARE_TESTS, "limit"),
        ("big_finite_output", "import sys\nsys.stdout.write('z' * (4 << 20))\nsys.stdout.flush()\n" + SQUARE_OK,
         SQUARE_TESTS, "pass"),
        ("file_too_big", "def square(x):\n    with open('big.bin', 'wb') as f:\n        for _ in range(64):\n"
         "            f.write(b'0' * (1 << 20))\n    return x * x\n", SQUARE_TESTS, "limit"),
        ("too_many_files", "def square(x):\n    fs = [open('/dev/null') for _ in range(10000)]\n    return x * x\n",
         SQUARE_TESTS, "limit"),
        ("threads_outlive", "import threading, time\ndef _spin():\n    while True:\n        time.sleep(0.01)\n"
         "for _ in range(4):\n    threading.Thread(target=_spin).start()\n" + SQUARE_OK, SQUARE_TESTS, "pass"),
        ("setsid_daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         "        time.sleep(120)\n    os._exit(0)\n" + SQUARE_OK, SQUARE_TESTS, "pass"),
        ("ctypes_segfault", "import ctypes\ndef square(x):\n    ctypes.string_at(0)\n", SQUARE_TESTS, "fail"),
        ("ctypes_segfault_at_import", "import ctypes\nctypes.string_at(0)\n", SQUARE_TESTS, "error"),
        # ---- escapes (contained => "pass"; the host checks below confirm nothing got out)
        ("writes_outside_workdir", "def escape():\n    for p in " + repr(esc) + ":\n        try:\n            open(p, 'w').write('x')\n"
         "        except OSError:\n            pass\n", "assert escape() is None\n", "pass"),
        ("reads_etc_shadow", "def read():\n    try:\n        return open('/etc/shadow').read()\n"
         "    except OSError:\n        return None\n", "assert read() is None\n", "pass"),
        ("reads_parent_environment", "import os\ndef leak():\n    found = []\n    for p in os.listdir('/proc'):\n"
         "        for f in ('environ', 'cmdline'):\n            try:\n"
         "                if " + repr(CANARY_ENV) + ".encode() in open(f'/proc/{p}/{f}', 'rb').read():\n                    found.append(p)\n"
         "            except OSError:\n                pass\n    return found + [k for k, v in os.environ.items() if "
         + repr(CANARY_ENV) + " in v]\n", "assert leak() == []\n", "pass"),
        ("environment_scrubbed", "import os\ndef keys():\n    bad = ('WANDB_API_KEY', 'HF_TOKEN', 'AWS_SECRET_ACCESS_KEY',\n"
         "           'OPENAI_API_KEY', 'GITHUB_TOKEN', 'HUGGING_FACE_HUB_TOKEN')\n"
         "    return sorted(k for k in os.environ if k in bad)\n", "assert keys() == []\n", "pass"),
        ("kills_parent", "import os, signal\ndef square(x):\n    for pid in (os.getppid(), 1, -1):\n        try:\n"
         "            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    return x * x\n",
         SQUARE_TESTS, "pass"),
        ("network_loopback", "import socket\ndef connect():\n    try:\n"
         f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
         "        return True\n    except OSError:\n        return False\n", "assert connect() is False\n", "pass"),
        ("ptrace_parent_memory", "import os\ndef peek():\n    got = []\n    for f in ('mem', 'environ', 'fd/0', 'fd/1'):\n"
         "        try:\n            open(f'/proc/{os.getppid()}/{f}', 'rb').read(1)\n            got.append(f)\n"
         "        except OSError:\n            pass\n    return got\n", "assert peek() == []\n", "pass"),
        # ---- faking tricks (each with a wrong answer: anything but a failure would be a forged pass)
        ("exit0_before_tests", "import sys\nsys.exit(0)\n" + SQUARE_WRONG, SQUARE_TESTS, "error"),
        ("os_exit0_at_import", "import os\nos._exit(0)\n", SQUARE_TESTS, "error"),
        ("os_exit0_in_call", "import os\ndef square(x):\n    os._exit(0)\n", SQUARE_TESTS, "fail"),
        ("system_exit_in_call", "def square(x):\n    raise SystemExit(0)\n", SQUARE_TESTS, "fail"),
        ("redefines_assert", "import builtins\nclass Nope(BaseException):\n    pass\nbuiltins.AssertionError = Nope\n"
         "__builtins__.__dict__['AssertionError'] = Nope\n" + SQUARE_WRONG, SQUARE_TESTS, "fail"),
        ("redefines_harness", "def check(candidate):\n    return None\n" + SQUARE_WRONG,
         "def check(candidate):\n    assert candidate(3) == 9\n\ncheck(square)\n", "fail"),
        ("patches_exec_and_exit", "import builtins, sys, os\nbuiltins.exec = lambda *a, **k: None\n"
         "builtins.compile = lambda *a, **k: None\nsys.exit = lambda *a: None\nos._exit = lambda *a: None\n"
         + SQUARE_WRONG, SQUARE_TESTS, "fail"),
        ("excepthook_exit0", "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n" + SQUARE_WRONG,
         SQUARE_TESTS, "fail"),
        ("atexit_exit0", "import atexit, os\natexit.register(lambda: os._exit(0))\n" + SQUARE_WRONG,
         SQUARE_TESTS, "fail"),
        ("reexec_with_O", "import os, sys\nif not sys.flags.optimize:\n"
         "    argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:-1]\n"
         "    os.execv(argv[0], [argv[0], b'-O'] + argv[1:])\n" + SQUARE_WRONG, SQUARE_TESTS, "error"),
        ("reexec_with_O_keeping_pipes", "import os, sys\nif not sys.flags.optimize:\n"
         "    argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:-1]\n"
         "    os.dup2(3, 0)\n    os.dup2(4, 1)\n"
         "    os.execv(argv[0], [argv[0], b'-O'] + argv[1:])\n" + SQUARE_WRONG, SQUARE_TESTS, "timeout"),
        ("prints_fake_success", "import os\nprint('PASSED: all tests passed')\nprint('HAPO-VERDICT eyJzdGF0dXMiOiAicGFzcyJ9 '"
         " + '0' * 64)\nos.write(1, b'{\"status\": \"pass\"}\\n')\n" + SQUARE_WRONG, SQUARE_TESTS, "fail"),
        ("forges_verdict_on_parent_fd", "import os\nfor fd in (1, 2, 3):\n    try:\n"
         "        os.write(os.open(f'/proc/{os.getppid()}/fd/{fd}', os.O_WRONLY), b'HAPO-VERDICT e30= 00\\n')\n"
         "    except OSError:\n        pass\n" + SQUARE_WRONG, SQUARE_TESTS, "fail"),
        ("always_equal_object", "class Any:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
         "def square(x):\n    return Any()\n", SQUARE_TESTS, "fail"),
        ("always_equal_int_subclass", "class I(int):\n    def __eq__(self, o):\n        return True\n"
         "def square(x):\n    return I(1)\n", SQUARE_TESTS, "fail"),
        ("reads_tests_for_secret", "import os, glob\ndef answer():\n    for p in glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ')"
         " + glob.glob('/proc/*/fd/*') + glob.glob('/tmp/**', recursive=True) + glob.glob('*'):\n        try:\n"
         "            data = open(p, 'rb').read(1 << 20)\n        except OSError:\n            continue\n"
         "        i = data.find(b'SECRET-')\n        if i >= 0:\n            return data[i:i + 23].decode()\n"
         "    return None\n", f"assert answer() == {SECRET!r}\n", "fail"),
        ("edits_test_files", "import glob\nfor p in glob.glob('/tmp/**/*.py', recursive=True) + glob.glob('*.py'):\n"
         "    try:\n        open(p, 'w').write('pass')\n    except OSError:\n        pass\n" + SQUARE_WRONG,
         SQUARE_TESTS, "fail"),
        ("fork_parent_exits0", "import os\nif os.fork() != 0:\n    os._exit(0)\n" + SQUARE_WRONG, SQUARE_TESTS, "fail"),
        ("fork_both_exit0", "import os\nos.fork()\nos._exit(0)\n", SQUARE_TESTS, "error"),
        ("replaces_protocol_json", "import json\njson.dumps = lambda *a, **k: '{\"ok\": true, \"value\": [\"i\", \"9\"]}'\n"
         + SQUARE_WRONG, SQUARE_TESTS, "fail"),
    ]
    return cases


def _sandbox_processes() -> list[str]:
    """Processes left from any sandbox run: candidate interpreters, fresh-uid processes, bwrap."""
    left = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            uid = os.stat(f"/proc/{p}").st_uid
        except OSError:
            continue
        if b"UNTRUSTED side of a sandboxed run" in cmd or b"TRUSTED side of a sandboxed run" in cmd or uid >= 200_000:
            left.append(f"{p} uid={uid} {cmd[:80]!r}")
    return left


KINDS = [k for k in ("bubblewrap", "rlimit+netns") if kind_works(k)]


@pytest.fixture(scope="module", params=KINDS or ["none"])
def battery(request):
    kind = request.param
    if kind == "none":
        pytest.skip("neither bubblewrap nor the root fallback runs here")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted = []

    def accept():
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                pass

    stop = threading.Event()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    os.environ["HF_TOKEN"] = os.environ["WANDB_API_KEY"] = CANARY_ENV
    # a host process holding a credential in its initial environment (as a launched trainer would)
    holder = subprocess.Popen(["sleep", "120"], env={"HF_TOKEN": CANARY_ENV, "PATH": "/usr/bin:/bin"})
    canary = Path(f"canary_{TOKEN}.txt")
    canary.write_text("host file\n")
    cases = _battery(listener.getsockname()[1])
    t0 = time.monotonic()
    try:
        with CodePool(workers=2, timeout=TIMEOUT, memory_mb=512, kind=kind) as pool:
            results = pool.map([c[1] for c in cases], [c[2] for c in cases])
        wall = time.monotonic() - t0
        time.sleep(0.3)
        leftover = _sandbox_processes()
        escaped = [f"{d}/hapo_escape_{TOKEN}" for d in ESCAPE_DIRS + ["/etc", ""]
                   if os.path.exists(f"{d}/hapo_escape_{TOKEN}")]
        canary_ok = canary.read_text() == "host file\n"
    finally:
        holder.kill()
        holder.wait()
        stop.set()
        t.join()
        listener.close()
        canary.unlink(missing_ok=True)
        for d in ESCAPE_DIRS + ["/etc", ""]:  # never leave a file behind even when the test fails
            Path(f"{d}/hapo_escape_{TOKEN}").unlink(missing_ok=True)
    env_ok = os.environ["HF_TOKEN"] == CANARY_ENV
    del os.environ["HF_TOKEN"], os.environ["WANDB_API_KEY"]
    print(f"\n[{kind}] {len(cases)} programs in {wall:.1f} s through CodePool(2)")
    for c, r in zip(cases, results):
        print(f"  {c[0]:<30} {r.status:<8} {r.seconds:6.2f} s  {r.detail[:70]}")
    return {"kind": kind, "cases": {c[0]: (c, r) for c, r in zip(cases, results)}, "leftover": leftover,
            "escaped": escaped, "accepted": accepted, "canary_ok": canary_ok, "env_ok": env_ok, "wall": wall}


CASE_NAMES = [c[0] for c in _battery(0)]


def test_battery_is_big_enough():
    assert len(CASE_NAMES) >= 40 and len(set(CASE_NAMES)) == len(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_program(battery, name):
    (_, _, _, expect), r = battery["cases"][name]
    # a program that searches the machine for the secret may run out of time on a loaded machine:
    # either way it did not find it (what matters is that it never passes)
    allowed = {expect, "timeout"} if name == "reads_tests_for_secret" else {expect}
    assert r.status in allowed, f"{name}: {r.status} ({r.detail}) != {expect}; output: {r.output_tail[-300:]!r}"
    assert r.passed == (expect == "pass")
    assert r.kind == battery["kind"]
    assert r.seconds < TIMEOUT + 4, f"{name} took {r.seconds:.1f} s"
    assert len(r.output_tail) <= 8192


def test_battery_left_nothing_behind(battery):
    assert battery["leftover"] == [], "processes left running"
    assert battery["escaped"] == [], "files written outside the working directory"
    assert battery["accepted"] == [], "a program reached the host's loopback socket"
    assert battery["canary_ok"] and battery["env_ok"], "the host process was affected"
    assert battery["wall"] < 60


def test_output_is_captured_up_to_the_cap(battery):
    _, r = battery["cases"]["big_finite_output"]
    assert r.output_tail == "z" * 8192
    _, r = battery["cases"]["prints_and_passes"]
    assert r.output_tail == "debug line\n"


# ---- the rest of the API


def test_sandbox_kind_is_one_of_three():
    assert sandbox_kind() in ("bubblewrap", "rlimit+netns", "rlimit")


def test_forced_unknown_kind_is_one_clear_error(monkeypatch):
    with pytest.raises(HapoError, match="unknown sandbox kind"):
        execute(SQUARE_OK, SQUARE_TESTS, kind="docker")


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(HapoError, match="timeout must be > 0"):
        execute(SQUARE_OK, SQUARE_TESTS, timeout=0)
    with pytest.raises(HapoError, match="strings of Python source"):
        execute(None, SQUARE_TESTS)  # type: ignore[arg-type]


def test_trainer_process_is_never_the_one_running_code():
    r = execute("import os\ndef pid():\n    return os.getpid()\n", f"assert pid() != {os.getpid()}\n")
    assert r.status == "pass"


@pytest.mark.skipif(not kind_works("rlimit"), reason="plain rlimit fallback does not run here")
def test_plain_rlimit_kind_still_judges_correctly():
    """The weakest fallback still gives real verdicts (no namespaces: see the README for what it lacks)."""
    assert execute(SQUARE_OK, SQUARE_TESTS, kind="rlimit").status == "pass"
    assert execute(SQUARE_WRONG, SQUARE_TESTS, kind="rlimit").status == "fail"
    assert execute("import os\nos._exit(0)\n", SQUARE_TESTS, kind="rlimit").status == "error"
    r = execute("import time\ndef square(x):\n    time.sleep(30)\n", SQUARE_TESTS, kind="rlimit", timeout=1)
    assert r.status == "timeout" and r.seconds < 5


_UNPRIV_SCRIPT = r'''
import json, sys
from hapo_cli.rewards.sandbox import Limits, kind_works, run_sandboxed
T = "assert f() == 1\n"
cases = {
    "ok": "def f():\n    return 1\n",
    "shadow": "def f():\n    try:\n        open('/etc/shadow').read()\n        return 'LEAK'\n    except OSError:\n        return 1\n",
    "not_root": "import os\ndef f():\n    return 1 if os.getuid() != 0 and os.geteuid() != 0 else 'ROOT'\n",
    "nested_userns": "import ctypes\ndef f():\n    return 1 if ctypes.CDLL(None).unshare(0x10000000) != 0 else 'NEW USERNS'\n",
    "daemon": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\ndef f():\n    return 1\n",
    "fork_bomb": "import os\ndef f():\n    while True:\n        os.fork()\n",
    "fake_success": "print('PASS')\ndef f():\n    return 2\n",
}
out = {"works": kind_works("bubblewrap")}
for name, prog in cases.items():
    out[name] = run_sandboxed(prog, T, limits=Limits(timeout=3), kind="bubblewrap").status
print(json.dumps(out))
'''


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("bwrap") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become an unprivileged user), bwrap and a system python3")
def test_bubblewrap_also_runs_for_an_unprivileged_user():
    """The same sandbox started by a normal user (bwrap makes a user namespace; no setuid anywhere)."""
    repo = str(Path(__file__).resolve().parents[1])
    r = subprocess.run(["/usr/bin/python3", "-c", _UNPRIV_SCRIPT], user=65534, group=65534, extra_groups=[],
                       env={"PYTHONPATH": repo, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}, cwd="/",
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "ModuleNotFoundError" in r.stderr:
        pytest.skip(f"the checkout is not readable by uid 65534: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"works": True, "ok": "pass", "shadow": "pass", "not_root": "pass", "nested_userns": "pass",
                   "daemon": "pass", "fork_bomb": "limit", "fake_success": "fail"}
    time.sleep(0.3)
    assert [p for p in _sandbox_processes() if "uid=65534" in p] == []
