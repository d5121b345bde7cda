"""CCA state at a page boundary inside a prompt chunk, for the prefix cache's snapshots: what the conv state
and the delayed value would be had the chunk ended there. Legend: T packed rows, B sequences, C conv channels,
K conv state columns, R requests."""

from __future__ import annotations

import torch


def boundary_states(qp, kp, v_del, conv_state, starts: list[int], state_rows: list[int], ends: list[int]):
    """CCA state after `ends[r]` tokens of a chunk: conv [R, C, K] and v [R, Hk*d/2].

    Request r reads the chunk of sequence `state_rows[r]` (its tokens start at packed row `starts[r]`, its state
    before the chunk is conv_state[state_rows[r]]); ends[r] >= 1 tokens of that chunk lie before the boundary.
    """
    B, C, K = conv_state.shape
    T = qp.shape[0]
    table = torch.cat([torch.cat([qp, kp], dim=-1), conv_state.transpose(1, 2).reshape(B * K, C).to(qp.dtype)])
    rows = []
    for start, b, end in zip(starts, state_rows, ends):
        for i in range(K):
            local = end - K + i
            rows.append(start + local if local >= 0 else T + b * K + (K + local))
    index = torch.tensor(rows, dtype=torch.long, device=qp.device)
    conv = table.index_select(0, index).view(len(ends), K, C).transpose(1, 2)
    v_rows = torch.tensor([s + e - 1 for s, e in zip(starts, ends)], dtype=torch.long, device=qp.device)
    return conv, v_del.index_select(0, v_rows)
