"""First contact with a GPU: one command runs every check the GPU machine owes hapo, and writes the figures.

    python benchmarks/gpu_check.py --out results/gpu           # on a CUDA machine: about 5-8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu    # every stage on tiny shapes on CPU: < 2 minutes
    benchmarks/gpu_check.sh                                    # the GPU machine's one command (wheels + this)

Stages, each in its own subprocess with its own time limit, so a failure or a hang in one still
leaves the others' figures (run in this order; the longest, step_time, last):
  1 tests      `pytest -m cuda tests`: device placement, bf16 autocast vs float32, the chunked scorer on CUDA
  2 train      `hapo train` on the tiny model, trainer.device=cuda, bf16 (mixed precision and weights),
               30 steps, HAPO and DAPO: metrics complete and finite, host-device syncs per step by phase
               of the step (the loss path must have none beyond the step's one metrics transfer), s/step
  4 memory     peak CUDA memory (torch.cuda.max_memory_allocated) of the old-policy pass and of one
               update (forward + loss + backward) for 8 x 4,096 response tokens at Qwen2.5's 151,936
               vocabulary (Qwen2.5-0.5B's shape, random weights), chunked vs unchunked projection
  5 ats        generation tokens/s with and without the Adaptive Temperature processor (Qwen2.5-0.5B
               shape, bf16, HF `generate`, fixed length), interleaved
  3 step_time  benchmarks/step_time.py --shape qwen2.5-0.5b --device cuda (the flags it has): the
               HAPO / DAPO step-time ratio and the generation/update breakdown
  6 vllm       benchmarks/gpu_smoke.py (vLLM rollouts, ATS in vLLM, CUDA-IPC weight sync) where vLLM is
               installed; skipped where it is not (the GPU image: vLLM cannot travel as a wheel). The
               dry run runs it with --engine hf --device cpu.

Host-device syncs (stage 2) are counted two ways over the first --count-steps steps, by phase
(collect = generation and rewards, old_pass, loss = each micro-batch's forward + loss + backward,
optimizer, update_other = advantages, h, update metrics; step_other; loop = logging between steps):
  cuda  the CUDA sync debug mode (torch.cuda.set_sync_debug_mode("warn")): every synchronizing call
        warns; the warnings are counted, not shown. Authoritative, CUDA only (on CPU: 0, not applicable).
  ops   a TorchDispatchMode counting the ops that make the host wait for a CUDA stream: scalar reads
        (.item(), float(), bool()), data-dependent shapes (nonzero, masked_select, boolean indexing,
        unique, repeat_interleave), torch.equal. The same count on any device, so the CPU dry run runs
        this code path and predicts the CUDA count (it cannot see .cpu()/.tolist() copies: cuda can).
The steps after the counted ones run without either (their time/step_s gives s/step). The gate is
the loss path's syncs asked for by hapo's own code (at most the step's one metrics transfer); those
inside transformers (its attention-mask helpers read the padding mask: 2 per forward in 5.x) are
reported beside it, with every site. The ops count of the optimizer phase includes AdamW's step
counters, which live on the CPU on CUDA too: an upper bound there.

Writes OUT/gpu_check.json (every figure; rewritten after each stage, so a cut-off run keeps what it
had), OUT/gpu_check.md (the figures as tables, step_time's too) and OUT/gpu_check.log (every stage's output). Exit code 0 when every stage passed or was skipped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

ORDER = ["tests", "train", "memory", "ats", "step_time", "vllm"]
NUMBER = {"tests": 1, "train": 2, "step_time": 3, "memory": 4, "ats": 5, "vllm": 6}
TIMEOUT_S = {  # per stage (GPU, dry run); the GPU total stays under 8 minutes with room for the wheel install
    "tests": (60, 60), "train": (120, 75), "memory": (60, 40), "ats": (75, 40), "step_time": (135, 90), "vllm": (120, 40),
}
# Qwen2.5-0.5B's shape (config.json of Qwen/Qwen2.5-0.5B), random weights: nothing is downloaded.
QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
              rope_theta=1_000_000.0, tie_word_embeddings=True)
TINY = dict(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True)
# stage 2: the per-step metrics every run must log, finite (the list tests/test_train_cli.py checks, + time)
REQUIRED_METRICS = [
    "rollout/acc", "rollout/response_length", "rollout/temperature_mean", "rollout/groups_used",
    "train/reward", "train/acc", "train/entropy", "train/h_mean",
    "actor/loss", "actor/clipfrac_left", "actor/clipfrac_right", "actor/grad_norm", "actor/updates",
    "stats/q", "stats/s", "time/step_s", "time/gen_s", "time/update_s",
]
LOSS_PATH = ("old_pass", "loss", "update_other")  # may hold the step's one metrics transfer, nothing more


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json/.md/.log (default ./gpu_check_out)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, few steps: the same stages in < 2 minutes")
    p.add_argument("--stages", default=",".join(ORDER), help=f"comma list from {', '.join(ORDER)} (default: all)")
    p.add_argument("--steps", type=int, default=None, help="stage 2 training steps per run (default 30; dry run 4)")
    p.add_argument("--count-steps", type=int, default=None, help="stage 2 steps with syncs counted (default 3; dry run 2)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every stage's time limit")
    p.add_argument("--worker", choices=ORDER, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.dry_run else 30)
    args.count_steps = args.count_steps if args.count_steps is not None else (2 if args.dry_run else 3)
    if args.count_steps >= args.steps:
        raise SystemExit("--count-steps must be below --steps (the uncounted steps give s/step)")
    return args


def _median(xs):
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def _device(args):
    import torch

    if args.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available (run with --dry-run on a machine without a GPU)")
    return torch.device("cuda")


# ---------------------------------------------------------------- stage 1: the CUDA-marked tests


def stage_tests(args, work: Path) -> dict:
    import xml.etree.ElementTree as ET

    xml = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "junit_family=xunit2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=_pythonpath()))
    print(res.stdout[-6000:], res.stderr[-3000:], sep="\n")
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report (exit {res.returncode}): {res.stderr[-500:]}")
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        cases.append({"test": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}",
                      "outcome": kind, "seconds": round(float(case.get("time", 0.0)), 3)})
    n = Counter(c["outcome"] for c in cases)
    checks = [("no CUDA-marked test failed", n["failure"] + n["error"] == 0, f"{n['failure']} failed, {n['error']} errors")]
    if args.dry_run:
        checks.append(("without CUDA every one skips", n["skipped"] == len(cases) > 0, f"{n['skipped']} of {len(cases)} skipped"))
    else:
        checks.append(("they ran on the GPU", n["passed"] > 0 and n["skipped"] == 0, f"{n['passed']} passed, {n['skipped']} skipped"))
    return {"figures": {"collected": len(cases), **{k: n[k] for k in ("passed", "failure", "error", "skipped")},
                        "pytest_exit": res.returncode}, "tests": cases, "checks": checks}


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])


# ---------------------------------------------------------------- stage 2: hapo train, syncs by phase


class SyncCounter:
    """Counts host-device syncs by phase of the training step (see the module docstring: cuda and ops)."""

    MESSAGE = "called a synchronizing CUDA operation"

    def __init__(self, use_cuda: bool):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        self.torch, self.use_cuda = torch, use_cuda
        self.counts = {"cuda": Counter(), "ops": Counter()}
        self.sites = {"cuda": Counter(), "ops": Counter()}  # hapo_cli file:line -> count (loss path only)
        self.stack: list[str] = []
        self.active = False
        aten = torch.ops.aten
        self.sync_ops = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                         aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
                         aten.repeat_interleave.Tensor, aten.equal.default}
        self.index_ops = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if counter.active and (func in counter.sync_ops or (func in counter.index_ops and _bool_index(args))):
                    counter.hit("ops")
                return func(*args, **(kwargs or {}))

        self.mode = _Mode()

    @property
    def phase(self) -> str:
        return self.stack[-1] if self.stack else "loop"

    def hit(self, source: str) -> None:
        self.counts[source][self.phase] += 1
        if self.phase in LOSS_PATH:
            self.sites[source][_site()] += 1

    def wrap(self, cls, name: str, phase: str) -> None:
        fn = getattr(cls, name)
        counter = self

        def wrapped(*a, **kw):
            counter.stack.append(phase)
            try:
                return fn(*a, **kw)
            finally:
                counter.stack.pop()

        setattr(cls, name, wrapped)

    def start(self) -> None:
        """Count from here (the start of a counted step)."""
        import warnings

        if not self.active:
            self.active = True
            self.mode.__enter__()
            if self.use_cuda:
                warnings.filterwarnings("always", message=self.MESSAGE)
                self._show, warnings.showwarning = warnings.showwarning, self._on_warning
                self.torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        import warnings

        if self.active:
            self.active = False
            self.mode.__exit__(None, None, None)
            if self.use_cuda:
                self.torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = self._show

    def _on_warning(self, message, category, filename, lineno, file=None, line=None):
        if self.MESSAGE in str(message):
            self.hit("cuda")
        else:
            self._show(message, category, filename, lineno, file, line)


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else ()
    return any(t is not None and hasattr(t, "dtype") and str(t.dtype) in ("torch.bool", "torch.uint8") for t in idx)


def _site() -> str:
    """Where a sync was asked for: the innermost hapo_cli frame, and the innermost frame outside
    torch and this file when that is another library's (e.g. "train/scorer.py:35 <- transformers/...")."""
    f, lib = sys._getframe(2), None
    while f is not None:
        path = f.f_code.co_filename
        if "hapo_cli" in path:
            here = f"{path.split('hapo_cli', 1)[1].lstrip('/')}:{f.f_lineno}"
            return here if lib is None else f"{here} <- {lib}"
        if lib is None and Path(path).name != "gpu_check.py" and not any(
                s in path for s in ("/torch/", "<frozen", "/warnings.py")):
            lib = f"{'/'.join(Path(path).parts[-2:])}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return lib or "outside hapo_cli"


