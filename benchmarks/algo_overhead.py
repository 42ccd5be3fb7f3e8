"""Overhead of the HAPO loss path over the DAPO loss path (hapo_cli.algo), printed as a Markdown table.

DAPO path: grpo_advantages + policy_loss (clip-higher 0.2 / 0.28), forward and backward through logp.
HAPO path: the same batch through HAPO's best entry points: normalize_batch_entropy (entropy
statistics and h in one pass) + tlga_advantages (B) + hapo_policy_loss (AAC (D) and DAR (C)
fused into the clipped loss), forward and backward through logp.
"HAPO, separate calls": the same maths through one public function per component
(entropy_stats + normalize_entropy + tlga_advantages + adaptive_clip_bounds +
redistribute_advantages + policy_loss with per-token bounds; equal results, see tests/).
"update" rows: only the part a trainer repeats for every micro-batch (the loss, with h and the
advantages fixed for the whole update, hapo-spec stats_scope "batch").
Component rows: each public call alone (the loss ones forward + backward), to show where the
HAPO path's extra time goes. Ratios are against the DAPO row of the same kind. The entropy_stats
row is work HAPO needs and DAPO does not, whatever the implementation: one log per token and the
exact nearest-rank pivot (two histogram passes over the batch); HAPO/DAPO cannot be below
1 + its ratio. The "floor" row is the least of that work any implementation needs (one log per
token, one histogram pass): 1 + its ratio bounds even a fused kernel.
The per-token entropy comes out of the policy's forward pass in both trainers, so token_entropy
is counted in neither path.

All rows run interleaved (one of each per round), so background load hits every row alike;
median and minimum over the rounds are printed. On a shared machine use `--threads 1 --clock cpu`
(process CPU time: robust to other processes). "faults" is the mean number of minor page faults
per run: on CPU, glibc hands freed [B, L] temporaries back to the OS and the next run faults
them in again, which costs about as much as the arithmetic on them (GPU caching allocators
have no such cost); `--no-trim` (or `MALLOC_TRIM_THRESHOLD_=4000000000
MALLOC_MMAP_THRESHOLD_=4000000000` in the environment) turns that off for both paths alike: the
steadier figure, since the number of faults varies from run to run.

    python benchmarks/algo_overhead.py                           # 256 responses x 1024 tokens, CPU
    python benchmarks/algo_overhead.py --threads 1 --clock cpu   # on a shared / busy machine
    python benchmarks/algo_overhead.py --threads 1 --clock cpu --no-trim   # arithmetic only, no page faults
    python benchmarks/algo_overhead.py --device cuda --repeats 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hapo_cli.algo import (  # noqa: E402
    adaptive_clip_bounds,
    entropy_stats,
    grpo_advantages,
    hapo_policy_loss,
    normalize_batch_entropy,
    normalize_entropy,
    policy_loss,
    redistribute_advantages,
    tlga_advantages,
)

_LITTLE = sys.byteorder == "little"
NO_TRIM_ENV = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "4000000000"}

try:
    import resource
except ImportError:  # not on Windows
    resource = None


def make_batch(batch: int, length: int, group_size: int, device: torch.device, seed: int = 0) -> dict:
    """Random rollout-like data: grouped responses with random lengths, +-1 rewards."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 8, length + 1, (batch,), generator=g)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L] bool
    entropy = torch.rand(batch, length, generator=g) ** 3 * 3.0  # [B, L] skewed like real entropies
    old_logp = -torch.rand(batch, length, generator=g) * 3.0
    logp = old_logp + 0.2 * torch.randn(batch, length, generator=g)
    rewards = torch.where(torch.rand(batch, generator=g) < 0.4, 1.0, -1.0)
    group_ids = torch.randperm(batch, generator=g) // group_size  # shuffled, non-contiguous groups
    data = dict(
        mask=mask, entropy=entropy, old_logp=old_logp, logp=logp, rewards=rewards, group_ids=group_ids
    )
    return {k: v.to(device) for k, v in data.items()}


