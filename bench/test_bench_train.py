"""pytest-benchmark of the whole training step (forward, next-token loss, backward) of the 124M-shaped model on
4 x 512 tokens: zaya_rt (packed forward + fused chunked loss) against transformers' ZayaForCausalLM with
grouped_mm experts and SDPA (its fastest combination on CPU) on the same weights (run: pytest bench
--benchmark-only -k train). `zaya-rt bench train` times all four transformers combinations in turns and prints
the ratio; this file gives the same steps through pytest-benchmark's table.
"""

import pytest
import torch

from zaya_rt.benchmarks.e2e import CONFIG_124M, _build
from zaya_rt.benchmarks.train import ours_step_fn, packed_batch, peer_step_fn

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@pytest.fixture(scope="module", params=list(DTYPES))
def steps(request):
    dtype = DTYPES[request.param]
    hf, ours = _build(CONFIG_124M, "cpu", dtype, seed=0)
    hf.train()
    ours.train()
    ids_BT, ids_N, labels_N, cu = packed_batch(4, 512, CONFIG_124M["vocab_size"], seed=1, device="cpu")
    return request.param, {"ours": ours_step_fn(ours, ids_N, labels_N, cu),
                           "transformers": peer_step_fn(hf, ids_BT, "grouped_mm", "sdpa")}


@pytest.mark.parametrize("side", ["ours", "transformers"])
def test_train_step(benchmark, steps, side):
    dtype, fns = steps
    benchmark.group = f"cpu train step 124M 4x512 {dtype}"
    benchmark.extra_info.update(side=side, dtype=dtype)
    benchmark.pedantic(fns[side], rounds=3, warmup_rounds=1)
