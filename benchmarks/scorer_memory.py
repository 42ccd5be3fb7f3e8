"""Peak memory of the old-policy pass (`ResponseScorer`, no grad) at a real vocabulary.

Each measurement runs in its own process: load the benchmark model (benchmarks/shapes.py) in
the given dtype, reset the peak resident set size (Linux `clear_refs`), score R responses of L
tokens (plus a 16-token prompt) and read the high-water mark. Reported against the budget of
the issue: the bf16 logits of ONE projection chunk (chunk tokens x V x 2 bytes); the model is
already resident before the reset, so "peak over the model" is what the pass itself adds.
`--backward` also runs the backward of `logp.sum() + entropy.sum()` (the update's pattern);
`--recompute-all` then recomputes every chunk there instead of keeping the last one's logits.

    python benchmarks/scorer_memory.py                         # 8 x 2,048 tokens, Qwen2.5 vocabulary, bf16
    python benchmarks/scorer_memory.py --response-length 256 --backward
    python benchmarks/scorer_memory.py --rows 8 --response-length 256 --dtype float32 --backward [--recompute-all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[1])
from shapes import ensure_shape_model
from transformers import AutoModelForCausalLM
from hapo_cli.train.scorer import ResponseScorer
shape, rows, L, chunk, dtype, backward = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7] == "1"
keep_last = sys.argv[9] == "1"
torch.set_num_threads(int(sys.argv[8]))
model = AutoModelForCausalLM.from_pretrained(ensure_shape_model(shape), dtype=getattr(torch, dtype))
V = model.get_output_embeddings().weight.shape[0]
scorer = ResponseScorer(model, chunk_size=None if chunk == "auto" else int(chunk), keep_last_chunk=keep_last)
P = 16
g = torch.Generator().manual_seed(0)
ids = torch.randint(17, V, (rows, P + L), generator=g)
att = torch.ones_like(ids)
resp = ids[:, P:]
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
with torch.no_grad():  # warm-up: library code and thread pools touched once, outside the measured window
    scorer(ids[:1, : P + 8], att[:1, : P + 8], resp[:1, :8])
open("/proc/self/clear_refs", "w").write("5")
before = kb("VmRSS")
t0 = time.perf_counter()
if backward:
    lp, ent = scorer(ids, att, resp)
    (lp.sum() + ent.sum()).backward()
else:
    with torch.no_grad():
        lp, ent = scorer(ids, att, resp)
dt = time.perf_counter() - t0
peak = kb("VmHWM")
tokens = scorer.chunk_tokens(V) // rows * rows
print(json.dumps({"V": V, "rows": rows, "L": L, "dtype": dtype, "backward": backward, "keep_last_chunk": keep_last, "seconds": dt,
                  "chunk_tokens": min(tokens, rows * L), "model_mb": model_bytes / 2**20, "rss_before_mb": before / 1024,
                  "peak_over_model_mb": (peak - before) / 1024, "finite": bool(torch.isfinite(lp).all() and torch.isfinite(ent).all())}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--rows", type=int, default=8, help="responses in the pass")
    ap.add_argument("--response-length", type=int, default=2048)
    ap.add_argument("--chunk", default="auto", help="tokens per projection chunk (auto: from the vocabulary)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--backward", action="store_true", help="forward + backward instead of the no-grad pass")
    ap.add_argument("--recompute-all", action="store_true",
                    help="with --backward: recompute every chunk in the backward (keep_last_chunk=False, the former scorer)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args(argv)
    from shapes import ensure_shape_model

    ensure_shape_model(args.shape)  # built once, outside the measured process
    # fixed glibc thresholds: large blocks are mmapped and returned on free, so the peak RSS tracks live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    res = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).resolve().parent), args.shape, str(args.rows),
                          str(args.response_length), args.chunk, args.dtype, "1" if args.backward else "0",
                          str(args.threads), "0" if args.recompute_all else "1"], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    r = json.loads(res.stdout.strip().splitlines()[-1])
    chunk_bf16_mb = r["chunk_tokens"] * r["V"] * 2 / 2**20
    full_f32_mb = r["rows"] * r["L"] * r["V"] * 4 / 2**20
    r.update(chunk_bf16_logits_mb=chunk_bf16_mb, peak_over_chunk_bf16=r["peak_over_model_mb"] / chunk_bf16_mb,
             full_float32_logits_mb=full_f32_mb)
    kind = ("forward+backward" + (" (every chunk recomputed)" if not r["keep_last_chunk"] else "")) if r["backward"] else "old-policy (no grad)"
    print(f"| pass | responses x tokens | V | dtype | chunk tokens | bf16 logits of one chunk | peak over the model "
          f"| x one chunk | full [N, L, V] float32 | model | s |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {kind} | {r['rows']} x {r['L']} | {r['V']} | "
          f"{r['dtype']} | {r['chunk_tokens']} | {chunk_bf16_mb:.0f} MiB | {r['peak_over_model_mb']:.0f} MiB | "
          f"**{r['peak_over_chunk_bf16']:.2f}x** | {full_f32_mb:.0f} MiB | {r['model_mb']:.0f} MiB | {r['seconds']:.0f} |")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
