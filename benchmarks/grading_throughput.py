"""Grading throughput: answers graded per second, GradingPool vs math-verify serially in-process.

    python benchmarks/grading_throughput.py [--items 400] [--workers 2] [--timeout 10]

Two answer mixes, both deterministic (seeded):
- `math-verify`: every answer differs from its gold as a string, so each one needs math-verify
  (fractions vs decimals, unreduced fractions, expanded polynomials, radicals, sets, complex
  numbers, and wrong answers of the same shapes);
- `realistic`: half of the answers match the gold exactly after normalisation (settled in the
  parent process without math-verify), half as above.

Modes:
- `serial math-verify`: `math_verify.verify(parse(gold), parse(pred))` per answer, main thread;
- `serial hapo`: `hapo_cli.rewards.grade_completion` per answer (extraction, exact match, then
  math-verify), main thread;
- `pool (W workers)`: `GradingPool(num_workers=W).grade(...)`, worker start-up excluded (it is
  printed separately: a long-lived pool pays it once).

Prints a Markdown table. Measured numbers are quoted in the README; rerun to get yours.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hapo_cli.rewards import GradingPool, grade_completion  # noqa: E402


def _needs_mv(rng: random.Random) -> tuple[str, str]:
    """(completion, gold) whose answer is not an exact string match of the gold (60% equivalent)."""
    kind = rng.randrange(7)
    a, b = rng.randint(1, 9), rng.randint(2, 9)
    ok = rng.random() < 0.6
    if kind == 0:  # fraction vs (terminating) decimal
        b = rng.choice((2, 4, 5, 8))
        pred = f"{a / b:g}" if ok else f"{a / b + 0.5:g}"
        return f"so the value is \\boxed{{{pred}}}", f"\\frac{{{a}}}{{{b}}}"
    if kind == 1:  # unreduced fraction
        k = rng.randint(2, 5)
        num = a * k if ok else a * k + 1
        return f"\\boxed{{\\frac{{{num}}}{{{b * k}}}}}", f"\\frac{{{a}}}{{{b}}}"
    if kind == 2:  # expanded square
        c = a if ok else a + 1
        return f"\\boxed{{x^2+{2 * c}x+{c * c}}}", f"(x+{a})^2"
    if kind == 3:  # radicals
        m = a if ok else a + 1
        return f"\\boxed{{\\sqrt{{{m * m * b}}}}}", f"{a}\\sqrt{{{b}}}"
    if kind == 4:  # sets in another order
        xs = [a, a + b, a + 2 * b]
        ys = list(reversed(xs)) if ok else [a, a + b, a + 2 * b + 1]
        return f"\\boxed{{\\{{{', '.join(map(str, ys))}\\}}}}", f"\\{{{', '.join(map(str, xs))}\\}}"
    if kind == 5:  # complex numbers, terms swapped
        im = b if ok else b + 1
        return f"\\boxed{{{im}i+{a}}}", f"{a}+{b}i"
    e = rng.randint(2, 6)  # powers
    val = a**e if ok else a**e + 1
    return f"\\boxed{{{a}^{{{e}}}}}", str(val)


def make_items(n: int, realistic: bool, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        if realistic and i % 2 == 0:
            v = rng.randint(0, 999)
            items.append((f"... so the answer is \\boxed{{{v}}}.", str(v)))
        else:
            items.append(_needs_mv(rng))
    return items


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def serial_math_verify(items) -> tuple[float, float]:
    from math_verify import parse, verify

    from hapo_cli.rewards import extract_answer

    t0, c0 = time.perf_counter(), time.process_time()
    for c, g in items:
        pred = extract_answer(c, "boxed") or ""
        verify(parse(f"${g}$"), parse(f"${pred}$"))
    return time.perf_counter() - t0, time.process_time() - c0


def serial_hapo(items) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for c, g in items:
        grade_completion(c, g)
    return time.perf_counter() - t0, time.process_time() - c0


def pooled(items, workers: int, timeout: float) -> tuple[float, float, float, int]:
    pool = GradingPool(num_workers=workers, timeout=timeout)
    t0 = time.perf_counter()
    pool.start()
    # wait until every worker is up (answers that need math-verify, one per worker)
    pool.grade(["\\boxed{0.5}"] * workers, ["\\frac12"] * workers)
    startup = time.perf_counter() - t0
    pids = [w.proc.pid for w in pool._workers]
    cpu0 = sum(_proc_cpu(p) for p in pids) + time.process_time()
    t0 = time.perf_counter()
    pool.grade([c for c, _ in items], [g for _, g in items])
    secs = time.perf_counter() - t0
    cpu = sum(_proc_cpu(p) for p in pids) + time.process_time() - cpu0
    timeouts = pool.n_timeouts
    pool.close()
    return secs, cpu, startup, timeouts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=400, help="answers per mix")
    ap.add_argument("--workers", type=int, default=2, help=f"pool processes (this CPU has {os.cpu_count() or 1} cores)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-answer timeout of the pool (s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    # warm up imports (sympy, the LaTeX grammar) so the serial modes do not pay them
    grade_completion("\\boxed{x^2+2x+1}", "(x+1)^2")
    rows = []
    for mix in ("math-verify", "realistic"):
        items = make_items(args.items, realistic=mix == "realistic", seed=args.seed)
        t, cpu = serial_math_verify(items)
        rows.append((mix, "serial math-verify (in-process)", len(items), t, cpu, ""))
        t, cpu = serial_hapo(items)
        rows.append((mix, "serial hapo grade_completion", len(items), t, cpu, ""))
        for w in sorted({1, args.workers}):
            t, cpu, startup, timeouts = pooled(items, w, args.timeout)
            rows.append((mix, f"GradingPool ({w} worker{'s' if w > 1 else ''})", len(items), t, cpu,
                         f"start-up {startup:.1f}s, timeouts {timeouts}"))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nGrading throughput on {os.cpu_count()} CPU cores (python {sys.version.split()[0]}; "
          f"load average before/after: {load_before} / {load}: numbers are only comparable on a quiet machine)\n")
    print("| mix | mode | answers | wall s | answers/s | vs serial math-verify | CPU s (all processes) | notes |")
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for mix, mode, n, secs, cpu, note in rows:
        base.setdefault(mix, secs)  # the first row of each mix is serial math-verify
        print(f"| {mix} | {mode} | {n} | {secs:.2f} | {n / secs:.1f} | {base[mix] / secs:.2f}x | {cpu:.2f} | {note} |")


if __name__ == "__main__":
    main()