def dapo_step(d: dict, logp: torch.Tensor) -> None:
    adv = grpo_advantages(d["rewards"], d["group_ids"], d["mask"])
    loss, _ = policy_loss(logp, d["old_logp"], adv, d["mask"], 0.2, 0.28, clip_ratio_c=10.0)
    loss.backward()


def hapo_step(d: dict, logp: torch.Tensor) -> None:
    """HAPO through its best entry points: one pass over the entropies, one ratio pass."""
    mask = d["mask"]
    h, _ = normalize_batch_entropy(d["entropy"], mask, pivot=0.8)
    adv = tlga_advantages(d["rewards"], d["group_ids"], mask)
    loss, _ = hapo_policy_loss(
        logp, d["old_logp"], adv, mask, h, 0.2, 0.2, alpha=1.0, beta=1.0, clip_ratio_c=10.0
    )
    loss.backward()


def hapo_separate_step(d: dict, logp: torch.Tensor) -> None:
    """HAPO as separate public calls, each component on its own."""
    mask = d["mask"]
    stats = entropy_stats(d["entropy"], mask, pivot=0.8)
    h = normalize_entropy(d["entropy"], stats, mask)
    adv = tlga_advantages(d["rewards"], d["group_ids"], mask)
    eps_low, eps_high = adaptive_clip_bounds(h, 0.2, 0.2, alpha=1.0)
    ratio = torch.exp(logp.detach() - d["old_logp"])
    adv = redistribute_advantages(adv, h, ratio, eps_low, eps_high, beta=1.0)
    loss, _ = policy_loss(logp, d["old_logp"], adv, mask, eps_low, eps_high, clip_ratio_c=10.0)
    loss.backward()


def dapo_update(d: dict, logp: torch.Tensor) -> None:
    """The part repeated for every micro-batch update: the loss, advantages already computed."""
    loss, _ = policy_loss(logp, d["old_logp"], d["adv_grpo"], d["mask"], 0.2, 0.28, clip_ratio_c=10.0)
    loss.backward()


def hapo_update(d: dict, logp: torch.Tensor) -> None:
    """Same for HAPO: h and the TLGA advantages are fixed for the whole update (stats_scope batch)."""
    loss, _ = hapo_policy_loss(
        logp, d["old_logp"], d["adv_tlga"], d["mask"], d["h"], 0.2, 0.2, 1.0, 1.0, 10.0
    )
    loss.backward()


def grpo_only(d: dict, logp: torch.Tensor) -> None:
    grpo_advantages(d["rewards"], d["group_ids"], d["mask"])


def tlga_only(d: dict, logp: torch.Tensor) -> None:
    tlga_advantages(d["rewards"], d["group_ids"], d["mask"])


def entropy_only(d: dict, logp: torch.Tensor) -> None:
    normalize_batch_entropy(d["entropy"], d["mask"], pivot=0.8)


def stats_only(d: dict, logp: torch.Tensor) -> None:
    entropy_stats(d["entropy"], d["mask"], pivot=0.8)


def floor_only(d: dict, logp: torch.Tensor) -> None:
    """The per-token work HAPO adds that no implementation can skip: one log per token and one
    histogram pass over the batch (an exact order statistic needs at least one). A fused kernel
    could approach DAPO + this; eager PyTorch adds a pass over memory for every other operation."""
    torch.log(d["entropy"])
    top = d["entropy"].reshape(-1).view(torch.int16).view(-1, 2)[:, 1 if _LITTLE else 0]
    torch.bincount(top, minlength=1 << 15)


