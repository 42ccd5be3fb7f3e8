"""Token entropy, token log-probabilities and the entropy normalisation shared by every HAPO component.

hapo-spec section 0. Each response token t of response i has the entropy `H[i, t]` (nats) of
the policy's next-token distribution. HAPO works with a normalised entropy `h` in [-1, 1]:

1. `x = log(max(H, 1e-8))` on valid tokens,
2. pivot `Q = quantile(x, rho)` (nearest rank, rho = `pivot`, default 0.8),
3. `z = (x - Q) / s` with `s = sqrt(mean((x - Q)^2))` (RMS about the pivot, >= 1e-8),
4. `z_max = max(z | z > 0)` (>= 1e-8), `z_min = min(z | z < 0)` (<= -1e-8),
5. `h = z / z_max` where z > 0, and for z <= 0 `h = z / |z_min|` (mode "paper", signed) or
   `h = z / z_min` (mode "reference", the released code: a V shape in [0, 1] where both entropy
   tails count as "high").

`EntropyStats` holds `(Q, s, z_max, z_min)` so the statistics of one batch can be applied to
other tokens (the sampler uses the previous step's stats); applied h is clamped to [-1, 1].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import as_bool_mask, as_float_mask, check_same_shape, check_tensor, float_dtype

Tensor = torch.Tensor

__all__ = [
    "ENTROPY_FLOOR",
    "NORMALIZE_MODES",
    "EntropyStats",
    "entropy_stats",
    "normalize_batch_entropy",
    "normalize_entropy",
    "token_entropy",
    "token_logprobs",
]

ENTROPY_FLOOR = 1e-8  # spec 0 step 1: x = log(max(H, 1e-8)); also the floor of s and |z_max|, |z_min|
NORMALIZE_MODES = ("paper", "reference")  # valid `mode` values of normalize_entropy / adaptive_temperature
_CHUNK_ELEMENTS = 1 << 24  # default chunk: ~16M logits (64 MiB in float32) per chunk


# --------------------------------------------------------------------------------------------
# Chunked entropy and log-probabilities of [..., V] logits
# --------------------------------------------------------------------------------------------


def _row_blocks(x: Tensor) -> list[Tensor]:
    """`[..., V]` -> list of 2-D views `[n_k, V]` covering the rows in row-major order, without copying.

    One block when the leading dims can be flattened as a view (contiguous rows); otherwise
    (e.g. `logits[:, :-1]` of a `[B, L+1, V]` tensor) one block per index of the first dim, recursively.
    """
    if x.dim() <= 1:
        return [x.reshape(1, -1)]
    try:
        return [x.view(-1, x.shape[-1])]
    except RuntimeError:
        return [blk for sub in x.unbind(0) for blk in _row_blocks(sub)]


def _chunk_rows(vocab: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per chunk) or None, got {chunk_size!r}")
    return chunk_size


def _iter_chunks(logits: Tensor, rows: int):
    """Yield `(row_offset, chunk [n, V])` over the flattened leading dims of `logits [..., V]`."""
    offset = 0
    for block in _row_blocks(logits):
        for start in range(0, block.shape[0], rows):
            chunk = block[start : start + rows]
            yield offset + start, chunk
        offset += block.shape[0]


def _chunk_stats(chunk: Tensor, cdtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`chunk [n, V]` (any float dtype) -> `(m [n, 1], xm [n, V], e [n, V], s [n])` in cdtype.

    `m = max_v x_v`, `xm = x - m` (floored at the dtype's min so that -inf logits, a masked
    vocabulary, give `e * xm = 0` rather than NaN), `e = exp(xm)`, `s = sum_v e_v`. Everything
    relative to the max keeps float32 accurate to ~1 ulp of H even for a 152k vocabulary (about
    10x better than `-sum(p * log_softmax(x))`).
    """
    x = chunk.to(cdtype)  # the one float32 (or float64) working copy of this chunk
    m = x.amax(dim=-1, keepdim=True)  # [n, 1]
    xm = (x.sub_(m) if x is not chunk else x - m).clamp_min_(torch.finfo(cdtype).min)  # [n, V]
    e = torch.exp(xm)  # [n, V]
    return m, xm, e, e.sum(dim=-1)


