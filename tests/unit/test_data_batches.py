"""Batches: Megatron-style position ids that restart after <eod>, and batch shapes."""

import numpy as np
import torch

from hpcyuan.data.batches import make_batch, micro_batches, position_ids

EOD = 7


def _pos(row):
    return position_ids(torch.tensor([row]), EOD)[0].tolist()


def test_reset_after_eod():
    a, b, c, d = 10, 11, 12, 13
    assert _pos([a, b, EOD, c, d]) == [0, 1, 2, 0, 1]


def test_eod_first_and_last():
    assert _pos([EOD, 1, 2, 3]) == [0, 0, 1, 2]
    assert _pos([1, 2, 3, EOD]) == [0, 1, 2, 3]
    assert _pos([EOD]) == [0]


def test_several_eods_and_no_eod():
    assert _pos([1, EOD, EOD, 2, 3, EOD, 4]) == [0, 1, 0, 0, 1, 2, 0]
    assert _pos([1, 2, 3, 4, 5]) == [0, 1, 2, 3, 4]


def test_batch_of_rows_is_independent():
    tokens = torch.tensor([[1, 2, EOD, 3], [EOD, 1, 2, 3], [1, 2, 3, 4]])
    expected = [[0, 1, 2, 0], [0, 0, 1, 2], [0, 1, 2, 3]]
    got = position_ids(tokens, EOD)
    assert got.dtype == torch.int64 and got.tolist() == expected


class _Windows:
    """A stand-in dataset: window i is [10i, 10i+1, ..., 10i+T] with an <eod> at offset 2."""

    eod_id = EOD

    def __init__(self, seq_length):
        self.seq_length = seq_length

    def sample(self, i):
        w = np.arange(100 * i, 100 * i + self.seq_length + 1, dtype=np.int64)
        w[2] = EOD
        return w


def test_make_batch_shapes_and_shift():
    batch = make_batch(_Windows(5), [3, 1], EOD)
    assert batch.tokens.shape == batch.targets.shape == batch.position_ids.shape == (2, 5)
    assert all(t.dtype == torch.int64 for t in batch)
    assert torch.equal(batch.tokens[:, 1:], batch.targets[:, :-1])
    assert batch.tokens[0].tolist() == [300, 301, EOD, 303, 304] and batch.targets[0, -1] == 305
    assert batch.position_ids[1].tolist() == [0, 1, 2, 0, 1]


def test_micro_batches_split_in_order():
    mbs = list(micro_batches(_Windows(4), [5, 6, 7, 8], micro_batch_size=2))
    assert [mb.tokens[:, -1].tolist() for mb in mbs] == [[503, 603], [703, 803]]
