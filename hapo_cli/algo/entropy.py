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

import functools
import math
from typing import NamedTuple

import torch

from ._common import as_float_mask, check_same_shape, check_tensor, count_ones, float_dtype

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
    "token_logprobs_and_entropy",
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
    """`chunk [n, V]` (any float dtype) -> `(m [n, 1], xm [n, V], e [n, V], r [n])` in cdtype.

    `m = max_v x_v`, `xm = x - m` (floored at the dtype's min so that -inf logits, a masked
    vocabulary, give `e * xm = 0` rather than NaN), `e = exp(xm)` with the argmax entry set to 0,
    and `r = sum_v e_v`: the probability mass off the maximum relative to it, so the partition
    function is `s = 1 + r` and `log s = log1p(r)`. Keeping `r` apart is what makes
    near-deterministic rows exact: `log(1 + r)` in float32 rounds every `r < 6e-8` to 0 (a 4%
    error at H = 1e-3 and worse below), `log1p(r)` does not. `H = log1p(r) - sum_v e_v xm_v / s`
    is then a sum of two non-negative terms: relative error ~1e-7 in float32 for any H.
    """
    x = chunk.to(cdtype)  # the one float32 (or float64) working copy of this chunk
    idx = x.argmax(dim=-1, keepdim=True)  # [n, 1]
    m = x.gather(-1, idx)  # [n, 1]
    xm = (x.sub_(m) if x is not chunk else x - m).clamp_min_(torch.finfo(cdtype).min)  # [n, V]
    e = torch.exp(xm).scatter_(-1, idx, 0.0)  # [n, V] the maximum's own exp(0) = 1 is left out
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
            m, xm, e, r = _chunk_stats(chunk, cdtype)
            log_s = torch.log1p(r)  # [n] log of the partition function relative to the max
            ent[sl] = log_s - e.mul_(xm).sum(dim=-1) / (1.0 + r)
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
            m, xm, _, r = _chunk_stats(chunk, cdtype)
            log_s = torch.log1p(r)
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


