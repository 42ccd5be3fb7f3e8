"""Rollouts with transformers `generate`; Adaptive Temperature Sampling as a `LogitsProcessor`.

`generate` merges user processors BEFORE its own temperature / top-k / top-p warpers, so the ATS
processor sees the raw next-token logits (hapo-spec A) and divides them by (1 + tau * h); the
engine's temperature division comes after it.

Entropy from the rollout (`SamplingParams.return_entropy`): a forward hook on the output
embeddings reads each decoding step's logits in the MODEL's dtype (generate hands processors a
float32 copy) and keeps the entropy at T_base of every position, `Rollout.entropy`; it is the
old-policy entropy the trainer would compute (same weights, same positions), up to the
difference between the KV-cached and the full forward. With ATS at T_base = 1 the processor
reuses that entropy instead of computing its own (one entropy pass per step, not two).

Sampling (`sampler`): `inverse_cdf` (default) draws each next token as a logits processor, the
last one: transformers' own temperature / top-k / top-p warpers, then ONE uniform per row through
the float64 cumulative distribution, and generate's greedy step picks that token. transformers'
`multinomial` sampler (`sampler="multinomial"`, the former behaviour, bit-for-bit) draws an
exponential variate for EVERY vocabulary entry from the CPU generator, which is sequential: at
Qwen2.5's 151,936 entries and 32 rows that was ~100-300 ms of every decoding step on CPU,
about a quarter of generation time, and it does not get faster with threads. Both draw from the same
distribution (`tests/test_hf_sampler.py`); the random streams differ, so a given seed gives other
samples under the two. The sampled token's log-prob (`return_logprobs`) is recorded by the same
processor, so generate no longer keeps every step's `[N, V]` scores for it.

Both entropies (ATS's and the rollout's) come from `entropy_kernel` (`rollout/entropy_kernel.py`):
`auto` (default) fuses them into one compiled kernel for CPU logits of a real vocabulary, about 3x
faster than the eager passes at 32 x 152k; `eager` is `algo.token_entropy`; `compiled` forces it.
"""

from __future__ import annotations

import torch

from hapo_cli.rollout.ats_logic import ATSRowParams, ATSScaler
from hapo_cli.rollout.base import ATSParams, Rollout, SamplingParams, concat_rollouts, pad_left
from hapo_cli.rollout.entropy_kernel import ENTROPY_KERNELS, EntropyKernel


class AdaptiveTemperatureProcessor:
    """transformers LogitsProcessor: logits / (1 + tau * h), h from the previous step's EntropyStats.

    The maths is the shared `ATSScaler` (rollout/ats_logic.py, also behind the vLLM processor).
    Records the factor it applied at every decoding step (`factors`, a list of [N] tensors), so
    the engine can report the effective per-token temperature T_base * factor.
    """

    def __init__(self, ats: ATSParams, base_temperature: float, recorder: EntropyRecorder | None = None,
                 entropy_fn=None):
        self.params = ATSRowParams.from_ats(ats)
        self.scaler = ATSScaler(entropy_fn=entropy_fn)
        self.base_temperature = float(base_temperature)
        self.factors: list[torch.Tensor] = []
        # the raw-logit entropy of this step, when a recorder computes exactly that (T_base = 1)
        self.recorder = recorder if recorder is not None and recorder.temperature == 1.0 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # generate's scores are its own float32 copy of this step's logits: scaled in place, no clone
        entropy = self.recorder.last() if self.recorder is not None else None
        out, factor = self.scaler.apply(scores, [self.params] * scores.shape[0], inplace=True, entropy=entropy)
        self.factors.append(factor.detach().float())
        return out