def stage_train(args, work: Path) -> dict:
    import torch

    device = _device(args)
    from hapo_cli import cli
    from hapo_cli.train import trainer as trainer_mod
    from hapo_cli.train.collect import Collector
    from hapo_cli.train.update import Updater

    counter = SyncCounter(use_cuda=device.type == "cuda")
    for cls, name, phase in [(Collector, "collect", "collect"), (Updater, "score_old", "old_pass"),
                             (Updater, "_micro", "loss"), (Updater, "_step_optimizer", "optimizer"),
                             (Updater, "prepare", "update_other"), (Updater, "update", "update_other"),
                             (trainer_mod.Trainer, "train_step", "step_other")]:
        counter.wrap(cls, name, phase)
    one_step = trainer_mod.Trainer._one_step

    def counted_one_step(self, bar):  # steps 1..count_steps counted, the rest run plain
        if self.step < args.count_steps:
            counter.start()
        else:
            counter.stop()
        try:
            return one_step(self, bar)
        finally:
            if self.step >= args.count_steps:
                counter.stop()

    trainer_mod.Trainer._one_step = counted_one_step
    precision = (["trainer.device=cpu", "trainer.mixed_precision=no", "model.dtype=float32"] if device.type == "cpu"
                 else ["trainer.device=cuda", "trainer.mixed_precision=bf16", "model.dtype=bfloat16"])
    runs, checks = {}, []
    for algo in ("hapo", "dapo"):
        run_dir = work / algo
        overrides = ["experiment=debug", f"algorithm={algo}", f"trainer.total_steps={args.steps}", *precision,
                     *(["trainer.train_batch_size=4", "trainer.mini_batch_size=2", "trainer.group_size=4"]
                       if args.dry_run else
                       ["trainer.train_batch_size=8", "trainer.mini_batch_size=4", "trainer.group_size=8"]),
                     "trainer.val_every=0", "trainer.val_at_start=false", "data.val_size=8", "data.val_samples=1",
                     "logger=none", "trainer.num_threads=1" if device.type == "cpu" else "trainer.num_threads=0",
                     f"run_dir={run_dir}"]
        for src in counter.counts.values():
            src.clear()
        for src in counter.sites.values():
            src.clear()
        sys.argv = ["hapo", "train", *overrides]
        t0 = time.perf_counter()
        try:
            cli.main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            counter.stop()
        wall = time.perf_counter() - t0
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()] \
            if (run_dir / "metrics.jsonl").exists() else []
        steps = [r for r in recs if r.get("step", 0) >= 1 and "time/step_s" in r]
        missing = sorted({k for r in steps for k in REQUIRED_METRICS if k not in r})
        bad = sorted({k for r in steps for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)})
        per_step = {src: {ph: c / max(1, args.count_steps) for ph, c in sorted(cnt.items())}
                    for src, cnt in counter.counts.items()}
        loss_path = {src: sum(v for ph, v in d.items() if ph in LOSS_PATH) for src, d in per_step.items()}
        own = {src: sum(n for site, n in c.items() if " <- " not in site) / max(1, args.count_steps)
               for src, c in counter.sites.items()}  # asked for by hapo's own code (not inside transformers)
        timed = [r["time/step_s"] for r in steps if r["step"] > args.count_steps + 1]  # one more step of warm-up
        runs[algo] = {
            "exit": rc, "wall_s": round(wall, 2), "steps": len(steps), "s_per_step": _median(timed),
            "gen_s": _median([r.get("time/gen_s") for r in steps if r["step"] > args.count_steps + 1]),
            "update_s": _median([r.get("time/update_s") for r in steps if r["step"] > args.count_steps + 1]),
            "missing_metrics": missing, "non_finite_metrics": bad, "syncs_per_step": per_step,
            "loss_path_syncs_per_step": loss_path, "loss_path_own_syncs_per_step": own,
            "loss_path_sites": {src: dict(c.most_common(12)) for src, c in counter.sites.items()},
            "reward_first_last": [steps[0].get("train/reward"), steps[-1].get("train/reward")] if steps else None,
            "overrides": overrides,
        }
        checks += [
            (f"{algo}: hapo train exited 0 after {args.steps} steps", rc == 0 and len(steps) == args.steps,
             f"exit {rc}, {len(steps)} steps logged"),
            (f"{algo}: metrics complete and finite", not missing and not bad, f"missing {missing}, non-finite {bad}"),
            (f"{algo}: hapo's loss path at most 1 sync/step (ops count)", own["ops"] <= 1,
             f"{own['ops']:g}/step in hapo's code; {loss_path['ops']:g}/step with transformers' own"),
        ]
        if device.type == "cuda":
            checks.append((f"{algo}: hapo's loss path at most 1 sync/step (CUDA sync debug mode)", own["cuda"] <= 1,
                           f"{own['cuda']:g}/step in hapo's code; {loss_path['cuda']:g}/step with transformers' own"))
    ratio = (runs["hapo"]["s_per_step"] / runs["dapo"]["s_per_step"]
             if runs["hapo"]["s_per_step"] and runs["dapo"]["s_per_step"] else None)
    return {"figures": {"device": str(device), "hapo_s_per_step": runs["hapo"]["s_per_step"],
                        "dapo_s_per_step": runs["dapo"]["s_per_step"], "hapo_over_dapo": ratio,
                        "torch": torch.__version__},
            "runs": runs, "checks": checks}


