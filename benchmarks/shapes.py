"""Model shapes for the benchmarks: `tiny` (the built-in 17-token model) and realistic random ones.

`qwen2.5-0.5b`: a randomly initialised Qwen2 with Qwen2.5-0.5B's vocabulary (151,936 tokens),
hidden size 896, 14 query / 2 key-value heads and MLP width 4,864, but only 2 decoder layers
(tied embeddings, as the real model). Its tokenizer is the tiny model's 17 characters (so
the synthetic prompts encode exactly as for the tiny model) plus one word-level token per
remaining id (`<t17>` ... `<t151935>`), so every sampled id decodes and the verifier sees text.
Built once into `$HAPO_CACHE/bench-<shape>-<version>` (about 0.6 GB in float32).
"""

from __future__ import annotations

import os
from pathlib import Path

SHAPES = {
    # name: Qwen2Config fields (None: the built-in tiny model)
    "tiny": None,
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=2,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
VERSION = 1


def _tokenizer(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hapo_cli.data.tiny import CHARS, SPECIALS

    base = SPECIALS + CHARS
    vocab = {tok: i for i, tok in enumerate(base)}
    vocab.update({f"<t{i}>": i for i in range(len(base), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="left", model_max_length=32768)


def ensure_shape_model(shape: str, seed: int = 0) -> Path:
    """The folder of the model for `shape` (building and caching a random one the first time)."""
    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape!r}; choose from {', '.join(SHAPES)}")
    if SHAPES[shape] is None:
        from hapo_cli.data.tiny import ensure_tiny_model

        return ensure_tiny_model()
    from hapo_cli.data.tiny import cache_root

    target = cache_root() / f"bench-{shape}-v{VERSION}-s{seed}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = SHAPES[shape]
    tok = _tokenizer(fields["vocab_size"])
    cfg = Qwen2Config(**fields, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)
    return target
