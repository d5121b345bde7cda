"""sample_tokens against the float64 reference (zaya_rt.ref.sampling): the exact token for the same uniform,
greedy = argmax, masks (top-k / top-p / min-p) exact, empirical distributions with fixed seeds, independence
from the batch, opcheck and torch.compile, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zaya_rt import ops
from zaya_rt.ops.sampling import _torch_path, sampling_uniform
from zaya_rt.ref.sampling import sample_token, sampling_keep_mask


def _params(B, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, step=0):
    def col(v, dtype):
        return torch.tensor(v if isinstance(v, list) else [v] * B, dtype=dtype)
    return (col(temperature, torch.float32), col(top_k, torch.int32), col(top_p, torch.float32),
            col(min_p, torch.float32), col(seed, torch.int64), col(step, torch.int64))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 5), V=st.integers(1, 300), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       data=st.data())
def test_matches_reference_token_for_token(B, V, dtype, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    logits = (torch.randn(B, V, generator=g) * data.draw(st.sampled_from([0.5, 3.0]))).to(dtype)
    temps = [data.draw(st.sampled_from([0.0, 0.5, 1.0, 1.7])) for _ in range(B)]
    top_k = [data.draw(st.integers(0, V + 2)) for _ in range(B)]
    top_p = [data.draw(st.sampled_from([1.0, 0.95, 0.6, 0.1])) for _ in range(B)]
    min_p = [data.draw(st.sampled_from([0.0, 0.02, 0.3])) for _ in range(B)]
    seeds = [data.draw(st.integers(-(2**40), 2**40)) for _ in range(B)]
    steps = [data.draw(st.integers(0, 10**6)) for _ in range(B)]
    args = _params(B, temps, top_k, top_p, min_p, seeds, steps)
    got = ops.sample_tokens(logits, *args).tolist()
    want = [sample_token(logits[b], float(args[0][b]), top_k[b], float(args[2][b]), float(args[3][b]),
                         sampling_uniform(seeds[b], steps[b])) for b in range(B)]
    assert got == want
    assert _torch_path(logits, *args).tolist() == want


def test_greedy_is_argmax_first_maximum():
    logits = torch.tensor([[0.0, 2.0, 2.0, -1.0], [5.0, 1.0, 5.0, 5.0]])
    assert ops.sample_tokens(logits, *_params(2, temperature=0.0)).tolist() == [1, 0]
    big = torch.randn(7, 1000, dtype=torch.bfloat16)
    assert ops.sample_tokens(big, *_params(7, temperature=0.0)).tolist() == big.float().argmax(-1).tolist()


def test_masks_are_exact():
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0, 2.0, -5.0])
    keep, p = sampling_keep_mask(logits, 1.0, top_k=3, top_p=1.0, min_p=0.0)
    assert keep.tolist() == [True, False, True, False, True, False]  # ties broken by the lower id
    keep, _ = sampling_keep_mask(logits, 1.0, top_k=0, top_p=0.5, min_p=0.0)
    probs = torch.softmax(logits.double(), 0)
    assert probs[0] > 0.5 and keep.tolist() == [True] + [False] * 5
    keep, _ = sampling_keep_mask(logits, 1.0, top_k=0, top_p=1.0, min_p=math.exp(-1.5))
    assert keep.tolist() == [True, False, True, False, True, False]
    # every token the kernel draws lies inside the reference mask
    for k, tp, mp in [(2, 1.0, 0.0), (0, 0.7, 0.0), (0, 1.0, 0.2), (3, 0.9, 0.1)]:
        keep, _ = sampling_keep_mask(logits, 0.8, k, tp, mp)
        draws = ops.sample_tokens(logits.expand(400, 6).contiguous(),
                                  *_params(400, 0.8, k, tp, mp, seed=list(range(400)))).tolist()
        assert set(draws) <= set(torch.nonzero(keep).flatten().tolist())
        assert set(draws) == set(torch.nonzero(keep).flatten().tolist())  # and reaches all of it


def test_empirical_distribution_matches():
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    n = 20000
    draws = ops.sample_tokens(logits.expand(n, 6).contiguous(), *_params(n, 1.3, seed=7, step=list(range(n))))
    freq = torch.bincount(draws, minlength=6).double() / n
    want = torch.softmax(logits.double() / 1.3, 0)
    assert (freq - want).abs().max() < 4 * math.sqrt(0.25 / n)


def test_seeded_rows_do_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 50, generator=g)
    args = _params(6, 1.0, 10, 0.9, 0.0, seed=[11, 12, 13, 14, 15, 16], step=[3, 3, 4, 4, 5, 5])
    full = ops.sample_tokens(logits, *args).tolist()
    for b in range(6):
        alone = ops.sample_tokens(logits[b : b + 1], *(a[b : b + 1] for a in args)).tolist()
        assert alone == [full[b]]
    perm = [5, 3, 1, 0, 2, 4]
    assert ops.sample_tokens(logits[perm], *(a[perm] for a in args)).tolist() == [full[i] for i in perm]


def test_opcheck_and_compile():
    logits = torch.randn(3, 40)
    args = _params(3, [0.0, 1.0, 0.7], [0, 5, 0], [1.0, 0.8, 0.9], [0.0, 0.0, 0.1])
    torch.library.opcheck(torch.ops.zaya_rt.sample_tokens.default, (logits, *args))
    compiled = torch.compile(ops.sample_tokens, fullgraph=True)
    assert torch.equal(compiled(logits, *args), ops.sample_tokens(logits, *args))


BAD = [
    ("logits not a tensor", lambda a: ([[1.0]], *a[1:]), TypeError),
    ("integer logits", lambda a: (a[0].long(), *a[1:]), TypeError),
    ("float64 logits", lambda a: (a[0].double(), *a[1:]), TypeError),
    ("1-D logits", lambda a: (a[0][0], *a[1:]), ValueError),
    ("empty vocabulary", lambda a: (a[0][:, :0], *a[1:]), ValueError),
    ("temperature wrong length", lambda a: (a[0], a[1][:1], *a[2:]), ValueError),
    ("temperature float64", lambda a: (a[0], a[1].double(), *a[2:]), TypeError),
    ("negative temperature", lambda a: (a[0], -a[1] - 1, *a[2:]), ValueError),
    ("nan temperature", lambda a: (a[0], a[1] * float("nan"), *a[2:]), ValueError),
    ("inf temperature", lambda a: (a[0], a[1] + float("inf"), *a[2:]), ValueError),
    ("top_k int64", lambda a: (a[0], a[1], a[2].long(), *a[3:]), TypeError),
    ("negative top_k", lambda a: (a[0], a[1], a[2] - 10, *a[3:]), ValueError),
    ("top_p zero", lambda a: (a[0], a[1], a[2], a[3] * 0, *a[4:]), ValueError),
    ("top_p above one", lambda a: (a[0], a[1], a[2], a[3] + 1, *a[4:]), ValueError),
    ("min_p negative", lambda a: (*a[:4], a[4] - 1, *a[5:]), ValueError),
    ("min_p above one", lambda a: (*a[:4], a[4] + 2, *a[5:]), ValueError),
    ("seed int32", lambda a: (*a[:5], a[5].int(), a[6]), TypeError),
    ("step float", lambda a: (*a[:6], a[6].float()), TypeError),
    ("step 2-D", lambda a: (*a[:6], a[6][:, None]), ValueError),
    ("params on meta", lambda a: (a[0], a[1].to("meta"), *a[2:]), ValueError),
    ("nan logits", lambda a: (a[0] * float("nan"), *a[1:]), RuntimeError),
]


@pytest.mark.parametrize("name,make,error", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, make, error):
    args = (torch.randn(2, 10), *_params(2, 1.0, 3, 0.9, 0.1))
    with pytest.raises(error):
        ops.sample_tokens(*make(args))
