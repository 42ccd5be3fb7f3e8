"""`hapo_cli.preflight`: what `hapo train` and `hapo eval` check before any model loads (issue 17,
"Fail fast"). Each check is one HapoError line naming the fix, and each takes well under a second."""

from __future__ import annotations

import time

import pytest
import torch

from hapo_cli import preflight as pf
from hapo_cli.config import compose_config
from hapo_cli.errors import HapoError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the messages of a machine without CUDA")


def _cfg(*overrides: str):
    return compose_config([*overrides, "run_dir=/tmp/preflight-only"])[0]


@no_cuda
def test_gpu_preset_on_a_cpu_machine_says_so_up_front():
    t0 = time.perf_counter()
    with pytest.raises(HapoError) as err:
        pf.preflight(_cfg("experiment=hapo_qwen2.5_math_7b"))
    assert time.perf_counter() - t0 < 2.0  # no Hub, no model
    assert str(err.value) == (
        "experiment=hapo_qwen2.5_math_7b needs a GPU (vLLM, the model Qwen/Qwen2.5-Math-7B, bf16 mixed precision) "
        "and this machine has no CUDA: run it on a GPU machine (pip install 'hapo[vllm]'), or a scaled-down version "
        "here: hapo train algorithm=hapo (HAPO on the built-in tiny model, CPU, minutes) or hapo train experiment=debug")


def test_debug_preset_and_the_default_pass():
    pf.preflight(_cfg("experiment=debug"))
    pf.preflight(_cfg())


@no_cuda
@pytest.mark.parametrize("device, message", [
    ("cuda", "trainer.device=cuda but this machine has no CUDA device (torch sees none): use trainer.device=cpu "
             "or trainer.device=auto"),
    ("cuda:1", "trainer.device=cuda:1 but this machine has no CUDA device"),
])
def test_cuda_device_without_cuda(device, message):
    with pytest.raises(HapoError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        pf.preflight(_cfg(f"trainer.device={device}"))


def test_device_spelling_and_cpu():
    pf.check_device("cpu")
    pf.check_device("auto")
    with pytest.raises(HapoError, match=r"^--device=gpu: use auto, cpu, cuda or cuda:N$"):
        pf.check_device("gpu")


def test_rollout_entropy_needs_the_hf_engine():
    with pytest.raises(HapoError) as err:  # refused before the engine check: the pair cannot work anywhere
        pf.preflight(_cfg("rollout=vllm", "algorithm=hapo", "algorithm.entropy_source=rollout"))
    assert str(err.value) == ("algorithm.entropy_source=rollout needs rollout.engine=hf (the vllm engine returns no "
                              "entropies): use algorithm.entropy_source=old_pass, or rollout.engine=hf")
    pf.check_entropy_source(_cfg("algorithm=hapo", "algorithm.entropy_source=rollout"))  # hf: passes


@pytest.mark.skipif(pf.vllm_installed(), reason="vLLM is installed here")
def test_vllm_engine_without_vllm():
    with pytest.raises(HapoError) as err:
        pf.preflight(_cfg("rollout=vllm"))
    assert str(err.value) == ("rollout.engine=vllm but vLLM is not installed: pip install 'hapo[vllm]' (CUDA "
                              "machines), or use the transformers engine (rollout.engine=hf)")


def test_wandb_online_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(HapoError) as err:
        pf.preflight(_cfg("logger=wandb", "logger.wandb.mode=online"))
    assert str(err.value).startswith("logger.wandb.mode=online but no W&B credentials were found: run `wandb login`")
    pf.preflight(_cfg("logger=wandb", "logger.wandb.mode=offline"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    pf.preflight(_cfg("logger=wandb", "logger.wandb.mode=online"))


def test_hub_model_offline_is_one_line_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(HapoError) as err:
        pf.preflight(_cfg("model.name_or_path=Qwen/Qwen2.5-Math-1.5B"))
    assert time.perf_counter() - t0 < 2.0
    assert str(err.value) == ("model 'Qwen/Qwen2.5-Math-1.5B' is not in the local cache and HF_HUB_OFFLINE is set "
                              "(offline): download it where there is network (huggingface-cli download ...) and "
                              "give the local folder instead")


def test_hub_probe_is_made_once(monkeypatch):
    import socket

    from hapo_cli import models
    from hapo_cli.data.benchmarks import hub_reachable

    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(models, "_PROBE", {})
    assert models.hub_reachable(0.5) is False
    assert models._PROBE == {("127.0.0.1", port): False}  # remembered: the next asker does not probe again
    models._PROBE[("127.0.0.1", port)] = True
    assert hub_reachable() is True  # the datasets side reads the same probe
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub_reachable() is False


def test_local_model_path_is_checked_first(tmp_path):
    with pytest.raises(HapoError, match="does not exist"):
        pf.preflight(_cfg(f"model.name_or_path={tmp_path}/nothing"))


def test_training_data_errors_name_the_fix(tmp_path):
    """data=local without data.path says so; a malformed JSONL line is reported with the file's own line."""
    from hapo_cli.config import compose_config
    from hapo_cli.tasks import build_task

    cfg, _ = compose_config(["data=local"])
    with pytest.raises(HapoError, match=r"^data=local needs the file: add data.path="):
        build_task(cfg.data, cfg.model)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n\n{"question": "2+2=", "answer": \n')
    cfg, _ = compose_config(["data=local", f"data.path={bad}"])
    with pytest.raises(HapoError, match=rf"^{bad}:3 is not valid JSON"):
        build_task(cfg.data, cfg.model)
