"""`hpcyuan ckpt list | inspect | verify` on checkpoints written by the real writer."""

import numpy as np

from hpcyuan import cli
from hpcyuan.checkpoint import Piece, begin, commit, write_shard

META = {"consumed_samples": 64, "optimizer_steps": 8, "code_version": "test",
        "layout": {"pp": 1, "dp": 2, "layers_per_stage": [4], "zero_stage": 1, "world_size": 2},
        "model": {"hidden_size": 4}}


def save(root, step):
    tmp = begin(root, step)
    weight = np.arange(12, dtype=np.float32) + step
    records = [write_shard(tmp, rank, [Piece("w", kind, (3, 4), 6 * rank, 6 * rank + 6, weight[6 * rank:6 * rank + 6])
                                       for kind in ("weight", "master", "exp_avg", "exp_avg_sq")])
               for rank in range(2)]
    return commit(root, step, records, {**META, "step": step})


def test_list_inspect_verify(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    save(root, 4)
    newest = save(root, 8)
    assert cli.main(["ckpt", "list", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ok  <- latest" in out and out.count(" ok") == 2
    assert cli.main(["ckpt", "inspect", str(newest)]) == 0
    out = capsys.readouterr().out
    assert "step 8, 64 samples consumed" in out and "pp 1 x dp 2" in out and "master         1 tensors, 12 elements" in out
    assert cli.main(["ckpt", "verify", str(root)]) == 0

    shard = newest / "shard_00001.h5"
    data = bytearray(shard.read_bytes())
    data[-200] ^= 0xFF  # one flipped byte in the last dataset's data
    shard.write_bytes(bytes(data))
    assert cli.main(["ckpt", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "step_00000004: ok" in out and "step_00000008: BAD" in out and "shard_00001.h5" in out


def test_not_a_checkpoint_directory(tmp_path, capsys):
    assert cli.main(["ckpt", "list", str(tmp_path)]) == 2
    assert "no checkpoints here" in capsys.readouterr().err
