"""HDF5 checkpoints: one directory per step, one shard file per rank, an index of virtual datasets,
a manifest written last. The file layer (no MPI): format.py (names, Piece, coverage), writer.py
(write_shard, commit, retention), reader.py (verify, latest_good, CheckpointReader).
Format description: docs/checkpoint-format.md.
"""

from hpcyuan.checkpoint.format import FORMAT_VERSION, KINDS, Piece, PieceInfo, ShardRecord, list_checkpoints
from hpcyuan.checkpoint.reader import CheckpointReader, latest_good, verify
from hpcyuan.checkpoint.writer import abort, begin, commit, retain, write_shard

__all__ = [
    "FORMAT_VERSION", "KINDS", "Piece", "PieceInfo", "ShardRecord", "list_checkpoints",
    "CheckpointReader", "latest_good", "verify", "abort", "begin", "commit", "retain", "write_shard",
]
