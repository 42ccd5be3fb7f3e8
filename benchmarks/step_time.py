"""Seconds per training step: hapo DAPO mode, hapo HAPO and TRL's GRPOTrainer (loss_type="dapo"), side by side.

All systems train the same model (float32, CPU) on the same synthetic addition prompts, with the
same batch shape and the same work per step. `--shape tiny` (default): the built-in 17-token
model; `--shape qwen2.5-0.5b`: Qwen2.5-0.5B's vocabulary (151,936), width and head layout with 2
random decoder layers (benchmarks/shapes.py), 4 prompts x 8 responses of 256 tokens
(`--response-length`), run once with 1 and once with 2 optimizer updates per step (`--updates`).
Systems: hapo DAPO, hapo HAPO (entropies from the old-policy pass, the default), hapo HAPO with
`algorithm.entropy_source=rollout`, TRL. Each step is broken down into generate / old-policy pass
/ update / other; the last line printed is one JSON object with the median ratios.


  P prompts x G responses from transformers `generate` (one call, sampling at T=1, top-p 1, top-k off)
  -> rewards from the same verifier (hapo_cli.data.synthetic.verify: +1 / -1)
  -> one no-grad forward for the old log-probs, micro-batched (see below)
  -> group-normalised advantages (GRPO std scaling; HAPO: TLGA, entropy statistics)
  -> (P / M) x E optimizer updates, each over M x G responses in micro-batches of U responses
     (gradient accumulation), DAPO token-mean loss, clip 0.2 / 0.28, grad-norm clip 1.0, AdamW.

hapo: trainer.train_batch_size=P trainer.group_size=G trainer.mini_batch_size=M
trainer.micro_batch_size=U trainer.ppo_epochs=E, algorithm.dynamic_sampling=false (TRL does not
resample groups), algorithm.overlong.enable=false (TRL has no overlong shaping: same rewards),
kl_coef 0, constant lr, no validation, logger none (validation and the checkpoint that `fit` writes
after the last step fall outside the timed window).
TRL: per_device_train_batch_size=U, num_generations=G, gradient_accumulation_steps=M*G/U,
steps_per_generation=(P/M)*M*G/U, num_iterations=E, beta=0 (no reference model), epsilon 0.2,
epsilon_high 0.28, scale_rewards="group", bf16 and gradient checkpointing off (TRL's defaults are
on), fp32, adamw_torch, constant lr, no logging/saving/eval. One step here is (P/M)*E TRL optimizer
steps; their times are summed (the first one generates). With more than one update per step both
trainers run the no-grad old-log-prob forward; with exactly one, TRL skips it (it reuses the
detached current log-probs). hapo skips it for the first mini-batch of every step
(`trainer.onpolicy_shortcut`), except in HAPO with batch-scope C/D, which needs every token's
entropy before the first update.

Timing: hapo's per-step `time/step_s` from metrics.jsonl (generation, reward, scoring, advantages,
updates, the step's metrics and its rollout sample file); TRL: a TrainerCallback from
on_step_begin to on_step_end (generation, reward, scoring, updates). Also the process CPU time over
the same windows. Each system runs in its own subprocess with the same torch thread count.
The default `--interleave step` starts all systems together and lets them take turns one step at
a time (the others wait on a pipe, idle), rotating the order every step, so every system sees the
same machine load; `--interleave run` runs whole runs one after the other instead. The table
reports medians over the measured steps (after --warmup) of all --rounds, and ratios as medians
of paired ratios (step i of one system against step i of the reference, taken back to back).

    python benchmarks/step_time.py                               # ~1.5-3 min on 2 shared cores
    # (the first run builds the tiny model into $HAPO_CACHE: minutes more, once)
    python benchmarks/step_time.py --rounds 3 --steps 20 --out results/step_time
    python benchmarks/step_time.py --systems hapo-dapo,trl-dapo --prompts 16 --group-size 8
    python benchmarks/step_time.py --shape qwen2.5-0.5b                  # 4 x 8 x 256 tokens, updates 1 and 2
    python benchmarks/step_time.py --shape qwen2.5-0.5b --response-length 8 --steps 2 --warmup 1   # a 2-core box
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES, ensure_shape_model  # noqa: E402

SYSTEMS = {
    "hapo-dapo": "hapo DAPO mode (algorithm=dapo)",
    "hapo-hapo": "hapo HAPO (algorithm=hapo, ABCD)",
    "hapo-hapo-rollout": "hapo HAPO, entropy_source=rollout",
    "trl-dapo": 'TRL GRPOTrainer (loss_type="dapo")',
}


# ---------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                    help="tiny (the built-in 17-token model) or qwen2.5-0.5b (Qwen2.5-0.5B's vocabulary, width and "
                         "heads, 2 layers, random weights; defaults then: 4 prompts x 8, 256 tokens, updates 1,2)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per run (after warmup; default 12, qwen 3)")
    ap.add_argument("--warmup", type=int, default=None, help="steps per run left out of the statistics (default 2, qwen 1)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (hapo trainer.train_batch_size; default 8, qwen 4)")
    ap.add_argument("--group-size", type=int, default=8, help="responses per prompt (G)")
    ap.add_argument("--mini-batch", type=int, default=None,
                    help="prompts per optimizer update (hapo trainer.mini_batch_size; default: prompts/2, "
                         "so 2 updates per step); overridden by --updates")
    ap.add_argument("--updates", default=None,
                    help="comma list of optimizer updates per step, one full comparison each (mini-batch = prompts / "
                         "updates; default: from --mini-batch; qwen2.5-0.5b: 1,2)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="responses per forward/backward (hapo trainer.micro_batch_size, TRL "
                         "per_device_train_batch_size; default 16, qwen 8)")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the step's batch (ppo_epochs / num_iterations)")
    ap.add_argument("--response-length", "--max-new-tokens", dest="max_new_tokens", type=int, default=None,
                    help="generation cap (data.max_response_length; default 8, qwen 256)")
    ap.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (constant)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in every run")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where every system trains: cpu (float32) or cuda (bf16 weights, HF rollouts)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per system (fresh processes each round)")
    ap.add_argument("--interleave", choices=("step", "run"), default="step",
                    help="step: the systems' runs take turns step by step; run: whole runs one after another")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {', '.join(SYSTEMS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save-rollouts", action="store_true",
                    help="hapo: save_rollouts=false (skip the per-step rollout sample file)")
    ap.add_argument("--out", default=None, help="also write OUT.md and OUT.json (a .md/.json suffix is dropped)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the run folders and worker logs")
    ap.add_argument("--worker", choices=sorted(SYSTEMS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    ap.add_argument("--baton", help=argparse.SUPPRESS)  # "GO_FD,DONE_FD" (pipes from the driver)
    args = ap.parse_args(argv)
    qwen = args.shape != "tiny"
    defaults = dict(steps=3 if qwen else 12, warmup=1 if qwen else 2, prompts=4 if qwen else 8,
                    micro_batch=8 if qwen else 16, max_new_tokens=256 if qwen else 8)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.updates is None and qwen and args.mini_batch is None:
        args.updates = "1,2"
    if args.mini_batch is None:
        args.mini_batch = max(1, args.prompts // 2)
    return args


def shape(args: argparse.Namespace) -> dict[str, int]:
    """The batch arithmetic shared by hapo and TRL; one clear error when it does not divide."""
    P, G, M, U, E = args.prompts, args.group_size, args.mini_batch, args.micro_batch, args.epochs
    if P % M:
        raise SystemExit(f"--prompts ({P}) must be a multiple of --mini-batch ({M})")
    if (M * G) % U:
        raise SystemExit(f"--mini-batch x --group-size ({M * G} responses) must be a multiple of --micro-batch ({U})")
    if G < 2:
        raise SystemExit("--group-size must be >= 2")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1 or args.max_new_tokens < 1 or args.threads < 1:
        raise SystemExit("--steps, --rounds, --max-new-tokens and --threads must be >= 1, --warmup >= 0")
    ga = M * G // U
    return {
        "responses_per_step": P * G,
        "updates_per_step": (P // M) * E,
        "grad_accum": ga,
        "steps_per_generation": (P // M) * ga,
        "total_steps": args.warmup + args.steps,
    }


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.update(TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled", HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    return env


# ---------------------------------------------------------------- workers (one run each, in a subprocess)


class Baton:
    """The worker's side of the turn-taking: `take()` before each step, `release()` at the very end.

    `take()` first reports the previous turn done (the first time: that the worker is loaded and
    ready), then blocks until the driver says go; so the work between two steps (logging) and after
    the last one (validation, checkpoint, the result file) stays inside the worker's own turn.
    """

    def __init__(self, spec: str | None):
        self.go, self.done = (int(x) for x in spec.split(",")) if spec else (None, None)

    def take(self) -> None:
        if self.go is None:
            return
        os.write(self.done, b"d")
        if os.read(self.go, 1) != b"g":
            raise SystemExit("step_time worker: the driver went away")

    def release(self) -> None:
        if self.done is not None:
            os.write(self.done, b"d")


def run_hapo(args: argparse.Namespace, algorithm: str, baton: Baton, entropy_source: str = "old_pass") -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from hapo_cli.config import compose_config
    from hapo_cli.train.trainer import Trainer

    s = shape(args)
    run_dir = Path(args.work_dir) / "run"
    overrides = [
        f"algorithm={algorithm}", f"algorithm.entropy_source={entropy_source}", "logger=none", "data=synthetic",
        "rollout=hf",
        f"model.name_or_path={args.model_dir}", f"model.dtype={'bfloat16' if args.device == 'cuda' else 'float32'}",
        "algorithm.dynamic_sampling=false", "algorithm.overlong.enable=false", "algorithm.kl_coef=0.0",
        f"data.max_response_length={args.max_new_tokens}", "data.val_size=8", "data.val_samples=1",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.top_k=0",
        f"rollout.batch_size={s['responses_per_step']}",
        f"trainer.total_steps={s['total_steps']}", f"trainer.train_batch_size={args.prompts}",
        f"trainer.group_size={args.group_size}", f"trainer.mini_batch_size={args.mini_batch}",
        f"trainer.micro_batch_size={args.micro_batch}", f"trainer.ppo_epochs={args.epochs}",
        f"trainer.lr={args.lr}", "trainer.warmup_steps=0", "trainer.lr_schedule=constant",
        "trainer.grad_clip=1.0", "trainer.weight_decay=0.0",
        "trainer.val_every=0", "trainer.val_at_start=false", "trainer.save_every=0",
        f"trainer.num_threads={args.threads}", f"trainer.device={args.device}", "trainer.mixed_precision=no",
        f"seed={args.seed}", f"run_dir={run_dir}",
        f"save_rollouts={'false' if args.no_save_rollouts else 'true'}",
    ]
    cfg, raw = compose_config(overrides)
    cpu_s: list[float] = []
    train_step = Trainer.train_step

    def timed_train_step(self):  # the window of time/step_s, plus the process CPU clock over it
        baton.take()
        c0 = time.process_time()
        m = train_step(self)
        cpu_s.append(time.process_time() - c0)
        return m

    Trainer.train_step = timed_train_step
    Trainer(cfg, raw, argv=["benchmarks/step_time.py", *overrides]).fit()
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if "time/step_s" in r]
    return {
        "step_s": [r["time/step_s"] for r in recs],
        "cpu_s": cpu_s,
        "rollout_s": [r.get("time/gen_s", 0.0) + r.get("time/score_s", 0.0) for r in recs],
        "gen_s": [r.get("time/gen_s", 0.0) for r in recs],  # generation + rewards (collect)
        "old_s": [r.get("time/score_s", 0.0) for r in recs],  # old-policy pass, h, statistics, advantages
        "update_s": [r.get("time/update_s", 0.0) for r in recs],
        "tokens": [r.get("train/response_length", float("nan")) * s["responses_per_step"] for r in recs],
        "updates": [r.get("actor/updates", float("nan")) for r in recs],
        "overrides": overrides,
    }


def run_trl(args: argparse.Namespace, baton: Baton) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hapo_cli.data import synthetic

    s = shape(args)
    k = s["updates_per_step"]  # TRL optimizer steps per step here
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    rows = synthetic.make_rows("train", None, seed=args.seed)
    ds = Dataset.from_list([{"prompt": synthetic.format_prompt(r["question"]), "answer": r["answer"]} for r in rows])
    tokens: list[int] = []

    def synthetic_reward(prompts, completions, answer, completion_ids, **_):
        tokens.append(sum(len(c) for c in completion_ids))
        return [1.0 if synthetic.verify(c, a) else -1.0 for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0 = self.c0 = 0.0
            self.times: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step % k == 0:
                baton.take()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    config = GRPOConfig(
        output_dir=str(Path(args.work_dir) / "trl"),
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=s["grad_accum"],
        steps_per_generation=s["steps_per_generation"],
        num_iterations=args.epochs,
        num_generations=args.group_size,
        max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
        mask_truncated_completions=False,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch",
        gradient_checkpointing=False, bf16=args.device == "cuda", fp16=False, use_cpu=args.device == "cpu",
        max_steps=s["total_steps"] * k,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, log_completions=False, seed=args.seed, dataloader_num_workers=0,
        remove_unused_columns=False, shuffle_dataset=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=synthetic_reward, args=config, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    rollout_s: list[float] = []
    original = trainer._generate_and_score_completions

    def timed_generate_and_score(inputs):
        t0 = time.perf_counter()
        out = original(inputs)
        rollout_s.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed_generate_and_score
    gen_s: list[float] = []
    old_s: list[float] = []
    original_gen, original_lp = trainer._generate_single_turn, trainer._get_per_token_logps_and_entropies

    def timed_gen(*a, **kw):
        t0 = time.perf_counter()
        out = original_gen(*a, **kw)
        gen_s.append(time.perf_counter() - t0)
        return out

    def timed_logps(*a, **kw):  # no-grad calls are the old-policy pass; the loss's calls run with grad
        if torch.is_grad_enabled():
            return original_lp(*a, **kw)
        t0 = time.perf_counter()
        out = original_lp(*a, **kw)
        old_s.append(time.perf_counter() - t0)
        return out

    trainer._generate_single_turn = timed_gen
    trainer._get_per_token_logps_and_entropies = timed_logps
    trainer.train()
    n = len(timer.times) // k

    def per_step(xs: list[float]) -> list[float]:
        return [sum(xs[i * k : (i + 1) * k]) for i in range(n)]

    step_s = per_step(timer.times)
    gen = [sum(gen_s[i : i + 1]) for i in range(n)]
    # old-policy passes happen inside the generation call of each step (one or none per step)
    per_gen = len(old_s) // max(1, len(rollout_s)) if old_s else 0
    old = [sum(old_s[i * per_gen : (i + 1) * per_gen]) for i in range(n)] if per_gen else [0.0] * n
    return {"step_s": step_s, "cpu_s": per_step(timer.cpu), "rollout_s": rollout_s[:n],
            "gen_s": gen, "old_s": old, "update_s": [s_ - r for s_, r in zip(step_s, rollout_s[:n])],
            "tokens": [float(t) for t in tokens[:n]], "updates": [float(k)] * n, "trl_version": trl.__version__}


def worker_main(args: argparse.Namespace) -> None:
    baton = Baton(args.baton)
    if args.worker == "trl-dapo":
        out = run_trl(args, baton)
    else:
        out = run_hapo(args, "dapo" if args.worker == "hapo-dapo" else "hapo", baton,
                       entropy_source="rollout" if args.worker == "hapo-hapo-rollout" else "old_pass")
    import torch
    import transformers

    out.update(torch=torch.__version__, transformers=transformers.__version__, threads=torch.get_num_threads())
    Path(args.result).write_text(json.dumps(out))
    baton.release()


# ---------------------------------------------------------------- driver


class Run:
    """One worker subprocess and the driver's ends of its two pipes."""

    def __init__(self, system: str, args: argparse.Namespace, model_dir: str, work: Path, argv: list[str]):
        self.system, self.work = system, work
        work.mkdir(parents=True, exist_ok=True)
        self.result = work / "result.json"
        go_r, self.go_w = os.pipe()
        self.done_r, done_w = os.pipe()
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", system, "--model-dir", model_dir,
               "--result", str(self.result), "--work-dir", str(work), "--baton", f"{go_r},{done_w}"]
        self.log = open(work / "log.txt", "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=thread_env(args.threads),
                                     pass_fds=(go_r, done_w))
        os.close(go_r)
        os.close(done_w)  # so a dead worker reads as end-of-file here

    def wait_done(self) -> None:
        if os.read(self.done_r, 1) != b"d":
            self.fail()

    def go(self) -> None:
        try:
            os.write(self.go_w, b"g")
        except BrokenPipeError:
            self.fail()
        self.wait_done()

    def fail(self) -> None:
        rc = self.proc.wait()
        self.log.flush()
        tail = "\n".join((self.work / "log.txt").read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{self.system} run failed (exit {rc}); last lines of {self.work / 'log.txt'}:\n{tail}")

    def finish(self) -> dict:
        rc = self.proc.wait()
        self.log.close()
        for fd in (self.go_w, self.done_r):
            os.close(fd)
        if rc != 0 or not self.result.exists():
            self.fail()
        out = json.loads(self.result.read_text())
        out["wall_s"] = time.perf_counter() - self.t0
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_round(rnd: int, systems: list[str], args: argparse.Namespace, model_dir: str, root: Path,
              argv: list[str], total: int) -> dict[str, dict]:
    """One round: each system's run in its own process, lock-stepped (--interleave step) or in turn."""
    outs: dict[str, dict] = {}
    start = {x: Run(x, args, model_dir, root / f"r{rnd}-{x}", argv) for x in systems} if args.interleave == "step" else {}
    try:
        if start:
            for r in start.values():  # all started and loaded before the first timed step
                r.wait_done()
            for i in range(total):
                j = (i + rnd) % len(systems)
                for x in systems[j:] + systems[:j]:
                    start[x].go()
            for x in systems:  # the last "done" came after the final validation/checkpoint and the result file
                outs[x] = start[x].finish()
        else:
            j = rnd % len(systems)
            for x in systems[j:] + systems[:j]:
                r = start[x] = Run(x, args, model_dir, root / f"r{rnd}-{x}", argv)
                r.wait_done()
                for _ in range(total):
                    r.go()
                outs[x] = r.finish()
    finally:
        for r in start.values():
            r.kill()
    return outs


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        m = _median(xs)
        return m, m
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def summarise(systems: list[str], runs: dict[str, list[dict]], warmup: int) -> list[dict]:
    def measured(name: str, key: str) -> list[list[float]]:
        return [r[key][warmup:] for r in runs[name]]

    rows = []
    for name in systems:
        step = [x for xs in measured(name, "step_s") for x in xs]
        cpu = [x for xs in measured(name, "cpu_s") for x in xs]
        roll = [x for xs in measured(name, "rollout_s") for x in xs]
        med = _median(step)
        p25, p75 = _quartiles(step)
        parts = {k: _median([x for xs in measured(name, k) for x in xs]) if all(k in r for r in runs[name]) else float("nan")
                 for k in ("gen_s", "old_s", "update_s")}
        row = {
            "system": name, "label": SYSTEMS[name], "median_s": med, "p25_s": p25, "p75_s": p75, **parts,
            "other_s": med - sum(parts.values()),
            "median_cpu_s": _median(cpu), "rollout_s": _median(roll), "train_s": med - _median(roll),
            "tokens": _median([x for xs in measured(name, "tokens") for x in xs]),
            "updates": _median([x for xs in measured(name, "updates") for x in xs]), "n": len(step),
        }
        for ref in ("hapo-dapo", "trl-dapo"):
            if ref in runs:
                pairs = [a / b for xs, ys in zip(measured(name, "step_s"), measured(ref, "step_s")) for a, b in zip(xs, ys)]
                cpairs = [a / b for xs, ys in zip(measured(name, "cpu_s"), measured(ref, "cpu_s")) for a, b in zip(xs, ys)]
                row[f"x_{ref}"] = _median(pairs)
                row[f"x_{ref}_cpu"] = _median(cpairs)
                row[f"x_{ref}_iqr"] = _quartiles(pairs)
        rows.append(row)
    return rows


def markdown(rows: list[dict], settings: dict) -> str:
    cols = ["system", "median s/step", "IQR s/step", "CPU s/step", "generate s", "old-policy pass s", "update s",
            "other s", "x hapo DAPO", "x TRL", "resp. tokens/step", "updates/step", "steps"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def ratio(r: dict, ref: str) -> str:
        if f"x_{ref}" not in r:
            return "-"
        lo, hi = r[f"x_{ref}_iqr"]
        return f"**{r[f'x_{ref}']:.2f}x** ({lo:.2f}-{hi:.2f}; CPU {r[f'x_{ref}_cpu']:.2f}x)"

    for r in rows:
        lines.append("| " + " | ".join([
            r["label"], f"{r['median_s']:.3f}", f"{r['p25_s']:.3f}-{r['p75_s']:.3f}", f"{r['median_cpu_s']:.3f}",
            f"{r['gen_s']:.3f}", f"{r['old_s']:.3f}", f"{r['update_s']:.3f}", f"{r['other_s']:.3f}",
            ratio(r, "hapo-dapo"), ratio(r, "trl-dapo"),
            f"{r['tokens']:.0f}", f"{r['updates']:.0f}", str(r["n"]),
        ]) + " |")
    s = settings
    notes = [
        "",
        f"Settings: shape {s['shape']} ({s['model_dir']}), float32, CPU, {s['threads']} torch thread(s) per run; "
        f"{s['prompts']} prompts x G={s['group_size']} = {s['responses_per_step']} responses/step, "
        f"max {s['max_new_tokens']} new tokens, {s['updates_per_step']} optimizer update(s)/step "
        f"(mini-batch {s['mini_batch']} prompts, micro-batch {s['micro_batch']} responses, "
        f"{s['epochs']} epoch(s)), lr {s['lr']} constant, grad clip 1.0; {s['rounds']} round(s) x "
        f"{s['steps']} measured steps (after {s['warmup']} warmup) per system, interleaved by {s['interleave']}.",
        f"hapo: dynamic sampling off, overlong shaping off, save_rollouts={'false' if s['no_save_rollouts'] else 'true'}. "
        f"TRL {s.get('trl_version', '-')}: beta=0, steps_per_generation={s['steps_per_generation']}, "
        f"gradient_accumulation_steps={s['grad_accum']}, num_iterations={s['epochs']}, "
        f"bf16/gradient checkpointing off; {s['updates_per_step']} TRL optimizer step(s) = 1 step here.",
        f"torch {s.get('torch', '?')}, transformers {s.get('transformers', '?')}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPU cores, load average before/after: {s['load_before']} / {s['load_after']}.",
        "Wall clock: hapo time/step_s, TRL on_step_begin..on_step_end; CPU s/step: process CPU time over the same "
        "window. x columns: median (and IQR) of paired ratios, step i against the reference's step i "
        "(run back to back), and the same on CPU time. generate: hapo collect (generation + rewards), TRL "
        "generate; old-policy pass: hapo prepare (old pass, h, statistics, advantages), TRL's no-grad log-prob "
        "pass; update: hapo's update loop, TRL's optimizer steps; other: the rest of the step (wall).",
    ]
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> None:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    if args.worker:
        worker_main(args)
        return
    systems = list(dict.fromkeys(x.strip() for x in args.systems.split(",") if x.strip()))
    bad = [x for x in systems if x not in SYSTEMS]
    if bad or not systems:
        raise SystemExit(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    if "trl-dapo" in systems:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("TRL is not installed: pip install 'hapo[bench]' (or --systems hapo-dapo,hapo-hapo)") from None
    model_dir = str(ensure_shape_model(args.shape))
    updates = [int(u) for u in args.updates.split(",")] if args.updates else [None]
    summaries = []
    for u in updates:
        if u is not None:
            if u < 1 or args.prompts % u:
                raise SystemExit(f"--updates {u}: --prompts ({args.prompts}) must be a multiple of it")
            args.mini_batch = args.prompts // u
        summaries.append(compare(args, systems, model_dir, raw_argv + ["--mini-batch", str(args.mini_batch)]))
        print(json.dumps(summaries[-1]), flush=True)
    if len(summaries) > 1:
        print(json.dumps({"shape": args.shape, "updates": [x["updates"] for x in summaries],
                          "hapo_over_dapo": [x["hapo_over_dapo"] for x in summaries],
                          "hapo_rollout_over_dapo": [x["hapo_rollout_over_dapo"] for x in summaries],
                          "dapo_over_trl": [x["dapo_over_trl"] for x in summaries]}))


def compare(args: argparse.Namespace, systems: list[str], model_dir: str, raw_argv: list[str]) -> dict:
    """One full comparison at the current --mini-batch; prints the table, returns the JSON summary."""
    s = shape(args)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    root = Path(tempfile.mkdtemp(prefix="hapo-step-time-"))
    runs: dict[str, list[dict]] = {x: [] for x in systems}
    extra: dict = {}
    try:
        for rnd in range(args.rounds):
            t0 = time.perf_counter()
            outs = run_round(rnd, systems, args, model_dir, root, raw_argv, s["total_steps"])
            for name in systems:
                runs[name].append(outs[name])
                extra.update({k: outs[name][k] for k in ("trl_version", "torch", "transformers") if k in outs[name]})
            meds = ", ".join(f"{x} {_median(outs[x]['step_s'][args.warmup:]):.3f}" for x in systems)
            print(f"round {rnd + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s): median s/step {meds}",
                  file=sys.stderr, flush=True)
    finally:
        if args.keep_logs:
            print(f"run folders and logs kept in {root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    rows = summarise(systems, runs, args.warmup)
    settings = {**{k: v for k, v in vars(args).items() if k not in ("worker", "result", "work_dir", "baton", "out")},
                **s, **extra, "model_dir": model_dir, "systems": systems,
                "load_before": load_before, "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg())}
    table = markdown(rows, settings)
    print(table)
    if args.out:
        stem = Path(args.out)
        if stem.suffix in (".md", ".json"):
            stem = stem.with_suffix("")
        if args.updates:
            stem = stem.with_name(f"{stem.name}-u{s['updates_per_step']}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(table)
        stem.with_suffix(".json").write_text(json.dumps(
            {"settings": settings, "summary": rows, "runs": runs}, indent=2, default=str) + "\n")
        print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}", file=sys.stderr)
    by = {r["system"]: r for r in rows}

    def med_ratio(name: str, ref: str):
        return round(by[name][f"x_{ref}"], 4) if name in by and ref in by else None

    return {"shape": args.shape, "updates": s["updates_per_step"], "response_length": args.max_new_tokens,
            "hapo_over_dapo": med_ratio("hapo-hapo", "hapo-dapo"),
            "hapo_rollout_over_dapo": med_ratio("hapo-hapo-rollout", "hapo-dapo"),
            "dapo_over_trl": med_ratio("hapo-dapo", "trl-dapo")}


if __name__ == "__main__":
    main()
