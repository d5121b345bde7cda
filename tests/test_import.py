import subprocess
import sys


def test_import_needs_no_gpu_and_no_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"  # makes any `import transformers` fail
        "import zaya_rt; print(zaya_rt._C.gpu_backend, zaya_rt._C.cpu_isa())\n"
        "import torch; print(torch.ops.zaya_rt.rms_norm)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] in ("avx512", "avx2", "base")
