"""The logic task: built-in Knights-and-Knaves rows, prompts, exact grading, the evaluator's metrics,
`data=logic` / `--bench logic`, the tiny logic model and an ablation grid on it."""

from __future__ import annotations

import json

import pytest
import torch

from hapo_cli.config import compose_config
from hapo_cli.data import knights
from hapo_cli.data.benchmarks import resolve_bench
from hapo_cli.evaluate import evaluate_rows
from hapo_cli.rollout.base import Rollout, pad_left, pad_right
from hapo_cli.tasks import bench_task, build_task
from hapo_cli.tasks.logic import INSTRUCTION, LogicTask

GOLD = "A is a knave, B is a knight, C is a knave"


def test_grading_known_answers():
    task = LogicTask()
    texts = [
        "<answer>A is a knave, B is a knight, C is a knave</answer>",
        "Let me think.\nAnswer: C is a knave, B is a knight, A is a knave",  # any order, an Answer: line
        "<answer>A is a knave, B is a knight, C is a knight</answer>",      # one wrong
        "<answer>A is a knave, B is a knight</answer>",                      # C missing
        "A is a knight. <answer>A is a knave, B is a knight, C is a knave</answer>",  # the tag wins
        "<answer>A is a knave, A is a knight, B is a knight, C is a knave</answer>",  # contradictory
    ]
    got = task.grade(texts, [GOLD] * len(texts))
    assert [g.correct for g in got] == [True, True, False, False, True, False]
    assert [g.verdict for g in got] == ["correct", "correct", "wrong", "no_answer", "correct", "no_answer"]
    assert got[1].pred_norm == GOLD  # the majority-vote key is the gold's order, whatever the answer's
    assert got[2].pred_norm == "A is a knave, B is a knight, C is a knight"
    assert task.rewards(texts[:3], [GOLD] * 3) == [(1.0, 1.0), (1.0, 1.0), (-1.0, 0.0)]


def test_public_set_gold_and_names():
    task = LogicTask()
    gold = "Zoey is a knave, and Oliver is a knight."
    got = task.grade(["<answer>Oliver is a knight, Zoey is a knave</answer>", "Zoey is a knight, Oliver is a knight"],
                     [gold, gold])
    assert [g.correct for g in got] == [True, False]


def test_prompt_appends_the_instruction_only_when_missing():
    from hapo_cli.data.tiny import build_tokenizer

    tok = build_tokenizer()  # character-level; letters are <unk>, so compare texts through the format
    task = LogicTask()
    row = knights.make_rows("validation", 1, people=2, depth=2)[0]
    assert row["question"].endswith(INSTRUCTION)
    assert task.prompt_ids(tok, row["question"]) == task.prompt.ids(tok, row["question"])
    quiz = "You meet 2 inhabitants: Zoey, and Oliver. So who is a knight and who is a knave?"
    assert task.prompt_ids(tok, quiz) == task.prompt.ids(tok, quiz + "\n" + INSTRUCTION)
    assert task.prompt_ids(tok, quiz) != task.prompt.ids(tok, quiz)


def test_data_logic_builds_disjoint_train_and_validation():
    cfg, _ = compose_config(["data=logic", "data.logic_people=2", "data.max_train_rows=200", "data.val_size=20"])
    task = build_task(cfg.data, cfg.model, cfg.seed)
    train, val = task.train_rows(), task.val_rows()
    assert len(train) == 200 and len(val) == 20
    assert not {r["question"] for r in train} & {r["question"] for r in val}
    assert all(r["people"] == 2 and r["depth"] == 2 for r in train + val)
    assert task.train_rows() == knights.make_rows("train", 200, seed=0, people=2, depth=2)
    # the default task is unchanged
    assert compose_config([])[0].data.task == "synthetic"
    assert compose_config(["experiment=logic_tiny"])[0].model.name_or_path == "tiny-logic"


class FixedEngine:
    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, prompts, params) -> Rollout:
        k = len(prompts) * params.n
        texts, self.texts = self.texts[:k], self.texts[k:]
        p_ids, p_mask = pad_left([list(p) for p in prompts for _ in range(params.n)], 0)
        r_ids, r_mask = pad_right([[1] * 5 for _ in texts], 0)
        return Rollout(p_ids, p_mask, r_ids, r_mask, None, torch.ones(r_ids.shape), ["stop"] * k, texts)


