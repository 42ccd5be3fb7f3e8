"""Typed configuration: the schema (dataclasses, one comment a field) behind the Hydra YAML in conf/.

Defaults live here; the YAML groups only set what differs (hapo-spec for the algorithm values).
`compose_config` composes `conf/` with Hydra and validates it against this schema, so an
unknown key or a bad value is ONE clear line naming the valid choices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hapo_cli.errors import HapoError

COMPONENT_NAMES = {"A": "ats", "B": "tlga", "C": "dar", "D": "aac"}
COMPONENT_TITLES = {
    "A": "Adaptive Temperature Sampling",
    "B": "Token-Level Group Average",
    "C": "Differential Advantage Redistribution",
    "D": "Asymmetric Adaptive Clipping",
}


@dataclass
class ComponentsConfig:
    """HAPO's four components, each an independent switch (overrides also take the names ats, tlga, dar, aac)."""

    A: bool = False  # Adaptive Temperature Sampling: per-token rollout temperature from entropy
    B: bool = False  # Token-Level Group Average: advantages normalised over all tokens of a group
    C: bool = False  # Differential Advantage Redistribution: advantages scaled by entropy and ratio
    D: bool = False  # Asymmetric Adaptive Clipping: entropy-dependent left/right clip bounds


@dataclass
class OverlongConfig:
    """DAPO overlong reward shaping (hapo-spec DAPO pieces)."""

    enable: bool = True  # add the soft length penalty to the reward
    buffer_len: int = 4096  # Lb: penalty ramps over the last Lb tokens before max_response_length
    penalty_factor: float = 1.0  # scale of the penalty (reaches -factor at the hard limit)


@dataclass
class ForkingConfig:
    """Forking Tokens (baselines-spec 1), on with `algorithm.token_mask=forking`: the policy gradient on the top-rho entropy tokens."""

    mode: str = "reference"  # reference ([FORK]: topk_ceil, selected) or trl ([TRL]: linear_ge, all); selector / denominator override it
    top_ratio: float = 0.2  # rho: share of a micro-batch's valid tokens kept
    selector: Optional[str] = None  # topk_ceil, linear_ge or hapo_h_positive (HAPO's h > 0); null: the mode's
    denominator: Optional[str] = None  # selected (divide by kept tokens) or all (by every token); null: the mode's
    entropy_source: str = "current"  # current (this forward's entropy, released code) or old (old-policy pass)


@dataclass
class ArcherConfig:
    """Archer (baselines-spec 2), on with `algorithm.loss=archer`: per-response entropy split, per-class clip and KL."""

    entropy_quantile: float = 0.8  # q: per-response quantile splitting low (<= q) from high entropy tokens
    entropy_source: str = "current"  # current (released code) or old
    low_clip: list[float] = field(default_factory=lambda: [0.2, 0.2])  # (eps_L, eps_R) of low-entropy tokens
    high_clip: list[float] = field(default_factory=lambda: [0.5, 0.5])  # (eps_L, eps_R) of high-entropy tokens
    high_kl_coef: float = 0.0  # KL weight of high-entropy tokens (low tokens use algorithm.kl_coef)


@dataclass
class EdgeConfig:
    """EDGE-GRPO (baselines-spec 3): entropy-driven advantage (EDA) and guided error correction (GEC)."""

    eda: bool = False  # A_i / Phat_i: advantages scaled by the group-normalised mean response entropy
    eda_mode: str = "paper"  # paper (masked mean, detached) or reference (released code: mean over all positions, differentiable)
    eps_adv: float = 1e-4  # EDA's GRPO eps: (R - mean) / (std + eps)
    gec: bool = False  # rewrite wrong responses (reflect 1/2, answer 1/4, solution 1/4) before rewarding
    gec_reflect_tokens: int = 256  # reflect branch: new tokens the policy may continue with
    gec_max_prompt_tokens: int = 256  # GEC only for prompts shorter than this (tokens)
    force_reflection: bool = False  # always the reflect branch (the released script's flag, overridden by GEC there)


