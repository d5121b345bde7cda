"""`zaya-rt bench --mode fwd_bwd` (no timing is checked): the CLI runs on tiny shapes, families without a builder
in this build say so instead of failing, and the cca case's two sides compute the same gradients."""

import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env

from zaya_rt import cli
from zaya_rt.benchmarks import fwd_bwd
from zaya_rt.benchmarks.cca import cca_fwd_bwd_cases


@pytest.mark.parametrize("flag", [["--mode", "fwd_bwd"], ["--backward"]])
def test_cli_runs_on_tiny_shapes(flag):
    cmd = [sys.executable, "-m", "zaya_rt", "bench", *flag, "--ops", "cca,dispatch", "--cca-shapes", "2,8,64;1,5,32",
           "--dtypes", "float32", "--min-time", "0.001"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("cca_prep fwd+bwd")]
    assert len(rows) == 2 and "B2 T8" in rows[0] and "B1 T5" in rows[1] and all("float32" in r for r in rows)
    assert "forward + backward" in proc.stdout
    assert "no forward + backward cases for dispatch" in proc.stdout


def test_missing_builder_is_reported_not_raised(monkeypatch, capsys):
    monkeypatch.setitem(fwd_bwd.FWD_BWD_BUILDERS, "cca", ("zaya_rt.benchmarks.cca", "no_such_builder"))
    monkeypatch.setitem(fwd_bwd.FWD_BWD_BUILDERS, "router", ("zaya_rt.benchmarks.no_such_module", "x"))
    assert cli.main(["bench", "--mode", "fwd_bwd", "--ops", "cca,router", "--min-time", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "cca: forward + backward cases not available in this build" in out
    assert "router: forward + backward cases not available in this build" in out


def test_bad_dtypes_is_a_clear_error(capsys):
    assert cli.main(["bench", "--mode", "fwd_bwd", "--ops", "cca", "--dtypes", "float16"]) == 2
    assert "--dtypes" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cca_case_sides_agree(dtype):
    (case,) = cca_fwd_bwd_cases(shapes=((3, 7, 32),), dtypes=(dtype,))
    ours, peer = case.ours(), case.peer()
    assert len(ours) == len(peer) == 9  # q/k/v projections, v_delayed, conv weights and biases, temperature
    for a, b in zip(ours, peer):
        assert a.shape == b.shape and a.dtype == b.dtype
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        assert (a.float() - b.float()).abs().max() <= tol * (b.float().abs().max() + 1)
    assert case.ours()[0].abs().sum() > 0  # a second call works (no graph freed twice) and is not empty
