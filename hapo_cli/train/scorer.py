"""`ResponseScorer`: the module the trainer wraps with DDP/FSDP.

Its forward returns per-token log-probs and entropies of the response tokens, projecting hidden
states to the vocabulary in chunks so the full [B, L, V] float32 logits are never held at once
(with gradients, each chunk is recomputed in backward).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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
            logits = head(h)  # [B, l, V] in the model's dtype: algo converts it to float32 chunk by chunk
            if temperature != 1.0:  # divide in float32: a bf16 division would round every logit
                logits = logits.float() / temperature if logits.dtype in (torch.bfloat16, torch.float16) else logits / temperature
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
