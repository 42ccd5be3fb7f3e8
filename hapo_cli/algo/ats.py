"""Adaptive Temperature Sampling (ATS): hapo-spec section A, HAPO component "A".

At every decoding step each sequence gets its own temperature `T = T_base * (1 + tau * h)`,
where `h` is the normalised entropy (spec 0) of the RAW next-token logits under the PREVIOUS
training step's `EntropyStats`, clamped to [-1, 1]: uncertain (forking) positions are sampled
hotter, confident ones colder. Engines apply it as a logits processor that divides the logits
by `(1 + tau * h)` before their own division by `T_base`; this module only computes T.
"""

from __future__ import annotations

import torch

from ._common import check_tensor, float_dtype
from .entropy import EntropyStats, _check_mode, normalize_entropy, token_entropy

Tensor = torch.Tensor

__all__ = ["adaptive_temperature"]


def adaptive_temperature(
    logits: Tensor,
    base_temperature: float | Tensor,
    stats: EntropyStats | None,
    tau: float,
    mode: str = "paper",
    entropy: Tensor | None = None,
) -> Tensor:
    """Per-sequence sampling temperature: `logits [N, V]` -> `T [N]`.

    Spec A: `T = base_temperature * (1 + tau * h)`, `h = normalize_entropy(H(softmax(logits)), stats, mode)`
    in [-1, 1]. `logits` are the raw logits (before any temperature); `base_temperature` is a
    float or an `[N]` tensor; `tau` in [0, 1) (so T stays positive; released recipes 0.05).
    `stats=None` (the first training step has no statistics yet) returns `T_base` for every
    row. In mode "reference" h >= 0 on the stats' own distribution, so low-entropy positions
    are sampled hotter too (the released code's behaviour). Float32 output (float64 for
    float64 logits); no gradient. `entropy [N]`: `token_entropy(logits)` when the caller already
    has it (an engine that keeps the rollout's entropy); then the logits are not read again.
    """
    fn = "adaptive_temperature"
    check_tensor(fn, "logits", logits)
    _check_mode(fn, mode)
    if logits.dim() != 2:
        raise ValueError(f"{fn}: logits must be [N, V], got shape {tuple(logits.shape)}")
    if not 0.0 <= float(tau) < 1.0:
        raise ValueError(f"{fn}: tau must be in [0, 1) so that 1 + tau*h > 0 for h in [-1, 1], got {tau!r}")
    cdtype = float_dtype(logits)
    n = logits.shape[0]
    if isinstance(base_temperature, torch.Tensor):
        if base_temperature.dim() > 1 or (base_temperature.dim() == 1 and base_temperature.shape[0] != n):
            raise ValueError(
                f"{fn}: base_temperature must be a float or an [N] tensor with N = {n}, "
                f"got shape {tuple(base_temperature.shape)}"
            )
        base = base_temperature.to(device=logits.device, dtype=cdtype).expand(n)
    else:
        if not float(base_temperature) > 0.0:
            raise ValueError(f"{fn}: base_temperature must be > 0, got {base_temperature!r}")
        base = torch.full((n,), float(base_temperature), dtype=cdtype, device=logits.device)
    if stats is None:
        return base.clone()
    with torch.no_grad():
        if entropy is None:
            entropy = token_entropy(logits.detach())  # [N]
        elif tuple(entropy.shape) != (n,):
            raise ValueError(f"{fn}: entropy must be [N] with N = {n}, got shape {tuple(entropy.shape)}")
        h = normalize_entropy(entropy.detach(), stats, mode=mode)  # [N] in [-1, 1]
        return base * (1.0 + float(tau) * h)  # [N]
