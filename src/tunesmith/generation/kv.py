"""The running rows' keys and values: one buffer per layer, rows left-aligned, and the view of it
that transformers' attention writes into and reads from at a decode step."""

from __future__ import annotations

import torch


class BatchKV:
    """The running rows' keys and values: per layer (row capacity, kv_heads, column capacity, head_dim).

    Rows 0..rows-1 are live and left-aligned: row r's tokens fill columns [0, lens[r]). A decode
    step that feeds row r counts[r] tokens writes them into its columns lens[r] .. lens[r] +
    counts[r] - 1 (`reserve` sets where); the engine then moves lens[r] past the tokens it keeps, and a
    rejected draft's columns are simply written over at the next step.
    """

    def __init__(self, n_layers: int, max_rows: int, room: int = 128):
        from transformers.cache_utils import Cache

        # room: columns allocated beyond the longest row, so the buffer grows once per `room` steps
        self.n_layers, self.max_rows, self.room = n_layers, max_rows, room
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.lens: list[int] = []
        self.rows = self.columns = 0  # columns: how far this step's attention reads into the rows
        self.at: tuple | None = None  # (row index, column index) of each of this step's new tokens
        self.cache = Cache(layers=[LayerView(self, i) for i in range(n_layers)])

    def admit(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Copy a prefilled prompt's keys and values, each (1, kv_heads, length, head_dim), into a new row."""
        if not self.k:
            k0 = layers[0][0]
            self._alloc(self.max_rows, length + self.room, k0.shape[1], k0.shape[3], k0.dtype, k0.device)
        if self.rows == self.k[0].shape[0]:
            self._regrow(rows=self.rows + self.max_rows)
        if length > self.k[0].shape[2]:
            self._regrow(cols=length + self.room)
        r = self.rows
        for i, (k, v) in enumerate(layers):
            self.k[i][r, :, :length] = k[0]
            self.v[i][r, :, :length] = v[0]
        self.lens.append(length)
        self.rows += 1

    def evict(self, r: int) -> None:
        """Free row r: the last row moves into it."""
        last = self.rows - 1
        if r != last:
            n = self.lens[last]
            for t in self.k + self.v:
                t[r, :, :n] = t[last, :, :n]
            self.lens[r] = n
        self.lens.pop()
        self.rows -= 1

    def reserve(self, counts: list[int]) -> None:
        """Room for counts[r] more tokens in row r, and where this step writes them: `at`, the
        (row, column) of each token fed, in order."""
        width = max(counts)
        self.columns = max(self.lens) + width
        if self.columns > self.k[0].shape[2]:
            self._regrow(cols=self.columns + self.room)
        device = self.k[0].device
        rows = [r for r, c in enumerate(counts) for _ in range(c)]
        steps = [j for c in counts for j in range(c)]
        self.at = (
            torch.tensor(rows, device=device),
            torch.tensor([self.lens[r] + j for r, j in zip(rows, steps)], device=device),
        )

    def _alloc(self, rows, cols, heads, dim, dtype, device) -> None:
        self.k = [torch.zeros(rows, heads, cols, dim, dtype=dtype, device=device) for _ in range(self.n_layers)]
        self.v = [torch.zeros(rows, heads, cols, dim, dtype=dtype, device=device) for _ in range(self.n_layers)]

    def _regrow(self, rows: int | None = None, cols: int | None = None) -> None:
        """New buffers with more rows or more columns, the live rows copied. Columns grow by a
        quarter at least, so prompts that come longest last do not copy every time."""
        old_rows, old_cols = self.k[0].shape[0], self.k[0].shape[2]
        n_rows = rows or old_rows
        n_cols = max(cols, old_cols + old_cols // 4) if cols and cols > old_cols else old_cols
        used = max(self.lens, default=0)
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):  # one layer at a time: the copy never holds two whole caches
                new = old.new_zeros(n_rows, old.shape[1], n_cols, old.shape[3])
                new[: self.rows, :, :used] = old[: self.rows, :, :used]
                buffers[i] = new


def _layer_base():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class LayerView(_layer_base()):
    """One layer's view of the batch buffer, in the shape transformers' attention expects: a decode
    step writes its (rows, kv_heads, width, head_dim) keys and values where `BatchKV.reserve`
    said and attends over the first `BatchKV.columns` columns."""

    def __init__(self, kv: BatchKV, index: int):
        super().__init__()
        self.kv, self.index, self.is_initialized = kv, index, True

    def update(self, key_states, value_states, *args, **kwargs):
        kv, i = self.kv, self.index
        rows, cols = kv.at  # one (row, column) per token fed: (batch, tokens) of the states, flattened
        kv.k[i][rows, :, cols] = key_states.transpose(1, 2).flatten(0, 1)
        kv.v[i][rows, :, cols] = value_states.transpose(1, 2).flatten(0, 1)
        return kv.k[i][: kv.rows, :, : kv.columns], kv.v[i][: kv.rows, :, : kv.columns]

    def get_seq_length(self) -> int:
        return max(self.kv.lens, default=0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0
