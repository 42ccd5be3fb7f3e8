"""What `hapo train` prints while it runs (stderr): the start-up lines, the progress bar, a line at
every validation (and every `logger.console_every` steps)."""

from __future__ import annotations

import sys

from hapo_cli.config import describe_components


def _write(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)  # above the progress bar


def start_lines(cfg, run_dir, world: int, device) -> None:
    t = cfg.trainer
    print(f"run directory: {run_dir}", file=sys.stderr)
    print(f"algorithm: {cfg.algorithm.name} (components: {describe_components(cfg)}), model: {cfg.model.name_or_path}, "
          f"data: {cfg.data.path or cfg.data.name}, steps: {t.total_steps}, processes: {world}, "
          f"device: {device}, dtype: {cfg.model.dtype}"
          + (f", mixed precision: {t.mixed_precision}" if t.mixed_precision != "no" else ""), file=sys.stderr)


def progress_bar(cfg, step: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.trainer.total_steps, initial=step, desc=f"hapo train [{cfg.algorithm.name}]",
                dynamic_ncols=True, file=sys.stderr)


def show_step(bar, step: int, m: dict[str, float], console_every: int = 0) -> None:
    if bar is None:
        return
    bar.update(1)
    nan = float("nan")
    post = {"acc": f"{m.get('rollout/acc', nan):.2f}", "ent": f"{m.get('train/entropy', nan):.3f}"}
    vk = next((k for k in m if k.startswith("val/avg@")), None)
    if vk:
        post["val"] = f"{m[vk]:.3f}"
    bar.set_postfix(post)
    if console_every and step % console_every == 0:
        _write(f"step {step:>5}: reward {m.get('train/reward', nan):.3f}, acc {m.get('rollout/acc', nan):.3f}, "
               f"entropy {m.get('train/entropy', nan):.3f}, {m.get('time/step_s', nan):.2f} s")


def validation_line(step: int, v: dict[str, float], last: dict[str, float]) -> None:
    """`validation: step 20, avg@4 66.80, pass@4 88.28, entropy 0.239, reward 0.402`."""
    avg = next((k for k in v if k.startswith("val/avg@")), None)
    pas = max((k for k in v if k.startswith("val/pass@")), key=lambda k: int(k.rsplit("@", 1)[1]), default=None)
    parts = [f"step {step}"]
    for key in (avg, pas):
        if key:
            parts.append(f"{key.removeprefix('val/')} {100 * v[key]:.2f}")
    for key, label in (("train/entropy", "entropy"), ("train/reward", "reward")):
        if key in last:
            parts.append(f"{label} {last[key]:.3f}")
    _write("validation: " + ", ".join(parts))