class _TokenEntropy(torch.autograd.Function):
    """H = log s - sum_v e_v (x_v - m) / s per row (= -sum p log p), chunked.

    Backward: dH/dx_v = -p_v (log p_v + H), recomputed chunk by chunk from the saved
    logsumexp, so no float32 copy of the logits is kept between forward and backward.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, rows: int) -> Tensor:  # [..., V] -> [...]
        cdtype = float_dtype(logits)
        n = logits.shape[:-1].numel()
        ent = torch.empty(n, dtype=cdtype, device=logits.device)  # [N]
        lse = torch.empty(n, dtype=cdtype, device=logits.device)  # [N]
        for off, chunk in _iter_chunks(logits, rows):
            sl = slice(off, off + chunk.shape[0])
            m, xm, e, s = _chunk_stats(chunk, cdtype)
            log_s = torch.log(s)  # [n]
            ent[sl] = log_s - e.mul_(xm).sum(dim=-1) / s
            lse[sl] = m.squeeze(-1) + log_s
        ctx.rows = rows
        ctx.save_for_backward(logits, ent, lse)
        return ent.view(logits.shape[:-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, ent, lse = ctx.saved_tensors
        cdtype = ent.dtype
        g = grad_out.reshape(-1).to(cdtype)  # [N]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # contiguous [..., V]
        grad_rows = grad.view(-1, logits.shape[-1])
        for off, chunk in _iter_chunks(logits, ctx.rows):
            sl = slice(off, off + chunk.shape[0])
            logp = chunk.to(cdtype)
            logp = (logp.sub_(lse[sl, None]) if logp is not chunk else logp - lse[sl, None]).clamp_min_(
                torch.finfo(cdtype).min
            )  # [n, V] log p
            p = torch.exp(logp)
            # dH/dx = -p * (log p + H), times the incoming gradient
            grad_rows[sl] = logp.add_(ent[sl, None]).mul_(p).mul_(-g[sl, None])
        return grad, None


class _TokenLogprobs(torch.autograd.Function):
    """log p(y) = (x_y - m) - log s per row, chunked; backward d/dx_v = g (1[v = y] - p_v)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, rows: int) -> Tensor:  # [..., V], [...] -> [...]
        cdtype = float_dtype(logits)
        flat_labels = labels.reshape(-1)  # [N]
        n = flat_labels.shape[0]
        out = torch.empty(n, dtype=cdtype, device=logits.device)  # [N]
        lse = torch.empty(n, dtype=cdtype, device=logits.device)  # [N]
        for off, chunk in _iter_chunks(logits, rows):
            sl = slice(off, off + chunk.shape[0])
            m, xm, _, s = _chunk_stats(chunk, cdtype)
            log_s = torch.log(s)
            out[sl] = xm.gather(-1, flat_labels[sl, None]).squeeze(-1) - log_s
            lse[sl] = m.squeeze(-1) + log_s
        ctx.rows = rows
        ctx.save_for_backward(logits, flat_labels, lse)
        return out.view(labels.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, flat_labels, lse = ctx.saved_tensors
        cdtype = lse.dtype
        g = grad_out.reshape(-1).to(cdtype)  # [N]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_rows = grad.view(-1, logits.shape[-1])
        for off, chunk in _iter_chunks(logits, ctx.rows):
            sl = slice(off, off + chunk.shape[0])
            x = chunk.to(cdtype)
            p = (x.sub_(lse[sl, None]) if x is not chunk else x - lse[sl, None]).exp_()  # [n, V]
            gs = g[sl, None]  # [n, 1]
            p.mul_(-gs).scatter_add_(-1, flat_labels[sl, None], gs)  # g * (onehot - p)
            grad_rows[sl] = p
        return grad, None, None


def token_entropy(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Entropy in nats of softmax(logits) per position: `[..., V]` -> `[...]`.

    `H = logsumexp(x) - sum_v softmax(x)_v x_v = -sum_v p_v log p_v` (spec: notation, H[i, t]).
    Computed chunk by chunk over the flattened leading dims (`chunk_size` rows per chunk; None
    picks ~16M logits per chunk, i.e. 110 rows for a 151,936-token vocabulary), each chunk
    converted to float32 on the fly, so a `[B, L, V]` bf16 input never needs a full-size float32
    copy. Output dtype: float32, or float64 when the logits are float64 (so float64 inputs keep
    float64 precision). Differentiable (a chunked custom backward, no saved float32 copies).
    Pass the logits at the temperature you want the entropy of (spec: the base temperature).
    """
    check_tensor("token_entropy", "logits", logits)
    if not logits.dtype.is_floating_point:
        raise ValueError(f"token_entropy: logits must be a floating tensor, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"token_entropy: logits must be [..., V] with V >= 1, got shape {tuple(logits.shape)}"
        )
    rows = _chunk_rows(logits.shape[-1], chunk_size)
    return _TokenEntropy.apply(logits, rows)


def token_logprobs(logits: Tensor, labels: Tensor, chunk_size: int | None = None) -> Tensor:
    """Log-probability of `labels` under softmax(logits): `[..., V]`, `[...]` long -> `[...]`.

    `log p(y) = x_y - logsumexp(x)`, chunked exactly like `token_entropy` (float32 per chunk,
    float64 for float64 logits). Differentiable w.r.t. `logits` with a chunked backward
    (`d/dx_v = g * (1[v = y] - p_v)`), so the only full-size tensor it allocates is the gradient
    itself, in the logits' dtype. Labels must lie in `[0, V)` (also at padded positions; mask
    those afterwards).
    """
    check_tensor("token_logprobs", "logits", logits)
    check_tensor("token_logprobs", "labels", labels)
    if not logits.dtype.is_floating_point:
        raise ValueError(f"token_logprobs: logits must be a floating tensor, got {logits.dtype}")
    if labels.dtype not in (torch.long, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"token_logprobs: labels must be an integer tensor, got {labels.dtype}")
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(
            f"token_logprobs: shape mismatch: logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + [V]"
        )
    rows = _chunk_rows(logits.shape[-1], chunk_size)
    return _TokenLogprobs.apply(logits, labels.long(), rows)


# --------------------------------------------------------------------------------------------
# EntropyStats and the normalisation h
# --------------------------------------------------------------------------------------------


class EntropyStats(NamedTuple):
    """Statistics of spec 0 (steps 2-4) as 0-dim tensors: pivot `q` (= Q, in log-entropy), RMS scale
    `s`, `z_max` (> 0) and `z_min` (< 0). Computed by `entropy_stats`, applied by
    `normalize_entropy` / `adaptive_temperature`."""

    q: Tensor  # [] pivot Q = quantile(log H, rho)
    s: Tensor  # [] sqrt(mean((log H - Q)^2)) >= 1e-8
    z_max: Tensor  # [] max positive z >= 1e-8
    z_min: Tensor  # [] min negative z <= -1e-8

    def as_dict(self) -> dict[str, float]:
        """Plain floats `{"q", "s", "z_max", "z_min"}` for checkpoints, logging and samplers.

        The one place in `hapo_cli.algo` that syncs to the host (`.item()`).
        """
        return {name: float(getattr(self, name).item()) for name in self._fields}

    @classmethod
    def from_dict(
        cls, d: dict, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> EntropyStats:
        """Inverse of `as_dict`. Raises ValueError on missing keys or non-finite values."""
        missing = [k for k in cls._fields if k not in d]
        if missing:
            raise ValueError(f"EntropyStats.from_dict: missing keys {missing}; expected {list(cls._fields)}")
        values = {}
        for k in cls._fields:
            v = float(d[k])
            if not math.isfinite(v):
                raise ValueError(f"EntropyStats.from_dict: {k} must be finite, got {d[k]!r}")
            values[k] = torch.tensor(v, dtype=dtype, device=device)
        return cls(**values)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EntropyStats:
        """The same statistics on another device (and optionally dtype)."""
        return EntropyStats(*(t.to(device=device, dtype=dtype) for t in self))


_INF_BITS = {torch.float32: 0x7F800000, torch.float64: 0x7FF0000000000000}  # bit pattern of +inf


def _histogram(idx: Tensor, nbins: int) -> Tensor:
    """Counts of each value of `idx [N]` (long, all in [0, nbins)) -> `[nbins]` long.

    `torch.bincount` is the fastest on CPU, but on accelerators it reads `idx.max()` on the host
    (a sync), so there an `index_add_` of ones is used instead.
    """
    if idx.device.type == "cpu":
        return torch.bincount(idx, minlength=nbins)
    ones = torch.ones((), dtype=torch.long, device=idx.device).expand(idx.shape[0])
    return torch.zeros(nbins, dtype=torch.long, device=idx.device).index_add_(0, idx, ones)


def _nearest_rank(c: Tensor, valid: Tensor, pivot: float) -> Tensor:
    """Nearest-rank quantile of the valid entries of `c [N]` (floats >= 0, finite where valid).

    Returns the valid element of rank `round(pivot * (n - 1))` (0-based, round half to even, rank
    computed in c's dtype), i.e. exactly `torch.quantile(c[valid], pivot, interpolation="nearest")`,
    as a 0-dim tensor.

    Radix select on the IEEE-754 bit patterns, which sort like the values for non-negative floats:
    invalid entries are given the pattern of +inf (so the n valid ones are the n smallest, and the
    wanted element has the same rank among ALL entries). Then 16-bit digits are fixed from the
    top, one histogram pass each (2 passes for float32, 4 for float64): bin 0 counts the entries
    below the digits fixed so far, bins 1..2^16 the next digit of the entries that match them,
    the last bin those above; the bin where the cumulative count passes the rank is the digit.
    O(N), no sort, and the rank stays a tensor: no device->host sync, unlike torch.quantile /
    torch.kthvalue (and no 16M-element limit as in torch.quantile).
    """
    if c.dtype == torch.float64:
        int_dtype, bits = torch.int64, 64
    else:
        int_dtype, bits = torch.int32, 32
    key = c.view(int_dtype) | ((~valid).to(int_dtype) * _INF_BITS[c.dtype])  # [N] >= 0
    n = torch.count_nonzero(valid)  # [] long
    rank = torch.round((n - 1).to(c.dtype) * pivot).long().clamp_min_(0).reshape(1)  # [1] 0-based
    # Top digit: the sign bit is 0, so key >> (bits - 16) < 2^15; bin = digit.
    cum = torch.cumsum(_histogram((key >> (bits - 16)).long(), 1 << 16), 0)  # [2^16]
    prefix = torch.searchsorted(cum, rank, right=True).to(int_dtype)  # [1] the digits fixed so far
    nbins = (1 << 16) + 2
    for shift in range(bits - 32, -1, -16):
        part = key >> shift if shift else key  # [N] the fixed digits followed by the next one
        bins = (part - ((prefix << 16) - 1)).clamp_(0, nbins - 1)  # [N] 0 below, 1 + digit, last above
        cum = torch.cumsum(_histogram(bins.long(), nbins), 0)  # [nbins]
        b = torch.searchsorted(cum, rank, right=True).clamp_(1, 1 << 16)  # [1] bin holding the rank
        prefix = (prefix << 16) | (b - 1).to(int_dtype)
    return prefix.view(c.dtype).reshape(())


def _log_entropy(entropy: Tensor, cdtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """`(c, x)` with `c = max(H, 1e-8)` and `x = log c` (spec 0 step 1), both like `entropy`, in cdtype.

    c is also capped at the dtype's max so that an overflowed (inf) entropy at a masked position
    cannot turn into NaN when masked by multiplication.
    """
    c = entropy.detach().to(cdtype).clamp(ENTROPY_FLOOR, torch.finfo(cdtype).max)
    return c, torch.log(c)


def _stats_and_centred(
    entropy: Tensor, mask: Tensor, pivot: float, fn: str
) -> tuple[EntropyStats, Tensor, Tensor]:
    """Shared by entropy_stats / normalize_batch_entropy: `(stats, d = (x - Q) * mask [B, L], mask_f [B, L])`."""
    check_tensor(fn, "entropy", entropy)
    check_tensor(fn, "mask", mask)
    check_same_shape(fn, entropy=entropy, mask=mask)
    if not 0.0 <= float(pivot) <= 1.0:
        raise ValueError(f"{fn}: pivot must be in [0, 1], got {pivot!r}")
    cdtype = float_dtype(entropy)
    valid = as_bool_mask(mask)  # [B, L]
    mask_f = as_float_mask(valid, cdtype)  # [B, L]
    c, x = _log_entropy(entropy, cdtype)  # [B, L], [B, L]
    n = torch.count_nonzero(valid)  # [] long
    has = n > 0
    q = torch.log(_nearest_rank(c.reshape(-1), valid.reshape(-1), float(pivot)))  # [] pivot Q
    q = torch.where(has, q, 0.0)  # no valid token: neutral stats (0, 1, 1e-8, -1e-8)
    d = (x - q).mul_(mask_f)  # [B, L] z * s on valid tokens, 0 elsewhere
    nf = n.clamp_min(1).to(cdtype)
    flat = d.reshape(-1)
    s = torch.sqrt(torch.dot(flat, flat) / nf).clamp_min(ENTROPY_FLOOR)  # [] RMS about the pivot
    d_min, d_max = torch.aminmax(flat)  # the zeros at invalid positions never change the clamped results
    z_max = (d_max / s).clamp_min(ENTROPY_FLOOR)
    z_min = (d_min / s).clamp_max(-ENTROPY_FLOOR)
    s = torch.where(has, s, 1.0)
    return EntropyStats(q=q, s=s, z_max=z_max, z_min=z_min), d, mask_f


def entropy_stats(entropy: Tensor, mask: Tensor, pivot: float = 0.8) -> EntropyStats:
    """`EntropyStats` of the valid tokens: `entropy [B, L]`, `mask [B, L]` (bool/int/float, non-zero = valid).

    Spec 0 steps 1-4: `x = log(max(H, 1e-8))`; `Q` = nearest-rank quantile of x at `pivot`
    (identical to `torch.quantile(x[mask], pivot, interpolation="nearest")`: rank
    `round(pivot * (n - 1))`, half to even; but O(N) and sync-free); `s = max(sqrt(mean((x - Q)^2)), 1e-8)`;
    `z_max = max(max z, 1e-8)`, `z_min = min(min z, -1e-8)` with `z = (x - Q) / s` over valid
    tokens. Entropy values at masked positions are ignored (they must be finite). No gradient.
    With no valid token at all the stats are the neutral `(0, 1, 1e-8, -1e-8)`.
    Computed in float32 (float64 for float64 entropy).
    """
    stats, _, _ = _stats_and_centred(entropy, mask, pivot, "entropy_stats")
    return stats


def _check_mode(fn: str, mode: str) -> None:
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"{fn}: unknown mode {mode!r}; valid modes: {', '.join(NORMALIZE_MODES)}")


def _h_from_centred(d: Tensor, stats: EntropyStats, mode: str) -> Tensor:
    """`d = x - Q` (any shape) -> h, clamped to [-1, 1] (spec 0 step 5).

    `h = max(d, 0) / (s z_max) + min(d, 0) / (s |z_min|)` in paper mode (`/ (s z_min)` in reference
    mode), i.e. `z / z_max` for z > 0 and `z / |z_min|` (or `z / z_min`) for z <= 0.
    """
    q, s, z_max, z_min = (t.to(device=d.device, dtype=d.dtype) for t in stats)
    inv_pos = 1.0 / (s * z_max)
    inv_neg = 1.0 / (s * z_min.abs()) if mode == "paper" else 1.0 / (s * z_min)
    h = d.clamp_min(0.0).mul_(inv_pos)
    h += d.clamp_max(0.0).mul_(inv_neg)
    return h.clamp_(-1.0, 1.0)


def normalize_entropy(
    entropy: Tensor, stats: EntropyStats, mask: Tensor | None = None, mode: str = "paper"
) -> Tensor:
    """Normalised entropy `h` (the paper's h-hat): `entropy [...]` -> `h [...]` (e.g. `[B, L]`).

    Spec 0 step 5 with `z = (log(max(H, 1e-8)) - Q) / s`:
    - mode "paper": `h = z / z_max` for z > 0, `h = z / |z_min|` for z <= 0 (signed, low entropy -> -1).
    - mode "reference" (released code): `h = z / z_max` for z > 0, `h = z / z_min` for z <= 0, so a
      very LOW-entropy token gets h close to +1 (a V shape in [0, 1]; both tails count as "high").
    Then clamped to [-1, 1] (matters when `stats` come from another batch) and multiplied by
    `mask` (optional, any dtype, non-zero = valid), so masked positions get 0 (their entropy must
    be finite). No gradient. Float32 (float64 for float64 entropy).
    """
    fn = "normalize_entropy"
    check_tensor(fn, "entropy", entropy)
    _check_mode(fn, mode)
    if not isinstance(stats, EntropyStats):
        raise ValueError(f"{fn}: stats must be an EntropyStats, got {type(stats).__name__}")
    if mask is not None:
        check_tensor(fn, "mask", mask)
        check_same_shape(fn, entropy=entropy, mask=mask)
    cdtype = float_dtype(entropy)
    _, x = _log_entropy(entropy, cdtype)
    h = _h_from_centred(x.sub_(stats.q.to(device=x.device, dtype=cdtype)), stats, mode)
    if mask is not None:
        h.mul_(as_float_mask(mask, cdtype))
    return h


def normalize_batch_entropy(
    entropy: Tensor, mask: Tensor, pivot: float = 0.8, mode: str = "paper"
) -> tuple[Tensor, EntropyStats]:
    """`entropy_stats` and `normalize_entropy` of the same batch in one pass: -> `(h [B, L], stats)`.

    Equal to `stats = entropy_stats(entropy, mask, pivot); h = normalize_entropy(entropy, stats, mask, mode)`
    but computes `log H` once (stats_scope "batch" over the training batch, or "microbatch"
    inside the loss). No gradient.
    """
    fn = "normalize_batch_entropy"
    _check_mode(fn, mode)
    stats, d, _ = _stats_and_centred(entropy, mask, pivot, fn)
    return _h_from_centred(d, stats, mode), stats  # d is 0 at masked positions, so h is too
