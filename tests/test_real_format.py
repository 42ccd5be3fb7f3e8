"""The real-model path end to end on CPU, with nothing downloaded: a tiny Qwen2 with a byte-level
BPE tokenizer (trained here with `tokenizers`) and a ChatML chat template, a local parquet in
DAPO-Math-17k's layout (chat-list prompts, reward_model.ground_truth, repeated rows) and a local
AIME-layout validation file. `hapo train data=dapo_math ...` then `hapo eval` on its checkpoint.

Checked: the prompts the model saw in training, validation and eval are exactly the configured
ones (decoded and compared as text), rewards come from the grading pool (a pathological answer
times out there, counts wrong and is logged), rows were deduplicated, metrics are complete, and
the eval summary equals a recount from samples.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hapo_cli.runs.files import read_jsonl

pytestmark = pytest.mark.slow

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUESTIONS = [(f"What is {a} plus {b}?", str(a + b)) for a, b in [(2, 3), (4, 4), (7, 1), (5, 6), (9, 2), (3, 8)]]
INSTRUCTION = "Solve the following math problem step by step. The last line of your response should be of the form Answer: $Answer"


def build_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    corpus = [f"{INSTRUCTION}\n\n{q}\nAnswer: {a}" for q, a in QUESTIONS] * 20 + ["user assistant system 0123456789 \\boxed{}"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_data(tmp: Path) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for rep in range(3):  # DAPO-Math-17k repeats every problem: 6 unique of 18
        for i, (q, a) in enumerate(QUESTIONS):
            rows.append({"data_source": "math_dapo", "prompt": [{"role": "user", "content": f"{INSTRUCTION}\n\n{q}"}],
                         "ability": "MATH", "reward_model": {"style": "rule", "ground_truth": a},
                         "extra_info": {"index": f"q{i}-{rep}"}})
    train = tmp / "dapo-math-17k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), train)
    val = tmp / "aime-mini.jsonl"
    val.write_text("".join(json.dumps({"id": i, "problem": q, "answer": a}) + "\n" for i, (q, a) in enumerate(QUESTIONS[:3])))
    return train, val


def rendered(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


def test_real_format_train_then_eval(cli, tmp_path):
    from transformers import AutoTokenizer

    model = build_model(tmp_path / "tiny-bpe")
    tok = AutoTokenizer.from_pretrained(model)
    train, val = write_data(tmp_path)
    run = tmp_path / "run"
    res = cli("train", "algorithm=dapo", "data=dapo_math", f"data.path={train}", f"data.val_path={val}",
              f"model.name_or_path={model}", "model.chat_template=true", "model.dtype=float32", "logger=none",
              "trainer.total_steps=2", "trainer.train_batch_size=2", "trainer.mini_batch_size=1", "trainer.group_size=2",
              "trainer.val_every=0", "trainer.device=cpu", "trainer.num_threads=1", "data.max_response_length=12",
              "data.max_prompt_length=256", "data.val_samples=2", "data.val_size=3", "data.grading_workers=1",
              "algorithm.dynamic_sampling=false", "algorithm.overlong.buffer_len=4", f"run_dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["data"] == {"source": str(train), "rows_read": 18, "duplicates_dropped": 12, "rows": 6}
    recs = read_jsonl(run / "metrics.jsonl").records
    assert [r["step"] for r in recs] == [0, 1, 2]
    for r in recs[1:]:
        for key in ("rollout/acc", "train/reward", "train/entropy", "actor/loss", "stats/q", "reward/grading_timeouts"):
            assert key in r, key
    # training prompts: the dataset's user message, chat-templated, exactly as the config says
    questions = {f"{INSTRUCTION}\n\n{q}": a for q, a in QUESTIONS}
    for step in (1, 2):
        for line in read_jsonl(run / "rollouts" / f"step_{step:06d}.jsonl").records:
            user = line["prompt"].split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
            assert user in questions and line["prompt"] == rendered(tok, user)
            assert line["answer"] == questions[user]
    # validation: the same prompt builder (the training template, chat-templated), graded by DAPO's rule
    val_samples = read_jsonl(run / "validation" / "step_000000" / "samples.jsonl").records
    assert {s["prompt"] for s in val_samples} == {rendered(tok, q) for q, _ in QUESTIONS[:3]}
    cfg = json.loads((run / "validation" / "step_000000" / "eval_config.json").read_text())
    assert cfg["prompt_style"] == "answer" and cfg["grader"] == "math"
    # eval of the checkpoint: the benchmark's own prompt (boxed instruction, chat template auto)
    ckpt = run / "checkpoints" / "step_000002"
    out = tmp_path / "eval"
    res = cli("eval", "--bench", f"aime24={val}", "--model", str(ckpt), "--n", "2", "--max-new-tokens", "8",
              "--out", str(out), "--no-wandb", "grading_workers=1")
    assert res.returncode == 0, res.stderr[-3000:]
    samples = read_jsonl(out / "aime24" / "samples.jsonl").records
    from hapo_cli.tasks.prompts import prompt_text

    assert {s["prompt"] for s in samples} == {rendered(tok, prompt_text(q, "boxed")) for q, _ in QUESTIONS[:3]}
    summary = json.loads((out / "summary.json").read_text())[0]
    assert summary["n_samples"] == len(samples) == 6
    assert summary["avg@2"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples), abs=1e-12)
    by_q: dict[str, list[bool]] = {}
    for s in samples:
        by_q.setdefault(s["id"], []).append(s["correct"])
    assert summary["pass@2"] == pytest.approx(sum(any(v) for v in by_q.values()) / len(by_q), abs=1e-12)


def test_training_rewards_go_through_the_pool(tmp_path):
    """A pathological answer in a training batch: the trainer's Collector grades it in the pool, where it
    times out (the worker is killed); the step goes on, it counts wrong and the timeout is counted."""
    import time

    import torch

    from hapo_cli.config import Config
    from hapo_cli.rewards.pool import GradingPool
    from hapo_cli.rollout.base import Rollout
    from hapo_cli.tasks import MathTask, PromptFormat
    from hapo_cli.train.collect import Collector

    task = MathTask(PromptFormat(), style="answer", rows=[{"id": "0", "question": "q", "answer": "5"}])
    texts = ["Answer: 9^{9^{9^{9}}}", "Answer: 5", "Answer: 4"]
    roll = Rollout(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long), torch.ones(3, 2, dtype=torch.long),
                   torch.ones(3, 2, dtype=torch.long), None, torch.ones(3, 2), ["stop"] * 3, texts)
    with GradingPool(num_workers=1, timeout=3.0, mv_timeout=60) as pool:
        collector = Collector(Config(), task, None, None, None, Config().algorithm.objective(), None, "cpu", pool=pool)
        t0 = time.monotonic()
        score, acc = collector.reward(roll, ["1", "5", "5"])
        seconds = time.monotonic() - t0
    assert seconds < 30  # bounded by the pool's per-answer timeout, not by math-verify
    assert acc.tolist() == [0.0, 1.0, 0.0] and collector.timeouts == 1
    lengths = 2.0  # overlong shaping (default buffer 4096 > Lmax 8: the penalty starts at length 0)
    penalty = max(-1.0, min(0.0, -(lengths - (8 - 8)) / 8))
    torch.testing.assert_close(score, torch.tensor([-1.0, 1.0, -1.0]) + penalty)
