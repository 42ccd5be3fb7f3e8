"""Every seed the toolkit derives, in one place (each formula is part of a run's results: changing
one changes every sample drawn after it, so they are kept as they were first written)."""

from __future__ import annotations

_MOD = 2**63 - 1


def generation(seed: int, step: int, round_idx: int, rank: int) -> int:
    """Rollouts of training step `step`, generation round `round_idx` (dynamic sampling), on `rank`."""
    return (seed * 1_000_003 + step * 10_007 + round_idx * 101 + rank) % _MOD


def prompt_order(seed: int, epoch: int) -> int:
    """The shuffled order of the training rows in `epoch`."""
    return seed * 100_003 + epoch


def minibatch_order(seed: int, step: int, epoch: int) -> int:
    """The order of groups in PPO epoch `epoch` of `step` (only with ppo_epochs > 1)."""
    return seed * 7919 + step * 31 + epoch


def validation(seed: int) -> int:
    """The trainer's periodic validation (chunk i of questions then uses this + i)."""
    return seed + 12345


def eval_chunk(seed: int, chunk: int) -> int:
    """Chunk `chunk` of an evaluation's questions."""
    return seed + chunk


def loss_draw(seed: int, step: int, rank: int, micro: int) -> int:
    """A loss's random draw (Clip-Cov) in micro-batch `micro` (counted from 1 over the step's update) on `rank`."""
    return (seed * 1_000_033 + step * 10_009 + rank * 1_009 + micro) % _MOD


def gec(seed: int, step: int, round_idx: int, rank: int) -> int:
    """EDGE-GRPO's guided error correction: the branch draw of generation round `round_idx` of `step` on `rank`."""
    return (seed * 1_000_037 + step * 10_037 + round_idx * 103 + rank) % _MOD


def gec_generation(seed: int, step: int, round_idx: int, rank: int) -> int:
    """The reflect branch's continuation of generation round `round_idx` of `step` on `rank`."""
    return (seed * 1_000_039 + step * 10_039 + round_idx * 107 + rank) % _MOD
