"""Data: corpus -> SentencePiece tokenizer -> token files -> global sample order -> batches.

    prepare_data(config)                        # once: writes config.data.dir (docs/data-format.md)
    meta = check_data(config, config_path)      # at train start: the data fits the model
    ds = TokenDataset(config.data.dir, "train", config.model.seq_length)
    sampler = GlobalSampler(len(ds), config.train.global_batch_size, config.data.seed)
    for mb in micro_batches(ds, sampler.local_batch(consumed, dp_rank, dp), micro_batch_size): ...
"""

from hpcyuan.data.batches import Batch, make_batch, micro_batches, position_ids
from hpcyuan.data.corpus import Document, builtin_names, iter_documents
from hpcyuan.data.prepare import check_data, load_data_meta, prepare_data
from hpcyuan.data.sampler import GlobalSampler
from hpcyuan.data.tokenizer import Tokenizer
from hpcyuan.data.tokens import TokenDataset

__all__ = ["Batch", "Document", "GlobalSampler", "TokenDataset", "Tokenizer", "builtin_names", "check_data",
           "iter_documents", "load_data_meta", "make_batch", "micro_batches", "position_ids", "prepare_data"]
