"""`ResponseScorer`: the module the trainer wraps with DDP/FSDP.

Its forward returns per-token log-probs and entropies of the response tokens, projecting hidden
states to the vocabulary in chunks. With gradients, the last chunk keeps its logits for the
backward and every earlier chunk is recomputed there (activation checkpointing): at most one
chunk's logits are held between forward and backward, and only the tokens beyond one chunk are
projected twice (recomputing every chunk cost one extra vocabulary projection of the whole
micro-batch, about a fifth of a CPU forward+backward at Qwen2.5's vocabulary). A chunk's logits
stay in the model's dtype (bf16: the matmul accumulates in float32); the log-probs and
entropies come from one fused kernel that converts only a small block of rows at a time to
float32, so neither the full `[B, L, V]` logits nor a float32 copy of one chunk is ever held, in
the forward or the backward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

LOGITS_PER_CHUNK = 1 << 28  # default chunk: ~268M logits (1,766 tokens at Qwen2.5's 151,936; 512 MiB in bf16)
ROWS_PER_BLOCK = 1 << 22  # float32 working block inside a chunk: ~4M logits (27 rows at 151,936; 16 MiB)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions counting only attended tokens (what `generate` uses with left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ResponseScorer(nn.Module):
    """Wraps a causal LM: forward(prompt+response) -> (logp [B, L], entropy [B, L]) of the response tokens.

    `chunk_size`: tokens per vocabulary-projection chunk; None picks it from the vocabulary
    (`LOGITS_PER_CHUNK // V` tokens: the whole batch for a tiny vocabulary, ~1.8k tokens for Qwen2.5).
    `keep_last_chunk`: with gradients, keep the last chunk's logits for the backward (default) or
    recompute every chunk (False: nothing held between forward and backward, one more projection).
    Values and gradients are the same either way, up to float rounding of the chunk boundaries.
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None, keep_last_chunk: bool = True):
        super().__init__()
        self.model = model
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.keep_last_chunk = bool(keep_last_chunk)

    def chunk_tokens(self, vocab: int) -> int:
        """Tokens per projection chunk for a vocabulary of `vocab` entries."""
        if self.chunk_size is not None:
            return max(1, self.chunk_size)
        return max(1, LOGITS_PER_CHUNK // max(1, vocab))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_ids: torch.Tensor,
                temperature: float = 1.0, with_entropy: bool = True):
        """input_ids [B, P+L] (left-padded prompt, right-padded response), response_ids [B, L]."""
        from hapo_cli.algo.entropy import token_logprobs_and_entropy

        L = response_ids.shape[1]
        decoder = self.model.get_decoder()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        hidden = hidden[:, -L - 1 : -1]  # [B, L, H]: the state that predicts each response token
        head = self.model.get_output_embeddings()
        V = head.weight.shape[0]
        block = max(1, ROWS_PER_BLOCK // V)  # rows per float32 working block

        def project(h: torch.Tensor, labels: torch.Tensor):
            logits = head(h)  # [B, n, V] in the model's (or autocast's) dtype
            lp, ent = token_logprobs_and_entropy(logits, labels, temperature, chunk_size=block)
            return lp, ent if with_entropy else torch.zeros_like(lp)

        B = response_ids.shape[0]
        step = max(1, self.chunk_tokens(V) // max(1, B))  # response positions per chunk
        if step >= L:
            return project(hidden, response_ids)
        grad = torch.is_grad_enabled() and hidden.requires_grad
        kept = L - step if grad and self.keep_last_chunk else L  # positions from `kept` on: one chunk, not recomputed
        bounds = [(s, min(s + step, kept)) for s in range(0, kept, step)] + ([(kept, L)] if kept < L else [])
        outs = []
        for s, e in bounds:
            h, y = hidden[:, s:e], response_ids[:, s:e]
            if grad and s < kept:
                outs.append(checkpoint(project, h, y, use_reentrant=False))
            else:
                outs.append(project(h, y))
        return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)
