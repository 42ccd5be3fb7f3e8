"""Generation levers on CPU: the sampler, the KV cache, a compiled decode step.

Variants: `multinomial` (transformers' own sampling draw, the former default), `dynamic` (hapo's
default: its inverse-CDF sampler, transformers' dynamic KV cache), `static` (a static cache) and
`static+compile` (a static cache with the decode step compiled by `torch.compile`, through
transformers' CompileConfig); all but the first with the inverse-CDF sampler.

The HF engine (`hapo_cli.rollout.hf.HFRolloutEngine`) samples P prompts x G responses at the
benchmark shape with ATS on (HAPO's rollout), the variant set on the model's generation_config
before each call; variants alternate call by call (order rotating every round) so each sees the
same machine load. EOS is suppressed, so every call generates the same number of tokens. The
compiled variant's first call (its warmup, left out) includes the compilation; it is printed.

    python benchmarks/decode_levers.py                                  # qwen2.5-0.5b, 4 x 8 x 64 tokens
    python benchmarks/decode_levers.py --response-length 256 --variants multinomial,dynamic
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

VARIANTS = ("multinomial", "dynamic", "static", "static+compile")
STATS = {"q": 0.5, "s": 0.8, "z_max": 2.0, "z_min": -3.0}


def configure(model, variant: str) -> None:
    from transformers import CompileConfig

    gc = model.generation_config
    gc.cache_implementation = "static" if variant.startswith("static") else None
    if variant.endswith("compile"):
        gc.compile_config = CompileConfig()
        gc.compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told
    else:
        gc.compile_config = None
    gc.disable_compile = not variant.endswith("compile")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generation_args(ap, 64, VARIANTS)
    args = ap.parse_args(argv)

    from hapo_cli.rollout.base import ATSParams, SamplingParams
    from hapo_cli.rollout.hf import HFRolloutEngine

    model, tok, prompts, variants = load_generation_bench(args, VARIANTS)
    engines = {s: HFRolloutEngine(model, tok, sampler=s) for s in HFRolloutEngine.SAMPLERS}
    n_tok = args.prompts * args.group_size * args.response_length

    def call(v: str, seed: int) -> float:
        configure(model, v)
        p = SamplingParams(n=args.group_size, temperature=1.0, max_new_tokens=args.response_length, seed=seed,
                           ats=ATSParams(stats=STATS, tau=0.05))
        t0 = time.perf_counter()
        roll = engines["multinomial" if v == "multinomial" else "inverse_cdf"].generate(prompts, p)
        dt = time.perf_counter() - t0
        assert int(roll.response_mask.sum()) == n_tok
        return dt

    first = {}
    for v in variants:  # warmup (the compiled variant compiles here)
        first[v] = call(v, 0)
        print(f"warmup {v}: {first[v]:.1f}s", file=sys.stderr, flush=True)
    times = alternate_rounds(variants, args.rounds, call)
    ref = "dynamic" if "dynamic" in variants else variants[0]
    print(f"\n| variant | first call s | median s/call | tokens/s | x {ref} (median, min-max of paired ratios) |\n"
          "|---|---|---|---|---|")
    summary = {"shape": args.shape, "response_length": args.response_length, "responses": args.prompts * args.group_size}
    for v in variants:
        ratios = [a / b for a, b in zip(times[v], times[ref])]
        med = statistics.median(times[v])
        print(f"| {v} | {first[v]:.1f} | {med:.2f} | {n_tok / med:.0f} | {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}) |")
        summary[f"{v}_over_{ref}"] = round(statistics.median(ratios), 4)
    print("\n" + settings_line(args, "ATS on, "))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
