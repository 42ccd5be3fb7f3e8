"""GPU SMOKE TEST (not the trainer): a few HAPO steps with vLLM rollouts; prints tokens/s.

A deliberately small, self-contained loop (hapo_cli.algo + transformers + the rollout engine)
that exercises, on a real GPU, everything the vLLM path needs: the engine start, ATS through the
custom logits processor from the second step on (the first has no EntropyStats yet), per-token
temperatures drained from the workers, sleep during the update, weight sync by CUDA IPC, and a
HAPO update (TLGA advantages, DAR + AAC in the loss). It is a smoke test and a throughput probe:
the real training loop is `hapo train` (hapo_cli.train).

    python benchmarks/gpu_smoke.py                                  # tiny model, vLLM, CUDA
    python benchmarks/gpu_smoke.py --model Qwen/Qwen2.5-Math-1.5B --prompts 64 --group 8 --max-new-tokens 512
    python benchmarks/gpu_smoke.py --engine hf --device cpu --steps 2   # no GPU: the HF engine

Prompts are the built-in synthetic addition task ("47+38="), so any causal LM can be probed; the
reward (+1 / -1, exact answer) is only meaningful for the built-in tiny model.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from hapo_cli import algo  # noqa: E402
from hapo_cli.data import synthetic  # noqa: E402
from hapo_cli.rollout.base import ATSParams, SamplingParams  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per step and a tokens/s table; exit code 0 when every step ran.")
    p.add_argument("--model", default="tiny", help="HF model folder or Hub id; 'tiny' = the built-in tiny model (default)")
    p.add_argument("--engine", choices=["vllm", "hf"], default="vllm", help="rollout engine (default vllm; hf needs no GPU)")
    p.add_argument("--device", default="auto", help="trainer device: auto (cuda if available), cuda or cpu")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="trainer dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    p.add_argument("--group", type=int, default=8, help="responses per prompt, G (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="response length cap (default 8: the tiny task)")
    p.add_argument("--temperature", type=float, default=1.0, help="T_base (default 1.0)")
    p.add_argument("--tau", type=float, default=0.05, help="ATS tau (default 0.05)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vLLM's GPU share while awake (default 0.3)")
    p.add_argument("--weight-sync", choices=["ipc", "disk"], default="ipc", help="vLLM weight sync (default ipc)")
    p.add_argument("--no-sleep", action="store_true", help="keep the vLLM engine awake during updates")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.model
    if path == "tiny":
        from hapo_cli.data.tiny import ensure_tiny_model

        path = str(ensure_tiny_model())
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return path, model, tok, device


def make_engine(args, path, model, tok):
    if args.engine == "hf":
        from hapo_cli.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(model, tok, batch_size=args.prompts * args.group)
    from hapo_cli.rollout.vllm_engine import VLLMRolloutEngine

    return VLLMRolloutEngine(path, tok, dtype="bfloat16" if model.dtype == torch.bfloat16 else "auto", seed=args.seed,
                             gpu_memory_utilization=args.gpu_memory_utilization,
                             max_model_len=64 + args.max_new_tokens, enable_sleep_mode=not args.no_sleep,
                             weight_sync=args.weight_sync, trainer_model=model)


def score_rollout(model, roll, device):
    """Old-policy pass: (logp_old [B, L], entropy [B, L]) of the response tokens, no grad."""
    with torch.no_grad():
        return forward_logp(model, roll, device, with_entropy=True)


def forward_logp(model, roll, device, with_entropy=False):
    ids = torch.cat([roll.prompt_ids, roll.response_ids], 1).to(device)  # [B, P+L]
    attn = torch.cat([roll.prompt_mask, roll.response_mask], 1).to(device)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    P, L = roll.prompt_ids.shape[1], roll.response_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1 : P + L - 1]  # [B, L, V]
    labels = roll.response_ids.to(device)
    logp = algo.token_logprobs(logits.float(), labels)
    return (logp, algo.token_entropy(logits.float())) if with_entropy else logp


def main(argv=None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    path, model, tok, device = load(args)
    t0 = time.perf_counter()
    engine = make_engine(args, path, model, tok)
    t_engine = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rows = synthetic.make_rows("train", None, seed=args.seed)
    stats = None
    table = []
    print(f"SMOKE TEST  model={path} engine={args.engine} device={device} dtype={model.dtype} "
          f"engine start {t_engine:.1f}s", flush=True)
    for step in range(args.steps):
        batch = [rows[(step * args.prompts + i) % len(rows)] for i in range(args.prompts)]
        prompts = [tok(synthetic.format_prompt(r["question"]), add_special_tokens=False).input_ids for r in batch]
        ats = ATSParams(stats=stats.as_dict(), tau=args.tau) if stats is not None else None
        params = SamplingParams(n=args.group, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                seed=args.seed * 1000 + step, ats=ats)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_gen = time.perf_counter()
        roll = engine.generate(prompts, params)
        gen_s = time.perf_counter() - t_gen
        if hasattr(engine, "sleep") and not args.no_sleep:
            engine.sleep()  # colocated: free the engine's memory while the trainer works

        t_train = time.perf_counter()
        model.train()
        mask = roll.response_mask.to(device).float()
        answers = [r["answer"] for r in batch for _ in range(args.group)]
        rewards = torch.tensor([1.0 if synthetic.verify(t, a) else -1.0 for t, a in zip(roll.texts, answers)], device=device)
        gids = torch.arange(len(batch), device=device).repeat_interleave(args.group)
        old_logp, ent = score_rollout(model, roll, device)
        h, new_stats = algo.normalize_batch_entropy(ent, mask, pivot=0.8)  # this step's stats feed the next ATS
        adv = algo.tlga_advantages(rewards, gids, mask)
        logp = forward_logp(model, roll, device)
        loss, metrics = algo.hapo_policy_loss(logp, old_logp, adv, mask, h, 0.2, 0.28)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t_train

        t_sync = time.perf_counter()
        engine.sync_weights(model)  # vLLM: CUDA IPC (or disk); hf: shares the module
        sync_s = time.perf_counter() - t_sync
        stats = new_stats

        gen_tokens = int(roll.response_mask.sum())
        train_tokens = int(roll.prompt_mask.sum() + roll.response_mask.sum())
        temps = roll.temperatures[roll.response_mask.bool()]
        row = dict(step=step, ats=ats is not None, gen_tok=gen_tokens, gen_tok_s=gen_tokens / max(gen_s, 1e-9),
                   train_tok_s=train_tokens / max(train_s, 1e-9), sync_s=sync_s, loss=float(loss.detach()),
                   grad_norm=float(grad_norm), acc=float((rewards > 0).float().mean()),
                   t_min=float(temps.min()) if temps.numel() else float("nan"),
                   t_max=float(temps.max()) if temps.numel() else float("nan"))
        table.append(row)
        print(f"step {step}: ats={'on ' if row['ats'] else 'off'} gen {gen_tokens} tok in {gen_s:.2f}s "
              f"({row['gen_tok_s']:.0f} tok/s), train {train_tokens} tok in {train_s:.2f}s "
              f"({row['train_tok_s']:.0f} tok/s), sync {sync_s:.2f}s, loss {row['loss']:+.4f}, "
              f"acc {row['acc']:.2f}, T in [{row['t_min']:.3f}, {row['t_max']:.3f}]", flush=True)
        if not torch.isfinite(loss):
            print("non-finite loss: smoke test FAILED", file=sys.stderr)
            return 1

    print("\n| step | ATS | gen tokens | gen tok/s | train tok/s | sync s | acc | T min | T max |")
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['step']} | {'on' if r['ats'] else 'off'} | {r['gen_tok']} | {r['gen_tok_s']:.0f} | "
              f"{r['train_tok_s']:.0f} | {r['sync_s']:.2f} | {r['acc']:.2f} | {r['t_min']:.3f} | {r['t_max']:.3f} |")
    if hasattr(engine, "close"):
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
