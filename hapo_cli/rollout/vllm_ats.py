"""Adaptive Temperature Sampling (hapo-spec A) as vLLM custom logits processors. Imports vLLM.

Supported vLLM versions: 0.29 - 0.33. The contract test `tests/test_vllm_contract.py` passed
against vLLM 0.33.0 (both interfaces) and 0.30.0 (V1 interface); the interface sources of
0.29 - 0.32 were compared with 0.33.0's and are identical (V2: 0.31, 0.32).
vLLM has two logits-processor interfaces and picks one per engine from its model runner:

- Model Runner V2 (vLLM's default runner unless a feature it lacks forces V1; custom processors
  for it since 0.31; `vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`):
  `__init__(vllm_config, req_states)`, `add_request(slot, params) -> bool`, `apply(logits, ctx)`.
  vLLM 0.29 / 0.30 have no V2 interface and fall back to the V1 runner whenever a custom logits
  processor is configured.
- V1 model runner (`VLLM_USE_V2_MODEL_RUNNER=0`, or features V2 lacks;
  `vllm.v1.sample.logits_processor.LogitsProcessor`): `__init__(vllm_config, device, is_pin_memory)`,
  `is_argmax_invariant()`, `update_state(batch_update)`, `apply(logits)`.

`ATSLogitsProcessor` implements BOTH (it subclasses both interface classes; the V2 base only
where the installed vLLM has it), so the one class name works whichever runner vLLM chooses; no
guessing of the runner is needed. Register it with the documented mechanism:

    LLM(model, logits_processors=["hapo_cli.rollout.vllm_ats:ATSLogitsProcessor"])
    vllm serve MODEL --logits-processors hapo_cli.rollout.vllm_ats:ATSLogitsProcessor

(or, for every engine of an environment, the `vllm.logits_processors` entry point group with
the same target). A request opts in through `SamplingParams.extra_args`:
`{"hapo_ats": {"stats": EntropyStats.as_dict(), "tau": 0.05, "mode": "paper"}}`
(see `hapo_cli.rollout.ats_logic`). Requests without the entry, and greedy requests, are untouched.

Where it runs: in both runners custom processors see float32 logits after the allowed-token /
bad-words / logit-bias stages and BEFORE the engine's temperature, min-p and top-k/top-p, so
the row's entropy is that of the raw next-token distribution and the token is sampled at
`T_base * (1 + tau * h)` (spec A). For the V1 runner this requires declaring the processor NOT
argmax-invariant (V1 applies argmax-invariant processors after the temperature division); the
division by a positive factor never changes a greedy argmax anyway.

Per-token factors: rows whose entry has a `row_id` are recorded in the worker process
(`RECORDER`); `VLLMRolloutEngine` drains them after each `generate` with
`LLM.collective_rpc("hapo_ats_drain_factors")`, a method that `ATSWorkerExtension` (passed as
`worker_extension_cls`) adds to vLLM's worker. Later records of the same (row_id, position)
replace earlier ones, so chunked-prefill steps, preemption/recompute and speculative-decoding
drafts leave the factor of the token that was finally kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import vllm
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from hapo_cli.rollout.ats_logic import ATSRowParams, ATSScaler, ats_row_id, request_ats_params

try:  # Model Runner V2 interface: vLLM >= 0.31
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
except ImportError:  # pragma: no cover - depends on the installed vLLM
    V2LogitsProcessor = None

Tensor = torch.Tensor

__all__ = [
    "ATS_PROCESSOR_FQCN",
    "ATS_WORKER_EXTENSION_FQCN",
    "HAS_V2_INTERFACE",
    "RECORDER",
    "VLLM_VERSION",
    "ATSLogitsProcessor",
    "ATSLogitsProcessorV1",
    "ATSWorkerExtension",
    "FactorRecorder",
]

VLLM_VERSION: str = getattr(vllm, "__version__", "unknown")
HAS_V2_INTERFACE: bool = V2LogitsProcessor is not None
ATS_PROCESSOR_FQCN = "hapo_cli.rollout.vllm_ats:ATSLogitsProcessor"  # for LLM(logits_processors=[...])
ATS_WORKER_EXTENSION_FQCN = "hapo_cli.rollout.vllm_ats:ATSWorkerExtension"  # for LLM(worker_extension_cls=...)


def _validate(sampling_params: Any) -> None:
    """Shared `validate_params`: a malformed `hapo_ats` entry fails the request at admission."""
    request_ats_params(getattr(sampling_params, "temperature", None), getattr(sampling_params, "extra_args", None))


# ------------------------------------------------------------------------------------------------
# Per-token factor recording (worker side)
# ------------------------------------------------------------------------------------------------


class FactorRecorder:
    """The ATS factor of every sampled token of the rows that carry a `row_id`, per worker process.

    `record` only appends references to small device tensors (no host sync inside the decoding
    loop); past `spill_threshold` device-resident records they are moved to host memory in one
    transfer, so GPU memory stays bounded (~8 bytes a record). `drain` returns
    `{row_id: [factor at output position 0, 1, ...]}` (NaN where a position was never recorded)
    and forgets everything. Later records of the same (row_id, position) win; negative positions
    (chunked-prefill steps) are dropped.
    """

    def __init__(self, spill_threshold: int = 4_000_000):
        self.spill_threshold = int(spill_threshold)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._chunks: list[tuple[np.ndarray, Tensor | np.ndarray, Tensor | np.ndarray]] = []
        self._pending = 0
        self._on_device = 0

    def record(self, row_ids: np.ndarray | list[str], positions: Tensor | np.ndarray, factors: Tensor) -> None:
        """`row_ids [k]` (host strings), `positions [k]` (output index of each sampled token, host
        or device ints), `factors [k]` (device floats)."""
        k = len(row_ids)
        if k == 0:
            return
        with self._lock:
            self._chunks.append((np.asarray(row_ids, dtype=object), positions, factors.detach()))
            self._pending += k
            if factors.device.type != "cpu":
                self._on_device += k
            if self._on_device > self.spill_threshold:
                self._chunks = [_materialize(self._chunks)]
                self._on_device = 0

    def __len__(self) -> int:
        return self._pending

    def drain(self) -> dict[str, list[float]]:
        with self._lock:
            chunks = self._chunks
            self._reset()
        if not chunks:
            return {}
        row_ids, pos, fac = _materialize(chunks)
        names, ids = np.unique(row_ids.astype(str), return_inverse=True)
        ids = ids.reshape(-1).astype(np.int64)
        order = np.lexsort((np.arange(len(ids)), pos, ids))  # by row, then position, then arrival
        ids, pos, fac = ids[order], pos[order], fac[order]
        last = np.ones(len(ids), dtype=bool)  # the last record of each (row, position)
        last[:-1] = (ids[1:] != ids[:-1]) | (pos[1:] != pos[:-1])
        keep = last & (pos >= 0)
        ids, pos, fac = ids[keep], pos[keep], fac[keep]
        out: dict[str, list[float]] = {}
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], len(ids)]
        for s, e in zip(starts.tolist(), ends.tolist()):
            row = np.full(int(pos[e - 1]) + 1, np.nan, dtype=np.float64)
            row[pos[s:e]] = fac[s:e]
            out[str(names[int(ids[s])])] = row.tolist()
        return out


def _host(parts: list[Tensor | np.ndarray], dtype) -> np.ndarray:
    """Concatenate host arrays and (device) tensors in order, with one transfer per run of device tensors."""
    out: list[np.ndarray] = []
    run: list[Tensor] = []

    def flush():
        if run:
            out.append(torch.cat(run).cpu().numpy())
            run.clear()

    for p in parts:
        if isinstance(p, Tensor) and p.device.type != "cpu" and (not run or run[0].device == p.device):
            run.append(p.reshape(-1))
            continue
        flush()
        if isinstance(p, Tensor) and p.device.type != "cpu":
            run.append(p.reshape(-1))
        else:
            out.append(p.reshape(-1).numpy() if isinstance(p, Tensor) else np.asarray(p).reshape(-1))
    flush()
    return np.concatenate(out).astype(dtype, copy=False)


def _materialize(chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> host (row_ids [n] object, positions [n] int64, factors [n] float32), in arrival order."""
    row_ids = np.concatenate([c[0] for c in chunks])
    pos = _host([c[1] for c in chunks], np.int64)
    fac = _host([c[2] for c in chunks], np.float32)
    if not (len(row_ids) == len(pos) == len(fac)):
        raise RuntimeError(f"hapo ATS recorder: inconsistent records ({len(row_ids)}, {len(pos)}, {len(fac)})")
    return row_ids, pos, fac


