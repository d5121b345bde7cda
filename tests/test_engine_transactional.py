"""Engine.step is exception-safe (SPEC section 9): whatever raises inside a step for one request (its callback,
the sampler, its logits, a kernel) finishes that request with an "error: ..." reason and returns its pages,
while the other requests get exactly the tokens of a clean run and the next generate is unaffected; a failure
of every request (a kernel that cannot run) fails them all and leaves the engine ready."""

import numpy as np
import pytest
import torch

import zaya_rt
from zaya_rt import ops
from zaya_rt.runtime import tiny_model
from zaya_rt.runtime.step_tape import StepTape

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [27, 18, 28], [14, 142, 135, 62, 37, 30, 95, 4, 8, 8, 41, 9, 7, 1]]
LENGTHS = [7, 9, 8]
ENGINE_ARGS = dict(num_pages=24, page_size=4, max_batch=3)
EAGER = dict(ENGINE_ARGS, cuda_graphs=False)  # every step through the model's Python (for _KernelFault)


def _params(seed_base: int = 100):
    """Seeded, truncated sampling: every token depends on the row it was sampled from."""
    return [zaya_rt.SamplingParams(max_new_tokens=n, temperature=0.9, top_k=40, top_p=0.95, seed=seed_base + i)
            for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


@pytest.fixture(scope="module")
def clean(model):
    """Tokens of the clean run, from a fresh engine."""
    return zaya_rt.Engine(model, **ENGINE_ARGS).generate(PROMPTS, _params())


def _run(engine, callbacks=None):
    """Queues PROMPTS with _params() (and callbacks), steps until done; returns the request ids."""
    callbacks = callbacks or [None] * len(PROMPTS)
    ids = [engine.add_request(p, sp, cb) for p, sp, cb in zip(PROMPTS, _params(), callbacks)]
    while engine.has_unfinished():
        engine.step()
    return ids


def _check_contained(engine, ids, clean, bad: int, reason: str, kept: int | None):
    """Request `bad` failed with `reason` after `kept` clean tokens (None: any clean prefix); the others match
    the clean run; every page is free again; the next generate gives the clean tokens."""
    for i, rid in enumerate(ids):
        if i == bad:
            assert engine.finish_reason(rid).startswith(f"error: {reason}"), engine.finish_reason(rid)
            got = engine.result(rid)
            assert got == clean[i][: len(got)]
            if kept is not None:
                assert len(got) == kept
            assert engine.error(rid) is not None
        else:
            assert engine.finish_reason(rid) == "length"
            assert engine.result(rid) == clean[i], f"request {i} differs from the clean run"
    assert engine.num_free_pages == engine.num_pages
    assert engine.cache.num_free_slots == engine.max_batch
    assert engine.generate(PROMPTS, _params()) == clean
    assert engine.num_free_pages == engine.num_pages


def test_clean_run_is_not_trivial(clean):
    assert [len(t) for t in clean] == LENGTHS
    assert len({tuple(t) for t in clean}) == len(clean)


def test_callback_raising_fails_only_its_request(model, clean):
    engine = zaya_rt.Engine(model, **ENGINE_ARGS)
    seen = []

    def boom(rid, token):
        seen.append(token)
        if len(seen) == 3:
            raise KeyError("callback refused token 3")

    ids = _run(engine, [None, boom, None])
    assert seen == clean[1][:3]
    _check_contained(engine, ids, clean, bad=1, reason="KeyError: 'callback refused token 3'", kept=3)


def test_sampler_error_fails_only_its_row(model, clean, monkeypatch):
    engine = zaya_rt.Engine(model, **ENGINE_ARGS)
    real = ops.sample_tokens
    bad_seed = _params()[2].seed

    def failing(logits, temperature, top_k, top_p, min_p, seed, step):
        if bool(((seed == bad_seed) & (step == 4)).any()):
            raise RuntimeError("sampler cannot take this row")
        return real(logits, temperature, top_k, top_p, min_p, seed, step)

    monkeypatch.setattr(ops, "sample_tokens", failing)
    ids = _run(engine)
    monkeypatch.undo()
    _check_contained(engine, ids, clean, bad=2, reason="RuntimeError: sampler cannot take this row", kept=4)


def test_top_k_beyond_the_vocabulary_is_off(model):
    """top_k = 2**31 used to overflow the sampler's int32 parameter; any top_k >= vocab keeps every token."""
    engine = zaya_rt.Engine(model, **ENGINE_ARGS)
    base = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    off = engine.generate(PROMPTS[:1], zaya_rt.SamplingParams(top_k=0, **base))
    for top_k in (256, 2**31, 2**40):
        assert engine.generate(PROMPTS[:1], zaya_rt.SamplingParams(top_k=top_k, **base)) == off
    assert engine.num_free_pages == engine.num_pages


def test_nan_logits_fail_only_their_request(clean):
    """A token whose embedding row is NaN poisons the logits of exactly the requests that read it; the pages it
    wrote (NaN K/V) are reused afterwards without leaking into other requests."""
    model = tiny_model(seed=4)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie first
        model.model.embed_tokens.weight[PROMPTS[0][4]] = float("nan")
    engine = zaya_rt.Engine(model, **ENGINE_ARGS)
    ids = _run(engine)
    rid = ids[0]
    assert engine.finish_reason(rid).startswith("error: ValueError") and "NaN" in engine.finish_reason(rid)
    assert engine.result(rid) == []
    # the other two requests never read the NaN row: exactly the clean tokens of the unpoisoned model
    for i in (1, 2):
        assert engine.result(ids[i]) == clean[i]
    assert engine.num_free_pages == engine.num_pages
    with pytest.raises(RuntimeError, match="1 of 3 requests failed.*prompt 0") as info:
        engine.generate(PROMPTS, _params())
    assert isinstance(info.value.__cause__, ValueError)
    first, second, third = (engine.result(r) for r in engine.last_request_ids)
    assert (first, second, third) == ([], clean[1], clean[2])
    assert engine.num_free_pages == engine.num_pages


class _KernelFault:
    """Makes layer 2's expert kernel raise mid-forward whenever `when(batch)` holds for the step's batch. The
    fault is injected into the model's Python, so the engine must run every step eagerly (cuda_graphs=False:
    a replayed step tape runs none of that Python; see test_a_failing_step_tape_is_contained)."""

    def __init__(self, engine, when):
        assert engine.decode_graphs is None, "build the engine with cuda_graphs=False"
        self.engine, self.when, self.armed, self.raised = engine, when, False, 0
        runner = engine.runner
        forward, experts = runner.forward, runner.kernels.experts
        layer2_experts = engine.model.model.layers[2].mlp.experts

        def armed_forward(batch):
            self.armed = self.when(batch)
            return forward(batch)

        def faulty_experts(module, *args):
            if self.armed and module is layer2_experts:
                self.raised += 1
                raise RuntimeError("expert kernel failed")
            return experts(module, *args)

        runner.forward = armed_forward
        runner.kernels.experts = faulty_experts


def test_kernel_error_for_one_request_mid_step(model, clean):
    """The batched forward cannot name its culprit: the batch is rerun one sequence at a time; only the
    request that fails alone finishes with the error."""
    engine = zaya_rt.Engine(model, **EAGER)
    ids = []

    def target_in(batch):
        seq = engine._results[ids[0]]
        return len(seq.generated) >= 2 and seq.slot in batch.state_slots.tolist()

    fault = _KernelFault(engine, target_in)
    ids.extend(engine.add_request(p, sp) for p, sp in zip(PROMPTS, _params()))
    while engine.has_unfinished():
        engine.step()
    assert fault.raised == 2  # in the batch, then alone
    fault.when = lambda batch: False
    _check_contained(engine, ids, clean, bad=0, reason="RuntimeError: expert kernel failed", kept=2)


def test_kernel_error_for_every_request(model, clean):
    """A kernel that fails for any batch (after the first token) fails every request; pages return; once the
    kernel works again the engine gives the clean tokens."""
    engine = zaya_rt.Engine(model, **EAGER)
    fault = _KernelFault(engine, lambda batch: int(batch.seq_lens.min()) > len(PROMPTS[1]) + 1)
    with pytest.raises(RuntimeError, match="3 of 3 requests failed") as info:
        engine.generate(PROMPTS, _params())
    assert "expert kernel failed" in str(info.value.__cause__)
    for i, rid in enumerate(engine.last_request_ids):
        assert engine.finish_reason(rid) == "error: RuntimeError: expert kernel failed"
        assert engine.result(rid) == clean[i][: len(engine.result(rid))]
    assert engine.num_free_pages == engine.num_pages and not engine.has_unfinished()
    fault.when = lambda batch: False
    assert engine.generate(PROMPTS, _params()) == clean
    assert engine.num_free_pages == engine.num_pages


def test_a_failing_step_tape_is_contained(model, clean, monkeypatch):
    """A replayed decode step that raises part-way through its tape (as a `_C` entry does on bad data) is
    contained like an eager kernel failure: with a fault that strikes whenever request 0 (after two tokens) is
    in the step, taped or eager, its batch fails inside the replay, the rerun alone fails too, and only that
    request finishes with the error; the others get the clean run's tokens."""
    engine = zaya_rt.Engine(model, **ENGINE_ARGS)  # the CPU default: decode steps replay step tapes
    assert engine.decode_graphs is not None and engine.decode_graphs.tapes
    ids, raised, current = [], [], {"seqs": []}
    engine_forward, runner_forward, replay = engine._forward, engine.runner.forward, StepTape.replay

    def armed() -> bool:
        seq = engine._results[ids[0]]
        return len(seq.generated) >= 2 and seq in current["seqs"]

    def noting_forward(scheduled):
        current["seqs"] = [seq for seq, _ in scheduled]
        return engine_forward(scheduled)

    def faulty_runner_forward(batch, **kw):
        if armed():
            raised.append(("eager", len(current["seqs"])))
            raise RuntimeError("tape kernel failed")
        return runner_forward(batch, **kw)

    def faulty_replay(tape):
        if armed():
            for call in tape._calls[: len(tape._calls) // 2]:  # K/V of the first layers written, then it fails
                call()
            raised.append(("tape", len(current["seqs"])))
            raise RuntimeError("tape kernel failed")
        replay(tape)

    monkeypatch.setattr(engine, "_forward", noting_forward)
    monkeypatch.setattr(engine.runner, "forward", faulty_runner_forward)
    monkeypatch.setattr(StepTape, "replay", faulty_replay)
    ids.extend(engine.add_request(p, sp) for p, sp in zip(PROMPTS, _params()))
    while engine.has_unfinished():
        engine.step()
    assert raised[0] == ("tape", 3) and len(raised) == 2 and raised[1][1] == 1  # in the batch, then alone
    monkeypatch.undo()
    _check_contained(engine, ids, clean, bad=0, reason="RuntimeError: tape kernel failed", kept=2)


def test_page_size_the_kernels_cannot_read_is_refused(model):
    for page_size in (3, 6, 12):
        with pytest.raises(ValueError, match="page_size must be a power of two"):
            zaya_rt.Engine(model, num_pages=16, page_size=page_size)


def test_generate_argument_types(model, clean):
    engine = zaya_rt.Engine(model, **ENGINE_ARGS)
    for bad in (None, 5, "abc"):
        with pytest.raises(TypeError, match="prompts must be a list of token-id lists"):
            engine.generate(bad)
        with pytest.raises(TypeError, match="prompts must be a list of token-id lists"):
            engine.stream(bad)  # checked at the call, before iterating
    assert not engine.has_unfinished()
    numpy_ids = [[np.int64(t) for t in PROMPTS[0]], np.array(PROMPTS[1], dtype=np.int32),
                 [np.uint8(t) for t in PROMPTS[2]]]
    assert engine.generate(numpy_ids, _params()) == clean
    numpy_params = [zaya_rt.SamplingParams(max_new_tokens=np.int64(p.max_new_tokens), temperature=np.float32(0.9),
                                           top_k=np.int32(40), top_p=np.float32(0.95), seed=np.uint16(p.seed))
                    for p in _params()]
    assert all(type(p.top_k) is int and type(p.temperature) is float for p in numpy_params)
    assert engine.generate(PROMPTS, numpy_params) == clean
    for bad in ([np.bool_(True), 3], [True, 3], [np.float32(3.0)]):
        with pytest.raises(ValueError, match="ints"):
            engine.generate([bad])
    with pytest.raises(ValueError, match="needs .* pages"):  # the second request is checked before any is queued
        engine.generate([PROMPTS[0], [1] * 100], zaya_rt.SamplingParams(max_new_tokens=50))
    assert not engine.has_unfinished() and engine.num_free_pages == engine.num_pages


def test_fault_soak_under_a_tight_page_budget(model, monkeypatch):
    """Sixty mixed requests (shared prefixes, greedy and sampled, stop tokens) on a page budget that forces
    preemption, with faults injected into a third of them: callbacks that raise, sampler rows that raise, a
    kernel that fails whenever their sequence is in the batch. Exactly the faulty requests fail, each after the
    clean run's tokens up to its fault; every other request gets the clean run's tokens; no page is left held."""
    rng = np.random.default_rng(15)
    bases = [rng.integers(0, 256, int(rng.integers(5, 14))).tolist() for _ in range(4)]
    prompts, params = [], []
    for i in range(60):
        head = bases[i % 4] if i % 3 else []
        prompts.append(head + rng.integers(0, 256, int(rng.integers(1, 6))).tolist())
        params.append(zaya_rt.SamplingParams(
            max_new_tokens=int(rng.integers(2, 9)), temperature=[0.0, 0.8, 1.0][i % 3], top_k=[0, 16][i % 2],
            stop_token_ids=tuple(rng.integers(0, 256, 6).tolist()), seed=5000 + i))
    args = dict(num_pages=22, page_size=4, max_batch=8, max_tokens_per_step=48)
    clean = zaya_rt.Engine(model, **args).generate(prompts, params)

    callback_at = {i: int(rng.integers(0, 4)) for i in range(0, 60, 9)}   # raises on this token index
    sampler_at = {i: int(rng.integers(0, 4)) for i in range(4, 60, 9)}    # sampled (i % 3 = 1): raises at this step
    kernel_at = {i: int(rng.integers(0, 4)) for i in range(6, 60, 9)}     # fails with this many tokens so far
    engine = zaya_rt.Engine(model, **args, cuda_graphs=False)  # for _KernelFault
    real_sampler = ops.sample_tokens
    bad_rows = {(params[i].seed, step) for i, step in sampler_at.items()}

    def sampler(logits, temperature, top_k, top_p, min_p, seed, step):
        if any((s, t) in bad_rows for s, t in zip(seed.tolist(), step.tolist())):
            raise RuntimeError("sampler fault")
        return real_sampler(logits, temperature, top_k, top_p, min_p, seed, step)

    monkeypatch.setattr(ops, "sample_tokens", sampler)
    ids: list[int] = []

    def kernel_target(batch):
        slots = batch.state_slots.tolist()
        for i, at in kernel_at.items():
            seq = engine._results[ids[i]]
            if not seq.finished and seq.slot in slots and len(seq.generated) >= at:
                return True
        return False

    _KernelFault(engine, kernel_target)

    def callback(i):
        def on_token(rid, token):
            if len(engine.result(rid)) == callback_at[i] + 1:
                raise ValueError("callback fault")
        return on_token

    for i, (p, sp) in enumerate(zip(prompts, params)):
        ids.append(engine.add_request(p, sp, callback(i) if i in callback_at else None))
    while engine.has_unfinished():
        engine.step()
    assert engine.stats["preemptions"] > 0
    failures = 0
    faults = {"callback": callback_at, "sampler": sampler_at, "kernel": kernel_at}
    reasons = {"callback": "ValueError: callback fault", "sampler": "RuntimeError: sampler fault",
               "kernel": "RuntimeError: expert kernel failed"}
    for i, rid in enumerate(ids):
        got, reason = engine.result(rid), engine.finish_reason(rid)
        kind = next((k for k, at in faults.items() if i in at), None)
        at = faults[kind][i] + (kind == "callback") if kind else None
        if kind and len(clean[i]) > faults[kind][i]:
            failures += 1
            assert reason == f"error: {reasons[kind]}", (i, reason)
            assert got == clean[i][:at], (i, kind)
        else:
            assert reason in ("length", "stop", "context"), (i, reason)
            assert got == clean[i], f"request {i} differs from the clean run"
    assert failures >= 15
    assert engine.num_free_pages == engine.num_pages and engine.cache.num_free_slots == engine.max_batch