# ---------------------------------------------------------------- stages 4 and 5: the realistic shape


def _shape_model(args, device):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**(TINY if args.dry_run else QWEN05))
    torch.manual_seed(0)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    return model, cfg


def stage_memory(args, work: Path) -> dict:
    import torch

    from hapo_cli.config import compose_config
    from hapo_cli.train.scorer import ResponseScorer

    device = _device(args)
    model, mcfg = _shape_model(args, device)
    cfg, _ = compose_config(["algorithm=hapo"])
    obj = cfg.algorithm.objective()
    B, P, L = (2, 8, 48) if args.dry_run else (8, 64, 4096)
    chunk = cfg.model.logits_chunk_size
    if args.dry_run and chunk is not None:
        chunk = 16  # several chunks at the tiny shape too
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, mcfg.vocab_size, (B, P + L), generator=g).to(device)
    att = torch.ones_like(ids)
    resp, mask = ids[:, P:], torch.ones(B, L, device=device)
    adv = torch.randn(B, 1, generator=g).to(device).expand(B, L).contiguous()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    cuda = device.type == "cuda"
    out, logps = {}, {}
    for name, size in (("chunked", chunk), ("unchunked", 10**9)):
        scorer = ResponseScorer(model, chunk_size=size)
        for what in ("old_pass", "update"):
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            t0 = time.perf_counter()
            try:
                if what == "old_pass":
                    with torch.no_grad(), autocast:
                        lp, ent = scorer(ids, att, resp)
                    logps[name] = lp.float().cpu()
                else:
                    with autocast:
                        lp, ent = scorer(ids, att, resp)
                    h, _ = obj.normalize(ent.detach(), mask)
                    loss, _ = _objective_loss(obj, lp, logps[name].to(device), adv, mask, h, ent)
                    loss.backward()
                if cuda:
                    torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
                out[f"{name}/{what}"] = {"peak_gib": peak, "seconds": round(time.perf_counter() - t0, 3)}
            except torch.cuda.OutOfMemoryError as err:
                out[f"{name}/{what}"] = {"peak_gib": None, "error": f"out of memory: {str(err)[:200]}"}
            del lp, ent
        del scorer
    full = B * L * mcfg.vocab_size
    figures = {"shape": f"{B} x {L} response tokens (+{P} prompt), V={mcfg.vocab_size}, "
                        f"{mcfg.num_hidden_layers} layers x {mcfg.hidden_size}",
               "chunk_tokens": chunk, "full_logits_gib_bf16": full * 2 / 2**30, "full_logits_gib_fp32": full * 4 / 2**30,
               "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, **{
                   f"{k}_peak_gib": v.get("peak_gib") for k, v in out.items()}}
    diff = float((logps["chunked"] - logps["unchunked"]).abs().max()) if len(logps) == 2 else float("nan")
    tol = 1e-4 if device.type == "cpu" else 5e-2  # bf16 logits: different reduction orders per chunk
    checks = [("chunked old-policy log-probs equal unchunked", diff <= tol, f"max |diff| {diff:.2e} (tolerance {tol:g})"),
              ("every variant ran", all("error" not in v for v in out.values()),
               "; ".join(f"{k}: {v['error']}" for k, v in out.items() if "error" in v) or "yes")]
    if cuda:
        for what in ("old_pass", "update"):
            c, u = out["chunked/" + what].get("peak_gib"), out["unchunked/" + what].get("peak_gib")
            checks.append((f"{what}: chunked peak below unchunked", c is not None and (u is None or c < u),
                           f"{c} vs {u} GiB"))
    figures["max_abs_logp_diff"] = diff
    return {"figures": figures, "variants": out, "checks": checks}


