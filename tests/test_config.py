"""Config composition: every preset composes and validates; components by letter or name; clear errors."""

from __future__ import annotations

from dataclasses import fields

import pytest

from hapo_cli.config import GROUPS, Config, compose_config, group_options
from hapo_cli.errors import HapoError


def test_groups_have_the_documented_options():
    assert group_options("algorithm") == ["archer", "cispo", "clip_cov", "dapo", "edge_grpo", "forking_tokens", "grpo",
                                          "gspo", "hapo", "hapo_reference", "kl_cov"]
    assert {"tiny", "qwen2.5-math-1.5b", "qwen2.5-math-7b", "qwen3-8b-base"} <= set(group_options("model"))
    assert {"synthetic", "dapo_math", "local"} <= set(group_options("data"))
    assert {"hf", "vllm"} <= set(group_options("rollout"))
    assert {"wandb", "none"} <= set(group_options("logger"))
    assert "debug" in group_options("experiment")


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_group_option_composes(group):
    for option in group_options(group):
        extra = ["data.path=/tmp/x.parquet"] if (group, option) == ("data", "local") else []
        cfg, _ = compose_config([f"{group}={option}", *extra])
        assert isinstance(cfg, Config)


@pytest.mark.parametrize("name", group_options("experiment"))
def test_every_experiment_preset_composes(name):
    cfg, raw = compose_config([f"experiment={name}"])
    if name == "debug":
        assert cfg.trainer.total_steps == 3 and cfg.logger.name == "none"
        return
    if name == "logic_tiny":  # the CPU logic preset (tests/test_tasks_logic.py trains on it)
        assert (cfg.data.task, cfg.model.name_or_path, cfg.data.logic_people) == ("logic", "tiny-logic", 2)
        return
    # the paper recipes carry the released hyperparameters (hapo-spec "Reference hyperparameters")
    t, a, d = cfg.trainer, cfg.algorithm, cfg.data
    assert cfg.experiment == name
    assert (t.lr, t.warmup_steps, t.weight_decay, t.grad_clip) == (1e-6, 10, 0.1, 1.0)
    assert (t.train_batch_size, t.group_size, t.mini_batch_size, t.ppo_epochs) == (512, 16, 32, 1)
    assert t.train_batch_size // t.mini_batch_size == 16  # 16 updates per step
    assert (d.max_prompt_length, d.max_response_length) == (1024, 10240)
    assert (a.clip_ratio_low, a.clip_ratio_high, a.clip_ratio_c) == (0.2, 0.2, 10.0)
    assert (a.entropy_pivot, a.temperature_tau, a.clip_alpha, a.adv_beta) == (0.8, 0.05, 1.0, 1.0)
    assert (a.overlong.buffer_len, a.overlong.penalty_factor) == (4096, 1.0)
    assert (d.val_samples, d.val_temperature, d.val_top_p) == (8, 0.5, 0.7)
    assert cfg.rollout.engine == "vllm" and cfg.data.name == "dapo_math"
    model = {"7b": "Qwen/Qwen2.5-Math-7B", "1.5b": "Qwen/Qwen2.5-Math-1.5B", "8b_base": "Qwen/Qwen3-8B-Base"}
    assert cfg.model.name_or_path == next(v for k, v in model.items() if name.endswith(k))
    assert cfg.algorithm.name == name.split("_")[0]


