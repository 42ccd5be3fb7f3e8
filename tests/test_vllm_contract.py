"""hapo's vLLM ATS logits processors against the REAL vLLM classes, on CPU (no GPU, no model).

vLLM is taken from the environment, or from the side folder `.vllm-env` ($VLLM_SIDE_ENV) that
`bash tests/install_vllm_side_env.sh` (`make vllm-side-env`) fills with vLLM's Python modules
and no dependencies; the folder is APPENDED to sys.path so it never shadows the main
environment. Without either, the module is skipped with that instruction.

What is checked, through vLLM's own public loaders and state builders:
- `build_logitsprocs` (V1 runner) and `build_custom_logits_processors` (Model Runner V2) load
  `hapo_cli.rollout.vllm_ats:ATSLogitsProcessor` by its FQCN and construct it;
- fed real `BatchUpdate`s (vLLM's `BatchUpdateBuilder`) or real `RequestState` slots +
  `LogitsContext`s, the processor divides exactly the ATS rows by `1 + tau*h`, and the factor
  times T_base equals `hapo_cli.algo.adaptive_temperature` bit for bit; requests without the
  extra args and greedy requests are untouched (bit-identical); moves, swaps, removals, slot
  reuse and speculative-decoding rows are followed;
- vLLM's request validators reject malformed `hapo_ats` entries;
- the engine's request building and output conversion work on real vLLM objects.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hapo_cli.algo import EntropyStats, adaptive_temperature

SIDE_ENV = Path(os.environ.get("VLLM_SIDE_ENV") or Path(__file__).resolve().parent.parent / ".vllm-env")
INSTALL_HINT = "install the side env: bash tests/install_vllm_side_env.sh (or make vllm-side-env)"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None and not SIDE_ENV.is_dir(),
    reason=f"vLLM is not importable and {SIDE_ENV} does not exist: {INSTALL_HINT}",
)

# Filled by the module fixture once vLLM is importable (nothing is imported at collection time, so
# the rest of the suite never sees the side folder on sys.path).
vllm = vllm_ats = SamplingParams = BatchUpdateBuilder = MoveDirectionality = None
build_logitsprocs = validate_logits_processors_parameters = V1LogitsProcessor = None
ATS_PROCESSOR_FQCN = RECORDER = ATSLogitsProcessor = None


@pytest.fixture(scope="module", autouse=True)
def _vllm_modules():
    """Import vLLM (environment or side folder) for this module only; undo the side folder after."""
    added = False
    old_target = os.environ.get("VLLM_TARGET_DEVICE")
    if importlib.util.find_spec("vllm") is None:
        if not SIDE_ENV.is_dir():
            pytest.skip(f"vLLM is not importable and {SIDE_ENV} does not exist: {INSTALL_HINT}")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # vLLM's CPU platform object: no GPU needed
        sys.path.append(str(SIDE_ENV))
        added = True
    try:
        import vllm as _vllm
        import vllm.v1.sample.logits_processor as v1lp
        from vllm import SamplingParams as _SamplingParams

        from hapo_cli.rollout import vllm_ats as _vllm_ats
    except Exception as err:  # noqa: BLE001 - any import failure means: no usable vLLM here
        _leave(added, old_target)
        pytest.skip(f"vLLM could not be imported ({type(err).__name__}: {err}); {INSTALL_HINT}")
    globals().update(
        vllm=_vllm, vllm_ats=_vllm_ats, SamplingParams=_SamplingParams,
        BatchUpdateBuilder=v1lp.BatchUpdateBuilder, MoveDirectionality=v1lp.MoveDirectionality,
        build_logitsprocs=v1lp.build_logitsprocs,
        validate_logits_processors_parameters=v1lp.validate_logits_processors_parameters,
        V1LogitsProcessor=v1lp.LogitsProcessor, ATS_PROCESSOR_FQCN=_vllm_ats.ATS_PROCESSOR_FQCN,
        RECORDER=_vllm_ats.RECORDER, ATSLogitsProcessor=_vllm_ats.ATSLogitsProcessor,
    )
    yield
    _leave(added, old_target)


def _leave(added: bool, old_target: str | None) -> None:
    if not added:
        return
    root = str(SIDE_ENV)
    while root in sys.path:
        sys.path.remove(root)
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if f.startswith(root) or name == "hapo_cli.rollout.vllm_ats":
            del sys.modules[name]
    pkg = sys.modules.get("hapo_cli.rollout")
    if pkg is not None and hasattr(pkg, "vllm_ats"):
        delattr(pkg, "vllm_ats")
    if old_target is None:
        os.environ.pop("VLLM_TARGET_DEVICE", None)
    else:
        os.environ["VLLM_TARGET_DEVICE"] = old_target


def _require_v2():
    if not vllm_ats.HAS_V2_INTERFACE:
        pytest.skip(f"vLLM {vllm_ats.VLLM_VERSION} has no Model Runner V2 interface")


V = 64
STATS_A = {"q": 0.1, "s": 0.9, "z_max": 1.7, "z_min": -2.3}
STATS_B = {"q": -0.4, "s": 1.3, "z_max": 0.8, "z_min": -1.1}


def _ats(stats, tau=0.05, mode="paper", row_id=None) -> dict:
    entry = {"stats": dict(stats), "tau": tau, "mode": mode}
    if row_id is not None:
        entry["row_id"] = row_id
    return {"hapo_ats": entry}


def _logits(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * torch.linspace(0.3, 5.0, n).unsqueeze(-1)


def _expected_T(logits: torch.Tensor, t_base: float, stats: dict, tau: float, mode: str) -> torch.Tensor:
    return adaptive_temperature(logits, t_base, EntropyStats.from_dict(stats), tau, mode=mode)


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.config import VllmConfig

    return VllmConfig()


@pytest.fixture(autouse=True)
def _empty_recorder():
    RECORDER.drain()
    yield
    RECORDER.drain()


# --------------------------------------------------------------------------- loading


def test_processor_subclasses_the_real_interfaces():
    assert issubclass(ATSLogitsProcessor, V1LogitsProcessor)
    if vllm_ats.HAS_V2_INTERFACE:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

        assert issubclass(ATSLogitsProcessor, V2LogitsProcessor)
    assert vllm_ats.VLLM_VERSION == vllm.__version__


def _v1_processor(vllm_config) -> ATSLogitsProcessor:
    procs = build_logitsprocs(vllm_config, torch.device("cpu"), False, False, [ATS_PROCESSOR_FQCN])
    ours = [p for p in procs.all if isinstance(p, ATSLogitsProcessor)]
    assert len(ours) == 1
    # must run before the temperature division (V1 applies argmax-invariant ones after it)
    assert ours[0] in procs.non_argmax_invariant
    assert ours[0].runner == "v1"
    return ours[0]


# --------------------------------------------------------------------------- V1 model runner


def test_v1_batch_update_scales_exactly_the_ats_rows(vllm_config):
    proc = _v1_processor(vllm_config)
    b = BatchUpdateBuilder()
    outs = [[] for _ in range(5)]
    reqs = [
        (0, SamplingParams(temperature=0.7, extra_args=_ats(STATS_A, row_id="r0"))),
        (1, SamplingParams(temperature=0.7)),  # no extra args: untouched
        (2, SamplingParams(temperature=0.0, extra_args=_ats(STATS_A, row_id="r2"))),  # greedy: untouched
        (3, SamplingParams(temperature=1.0, extra_args=_ats(STATS_B, tau=0.1, mode="reference", row_id="r3"))),
        (4, SamplingParams(temperature=1.0, extra_args={"something_else": 1})),  # other extra args: untouched
    ]
    for i, sp in reqs:
        b.added.append((i, sp, [1, 2, 3], outs[i]))
    proc.update_state(b.get_and_reset(5))

    logits = _logits(5)
    original = logits.clone()
    out = proc.apply(logits)
    factors = RECORDER.drain()
    assert set(factors) == {"r0", "r3"}  # greedy / plain rows never recorded
    for i in (1, 2, 4):
        assert torch.equal(out[i], original[i])
    for i, key, t_base, stats, tau, mode in [(0, "r0", 0.7, STATS_A, 0.05, "paper"),
                                              (3, "r3", 1.0, STATS_B, 0.1, "reference")]:
        f = torch.tensor(factors[key], dtype=torch.float32)
        assert f.shape == (1,)
        T = _expected_T(original, t_base, stats, tau, mode)[i]
        assert torch.equal(f[0] * t_base, T)  # bit for bit
        assert torch.equal(out[i], original[i] / f[0])


def test_v1_follows_removals_moves_swaps_and_positions(vllm_config):
    proc = _v1_processor(vllm_config)
    b = BatchUpdateBuilder()
    outs = {k: [] for k in "abc"}
    b.added.append((0, SamplingParams(temperature=1.0, extra_args=_ats(STATS_A, row_id="a")), None, outs["a"]))
    b.added.append((1, SamplingParams(temperature=1.0), None, outs["b"]))
    b.added.append((2, SamplingParams(temperature=1.0, extra_args=_ats(STATS_B, row_id="c")), None, outs["c"]))
    proc.update_state(b.get_and_reset(3))
    steps = []
    for step in range(3):
        lg = _logits(3, seed=10 + step)
        steps.append(lg.clone())
        proc.apply(lg)
        for k in "abc":
            outs[k].append(7)  # what vLLM's runner does after a step that produced a token
    # request b leaves; c moves down into its index (vLLM condenses the batch)
    b.removed_append(1)
    b.moved.append((2, 1, MoveDirectionality.UNIDIRECTIONAL))
    proc.update_state(b.get_and_reset(2))
    lg = _logits(2, seed=20)
    ref = lg.clone()
    out = proc.apply(lg)
    T_c = _expected_T(ref, 1.0, STATS_B, 0.05, "paper")
    T_a = _expected_T(ref, 1.0, STATS_A, 0.05, "paper")
    factors = RECORDER.drain()
    assert len(factors["a"]) == 4 and len(factors["c"]) == 4  # positions 0..3
    assert torch.equal(torch.tensor(factors["c"][3], dtype=torch.float32), T_c[1])
    assert torch.equal(torch.tensor(factors["a"][3], dtype=torch.float32), T_a[0])
    assert torch.equal(out[1], ref[1] / T_c[1])
    for step, lg in enumerate(steps):  # earlier steps: a at row 0, c at row 2
        assert torch.equal(torch.tensor(factors["a"][step], dtype=torch.float32), _expected_T(lg, 1.0, STATS_A, 0.05, "paper")[0])
        assert torch.equal(torch.tensor(factors["c"][step], dtype=torch.float32), _expected_T(lg, 1.0, STATS_B, 0.05, "paper")[2])
    # swap the two rows
    b.moved.append((0, 1, MoveDirectionality.SWAP))
    proc.update_state(b.get_and_reset(2))
    lg = _logits(2, seed=21)
    ref = lg.clone()
    out = proc.apply(lg)
    assert torch.equal(out[0], ref[0] / _expected_T(ref, 1.0, STATS_B, 0.05, "paper")[0])
    assert torch.equal(out[1], ref[1] / _expected_T(ref, 1.0, STATS_A, 0.05, "paper")[1])
    # a new request without ATS replaces index 0: untouched from now on
    b.removed_append(0)
    b.added.append((0, SamplingParams(temperature=1.0), None, []))
    proc.update_state(b.get_and_reset(2))
    lg = _logits(2, seed=22)
    ref = lg.clone()
    out = proc.apply(lg)
    assert torch.equal(out[0], ref[0])
    assert not torch.equal(out[1], ref[1])


def test_v1_chunked_prefill_steps_are_overwritten_by_the_real_sample(vllm_config):
    proc = _v1_processor(vllm_config)
    b = BatchUpdateBuilder()
    out_ids: list[int] = []
    b.added.append((0, SamplingParams(temperature=1.0, extra_args=_ats(STATS_A, row_id="p")), None, out_ids))
    proc.update_state(b.get_and_reset(1))
    proc.apply(_logits(1, seed=1))  # partial prefill chunk: its token is discarded, no output appended
    final = _logits(1, seed=2)
    ref = final.clone()
    proc.apply(final)  # last prefill chunk: the first real token
    f = RECORDER.drain()["p"]
    assert len(f) == 1
    assert torch.equal(torch.tensor(f[0], dtype=torch.float32), _expected_T(ref, 1.0, STATS_A, 0.05, "paper")[0])


# --------------------------------------------------------------------------- Model Runner V2


def _request_state(max_num_reqs: int = 8, max_model_len: int = 64):
    from vllm.v1.worker.gpu.states import RequestState

    if not torch.cuda.is_available():
        # vLLM's UVA buffers need pinned memory (an accelerator); its own NonUvaBuffer fallback
        # keeps plain CPU tensors. This only picks vLLM's fallback, nothing of hapo is replaced.
        import vllm.v1.worker.gpu.buffer_utils as bu

        bu.is_uva_available = lambda: False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return RequestState(max_num_reqs=max_num_reqs, max_model_len=max_model_len, max_num_batched_tokens=256,
                        num_speculative_steps=0, vocab_size=V, device=device)


def _v2_processor(vllm_config, rs) -> ATSLogitsProcessor:
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors

    procs = build_custom_logits_processors(vllm_config, rs, False, [ATS_PROCESSOR_FQCN])
    assert len(procs) == 1 and isinstance(procs[0], ATSLogitsProcessor) and procs[0].runner == "v2"
    return procs[0]


def _ctx(rows_slots: list[int], req_slots: list[int], pos: list[int]):
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    n = len(rows_slots)
    return LogitsContext(
        expanded_idx_mapping=torch.tensor(rows_slots, dtype=torch.int32),
        idx_mapping=torch.tensor(req_slots, dtype=torch.int32),
        idx_mapping_np=np.array(req_slots, dtype=np.int32),
        expanded_local_pos=torch.zeros(n, dtype=torch.int32),
        input_ids=torch.zeros(n, dtype=torch.int32),
        pos=torch.tensor(pos, dtype=torch.int64),
        seq_lens_upper_bound_np=np.array([p + 1 for p in pos[: len(req_slots)]], dtype=np.int32),
    )


def _add(rs, proc, req_id: str, prompt_len: int, sp) -> tuple[int, bool]:
    rs.add_request(req_id, prompt_len, list(range(prompt_len)), 0, 16)
    slot = rs.req_id_to_index[req_id]
    return slot, proc.add_request(slot, sp)


def test_v2_slots_context_and_positions(vllm_config):
    _require_v2()
    rs = _request_state()
    proc = _v2_processor(vllm_config, rs)
    s_a, on_a = _add(rs, proc, "a", 5, SamplingParams(temperature=0.8, extra_args=_ats(STATS_A, row_id="a")))
    s_b, on_b = _add(rs, proc, "b", 3, SamplingParams(temperature=0.8))
    s_g, on_g = _add(rs, proc, "g", 4, SamplingParams(temperature=0.0, extra_args=_ats(STATS_A, row_id="g")))
    s_c, on_c = _add(rs, proc, "c", 6, SamplingParams(temperature=1.0, extra_args=_ats(STATS_B, 0.2, "reference", "c")))
    assert (on_a, on_b, on_g, on_c) == (True, False, False, True)  # only ATS rows need processing
    rs.prompt_len.copy_to_uva()  # what RequestState.apply_staged_writes publishes each step
    # rows in a different order than the slots; each request 2 tokens into its output
    order = [s_c, s_b, s_a, s_g]
    plen = {s_a: 5, s_b: 3, s_g: 4, s_c: 6}
    pos = [plen[s] + 1 for s in order]  # input position of the token fed this step
    logits = _logits(4, seed=3)
    ref = logits.clone()
    out = proc.apply(logits, _ctx(order, order, pos))
    assert torch.equal(out[1], ref[1]) and torch.equal(out[3], ref[3])  # plain and greedy rows
    f = RECORDER.drain()
    assert set(f) == {"a", "c"}
    assert len(f["a"]) == 3 and np.isnan(f["a"][:2]).all()  # output index 2 = pos + 1 - prompt_len
    T_a = _expected_T(ref, 0.8, STATS_A, 0.05, "paper")[2]
    T_c = _expected_T(ref, 1.0, STATS_B, 0.2, "reference")[0]
    assert torch.equal(torch.tensor(f["a"][2], dtype=torch.float32) * 0.8, T_a)
    assert torch.equal(torch.tensor(f["c"][2], dtype=torch.float32) * 1.0, T_c)
    assert torch.equal(out[2], ref[2] / torch.tensor(f["a"][2], dtype=torch.float32))
    assert torch.equal(out[0], ref[0] / torch.tensor(f["c"][2], dtype=torch.float32))
    # slot reuse: "a" finishes, a plain request takes its slot -> untouched
    rs.remove_request("a")
    s_d, on_d = _add(rs, proc, "d", 5, SamplingParams(temperature=0.8))
    assert s_d == s_a and on_d is False
    lg = _logits(1, seed=4)
    ref = lg.clone()
    assert torch.equal(proc.apply(lg, _ctx([s_d], [s_d], [7])), ref)


def test_v2_speculative_rows_and_prefill_chunks(vllm_config):
    _require_v2()
    rs = _request_state()
    proc = _v2_processor(vllm_config, rs)
    s, on = _add(rs, proc, "x", 4, SamplingParams(temperature=1.0, extra_args=_ats(STATS_A, row_id="x")))
    assert on
    rs.prompt_len.copy_to_uva()
    proc.apply(_logits(1, seed=5), _ctx([s], [s], [1]))  # partial prefill chunk: negative output index
    assert RECORDER.drain() == {}
    # one request, three rows (target + 2 drafts) at positions 3, 4, 5 -> outputs 0, 1, 2
    lg = _logits(3, seed=6)
    ref = lg.clone()
    out = proc.apply(lg, _ctx([s, s, s], [s], [3, 4, 5]))
    T = _expected_T(ref, 1.0, STATS_A, 0.05, "paper")
    f = RECORDER.drain()["x"]
    assert torch.equal(torch.tensor(f, dtype=torch.float32), T)
    assert torch.allclose(out, ref / T.unsqueeze(-1), rtol=0, atol=0)
    # the next step re-samples output 1 (draft rejected): the later record wins
    lg2 = _logits(1, seed=7)
    proc.apply(lg2.clone(), _ctx([s], [s], [4]))
    f2 = RECORDER.drain()["x"]
    assert len(f2) == 2 and np.isnan(f2[0])
    assert torch.equal(torch.tensor(f2[1], dtype=torch.float32), _expected_T(lg2, 1.0, STATS_A, 0.05, "paper")[0])


# --------------------------------------------------------------------------- validation


BAD = [{"hapo_ats": {"tau": 0.05}}, {"hapo_ats": {"stats": STATS_A, "tau": 1.5}},
       {"hapo_ats": {"stats": {**STATS_A, "s": -1.0}}}, {"hapo_ats": {"stats": STATS_A, "mode": "nope"}}]


@pytest.mark.parametrize("extra", BAD)
def test_vllm_validators_reject_malformed_entries(extra):
    from vllm.exceptions import VLLMValidationError

    sp = SamplingParams(temperature=1.0, extra_args=extra)
    with pytest.raises(VLLMValidationError, match="hapo ATS"):
        validate_logits_processors_parameters([ATS_PROCESSOR_FQCN], sp)
    if vllm_ats.HAS_V2_INTERFACE:
        from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

        with pytest.raises(VLLMValidationError, match="hapo ATS"):
            build_custom_logits_processors_params_validator([ATS_PROCESSOR_FQCN])(sp)
    # well-formed and plain requests pass
    validate_logits_processors_parameters([ATS_PROCESSOR_FQCN], SamplingParams(temperature=1.0, extra_args=_ats(STATS_A)))
    validate_logits_processors_parameters([ATS_PROCESSOR_FQCN], SamplingParams(temperature=1.0))


# --------------------------------------------------------------------------- engine pieces


def test_worker_extension_resolves_and_drains():
    from vllm.utils.import_utils import resolve_obj_by_qualname

    cls = resolve_obj_by_qualname(vllm_ats.ATS_WORKER_EXTENSION_FQCN.replace(":", "."))
    assert cls is vllm_ats.ATSWorkerExtension
    RECORDER.record(["k"], np.array([1]), torch.tensor([1.25]))
    assert cls().hapo_ats_drain_factors() == {"k": [pytest.approx(float("nan"), nan_ok=True), 1.25]}


def test_engine_requests_and_outputs_with_real_vllm_objects():
    from vllm.distributed.weight_transfer.base import VLLMWeightSyncClient
    from vllm.logprobs import FlatLogprobs, Logprob
    from vllm.outputs import CompletionOutput

    from hapo_cli.data.tiny import build_tokenizer
    from hapo_cli.rollout.base import ATSParams
    from hapo_cli.rollout.base import SamplingParams as HapoSampling
    from hapo_cli.rollout.vllm_engine import VLLMRolloutEngine, _LLMWeightSyncClient, sampled_token_logprobs

    # the weight-sync client has every method of vLLM's trainer-side client protocol
    for name in ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update"):
        assert hasattr(VLLMWeightSyncClient, name) and callable(getattr(_LLMWeightSyncClient, name))

    tok = build_tokenizer()
    eng = VLLMRolloutEngine.__new__(VLLMRolloutEngine)  # no LLM: only the CPU-side helpers
    eng.tokenizer, eng.return_logprobs, eng.record_factors, eng.vllm_version = tok, True, True, vllm.__version__
    params = HapoSampling(n=2, temperature=0.9, top_p=0.95, top_k=0, max_new_tokens=6, seed=11,
                          ats=ATSParams(stats=STATS_A, tau=0.05))
    from hapo_cli.rollout.ats_logic import ATSRowParams

    ats = ATSRowParams.from_ats(params.ats)
    sp = eng._sampling_params(params, False, 3, ats.to_extra_args("u:0:3"))
    assert isinstance(sp, SamplingParams)
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.logprobs) == (1, 0.9, 0.95, 0, 6, 0)
    assert sp.extra_args["hapo_ats"]["row_id"] == "u:0:3" and sp.stop_token_ids == [tok.eos_token_id]
    validate_logits_processors_parameters([ATS_PROCESSOR_FQCN], sp)
    g = eng._sampling_params(HapoSampling(temperature=0.0), True, 0, None)
    assert g.temperature == 0.0 and g.extra_args is None

    eos = tok.eos_token_id
    digits = tok.convert_tokens_to_ids(list("12"))
    flat = FlatLogprobs()
    for t, lp in zip([*digits, eos], [-0.5, -1.0, -0.1]):
        flat.append({t: Logprob(logprob=lp, rank=1)})
    outs = [
        SimpleNamespace(outputs=[CompletionOutput(0, "", [*digits, eos], None, flat, finish_reason="stop")]),
        SimpleNamespace(outputs=[CompletionOutput(0, "", digits * 3, None,
                                                  [{d: Logprob(-0.25)} for d in digits * 3], finish_reason="length")]),
    ]
    factors = {"u:0:0": [1.02, 0.97, 1.0], "u:0:1": [1.01] * 6}
    roll = eng._to_rollout([[5, 6], [5, 6]], outs, params, False, ats, ["u:0:0", "u:0:1"], factors)
    assert roll.response_ids.shape == (2, 6) and roll.response_mask.sum(-1).tolist() == [3, 6]
    assert roll.finish_reasons == ["stop", "length"] and roll.texts == ["12", "121212"]
    assert torch.allclose(roll.logprobs[0, :3], torch.tensor([-0.5, -1.0, -0.1])) and roll.logprobs[0, 3:].eq(0).all()
    assert torch.equal(roll.temperatures[0, :3], torch.tensor([1.02, 0.97, 1.0], dtype=torch.float32) * 0.9)
    assert roll.temperatures[0, 3:].eq(0).all() and roll.extra["ats_missing_factors"] == 0
    assert sampled_token_logprobs(None, [1, 2]) != sampled_token_logprobs(flat, [*digits, eos])


class _FakeLLM:
    """Stands in for `vllm.LLM` (which needs a GPU): records the calls the engine makes."""

    def __init__(self, eos: int):
        self.calls: list[tuple] = []
        self.eos = eos
        self.loaded: dict[str, torch.Tensor] = {}
        self.factors: dict[str, list[float]] = {}

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method))
        if method == "reload_weights":
            from safetensors.torch import load_file

            self.loaded = load_file(str(Path(kwargs["weights_path"]) / "model.safetensors"))
            return [None]
        if method == "hapo_ats_drain_factors":
            return [self.factors, {}]  # two tensor-parallel workers; one recorded
        raise AssertionError(method)

    def generate(self, prompts, sps, use_tqdm=True):
        from vllm.outputs import CompletionOutput

        self.calls.append(("generate", len(prompts)))
        self.sps = sps
        self.factors = {sp.extra_args["hapo_ats"]["row_id"]: [1.0 + 0.01 * i, 0.98]
                        for i, sp in enumerate(sps) if sp.extra_args}
        return [SimpleNamespace(outputs=[CompletionOutput(0, "", [5, self.eos], None, None, finish_reason="stop")])
                for _ in prompts]


def test_engine_sleep_wake_and_weight_sync_protocol(monkeypatch):
    from hapo_cli.data.tiny import build_tokenizer
    from hapo_cli.errors import HapoError
    from hapo_cli.rollout import vllm_engine
    from hapo_cli.rollout.base import ATSParams
    from hapo_cli.rollout.base import SamplingParams as HapoSampling

    tok = build_tokenizer()

    class Engine(vllm_engine.VLLMRolloutEngine):
        def _create_llm(self, kwargs):  # the one GPU-only call: vllm.LLM(**kwargs)
            self.llm_args = kwargs
            return _FakeLLM(tok.eos_token_id)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    eng = Engine("unused-path", tok, weight_sync="disk", trainer_model=model, return_logprobs=False)
    llm = eng.llm
    assert eng.sleep_level == 2 and eng.auto_sync
    gen = HapoSampling(n=2, temperature=1.0, max_new_tokens=4)
    eng.generate([[1, 2]], gen)  # first call: the trainer's weights replace the checkpoint's
    assert llm.calls == [("rpc", "reload_weights"), ("reset_prefix_cache",), ("generate", 2)]
    assert all(torch.equal(llm.loaded[k], v) for k, v in model.state_dict().items())
    eng.sleep()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an optimizer step
    llm.calls.clear()
    roll = eng.generate([[1, 2]], HapoSampling(n=2, temperature=0.8, max_new_tokens=4,
                                               ats=ATSParams(stats=STATS_A, tau=0.05)))
    assert llm.calls == [("wake_up", ("weights",)), ("rpc", "reload_weights"), ("wake_up", None),
                         ("generate", 2), ("rpc", "hapo_ats_drain_factors")]
    assert torch.equal(llm.loaded["0.weight"], model[0].weight)
    rids = [sp.extra_args["hapo_ats"]["row_id"] for sp in llm.sps]
    assert len(set(rids)) == 2  # one request per response, each with its own row id
    assert torch.equal(roll.temperatures, torch.tensor([[1.0, 0.98], [1.01, 0.98]], dtype=torch.float32) * 0.8)
    assert roll.extra["ats_missing_factors"] == 0 and roll.finish_reasons == ["stop", "stop"]
    llm.calls.clear()
    eng.generate([[1, 2]], gen)  # nothing changed: no sync, no wake
    assert llm.calls == [("generate", 2)]
    with torch.no_grad():
        model[1].bias.add_(1.0)
    monkeypatch.setattr(vllm_engine, "_world_size", lambda: 2)
    with pytest.raises(HapoError, match="sync_weights"):  # never an implicit collective on one rank
        eng.generate([[1, 2]], gen)
    llm.calls.clear()
    eng.sync_weights(model)  # explicit, on every rank
    eng.sync_weights(model)  # unchanged since: no second transfer
    eng.generate([[1, 2]], gen)
    assert llm.calls == [("rpc", "reload_weights"), ("reset_prefix_cache",), ("generate", 2)]
    eng.sleep()
    llm.calls.clear()
    eng.sync_weights(model)  # weights dropped by sleep(level=2): sent again even though unchanged
    assert llm.calls == [("wake_up", ("weights",)), ("rpc", "reload_weights")]
    args = eng.llm_args
    assert args["logits_processors"] == [ATS_PROCESSOR_FQCN]
    assert args["worker_extension_cls"] == vllm_ats.ATS_WORKER_EXTENSION_FQCN
    assert args["logprobs_mode"] == "processed_logprobs" and args["enable_sleep_mode"] is True
    assert "weight_transfer_config" not in args  # disk sync; "ipc" sets {"backend": "ipc"}
    eng.close()


def test_recorder_later_records_win_and_host_spill_keeps_order():
    from hapo_cli.rollout.vllm_ats import FactorRecorder, _materialize

    def fill(rec):
        rec.record(["a", "b"], np.array([0, 0]), torch.tensor([1.0, 2.0]))
        rec.record(["a"], torch.tensor([-1], dtype=torch.int32), torch.tensor([9.0]))  # prefill chunk: dropped
        rec.record(["a", "b"], torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1.5, 2.5]))
        rec.record(["a"], np.array([1]), torch.tensor([1.25]))  # re-sampled position 1: wins

    rec = FactorRecorder()
    fill(rec)
    expected = {"a": [1.0, 1.25], "b": [2.0, float("nan"), 2.5]}
    got = rec.drain()
    assert got.keys() == expected.keys() and len(rec) == 0 and rec.drain() == {}
    for k, v in expected.items():
        np.testing.assert_array_equal(np.array(got[k]), np.array(v))
    fill(rec)
    rec._chunks = [_materialize(rec._chunks)]  # what a spill to host memory does
    rec.record(["b"], np.array([2]), torch.tensor([3.0]))
    got = rec.drain()
    np.testing.assert_array_equal(np.array(got["b"]), np.array([2.0, float("nan"), 3.0]))
