"""EDGE-GRPO's Guided Error Correction (baselines-spec 3b): a data step between generation and reward.

After the first generation, every wrong response (the task's verifier gives accuracy 0) of a
prompt shorter than `edge.gec_max_prompt_tokens` draws a branch (`algo.gec_branches`, seeded):
reflect (1/2: append " Wait! Something is wrong here." and let the policy continue for at most
`edge.gec_reflect_tokens` tokens), answer (1/4: append the reference answer in a box), solution
(1/4: replace the response by the task row's reference `solution`; rows without one take the
answer branch). The collector then re-scores the rewritten responses (order: GEC -> reward ->
dynamic sampling -> EDA).

Token ids are concatenated (not re-tokenised from text) so sampled tokens keep their identity and
behaviour log-probs; the tokens GEC wrote are marked `injected` (rollout IS weight 1, no
mismatch figures, temperature T_base).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from hapo_cli import algo
from hapo_cli.rollout.base import Rollout, SamplingParams, pad_right

KEEP, REFLECT, ANSWER, SOLUTION = range(4)  # algo.GEC_BRANCHES codes


class GuidedErrorCorrection:
    """Rewrites a rollout's wrong responses; the collector re-scores them."""

    def __init__(self, edge_cfg, engine, tokenizer):
        self.c, self.engine, self.tok = edge_cfg, engine, tokenizer

    def _ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def apply(self, roll: Rollout, rows: list[dict], acc: torch.Tensor, params: SamplingParams, draw_seed: int,
              gen_seed: int) -> tuple[Rollout, torch.Tensor, dict[str, float]]:
        """-> (rewritten rollout, injected [B, L'] 0/1 float, branch counts). `rows[i]`: response i's task row."""
        short = roll.prompt_mask.sum(-1) < self.c.gec_max_prompt_tokens  # [B] the prompt-length gate
        gen = torch.Generator().manual_seed(draw_seed)
        branch = algo.gec_branches((acc == 0) & short, gen, self.c.force_reflection).tolist()
        for i, b in enumerate(branch):
            if b == SOLUTION and not rows[i].get("solution"):
                branch[i] = ANSWER  # no reference solution in the data: append the answer instead
        eos = self.tok.eos_token_id
        resp, lps, temps, inj, finish = [], [], [], [], list(roll.finish_reasons)
        reflect = [i for i, b in enumerate(branch) if b == REFLECT]
        heads: dict[int, list[int]] = {}
        for i in range(len(roll)):
            n = int(roll.lengths[i])
            ids = roll.response_ids[i, :n].tolist()
            lp = roll.logprobs[i, :n].tolist() if roll.logprobs is not None else [0.0] * n
            tp = roll.temperatures[i, :n].tolist()
            if branch[i] != KEEP and ids and ids[-1] == eos:  # continue after the text, not after EOS
                ids, lp, tp = ids[:-1], lp[:-1], tp[:-1]
            if branch[i] == REFLECT:
                added = self._ids(algo.GEC_REFLECT_TEXT)
            elif branch[i] == ANSWER:
                added = self._ids(algo.gec_answer_text(str(rows[i]["answer"]))) + [eos]
            elif branch[i] == SOLUTION:
                ids, lp, tp = [], [], []
                added = self._ids(str(rows[i]["solution"])) + [eos]
            else:
                added = []
            if added:
                finish[i] = "stop"
            heads[i] = ids + added
            resp.append(heads[i])
            lps.append(lp + [0.0] * len(added))
            temps.append(tp + [float(params.temperature)] * len(added))
            inj.append([0.0] * len(ids) + [1.0] * len(added))
        if reflect:
            self._continue(roll, reflect, heads, params, gen_seed, resp, lps, temps, inj, finish)
        return self._rollout(roll, resp, lps, temps, finish), pad_right(inj, 0, torch.float32)[0], {
            "gec/reflect": float(branch.count(REFLECT)), "gec/answer": float(branch.count(ANSWER)),
            "gec/solution": float(branch.count(SOLUTION))}

    def _continue(self, roll, reflect, heads, params, seed, resp, lps, temps, inj, finish) -> None:
        """The reflect branch: the policy continues from prompt + response + the reflection text."""
        prompts = [roll.prompt_ids[i][roll.prompt_mask[i].bool()].tolist() + heads[i] for i in reflect]
        p = replace(params, n=1, max_new_tokens=int(self.c.gec_reflect_tokens), seed=seed)
        cont = self.engine.generate(prompts, p)
        for j, i in enumerate(reflect):
            n = int(cont.lengths[j])
            resp[i] = resp[i] + cont.response_ids[j, :n].tolist()
            lps[i] = lps[i] + (cont.logprobs[j, :n].tolist() if cont.logprobs is not None else [0.0] * n)
            temps[i] = temps[i] + cont.temperatures[j, :n].tolist()
            inj[i] = inj[i] + [0.0] * n
            finish[i] = cont.finish_reasons[j]

    def _rollout(self, roll: Rollout, resp, lps, temps, finish) -> Rollout:
        ids, mask = pad_right(resp, self.tok.pad_token_id)
        return Rollout(roll.prompt_ids, roll.prompt_mask, ids, mask,
                       None if roll.logprobs is None else pad_right(lps, 0, torch.float32)[0],
                       pad_right(temps, 0, torch.float32)[0], finish,
                       self.tok.batch_decode(ids.masked_fill(mask == 0, self.tok.pad_token_id), skip_special_tokens=True))