def _objective_loss(obj, logp, old, adv, mask, h, ent):
    """`Objective.loss` of either signature: LossInputs (main since the baselines merge) or positional."""
    import torch

    try:
        from hapo_cli.algo.objective import LossInputs
    except ImportError:
        return obj.loss(logp, old, adv, mask, h)
    return obj.loss(LossInputs(logp, old, adv, mask, h, entropy=ent, old_entropy=ent.detach(),
                               group_ids=torch.arange(logp.shape[0], device=logp.device)))


def stage_ats(args, work: Path) -> dict:
    import torch
    from transformers import LogitsProcessorList

    from hapo_cli import algo
    from hapo_cli.rollout.base import ATSParams
    from hapo_cli.rollout.hf import AdaptiveTemperatureProcessor, _as_logits_processor

    device = _device(args)
    model, mcfg = _shape_model(args, device)
    model.eval()
    N, P, T, rounds = (4, 8, 8, 2) if args.dry_run else (64, 64, 256, 2)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, mcfg.vocab_size, (N, P), generator=g).to(device)
    ent = torch.rand(64, 32, generator=g) * 2
    _, stats = algo.normalize_batch_entropy(ent, torch.ones_like(ent), pivot=0.8)
    ats_params = ATSParams(stats=stats.as_dict(), tau=0.05)

    def run(with_ats: bool) -> tuple[float, int, int]:
        procs, proc = LogitsProcessorList(), None
        if with_ats:
            proc = AdaptiveTemperatureProcessor(ats_params, 1.0)
            procs.append(_as_logits_processor(proc))
        torch.manual_seed(3)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=T,
                                 min_new_tokens=T, do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                                 pad_token_id=0, eos_token_id=None, logits_processor=procs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return dt, int(seq.shape[1] - P), len(proc.factors) if proc is not None else 0

    run(False)  # warm-up (kernels, caches)
    run(True)
    times: dict[str, list[float]] = {"off": [], "on": []}
    lengths, factors = set(), set()
    for i in range(rounds):
        for which in (("off", "on") if i % 2 == 0 else ("on", "off")):
            dt, n_new, n_f = run(which == "on")
            times[which].append(dt)
            lengths.add(n_new)
            if which == "on":
                factors.add(n_f)
    tok = N * T
    off, on = _median(times["off"]), _median(times["on"])
    figures = {"shape": f"{N} sequences x {T} new tokens (prompt {P}), V={mcfg.vocab_size}, "
                        f"{mcfg.num_hidden_layers} layers x {mcfg.hidden_size}, {next(model.parameters()).dtype}",
               "tokens_per_s_without_ats": tok / off, "tokens_per_s_with_ats": tok / on,
               "ats_slowdown": on / off, "seconds_without": times["off"], "seconds_with": times["on"]}
    checks = [("every call generated the fixed length", lengths == {T}, f"new tokens per call: {sorted(lengths)}"),
              ("the processor ran at every decoding step", factors == {T}, f"factors recorded: {sorted(factors)}")]
    return {"figures": figures, "checks": checks}


