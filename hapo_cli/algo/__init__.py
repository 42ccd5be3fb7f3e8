"""`hapo_cli.algo`: the pure-torch maths of DAPO and HAPO (hapo-spec.md). Imports torch only.

Find each HAPO component by name:
- entropy.py    spec 0: token_entropy, token_logprobs, EntropyStats, entropy_stats, normalize_entropy,
                normalize_batch_entropy (both in one pass)
- ats.py        A  Adaptive Temperature Sampling: adaptive_temperature
- advantages.py B  Token-Level Group Average: tlga_advantages (and the GRPO baseline), ADVANTAGE_ESTIMATORS
- dar.py        C  Differential Advantage Redistribution: redistribute_advantages
- aac.py        D  Asymmetric Adaptive Clipping: adaptive_clip_bounds
- loss.py       the clipped objective: policy_loss, hapo_policy_loss (D then C, then policy_loss), LOSS_AGG_MODES
- dapo.py       DAPO pieces: overlong_penalty, informative_groups (dynamic sampling)

Shapes: B responses, padded response length L, vocabulary V. No function syncs with the host
except `EntropyStats.as_dict`. Masks may be bool, int or float (non-zero = valid); masking is done
by multiplication, so values at masked positions must be finite.

Decisions where the spec leaves room (each is also stated in the function's docstring):
- Pivot quantile: exactly `torch.quantile(x[mask], pivot, interpolation="nearest")`, i.e. rank
  `round(pivot * (n - 1))` with round-half-to-even, computed by an O(N) sync-free radix select.
- The "eps" of z_max >= eps, z_min <= -eps and s >= eps is 1e-8 (ENTROPY_FLOOR). A batch with no
  valid token gets the neutral stats (Q=0, s=1, z_max=1e-8, z_min=-1e-8).
- h is always clamped to [-1, 1] (a no-op on the stats' own batch) and is 0 at masked positions.
- token_entropy / token_logprobs return float32, or float64 for float64 logits.
- ATS: `stats=None` (first step) gives T_base; tau must lie in [0, 1) so T stays positive.
- GRPO and TLGA give exactly 0 to groups whose rewards are all equal (and to single-response
  groups), instead of dividing a rounding residue by 1e-6. GRPO's mean/std run over all the
  group's responses; TLGA's over valid tokens (responses without tokens do not count).
- TLGA fallback: triggers when some valid token has |A| >= threshold ("reaches").
- AAC and DAR put h == 0 on the low-entropy side (where it changes nothing: factors are 1).
  DAR's neutral zone uses the AAC-widened bounds when both are on (`hapo_policy_loss`).
- Loss aggregation: the seq-mean modes average over sequences with at least one valid token;
  "seq-mean-token-sum-norm" divides the total by the constant B * L (Dr.GRPO). "token-mean" is
  per call: rescale by n_tokens / total for gradient accumulation. `clip_ratio_c=None` disables
  the dual clip.
- overlong_penalty is the spec's formula as is: 0 up to max_len - buffer_len, -factor at
  max_len (and lower beyond it, if a response is longer than max_len).
- informative_groups: a single-response group is not informative.

Performance (measured by benchmarks/algo_overhead.py; the results are exactly the spec's): the
[B, L] maths works on a few reused float buffers, in place where it can, with comparisons written
as 0/1 floats (`torch.lt(..., out=float_buffer)`) and masking by multiplication: on CPU a fresh
[B, L] temporary, a bool tensor or `torch.where` costs several times a float pass. The loss is the
spec's formula with autograd: a fused loss with a hand-written backward saved under 2% of a
training step (benchmarks/step_time.py), not worth the unreadable code. What HAPO adds over DAPO
and cannot drop is one log over the entropies and the exact pivot (two histogram passes).
"""

from .aac import adaptive_clip_bounds
from .advantages import (
    ADV_EPS,
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    grpo_advantages,
    tlga_advantages,
)
from .ats import adaptive_temperature
from .dapo import informative_groups, overlong_penalty
from .dar import redistribute_advantages
from .entropy import (
    ENTROPY_FLOOR,
    NORMALIZE_MODES,
    EntropyStats,
    entropy_stats,
    normalize_batch_entropy,
    normalize_entropy,
    token_entropy,
    token_logprobs,
)
from .loss import LOSS_AGG_MODES, aggregate_loss, hapo_policy_loss, policy_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ADV_EPS",
    "ENTROPY_FLOOR",
    "LOSS_AGG_MODES",
    "NORMALIZE_MODES",
    "EntropyStats",
    "adaptive_clip_bounds",
    "adaptive_temperature",
    "aggregate_loss",
    "entropy_stats",
    "get_advantage_estimator",
    "grpo_advantages",
    "hapo_policy_loss",
    "informative_groups",
    "normalize_batch_entropy",
    "normalize_entropy",
    "overlong_penalty",
    "policy_loss",
    "redistribute_advantages",
    "tlga_advantages",
    "token_entropy",
    "token_logprobs",
]
