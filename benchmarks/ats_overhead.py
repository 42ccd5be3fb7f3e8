"""Generation time with and without the Adaptive Temperature Sampling processor (HAPO "A").

The HF engine (`hapo_cli.rollout.hf.HFRolloutEngine`, transformers `generate`) samples
P prompts x G responses at the benchmark shape, alternating variants call by call (the order
rotating every round) so every variant sees the same machine load:

  off       plain sampling at T_base = 1
  ats       ATS on (the processor: entropy of the raw logits, then an in-place division)
  ats+ent   ATS on and `return_entropy` (the rollout keeps each position's entropy: entropy_source=rollout;
            the processor reuses it, so this should cost the same as `ats`)
  ent       ATS off, `return_entropy` only (what DAPO pays to keep entropies)

EOS is suppressed (`min_new_tokens`), so every call generates exactly the same number of tokens.
Prints tokens/s per variant and the median of the paired ratios (round i of a variant over
round i of `off`) with their spread; the last line is one JSON object.

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

VARIANTS = ("off", "ats", "ats+ent", "ent")
STATS = {"q": 0.5, "s": 0.8, "z_max": 2.0, "z_min": -3.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generation_args(ap, 256, VARIANTS)
    args = ap.parse_args(argv)

    from hapo_cli.rollout.base import ATSParams, SamplingParams
    from hapo_cli.rollout.hf import HFRolloutEngine

    model, tok, prompts, variants = load_generation_bench(args, VARIANTS)
    engine = HFRolloutEngine(model, tok)

    def call(v: str, seed: int) -> float:
        p = SamplingParams(n=args.group_size, temperature=1.0, max_new_tokens=args.response_length, seed=seed,
                           ats=ATSParams(stats=STATS, tau=0.05) if v.startswith("ats") else None,
                           return_entropy=v.endswith("ent"))
        t0, c0 = time.perf_counter(), time.process_time()
        roll = engine.generate(prompts, p)
        dt = time.perf_counter() - t0
        cpu[v].append(time.process_time() - c0)
        assert int(roll.response_mask.sum()) == args.prompts * args.group_size * args.response_length
        return dt

    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:  # warmup
        call(v, 0)
        cpu[v].clear()
    times = alternate_rounds(variants, args.rounds, call)
    n_tok = args.prompts * args.group_size * args.response_length
    ref = variants[0]
    print(f"\n| variant | median s/call | tokens/s | x {ref} wall (median, min-max of paired ratios) "
          f"| median CPU s/call | x {ref} CPU (median, min-max) |\n|---|---|---|---|---|---|")
    summary = {"shape": args.shape, "response_length": args.response_length, "responses": args.prompts * args.group_size}
    for v in variants:
        ratios = [a / b for a, b in zip(times[v], times[ref])]
        cratios = [a / b for a, b in zip(cpu[v], cpu[ref])]
        med = statistics.median(times[v])
        print(f"| {v} | {med:.2f} | {n_tok / med:.0f} | {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}) | {statistics.median(cpu[v]):.2f} | "
              f"{statistics.median(cratios):.3f}x ({min(cratios):.3f}-{max(cratios):.3f}) |")
        summary[f"{v}_over_{ref}"] = round(statistics.median(ratios), 4)
        summary[f"{v}_over_{ref}_cpu"] = round(statistics.median(cratios), 4)
    print("\n" + settings_line(args, ""))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
