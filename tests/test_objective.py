"""hapo_cli.algo.objective: the named losses, the token mask, C / D composition, EDA, Archer's KL,
micro-batch weighting and rollout IS, through `Objective.loss` (baselines-spec numbers), and the
config switches that select them (what does not compose is one line)."""

from __future__ import annotations

import pytest
import torch

from hapo_cli import algo
from hapo_cli.algo.objective import POLICY_LOSSES, LossInputs, build_objective
from hapo_cli.config import compose_config
from hapo_cli.errors import HapoError

D = torch.float64
TOL = dict(atol=1e-9, rtol=0)


def _f1():
    """baselines-spec F1: H, mask, A, r (old = 0, logp = log r)."""
    h = torch.tensor([[0.1, 2.0, 0.5, 0.0], [1.5, 0.2, 3.0, 0.05]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=D)
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-0.5] * 4], dtype=D)
    r = torch.ones(2, 4, dtype=D)
    r[0, 1], r[1, 2] = 1.1, 0.9
    return h, mask, adv, torch.zeros(2, 4, dtype=D), r.log().requires_grad_(True)


def _rand(seed=0, B=4, L=6):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, L, generator=g, dtype=D) * 2).requires_grad_(True)
    old = logp.detach() + 0.3 * (torch.rand(B, L, generator=g, dtype=D) - 0.5)
    adv = torch.randn(B, 1, generator=g, dtype=D).expand(B, L).clone()
    mask = torch.ones(B, L, dtype=D)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    h = (torch.rand(B, L, generator=g, dtype=D) * 2 - 1) * mask
    ent = torch.rand(B, L, generator=g, dtype=D) * 2
    return logp, old, adv * mask, mask, h, ent


def test_default_objective_is_hapo_policy_loss_bit_for_bit():
    logp, old, adv, mask, h, _ = _rand()
    obj = build_objective("ABCD", clip_ratio_high=0.28)
    loss, m = obj.loss(LossInputs(logp, old, adv, mask, h))
    ref, rm = algo.hapo_policy_loss(logp, old, adv, mask, h, 0.2, 0.28, alpha=1.0, beta=1.0, clip_ratio_c=10.0)
    assert loss.item() == ref.item() and m["n_tokens"].item() == rm["n_tokens"].item()


@pytest.mark.parametrize("letters", ["", "C", "D", "CD"])
def test_ppo_with_unit_is_weights_equals_the_fused_loss(letters):
    """The IS-weighted PPO path applies C and D itself: with w = 1 it is hapo_policy_loss (value and gradient)."""
    logp, old, adv, mask, h, _ = _rand(1)
    obj = build_objective(letters)
    a, ma = obj.loss(LossInputs(logp, old, adv, mask, h))
    b, mb = obj.loss(LossInputs(logp, old, adv, mask, h, is_weights=torch.ones_like(mask)))
    (ga,) = torch.autograd.grad(a, logp)
    (gb,) = torch.autograd.grad(b, logp)
    torch.testing.assert_close(b, a, **TOL)
    torch.testing.assert_close(gb, ga, **TOL)
    assert mb["clipfrac_left"].item() == ma["clipfrac_left"].item()
    w = torch.full_like(mask, 0.5)
    c, _ = obj.loss(LossInputs(logp, old, adv, mask, h, is_weights=w))
    torch.testing.assert_close(c, 0.5 * a, **TOL)  # a constant weight scales the token-mean loss


def test_forking_token_mask_through_the_objective_f1():
    h, mask, adv, old, logp = _f1()
    sel = build_objective("", token_mask="forking", token_mask_options={"top_ratio": 0.2, "selector": "topk_ceil",
                          "denominator": "selected", "entropy_source": "current"}, agg_scope="reference_microbatch")
    loss, m = sel.loss(LossInputs(logp, old, adv, mask, entropy=h))
    assert loss.item() == pytest.approx(-0.325, abs=1e-12)  # spec F1 "selected"
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0, 1].item() == pytest.approx(-0.55, abs=1e-12) and torch.count_nonzero(g).item() == 2
    assert m["n_tokens"].item() == 2 and m["selected_frac"].item() == pytest.approx(2 / 7)
    allden = build_objective("", token_mask="forking", token_mask_options={"denominator": "all", "top_ratio": 0.2})
    loss, m = allden.loss(LossInputs(logp, old, adv, mask, entropy=h))
    assert loss.item() == pytest.approx(-0.65 / 7, abs=1e-12)  # spec F1 "all": -0.0928571
    assert m["n_tokens"].item() == 7
    # the old-policy entropy as the source: same selection from the same values
    old_src = build_objective("", token_mask="forking", token_mask_options={"denominator": "all", "entropy_source": "old"})
    assert old_src.loss(LossInputs(logp, old, adv, mask, old_entropy=h))[0].item() == pytest.approx(-0.65 / 7, abs=1e-12)


