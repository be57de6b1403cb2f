"""KVBatch: rows right-aligned in preallocated buffers, written in place, joined and dropped between steps."""
from __future__ import annotations

import torch

from videoneva.runtime.decode import KVBatch


def _row(length: int, tag: float, layers: int = 2) -> KVBatch:
    """A one-row batch whose column j holds tag + j (keys) and -(tag + j) (values) in every layer."""
    cols = tag + torch.arange(length, dtype=torch.float32)
    keys = [cols[None, None, :, None].expand(1, 2, length, 3).clone() for _ in range(layers)]
    return KVBatch.single(keys, [-k for k in keys])


def _own(batch: KVBatch, row: int) -> torch.Tensor:
    """The row's own key columns (layer 0, head 0, dim 0)."""
    return batch.keys[0][row, 0, : batch.length, 0][batch.valid[row]]


def test_rows_join_right_aligned_and_a_longer_row_shifts_the_others():
    batch = _row(5, 100.0)
    batch.join(_row(3, 200.0))
    assert batch.length == 5 and batch.valid.tolist()[1] == [False, False, True, True, True]
    batch.join(_row(8, 300.0))  # longer than the batch: the others move right
    assert batch.length == 8 and batch.rows == 3
    assert _own(batch, 0).tolist() == [100.0 + j for j in range(5)]
    assert _own(batch, 1).tolist() == [200.0 + j for j in range(3)]
    assert _own(batch, 2).tolist() == [300.0 + j for j in range(8)]
    assert batch.positions.tolist() == [5, 3, 8]
    assert torch.equal(batch.values[1][:, :, : batch.length], -batch.keys[1][:, :, : batch.length])


def test_a_step_writes_in_place_until_the_buffers_are_full():
    batch = _row(4, 0.0)
    batch.join(_row(2, 50.0))
    ptr, capacity = batch.keys[0].data_ptr(), batch.capacity
    for step in range(capacity - batch.length):
        new = [torch.full((2, 2, 1, 3), 1000.0 + step) for _ in range(2)]
        batch.write(new, [-t for t in new])
        assert batch.keys[0].data_ptr() == ptr  # no copy of the cache
    assert batch.length == capacity
    batch.write([torch.full((2, 2, 1, 3), 7.0)] * 2, [torch.full((2, 2, 1, 3), -7.0)] * 2)  # full: reallocated
    assert batch.capacity > capacity and batch.length == capacity + 1
    assert _own(batch, 1).tolist()[:2] == [50.0, 51.0] and _own(batch, 1).tolist()[-1] == 7.0
    assert batch.positions.tolist() == [4 + capacity - 3, 2 + capacity - 3]


def test_rows_leave_and_columns_no_row_uses_are_dropped():
    batch = _row(9, 0.0)
    batch.join(_row(4, 10.0))
    batch.join(_row(6, 20.0))
    batch.keep([1, 2])  # the longest row leaves: the first 3 columns are nobody's now
    assert batch.rows == 2 and batch.length == 6
    assert _own(batch, 0).tolist() == [10.0, 11.0, 12.0, 13.0]
    assert _own(batch, 1).tolist() == [20.0 + j for j in range(6)]
    mask = batch.step_mask()
    assert mask.shape == (2, batch.capacity + 1) and mask[:, -1].all() and not mask[:, batch.length:-1].any()
    assert mask[0, : batch.length].tolist() == [False, False, True, True, True, True]