# (name, function, reference row for the ratio, what it runs)
ROWS = [
    ("DAPO", dapo_step, "DAPO", "grpo_advantages + policy_loss (clip-higher 0.2/0.28)"),
    ("HAPO", hapo_step, "DAPO", "normalize_batch_entropy + tlga_advantages + hapo_policy_loss (AAC + DAR inside)"),
    ("HAPO, separate calls", hapo_separate_step, "DAPO", "entropy_stats + normalize_entropy + tlga_advantages + "
     "adaptive_clip_bounds + redistribute_advantages + policy_loss"),
    ("DAPO update", dapo_update, "DAPO update", "per micro-batch update only: policy_loss"),
    ("HAPO update", hapo_update, "DAPO update", "per micro-batch update only: hapo_policy_loss (h, TLGA fixed per batch)"),
    ("grpo_advantages", grpo_only, "DAPO", "component of DAPO"),
    ("tlga_advantages", tlga_only, "DAPO", "component of HAPO (B)"),
    ("normalize_batch_entropy", entropy_only, "DAPO", "component of HAPO: stats (log H, exact pivot, s, z) + h"),
    ("entropy_stats", stats_only, "DAPO", "part of the above: the statistics alone"),
    ("floor", floor_only, "DAPO", "HAPO-only work no implementation skips: log H + 1 histogram pass"),
]  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def bench(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    device = torch.device(args.device)
    d = make_batch(args.batch, args.length, args.group_size, device)
    logp = d["logp"].clone().requires_grad_(True)
    d["adv_grpo"] = grpo_advantages(d["rewards"], d["group_ids"], d["mask"])
    d["adv_tlga"] = tlga_advantages(d["rewards"], d["group_ids"], d["mask"])
    d["h"], _ = normalize_batch_entropy(d["entropy"], d["mask"])
    # "cpu" clock = this process's CPU time: robust to other processes on a shared machine
    # (meaningful with --threads 1 on CPU; on GPU use "wall").
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name, *_ in ROWS}
    faults: dict[str, float] = {name: 0.0 for name, *_ in ROWS}
    for _ in range(args.warmup):
        for _, fn, *_ in ROWS:
            fn(d, logp)
            logp.grad = None
    for _ in range(args.repeats):
        for name, fn, *_ in ROWS:  # interleaved, so background load hits every row alike
            _sync(device)
            f0 = _faults()
            t0 = clock()
            fn(d, logp)
            _sync(device)
            times[name].append(clock() - t0)
            faults[name] += (_faults() - f0) / args.repeats
            logp.grad = None
    return times, faults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256, help="responses per batch (B)")
    p.add_argument("--length", type=int, default=1024, help="padded response length (L)")
    p.add_argument("--group-size", type=int, default=16, help="responses per prompt (G); B/G groups")
    p.add_argument("--repeats", type=int, default=50, help="timed runs of each row (median and min reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs of each row first")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall time, or process CPU time")
    p.add_argument("--no-trim", action="store_true",
                   help="keep freed memory in the process (glibc malloc settings; re-runs itself): no page faults")
    args = p.parse_args()
    if args.no_trim and NO_TRIM_ENV.items() - os.environ.items():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **NO_TRIM_ENV})  # glibc reads them at start
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    times, faults = bench(args)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    low = {name: min(ts) * 1e3 for name, ts in times.items()}
    print(
        f"B={args.batch} responses x L={args.length} tokens, {args.batch // args.group_size} groups of "
        f"{args.group_size}, device={args.device}, threads={torch.get_num_threads()}, "
        f"{args.clock} clock, {args.repeats} interleaved runs, torch {torch.__version__}"
        f"{', malloc: no trim' if args.no_trim else ''}\n"
    )
    print(
        "| path | components (losses: forward + backward through logp) | median ms | ratio "
        "| min ms | ratio (min) | faults |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, _, ref, what in ROWS:
        print(
            f"| {name} | {what} | {med[name]:.2f} | {med[name] / med[ref]:.2f}x "
            f"| {low[name]:.2f} | {low[name] / low[ref]:.2f}x | {faults[name]:.0f} |"
        )


if __name__ == "__main__":
    main()