class EntropyRecorder:
    """Forward hook on the output embeddings: the entropy at `temperature` of each step's last-position logits.

    Reads the logits in the model's dtype (float64 models keep float64), one `[N]` tensor per
    decoding step (`steps`). Other forwards of the head while it is attached would be recorded
    too: attach it only around one `generate` call (`with recorder.attached(head): ...`).
    """

    def __init__(self, temperature: float, entropy_fn=None):
        self.temperature = float(temperature)
        self.steps: list[torch.Tensor] = []
        # `logits [N, V] -> H [N]`: the engine's EntropyKernel (eager: algo.token_entropy)
        self.entropy_fn = entropy_fn if entropy_fn is not None else EntropyKernel("eager")

    def last(self) -> torch.Tensor:
        return self.steps[-1]

    def __call__(self, module, inputs, output) -> None:
        logits = output[:, -1].detach()  # [N, V]
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature if logits.dtype != torch.float64 else logits / self.temperature
        self.steps.append(self.entropy_fn(logits))  # [N] float32 (float64 for float64 logits)

    def attached(self, head):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            handle = head.register_forward_hook(self)
            try:
                yield self
            finally:
                handle.remove()

        return ctx()


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rows of `probs` [N, V] (non-negative, any positive total) and `u` [N, 1] in [0, 1) -> token ids [N, 1].

    Token i is chosen when u * total falls in [cdf[i-1], cdf[i]), with the cumulative sum in float64
    (float32 would round every probability under ~3e-8 to zero at V = 152k). A zero-probability
    token is never chosen: u * total is held strictly below the total.
    """
    cdf = probs.double().cumsum_(-1)
    total = cdf[:, -1:]
    target = torch.minimum(u.double() * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)


class InverseCDFSampler:
    """transformers LogitsProcessor that samples: warpers, softmax, one uniform per row; returns a one-hot score.

    Used with `do_sample=False`: generate's greedy argmax then takes the sampled token. The warpers
    are transformers' own (temperature, top-k, top-p, in generate's order), so the distribution is
    the one `do_sample=True` samples from. Uniforms come from the global RNG (the engine seeds a
    forked copy). `logprobs` (when `record_logprobs`): each step's [N] log-prob of the chosen token
    under that distribution (what `log_softmax(output_scores)` gave).
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, record_logprobs: bool = False):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))
        self.record_logprobs = record_logprobs
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for w in self.warpers:
            scores = w(input_ids, scores)
        probs = torch.softmax(scores, -1)
        u = torch.rand(scores.shape[0], 1, device=scores.device)
        token = inverse_cdf_sample(probs, u)  # [N, 1]
        if self.record_logprobs:
            self.logprobs.append(probs.gather(1, token).log_().squeeze(1))  # the softmax above, not a second pass
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def _as_logits_processor(obj):
    """Wrap in transformers' base class so `generate` accepts it."""
    from transformers import LogitsProcessor

    class _ATS(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return obj(input_ids, scores)

    return _ATS()


class HFRolloutEngine:
    """RolloutEngine over a transformers causal LM (shares the trainer's module: no weight copy)."""

    SAMPLERS = ("inverse_cdf", "multinomial")

    def __init__(self, model, tokenizer, batch_size: int = 512, return_logprobs: bool = False,
                 sampler: str = "inverse_cdf", entropy_kernel: str = "auto"):
        if sampler not in self.SAMPLERS:
            raise ValueError(f"HFRolloutEngine: unknown sampler {sampler!r}; choose one of: {', '.join(self.SAMPLERS)}")
        if entropy_kernel not in ENTROPY_KERNELS:
            raise ValueError(f"HFRolloutEngine: unknown entropy_kernel {entropy_kernel!r}; "
                             f"choose one of: {', '.join(ENTROPY_KERNELS)}")
        self.entropy = EntropyKernel(entropy_kernel)  # the raw-logit entropy of each decoding step (ATS, Rollout.entropy)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.return_logprobs = return_logprobs
        self.sampler = sampler
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        n, greedy = params.samples_and_greedy()
        flat = [p for p in prompts for _ in range(n)]
        # `generate` samples from the global RNG: seed a forked copy, so the caller's RNG is untouched
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            parts = [self._generate_chunk(flat[i : i + self.batch_size], params, greedy)
                     for i in range(0, len(flat), self.batch_size)]
        return concat_rollouts(parts, self.tokenizer.pad_token_id)

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, greedy: bool) -> Rollout:
        tok = self.tokenizer
        pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
        prompt_ids, prompt_mask = pad_left(prompts, pad_id)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        ats = None
        processors = []
        base = 1.0 if greedy else float(params.temperature)
        recorder = EntropyRecorder(base, self.entropy) if params.return_entropy else None
        if params.ats is not None and not greedy:
            ats = AdaptiveTemperatureProcessor(params.ats, params.temperature, recorder, self.entropy)
            processors.append(_as_logits_processor(ats))
        own = None if greedy or self.sampler != "inverse_cdf" else InverseCDFSampler(
            params.temperature, params.top_k, params.top_p, record_logprobs=self.return_logprobs)
        kwargs = dict(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            return_dict_in_generate=True,
            output_scores=self.return_logprobs and own is None,
        )
        if greedy or own is not None:  # the own sampler hands generate's greedy step a one-hot score
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if own is not None:
                processors.append(_as_logits_processor(own))
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k if params.top_k > 0 else None)
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        try:
            if recorder is None:
                out = self.model.generate(**kwargs)
            else:
                with recorder.attached(self.model.get_output_embeddings()):
                    out = self.model.generate(**kwargs)
        finally:
            if was_training:
                self.model.train()
        seq = out.sequences[:, prompt_ids.shape[1] :].cpu()  # [N, L]
        N, L = seq.shape
        # response mask: tokens up to and including the first EOS
        is_eos = seq == eos_id
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        mask = (~after_eos).long()
        finished = is_eos.any(-1)
        finish = ["stop" if f else "length" for f in finished.tolist()]
        resp = seq.masked_fill(mask == 0, pad_id)
        logprobs = None
        if own is not None and self.return_logprobs and L:
            lp = torch.stack(own.logprobs, 1)[:, :L].float().cpu()
            logprobs = torch.where(mask.bool(), lp, torch.zeros_like(lp))
        elif self.return_logprobs and out.scores is not None and L:
            scores = torch.stack([s.float().cpu() for s in out.scores], 1)  # [N, L, V] processed
            lp = torch.log_softmax(scores, -1).gather(-1, seq.unsqueeze(-1)).squeeze(-1)
            logprobs = torch.where(mask.bool(), lp, torch.zeros_like(lp))
        if ats is not None and ats.factors:
            temps = torch.stack(ats.factors, 1)[:, :L].cpu() * base
        else:
            temps = torch.full((N, L), base)
        temps = temps * mask
        entropy = None
        if recorder is not None:
            ent = torch.stack(recorder.steps, 1)[:, :L].cpu() if recorder.steps and L else torch.zeros(N, L)
            entropy = torch.where(mask.bool(), ent, torch.zeros((), dtype=ent.dtype))
        texts = tok.batch_decode(resp, skip_special_tokens=True)
        return Rollout(prompt_ids, prompt_mask, resp, mask, logprobs, temps.float(), finish, texts, entropy=entropy)