def test_presets_set_the_components_and_spec_values():
    def comp(algo):
        return compose_config([f"algorithm={algo}"])[0]

    grpo, dapo, hapo, ref = comp("grpo"), comp("dapo"), comp("hapo"), comp("hapo_reference")
    assert grpo.algorithm.enabled() == dapo.algorithm.enabled() == dict.fromkeys("ABCD", False)
    assert hapo.algorithm.enabled() == ref.algorithm.enabled() == dict.fromkeys("ABCD", True)
    assert (grpo.algorithm.clip_ratio_high, grpo.algorithm.loss_agg, grpo.algorithm.dynamic_sampling) == (
        0.2, "seq-mean-token-mean", False)
    assert (dapo.algorithm.clip_ratio_low, dapo.algorithm.clip_ratio_high) == (0.2, 0.28)
    assert dapo.algorithm.loss_agg == "token-mean" and dapo.algorithm.dynamic_sampling
    assert dapo.algorithm.overlong.enable
    assert (hapo.algorithm.entropy_mode, hapo.algorithm.stats_scope) == ("paper", "batch")
    assert (ref.algorithm.entropy_mode, ref.algorithm.stats_scope) == ("reference", "microbatch")
    assert (ref.algorithm.clip_ratio_low, ref.algorithm.clip_ratio_high) == (0.2, 0.2)
    # hapo is exactly DAPO + the four components: every other algorithm field is equal
    skip = {"name", "components", "entropy_mode", "stats_scope"}
    for f in fields(dapo.algorithm):
        if f.name not in skip:
            assert getattr(dapo.algorithm, f.name) == getattr(hapo.algorithm, f.name), f.name


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algorithm=dapo", "algorithm.components.B=true"], "B"),
        (["algorithm=dapo", "algorithm.components.tlga=true"], "B"),
        (["algorithm=dapo", "algorithm.components.ats=true", "algorithm.components.D=true"], "AD"),
        (["algorithm=hapo", "algorithm.components.dar=false"], "ABD"),
        (["algorithm=hapo", "algorithm.components.C=false"], "ABD"),
        (["algorithm=hapo", "algorithm.components.C=false", "algorithm.components.dar=false"], "ABD"),
    ],
)
def test_components_by_letter_or_name(overrides, expected):
    cfg, _ = compose_config(overrides)
    assert "".join(k for k, v in cfg.algorithm.enabled().items() if v) == expected
    assert cfg.algorithm.letters() == expected


def test_conflicting_switches_are_refused():
    """A letter and its name set differently: one line, never a silent winner."""
    with pytest.raises(HapoError, match=r"^conflicting switches: algorithm.components.C=false and "
                                        r"algorithm.components.dar=true set component C"):
        compose_config(["algorithm=hapo", "algorithm.components.C=false", "algorithm.components.dar=true"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm=nope"], "unknown algorithm 'nope'; choose one of: archer, cispo, clip_cov, dapo, edge_grpo, "
                             "forking_tokens, grpo, gspo, hapo, hapo_reference, kl_cov"),
        (["model=gpt5"], "unknown model 'gpt5'; choose one of:"),
        (["trainer.nope=1"], "unknown config key 'trainer.nope': trainer has total_steps,"),
        (["nope=1"], "unknown config key 'nope': the top level has algorithm,"),
        (["algorithm.components.E=true"], "algorithm.components has A, B, C, D (or the names ats, tlga, dar, aac)"),
        (["trainer.lr"], "override 'trainer.lr' is not key=value"),
        (["trainer.lr=fast"], "bad value for trainer.lr"),
        (["algorithm.entropy_mode=fancy"], "algorithm.entropy_mode='fancy' is not valid; choose one of: paper, reference"),
        (["rollout.entropy_kernel=fast"], "rollout.entropy_kernel='fast' is not valid; choose one of: auto, compiled, eager"),
        (["algorithm.clip_ratio_c=1.0"], "algorithm.clip_ratio_c must be > 1"),
        (["trainer.train_batch_size=10", "trainer.mini_batch_size=4"], "must be a multiple of trainer.mini_batch_size"),
        (["trainer.group_size=1"], "trainer.group_size must be >= 2"),
    ],
)
def test_bad_overrides_name_the_fix(overrides, message):
    with pytest.raises(HapoError) as err:
        compose_config(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_live_in_the_schema():
    """conf/config.yaml adds no trainer values of its own: the composed defaults equal the dataclass ones."""
    cfg, _ = compose_config([])
    assert cfg.trainer == Config().trainer
    assert cfg.seed == 0 and cfg.resume is False
