"""Loading the policy (Hub id, local folder, or the built-in tiny model) and scoring responses.

`ResponseScorer` is the module the trainer wraps with DDP/FSDP: its forward returns per-token
log-probs and entropies of the response tokens, projecting hidden states to the vocabulary in
chunks so the full [B, L, V] float32 logits are never held at once (with gradients, each chunk
is recomputed in backward).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hapo_cli.errors import HapoError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_model_path(name_or_path: str) -> str:
    """`tiny` -> the cached built-in model; a local folder must exist; anything else is a Hub id."""
    if name_or_path == "tiny":
        from hapo_cli.data.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    p = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or p.exists() or name_or_path.count("/") != 1
    if looks_local:
        if not p.exists():
            raise HapoError(f"model path {name_or_path!r} does not exist: give a local model folder, a Hub id (org/name) or tiny")
        if not (p / "config.json").exists():
            raise HapoError(f"model path {name_or_path!r} has no config.json: point model.name_or_path at a saved transformers model folder")
        return str(p)
    return name_or_path


def load_model_and_tokenizer(name_or_path: str, dtype: str = "float32", device: str | torch.device = "cpu",
                             trust_remote_code: bool = False, attn_implementation: str | None = None):
    """(model, tokenizer) through `from_pretrained`; one clear HapoError when it cannot be had."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    kwargs = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype], **kwargs)
    except OSError as err:
        if os.path.isdir(path):
            raise HapoError(f"cannot load the model in {path!r}: {str(err).splitlines()[0]}") from None
        raise HapoError(
            f"cannot load model {name_or_path!r} from the Hugging Face Hub (offline or not cached): "
            f"download it where there is network and set model.name_or_path=/path/to/folder"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions counting only attended tokens (what `generate` uses with left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ResponseScorer(nn.Module):
    """Wraps a causal LM: forward(prompt+response) -> (logp [B, L], entropy [B, L]) of the response tokens."""

    def __init__(self, model: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = int(chunk_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_ids: torch.Tensor,
                temperature: float = 1.0, with_entropy: bool = True):
        """input_ids [B, P+L] (left-padded prompt, right-padded response), response_ids [B, L]."""
        from hapo_cli.algo import token_entropy, token_logprobs

        L = response_ids.shape[1]
        decoder = self.model.get_decoder()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        hidden = hidden[:, -L - 1 : -1]  # [B, L, H]: the state that predicts each response token
        head = self.model.get_output_embeddings()

        def project(h: torch.Tensor, labels: torch.Tensor):
            logits = head(h)
            if logits.dtype in (torch.bfloat16, torch.float16):
                logits = logits.float()  # log-probs and entropies in float32 (float64 stays float64)
            if temperature != 1.0:
                logits = logits / temperature
            lp = token_logprobs(logits, labels)
            ent = token_entropy(logits) if with_entropy else torch.zeros_like(lp)
            return lp, ent

        B = response_ids.shape[0]
        step = max(1, self.chunk_size // max(1, B))  # response positions per chunk (~chunk_size tokens)
        if step >= L:
            return project(hidden, response_ids)
        outs = []
        for s in range(0, L, step):
            h, y = hidden[:, s : s + step], response_ids[:, s : s + step]
            if torch.is_grad_enabled() and h.requires_grad:
                outs.append(checkpoint(project, h, y, use_reentrant=False))
            else:
                outs.append(project(h, y))
        return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)