def test_forking_global_denominator_is_the_sum_of_topk_counts():
    obj = build_objective("", token_mask="forking", token_mask_options={"top_ratio": 0.2})
    masks = [torch.ones(2, 7), torch.tensor([[1.0, 1, 1, 0, 0, 0, 0]]), torch.zeros(1, 7)]
    # int(14 * 0.2 + 0.9999) = 3, int(3 * 0.2 + 0.9999) = 1, an empty micro-batch selects 0
    assert obj.denominator_tokens(masks).item() == 4
    assert build_objective("").denominator_tokens(masks) is None
    # micro-batch weights: its selected tokens over the mini-batch's; reference_microbatch: its responses' share
    m, share = {"n_tokens": torch.tensor(3.0)}, torch.tensor(0.25)
    assert obj.micro_weight(masks[0], m, share, torch.tensor(4.0)).item() == 0.75
    ref = build_objective("", agg_scope="reference_microbatch")
    assert ref.micro_weight(masks[0], m, share, torch.tensor(4.0)).item() == 0.25
    assert build_objective("").micro_weight(masks[0], m, share, torch.tensor(28.0)).item() == 0.5


def test_gspo_composes_with_c_and_d():
    logp, old, adv, mask, h, _ = _rand(2)
    opts = {"eps_low": 3e-4, "eps_high": 4e-4, "log_ratio_max": 10.0}
    plain, _ = algo.gspo_loss(logp, old, adv, mask, 3e-4, 4e-4, variant="token", agg="seq-mean-token-mean")
    zero = torch.zeros_like(h)
    obj = build_objective("BCD", loss_name="gspo_token", loss_options=opts, loss_agg="seq-mean-token-mean")
    got, _ = obj.loss(LossInputs(logp, old, adv, mask, zero))
    torch.testing.assert_close(got, plain, **TOL)  # h = 0: AAC widens nothing, DAR scales by 1
    # h != 0: AAC widens GSPO's own bounds, DAR's zone (base 0.2 / 0.28, widened) is tested on s_i
    lo, hi = algo.adaptive_clip_bounds(h, 3e-4, 4e-4, 1.0)
    zl, zh = algo.adaptive_clip_bounds(h, 0.2, 0.28, 1.0)
    with torch.no_grad():
        n = mask.sum(-1, keepdim=True)
        s = (((logp - old) * mask).sum(-1, keepdim=True) / n).exp().expand_as(h)
        inside = (s > 1 - zl / 2) & (s < 1 + zh / 2)
        a2 = torch.where(inside ^ (h > 0), adv * (1 + h), adv)
    want, _ = algo.gspo_loss(logp, old, a2, mask, lo, hi, variant="token", agg="seq-mean-token-mean")
    got, _ = obj.loss(LossInputs(logp, old, adv, mask, h))
    torch.testing.assert_close(got, want, **TOL)


def test_cispo_aac_widens_the_cap():
    logp, old, adv, mask, h, _ = _rand(3)
    obj = build_objective("D", loss_name="cispo", loss_options={"eps_low": None, "eps_high": 0.2})
    _, hi = algo.adaptive_clip_bounds(h, 0.0, 0.2, 1.0)
    want, _ = algo.cispo_loss(logp, old, adv, mask, None, hi)
    got, _ = obj.loss(LossInputs(logp, old, adv, mask, h))
    torch.testing.assert_close(got, want, **TOL)


