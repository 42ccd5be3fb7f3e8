"""The rollout interface: every engine (hf, vllm) takes prompts as token ids and returns a `Rollout`.

Shapes: B = number of responses (prompts x samples), P = padded prompt length, L = padded
response length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class SamplingParams:
    """How to sample. `ats` carries Adaptive Temperature Sampling (hapo-spec A) or None."""

    n: int = 1  # samples per prompt (the group size G)
    temperature: float = 1.0  # base temperature T_base; 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass
    top_k: int = 0  # 0 disables top-k
    max_new_tokens: int = 64  # response length cap (Lmax)
    seed: int | None = None  # generator seed for this call (None: engine's running RNG)
    ats: ATSParams | None = None  # adaptive temperature; None (or greedy) leaves sampling untouched
    return_entropy: bool = False  # also return each generated position's entropy at T_base (Rollout.entropy)

    def samples_and_greedy(self) -> tuple[int, bool]:
        """(samples per prompt, greedy?); greedy decoding gives one response per prompt."""
        n, greedy = max(1, int(self.n)), self.temperature <= 0
        if greedy and n > 1:
            raise ValueError("greedy decoding (temperature 0) gives one response per prompt: use n=1")
        return n, greedy


@dataclass
class ATSParams:
    """Adaptive Temperature Sampling for one generation call (hapo-spec A)."""

    stats: dict[str, float]  # EntropyStats.as_dict() of the PREVIOUS training step
    tau: float = 0.05  # T = T_base * (1 + tau * h)
    mode: str = "paper"  # "paper" or "reference" normalisation of h


@dataclass
class Rollout:
    """A batch of generated responses, the same from every engine.

    Responses of prompt j are rows j*n .. j*n+n-1 (grouped, in prompt order).
    """

    prompt_ids: torch.Tensor  # [B, P] long, LEFT-padded with pad_token_id
    prompt_mask: torch.Tensor  # [B, P] long, 1 on prompt tokens
    response_ids: torch.Tensor  # [B, L] long, RIGHT-padded with pad_token_id
    response_mask: torch.Tensor  # [B, L] long, 1 on generated tokens (EOS included)
    logprobs: torch.Tensor | None  # [B, L] float32 log-prob of each sampled token under the sampling distribution
    temperatures: torch.Tensor  # [B, L] float32 effective temperature used at each token (T_base when ATS is off)
    finish_reasons: list[str]  # [B] "stop" (EOS) or "length" (hit max_new_tokens)
    texts: list[str]  # [B] decoded responses (special tokens skipped)
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific diagnostics
    entropy: torch.Tensor | None = None  # [B, L] float32 (float64 for float64 models) entropy at T_base of each generated position (0 at padding); None unless asked for

    _ROW_TENSORS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "temperatures", "entropy")

    @property
    def lengths(self) -> torch.Tensor:  # [B] long
        return self.response_mask.sum(-1)

    @property
    def truncated(self) -> torch.Tensor:  # [B] bool
        return torch.tensor([r == "length" for r in self.finish_reasons], dtype=torch.bool)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, index: list[int]) -> Rollout:
        """The rows `index` (in that order), padding unchanged."""
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = {k: None if getattr(self, k) is None else getattr(self, k)[idx] for k in self._ROW_TENSORS}
        return Rollout(**rows, finish_reasons=[self.finish_reasons[i] for i in index],
                       texts=[self.texts[i] for i in index], extra=select_extra(self.extra, index, len(self)))


class RolloutEngine(Protocol):
    """What the trainer and the evaluator need from a generation backend."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        """Generate `params.n` responses for each prompt (token ids, no padding)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (no-op when it shares the module)."""
        ...


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> (ids [N, P], mask [N, P])."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_right(seqs: list[list[int]], pad_id: int, value_dtype=torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists -> (values [N, L], mask [N, L])."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad_id, dtype=value_dtype)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(s, dtype=value_dtype)
            mask[i, : len(s)] = 1
    return out, mask


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts row-wise, re-padding prompts on the left and responses on the right."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    L = max(p.response_ids.shape[1] for p in parts)

    def left(x, value):
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)

    def right(x, value):
        return torch.nn.functional.pad(x, (0, L - x.shape[1]), value=value)

    def optional(name: str):  # a per-token field every part has, else None
        xs = [getattr(p, name) for p in parts]
        return torch.cat([right(x, 0.0) for x in xs]) if all(x is not None for x in xs) else None

    return Rollout(
        prompt_ids=torch.cat([left(p.prompt_ids, pad_id) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([right(p.response_ids, pad_id) for p in parts]),
        response_mask=torch.cat([right(p.response_mask, 0) for p in parts]),
        logprobs=optional("logprobs"),
        temperatures=torch.cat([right(p.temperatures, 0.0) for p in parts]),
        finish_reasons=[r for p in parts for r in p.finish_reasons],
        texts=[t for p in parts for t in p.texts],
        extra=concat_extra([p.extra for p in parts], [len(p) for p in parts]),
        entropy=optional("entropy"),
    )


def _is_per_row(value: Any, n: int) -> bool:
    """A per-row `extra` entry: a list or tuple of n items, or a tensor whose first dim is n."""
    if isinstance(value, torch.Tensor):
        return value.dim() >= 1 and value.shape[0] == n
    return isinstance(value, (list, tuple)) and len(value) == n


def select_extra(extra: dict[str, Any], index: list[int], n: int) -> dict[str, Any]:
    """`extra` of the rows `index`: per-row entries (length n) are indexed, others kept as they are."""
    out: dict[str, Any] = {}
    for k, v in extra.items():
        if not _is_per_row(v, n):
            out[k] = v
        elif isinstance(v, torch.Tensor):
            out[k] = v[torch.as_tensor(index, dtype=torch.long)]
        else:
            out[k] = type(v)(v[i] for i in index)
    return out


def concat_extra(extras: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Row-wise `extra` of stacked parts: per-row entries present in every part are concatenated
    (tensors right-padded with 0 to the widest), others taken from the first part that has them."""
    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for e in extras for k in e):
        vals = [e.get(k) for e in extras]
        if all(v is not None and _is_per_row(v, n) for v, n in zip(vals, sizes)):
            if all(isinstance(v, torch.Tensor) for v in vals):
                if vals[0].dim() >= 2:
                    w = max(v.shape[1] for v in vals)
                    vals = [torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, w - v.shape[1])) for v in vals]
                out[k] = torch.cat(vals)
            else:
                out[k] = [x for v in vals for x in v]
        else:
            out[k] = next(v for v in vals if v is not None)
    return out
