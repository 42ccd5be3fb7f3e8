"""Engine-agnostic Adaptive Temperature Sampling (hapo-spec A) over a batch of logits rows.

An engine's logits processor hands over the logits `[N, V]` of one decoding step and, per row,
either the ATS parameters of the request that owns the row (`ATSRowParams`) or None (a request
without ATS, or a greedy one: untouched). `ATSScaler.apply` divides each ATS row by its factor
`1 + tau * h`, where h is the normalised entropy of that row's RAW logits under the request's
`EntropyStats` (clamped to [-1, 1]); the engine then divides by its own base temperature, so the
token is sampled at `T = T_base * (1 + tau * h)`, exactly `hapo_cli.algo.adaptive_temperature`.

The maths is not re-implemented here: each group of rows that shares the same parameters is
passed, in one vectorised call, to `hapo_cli.algo.adaptive_temperature(rows, 1.0, stats, tau,
mode)`, which returns the factor itself (`1.0 * (1 + tau * h)` is exact in floating point), so
`factor * T_base` is bit-identical to `adaptive_temperature(rows, T_base, ...)`. Rows without
ATS are never written to (bit-identical).

How a request carries its parameters through an engine (vLLM: `SamplingParams.extra_args`):

    {"hapo_ats": {"stats": {"q": ..., "s": ..., "z_max": ..., "z_min": ...},
                  "tau": 0.05, "mode": "paper",
                  "row_id": "c3:17"}}        # optional: lets the engine report per-token factors

Pure torch + `hapo_cli.algo`; no engine import.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor

__all__ = [
    "ATS_EXTRA_ARGS_KEY",
    "GREEDY_EPS",
    "ATSRowParams",
    "ATSScaler",
    "apply_ats",
    "ats_extra_args",
    "ats_row_id",
    "request_ats_params",
]

ATS_EXTRA_ARGS_KEY = "hapo_ats"  # the key of the ATS parameters in a request's extra args
GREEDY_EPS = 1e-5  # temperature below this is greedy decoding (vLLM's _SAMPLING_EPS): ATS never applies
_STATS_KEYS = ("q", "s", "z_max", "z_min")


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"hapo ATS: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"hapo ATS: {name} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class ATSRowParams:
    """The ATS parameters of one request: the previous step's EntropyStats, tau and the h mode.

    Hashable; rows with equal parameters are scaled together in one vectorised call.
    """

    q: float  # pivot Q (log-entropy quantile)
    s: float  # RMS scale about the pivot (> 0)
    z_max: float  # largest positive z (> 0)
    z_min: float  # smallest negative z (< 0)
    tau: float = 0.05  # T = T_base * (1 + tau * h), tau in [0, 1)
    mode: str = "paper"  # "paper" or "reference" normalisation of h

    def __post_init__(self) -> None:
        from hapo_cli.algo import NORMALIZE_MODES

        for name in (*_STATS_KEYS, "tau"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if not self.s > 0.0:
            raise ValueError(f"hapo ATS: stats.s must be > 0, got {self.s!r}")
        if not self.z_max > 0.0:
            raise ValueError(f"hapo ATS: stats.z_max must be > 0, got {self.z_max!r}")
        if not self.z_min < 0.0:
            raise ValueError(f"hapo ATS: stats.z_min must be < 0, got {self.z_min!r}")
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"hapo ATS: tau must be in [0, 1) so that 1 + tau*h > 0, got {self.tau!r}")
        if self.mode not in NORMALIZE_MODES:
            raise ValueError(f"hapo ATS: unknown mode {self.mode!r}; valid modes: {', '.join(NORMALIZE_MODES)}")

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any] | Any, tau: float = 0.05, mode: str = "paper") -> ATSRowParams:
        """From `EntropyStats.as_dict()` (or an `EntropyStats`) plus tau and mode."""
        if hasattr(stats, "as_dict") and callable(stats.as_dict):
            stats = stats.as_dict()
        if not isinstance(stats, Mapping):
            raise ValueError(f"hapo ATS: stats must be a mapping with keys {list(_STATS_KEYS)}, got {type(stats).__name__}")
        missing = [k for k in _STATS_KEYS if k not in stats]
        if missing:
            raise ValueError(f"hapo ATS: stats is missing {missing}; expected keys {list(_STATS_KEYS)}")
        return cls(**{k: stats[k] for k in _STATS_KEYS}, tau=tau, mode=mode)

    @classmethod
    def from_ats(cls, ats: Any) -> ATSRowParams:
        """From a `hapo_cli.rollout.base.ATSParams`."""
        return cls.from_stats(ats.stats, tau=ats.tau, mode=ats.mode)

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None) -> ATSRowParams | None:
        """From a request's extra args (`{"hapo_ats": {...}}`); None when the key is absent or None.

        Raises ValueError (one line, naming the field) when the entry is malformed.
        """
        if not extra_args:
            return None
        entry = extra_args.get(ATS_EXTRA_ARGS_KEY)
        if entry is None:
            return None
        if not isinstance(entry, Mapping):
            raise ValueError(f"hapo ATS: extra_args[{ATS_EXTRA_ARGS_KEY!r}] must be a mapping, got {type(entry).__name__}")
        unknown = sorted(set(entry) - {"stats", "tau", "mode", "row_id"})
        if unknown:
            raise ValueError(f"hapo ATS: unknown keys {unknown} in extra_args[{ATS_EXTRA_ARGS_KEY!r}]; "
                             "valid keys: stats, tau, mode, row_id")
        if "stats" not in entry:
            raise ValueError(f"hapo ATS: extra_args[{ATS_EXTRA_ARGS_KEY!r}] needs 'stats' (EntropyStats.as_dict())")
        return cls.from_stats(entry["stats"], tau=entry.get("tau", 0.05), mode=entry.get("mode", "paper"))

    @property
    def key(self) -> tuple:
        return (self.q, self.s, self.z_max, self.z_min, self.tau, self.mode)

    def stats_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in _STATS_KEYS}

    def entropy_stats(self, device: torch.device | str | None = None):
        """The stats as `hapo_cli.algo.EntropyStats` (float32 0-dim tensors on `device`)."""
        from hapo_cli.algo import EntropyStats

        return EntropyStats.from_dict(self.stats_dict(), device=device)

    def to_extra_args(self, row_id: str | None = None) -> dict[str, Any]:
        """The request's extra args entry: `{"hapo_ats": {...}}` (plain floats and strings)."""
        entry: dict[str, Any] = {"stats": self.stats_dict(), "tau": self.tau, "mode": self.mode}
        if row_id is not None:
            entry["row_id"] = str(row_id)
        return {ATS_EXTRA_ARGS_KEY: entry}