@dataclass
class GspoConfig:
    """GSPO (baselines-spec 4), `algorithm.loss=gspo` (or gspo_token): the clip acts on the sequence ratio."""

    eps_low: float = 3e-4  # left bound of the sequence ratio s_i
    eps_high: float = 4e-4  # right bound of s_i
    log_ratio_max: Optional[float] = 10.0  # clamp of the mean log ratio before exp (verl); null: off


@dataclass
class CispoConfig:
    """CISPO (baselines-spec 5), `algorithm.loss=cispo`: REINFORCE with a capped, detached IS weight."""

    eps_low: Optional[float] = None  # weight floor 1 - eps_low (null: none, the paper and verl's example)
    eps_high: float = 0.2  # weight cap 1 + eps_high (verl example: 1.2; TRL/ScaleRL's 5.0 is eps_high=4.0)


@dataclass
class CovConfig:
    """Clip-Cov / KL-Cov (baselines-spec 6), `algorithm.loss=clip_cov` or `kl_cov`: tokens selected by cov(logp, A)."""

    clip_cov_ratio: float = 2e-4  # Clip-Cov: share of valid tokens detached
    lb: float = 1.0  # Clip-Cov: candidates have lb < cov < ub
    ub: float = 5.0  # Clip-Cov: upper covariance bound
    eps_low: float = 1.0  # Clip-Cov's PPO clip eps_L (recipe: 1.0, ratio in [0, 2])
    eps_high: float = 1.0  # Clip-Cov's PPO clip eps_R
    draw: str = "randperm"  # randperm (verl's draw, seeded) or keys (sync-free, same distribution)
    kl_cov_ratio: float = 2e-3  # KL-Cov: share of valid tokens penalised (7B recipe; 2e-4 for 32B)
    ppo_kl_coef: float = 1.0  # KL-Cov: coefficient of |log r| on the selected tokens


@dataclass
class RolloutISConfig:
    """Rollout correction (baselines-spec 7): importance weights pi_old / mu on the policy loss (TIS / MIS / IcePop)."""

    enable: bool = False  # off by default (the HAPO reference corrects nothing)
    level: str = "token"  # token or sequence (product of the response's token ratios)
    mode: str = "truncate"  # truncate (TIS: min(w, c_max)) or mask (MIS / IcePop: 0 outside [c_min, c_max])
    c_min: Optional[float] = None  # lower bound (null: none)
    c_max: Optional[float] = 2.0  # upper bound (null: none)
    behaviour_logp: str = "engine"  # engine (the sampler's processed log-probs) or recompute (trainer logits at T_base (1 + tau h))


