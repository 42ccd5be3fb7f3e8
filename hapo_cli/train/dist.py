"""The few collectives the training loop needs (accelerate underneath), no-ops on one process."""

from __future__ import annotations

import torch


class Dist:
    def __init__(self, accelerator):
        self.acc = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.main = accelerator.is_main_process

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(x.clone(), reduction="sum") if self.world > 1 else x

    def min(self, x: int) -> int:
        if self.world == 1:
            return x
        t = torch.tensor([x], device=self.acc.device)
        return int(self.acc.gather(t).min().item())

    def mean_dict(self, d: dict[str, float]) -> dict[str, float]:
        if self.world == 1 or not d:
            return d
        keys = sorted(d)
        t = torch.tensor([float(d[k]) for k in keys], device=self.acc.device, dtype=torch.float64)
        t = self.acc.reduce(t, reduction="mean")
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def cat_1d(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate a variable-length 1-D tensor across ranks."""
        if self.world == 1:
            return x
        x = x.to(self.acc.device)
        n = self.acc.gather(torch.tensor([x.numel()], device=x.device))
        padded = self.acc.pad_across_processes(x, dim=0, pad_index=0)
        g = self.acc.gather(padded).view(self.world, -1)
        return torch.cat([g[i, : int(n[i])] for i in range(self.world)])

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()

    @torch.no_grad()
    def weight_difference(self, model: torch.nn.Module) -> float:
        """Max |difference| of a per-parameter fingerprint across ranks (0 when DDP keeps them in sync)."""
        fp = torch.stack([p.double().sum() + (p.double() ** 2).sum() for p in model.parameters()])
        allfp = self.acc.gather(fp.to(self.acc.device).unsqueeze(0))
        return float((allfp - allfp[0:1]).abs().max())