def test_bench_logic_metrics_from_known_answers(tmp_path):
    from hapo_cli.data.tiny import build_tokenizer

    task = bench_task("logic", limit=2)
    rows = task.val_rows()
    assert [r["id"] for r in rows] == [r["id"] for r in knights.make_rows("validation", 2)]
    wrong = [knights.answer_text(knights.NAMES[:3], tuple("knight" not in part for part in r["answer"].split(", ")))
             for r in rows]
    # q0: right, wrong, wrong, right (majority tie: first seen wins -> right); q1: wrong x3, no answer
    texts = [rows[0]["answer"], wrong[0], wrong[0], rows[0]["answer"], wrong[1], wrong[1], wrong[1], "no idea"]
    s = evaluate_rows(FixedEngine(texts), build_tokenizer(), rows, task=task, n=4, k_list=[1, 2, 4],
                      out_dir=tmp_path, progress=False)
    assert s["avg@4"] == pytest.approx(2 / 8)
    assert s["pass@2"] == pytest.approx((1 - 1 / 6) / 2)  # 1 - C(2,2)/C(4,2) for q0
    assert s["pass@4"] == pytest.approx(0.5) and s["maj@4"] == pytest.approx(0.5)
    assert "sandbox" not in s
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["verdict"] for x in samples][4:] == ["wrong", "wrong", "wrong", "no_answer"]


def test_kk_registry_and_local_copy(tmp_path):
    spec = resolve_bench("kk-3ppl")
    assert (spec.hub_id, spec.configs, spec.split, spec.grader) == ("K-and-K/knights-and-knaves", ("test",), "3ppl", "logic")
    path = tmp_path / "kk.jsonl"
    row = {"index": 0, "quiz": "You meet 2 inhabitants: Zoey, and Oliver. Zoey said ... So who is a knight and who is a knave?",
           "solution_text": "Zoey is a knave, and Oliver is a knight.", "names": ["Zoey", "Oliver"]}
    path.write_text(json.dumps(row) + "\n")
    task = bench_task(f"kk-2ppl={path}")
    (r,) = task.val_rows()
    assert (r["id"], r["answer"]) == ("0", row["solution_text"])
    assert [g.correct for g in task.grade(["<answer>Zoey is a knave, Oliver is a knight</answer>"], [r["answer"]])] == [True]


def test_tiny_logic_tokenizer_round_trips(tmp_path):
    from hapo_cli.data.tiny_logic import TinyLogicRecipe, build_tokenizer

    tok = build_tokenizer(TinyLogicRecipe())
    row = knights.make_rows("validation", 1, people=2, depth=2)[0]
    for text in (row["question"], " " + row["answer"]):
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids
    assert len(tok(" " + row["answer"])["input_ids"]) == 9  # every word one token
    assert len(tok(row["question"])["input_ids"]) < 130


@pytest.mark.slow
def test_ablate_single_with_baseline_on_the_logic_preset(tmp_path, cli):
    from dataclasses import replace

    from hapo_cli.data.tiny_logic import TinyLogicRecipe, ensure_tiny_logic_model

    # the mechanics only: a 10-step warm start of the preset's model (the real one: hapo_cli/data/tiny_logic.py)
    model = ensure_tiny_logic_model(recipe=replace(TinyLogicRecipe(), sft_steps=10), progress=False)
    res = cli("ablate", "--components", "A,B,C,D", "--mode", "single", "--include-baseline",
              "--sweep-dir", str(tmp_path / "sweep"), "experiment=logic_tiny", f"model.name_or_path={model}", "trainer.total_steps=2", "trainer.train_batch_size=2", "trainer.mini_batch_size=2",
              "trainer.group_size=4", "trainer.val_every=0", "trainer.num_threads=1", "data.val_size=4",
              "data.val_samples=2", "algorithm.max_num_gen_batches=2",
              timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    runs = sorted(p for p in tmp_path.rglob("metrics.jsonl"))
    assert len(runs) == 2  # DAPO (the baseline) and DAPO+A+B+C+D
    for m in runs:
        meta = json.loads((m.parent / "meta.json").read_text())
        assert "sandbox" not in meta
        steps = [json.loads(x) for x in m.read_text().splitlines()]
        assert any("val/avg@2" in s for s in steps)
