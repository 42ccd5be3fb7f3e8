"""`VLLMRolloutEngine`: rollouts with vLLM, ATS as a custom logits processor, colocated with training.

Supported vLLM: 0.29 - 0.33 (tested contract: 0.33.0, see `hapo_cli.rollout.vllm_ats`). This
module imports without vLLM (every vLLM import is inside a function); building an engine
without vLLM is one `HapoError` line.

What it does, all through vLLM's documented APIs:
- `generate`: each response is its own request (`n` copies of a prompt, prefix caching shares
  the prompt's KV). ATS (hapo-spec A) rides `SamplingParams.extra_args["hapo_ats"]` to
  `vllm_ats.ATSLogitsProcessor`, registered with `LLM(logits_processors=[...])`; each request
  carries a `row_id`, so the per-token factor `1 + tau*h` the processor applied is drained
  from the workers afterwards (`LLM.collective_rpc` on `vllm_ats.ATSWorkerExtension`) and
  `Rollout.temperatures` holds the exact `T_base * factor` of every sampled token
  (T_base without ATS; 1.0 for greedy, like the HF engine; 0 on padding).
  `Rollout.logprobs`: the log-prob of each sampled token under the distribution it was sampled
  from (after ATS, temperature, top-k/top-p): `logprobs=0` with
  `logprobs_mode="processed_logprobs"`.
- `sync_weights(model)`: vLLM's native weight-transfer API (`weight_transfer_config={"backend":
  "ipc"}` on the LLM; trainer side `WeightTransferTrainerFactory.trainer_init(IPCTrainerInitInfo,
  source=ModuleSource(model))` then `send_weights()`): CUDA IPC handles of the trainer's own
  tensors, no copy through the host; it needs the trainer and vLLM on the same GPU(s). IPC
  handles cross vLLM's RPC pickled, so `VLLM_ALLOW_INSECURE_SERIALIZATION=1` is set for the
  engine process (a local pipe between this process and its own engine). `weight_sync="disk"`
  instead writes one safetensors file (under /dev/shm when present) and calls the workers'
  `reload_weights(weights_path=...)`: slower, but works for any placement.
- `sleep()` / `wake_up()` (`enable_sleep_mode=True`): release the engine's GPU memory while the
  trainer updates. With the trainer's model known (`trainer_model`, see rollout/factory.py), level 2 is used
  (weights dropped, re-sent on wake by the next sync); otherwise level 1 (weights parked in
  host memory). `generate` wakes the engine up itself.
- Several trainer ranks (accelerate DDP / FSDP): every rank builds its own engine on its own GPU
  (tensor_parallel_size=1; while the engine starts, its child process is shown only the rank's
  GPU through CUDA_VISIBLE_DEVICES) and generates its own share of the prompts. A weight sync is
  then a collective (IPC handle all-gather, FSDP shard gathers): call `sync_weights(model)` on
  every rank after each update; `generate` re-syncs by itself only in a single process.

Everything below `# ---- GPU-only` needs a CUDA machine with vLLM and was not run in CI;
`tests/test_vllm_contract.py` checks the processor half against the real vLLM classes on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from hapo_cli.errors import HapoError
from hapo_cli.rollout.ats_logic import ATSRowParams
from hapo_cli.rollout.base import Rollout, SamplingParams, pad_left, pad_right

__all__ = ["SUPPORTED_VLLM", "VLLMRolloutEngine", "sampled_token_logprobs"]

SUPPORTED_VLLM = ((0, 29), (0, 34))  # [min, max) major.minor of the vLLM versions this module targets
_SEED_MOD = 2**31 - 1


def _require_vllm():
    try:
        import vllm
    except ImportError as err:
        raise HapoError(f"the vLLM engine needs vLLM ({err}): pip install 'hapo[vllm]' on a CUDA machine, "
                        "or use the hf engine") from None
    version = getattr(vllm, "__version__", "0.0")
    try:
        mm = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        mm = None
    if mm is not None and not (SUPPORTED_VLLM[0] <= mm < SUPPORTED_VLLM[1]):
        warnings.warn(f"vLLM {version} is outside the versions hapo's vLLM engine was written for "
                      f"({'.'.join(map(str, SUPPORTED_VLLM[0]))} <= v < {'.'.join(map(str, SUPPORTED_VLLM[1]))})",
                      stacklevel=3)
    return vllm


def sampled_token_logprobs(logprobs: Any, token_ids: list[int]) -> list[float]:
    """Log-prob of each sampled token from a vLLM `CompletionOutput.logprobs` (NaN where absent).

    Handles both containers vLLM returns: `FlatLogprobs` (flat lists indexed by
    `start_indices` / `end_indices`) and a list of `{token_id: Logprob}` dicts.
    """
    if logprobs is None:
        return [math.nan] * len(token_ids)
    if all(hasattr(logprobs, a) for a in ("start_indices", "end_indices", "token_ids", "logprobs")):
        out = []
        for t, tok in enumerate(token_ids):
            value = math.nan
            if t < len(logprobs.start_indices):
                for j in range(logprobs.start_indices[t], logprobs.end_indices[t]):
                    if logprobs.token_ids[j] == tok:
                        value = float(logprobs.logprobs[j])
                        break
            out.append(value)
        return out
    out = []
    for t, tok in enumerate(token_ids):
        entry = logprobs[t] if t < len(logprobs) else None
        lp = entry.get(tok) if entry else None
        out.append(float(lp.logprob) if lp is not None else math.nan)
    return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP / accelerate wrappers -> the transformers model (parameter names as in the checkpoint)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _param_version(model: torch.nn.Module) -> int:
    """Sum of the parameters' in-place version counters: changes whenever an optimizer steps."""
    return sum(int(p._version) for p in model.parameters())