@dataclass
class AlgorithmConfig:
    """The policy-optimisation algorithm (hapo-spec; names as in the spec)."""

    name: str = "hapo"  # label of the preset (grpo, dapo, hapo, hapo_reference) for logs and tables
    components: ComponentsConfig = field(default_factory=ComponentsConfig)  # HAPO components A-D
    advantage: Optional[str] = None  # advantage estimator by name (algo ADVANTAGE_ESTIMATORS); null: tlga with B, else grpo
    norm_by_std: bool = True  # GRPO advantage divides by the group std (false: Dr.GRPO)
    entropy_mode: str = "paper"  # h normalisation: paper (signed, [-1,1]) or reference (released code, V shape)
    entropy_pivot: float = 0.8  # rho: quantile of log-entropy that splits low from high entropy
    stats_scope: str = "batch"  # batch (old-policy stats, fixed per step) or microbatch (released code)
    temperature_tau: float = 0.05  # A: T = T_base * (1 + tau * h)
    tlga_fallback_threshold: Optional[float] = 5.0  # B: GRPO fallback when any |A| reaches this (null: off)
    tlga_fallback_padded: bool = False  # B: the fallback test also sees padded positions (reward 0), as the released code does
    adv_beta: float = 1.0  # C: A_e = A * (1 + beta * h)
    clip_alpha: float = 1.0  # D: bound widening strength
    clip_ratio_low: float = 0.2  # eps_L, left clip bound (ratio >= 1 - eps_L)
    clip_ratio_high: float = 0.28  # eps_R, right clip bound (ratio <= 1 + eps_R); 0.28 is DAPO clip-higher
    clip_ratio_c: float = 10.0  # dual-clip constant c for negative advantages (> 1)
    loss_agg: str = "token-mean"  # token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm
    dynamic_sampling: bool = True  # DAPO: drop groups whose accuracies are all equal, generate more
    max_num_gen_batches: int = 4  # generation rounds per step for dynamic sampling (0: unlimited)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)  # DAPO overlong reward shaping
    mask_truncated: bool = False  # drop truncated responses from the loss
    kl_coef: float = 0.0  # KL penalty to the reference (initial) policy, k3 estimator (0: off, no ref model)
    entropy_coef: float = 0.0  # entropy bonus coefficient (0: off)
    entropy_source: str = "old_pass"  # token entropy for h/stats: old_pass (the trainer's no-grad forward) or rollout (kept while generating, no old-pass needed before the first update; hf: equal to old_pass up to float rounding; vllm returns no entropies, refused: an engine that did would differ by its numerics)
    loss: str = "ppo"  # policy loss by name (algo POLICY_LOSSES): ppo (clipped, with C and D), archer, edge, gspo, gspo_token, cispo, clip_cov, kl_cov
    token_mask: Optional[str] = None  # restrict the policy gradient to selected tokens: forking (Forking Tokens); null: every token
    agg_scope: str = "global"  # global (one normaliser per mini-batch) or reference_microbatch (per micro-batch, weighted by its responses)
    forking: ForkingConfig = field(default_factory=ForkingConfig)  # Forking Tokens options (token_mask=forking)
    archer: ArcherConfig = field(default_factory=ArcherConfig)  # Archer options (loss=archer)
    edge: EdgeConfig = field(default_factory=EdgeConfig)  # EDGE-GRPO: EDA and GEC switches
    gspo: GspoConfig = field(default_factory=GspoConfig)  # GSPO options (loss=gspo, gspo_token)
    cispo: CispoConfig = field(default_factory=CispoConfig)  # CISPO options (loss=cispo)
    cov: CovConfig = field(default_factory=CovConfig)  # Clip-Cov / KL-Cov options (loss=clip_cov, kl_cov)
    rollout_is: RolloutISConfig = field(default_factory=RolloutISConfig)  # rollout correction (TIS / MIS / IcePop)

    def enabled(self) -> dict[str, bool]:
        """Component switches {A: bool, ...}."""
        return {letter: bool(getattr(self.components, letter)) for letter in COMPONENT_NAMES}

    def letters(self) -> str:
        """Enabled components as letters, e.g. "ABCD" ("" for none)."""
        return "".join(k for k, v in self.enabled().items() if v)

    def objective(self):
        """The `hapo_cli.algo.Objective` these settings select (the one switch-to-maths map)."""
        from hapo_cli.algo import build_objective

        return build_objective(
            self.letters(), advantage=self.advantage, norm_by_std=self.norm_by_std,
            tlga_fallback_threshold=self.tlga_fallback_threshold, tlga_fallback_padded=self.tlga_fallback_padded,
            entropy_mode=self.entropy_mode,
            entropy_pivot=self.entropy_pivot, stats_scope=self.stats_scope, temperature_tau=self.temperature_tau,
            adv_beta=self.adv_beta, clip_alpha=self.clip_alpha, clip_ratio_low=self.clip_ratio_low,
            clip_ratio_high=self.clip_ratio_high, clip_ratio_c=self.clip_ratio_c, loss_agg=self.loss_agg,
            **self._method_options())

    def _method_options(self) -> dict[str, Any]:
        """The named loss's options, the token mask's, EDA and rollout correction, for build_objective."""
        opts: dict[str, Any] = {}
        if self.loss != "ppo":
            opts["loss_name"] = self.loss
            opts["loss_options"] = _LOSS_OPTIONS.get(self.loss, lambda a: {})(self)
        if self.token_mask is not None:
            f = self.forking
            trl = f.mode == "trl"
            opts["token_mask"] = self.token_mask
            opts["token_mask_options"] = {
                "top_ratio": f.top_ratio, "entropy_source": f.entropy_source,
                "selector": f.selector or ("linear_ge" if trl else "topk_ceil"),
                "denominator": f.denominator or ("all" if trl else "selected")}
        if self.edge.eda:
            opts.update(eda=self.edge.eda_mode, eda_eps=self.edge.eps_adv)
        if self.agg_scope != "global":
            opts["agg_scope"] = self.agg_scope
        r = self.rollout_is
        if r.enable:
            opts["rollout_is"] = {"level": r.level, "mode": r.mode, "c_min": r.c_min, "c_max": r.c_max}
            opts["behaviour_logp"] = r.behaviour_logp
        return opts


