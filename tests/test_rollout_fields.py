"""`Rollout.select` and `concat_rollouts` carry every field, `entropy` and `extra` included."""

from __future__ import annotations

import dataclasses

import torch

from hapo_cli.rollout.base import Rollout, concat_rollouts

PAD = 0


def _rollout(n: int, P: int, L: int, seed: int, extra: dict | None = None, entropy: bool = True) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    rmask = (torch.arange(L) < lengths[:, None]).long()
    pmask = torch.ones(n, P, dtype=torch.long)
    pmask[0, 0] = 0
    return Rollout(
        prompt_ids=torch.randint(1, 50, (n, P), generator=g) * pmask,
        prompt_mask=pmask,
        response_ids=torch.randint(1, 50, (n, L), generator=g) * rmask,
        response_mask=rmask,
        logprobs=-torch.rand(n, L, generator=g) * rmask,
        temperatures=(0.9 + 0.2 * torch.rand(n, L, generator=g)) * rmask,
        finish_reasons=["stop" if i % 2 else "length" for i in range(n)],
        texts=[f"s{seed}-{i}" for i in range(n)],
        extra=extra if extra is not None else {},
        entropy=torch.rand(n, L, generator=g, dtype=torch.float64) * rmask if entropy else None,
    )


def test_select_keeps_every_field_and_indexes_per_row_extra():
    r = _rollout(5, 3, 4, seed=1, extra={"engine": "hf", "ids": [10, 11, 12, 13, 14],
                                         "per_token": torch.arange(20.0).view(5, 4), "n_missing": 3})
    idx = [4, 0, 2]
    s = r.select(idx)
    t = torch.tensor(idx)
    for f in Rollout._ROW_TENSORS:
        assert torch.equal(getattr(s, f), getattr(r, f)[t]), f
    assert s.entropy.dtype == torch.float64
    assert s.finish_reasons == ["length", "length", "length"] and s.texts == ["s1-4", "s1-0", "s1-2"]
    assert s.extra["engine"] == "hf" and s.extra["n_missing"] == 3
    assert s.extra["ids"] == [14, 10, 12]
    assert torch.equal(s.extra["per_token"], torch.tensor([[16.0, 17, 18, 19], [0, 1, 2, 3], [8, 9, 10, 11]]))
    # every dataclass field is accounted for (a new field must be carried too)
    carried = set(Rollout._ROW_TENSORS) | {"finish_reasons", "texts", "extra"}
    assert {f.name for f in dataclasses.fields(Rollout)} == carried


def test_concat_pads_and_stacks_entropy_and_extra():
    a = _rollout(2, 3, 4, seed=2, extra={"engine": "hf", "ids": ["a0", "a1"], "tok": torch.ones(2, 4)})
    b = _rollout(3, 5, 2, seed=3, extra={"engine": "hf", "ids": ["b0", "b1", "b2"], "tok": 2 * torch.ones(3, 2)})
    c = concat_rollouts([a, b], PAD)
    assert c.response_ids.shape == (5, 4) and c.prompt_ids.shape == (5, 5)
    assert torch.equal(c.entropy[:2], a.entropy)
    assert torch.equal(c.entropy[2:, :2], b.entropy) and torch.equal(c.entropy[2:, 2:], torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(c.logprobs[2:, :2], b.logprobs)
    assert torch.equal(c.prompt_ids[:2, 2:], a.prompt_ids) and torch.equal(c.prompt_mask[:2, :2], torch.zeros(2, 2, dtype=torch.long))
    assert c.extra["ids"] == ["a0", "a1", "b0", "b1", "b2"] and c.extra["engine"] == "hf"
    assert torch.equal(c.extra["tok"], torch.tensor([[1.0] * 4] * 2 + [[2.0, 2.0, 0.0, 0.0]] * 3))
    # select after concat: the trainer's path (collect keeps groups, then trims)
    s = c.select([3, 1])
    assert torch.equal(s.entropy[0, :2], b.entropy[1]) and torch.equal(s.entropy[1], a.entropy[1])
    assert s.extra["ids"] == ["b1", "a1"] and s.texts == ["s3-1", "s2-1"]


def test_concat_drops_entropy_unless_every_part_has_it():
    a = _rollout(2, 3, 4, seed=4)
    b = _rollout(2, 3, 4, seed=5, entropy=False)
    assert concat_rollouts([a, b], PAD).entropy is None
    assert concat_rollouts([a, a], PAD).entropy.shape == (4, 4)