def test_archer_loss_and_kl_a1():
    """baselines-spec A1 through the objective: pg -0.4125, KL 8.4711e-6, total -0.41249153."""
    H = torch.tensor([[0.1, 0.2, 0.3, 0.4, 2.0], [1.0, 1.0, 5.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=D)
    adv = torch.tensor([[1.0] * 5, [-1.0] * 3 + [0, 0]], dtype=D)
    r = torch.tensor([[1.0, 1.3, 1.0, 1.0, 1.4], [0.6, 1.0, 0.45, 1, 1]], dtype=D)
    lp = torch.tensor([[-0.5, -1.0, -0.2, -0.3, -2.0], [-0.7, -0.9, -3.0, 0, 0]], dtype=D)
    ref = torch.tensor([[-0.6, -1.0, -0.1, -0.3, -1.0], [-0.7, -1.2, -2.0, 0, 0]], dtype=D)
    logp = lp.clone().requires_grad_(True)
    old = lp - r.log()
    opts = {"entropy_source": "current", "quantile": 0.8, "low_clip": (0.2, 0.2), "high_clip": (0.5, 0.5),
            "high_kl_coef": 0.0, "clip_ratio_c": 10.0}
    obj = build_objective("", loss_name="archer", loss_options=opts)
    x = LossInputs(logp, old, adv, mask, entropy=H, ref_logp=ref)
    pg, m = obj.loss(x)
    assert pg.item() == pytest.approx(-0.4125, abs=1e-12)
    assert m["high_frac"].item() == pytest.approx(2 / 8)
    kl, km = obj.kl_loss(x, 1e-3, torch.tensor(8.0), torch.tensor(1.0))  # one micro-batch of both responses
    assert kl.item() == pytest.approx(8.4711e-6, abs=1e-9)
    assert (pg + kl).item() == pytest.approx(-0.41249153, abs=1e-8)
    assert km["kl_low"].item() == pytest.approx(0.00847109, abs=1e-8)
    assert POLICY_LOSSES["archer"].needs_ref


def test_eda_through_the_objective_e1_and_the_reference_gradient():
    R = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=D)
    gids = torch.zeros(4, dtype=torch.long)
    mask = torch.ones(4, 2, dtype=D)
    P = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=D)
    ent = P.unsqueeze(-1).expand(4, 2).clone()
    obj = build_objective("", loss_name="edge", eda="paper", clip_ratio_high=0.2)
    adv = obj.advantages(R, gids, mask)
    assert adv[:, 0].tolist() == pytest.approx([0.865875, -0.865875, -0.865875, 0.865875], abs=1e-6)  # eps 1e-4
    logp = torch.zeros(4, 2, dtype=D, requires_grad=True)
    loss, m = obj.loss(LossInputs(logp, logp.detach(), adv, mask, entropy=ent, group_ids=gids))
    a_eda = torch.tensor([2.164689, -1.082344, -0.541172, 0.721563], dtype=D)
    assert loss.item() == pytest.approx(-(a_eda.sum() * 2 / 8).item(), abs=1e-6)  # r = 1: -mean(A_eda)
    assert m["eda_scale_max"].item() == pytest.approx(2.5) and m["eda_scale_min"].item() == pytest.approx(1 / 1.6)
    # reference: the loss differentiates through P_i (spec E3: dl/dP_0 = A mean / P^2 = 4.3294 for one token)
    ref = build_objective("", loss_name="edge", eda="reference", clip_ratio_high=0.2)
    e = ent.clone().requires_grad_(True)
    one = torch.tensor([[1.0, 0.0]] * 4, dtype=D)  # one valid token per response, P over both positions
    e_val = torch.tensor([[2 * p, 0.0] for p in P.tolist()], dtype=D)  # mean over L = 2 gives P
    e = e_val.clone().requires_grad_(True)
    loss, _ = ref.loss(LossInputs(logp, logp.detach(), adv * one, one, entropy=e, group_ids=gids))
    (g,) = torch.autograd.grad(loss, e)
    # l_0 = -A_0 mean / P_0 over 4 tokens; d l / d P_0 = A_0 mean / P_0^2 / 4; d P_0 / d e[0, j] = 1 / 2
    assert g[0, 0].item() == pytest.approx(4.3294 / 4 / 2, abs=1e-4)
    assert g[0, 1].item() == pytest.approx(4.3294 / 4 / 2, abs=1e-4)  # padding counts in reference mode


