"""Checks that run before any model loads, so a run that cannot work fails in a second with one line.

    preflight(cfg)          # `hapo train`: preset vs machine, device, engine, Hub model, W&B credentials
    check_device("cuda")    # also `hapo eval`
    check_engine("vllm")

Each failure is a HapoError naming the fix (exit 2 through the CLI). Nothing here loads a model
or touches the network except one short reachability probe for a Hub model that is not cached
(`models.ensure_reachable`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from hapo_cli.errors import HapoError

SCALED_DOWN = ("hapo train algorithm=hapo (HAPO on the built-in tiny model, CPU, minutes) or "
               "hapo train experiment=debug")


def cuda_devices() -> int:
    """How many CUDA devices torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str, setting: str = "--device") -> None:
    """`cuda` / `cuda:N` must exist on this machine; auto and cpu always pass."""
    d = str(device).strip().lower()
    if d in ("auto", "cpu", ""):
        return
    if not (d == "cuda" or d.startswith("cuda:")):
        raise HapoError(f"{setting}={device}: use auto, cpu, cuda or cuda:N")
    n = cuda_devices()
    if n == 0:
        raise HapoError(f"{setting}={device} but this machine has no CUDA device (torch sees none): "
                        f"use {setting}=cpu or {setting}=auto")
    if d.startswith("cuda:"):
        idx = d.split(":", 1)[1]
        if not idx.isdigit() or int(idx) >= n:
            raise HapoError(f"{setting}={device}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_engine(engine: str, setting: str = "--engine") -> None:
    """vllm must be installed and have a GPU; hf always passes."""
    if engine != "vllm":
        return
    if not vllm_installed():
        raise HapoError(f"{setting}=vllm but vLLM is not installed: pip install 'hapo[vllm]' (CUDA machines), "
                        f"or use the transformers engine ({setting}=hf)")
    if cuda_devices() == 0:
        raise HapoError(f"{setting}=vllm needs a CUDA GPU and this machine has none: use {setting}=hf")


def _wandb_has_credentials() -> bool:
    from hapo_cli.runs.wandb import wandb_has_credentials

    return wandb_has_credentials()


def check_wandb(logger: Any) -> None:
    """logger.wandb.mode=online needs credentials (wandb would otherwise fail with a traceback)."""
    if getattr(logger, "name", None) == "wandb" and logger.wandb.mode == "online" and not _wandb_has_credentials():
        raise HapoError("logger.wandb.mode=online but no W&B credentials were found: run `wandb login` (or set "
                        "WANDB_API_KEY), or log offline (logger.wandb.mode=offline / auto) or not at all (logger=none)")


def check_preset(cfg: Any) -> None:
    """An experiment preset that needs a GPU (a Hub model, vLLM rollouts) on a machine without CUDA."""
    preset = getattr(cfg, "experiment", None)
    if not preset or preset == "debug" or cuda_devices() > 0:
        return
    needs = []
    if cfg.rollout.engine == "vllm":
        needs.append("vLLM")
    from hapo_cli.models import ALIASES, is_local_path

    name = cfg.model.name_or_path
    if name not in ALIASES and not is_local_path(name):  # a Hub model (a built-in or local one runs here)
        needs.append(f"the model {name}")
    if cfg.trainer.mixed_precision != "no":
        needs.append(f"{cfg.trainer.mixed_precision} mixed precision")
    if not needs:
        return
    raise HapoError(f"experiment={preset} needs a GPU ({', '.join(needs)}) and this machine has no CUDA: "
                    f"run it on a GPU machine (pip install 'hapo[vllm]'), or a scaled-down version here: {SCALED_DOWN}")


def check_entropy_source(cfg: Any) -> None:
    """algorithm.entropy_source=rollout needs an engine that keeps entropies while generating (hf)."""
    if cfg.algorithm.entropy_source == "rollout" and cfg.rollout.engine != "hf":
        raise HapoError(f"algorithm.entropy_source=rollout needs rollout.engine=hf (the {cfg.rollout.engine} engine "
                        "returns no entropies): use algorithm.entropy_source=old_pass, or rollout.engine=hf")


def preflight(cfg: Any) -> None:
    """Everything `hapo train` can check before the model loads (cfg: a composed `config.Config`)."""
    from hapo_cli.models import ensure_reachable

    check_preset(cfg)
    check_entropy_source(cfg)
    check_device(cfg.trainer.device, "trainer.device")
    check_engine(cfg.rollout.engine, "rollout.engine")
    check_wandb(cfg.logger)
    from hapo_cli.models import ALIASES

    if cfg.model.name_or_path not in ALIASES:
        ensure_reachable(cfg.model.name_or_path)
