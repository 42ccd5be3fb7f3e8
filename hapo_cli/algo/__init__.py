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
- objective.py  the ONE map from switches (A-D, advantage estimator, loss options) to the maths: build_objective

The baselines (baselines-spec.md), one module per method:
- forking.py    1 Forking Tokens: forking_token_mask (top-rho entropy selection), forking_loss
- archer.py     2 Archer: archer_high_entropy, archer_quantiles, archer_loss (per-class clip), archer_kl_loss
- edge.py       3 EDGE-GRPO: edge_advantages, eda_scale (EDA), edge_loss; GEC's pure parts gec_branches, gec_rewrite
- gspo.py       4 GSPO / GSPO-token: gspo_loss
- cispo.py      5 CISPO: cispo_loss
- cov.py        6 Clip-Cov / KL-Cov: clip_cov_loss, kl_cov_loss, clip_cov_select, kl_cov_select, token_covariance
- rollout_is.py 7 TIS / MIS / IcePop and rejection sampling: rollout_is_weights, rollout_rejection_mask,
                behaviour_logprobs
Every baseline loss is `fn(logp, old_logp, adv, mask, <method args>, agg=..., is_weights=None) ->
(loss, metrics)`, accepts every LOSS_AGG_MODES name, returns the metrics keys of policy_loss
(`n_tokens` = tokens in its denominator mask: weight a micro-batch by n_tokens / total under
token-mean) and takes optional detached rollout IS weights. They are plain autograd (no
hand-written backward); selections are sync-free (sort-based) and random choices draw from an
explicit torch.Generator.

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
from .archer import archer_high_entropy, archer_kl_loss, archer_loss, archer_quantiles
from .ats import adaptive_temperature
from .cispo import cispo_loss
from .cov import CLIP_COV_DRAWS, clip_cov_loss, clip_cov_select, kl_cov_loss, kl_cov_select, token_covariance
from .dapo import informative_groups, overlong_penalty
from .dar import redistribute_advantages
from .edge import (
    EDGE_ADV_EPS,
    EDGE_EDA_MODES,
    GEC_BRANCHES,
    GEC_REFLECT_TEXT,
    eda_scale,
    edge_advantages,
    edge_loss,
    gec_answer_text,
    gec_branches,
    gec_rewrite,
)
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
from .forking import FORKING_CONVENTIONS, FORKING_DENOMINATORS, forking_loss, forking_token_mask
from .gspo import GSPO_VARIANTS, gspo_loss
from .loss import LOSS_AGG_MODES, aggregate_loss, hapo_policy_loss, policy_loss
from .objective import COMPONENTS, Objective, build_objective
from .rollout_is import (
    ROLLOUT_IS_LEVELS,
    ROLLOUT_IS_MODES,
    ROLLOUT_RS_STATS,
    behaviour_logprobs,
    rollout_is_weights,
    rollout_rejection_mask,
)

__all__ = [
    "CLIP_COV_DRAWS",
    "ADVANTAGE_ESTIMATORS",
    "ADV_EPS",
    "COMPONENTS",
    "EDGE_ADV_EPS",
    "EDGE_EDA_MODES",
    "ENTROPY_FLOOR",
    "FORKING_CONVENTIONS",
    "FORKING_DENOMINATORS",
    "GEC_BRANCHES",
    "GEC_REFLECT_TEXT",
    "GSPO_VARIANTS",
    "LOSS_AGG_MODES",
    "NORMALIZE_MODES",
    "ROLLOUT_IS_LEVELS",
    "ROLLOUT_IS_MODES",
    "ROLLOUT_RS_STATS",
    "EntropyStats",
    "Objective",
    "adaptive_clip_bounds",
    "adaptive_temperature",
    "aggregate_loss",
    "build_objective",
    "archer_high_entropy",
    "archer_kl_loss",
    "archer_loss",
    "archer_quantiles",
    "behaviour_logprobs",
    "cispo_loss",
    "clip_cov_loss",
    "clip_cov_select",
    "eda_scale",
    "edge_advantages",
    "edge_loss",
    "entropy_stats",
    "forking_loss",
    "forking_token_mask",
    "gec_answer_text",
    "gec_branches",
    "gec_rewrite",
    "get_advantage_estimator",
    "grpo_advantages",
    "gspo_loss",
    "hapo_policy_loss",
    "informative_groups",
    "kl_cov_loss",
    "kl_cov_select",
    "normalize_batch_entropy",
    "normalize_entropy",
    "overlong_penalty",
    "policy_loss",
    "redistribute_advantages",
    "rollout_is_weights",
    "rollout_rejection_mask",
    "tlga_advantages",
    "token_covariance",
    "token_entropy",
    "token_logprobs",
]
