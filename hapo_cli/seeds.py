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