class _TokenLogprobsEntropy(torch.autograd.Function):
    """Both at once from one working copy per chunk: z = x / T, log p(y) = (z_y - m) - log1p(r),
    H = log1p(r) - sum_v e_v (z_v - m) / (1 + r) (r: the mass off the maximum, see _chunk_stats). Backward, per chunk from the saved logsumexp:
    d/dx_v = (g_lp (1[v = y] - p_v) - g_H p_v (log p_v + H)) / T, one gradient in the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, rows: int, temperature: float):
        cdtype = float_dtype(logits)
        flat_labels = labels.reshape(-1)  # [N]
        n = flat_labels.shape[0]
        lp = torch.empty(n, dtype=cdtype, device=logits.device)  # [N]
        ent = torch.empty(n, dtype=cdtype, device=logits.device)  # [N]
        lse = torch.empty(n, dtype=cdtype, device=logits.device)  # [N] logsumexp of z
        for off, chunk in _iter_chunks(logits, rows):
            sl = slice(off, off + chunk.shape[0])
            if temperature != 1.0:  # the scaled working copy, exactly `logits.float() / T`
                chunk = chunk.to(cdtype) / temperature
            m, xm, e, r = _chunk_stats(chunk, cdtype)
            log_s = torch.log1p(r)  # see _chunk_stats: exact for near-deterministic rows
            lp[sl] = xm.gather(-1, flat_labels[sl, None]).squeeze(-1) - log_s
            ent[sl] = log_s - e.mul_(xm).sum(dim=-1) / (1.0 + r)
            lse[sl] = m.squeeze(-1) + log_s
        ctx.rows, ctx.temperature = rows, temperature
        ctx.save_for_backward(logits, flat_labels, lse, ent)
        return lp.view(labels.shape), ent.view(labels.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp: Tensor, g_ent: Tensor):
        logits, flat_labels, lse, ent = ctx.saved_tensors
        cdtype, T = lse.dtype, ctx.temperature
        g1 = None if g_lp is None else g_lp.reshape(-1).to(cdtype)  # [N]
        g2 = None if g_ent is None else g_ent.reshape(-1).to(cdtype)  # [N]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_rows = grad.view(-1, logits.shape[-1])
        for off, chunk in _iter_chunks(logits, ctx.rows):
            sl = slice(off, off + chunk.shape[0])
            z = chunk.to(cdtype) / T if T != 1.0 else chunk.to(cdtype)
            logp = (z.sub_(lse[sl, None]) if z is not chunk else z - lse[sl, None]).clamp_min_(torch.finfo(cdtype).min)
            p = torch.exp(logp)  # [n, V]
            if g2 is not None:  # -g_H p (log p + H)
                out = logp.add_(ent[sl, None]).mul_(p).mul_(-g2[sl, None])
                if g1 is not None:
                    out.sub_(p.mul_(g1[sl, None])).scatter_add_(-1, flat_labels[sl, None], g1[sl, None])
            else:  # g_lp (onehot - p)
                out = p.mul_(-g1[sl, None]).scatter_add_(-1, flat_labels[sl, None], g1[sl, None])
            grad_rows[sl] = out.div_(T) if T != 1.0 else out
        return grad, None, None, None


def token_logprobs_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """`(token_logprobs(z, labels), token_entropy(z))` of `z = logits / temperature` in one pass:
    `[..., V]`, `[...]` long -> `([...], [...])`.

    What a scorer needs from each chunk of its vocabulary projection: one float32 (float64 for
    float64 logits) working copy per `chunk_size` rows (None: ~16M logits) serves both, the
    temperature division included, so a bf16 chunk is never copied whole to float32. Values
    equal the two functions on `logits.float() / temperature`; differentiable with one chunked
    backward that writes a single gradient in the logits' dtype.
    """
    fn = "token_logprobs_and_entropy"
    check_tensor(fn, "logits", logits)
    check_tensor(fn, "labels", labels)
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{fn}: logits must be a floating tensor, got {logits.dtype}")
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"{fn}: shape mismatch: logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + [V]")
    if not float(temperature) > 0.0:
        raise ValueError(f"{fn}: temperature must be > 0, got {temperature!r}")
    rows = _chunk_rows(logits.shape[-1], chunk_size)
    return _TokenLogprobsEntropy.apply(logits, labels.long(), rows, float(temperature))


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


def _histogram(idx: Tensor, nbins: int, bincount: bool | None = None) -> Tensor:
    """Counts of each value of `idx [N]` (any integer dtype, all in [0, nbins); may be strided) -> `[nbins]` long.

    `torch.bincount` is the fastest on CPU and reads int16 / int32 directly (no long copy), but on
    accelerators it reads `idx.max()` on the host (a sync), so there an `index_add_` of ones is
    used instead (which wants int32 / int64 indices). `bincount` forces one way (None: by device).
    """
    if bincount if bincount is not None else idx.device.type == "cpu":
        return torch.bincount(idx, minlength=nbins)
    if idx.dtype not in (torch.int32, torch.int64):
        idx = idx.to(torch.int32)
    ones = torch.ones((), dtype=torch.long, device=idx.device).expand(idx.shape[0])
    return torch.zeros(nbins, dtype=torch.long, device=idx.device).index_add_(0, idx, ones)


@functools.cache
def _little_endian() -> bool:
    """Whether this machine stores the low-order half of a word first (tensors use the native order)."""
    return memoryview(b"\x01\x00").cast("H")[0] == 1


def _nearest_rank(key: Tensor, n: Tensor, pivot: float, scratch: Tensor | None = None) -> Tensor:
    """Nearest-rank quantile of the finite entries of `key` (floats > 0; `+inf` marks invalid entries).

    `n` (0-dim, key's dtype) is the number of valid (finite) entries. Returns the valid element of
    rank `round(pivot * (n - 1))` (0-based, round half to even, rank computed in key's dtype), i.e.
    exactly `torch.quantile(key[valid], pivot, interpolation="nearest")`, as a 0-dim tensor.
    `scratch`: an optional contiguous buffer with key's dtype and number of elements, overwritten
    (saves one allocation); `key` itself is not modified.

    Radix select on the IEEE-754 bit patterns, which sort like the values for non-negative floats;
    the invalid entries (+inf) are the largest, so the wanted element has the same rank among ALL
    entries. Then 16-bit digits are fixed from the top, one histogram pass each (2 passes for
    float32, 4 for float64). The top digit is the most significant int16 of each element, counted
    in place (sign bit 0, so it is < 2^15). Later passes: bin 0 counts the entries below the
    digits fixed so far, bins 1..2^16 the next digit of the entries that match them, the last bin
    those above; the bin where the cumulative count passes the rank is the digit. O(N), no sort,
    no long copies, and the rank stays a tensor: no device->host sync, unlike torch.quantile /
    torch.kthvalue (and no 16M-element limit as in torch.quantile).
    """
    if key.dtype == torch.float64:
        int_dtype, bits = torch.int64, 64
    else:
        int_dtype, bits = torch.int32, 32
    flat = key.reshape(-1)
    bits_key = flat.view(int_dtype)  # [N] >= 0
    rank = torch.round((n - 1) * pivot).long().clamp_min_(0).reshape(1)  # [1] 0-based
    words = flat.view(torch.int16).view(-1, bits // 16)  # [N, 2 or 4]
    top = words[:, -1 if _little_endian() else 0]  # [N] int16 view, strided: no copy
    cum = torch.cumsum(_histogram(top, 1 << 15), 0)  # [2^15]
    prefix = torch.searchsorted(cum, rank, right=True).to(int_dtype)  # [1] the digits fixed so far
    nbins = (1 << 16) + 2
    idx = torch.empty_like(bits_key) if scratch is None else scratch.reshape(-1).view(int_dtype)  # [N]
    for shift in range(bits - 32, -1, -16):
        shifted = torch.bitwise_right_shift(bits_key, shift, out=idx) if shift else bits_key
        # [N] 0 below the fixed digits, 1 + next digit where they match, nbins - 1 above (into idx)
        torch.sub(shifted, (prefix << 16) - 1, out=idx).clamp_(0, nbins - 1)
        cum = torch.cumsum(_histogram(idx, nbins), 0)  # [nbins]
        b = torch.searchsorted(cum, rank, right=True).clamp_(1, 1 << 16)  # [1] bin holding the rank
        prefix = (prefix << 16) | (b - 1).to(int_dtype)
    return prefix.view(key.dtype).reshape(())


def _clamped_entropy(entropy: Tensor, cdtype: torch.dtype) -> Tensor:
    """`c = max(H, 1e-8)` (spec 0 step 1, before the log) as a new contiguous tensor in cdtype.

    c is also capped at the dtype's max so that an overflowed (inf) entropy at a masked position
    cannot turn into NaN when masked by multiplication.
    """
    return torch.clamp(entropy.detach().to(cdtype), ENTROPY_FLOOR, torch.finfo(cdtype).max).contiguous()


def _stats_and_centred(
    entropy: Tensor, mask: Tensor, pivot: float, fn: str
) -> tuple[EntropyStats, Tensor, Tensor]:
    """Shared by entropy_stats / normalize_batch_entropy: `(stats, d, scratch)`.

    `d = (x - Q) * mask [B, L]` (a new tensor) and `scratch`, a `[B, L]` buffer of d's dtype that
    the caller may overwrite. Three `[B, L]` allocations in all (the float mask, d, scratch): on
    CPU a fresh temporary costs about as much as the arithmetic on it (page faults).
    """
    check_tensor(fn, "entropy", entropy)
    check_tensor(fn, "mask", mask)
    check_same_shape(fn, entropy=entropy, mask=mask)
    if not 0.0 <= float(pivot) <= 1.0:
        raise ValueError(f"{fn}: pivot must be in [0, 1], got {pivot!r}")
    cdtype = float_dtype(entropy)
    mask_f = as_float_mask(mask, cdtype)  # [B, L] 0/1
    n = count_ones(mask_f)  # [] valid tokens
    c = _clamped_entropy(entropy, cdtype)  # [B, L] max(H, 1e-8), at most the dtype's max
    scratch = torch.empty_like(c)  # [B, L]: the pivot's digits, then the caller's
    # Q = log of the pivot of c (log is monotone); c / 0 = +inf marks the masked positions
    q = torch.log(_nearest_rank(c.div_(mask_f), n, float(pivot), scratch=scratch))  # [] pivot Q
    has = n > 0
    q = torch.where(has, q, 0.0)  # no valid token: neutral stats (0, 1, 1e-8, -1e-8)
    # back to c on valid tokens, finite at the masked ones (log(inf) is several times slower than log(x))
    c.clamp_max_(torch.finfo(cdtype).max)
    d = c.log_().sub_(q).mul_(mask_f)  # [B, L] x - Q = z * s on valid tokens, 0 elsewhere
    flat = d.reshape(-1)
    s = torch.sqrt(torch.dot(flat, flat) / n.clamp_min(1.0)).clamp_min(ENTROPY_FLOOR)  # [] RMS about Q
    d_min, d_max = torch.aminmax(flat)  # the zeros at invalid positions never change the clamped results
    z_max = (d_max / s).clamp_min(ENTROPY_FLOOR)
    z_min = (d_min / s).clamp_max(-ENTROPY_FLOOR)
    s = torch.where(has, s, 1.0)
    return EntropyStats(q=q, s=s, z_max=z_max, z_min=z_min), d, scratch


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
    with torch.no_grad():
        stats, _, _ = _stats_and_centred(entropy, mask, pivot, "entropy_stats")
    return stats


def _check_mode(fn: str, mode: str) -> None:
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"{fn}: unknown mode {mode!r}; valid modes: {', '.join(NORMALIZE_MODES)}")


def _h_from_centred_(d: Tensor, stats: EntropyStats, mode: str, scratch: Tensor | None = None) -> Tensor:
    """In place: `d = x - Q` (any shape, a buffer of ours) -> h, clamped to [-1, 1] (spec 0 step 5).

    `h = z / z_max` for z > 0 and `z / |z_min|` (paper) or `z / z_min` (reference) for z <= 0, as
    `clamp(d / (s z_max), 0, 1) + clamp(d / (s |z_min|), -1, 0)` (reference: the second clamp to
    [0, 1]): exactly one term is non-zero, so this is the clamped h, without bool tensors.
    `scratch`: an optional buffer like d for the second term (else one is allocated).
    """
    _, s, z_max, z_min = (t.to(device=d.device, dtype=d.dtype) for t in stats)
    inv_pos = 1.0 / (s * z_max)
    low = torch.empty_like(d) if scratch is None else scratch.view(d.shape)
    if mode == "paper":
        torch.mul(d, 1.0 / (s * z_min.abs()), out=low).clamp_(-1.0, 0.0)  # [..] h where z <= 0, else 0
    else:
        torch.mul(d, 1.0 / (s * z_min), out=low).clamp_(0.0, 1.0)
    return d.mul_(inv_pos).clamp_(0.0, 1.0).add_(low)


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
    with torch.no_grad():
        cdtype = float_dtype(entropy)
        d = _clamped_entropy(entropy, cdtype).log_().sub_(stats.q.to(device=entropy.device, dtype=cdtype))
        h = _h_from_centred_(d, stats, mode)
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
    with torch.no_grad():
        stats, d, scratch = _stats_and_centred(entropy, mask, pivot, fn)
        return _h_from_centred_(d, stats, mode, scratch), stats  # d is 0 at masked positions, so h is too
