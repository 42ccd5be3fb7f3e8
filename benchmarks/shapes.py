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


def add_generation_args(ap, response_length: int, variants: tuple[str, ...]) -> None:
    """The options of the generation benchmarks (ats_overhead.py, decode_levers.py)."""
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="tiny or qwen2.5-0.5b (benchmarks/shapes.py)")
    ap.add_argument("--response-length", type=int, default=response_length, help="new tokens per response")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="calls per variant (after one warmup call each)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--variants", default=",".join(variants), help=f"comma list from {', '.join(variants)}")


def load_generation_bench(args, variants: tuple[str, ...]):
    """-> (model, tokenizer, prompt ids, chosen variants): the shape's model in float32 with EOS suppressed
    (`min_new_tokens`, so every call generates the same number of tokens) and the first synthetic prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hapo_cli.data import synthetic

    chosen = [v for v in args.variants.split(",") if v]
    bad = [v for v in chosen if v not in variants]
    if bad or not chosen:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {', '.join(variants)}")
    torch.set_num_threads(args.threads)
    path = ensure_shape_model(args.shape)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.min_new_tokens = args.response_length
    rows = synthetic.make_rows("train", None, seed=0)[: args.prompts]
    prompts = [tok(synthetic.format_prompt(r["question"]))["input_ids"] for r in rows]
    return model, tok, prompts, chosen


def alternate_rounds(variants: list[str], rounds: int, call) -> dict[str, list[float]]:
    """`call(variant, seed) -> seconds` for every variant in each round, the order rotating round by
    round so every variant sees the same machine load; -> {variant: [seconds per round]}."""
    import sys

    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(rounds):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            times[v].append(call(v, i + 1))
        print(f"round {i + 1}/{rounds}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants),
              file=sys.stderr, flush=True)
    return times


def settings_line(args, what: str) -> str:
    """The line under a generation benchmark's table: shape, batch, versions, load."""
    import torch
    import transformers

    return (f"{args.shape}, {args.prompts} x {args.group_size} responses x {args.response_length} tokens, {what}"
            f"float32, {args.threads} thread(s), {args.rounds} rounds; torch {torch.__version__}, transformers "
            f"{transformers.__version__}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