def _archer_options(a: AlgorithmConfig) -> dict[str, Any]:
    r = a.archer
    return {"entropy_source": r.entropy_source, "quantile": r.entropy_quantile, "low_clip": tuple(r.low_clip),
            "high_clip": tuple(r.high_clip), "high_kl_coef": r.high_kl_coef, "clip_ratio_c": a.clip_ratio_c}


_LOSS_OPTIONS = {  # loss name -> its options from the config (ppo and edge use the base clip bounds)
    "archer": _archer_options,
    "gspo": lambda a: {"eps_low": a.gspo.eps_low, "eps_high": a.gspo.eps_high, "log_ratio_max": a.gspo.log_ratio_max},
    "gspo_token": lambda a: {"eps_low": a.gspo.eps_low, "eps_high": a.gspo.eps_high, "log_ratio_max": a.gspo.log_ratio_max},
    "cispo": lambda a: {"eps_low": a.cispo.eps_low, "eps_high": a.cispo.eps_high},
    "clip_cov": lambda a: {"eps_low": a.cov.eps_low, "eps_high": a.cov.eps_high, "clip_cov_ratio": a.cov.clip_cov_ratio,
                           "lb": a.cov.lb, "ub": a.cov.ub, "draw": a.cov.draw},
    "kl_cov": lambda a: {"kl_cov_ratio": a.cov.kl_cov_ratio, "ppo_kl_coef": a.cov.ppo_kl_coef},
}


@dataclass
class ModelConfig:
    """The policy model: a Hub id, a local folder, or `tiny` (the built-in warm-started model)."""

    name_or_path: str = "tiny"  # Hub id (e.g. Qwen/Qwen2.5-Math-7B), local folder, or tiny
    dtype: str = "float32"  # float32, bfloat16 or float16 (training weights)
    trust_remote_code: bool = False  # pass to from_pretrained
    gradient_checkpointing: bool = False  # recompute activations in backward (long sequences)
    attn_implementation: Optional[str] = None  # sdpa, flash_attention_2, eager (null: transformers' default)
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    logits_chunk_size: Optional[int] = None  # tokens per chunk when projecting to the vocabulary (memory bound); null: from the vocabulary (~2^28 logits per chunk)


@dataclass
class DataConfig:
    """Training prompts and the held-out validation set."""

    name: str = "synthetic"  # label of the data preset (synthetic, dapo_math, local) for run names and tables
    task: str = "synthetic"  # the Task (hapo_cli.tasks.TASKS): synthetic (exact integer), math (Answer: line + math-verify), logic, code
    path: Optional[str] = None  # local file or Hub id of the training rows (synthetic: null = built in)
    question_key: str = "question"  # column with the question (string) or a chat list
    answer_key: str = "answer"  # column with the gold answer (dotted path allowed: reward_model.ground_truth)
    prompt_template: str = "{question}"  # how a question becomes a prompt (before the chat template)
    grading_timeout: float = 10.0  # math: seconds one answer may take to grade (a killed worker; counted wrong, logged)
    grading_workers: int = 2  # math: grading processes for rewards and validation (0: grade in the trainer's process)
    accept_boxed: bool = False  # math: also grade a \\boxed{} answer when no "Answer:" line is found (DAPO's rule: off)
    max_train_rows: Optional[int] = None  # cap on training rows (null: all)
    val_path: Optional[str] = None  # held-out file (synthetic: built in); null disables validation for files
    val_size: int = 256  # validation questions
    val_samples: int = 4  # k in avg@k
    val_temperature: float = 1.0  # validation sampling temperature (ATS never applies)
    val_top_p: float = 1.0  # validation nucleus mass
    max_prompt_length: int = 1024  # prompts longer than this are left-truncated
    max_response_length: int = 8  # Lmax: generation cap (tokens)
    logic_people: int = 3  # logic, built-in puzzles: people per Knights-and-Knaves puzzle (2..12)
    logic_depth: int = 2  # logic, built-in puzzles: deepest nesting of and/or/if/iff/not in a statement (2..5)


