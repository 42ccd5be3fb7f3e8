"""DAPO pieces other than the loss: overlong reward shaping and dynamic-sampling group filtering.

hapo-spec "DAPO pieces". (Clip-higher is just `eps_high > eps_low` in `policy_loss`; token-mean is
its default aggregation.)
"""

from __future__ import annotations

import torch

from ._common import check_tensor, float_dtype, group_amax_amin, group_index

Tensor = torch.Tensor

__all__ = ["informative_groups", "overlong_penalty"]


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> Tensor:
    """Soft overlong punishment added to the reward: `lengths [B]` -> `[B]` float (<= 0).

    Spec "Overlong reward shaping": `penalty = min(0, -(len - (max_len - buffer_len)) / buffer_len * factor)`:
    0 up to `max_len - buffer_len` tokens, then linear down to `-factor` at `max_len`
    (released: max_len 10240, buffer_len 4096, factor 1.0). Requires `0 < buffer_len <= max_len`
    and `factor >= 0`. Float32 (float64 for float64 lengths).
    """
    fn = "overlong_penalty"
    check_tensor(fn, "lengths", lengths)
    if not 0 < buffer_len <= max_len:
        raise ValueError(
            f"{fn}: need 0 < buffer_len <= max_len, got buffer_len={buffer_len!r}, max_len={max_len!r}"
        )
    if not float(factor) >= 0.0:
        raise ValueError(f"{fn}: factor must be >= 0, got {factor!r}")
    expected = float(max_len - buffer_len)
    x = lengths.detach().to(float_dtype(lengths))  # [B]
    return ((expected - x) * (float(factor) / float(buffer_len))).clamp_max_(0.0)


def informative_groups(acc: Tensor, group_ids: Tensor) -> Tensor:
    """Dynamic-sampling filter: `acc [B]`, `group_ids [B]` int -> bool `[B]`.

    True where the response's group has NON-equal accuracies (some right, some wrong), i.e. the
    group carries a learning signal; groups whose accuracies are all equal are dropped by DAPO's
    dynamic sampling (decide by accuracy, not by the shaped score). Any id order, vectorised.
    """
    fn = "informative_groups"
    check_tensor(fn, "acc", acc)
    check_tensor(fn, "group_ids", group_ids)
    if acc.dim() != 1 or group_ids.shape != acc.shape:
        raise ValueError(
            f"{fn}: acc and group_ids must both be 1-D [B], got {tuple(acc.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"{fn}: group_ids must be an integer tensor, got {group_ids.dtype}")
    a = acc.detach().to(float_dtype(acc))  # [B]
    idx = group_index(group_ids)
    amax, amin = group_amax_amin(a, idx)
    return (amax > amin)[idx]