RECORDER = FactorRecorder()  # one per process: the worker's processors write, the extension drains


class ATSWorkerExtension:
    """Mixed into vLLM's worker by `LLM(worker_extension_cls=ATS_WORKER_EXTENSION_FQCN)`.

    `LLM.collective_rpc("hapo_ats_drain_factors")` then returns, from every worker, the
    per-token factors its ATS processors recorded since the last call.
    """

    def hapo_ats_drain_factors(self) -> dict[str, list[float]]:
        return RECORDER.drain()


# ------------------------------------------------------------------------------------------------
# V1 model runner interface
# ------------------------------------------------------------------------------------------------


@dataclass
class _V1Row:
    params: ATSRowParams
    row_id: str | None  # the request's row_id (per-token factors are recorded only with one)
    output_ids: list[int]  # vLLM's running output token list (a live reference)


class ATSLogitsProcessorV1(V1LogitsProcessor):
    """ATS for vLLM's V1 model runner (`vllm.v1.sample.logits_processor.LogitsProcessor`).

    State: batch index -> the row's ATS parameters, kept in step with vLLM's persistent batch
    through `update_state` (removed, then added, then moved, as the interface documents).
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self._v1_device = device
        self._v1_rows: dict[int, _V1Row] = {}
        self._scaler = ATSScaler()
        self.recorder = RECORDER

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _validate(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # Dividing by a positive factor never changes the argmax, but the V1 sampler runs
        # argmax-invariant processors AFTER the temperature division; ATS must see raw logits.
        return False

    def _v1_new_row(self, params: Any, output_ids: list[int]) -> _V1Row | None:
        if params is None:  # pooling requests carry no sampling params
            return None
        p = request_ats_params(getattr(params, "temperature", None), getattr(params, "extra_args", None))
        if p is None:
            return None
        return _V1Row(p, ats_row_id(params.extra_args), output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = self._v1_rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            row = self._v1_new_row(params, output_ids)
            if row is None:
                rows.pop(index, None)  # an added request replaces whatever held the index
            else:
                rows[index] = row
        for a, b, direction in batch_update.moved:
            row_a, row_b = rows.pop(a, None), rows.pop(b, None)
            if row_a is not None:
                rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                rows[a] = row_b

    def apply(self, logits: Tensor) -> Tensor:
        if not self._v1_rows:
            return logits
        n = logits.shape[0]
        params: list[ATSRowParams | None] = [None] * n
        for i, row in self._v1_rows.items():
            if i < n:
                params[i] = row.params
        logits, factor = self._scaler.apply(logits, params, inplace=True)
        rec = [(i, row) for i, row in self._v1_rows.items() if i < n and row.row_id is not None]
        if rec:
            idx = torch.tensor([i for i, _ in rec], dtype=torch.long, device=factor.device)
            keys = [row.row_id for _, row in rec]
            # the token being sampled now is output position len(output_ids) (vLLM appends the
            # token, or an async placeholder, after each step that produced one)
            positions = np.array([len(row.output_ids) for _, row in rec], dtype=np.int64)
            self.recorder.record(keys, positions, factor.index_select(0, idx))
        return logits


# ------------------------------------------------------------------------------------------------
# Model Runner V2 interface (vLLM >= 0.31)
# ------------------------------------------------------------------------------------------------

if HAS_V2_INTERFACE:

    class ATSLogitsProcessorV2(V2LogitsProcessor):
        """ATS for vLLM's Model Runner V2 (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`).

        State per persistent request slot (slots are recycled, so `add_request` overwrites all
        of it). `apply` maps logits rows to slots with `ctx.idx_mapping_np` (host, no sync); with
        speculative decoding (several rows per request) it reads `ctx.expanded_idx_mapping`
        back to the host once per step.
        """

        def __init__(self, vllm_config: Any, req_states: Any):
            self._v2_req_states = req_states
            m = int(req_states.max_num_reqs)
            self._v2_params: list[ATSRowParams | None] = [None] * m
            self._v2_active = np.zeros(m, dtype=bool)
            self._v2_key = np.full(m, None, dtype=object)  # row_id per slot (None: not recorded)
            self._scaler = ATSScaler()
            self.recorder = RECORDER

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            _validate(sampling_params)

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            p = request_ats_params(getattr(sampling_params, "temperature", None),
                                   getattr(sampling_params, "extra_args", None))
            self._v2_params[req_idx] = p
            self._v2_active[req_idx] = p is not None
            self._v2_key[req_idx] = ats_row_id(sampling_params.extra_args) if p is not None else None
            return p is not None

        def apply(self, logits: Tensor, ctx: Any) -> Tensor:
            slots = np.asarray(ctx.idx_mapping_np)
            if not self._v2_active[slots].any():
                return logits
            if logits.shape[0] == slots.shape[0]:  # one row per request
                row_slots = slots
            else:  # speculative decoding: one row per draft token
                row_slots = ctx.expanded_idx_mapping.cpu().numpy()
            row_slots = row_slots.astype(np.int64, copy=False)
            params = [self._v2_params[s] for s in row_slots.tolist()]
            logits, factor = self._scaler.apply(logits, params, inplace=True)
            keys = self._v2_key[row_slots]
            sel = np.flatnonzero(self._v2_active[row_slots] & np.not_equal(keys, None))
            if sel.size:
                dev = factor.device
                sel_t = torch.from_numpy(sel).to(dev)
                slot_t = torch.from_numpy(row_slots[sel]).to(dev)
                prompt_len = self._v2_req_states.prompt_len.gpu  # [max_num_reqs] int32
                # row input position pos -> sampled token at pos + 1 -> output index pos + 1 - prompt_len
                positions = (ctx.pos.index_select(0, sel_t).long() + 1
                             - prompt_len.index_select(0, slot_t.to(prompt_len.device)).to(dev).long()).int()
                self.recorder.record(keys[sel], positions, factor.index_select(0, sel_t))
            return logits

    class ATSLogitsProcessor(ATSLogitsProcessorV2, ATSLogitsProcessorV1):
        """ATS under either model runner: vLLM's V2 loader calls the V2 methods, the V1 loader the V1 ones.

        The constructor tells the two apart by signature: V1 passes `(vllm_config, device,
        is_pin_memory)`, V2 `(vllm_config, req_states)`.
        """

        def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any):
            if len(args) + len(kwargs) >= 2 or "device" in kwargs:
                self.runner = "v1"
                ATSLogitsProcessorV1.__init__(self, vllm_config, *args, **kwargs)
            else:
                self.runner = "v2"
                ATSLogitsProcessorV2.__init__(self, vllm_config, *args, **kwargs)

        def apply(self, logits: Tensor, ctx: Any = None) -> Tensor:
            if ctx is None:
                return ATSLogitsProcessorV1.apply(self, logits)
            return ATSLogitsProcessorV2.apply(self, logits, ctx)

else:  # pragma: no cover - vLLM 0.29 / 0.30: the V1 runner is the only one with custom processors
    ATSLogitsProcessorV2 = None

    class ATSLogitsProcessor(ATSLogitsProcessorV1):
        """ATS for vLLM versions without the Model Runner V2 interface."""

        runner = "v1"