@dataclass
class RolloutConfig:
    """The generation engine and its sampling settings for training rollouts."""

    engine: str = "hf"  # hf (transformers generate) or vllm
    temperature: float = 1.0  # T_base for rollouts
    top_p: float = 1.0  # nucleus mass for rollouts
    top_k: int = 0  # 0: off
    batch_size: int = 512  # sequences per generate call (memory)
    sampler: str = "inverse_cdf"  # hf only: inverse_cdf (one uniform per row through the float64 CDF; on CPU a third faster at a 152k vocabulary) or multinomial (transformers' own draw, the former default: same distribution, other samples for a seed)
    entropy_kernel: str = "auto"  # hf only: the decoding-time entropy (ATS, rollout entropy): auto (one compiled kernel for CPU logits of >= 8192 entries, eager otherwise or when compiling fails), compiled, or eager (algo.token_entropy)
    gpu_memory_utilization: float = 0.5  # vllm only: share of GPU memory for the engine
    tensor_parallel_size: int = 1  # vllm only


@dataclass
class TrainerConfig:
    """The optimisation loop (hapo-spec reference hyperparameters are in experiment/ presets)."""

    total_steps: int = 200  # training steps (one rollout batch each)
    train_batch_size: int = 32  # prompts per step (informative groups after dynamic sampling)
    group_size: int = 8  # G: responses per prompt
    mini_batch_size: int = 16  # prompts per optimizer update (train_batch/mini_batch updates per step)
    micro_batch_size: int = 128  # responses per forward/backward (gradient accumulation inside a mini-batch)
    ppo_epochs: int = 1  # passes over the rollout batch
    onpolicy_shortcut: bool = True  # skip the old-policy pass for the first mini-batch when nothing needs it before the update (see README)
    lr: float = 5e-4  # AdamW learning rate
    warmup_steps: int = 5  # linear warmup (optimizer updates)
    lr_schedule: str = "constant"  # constant or cosine after warmup
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0  # max gradient norm (0: off)
    val_every: int = 20  # validate every N steps (0: only at start and end)
    val_at_start: bool = True  # validate before the first step (the warm-start figure)
    save_every: int = 50  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # how many step checkpoints to keep (2: a damaged newest one falls back to the previous)
    max_skipped_steps: int = 5  # stop after this many consecutive steps whose updates were all non-finite (0: never)
    num_threads: int = 0  # torch CPU threads (0: leave torch's default)
    device: str = "auto"  # auto (accelerate's choice), cpu, cuda
    mixed_precision: str = "no"  # no, bf16, fp16 (accelerate)


@dataclass
class WandbConfig:
    """Weights & Biases logging."""

    mode: str = "auto"  # auto (online with credentials, else offline), online, offline, disabled
    project: str = "hapo"  # W&B project
    entity: Optional[str] = None  # W&B entity (team)
    group: Optional[str] = None  # W&B group (sweeps set it)
    tags: list[str] = field(default_factory=list)  # extra tags


@dataclass
class LoggerConfig:
    """Where metrics go (metrics.jsonl in the run directory always)."""

    name: str = "wandb"  # wandb or none
    wandb: WandbConfig = field(default_factory=WandbConfig)  # W&B settings
    console_every: int = 0  # also print a one-line step summary every N steps (0: only at validations)