def test_clip_cov_draw_is_seeded_by_the_generator():
    logp, old, adv, mask, h, _ = _rand(4, B=6, L=8)
    opts = {"eps_low": 1.0, "eps_high": 1.0, "clip_cov_ratio": 0.2, "lb": -100.0, "ub": 100.0, "draw": "randperm"}
    obj = build_objective("", loss_name="clip_cov", loss_options=opts)
    assert obj.needs_generator

    def run(seed):
        return obj.loss(LossInputs(logp, old, adv, mask, generator=torch.Generator().manual_seed(seed)))[1]

    a, b = run(7), run(7)
    assert torch.equal(a["token_selected"], b["token_selected"]) and a["n_selected"].item() == 7  # int(0.2 * 38 valid)
    assert not torch.equal(a["token_selected"], run(8)["token_selected"])


def test_rollout_is_weights_and_injected_tokens_t1():
    obj = build_objective("", rollout_is={"level": "token", "mode": "truncate", "c_min": None, "c_max": 1.1})
    old = torch.tensor([[-1.0, -0.5, -2.0]], dtype=D)
    beh = torch.tensor([[-1.2, -0.5, -1.0]], dtype=D)
    mask = torch.ones(1, 3, dtype=D)
    w = obj.is_weights(old, beh, mask)
    assert w[0].tolist() == pytest.approx([1.1, 1.0, 0.3678794], abs=1e-7)  # spec T1, TIS C = 1.1
    w = obj.is_weights(old, beh, mask, injected=torch.tensor([[0.0, 0.0, 1.0]]))
    assert w[0].tolist() == pytest.approx([1.1, 1.0, 1.0], abs=1e-7)  # GEC-injected: weight 1
    assert build_objective("").is_weights(old, beh, mask) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm=hapo", "algorithm.loss=archer", "algorithm.kl_coef=0.001"], "does not compose with AAC"),
        (["algorithm=hapo", "algorithm.loss=kl_cov"], "KL-Cov has no ratio clip"),
        (["algorithm=dapo", "algorithm.token_mask=forking", "algorithm.forking.selector=linear_ge"],
         "known only for selector topk_ceil"),
        (["algorithm=dapo", "algorithm.loss=nope"], "algorithm.loss='nope' is not valid"),
        (["algorithm=dapo", "algorithm.loss=archer", "algorithm.archer.high_kl_coef=0.1"], "set algorithm.kl_coef > 0"),
        (["algorithm=dapo", "algorithm.rollout_is.enable=true", "algorithm.rollout_is.behaviour_logp=recompute",
          "rollout.top_k=5"], "does not reproduce top-k"),
    ],
)
def test_what_does_not_compose_is_one_line(overrides, message):
    with pytest.raises(HapoError, match=message) as err:
        compose_config(overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "loss", "letters", "mask"),
    [
        (["algorithm=hapo", "algorithm.loss=gspo"], "gspo", "ABCD", None),
        (["algorithm=dapo", "algorithm.token_mask=forking"], "ppo", "", "forking"),
        (["algorithm=hapo", "algorithm.loss=cispo"], "cispo", "ABCD", None),
        (["algorithm=hapo", "algorithm.edge.eda=true"], "ppo", "ABCD", None),
        (["algorithm=forking_tokens", "algorithm.components.B=true"], "ppo", "B", "forking"),
    ],
)
def test_what_composes_composes_by_config(overrides, loss, letters, mask):
    obj = compose_config(overrides)[0].algorithm.objective()
    assert (obj.loss_name, "".join(sorted(obj.components)), obj.token_mask) == (loss, letters, mask)


