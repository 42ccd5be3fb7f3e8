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
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="tiny or qwen2.5-0.5b (benchmarks/shapes.py)")
    ap.add_argument("--response-length", type=int, default=64, help="new tokens per response")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="calls per variant (after one warmup call each)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    import torch
    import transformers
    from shapes import ensure_shape_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hapo_cli.data import synthetic
    from hapo_cli.rollout.base import ATSParams, SamplingParams
    from hapo_cli.rollout.hf import HFRolloutEngine

    torch.set_num_threads(args.threads)
    path = ensure_shape_model(args.shape)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engines = {s: HFRolloutEngine(model, tok, sampler=s) for s in HFRolloutEngine.SAMPLERS}
    rows = synthetic.make_rows("train", None, seed=0)[: args.prompts]
    prompts = [tok(synthetic.format_prompt(r["question"]))["input_ids"] for r in rows]
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    model.generation_config.min_new_tokens = args.response_length  # EOS suppressed: same work per call
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
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.rounds):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            times[v].append(call(v, i + 1))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants),
              file=sys.stderr, flush=True)
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
    print(f"\n{args.shape}, {args.prompts} x {args.group_size} responses x {args.response_length} tokens, ATS on, "
          f"float32, {args.threads} thread(s), {args.rounds} rounds; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
