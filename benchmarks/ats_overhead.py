"""Generation time with and without the Adaptive Temperature Sampling processor (HAPO "A").

The HF engine (`hapo_cli.rollout.hf.HFRolloutEngine`, transformers `generate`) samples
P prompts x G responses at the benchmark shape, alternating variants call by call (the order
rotating every round) so every variant sees the same machine load:

  off       plain sampling at T_base = 1
  ats       ATS on (the processor: entropy of the raw logits, then an in-place division)
  ats+ent   ATS on and `return_entropy` (the rollout keeps each position's entropy: entropy_source=rollout;
            the processor reuses it, so this should cost the same as `ats`)
  ent       ATS off, `return_entropy` only (what DAPO pays to keep entropies)
  ats-eager ATS on with `rollout.entropy_kernel=eager` (algo.token_entropy's eager passes instead of the
            fused compiled kernel that `auto` uses at this vocabulary): what the kernel buys

EOS is suppressed (`min_new_tokens`), so every call generates exactly the same number of tokens.
Prints tokens/s per variant and the median of the paired ratios (round i of a variant over
round i of `off`) with their spread, and the own time of hapo's per-step hooks (the ATS
processor and the entropy recorder, timed around their calls) per decoding step and as a share
of `off`'s decoding step: a direct figure that the call-to-call noise of the wall ratio (a few
percent on this machine) does not blur. The last line is one JSON object.

    python benchmarks/ats_overhead.py --shape qwen2.5-0.5b                # 256 tokens, 4 x 8
    python benchmarks/ats_overhead.py --shape qwen2.5-0.5b --response-length 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import add_generation_args, alternate_rounds, load_generation_bench, settings_line  # noqa: E402

VARIANTS = ("off", "ats", "ats+ent", "ent", "ats-eager")
STATS = {"q": 0.5, "s": 0.8, "z_max": 2.0, "z_min": -3.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generation_args(ap, 256, VARIANTS)
    args = ap.parse_args(argv)

    from hapo_cli.rollout.base import ATSParams, SamplingParams
    from hapo_cli.rollout.hf import HFRolloutEngine

    model, tok, prompts, variants = load_generation_bench(args, VARIANTS)
    hook_s = _time_hooks()
    engines = {"auto": HFRolloutEngine(model, tok), "eager": HFRolloutEngine(model, tok, entropy_kernel="eager")}

    def call(v: str, seed: int) -> float:
        p = SamplingParams(n=args.group_size, temperature=1.0, max_new_tokens=args.response_length, seed=seed,
                           ats=ATSParams(stats=STATS, tau=0.05) if v.startswith("ats") else None,
                           return_entropy=v in ("ats+ent", "ent"))
        engine = engines["eager" if v.endswith("-eager") else "auto"]
        hook_s[0] = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        roll = engine.generate(prompts, p)
        dt = time.perf_counter() - t0
        cpu[v].append(time.process_time() - c0)
        hooks[v].append(hook_s[0])
        assert int(roll.response_mask.sum()) == args.prompts * args.group_size * args.response_length
        return dt

    cpu: dict[str, list[float]] = {v: [] for v in variants}
    hooks: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:  # warmup (also compiles the entropy kernel, once)
        call(v, 0)
        cpu[v].clear()
        hooks[v].clear()
    times = alternate_rounds(variants, args.rounds, call)
    n_tok = args.prompts * args.group_size * args.response_length
    ref = variants[0]
    step_ms = 1e3 * statistics.median(times[ref]) / args.response_length  # off's decoding step
    print(f"\n| variant | median s/call | tokens/s | x {ref} wall (median, min-max of paired ratios) "
          f"| median CPU s/call | x {ref} CPU (median, min-max) | hooks ms/step | hooks / {ref} step |"
          f"\n|---|---|---|---|---|---|---|---|")
    summary = {"shape": args.shape, "response_length": args.response_length, "responses": args.prompts * args.group_size}
    for v in variants:
        ratios = [a / b for a, b in zip(times[v], times[ref])]
        cratios = [a / b for a, b in zip(cpu[v], cpu[ref])]
        med = statistics.median(times[v])
        h_ms = 1e3 * statistics.median(hooks[v]) / args.response_length
        print(f"| {v} | {med:.2f} | {n_tok / med:.0f} | {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}) | {statistics.median(cpu[v]):.2f} | "
              f"{statistics.median(cratios):.3f}x ({min(cratios):.3f}-{max(cratios):.3f}) | {h_ms:.2f} | "
              f"{100 * h_ms / step_ms:.1f}% |")
        summary[f"{v}_hooks_ms_per_step"] = round(h_ms, 3)
        summary[f"{v}_over_{ref}"] = round(statistics.median(ratios), 4)
        summary[f"{v}_over_{ref}_cpu"] = round(statistics.median(cratios), 4)
    print("\n" + settings_line(args, ""))
    print(json.dumps(summary))


def _time_hooks() -> list[float]:
    """Wrap the ATS processor's and the entropy recorder's `__call__` with a timer; -> [seconds so far]."""
    from hapo_cli.rollout.hf import AdaptiveTemperatureProcessor, EntropyRecorder

    total = [0.0]
    for cls in (AdaptiveTemperatureProcessor, EntropyRecorder):
        inner = cls.__call__

        def timed(self, *a, _inner=inner):
            t = time.perf_counter()
            try:
                return _inner(self, *a)
            finally:
                total[0] += time.perf_counter() - t

        cls.__call__ = timed
    return total


if __name__ == "__main__":
    main()