def ats_extra_args(ats: Any, row_id: str | None = None) -> dict[str, Any] | None:
    """`ATSParams` (or None) -> the extra args dict a request carries (None: no ATS)."""
    if ats is None:
        return None
    return ATSRowParams.from_ats(ats).to_extra_args(row_id)


def ats_row_id(extra_args: Mapping[str, Any] | None) -> str | None:
    """The optional `row_id` of a request's ATS entry (used to report per-token factors)."""
    if not extra_args:
        return None
    entry = extra_args.get(ATS_EXTRA_ARGS_KEY)
    if not isinstance(entry, Mapping) or entry.get("row_id") is None:
        return None
    return str(entry["row_id"])


def request_ats_params(temperature: float | None, extra_args: Mapping[str, Any] | None) -> ATSRowParams | None:
    """The ATS parameters a request's rows get, or None (no ATS entry, or greedy decoding).

    Greedy requests (temperature < GREEDY_EPS) are left untouched even with an ATS entry
    (spec A: ATS changes the sampling temperature; greedy decoding has none). A malformed entry
    raises ValueError also for greedy requests, so a bad request never passes silently.
    """
    params = ATSRowParams.from_extra_args(extra_args)
    if params is None:
        return None
    if temperature is None or float(temperature) < GREEDY_EPS:
        return None
    return params


