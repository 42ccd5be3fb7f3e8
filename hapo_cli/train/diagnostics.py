"""The step's diagnostics (hapo-spec "Log at least"): rollout tallies, update accumulators kept on
the device (one host transfer per step), and the batch's entropy/advantage figures."""

from __future__ import annotations

import math

import torch

from hapo_cli.rollout.base import Rollout


class RolloutTally:
    """Accuracy, length, truncation and temperature over every generated response of a step."""

    def __init__(self) -> None:
        self.acc: list[torch.Tensor] = []
        self.length: list[torch.Tensor] = []
        self.trunc: list[torch.Tensor] = []
        self.temp_sum, self.temp_n = 0.0, 0
        self.temp_min, self.temp_max = float("inf"), float("-inf")
        self.groups_seen = 0
        self.gec_sums: dict[str, float] = {}  # EDGE's GEC figures (empty: GEC off)

    def add(self, roll: Rollout, acc: torch.Tensor, n_groups: int) -> None:
        self.acc.append(acc)
        self.length.append(roll.lengths.float())
        self.trunc.append(roll.truncated.float())
        m = roll.response_mask.bool()
        if m.any():
            tv = roll.temperatures[m]
            self.temp_sum += float(tv.sum())
            self.temp_n += int(tv.numel())
            self.temp_min, self.temp_max = min(self.temp_min, float(tv.min())), max(self.temp_max, float(tv.max()))
        self.groups_seen += n_groups

    def gec(self, counts: dict[str, float], score_before, score_after, injected, mask) -> None:
        """EDGE's GEC figures: branch counts, reward before / after, share of injected tokens."""
        for k, v in counts.items():
            self.gec_sums[k] = self.gec_sums.get(k, 0.0) + v
        for k, v in (("before", float(score_before.sum())), ("after", float(score_after.sum())),
                     ("n", float(len(score_before))), ("inj", float(injected.sum())), ("tok", float(mask.sum()))):
            self.gec_sums[k] = self.gec_sums.get(k, 0.0) + v

    def metrics(self, rounds: int, groups_kept: int, groups_used: int) -> dict[str, float]:
        acc, length = torch.cat(self.acc), torch.cat(self.length)
        out = self._metrics(acc, length, rounds, groups_kept, groups_used)
        g = self.gec_sums
        if g:
            out.update({k: v for k, v in g.items() if k.startswith("gec/")})
            out.update({"gec/reward_before": g["before"] / max(1.0, g["n"]), "gec/reward_after": g["after"] / max(1.0, g["n"]),
                        "gec/injected_frac": g["inj"] / max(1.0, g["tok"])})
        return out

    def _metrics(self, acc, length, rounds: int, groups_kept: int, groups_used: int) -> dict[str, float]:
        right, wrong = acc > 0, acc == 0
        return {
            "rollout/acc": float(acc.mean()),
            "rollout/response_length": float(length.mean()),
            "rollout/length_correct": float(length[right].mean()) if right.any() else float("nan"),
            "rollout/length_wrong": float(length[wrong].mean()) if wrong.any() else float("nan"),
            "rollout/truncated_frac": float(torch.cat(self.trunc).mean()),
            "rollout/temperature_mean": self.temp_sum / max(1, self.temp_n),
            "rollout/temperature_min": self.temp_min if self.temp_n else float("nan"),
            "rollout/temperature_max": self.temp_max if self.temp_n else float("nan"),
            "rollout/gen_rounds": float(rounds),
            "rollout/groups_seen": float(self.groups_seen),
            "rollout/groups_informative": float(groups_kept),
            "rollout/groups_used": float(groups_used),
        }


STANDARD_LOSS_KEYS = frozenset({"loss", "clipfrac_left", "clipfrac_right", "clipfrac", "clipfrac_dual", "ratio_mean",
                                "ratio_max", "ratio_min", "n_tokens"})  # policy_loss's metrics (logged above)