# ---------------------------------------------------------------- stage 3: benchmarks/step_time.py


def stage_step_time(args, work: Path) -> dict:
    script = ROOT / "benchmarks" / "step_time.py"
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    helptext = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env,
                              cwd=ROOT).stdout
    has = {f: f in helptext for f in ("--shape", "--device", "--response-length", "--updates")}
    cmd = [sys.executable, str(script), "--systems", "hapo-dapo,hapo-hapo", "--rounds", "1",
           "--out", str(work / "step_time")]  # its tables go into gpu_check.md (8 files come back at most)
    if args.dry_run:
        cmd += ["--shape", "tiny"] if has["--shape"] else []
        cmd += ["--steps", "1", "--warmup", "0", "--prompts", "2", "--group-size", "2", "--micro-batch", "2",
                "--max-new-tokens", "4"]
        cmd += ["--updates", "1"] if has["--updates"] else []
    else:
        if not (has["--shape"] and has["--device"]):
            return {"figures": {"flags": has}, "skipped": "benchmarks/step_time.py has no "
                    + " or ".join(f for f in ("--shape", "--device") if not has[f]) + " flag yet", "checks": []}
        cmd += ["--shape", "qwen2.5-0.5b", "--device", "cuda"]
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    print(res.stdout[-6000:], res.stderr[-4000:], sep="\n")
    lines = []  # its JSON lines: one summary per --updates value ({"updates": u, "hapo_over_dapo": r, ...})
    for line in res.stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    ratios = {f"updates={x.get('updates')}": x["hapo_over_dapo"] for x in lines
              if isinstance(x.get("hapo_over_dapo"), (int, float))}
    breakdown, tables = {}, []
    for saved in sorted(work.glob("step_time*.json")):  # one file per comparison (step_time-uN.json)
        for r in _find_rows(json.loads(saved.read_text())):
            breakdown[f"{saved.stem}/{r['system']}"] = {k: r.get(k) for k in
                                                       ("median_s", "rollout_s", "train_s", "x_hapo-dapo", "tokens", "updates")}
        tables.append(f"{saved.stem}:\n\n" + saved.with_suffix(".md").read_text() if saved.with_suffix(".md").exists() else "")
    if not ratios:  # an older step_time.py: the ratio lives in its summary rows
        ratios = {k: v["x_hapo-dapo"] for k, v in breakdown.items() if k.endswith("hapo-hapo") and v.get("x_hapo-dapo")}
    figures = {"flags": has, "command": " ".join(cmd[1:]), "hapo_over_dapo": ratios, "breakdown": breakdown}
    checks = [("step_time.py exited 0", res.returncode == 0, f"exit {res.returncode}"),
              ("a HAPO / DAPO ratio came out", bool(ratios) and all(v > 0 for v in ratios.values()), str(ratios))]
    return {"figures": figures, "checks": checks, "tables": tables}


