"""The tiny logic model (`tiny-logic`): a small Qwen2 warm-started on Knights-and-Knaves puzzles.

The built-in `tiny` model reads 17 characters (digits and operators), so the logic task has its own:
a byte-level BPE tokenizer trained with the `tokenizers` library on generated puzzle text (every
word of the puzzles becomes one token: a 2-person prompt is ~100 tokens), and a Qwen2 warm-started by a
short supervised pass on noisy demonstrations of the training split (a right answer with
probability `sft_correct`, else a random assignment), so that RL starts with signal and room to
improve, as the tiny addition model does. Prompts are exactly the logic task's (plain text, no
chat template); the answer is "A is a knight, B is a knave". Cached like the tiny model, under
``$HAPO_CACHE`` (default ``~/.cache/hapo``), one folder per recipe.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hapo_cli.data import knights
from hapo_cli.data.tiny import build_cached, cache_root, left_padded, sft_loop

SPECIALS = ["<pad>", "</s>", "<unk>"]


@dataclass(frozen=True)
class TinyLogicRecipe:
    """Everything that decides the cached model; a change gives a new cache folder."""

    people: int = 2  # puzzles of the warm start (and of the logic_tiny preset)
    depth: int = 2
    train_puzzles: int = 600  # the warm start sees these (the train split of knights.make_rows, seed 0)
    vocab_size: int = 400  # BPE vocabulary (enough for every word of the puzzles: ~390 tokens used)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 256
    sft_steps: int = 300  # supervised warm-start steps
    sft_batch: int = 32
    sft_lr: float = 3e-3
    sft_correct: float = 0.5  # share of demonstrations with the right answer (the rest: random assignments)
    seed: int = 1234
    version: int = 2  # bump when the task or the builder changes (2: positions counted as in generation)

    def key(self) -> str:
        import hashlib

        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"tiny-qwen2-logic-{digest}"


def _corpus(recipe: TinyLogicRecipe) -> list[str]:
    texts = []
    for people in range(2, max(recipe.people, 3) + 1):
        for split in ("train", "validation"):  # the tokenizer only sees the vocabulary, never a label
            n = 40 if split == "validation" else 200
            for r in knights.make_rows(split, n, seed=99, people=people, depth=recipe.depth):
                texts += [r["question"], " " + r["answer"]]
    texts += [" " + knights.answer_text(knights.NAMES[:12], tuple(i % 2 == 0 for i in range(12)))]
    return texts


def build_tokenizer(recipe: TinyLogicRecipe):
    """Byte-level BPE over the puzzle text (exact round trip), with EOS and PAD; no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(recipe), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="left", model_max_length=recipe.max_positions)


def build_model(tokenizer, recipe: TinyLogicRecipe):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads, max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(recipe.seed)
    return Qwen2ForCausalLM(config)


def noisy_answer(row: dict, rng: random.Random, p_correct: float) -> str:
    """The gold answer with probability p_correct, else a uniformly random assignment of the same people."""
    if rng.random() < p_correct:
        return row["answer"]
    names = knights.NAMES[: int(row["people"])]
    return knights.answer_text(names, tuple(rng.random() < 0.5 for _ in names))


def _batch(tokenizer, rows: list[dict], rng: random.Random, p_correct: float):
    """Prompt + " " + noisy answer + EOS, left-padded; labels only on the answer and EOS."""
    seqs, labels = [], []
    for r in rows:
        p = tokenizer(r["question"], add_special_tokens=True)["input_ids"]  # exactly the task's prompt ids
        t = tokenizer(" " + noisy_answer(r, rng, p_correct), add_special_tokens=False)["input_ids"]
        t = t + [tokenizer.eos_token_id]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    return left_padded(seqs, labels, tokenizer.pad_token_id)


def warm_start(model, tokenizer, recipe: TinyLogicRecipe, progress: bool = True) -> dict:
    rng = random.Random(recipe.seed)
    rows = knights.make_rows("train", recipe.train_puzzles, seed=0, people=recipe.people, depth=recipe.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * max(0.1, 1 - s / recipe.sft_steps))
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and robust on a busy machine

    def next_batch():
        return _batch(tokenizer, rng.sample(rows, recipe.sft_batch), rng, recipe.sft_correct)

    summary = sft_loop(model, opt, sched, next_batch, recipe.sft_steps, "warm start (SFT, logic)", progress)
    torch.set_num_threads(threads)
    return summary


def ensure_tiny_logic_model(cache_dir: str | os.PathLike | None = None, recipe: TinyLogicRecipe | None = None,
                            progress: bool = True) -> Path:
    """Path of the warm-started tiny logic model, building it if not cached."""
    recipe = recipe or TinyLogicRecipe()
    root = Path(cache_dir) if cache_dir is not None else cache_root()

    def build(folder: Path) -> dict:
        tokenizer = build_tokenizer(recipe)
        model = build_model(tokenizer, recipe)
        summary = warm_start(model, tokenizer, recipe, progress=progress)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {"recipe": asdict(recipe), **summary}

    return build_cached(root / recipe.key(), build, "the tiny logic model", progress)
