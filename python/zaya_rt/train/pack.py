"""Best-fit-decreasing packing of samples into fixed-size token windows (SPEC section 7)."""

from __future__ import annotations

import bisect


def pack_indices(lengths, window: int) -> list[list[int]]:
    """Packs samples of the given token lengths into windows of at most `window` tokens.

    lengths: a sequence of positive ints. Returns windows as lists of sample indices; every sample lands in
    exactly one window, whole (never split). Best-fit decreasing: samples, longest first (ties by index), go to
    the open window with the least room that still holds them, else open a new window. Windows are listed in
    the order they were opened; inside a window, samples in the order they were placed.
    Raises ValueError for a sample longer than the window or a non-positive length.
    """
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"pack_indices: window must be an int, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"pack_indices: window must be positive, got {window}")
    lengths = list(lengths)
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"pack_indices: lengths[{i}] must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"pack_indices: lengths[{i}] = {n} is not positive")
        if n > window:
            raise ValueError(f"pack_indices: lengths[{i}] = {n} is longer than the window ({window})")

    windows: list[list[int]] = []
    # Open windows as (room left, window id), kept sorted: the best fit is the first entry with room >= n.
    room: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            windows.append([i])
            left, w = window - n, len(windows) - 1
        else:
            left, w = room.pop(at)
            windows[w].append(i)
            left -= n
        if left > 0:
            bisect.insort(room, (left, w))
    return windows
