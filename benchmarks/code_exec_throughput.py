"""Code execution throughput: programs per second through CodePool (2 workers) vs serial `execute`,
and the sandbox's overhead per program.

    python benchmarks/code_exec_throughput.py [--programs 40] [--workers 2] [--kind bubblewrap]

Workload (deterministic): short HumanEval-sized programs, half correct, half wrong, each checked
by 5 asserts (so 5 calls across the judge/candidate boundary). Rows:
- `in-process exec (unsafe)`: `exec(program + tests)` in this process: the floor, no isolation;
- `bare subprocess`: `python -I -c program+tests` per program: the cost of one interpreter start;
- `serial execute (KIND)`: `hapo_cli.rewards.code.execute` one after another;
- `CodePool(W) (KIND)`: the same programs through `CodePool(workers=W).map`.
Overhead per program = serial execute time minus the in-process time, per program. Every sandbox
kind that runs here is measured unless --kind picks one. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hapo_cli.rewards.code import CodePool, execute  # noqa: E402
from hapo_cli.rewards.sandbox import KINDS, kind_works  # noqa: E402

TESTS = "\n".join(f"assert fib({n}) == {v}" for n, v in [(0, 0), (1, 1), (2, 1), (10, 55), (20, 6765)]) + "\n"
GOOD = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
BAD = "def fib(n):\n    return n\n"


def workload(n: int) -> list[str]:
    return [GOOD if i % 2 == 0 else BAD for i in range(n)]


def in_process(programs: list[str]) -> float:
    t0 = time.perf_counter()
    for p in programs:
        try:
            exec(compile(p + TESTS, "<p>", "exec"), {})
        except AssertionError:
            pass
    return time.perf_counter() - t0


def bare_subprocess(programs: list[str]) -> float:
    t0 = time.perf_counter()
    for p in programs:
        subprocess.run([sys.executable, "-I", "-S", "-c", p + TESTS], capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kind", choices=KINDS, default=None)
    args = ap.parse_args()
    programs = workload(args.programs)
    expected = ["pass" if p is GOOD else "fail" for p in programs]
    kinds = [args.kind] if args.kind else [k for k in KINDS if kind_works(k)]
    rows = []
    t_in = in_process(programs)
    rows.append(("in-process exec (unsafe)", t_in))
    rows.append(("bare subprocess", bare_subprocess(programs)))
    overhead = {}
    for kind in kinds:
        t0 = time.perf_counter()
        got = [execute(p, TESTS, kind=kind).status for p in programs]
        t_serial = time.perf_counter() - t0
        assert got == expected, f"{kind}: wrong verdicts {got}"
        rows.append((f"serial execute ({kind})", t_serial))
        with CodePool(workers=args.workers, kind=kind) as pool:
            t0 = time.perf_counter()
            got = [r.status for r in pool.map(programs, TESTS)]
            t_pool = time.perf_counter() - t0
        assert got == expected, f"{kind}: wrong verdicts in the pool {got}"
        rows.append((f"CodePool({args.workers}) ({kind})", t_pool))
        overhead[kind] = (t_serial - t_in) / len(programs)
    n = len(programs)
    print(f"{n} programs (half correct), 5 asserts each; {sys.platform}, python {sys.version.split()[0]}\n")
    print("| mode | seconds | programs/s | ms/program |")
    print("|---|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {n / t:.1f} | {1000 * t / n:.1f} |")
    print()
    for kind, o in overhead.items():
        print(f"sandbox overhead per program ({kind}): {1000 * o:.0f} ms")


if __name__ == "__main__":
    main()