@dataclass
class Config:
    """A whole `hapo train` run."""

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)  # conf/algorithm/
    model: ModelConfig = field(default_factory=ModelConfig)  # conf/model/
    data: DataConfig = field(default_factory=DataConfig)  # conf/data/
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # conf/rollout/
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the optimisation loop
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # conf/logger/
    experiment: Optional[str] = None  # name of the experiment preset applied (conf/experiment/)
    seed: int = 0  # seeds everything (data order, sampling, init of added heads)
    run_name: Optional[str] = None  # run folder name (default: <algorithm>-<data>-<timestamp>)
    output_dir: str = "runs"  # parent folder of run directories
    run_dir: Optional[str] = None  # exact run directory (overrides output_dir/run_name)
    resume: bool = False  # continue from the newest intact checkpoint in run_dir (refuses a changed config)
    resume_allow: list[str] = field(default_factory=list)  # config keys a resume may change anyway (recorded in meta.json)
    save_rollouts: bool = True  # keep a sample of each step's rollouts (JSONL) for hapo report


GROUPS = ("algorithm", "model", "data", "rollout", "logger", "experiment")


def conf_dir() -> Path:
    """The conf/ folder: $HAPO_CONF_DIR, or the one beside the hapo_cli package."""
    env = os.environ.get("HAPO_CONF_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "conf"
    if here.is_dir():
        return here
    raise HapoError("cannot find the conf/ folder: install hapo from a checkout (pip install -e .) or set HAPO_CONF_DIR")


def group_options(group: str) -> list[str]:
    d = conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _valid_keys(schema: Any, dotted: str) -> list[str]:
    """Field names at the level where `dotted` fails."""
    from dataclasses import fields, is_dataclass

    obj = schema
    for part in dotted.split(".")[:-1]:
        if is_dataclass(obj) and part in {f.name for f in fields(obj)}:
            obj = getattr(obj, part)
        else:
            break
    return [f.name for f in fields(obj)] if is_dataclass(obj) else []


def _check_overrides(overrides: list[str]) -> list[str]:
    """Each override is key=value with a key of the schema (or a group): else one line naming valid keys."""
    from dataclasses import fields, is_dataclass

    overrides = _component_aliases(overrides)
    for o in overrides:
        if "=" not in o and not o.startswith("~"):
            raise HapoError(f"override {o!r} is not key=value (e.g. algorithm=dapo or trainer.lr=1e-5)")
        key, _, value = o.lstrip("+~").partition("=")
        if key in GROUPS:
            opts = group_options(key)
            if value not in opts and not (key == "experiment" and value in ("null", "")):
                raise HapoError(f"unknown {key} {value!r}; choose one of: {', '.join(opts)}")
            continue
        node: Any = Config()
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not is_dataclass(node):
                break
            names = [f.name for f in fields(node)]
            if part not in names:
                where = ".".join(parts[:i]) or "the top level"
                also = " (or the names ats, tlga, dar, aac)" if where == "algorithm.components" else ""
                raise HapoError(f"unknown config key {key!r}: {where} has {', '.join(names)}{also}")
            node = getattr(node, part)
    return overrides


_ALIAS_LETTER = {name: letter for letter, name in COMPONENT_NAMES.items()}


def _component_aliases(overrides: list[str]) -> list[str]:
    """`algorithm.components.tlga=X` -> `algorithm.components.B=X`; a letter and its name set to
    different values is refused (one line), not resolved silently."""
    prefix = "algorithm.components."
    out, given = [], {}
    for o in overrides:
        key, eq, value = o.partition("=")
        bare = key.lstrip("+~")
        if eq and bare.startswith(prefix):
            part = bare[len(prefix):]
            letter = _ALIAS_LETTER.get(part, part)
            if letter in given and given[letter][1].strip().lower() != value.strip().lower():
                raise HapoError(f"conflicting switches: {given[letter][0]} and {o} set component {letter} "
                                f"({COMPONENT_TITLES.get(letter, letter)}) differently; keep one")
            given[letter] = (o, value)
            o = f"{key[: len(key) - len(bare)]}{prefix}{letter}={value}"
        out.append(o)
    return out


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="hapo_schema", node=Config)


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, Any]:
    """Compose conf/config.yaml with `overrides`, validate, return (typed Config, DictConfig)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    overrides = _check_overrides(list(overrides))
    _register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            raw = compose(config_name="config", overrides=overrides)
    except (MissingConfigException, ConfigCompositionException) as err:
        raise HapoError(_composition_message(err, overrides)) from None
    except OverrideParseException as err:
        raise HapoError(parse_error_message(err, overrides)) from None
    finally:
        GlobalHydra.instance().clear()

    schema = OmegaConf.structured(Config)
    container = OmegaConf.to_container(raw, resolve=True)
    try:
        merged = OmegaConf.merge(schema, container)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or str(err)
        valid = _valid_keys(Config(), str(key))
        raise HapoError(f"unknown config key {key!r}; valid keys there: {', '.join(valid)}") from None
    except ValidationError as err:
        key = getattr(err, "full_key", "?")
        raise HapoError(f"bad value for {key}: {str(err).splitlines()[0]}") from None
    cfg: Config = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg, merged


def parse_error_message(err: Exception, overrides: list[str]) -> str:
    """A Hydra override that does not parse (braces, spaces, commas, quotes): say how to quote it."""
    bad = next((o for o in overrides if any(c in o.partition("=")[2] for c in "{}[](),' \"$=:")), None)
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    if bad is None:
        return f"cannot parse the overrides ({first}); see `hapo train --help`"
    key, _, value = bad.partition("=")
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return (f"cannot parse {bad!r} ({first}): quote the value for Hydra, and the whole argument for the shell: "
            f"\"{key}='{quoted}'\"")


def _composition_message(err: Exception, overrides: list[str]) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if text.startswith("Error merging override") and err.__cause__ is not None:
        key = text.removeprefix("Error merging override").strip().partition("=")[0]
        cause = str(err.__cause__).splitlines()[0]
        return f"bad value for {key}: {cause}"
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in GROUPS:
            opts = group_options(key)
            if value not in opts:
                return f"unknown {key} {value!r}; choose one of: {', '.join(opts)}"
    if "Could not override" in text or "Key" in text:
        return f"{text} (see `hapo train --help` for the groups and keys)"
    return text


_CHOICES = {
    "algorithm.entropy_mode": ("paper", "reference"),
    "algorithm.stats_scope": ("batch", "microbatch"),
    "algorithm.entropy_source": ("old_pass", "rollout"),
    "rollout.sampler": ("inverse_cdf", "multinomial"),
    "rollout.entropy_kernel": ("auto", "compiled", "eager"),
    "algorithm.loss_agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "trainer.lr_schedule": ("constant", "cosine"),
    "trainer.mixed_precision": ("no", "bf16", "fp16"),
    "logger.name": ("wandb", "none"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
    "algorithm.loss": ("ppo", "archer", "edge", "gspo", "gspo_token", "cispo", "clip_cov", "kl_cov"),
    "algorithm.token_mask": (None, "forking"),
    "algorithm.agg_scope": ("global", "reference_microbatch"),
    "algorithm.forking.mode": ("reference", "trl"),
    "algorithm.forking.entropy_source": ("current", "old"),
    "algorithm.archer.entropy_source": ("current", "old"),
    "algorithm.edge.eda_mode": ("paper", "reference"),
    "algorithm.cov.draw": ("randperm", "keys"),
    "algorithm.rollout_is.level": ("token", "sequence"),
    "algorithm.rollout_is.mode": ("truncate", "mask"),
    "algorithm.rollout_is.behaviour_logp": ("engine", "recompute"),
}


def validate(cfg: Config) -> None:
    """Value checks the types cannot express; each failure is one line naming the fix."""
    for dotted, choices in _CHOICES.items():
        obj: Any = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise HapoError(f"{dotted}={obj!r} is not valid; choose one of: {', '.join(map(str, choices))}")
    a, t, d = cfg.algorithm, cfg.trainer, cfg.data
    checks = [
        (a.clip_ratio_c > 1, "algorithm.clip_ratio_c must be > 1"),
        (0 < a.entropy_pivot < 1, "algorithm.entropy_pivot must be in (0, 1)"),
        (a.clip_ratio_low >= 0 and a.clip_ratio_high >= 0, "clip ratios must be >= 0"),
        (t.group_size >= 2, "trainer.group_size must be >= 2 (advantages compare responses of a prompt)"),
        (t.train_batch_size >= 1 and t.mini_batch_size >= 1, "trainer batch sizes must be >= 1"),
        (t.train_batch_size % t.mini_batch_size == 0,
         f"trainer.train_batch_size ({t.train_batch_size}) must be a multiple of trainer.mini_batch_size ({t.mini_batch_size})"),
        (t.micro_batch_size >= 1, "trainer.micro_batch_size must be >= 1"),
        (t.total_steps >= 0, "trainer.total_steps must be >= 0"),
        (d.max_response_length >= 1, "data.max_response_length must be >= 1"),
        (a.max_num_gen_batches >= 0, "algorithm.max_num_gen_batches must be >= 0 (0: unlimited)"),
        (d.val_samples >= 1, "data.val_samples must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise HapoError(message)
    from hapo_cli.algo import ADVANTAGE_ESTIMATORS

    if a.advantage is not None and a.advantage not in ADVANTAGE_ESTIMATORS:
        raise HapoError(f"unknown algorithm.advantage {a.advantage!r}; registered: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}")
    _validate_methods(cfg)


def _validate_methods(cfg: Config) -> None:
    """The baselines' settings: what needs what, and what does not compose (one line each)."""
    a, r = cfg.algorithm, cfg.rollout
    checks = [
        (a.loss != "archer" or a.kl_coef > 0 or a.archer.high_kl_coef == 0,
         "algorithm.loss=archer: the per-class KL needs the reference model, set algorithm.kl_coef > 0 (low-token KL)"),
        (not a.edge.gec or a.rollout_is.level != "sequence" or not a.rollout_is.enable,
         "algorithm.edge.gec with rollout_is.level=sequence: injected tokens have no behaviour log-prob; use level=token"),
        (not (a.rollout_is.enable and a.rollout_is.behaviour_logp == "recompute" and r.top_k > 0),
         "rollout_is.behaviour_logp=recompute does not reproduce top-k truncation: set rollout.top_k=0 or behaviour_logp=engine"),
        (a.edge.gec_reflect_tokens >= 1, "algorithm.edge.gec_reflect_tokens must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise HapoError(message)
    try:
        a.objective()
    except ValueError as err:
        raise HapoError(f"algorithm: {err}") from None


def describe_components(cfg: Config) -> str:
    on = cfg.algorithm.enabled()
    letters = "".join(k for k, v in on.items() if v)
    return letters or "none"


def field_docs(schema: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, one-line doc) of every field of a dataclass schema (default: Config).

    The doc is the field's trailing `# comment` in the source, the one place it is written.
    """
    import inspect
    import re
    from dataclasses import MISSING, fields, is_dataclass

    schema = Config if schema is None else schema
    comments = {}
    for line in inspect.getsource(schema).splitlines():
        m = re.match(r"^    (\w+):[^#]*#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    out = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        if f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = f.default
        if is_dataclass(default):
            out.append((key, "", comments.get(f.name, "")))
            out.extend(field_docs(type(default), key + "."))
        else:
            out.append((key, repr(default), comments.get(f.name, "")))
    return out


def format_field_docs(schema: Any = None) -> str:
    """`field_docs` as aligned text (`hapo train --help-config`)."""
    rows = field_docs(schema)
    width = max(len(k) for k, _, _ in rows)
    lines = []
    for key, default, doc in rows:
        if not default:  # a group
            lines.append(f"\n{key}: {doc}")
        else:
            lines.append(f"  {key:<{width}}  {doc} [default: {default}]")
    return "\n".join(lines).lstrip("\n") + "\n"