def stage_vllm(args, work: Path) -> dict:
    import importlib.util

    smoke = [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--steps", "2" if args.dry_run else "3"]
    if args.dry_run:
        smoke += ["--engine", "hf", "--device", "cpu"]
    elif importlib.util.find_spec("vllm") is None:
        return {"skipped": "vLLM is not installed here (it cannot travel as a wheel): the vLLM path stays "
                           "unverified on this GPU; tests/test_vllm_contract.py keeps its CPU contract", "checks": []}
    res = subprocess.run(smoke, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=_pythonpath()), cwd=ROOT)
    print(res.stdout[-6000:], res.stderr[-4000:], sep="\n")
    steps = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    return {"figures": {"command": " ".join(smoke[1:]), "steps": steps},
            "checks": [("gpu_smoke.py exited 0 after every step", res.returncode == 0 and len(steps) == int(smoke[3]),
                        f"exit {res.returncode}, {len(steps)} steps")]}


def _find_rows(obj) -> list[dict]:
    """The summary rows ({"system": ..., "median_s": ...}) anywhere in step_time's JSON (last comparison)."""
    found: list[dict] = []
    if isinstance(obj, dict):
        if "system" in obj and "median_s" in obj:
            return [obj]
        for v in obj.values():
            found = _find_rows(v) or found
    elif isinstance(obj, list):
        rows = [x for x in obj if isinstance(x, dict) and "system" in x and "median_s" in x]
        if rows:
            return rows
        for v in obj:
            found = _find_rows(v) or found
    return found


