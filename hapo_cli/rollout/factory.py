"""`build_engine`: the ONE place a rollout engine is made, for training and for evaluation.

An engine receives its settings and a model (the module for `hf`, the module and its folder for
`vllm`), never the trainer's Config. Add an engine: its module in rollout/ implementing
`RolloutEngine` (base.py), and one entry in ENGINES.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hapo_cli.errors import HapoError


@dataclass
class EngineSettings:
    """How to build an engine (the trainer fills it from `rollout.*`, `hapo eval` from its options)."""

    engine: str = "hf"  # hf (transformers generate on the given module) or vllm
    batch_size: int = 512  # hf: sequences per generate call (memory)
    dtype: str = "auto"  # vllm: weight dtype
    seed: int = 0  # vllm: engine seed (requests carry their own seeds too)
    gpu_memory_utilization: float = 0.5  # vllm: share of GPU memory while awake
    tensor_parallel_size: int = 1  # vllm
    max_model_len: int | None = None  # vllm: prompt + response cap (bounds the KV cache)
    trust_remote_code: bool = False  # vllm: passed to the engine's loader
    colocated: bool = True  # vllm: shares the GPU with a trainer (sleep mode, weight sync, ATS factors)
    sampler: str = "inverse_cdf"  # hf: inverse_cdf (one uniform per row; fast on CPU) or multinomial (transformers' own; the former default)
    entropy_kernel: str = "auto"  # hf: auto (compiled on CPU at a real vocabulary), compiled or eager
    return_logprobs: bool = False  # hf: fill Rollout.logprobs with each sampled token's processed log-prob (vllm: always when colocated)


def _hf(settings: EngineSettings, model, tokenizer, model_path: str | None):
    from hapo_cli.rollout.hf import HFRolloutEngine

    return HFRolloutEngine(model, tokenizer, batch_size=settings.batch_size, return_logprobs=settings.return_logprobs,
                          sampler=settings.sampler, entropy_kernel=settings.entropy_kernel)


def _vllm(settings: EngineSettings, model, tokenizer, model_path: str | None):
    if importlib.util.find_spec("vllm") is None:
        raise HapoError("the vllm engine needs vLLM: pip install 'hapo[vllm]' on a CUDA machine, or use the hf engine")
    from hapo_cli.rollout.vllm_engine import VLLMRolloutEngine

    if model_path is None:
        raise HapoError("the vllm engine needs the model's folder or Hub id")
    opts: dict[str, Any] = dict(dtype=settings.dtype, seed=settings.seed, tensor_parallel_size=settings.tensor_parallel_size,
                                max_model_len=settings.max_model_len, trust_remote_code=settings.trust_remote_code)
    if settings.colocated:
        opts.update(gpu_memory_utilization=settings.gpu_memory_utilization, trainer_model=model)
    else:  # evaluation: the GPU is the engine's alone; no sleep, no per-token factors
        opts.update(gpu_memory_utilization=max(settings.gpu_memory_utilization, 0.85), enable_sleep_mode=False,
                    record_factors=False, return_logprobs=False)
    engine = VLLMRolloutEngine(model_path, tokenizer, **opts)
    if not settings.colocated:
        engine.eval_chunk_sequences = 4096  # vLLM batches best with many requests at once
    return engine


ENGINES: dict[str, Callable[..., Any]] = {"hf": _hf, "vllm": _vllm}


def engine_factory(name: str) -> Callable[..., Any]:
    """The builder registered as `name` (checked before any model loads); one line naming the valid ones."""
    try:
        return ENGINES[name]
    except KeyError:
        raise HapoError(f"unknown rollout engine {name!r}; choose one of: {', '.join(ENGINES)}") from None


def build_engine(settings: EngineSettings, model=None, tokenizer=None, model_path: str | None = None):
    """The engine named by `settings.engine` over `model` (hf) or `model_path` (vllm)."""
    return engine_factory(settings.engine)(settings, model, tokenizer, model_path)


def vllm_dtype(trainer_dtype: str | None) -> str:
    """Rollouts run in the checkpoint's dtype unless the trainer trains in half precision."""
    return trainer_dtype if trainer_dtype in ("bfloat16", "float16") else "auto"