def test_presets_resolve_to_the_released_settings():
    def obj(name):
        return compose_config([f"algorithm={name}"])[0].algorithm.objective()

    f = obj("forking_tokens")
    assert (f.token_mask_options["selector"], f.token_mask_options["denominator"], f.agg_scope) == (
        "topk_ceil", "selected", "reference_microbatch")
    trl = compose_config(["algorithm=forking_tokens", "algorithm.forking.mode=trl"])[0].algorithm.objective()
    assert (trl.token_mask_options["selector"], trl.token_mask_options["denominator"]) == ("linear_ge", "all")
    a = obj("archer")
    assert a.loss_options["high_clip"] == (0.5, 0.5) and a.loss_agg == "seq-mean-token-mean"
    e = obj("edge_grpo")
    assert (e.loss_name, e.eda, e.eda_eps, e.loss_options["eps_high"]) == ("edge", "reference", 1e-4, 0.2)
    g = obj("gspo")
    assert (g.loss_name, g.loss_options["eps_low"], g.loss_agg) == ("gspo_token", 3e-4, "seq-mean-token-mean")
    assert obj("cispo").loss_options["eps_high"] == 0.2 and obj("cispo").loss_options["eps_low"] is None
    assert obj("clip_cov").loss_options["draw"] == "randperm" and obj("kl_cov").loss_options["kl_cov_ratio"] == 2e-3
    for name in ("forking_tokens", "archer", "edge_grpo", "gspo", "cispo", "clip_cov", "kl_cov"):
        o = obj(name)
        assert o.components == frozenset() and o.rollout_is is None  # DAPO base, no correction


INVARIANT = {  # losses whose statistics are per token or per response: the micro-batch split must not matter
    # (Forking Tokens, Clip-Cov / KL-Cov and EDA select per micro-batch, as the released code: they do depend on it)
    "ppo+CD": ["algorithm=dapo", "algorithm.components.C=true", "algorithm.components.D=true"],
    "gspo": ["algorithm=gspo"],
    "gspo_token+CD": ["algorithm=gspo", "algorithm.components.C=true", "algorithm.components.D=true"],
    "cispo+D": ["algorithm=cispo", "algorithm.components.D=true"],
    "archer": ["algorithm=archer", "algorithm.kl_coef=0"],
    "edge": ["algorithm=edge_grpo", "algorithm.edge.eda=false", "algorithm.edge.gec=false"],
    "rollout_is": ["algorithm=dapo", "algorithm.rollout_is.enable=true", "algorithm.rollout_is.c_max=1.05"],
}


def _gradient(overrides: list[str], micro: int) -> torch.Tensor:
    from accelerate import Accelerator
    from test_microbatch_invariance import make_batch, tiny_qwen

    from hapo_cli.train.diagnostics import UpdateDiagnostics
    from hapo_cli.train.dist import Dist
    from hapo_cli.train.scorer import ResponseScorer
    from hapo_cli.train.update import Updater

    cfg, _ = compose_config([*overrides, f"trainer.micro_batch_size={micro}", "trainer.group_size=4",
                             "trainer.train_batch_size=2", "trainer.mini_batch_size=2", "trainer.onpolicy_shortcut=false"])
    acc = Accelerator(cpu=True)
    scorer = ResponseScorer(tiny_qwen())
    up = Updater(cfg, scorer, torch.optim.SGD(scorer.parameters(), lr=0.0), None, acc, Dist(acc), cfg.algorithm.objective())
    b = make_batch()
    up.prepare(b)
    with torch.no_grad():  # a moved policy, and a behaviour policy away from the old one
        wave = torch.sin(torch.arange(b.old_logp.numel(), dtype=torch.float64)).view_as(b.old_logp)
        b.old_logp = (b.old_logp + 0.3 * wave) * b.mask
        b.beh_logp = b.old_logp + 0.05 * wave.flip(0)
    scorer.zero_grad()
    up._minibatch(b, torch.arange(len(b)), False, UpdateDiagnostics("cpu"), step=1)
    return torch.cat([p.grad.flatten() for p in scorer.parameters() if p.grad is not None])


@pytest.mark.parametrize("variant", list(INVARIANT))
def test_gradient_does_not_depend_on_the_micro_batch_split(variant):
    whole = _gradient(INVARIANT[variant], 8)
    assert whole.abs().max() > 1e-4  # a real gradient
    for micro in (4, 3):
        torch.testing.assert_close(_gradient(INVARIANT[variant], micro), whole, rtol=1e-6, atol=1e-10)