class UpdateDiagnostics:
    """Token sums of the update's clip fractions, ratios and advantages (normalised in `metrics`)."""

    def __init__(self, device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.deferred: list[tuple] = []  # micro-batches whose h split waits for the batch's h

    def add(self, key: str, value) -> None:
        v = torch.as_tensor(value, device=self.device).detach().double()
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def extreme(self, key: str, value: torch.Tensor, fn) -> None:
        v = value.detach().double()
        self.sums[key] = fn(self.sums[key], v) if key in self.sums else v

    def micro(self, rows, mask, adv, loss_metrics: dict, loss_weighted, h=None) -> None:
        """One micro-batch's figures; `h=None` defers the split by the sign of h (`split_deferred`)."""
        n_tok = mask.sum()
        left, right = loss_metrics["token_clipped_left"], loss_metrics["token_clipped_right"]
        if h is None:
            self.deferred.append((rows, mask, adv, left, right))
        else:
            self.h_split(mask, h, adv, left, right)
        self.add("tok", n_tok)
        self.add("clip_dual", loss_metrics["clipfrac_dual"] * n_tok)
        self.add("ratio_sum", loss_metrics["ratio_mean"] * n_tok)
        self.add("loss_sum", loss_weighted)
        self.add("adv_pos_sum", (adv.clamp(min=0) * mask).sum())
        self.add("adv_neg_sum", (adv.clamp(max=0) * mask).sum())
        self.extreme("ratio_max", loss_metrics["ratio_max"], torch.maximum)
        self.extreme("ratio_min", loss_metrics["ratio_min"], torch.minimum)
        for key, value in loss_metrics.items():  # a method's own scalars (Archer's classes, CISPO's caps, EDA ...)
            if key not in STANDARD_LOSS_KEYS and isinstance(value, torch.Tensor) and value.dim() == 0:
                self.add(f"x/{key}", value * n_tok)

    def mismatch(self, old, beh, mask, w, factor) -> None:
        """Rollout-vs-trainer figures (baselines-spec 7 "Log") of sampled tokens: w, delta, k3, by ATS factor m."""
        valid = mask > 0
        d = torch.where(valid, (old - beh).clamp(-20, 20), torch.zeros_like(old))
        k3 = torch.exp(d) - 1 - d
        up, down = valid & (factor > 1), valid & (factor < 1)
        self.add("mm_tok", valid.sum())
        self.add("mm_delta", d.sum())
        self.add("mm_k3", (k3 * valid).sum())
        self.add("mm_tok_up", up.sum())
        self.add("mm_tok_down", down.sum())
        self.add("mm_delta_up", (d * up).sum())
        self.add("mm_delta_down", (d * down).sum())
        if w is not None:
            raw = torch.exp(d)
            self.add("mm_w", (w * valid).sum())
            self.add("mm_changed", (valid & ((w - raw).abs() > 1e-6 * raw)).sum())
            self.extreme("mm_w_max", torch.where(valid, w, torch.zeros_like(w)).amax(), torch.maximum)
            self.extreme("mm_w_min", torch.where(valid, w, torch.full_like(w, float("inf"))).amin(), torch.minimum)

    def split_deferred(self, h_of) -> None:
        """Split the deferred micro-batches by the sign of h, `h_of(rows)` giving their h."""
        for rows, mask, adv, left, right in self.deferred:
            self.h_split(mask, h_of(rows), adv, left, right)
        self.deferred.clear()

    def h_split(self, mask, h, adv, left, right) -> None:
        """Clip fractions and |A| by the sign of h."""
        valid = mask.bool()
        hp, hn = valid & (h > 0), valid & (h <= 0)
        self.add("tok_hpos", hp.sum())
        self.add("tok_hneg", hn.sum())
        self.add("clip_left", (left & valid).sum())
        self.add("clip_right", (right & valid).sum())
        self.add("clip_left_hpos", (left & hp).sum())
        self.add("clip_left_hneg", (left & hn).sum())
        self.add("clip_right_hpos", (right & hp).sum())
        self.add("clip_right_hneg", (right & hn).sum())
        self.add("absadv_hpos", (adv.abs() * hp).sum())
        self.add("absadv_hneg", (adv.abs() * hn).sum())

    def metrics(self, n_updates: int, skipped: int, grad_norms: list[float], lr: float) -> dict[str, float]:
        s: dict[str, float] = {}
        if self.sums:  # one device -> host transfer for all diagnostics
            keys = sorted(self.sums)
            s = dict(zip(keys, torch.stack([self.sums[k] for k in keys]).cpu().tolist()))
        tok = max(1.0, s.get("tok", 0.0))
        hpos, hneg = max(1.0, s.get("tok_hpos", 0.0)), max(1.0, s.get("tok_hneg", 0.0))
        out = {
            "actor/loss": s.get("loss_sum", 0.0) / max(1, n_updates),
            "actor/clipfrac_left": s.get("clip_left", 0.0) / tok,
            "actor/clipfrac_right": s.get("clip_right", 0.0) / tok,
            "actor/clipfrac_left_hpos": s.get("clip_left_hpos", 0.0) / hpos,
            "actor/clipfrac_left_hneg": s.get("clip_left_hneg", 0.0) / hneg,
            "actor/clipfrac_right_hpos": s.get("clip_right_hpos", 0.0) / hpos,
            "actor/clipfrac_right_hneg": s.get("clip_right_hneg", 0.0) / hneg,
            "actor/clipfrac_dual": s.get("clip_dual", 0.0) / tok,
            "actor/ratio_mean": s.get("ratio_sum", 0.0) / tok,
            "actor/ratio_max": s.get("ratio_max", 0.0),
            "actor/ratio_min": s.get("ratio_min", 0.0) if "ratio_min" in s else float("nan"),
            "actor/absadv_hpos": s.get("absadv_hpos", 0.0) / hpos,
            "actor/absadv_hneg": s.get("absadv_hneg", 0.0) / hneg,
            "actor/adv_pos_sum": s.get("adv_pos_sum", 0.0),
            "actor/adv_neg_sum": s.get("adv_neg_sum", 0.0),
            "actor/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            "actor/updates": float(n_updates),
            "actor/skipped_updates": float(skipped),
            "actor/lr": float(lr),
        }
        if "kl_sum" in s:
            out["actor/kl"] = s["kl_sum"] / tok
        out.update({f"actor/{k[2:]}": v / tok for k, v in s.items() if k.startswith("x/")})
        if "mm_tok" in s:
            out.update(_mismatch_metrics(s))
        return out


def _mismatch_metrics(s: dict[str, float]) -> dict[str, float]:
    n, up, down = max(1.0, s["mm_tok"]), max(1.0, s["mm_tok_up"]), max(1.0, s["mm_tok_down"])
    out = {"rollout_is/delta_mean": s["mm_delta"] / n, "rollout_is/k3_mean": s["mm_k3"] / n,
           "rollout_is/delta_mean_ats_up": s["mm_delta_up"] / up, "rollout_is/delta_mean_ats_down": s["mm_delta_down"] / down,
           "rollout_is/tokens_ats_up_frac": s["mm_tok_up"] / n, "rollout_is/tokens_ats_down_frac": s["mm_tok_down"] / n}
    if "mm_w" in s:
        out.update({"rollout_is/w_mean": s["mm_w"] / n, "rollout_is/w_max": s["mm_w_max"], "rollout_is/w_min": s["mm_w_min"],
                    "rollout_is/changed_frac": s["mm_changed"] / n})
    return out


def batch_metrics(b) -> dict[str, float]:
    """Reward, accuracy, length, entropy, h and advantage figures of a StepBatch after the update."""
    valid = b.mask.bool()
    tok = max(1.0, float(b.mask.sum()))
    any_valid = bool(valid.any())
    nan = math.nan
    return {
        "train/reward": float(b.score.mean()),
        "train/acc": float(b.acc.mean()),
        "train/response_length": float(b.mask.sum(-1).mean()),
        "train/entropy": float(b.entropy[valid].mean()) if any_valid else nan,
        "train/h_mean": float(b.h[valid].mean()) if any_valid else nan,
        "train/h_pos_frac": float((b.h[valid] > 0).float().mean()) if any_valid else nan,
        "train/adv_token_mean": float((b.adv * b.mask).sum() / tok),
        "stats/q": float(b.stats.q), "stats/s": float(b.stats.s),
        "stats/z_max": float(b.stats.z_max), "stats/z_min": float(b.stats.z_min),
    }
