"""conf/accelerate/*.yaml: each file loads with accelerate's own config classes and launcher logic.

Checked through accelerate itself (no mocks): `load_config_from_file` (unknown keys fail),
`accelerate launch`'s argument validation and environment preparation, the FSDP plugin built
from that environment, and, for the CPU file, a real 2-process launch.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ACC_DIR = Path(__file__).resolve().parent.parent / "conf" / "accelerate"
FILES = ["cpu_ddp_2proc.yaml", "gpu1.yaml", "fsdp_1node_8gpu.yaml", "fsdp_multinode.yaml"]


def _launch_args(name: str, *extra: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(ACC_DIR / name), *extra, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def _env(args) -> dict[str, str]:
    from accelerate.utils.launch import prepare_multi_gpu_env

    return prepare_multi_gpu_env(args)


def test_every_file_is_tested_and_shows_its_launch_command():
    assert sorted(p.name for p in ACC_DIR.glob("*.yaml")) == sorted(FILES)
    for name in FILES:
        text = (ACC_DIR / name).read_text()
        assert f"accelerate launch --config_file conf/accelerate/{name}" in text, name


@pytest.mark.parametrize("name", FILES)
def test_loads_with_accelerate_config_classes(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(ACC_DIR / name))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1
    assert cfg.num_processes % cfg.num_machines == 0


def test_fsdp_keys_are_launcher_options():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    dests = {a.dest for a in launch_command_parser()._actions}
    for name in ("fsdp_1node_8gpu.yaml", "fsdp_multinode.yaml"):
        keys = load_config_from_file(str(ACC_DIR / name)).fsdp_config
        unknown = sorted(k for k in keys if k not in dests)
        assert not unknown, f"{name}: {unknown} are not accelerate launch options"


@pytest.mark.parametrize("name, machines, procs", [("fsdp_1node_8gpu.yaml", 1, 8), ("fsdp_multinode.yaml", 2, 16)])
def test_fsdp_files_give_fsdp2_bf16_checkpointed(name, machines, procs, monkeypatch):
    args, defaults = _launch_args(name)
    assert args.use_fsdp and not args.cpu
    assert (args.num_machines, args.num_processes, args.mixed_precision) == (machines, procs, "bf16")
    env = _env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for k, v in env.items():
        if k.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(k, v)
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's environment, validates values
    assert plugin.fsdp_version == 2
    assert plugin.activation_checkpointing is True and plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.transformer_cls_names_to_wrap is None  # -> the model's _no_split_modules


def test_wrap_unit_is_the_decoder_layer_of_qwen2_and_qwen3():
    """With no explicit class list, accelerate wraps `model._no_split_modules`: check what that is."""
    from accelerate.utils.dataclasses import get_module_class_from_name
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    for cfg_cls, layer in ((Qwen2Config, "Qwen2DecoderLayer"), (Qwen3Config, "Qwen3DecoderLayer")):
        cfg = cfg_cls(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
        model = AutoModelForCausalLM.from_config(cfg)
        assert set(model._no_split_modules) == {layer}
        assert get_module_class_from_name(model, layer).__name__ == layer


def test_multinode_placeholders_are_overridden_by_flags():
    args, _ = _launch_args("fsdp_multinode.yaml", "--machine_rank", "1", "--main_process_ip", "10.1.2.3")
    assert (args.machine_rank, args.main_process_ip, args.main_process_port) == (1, "10.1.2.3", 29500)
    args, _ = _launch_args("fsdp_multinode.yaml")
    assert args.main_process_ip == "REPLACE_WITH_MAIN_NODE_IP"  # fails loudly if not overridden


def test_gpu1_is_single_process_bf16():
    args, _ = _launch_args("gpu1.yaml")
    assert not (args.multi_gpu or args.use_fsdp or args.use_deepspeed)
    assert (args.num_processes, args.mixed_precision, args.gpu_ids) == (1, "bf16", "0")


def test_cpu_ddp_file_starts_two_gloo_processes(tmp_path):
    args, _ = _launch_args("cpu_ddp_2proc.yaml")
    assert args.multi_gpu and not args.cpu and args.num_processes == 2  # the torchrun launcher
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch\n"
        "from accelerate import Accelerator\n"
        "acc = Accelerator(cpu=True)\n"
        "s = acc.reduce(torch.tensor([acc.process_index + 1.0]), reduction='sum')\n"
        "print(f'RANK {acc.process_index} {acc.num_processes} {acc.distributed_type.value} {s.item()}', flush=True)\n"
        "acc.wait_for_everyone()\n"
        "torch.distributed.destroy_process_group()  # a clean gloo teardown (else a rank may abort at exit)\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(ACC_DIR / "cpu_ddp_2proc.yaml"), "--main_process_port", str(port), str(probe)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # two processes share stdout: their lines may interleave, so match records, not lines
    lines = sorted(re.findall(r"RANK \d+ \d+ \w+ [\d.]+?(?=RANK|\s|$)", res.stdout))
    assert lines == ["RANK 0 2 MULTI_CPU 3.0", "RANK 1 2 MULTI_CPU 3.0"], res.stdout + res.stderr[-2000:]
