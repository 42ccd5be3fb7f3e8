"""`hapo eval` configuration: one structured dataclass (the single place for defaults).

Raw overrides (`key=value`, Hydra's override syntax as for `hapo train`, e.g. `n=16
k_list=[1,4,16] question_key=problem`) compose conf/eval.yaml; the command's options go on top.
Unknown keys fail with the list of valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hapo_cli.errors import HapoError


@dataclass
class EvalConfig:
    """Settings of one `hapo eval` call."""

    bench: str = "synthetic"  # comma-separated: registry names, local .parquet/.jsonl/.json files, or name=file
    model: str = "tiny"  # local model folder, Hub id, or `tiny` (the built-in warm-started tiny model)
    n: int = 8  # samples per question (paper's validation: 8)
    temperature: float = 0.5  # sampling temperature (paper's validation: 0.5); 0 = greedy, forces n=1
    top_p: float = 0.7  # nucleus mass (paper's validation: 0.7)
    max_new_tokens: int | None = None  # response cap; default: the benchmark's own (1024 maths, 8 synthetic)
    limit: int | None = None  # evaluate only the first N questions of each benchmark
    out: str | None = None  # output folder (default runs/eval/<model>-<time>); reuse it to resume
    prompt: str | None = None  # boxed | answer | raw; default: the benchmark's own style (boxed for maths)
    chat_template: str = "auto"  # auto (use it when the tokenizer has one) | on | off
    engine: str = "hf"  # hf (transformers generate) | vllm
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    batch_size: int = 64  # sequences per forward batch of the hf engine
    seed: int = 0  # sampling seed (chunk i of questions uses seed + i)
    k_list: list[int] | None = None  # pass@k values (default: powers of two up to n, and n)
    grading_workers: int = 2  # grading processes (math-verify); 0 grades in this process
    grading_timeout: float = 10.0  # seconds one answer may take to grade before it counts as wrong
    question_key: str | None = None  # question column of a local file (default: auto-detected)
    answer_key: str | None = None  # answer column of a local file (default: auto-detected)
    id_key: str | None = None  # id column of a local file (default: auto-detected, else row index)
    wandb: bool = False  # log the results to Weights & Biases (offline when there are no credentials)
    wandb_project: str = "hapo"  # W&B project
    progress: bool = True  # show progress bars
    runs: str | None = None  # evaluate runs instead of --model: run folders, sweep folders or folders of them (comma-separated)
    checkpoint: str = "final"  # with runs: final (the last checkpoint) | best (the checkpoint of the best validation)


def valid_keys() -> list[str]:
    return [f.name for f in fields(EvalConfig)]


def compose_eval_config(options: dict, overrides: list[str] | None = None) -> EvalConfig:
    """EvalConfig from Hydra `key=value` overrides (conf/eval.yaml) with the command's options on top
    (None = not given). Unknown keys fail with the list of valid ones."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from hapo_cli.config import conf_dir

    given = {k: v for k, v in options.items() if v is not None}
    unknown = [k for k in given if k not in valid_keys()]
    if unknown:
        raise HapoError(f"unknown eval setting(s) {', '.join(unknown)}: valid keys are {', '.join(valid_keys())}")
    overrides = list(overrides or [])
    for ov in overrides:
        key = ov.lstrip("+~").split("=", 1)[0]
        if "=" not in ov or ov.startswith("-"):
            raise HapoError(f"cannot read {ov!r}: eval overrides look like key=value (valid keys: {', '.join(valid_keys())})")
        if key not in valid_keys():
            raise HapoError(f"unknown eval setting {key!r}: valid keys are {', '.join(valid_keys())}")
    ConfigStore.instance().store(name="hapo_eval_schema", node=EvalConfig)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            raw = compose(config_name="eval", overrides=overrides)
        cfg = OmegaConf.merge(raw, OmegaConf.create(given))
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "Ambiguous value" in text:
            text += " (quote a comma-separated value, e.g. bench='aime24,math500', or use --bench)"
        raise HapoError(f"bad eval setting: {text}") from None
    finally:
        GlobalHydra.instance().clear()
