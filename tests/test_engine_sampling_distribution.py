"""Token frequencies of the Engine's sampling (temperature, top-k, top-p, min-p, per request in one shared batch)
match a float64 reference distribution written here from the documented rule, over many seeded draws.

The model runner's forward is replaced by one fixed logits row we choose (every request, every step), so each
generated token is an independent draw from a distribution known exactly; everything else (scheduling and
batching, per-request parameters, seeds and steps, the sampler kernel) is the Engine's. The chi-square bound
rejects the distributions a wrong temperature (15% off) or an off-by-one top-k give, checked below on the same
counts."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

import zaya_rt
from zaya_rt.runtime import tiny_model

V = 256
REQUESTS_PER_CONFIG = 128
TOKENS_PER_REQUEST = 256
P_VALUE = 1e-6  # the bound a correct sampler exceeds with this probability per config

CONFIGS = {  # name: (temperature, top_k, top_p, min_p)
    "temperature": (1.0, 0, 1.0, 0.0),
    "cool, top-k": (0.6, 5, 1.0, 0.0),
    "hot, top-p": (1.3, 0, 0.8, 0.0),
    "min-p": (0.8, 0, 1.0, 0.1),
    "top-k, top-p": (1.3, 6, 0.85, 0.0),
    "all four set": (0.9, 10, 0.97, 0.1),
}


def _logits_row() -> np.ndarray:
    """12 leading logits at scattered ids (distinct values, no ties) over a tail of 244 low ones."""
    rng = np.random.default_rng(20261207)
    x = rng.uniform(-4.0, -2.0, V)
    lead = [3.0, 2.6, 2.2, 2.0, 1.7, 1.5, 1.2, 1.0, 0.5, 0.3, 0.0, -0.5]
    x[rng.permutation(V)[: len(lead)]] = lead
    return x


def reference_probs(x: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """float64 sampling distribution: softmax(x / T); keep the top_k most likely (0 = all); of those, in
    descending order, drop a token once the normalised mass before it reaches top_p; keep p >= min_p * max p."""
    w = np.exp(x / temperature - np.max(x / temperature))
    ranked = sorted(range(len(x)), key=lambda i: (-w[i], i))
    if 0 < top_k < len(x):
        ranked = ranked[:top_k]
    total, before, kept = sum(w[i] for i in ranked), 0.0, []
    for i in ranked:
        if before / total >= top_p:
            break
        kept.append(i)
        before += w[i]
    kept = [i for i in kept if w[i] >= min_p * w.max()]
    p = np.zeros(len(x))
    p[kept] = w[kept]
    return p / p.sum()


def _chi2_bound(df: int, p_value: float) -> float:
    """Upper p_value quantile of chi-square(df), Wilson-Hilferty approximation (a few % accurate for df >= 3)."""
    z = NormalDist().inv_cdf(1 - p_value)
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def _chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int, int]:
    """(statistic, degrees of freedom, draws of tokens the reference gives probability 0). Tokens expected
    fewer than 5 times are pooled into one bin."""
    n = counts.sum()
    expected = probs * n
    impossible = int(counts[probs == 0].sum())
    big = expected >= 5
    obs, exp = list(counts[big]), list(expected[big])
    small = (~big) & (probs > 0)
    if small.any():
        obs.append(counts[small].sum())
        exp.append(expected[small].sum())
    obs, exp = np.array(obs, dtype=np.float64), np.array(exp)
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1, impossible


def _passes(counts: np.ndarray, probs: np.ndarray) -> bool:
    stat, df, impossible = _chi2(counts, probs)
    return impossible == 0 and stat < _chi2_bound(max(df, 1), P_VALUE)


@pytest.fixture(scope="module")
def counts() -> dict[str, np.ndarray]:
    """Token counts per config, all configs' requests interleaved in shared batches of one Engine."""
    row = torch.tensor(_logits_row(), dtype=torch.float32)
    engine = zaya_rt.Engine(tiny_model(seed=5), num_pages=64 * 17, page_size=16, max_batch=64)

    def fixed_logits(batch):
        assert not batch.snapshots  # prompts shorter than a page: no prefix snapshot to return
        return row.expand(batch.sample_rows.shape[0], V).clone(), []

    engine.runner.forward = fixed_logits
    names, prompts, params = [], [], []
    for r in range(REQUESTS_PER_CONFIG):
        for c, (name, (t, k, p, m)) in enumerate(CONFIGS.items()):
            names.append(name)
            prompts.append([(7 * r + c) % V, 1 + r % 5])
            params.append(zaya_rt.SamplingParams(max_new_tokens=TOKENS_PER_REQUEST, temperature=t, top_k=k,
                                                 top_p=p, min_p=m, seed=1000 + len(params)))
    out = {name: np.zeros(V, dtype=np.int64) for name in CONFIGS}
    for name, tokens in zip(names, engine.generate(prompts, params)):
        assert len(tokens) == TOKENS_PER_REQUEST
        np.add.at(out[name], tokens, 1)
    assert engine.num_free_pages == engine.num_pages
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_frequencies_match_the_reference(counts, name):
    probs = reference_probs(_logits_row(), *CONFIGS[name])
    stat, df, impossible = _chi2(counts[name], probs)
    assert impossible == 0, f"{impossible} draws of tokens the reference excludes"
    assert stat < _chi2_bound(df, P_VALUE), f"chi-square {stat:.1f} over {df} degrees of freedom"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_bound_rejects_a_wrong_temperature(counts, name):
    t, k, p, m = CONFIGS[name]
    for wrong in (t * 1.15, t / 1.15):
        assert not _passes(counts[name], reference_probs(_logits_row(), wrong, k, p, m))


def _top_k_binds(t, k, p, m) -> bool:
    x = _logits_row()
    return k > 0 and not np.allclose(reference_probs(x, t, k, p, m), reference_probs(x, t, 0, p, m))


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if _top_k_binds(*c)])
def test_the_bound_rejects_an_off_by_one_top_k(counts, name):
    t, k, p, m = CONFIGS[name]
    for wrong in (k - 1, k + 1):
        assert not _passes(counts[name], reference_probs(_logits_row(), t, wrong, p, m))


def test_reference_by_hand():
    """The reference on three logits, against probabilities worked out by hand."""
    x = np.log(np.array([0.5, 0.3, 0.2]))
    assert np.allclose(reference_probs(x, 1.0, 0, 1.0, 0.0), [0.5, 0.3, 0.2])
    assert np.allclose(reference_probs(x, 1.0, 2, 1.0, 0.0), [0.625, 0.375, 0])
    assert np.allclose(reference_probs(x, 1.0, 0, 0.5, 0.0), [1, 0, 0])      # mass before token 1 is 0.5 >= 0.5
    assert np.allclose(reference_probs(x, 1.0, 0, 0.51, 0.0), [0.625, 0.375, 0])
    assert np.allclose(reference_probs(x, 1.0, 0, 1.0, 0.5), [0.625, 0.375, 0])  # 0.2 < 0.5 * 0.5
    w = np.array([0.5, 0.3, 0.2]) ** 2
    assert np.allclose(reference_probs(x, 0.5, 0, 1.0, 0.0), w / w.sum())
