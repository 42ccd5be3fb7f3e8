"""The built-in tiny model: a small Qwen2 causal LM warm-started on the synthetic task.

Built with transformers' own classes, saved with `save_pretrained`, and loaded back through the
same `from_pretrained` path as any Hub model, so the default run exercises the real loading code.
Built once per recipe and cached under ``$HAPO_CACHE`` (default ``~/.cache/hapo``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hapo_cli.data import synthetic

SPECIALS = ["<pad>", "</s>", "<unk>"]
CHARS = list("0123456789+-*=")


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that decides the cached model; a change gives a new cache folder."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    sft_steps: int = 600  # supervised warm-start steps on noisy demonstrations
    sft_batch: int = 128
    sft_lr: float = 3e-3
    seed: int = 1234
    version: int = 2  # bump when the task or the builder changes (2: positions counted as in generation)

    def key(self) -> str:
        import hashlib

        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"tiny-qwen2-add-{digest}"


def cache_root() -> Path:
    return Path(os.environ.get("HAPO_CACHE", Path.home() / ".cache" / "hapo"))


def build_tokenizer():
    """A character-level fast tokenizer over digits and operators, with EOS and PAD."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=64,
    )


def build_model(tokenizer, recipe: TinyRecipe):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(recipe.seed)
    return Qwen2ForCausalLM(config)


def _sft_batch(vocab: dict[str, int], eos: int, pad: int, rows: list[tuple[int, int]], rng: random.Random):
    """Prompt+noisy answer+EOS, left-padded; labels only on the answer and EOS (chars map 1:1 to ids)."""
    seqs, labels = [], []
    for a, b in rows:
        p = [vocab[c] for c in synthetic.format_prompt(f"{a}+{b}=")]
        t = [vocab[c] for c in synthetic.noisy_target(a, b, rng)] + [eos]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    return left_padded(seqs, labels, pad)


def left_padded(seqs: list[list[int]], labels: list[list[int]], pad: int):
    """Token lists and their labels, left-padded -> (input_ids, attention_mask, labels) [N, width]."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad)
    lab = torch.full((len(seqs), width), -100)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labels)):
        ids[i, width - len(s) :] = torch.tensor(s)
        lab[i, width - len(s) :] = torch.tensor(y)
        att[i, width - len(s) :] = 1
    return ids, att, lab


def warm_start(model, tokenizer, recipe: TinyRecipe, progress: bool = True) -> dict:
    """Supervised pass on noisy demonstrations of the training split. Returns a summary."""
    rng = random.Random(recipe.seed)
    train_pairs = [(int(r["question"].split("+")[0]), int(r["question"][:-1].split("+")[1]))
                   for r in synthetic.make_rows("train", None, seed=recipe.seed)]
    vocab = tokenizer.get_vocab()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.1, 1 - s / recipe.sft_steps)
    )
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and robust on a busy machine

    def next_batch():
        return _sft_batch(vocab, tokenizer.eos_token_id, tokenizer.pad_token_id, rng.sample(train_pairs, recipe.sft_batch), rng)

    summary = sft_loop(model, opt, sched, next_batch, recipe.sft_steps, "warm start (SFT)", progress)
    torch.set_num_threads(threads)
    return summary


def sft_loop(model, opt, sched, next_batch, steps: int, desc: str, progress: bool) -> dict:
    """The warm-start loop shared by the tiny models: `next_batch()` -> (input_ids, attention_mask, labels)."""
    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        ids, att, lab = next_batch()
        # positions counted over attended tokens, as `generate` and the scorer count them with left
        # padding (the default, arange over the padded row, would train the model on shifted positions)
        pos = (att.long().cumsum(-1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=att, position_ids=pos, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return {"sft_steps": steps, "sft_final_loss": float(loss.item()), "sft_seconds": time.time() - t0}


def build_cached(target: Path, build, what: str, progress: bool) -> Path:
    """`target` once `build(tmp_folder) -> dict` (written as hapo_tiny.json) has filled it; atomic, race-safe."""
    if (target / "hapo_tiny.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"first run: building {what} (about a minute on 2 cores); cached in {target}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        (tmp / "hapo_tiny.json").write_text(json.dumps(build(tmp), indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            if not (target / "hapo_tiny.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_model(cache_dir: str | os.PathLike | None = None, recipe: TinyRecipe | None = None,
                      progress: bool = True) -> Path:
    """Path of the warm-started tiny model, building it (about a minute on 2 cores) if not cached."""
    recipe = recipe or TinyRecipe()
    root = Path(cache_dir) if cache_dir is not None else cache_root()

    def build(folder: Path) -> dict:
        torch_threads = torch.get_num_threads()
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, recipe)
        summary = warm_start(model, tokenizer, recipe, progress=progress)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {"recipe": asdict(recipe), **summary, "threads": torch_threads}

    return build_cached(root / recipe.key(), build, "the tiny model", progress)
