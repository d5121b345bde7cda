"""matplotlib for the CLIs' `--plot` (an optional extra), on the headless Agg backend."""

from __future__ import annotations


def headless_pyplot():
    """matplotlib.pyplot on the Agg backend; ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install zaya_rt[plot]") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