def _world_size() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


@contextlib.contextmanager
def _child_sees_only_current_gpu(tensor_parallel_size: int):
    """With several trainer ranks on one node, each rank's engine must use the rank's own GPU.

    vLLM runs the model in a child process that takes the first visible GPU, so while the LLM is
    built (the child is spawned then and inherits the environment) CUDA_VISIBLE_DEVICES names
    only this rank's current device. Single-process runs and tensor parallelism are left alone.
    """
    if tensor_parallel_size != 1 or _world_size() <= 1 or not torch.cuda.is_available():
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    index = torch.cuda.current_device()
    visible = [d.strip() for d in old.split(",")] if old else None
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible and index < len(visible) else str(index)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


class _LLMWeightSyncClient:
    """`VLLMWeightSyncClient` (vLLM's structural protocol) over an in-process `vllm.LLM`.

    The trainer-side transfer engine passes the bare init / update info dicts; `LLM`'s
    methods take them wrapped (`{"init_info": ...}`, `{"update_info": ...}`).
    """

    def __init__(self, llm: Any):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: Any) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


class VLLMRolloutEngine:
    """RolloutEngine over `vllm.LLM` (see the module docstring). Same `Rollout` as the HF engine."""

    def __init__(
        self,
        model_path: str,
        tokenizer: Any = None,
        *,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = True,
        sleep_level: int | None = None,
        offload_between_calls: bool = False,
        weight_sync: str = "ipc",
        ipc_packed: bool = True,
        return_logprobs: bool = True,
        record_factors: bool = True,
        trainer_model: torch.nn.Module | None = None,
        auto_sync: bool = True,
        llm_kwargs: dict[str, Any] | None = None,
    ):
        """
        model_path: HF model folder or Hub id the engine starts from (weights are re-sent by
            `sync_weights`). tokenizer: a transformers tokenizer (pad / EOS / decoding); loaded
            from `model_path` when None. dtype: vLLM dtype ("auto", "bfloat16", ...).
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache) while awake.
        max_model_len: prompt + response cap (bounds the KV cache); None: the model's.
        enable_sleep_mode / sleep_level: `sleep()` frees the engine's GPU memory; level 2 drops
            the weights (default when `trainer_model` is given), level 1 parks them in host RAM.
        offload_between_calls: sleep after every `generate` (wakes up on the next one).
        weight_sync: "ipc" (CUDA IPC, same GPU) or "disk" (safetensors + reload_weights).
        return_logprobs: fill `Rollout.logprobs`. record_factors: exact per-token ATS temperatures.
        trainer_model / auto_sync: the trainer's module; with auto_sync, `generate` re-sends its
            weights whenever they changed since the last sync (parameter version counters).
        llm_kwargs: anything else for `vllm.LLM(...)` (overrides the above).
        """
        if weight_sync not in ("ipc", "disk"):
            raise HapoError(f"weight_sync must be 'ipc' or 'disk', got {weight_sync!r}")
        vllm = _require_vllm()
        self.vllm_version = getattr(vllm, "__version__", "unknown")
        self.model_path = str(model_path)
        self.seed = int(seed)
        self.return_logprobs = bool(return_logprobs)
        self.record_factors = bool(record_factors)
        self.weight_sync = weight_sync
        self.ipc_packed = bool(ipc_packed)
        self.enable_sleep_mode = bool(enable_sleep_mode)
        self.sleep_level = int(sleep_level if sleep_level is not None else (2 if trainer_model is not None else 1))
        self.offload_between_calls = bool(offload_between_calls)
        self.auto_sync = bool(auto_sync)
        self._model = _unwrap(trainer_model) if trainer_model is not None else None
        self._synced_version: int | None = None  # None: the engine holds the checkpoint's weights
        self._weights_valid = True
        self._asleep: set[str] = set()  # tags currently released: "weights", "kv_cache"
        self._transfer = None
        self._transfer_model: torch.nn.Module | None = None
        self._disk_dir: Path | None = None
        self._uid = uuid.uuid4().hex[:8]
        self._calls = 0
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer(trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.llm = self._build_llm(dict(
            model=self.model_path, dtype=dtype, seed=self.seed, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
            trust_remote_code=trust_remote_code, enforce_eager=enforce_eager,
            enable_sleep_mode=self.enable_sleep_mode), llm_kwargs or {})

    # ------------------------------------------------------------ construction helpers

    def _load_tokenizer(self, trust_remote_code: bool):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)

    # ---- GPU-only from here: everything below talks to a live vllm.LLM -------------------

    def _build_llm(self, base: dict[str, Any], overrides: dict[str, Any]):
        kwargs = self._llm_kwargs(base, overrides)
        with _child_sees_only_current_gpu(int(kwargs.get("tensor_parallel_size") or 1)):
            return self._create_llm(kwargs)

    def _create_llm(self, kwargs: dict[str, Any]):
        from vllm import LLM

        return LLM(**kwargs)

    def _llm_kwargs(self, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """`vllm.LLM` arguments: ours (processor, worker extension, logprobs mode, weight transfer) + overrides."""
        from hapo_cli.rollout.vllm_ats import ATS_PROCESSOR_FQCN, ATS_WORKER_EXTENSION_FQCN

        kwargs = dict(base)
        kwargs.update(
            logits_processors=[ATS_PROCESSOR_FQCN],
            worker_extension_cls=ATS_WORKER_EXTENSION_FQCN,
            logprobs_mode="processed_logprobs",
        )
        if self.weight_sync == "ipc":
            kwargs["weight_transfer_config"] = {"backend": "ipc"}
            # IPC handles (torch types inside) cross vLLM's engine RPC pickled: allow it for the
            # engine process this LLM spawns (inherits the environment).
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        kwargs.update(overrides)
        return {k: v for k, v in kwargs.items() if v is not None}

    # ------------------------------------------------------------ sleep / wake

    def sleep(self) -> None:
        """Release the engine's GPU memory (KV cache; weights too at level 2) until the next call."""
        if not self.enable_sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = {"weights", "kv_cache"}
        if self.sleep_level >= 2:
            self._weights_valid = False

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-acquire the memory of `tags` ("weights", "kv_cache"; None: everything)."""
        want = set(self._asleep if tags is None else tags) & self._asleep
        if not want:
            return
        self.llm.wake_up(tags=None if want == self._asleep else sorted(want))
        self._asleep -= want

    # ------------------------------------------------------------ weights

    def sync_weights(self, model: torch.nn.Module, force: bool = False) -> None:
        """Load `model`'s current weights into the engine (call after each optimizer step).

        A no-op when the engine already holds exactly these weights (same module, parameter
        version counters unchanged, not released by sleep), unless `force`. With several ranks
        call it on every rank: the decision is the same everywhere and a transfer is collective.
        """
        model = _unwrap(model)
        if (not force and self._weights_valid and model is self._model
                and self._synced_version is not None and self._synced_version == _param_version(model)):
            return
        self._model = model
        was_awake = not self._asleep
        self.wake_up(["weights"])
        if self.weight_sync == "ipc":
            self._send_ipc(model)
        else:
            self._send_disk(model)
        if was_awake:  # cached KV blocks were computed with the old weights (sleep already cleared them)
            self.llm.reset_prefix_cache()
        self._weights_valid = True
        self._synced_version = _param_version(model)

    def _send_ipc(self, model: torch.nn.Module) -> None:
        if self._transfer is None or self._transfer_model is not model:
            if not any(p.is_cuda for p in model.parameters()):
                raise HapoError("weight_sync='ipc' needs the trainer's model on the GPU that vLLM uses; "
                                "use weight_sync='disk' otherwise")
            from vllm.distributed.weight_transfer.base import ModuleSource
            from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            # Every trainer rank drives its OWN colocated engine, so each one is a sender
            # (rank=0). With torch.distributed initialised vLLM all-gathers the handles of all
            # ranks; each engine worker picks those of its own GPU (keyed by GPU UUID).
            self._transfer = WeightTransferTrainerFactory.trainer_init(
                IPCTrainerInitInfo(rank=0, packed=self.ipc_packed),
                client=_LLMWeightSyncClient(self.llm), source=ModuleSource(model))
            self._transfer_model = model
        self._transfer.send_weights()

    def _send_disk(self, model: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        if self._disk_dir is None:
            root = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._disk_dir = Path(tempfile.mkdtemp(prefix=f"hapo-vllm-{self._uid}-", dir=root))
        state = {}
        for name, p in model.named_parameters():
            t = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 DTensor -> full tensor
            state[name] = t.detach().to("cpu").contiguous()
        save_file(state, str(self._disk_dir / "model.safetensors"))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self._disk_dir),
                                                          "is_checkpoint_format": True})

    def _prepare(self) -> None:
        """Before generating: valid, current weights and all memory awake.

        Auto-sync only in a single process: with several ranks a sync is collective (handle
        all-gather, FSDP shard gathers), and `generate` may run on one rank alone (validation),
        so there the trainer must call `sync_weights` on every rank after each update.
        """
        m = self._model
        stale = m is not None and self.auto_sync and self._synced_version != _param_version(m)
        if m is not None and (stale or not self._weights_valid):
            if _world_size() > 1:
                raise HapoError("the vLLM engine's weights are out of date: call engine.sync_weights(model) on every "
                                "rank after each update (an implicit sync would be a collective on one rank only)")
            self.sync_weights(m)
        if not self._weights_valid:
            raise HapoError("the vLLM engine's weights were released by sleep(level=2): call sync_weights(model) first")
        self.wake_up()

    # ------------------------------------------------------------ generation

    def _sampling_params(self, params: SamplingParams, greedy: bool, i: int, extra: dict | None):
        from vllm import SamplingParams as VSamplingParams

        eos = self.tokenizer.eos_token_id
        return VSamplingParams(
            n=1,
            temperature=0.0 if greedy else float(params.temperature),
            top_p=1.0 if greedy else float(params.top_p),
            top_k=0 if greedy or params.top_k <= 0 else int(params.top_k),
            max_tokens=int(params.max_new_tokens),
            seed=None if params.seed is None else (int(params.seed) * 1_000_003 + i) % _SEED_MOD,
            logprobs=0 if self.return_logprobs else None,
            stop_token_ids=[eos] if eos is not None else None,
            detokenize=False,
            extra_args=extra,
        )

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        n, greedy = params.samples_and_greedy()
        self._prepare()
        call = self._calls
        self._calls += 1
        ats = ATSRowParams.from_ats(params.ats) if params.ats is not None and not greedy else None
        flat = [list(p) for p in prompts for _ in range(n)]
        row_ids = [f"{self._uid}:{call}:{i}" for i in range(len(flat))]
        sps = [self._sampling_params(params, greedy, i,
                                     ats.to_extra_args(row_ids[i] if self.record_factors else None) if ats else None)
               for i in range(len(flat))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in flat], sps, use_tqdm=False)
        factors = self._drain_factors() if ats is not None and self.record_factors else {}
        if self.offload_between_calls:
            self.sleep()
        return self._to_rollout(flat, outs, params, greedy, ats, row_ids, factors)

    def _drain_factors(self) -> dict[str, list[float]]:
        results = self.llm.collective_rpc("hapo_ats_drain_factors")
        merged: dict[str, list[float]] = {}
        for r in results:  # tensor-parallel ranks record the same rows; keep the first
            for k, v in (r or {}).items():
                merged.setdefault(k, v)
        return merged

    def _to_rollout(self, flat, outs, params, greedy, ats, row_ids, factors) -> Rollout:
        tok = self.tokenizer
        pad_id = tok.pad_token_id
        comps = [o.outputs[0] for o in outs]
        resp = [list(c.token_ids) for c in comps]
        prompt_ids, prompt_mask = pad_left(flat, pad_id)
        response_ids, response_mask = pad_right(resp, pad_id)
        N, L = response_ids.shape
        logprobs = None
        if self.return_logprobs:
            lp_rows = [sampled_token_logprobs(c.logprobs, r) for c, r in zip(comps, resp)]
            logprobs, _ = pad_right(lp_rows, 0.0, value_dtype=torch.float32)
            logprobs = torch.nan_to_num(logprobs, nan=0.0) if N and L else logprobs
        base = 1.0 if greedy else float(params.temperature)
        temps = torch.full((N, L), base, dtype=torch.float32)
        missing = 0
        if ats is not None and self.record_factors:
            for i, rid in enumerate(row_ids):
                k = len(resp[i])
                f = torch.tensor((factors.get(rid) or [])[:k], dtype=torch.float64).to(torch.float32)
                got = min(int(f.shape[0]), k)
                bad = torch.isnan(f)
                missing += (k - got) + int(bad.sum())
                temps[i, :got] = torch.where(bad, torch.ones_like(f), f) * base
        temps = temps * response_mask
        finish = ["length" if c.finish_reason == "length" else "stop" for c in comps]
        texts = tok.batch_decode(response_ids.masked_fill(response_mask == 0, pad_id), skip_special_tokens=True)
        extra = {"engine": "vllm", "vllm_version": self.vllm_version}
        if ats is not None:
            extra["ats_temperatures"] = "recorded" if self.record_factors else "base_only"
            extra["ats_missing_factors"] = missing  # tokens whose factor was not recorded (T_base used)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, logprobs, temps, finish, texts, extra)

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        """Drop the engine (frees its GPU memory once collected) and the weight folder."""
        self._transfer = None
        self.llm = None
        if self._disk_dir is not None:
            shutil.rmtree(self._disk_dir, ignore_errors=True)
            self._disk_dir = None
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

