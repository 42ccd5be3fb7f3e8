"""`make_engine`: build a rollout engine and its tokenizer by name for `hapo eval`.

- `hf`: `hapo_cli.train.modeling.load_model_and_tokenizer` + `hapo_cli.rollout.hf.HFRolloutEngine`.
- `vllm`: `hapo_cli.rollout.vllm_engine`, imported only when asked for. That module may expose
  `make_engine(model_path, **kwargs) -> (engine, tokenizer)` (preferred); otherwise
  `VLLMRolloutEngine.from_pretrained(model_path, **kwargs)` is used (an engine with `.tokenizer`),
  with evaluation settings: no sleep mode, no log-probs, 85% of GPU memory. Without vllm
  installed this is one clear error.
"""

from __future__ import annotations

import importlib
import importlib.util

from hapo_cli.errors import HapoError

ENGINES = ("hf", "vllm")
VLLM_CHUNK_SEQUENCES = 4096  # responses per generate call with vLLM (the evaluator's progress granularity)


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def make_engine(
    name: str,
    model_path: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
    **kwargs,
):
    """(engine, tokenizer) for `name` in {hf, vllm}; HapoError with one actionable line otherwise."""
    if name == "hf":
        from hapo_cli.rollout.hf import HFRolloutEngine
        from hapo_cli.train.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_path, dtype=dtype, device=resolve_device(device))
        model.eval()
        return HFRolloutEngine(model, tokenizer, batch_size=batch_size, return_logprobs=False), tokenizer
    if name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise HapoError("vllm is not installed: pip install 'hapo[vllm]' (or use --engine hf)")
        try:
            mod = importlib.import_module("hapo_cli.rollout.vllm_engine")
        except ModuleNotFoundError as err:
            if err.name == "hapo_cli.rollout.vllm_engine":
                raise HapoError("this hapo build has no vLLM engine (hapo_cli/rollout/vllm_engine.py): use --engine hf") from None
            raise
        from hapo_cli.train.modeling import resolve_model_path

        path = resolve_model_path(model_path)
        if hasattr(mod, "make_engine"):
            return mod.make_engine(path, dtype=dtype, seed=seed, **kwargs)
        cls = getattr(mod, "VLLMRolloutEngine", None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            # evaluation only: no trainer to share the GPU with, no log-probs / ATS factors needed
            opts = dict(dtype=dtype, seed=seed, return_logprobs=False, record_factors=False,
                        enable_sleep_mode=False, gpu_memory_utilization=0.85)
            opts.update(kwargs)
            engine = cls.from_pretrained(path, **opts)
            engine.eval_chunk_sequences = VLLM_CHUNK_SEQUENCES  # vLLM batches best with many requests at once
            return engine, engine.tokenizer
        raise HapoError("hapo_cli.rollout.vllm_engine has no make_engine(): cannot build the vLLM engine")
    raise HapoError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}")