class ATSScaler:
    """Applies ATS to logits rows; caches each distinct parameter set's EntropyStats per device.

    `apply(logits [N, V], rows)` with `rows[i]` an `ATSRowParams` or None. Rows sharing the
    same parameters are processed in one call of `hapo_cli.algo.adaptive_temperature`; when a
    single parameter set covers every row (the usual case: one training step's statistics for
    the whole batch) the whole tensor is processed without any gather.
    """

    def __init__(self, max_cached: int = 32, entropy_fn=None):
        self.max_cached = int(max_cached)
        self._stats: OrderedDict[tuple, Any] = OrderedDict()
        # `logits [n, V] -> H [n]` of the raw logits (the HF engine's fused EntropyKernel); None: algo.token_entropy
        self.entropy_fn = entropy_fn

    def stats_for(self, params: ATSRowParams, device: torch.device):
        key = (params.key[:4], str(device))
        st = self._stats.get(key)
        if st is None:
            st = params.entropy_stats(device)
            self._stats[key] = st
            while len(self._stats) > self.max_cached:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(key)
        return st

    def _factor(self, logits: Tensor, params: ATSRowParams, entropy: Tensor | None = None) -> Tensor:
        from hapo_cli.algo import adaptive_temperature

        stats = self.stats_for(params, logits.device)
        if entropy is None and self.entropy_fn is not None:
            entropy = self.entropy_fn(logits)  # [n]
        return adaptive_temperature(logits, 1.0, stats, params.tau, mode=params.mode, entropy=entropy)  # [n] = 1 + tau*h

    def apply(self, logits: Tensor, rows: Sequence[ATSRowParams | None], inplace: bool = False,
              entropy: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (`logits [N, V]` with ATS rows divided by their factor, `factor [N]` float32).

        `factor[i]` is `1 + tau * h_i` for ATS rows and exactly 1.0 for untouched rows (whose
        logits are never written). `inplace=True` modifies and returns `logits` itself (then
        the only `[N, V]` pass beyond the entropy is the division). `entropy [N]`: the entropy of
        these raw logits when the engine already has it (the HF engine's rollout entropy at
        T_base = 1), so it is not computed twice.
        """
        if logits.dim() != 2:
            raise ValueError(f"ATSScaler.apply: logits must be [N, V], got shape {tuple(logits.shape)}")
        n = logits.shape[0]
        if len(rows) != n:
            raise ValueError(f"ATSScaler.apply: {len(rows)} row parameters for {n} logits rows")
        out = logits if inplace else logits.clone()
        groups: dict[tuple, tuple[ATSRowParams, list[int]]] = {}
        for i, p in enumerate(rows):
            if p is not None:
                groups.setdefault(p.key, (p, []))[1].append(i)
        if not groups:
            return out, torch.ones(n, dtype=torch.float32, device=logits.device)
        if len(groups) == 1:
            params, idx = next(iter(groups.values()))
            if len(idx) == n:  # every row, one parameter set: no gather
                f = self._factor(logits, params, entropy)  # [N]
                out.div_(f.to(out.dtype).unsqueeze(-1))
                return out, f.float()
        factor = torch.ones(n, dtype=torch.float32, device=logits.device)
        for params, idx in groups.values():
            it = torch.tensor(idx, dtype=torch.long, device=logits.device)  # [n_g]
            sub = logits.index_select(0, it)  # [n_g, V]
            f = self._factor(sub, params, None if entropy is None else entropy.index_select(0, it))  # [n_g]
            out.index_copy_(0, it, sub.div_(f.to(sub.dtype).unsqueeze(-1)))
            factor.index_copy_(0, it, f.float())
        return out, factor


def apply_ats(logits: Tensor, rows: Sequence[ATSRowParams | None], inplace: bool = False) -> tuple[Tensor, Tensor]:
    """One-shot `ATSScaler().apply(...)`: `(scaled logits [N, V], factor [N])`."""
    return ATSScaler().apply(logits, rows, inplace=inplace)
