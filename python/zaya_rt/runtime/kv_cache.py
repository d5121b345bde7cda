"""The paged KV + CCA state cache (SPEC section 5).

Pages: k_pages / v_pages [L, P, S, Hk, d] hold K and V (after qk norm and RoPE) of S consecutive positions of
one sequence, in every layer. A sequence's block table lists its pages in position order. Pages are reference
counted; a page shared by several sequences is copied before one of them writes into it (copy-on-write).

Prefix sharing: a full page of prompt tokens is registered under the key (key of the page before it, its S
tokens); keys use serial numbers that are never reused, so a stale entry can never match a different prefix.
Each entry also keeps the CCA conv state [L, C, K] and delayed value [L, Hk*d/2] at the page's end, which a
sequence needs to continue after the shared prefix. A page whose last user is gone stays cached (evictable,
least recently released first) until its memory is needed.

Per-sequence state: conv_state [L, slots, C, K] and v_state [L, slots, Hk*d/2] in fp32, one row per running
sequence (its "slot").

Padding (`padding=True`, used by the CUDA-graph decode path, runtime/decode_graph.py): one extra page and one
extra state slot past the usable ones, never handed out. Padding rows of a fixed-size decode batch write their
K/V into that page and read it back, and read/write that state slot, so they touch nothing a sequence owns.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from zaya_rt import ops
from zaya_rt.model.config import ZayaConfig


@dataclass(eq=False)
class PrefixEntry:
    serial: int
    key: tuple
    page: int
    ready: bool = False             # K/V written and the state snapshot taken
    conv_state: torch.Tensor | None = None  # [L, C, K] at the page's end
    v_state: torch.Tensor | None = None     # [L, Hk*d/2]


class PagedKVCache:
    """Pages, their reference counts, the prefix table and the per-sequence CCA state slots."""

    def __init__(self, config: ZayaConfig, num_pages: int, page_size: int, num_slots: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu", padding: bool = False) -> None:
        for name, value in (("num_pages", num_pages), ("page_size", page_size), ("num_slots", num_slots)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        L, hk, d = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        C = (config.num_attention_heads + hk) * d
        self.num_pages, self.page_size, self.num_slots = num_pages, page_size, num_slots
        extra = 1 if padding else 0
        # the padding page and slot (index num_pages / num_slots) exist only with padding=True
        self.padding_page: int | None = num_pages if padding else None
        self.padding_slot: int | None = num_slots if padding else None
        self.k_pages = torch.zeros(L, num_pages + extra, page_size, hk, d, dtype=dtype, device=device)
        self.v_pages = torch.zeros_like(self.k_pages)
        self.conv_state = torch.zeros(L, num_slots + extra, C, config.conv_state_len, dtype=torch.float32,
                                      device=device)
        self.v_state = torch.zeros(L, num_slots + extra, hk * d // 2, dtype=torch.float32, device=device)
        self.refcount = [0] * num_pages
        self._free = list(range(num_pages - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self._table: dict[tuple, PrefixEntry] = {}
        self._entry_of_page: dict[int, PrefixEntry] = {}
        self._serial = 0
        self.peak_held_pages = 0  # most pages held by sequences at once since construction or reset_peak()

    @staticmethod
    def bytes_per_page(config: ZayaConfig, page_size: int, dtype: torch.dtype) -> int:
        """Bytes of K and V in one page over all layers."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_hidden_layers * page_size * config.num_key_value_heads * config.head_dim * elem

    # -- pages -------------------------------------------------------------------------------------------
    @property
    def num_free_pages(self) -> int:
        """Pages that can be handed out now (never used, or cached prefix pages nobody holds)."""
        return len(self._free) + len(self._evictable)

    def allocate(self) -> int | None:
        """A page with reference count 1, or None when every page is in use."""
        if self._free:
            page = self._free.pop()
        elif self._evictable:
            page, _ = self._evictable.popitem(last=False)
            self._unregister(page)
        else:
            return None
        self.refcount[page] = 1
        self._note_held()
        return page

    def share(self, page: int) -> None:
        """One more holder of page."""
        if self.refcount[page] == 0:
            self._evictable.pop(page)
        self.refcount[page] += 1
        self._note_held()

    def release(self, page: int) -> None:
        """One holder fewer; a page nobody holds is freed, or kept as evictable if it is a ready prefix page."""
        if self.refcount[page] <= 0:
            raise RuntimeError(f"page {page} released more often than it was held")
        self.refcount[page] -= 1
        if self.refcount[page] == 0:
            entry = self._entry_of_page.get(page)
            if entry is not None and entry.ready:
                self._evictable[page] = None
            else:
                self._unregister(page)
                self._free.append(page)

    @property
    def num_held_pages(self) -> int:
        """Pages some sequence holds now (neither free nor cached-evictable)."""
        return self.num_pages - len(self._free) - len(self._evictable)

    def reset_peak(self) -> None:
        """Restarts peak_held_pages from the pages held now."""
        self.peak_held_pages = self.num_held_pages

    def _note_held(self) -> None:
        self.peak_held_pages = max(self.peak_held_pages, self.num_held_pages)

    def writable(self, page: int) -> int:
        """page itself if only one sequence holds it, else a private copy (copy-on-write); the caller swaps
        the returned id into its block table."""
        if self.refcount[page] == 1 and page not in self._entry_of_page:
            return page
        if self.refcount[page] == 1:
            self._unregister(page)  # the content is about to change: it no longer matches its key
            return page
        copy = self.allocate()
        if copy is None:
            raise MemoryError("no free page for a copy-on-write")
        src = torch.tensor([page], dtype=torch.int32, device=self.k_pages.device)
        dst = torch.tensor([copy], dtype=torch.int32, device=self.k_pages.device)
        ops.copy_pages(self.k_pages, src, dst)
        ops.copy_pages(self.v_pages, src, dst)
        self.release(page)
        return copy

    # -- prefix table --------------------------------------------------------------------------------------
    def lookup(self, parent_serial: int, tokens: tuple[int, ...]) -> PrefixEntry | None:
        return self._table.get((parent_serial, tokens))

    def register(self, parent_serial: int, tokens: tuple[int, ...], page: int) -> PrefixEntry | None:
        """Registers page (being computed now) as the page after `parent_serial` holding `tokens`; None when
        that key is already registered (another sequence computes it)."""
        key = (parent_serial, tokens)
        if key in self._table or page in self._entry_of_page:
            return None
        self._serial += 1
        entry = PrefixEntry(self._serial, key, page)
        self._table[key] = entry
        self._entry_of_page[page] = entry
        return entry

    def mark_ready(self, entry: PrefixEntry, conv_state: torch.Tensor, v_state: torch.Tensor) -> None:
        entry.conv_state, entry.v_state, entry.ready = conv_state, v_state, True

    def _unregister(self, page: int) -> None:
        entry = self._entry_of_page.pop(page, None)
        if entry is not None:
            del self._table[entry.key]

    def clear_prefix_cache(self) -> None:
        """Frees every cached prefix page nobody holds."""
        while self._evictable:
            page, _ = self._evictable.popitem(last=False)
            self._unregister(page)
            self._free.append(page)

    # -- state slots -------------------------------------------------------------------------------------
    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def allocate_slot(self) -> int | None:
        return self._free_slots.pop() if self._free_slots else None

    def release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)