STAGES = {"tests": stage_tests, "train": stage_train, "memory": stage_memory, "ats": stage_ats,
          "step_time": stage_step_time, "vllm": stage_vllm}


# ---------------------------------------------------------------- driver


def worker_main(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        out = STAGES[args.worker](args, work)
    except Exception as err:
        traceback.print_exc()
        out = {"error": f"{type(err).__name__}: {err}"[:2000], "checks": []}
    Path(args.result).write_text(json.dumps(out, default=str))


def environment(args) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "dry_run": args.dry_run, "cpus": os.cpu_count(), "host": platform.node()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    from importlib import metadata

    for name in ("transformers", "accelerate", "hydra-core", "omegaconf", "datasets", "math-verify", "wandb", "vllm"):
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    return env


def setup_tiny_model() -> dict:
    """Build (or find) the tiny model once, before the timed stages; stage 1's tests reuse it too."""
    from hapo_cli.data.tiny import ensure_tiny_model

    t0 = time.perf_counter()
    path = ensure_tiny_model(progress=False)
    os.environ.setdefault("HAPO_TEST_CACHE", str(path.parent))  # tests/conftest.py: reuse it, not a fresh build
    return {"tiny_model": str(path), "seconds": round(time.perf_counter() - t0, 1)}


def run_stage(name: str, args, argv: list[str], root: Path, log) -> dict:
    limit = TIMEOUT_S[name][1 if args.dry_run else 0] * args.timeout_scale
    result = root / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name, "--work", str(root / name),
           "--result", str(result)]
    log.write(f"\n===== stage {NUMBER[name]} {name} (limit {limit:.0f} s)\n")
    log.flush()
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TQDM_DISABLE="1")
    try:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit, env=env, cwd=ROOT)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    seconds = round(time.perf_counter() - t0, 1)
    if rc is None:
        out = {"status": "timeout", "error": f"killed after its {limit:.0f} s limit", "checks": []}
    elif not result.exists():
        out = {"status": "error", "error": f"the stage's process died (exit {rc}) before writing a result", "checks": []}
    else:
        out = json.loads(result.read_text())
        ok = all(c[1] for c in out.get("checks", []))
        out["status"] = "skipped" if "skipped" in out else "error" if "error" in out else "pass" if ok else "fail"
    out["seconds"] = seconds
    out["checks"] = [{"check": c[0], "ok": bool(c[1]), "detail": c[2]} for c in out.get("checks", [])]
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# hapo GPU check ({'dry run, CPU' if env['dry_run'] else env.get('gpu', '?')})", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             f"Tiny model: {report['setup']['tiny_model']} ({report['setup']['seconds']} s to build or find)", "",
             "| stage | status | seconds | checks passed |", "|---|---|---:|---|"]
    for name, st in report["stages"].items():
        n_ok = sum(c["ok"] for c in st["checks"])
        lines.append(f"| {NUMBER[name]} {name} | **{st['status']}** | {st['seconds']} | {n_ok}/{len(st['checks'])} |")
    for name, st in report["stages"].items():
        lines += ["", f"## {NUMBER[name]} {name}: {st['status']} ({st['seconds']} s)"]
        for key in ("error", "skipped"):
            if key in st:
                lines.append(f"{key}: {st[key]}")
        if st["checks"]:
            lines += ["", "| check | ok | detail |", "|---|---|---|"]
            lines += [f"| {c['check']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in st["checks"]]
        if st.get("figures"):
            lines += ["", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in st["figures"].items() if k != "final_json_line"]
        for algo, run in st.get("runs", {}).items():
            lines += ["", f"{algo}: s/step {_fmt(run['s_per_step'])} (gen {_fmt(run['gen_s'])}, update "
                      f"{_fmt(run['update_s'])}); syncs/step by phase: cuda {_fmt(run['syncs_per_step']['cuda']) or '-'}; "
                      f"ops {_fmt(run['syncs_per_step']['ops']) or '-'}; loss-path sites {_fmt(run['loss_path_sites'])}"]
        for t in st.get("tables", []):
            lines += ["", t]
        for k, v in st.get("variants", {}).items():
            lines.append(f"- {k}: {_fmt(v)}")
        bad = [t for t in st.get("tests", []) if t["outcome"] in ("failure", "error")]
        lines += [f"- {t['outcome']}: {t['test']}" for t in bad]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.worker:
        worker_main(args)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; choose from {', '.join(ORDER)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out.resolve())
    argv = [*(["--dry-run"] if args.dry_run else []), "--out", args.out, "--steps", str(args.steps),
            "--count-steps", str(args.count_steps)]
    t0 = time.perf_counter()
    report = {"environment": environment(args), "stages": {}}
    if not args.dry_run and not report["environment"]["cuda_available"]:
        raise SystemExit("no CUDA device here: run on the GPU machine, or add --dry-run for the CPU rehearsal")
    work = Path(tempfile.mkdtemp(prefix="hapo-gpu-check-"))
    report["setup"] = setup_tiny_model()
    with open(out / "gpu_check.log", "w") as log:
        for name in [s for s in ORDER if s in stages]:
            print(f"stage {NUMBER[name]} {name} ...", file=sys.stderr, flush=True)
            report["stages"][name] = st = run_stage(name, args, argv, work, log)
            print(f"stage {NUMBER[name]} {name}: {st['status']} in {st['seconds']} s"
                  + "".join(f"\n  {'ok ' if c['ok'] else 'NO '} {c['check']}: {c['detail']}" for c in st["checks"])
                  + (f"\n  {st.get('error') or st.get('skipped')}" if st["status"] in ("error", "timeout", "skipped") else ""),
                  file=sys.stderr, flush=True)
            report["seconds"] = round(time.perf_counter() - t0, 1)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            (out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'} and {out / 'gpu_check.log'} "
          f"({report['seconds']} s)", file=sys.stderr)
    return 0 if all(s["status"] in ("pass", "skipped") for s in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
