"""`hpcyuan generate`: sample text from a trained model, on one process, in fp32.

    hpcyuan generate --ckpt runs/tiny/checkpoints --prompt "ROMEO:" --tokens 100 --seed 1
    hpcyuan generate --ckpt tiny.h5 --temperature 0          # greedy, from `hpcyuan ckpt export`

    model, weights = load_model("runs/tiny/checkpoints")     # the whole model (YuanStage), eval mode
    tok = load_tokenizer(weights)                            # data.dir of the run's stored config
    ids = sample(model, [tok.eod_id, *tok.encode("ROMEO:")], Sampling(tokens=50, seed=1), tok)

The model is built from the config stored with the weights (meta["model"]) as one stage holding
every layer (pipeline.build_stage with pp = 1), so any training layout generates alike. Sampling has
no KV cache: every new token re-runs the forward on the last seq_length tokens, the window the model
was trained on; LFA's causal convolutions and the causal attention see exactly the tokens before each
position, and position ids restart after each <eod> as in training (data/batches.py). The prompt
follows an <eod>, i.e. it starts a document. Temperature 0 is greedy; top-k 0 keeps every piece.
Nothing here unpickles: checkpoints and exports are HDF5.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hpcyuan.checkpoint.export import Progress, Weights, read_checkpoint_weights, read_exported
from hpcyuan.config import REPO_ROOT, ModelConfig
from hpcyuan.data.batches import position_ids
from hpcyuan.data.tokenizer import Tokenizer
from hpcyuan.data.tokens import TOKENIZER
from hpcyuan.errors import HpcyuanError
from hpcyuan.model.yuan import YuanStage, build_model


@dataclass(frozen=True)
class Sampling:
    tokens: int = 64
    """New tokens to generate."""
    temperature: float = 0.8
    """Logits are divided by it; 0 picks the most likely token (greedy)."""
    top_k: int = 50
    """Sample among the k most likely tokens; 0 means all of them."""
    seed: int = 1234
    """Seed of the sampling generator: the same seed, model and prompt give the same text."""

    def __post_init__(self):
        if self.tokens < 0:
            raise HpcyuanError(f"--tokens {self.tokens}: must be >= 0")
        if not self.temperature >= 0:
            raise HpcyuanError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise HpcyuanError(f"--top-k {self.top_k}: must be >= 0 (0 = no limit)")


def load_weights(path, say: Callable[[str], None] | None = None) -> Weights:
    """Weights from an exported .h5 file or a checkpoint (a step directory or a run's root)."""
    path = Path(path)
    if path.is_file():
        return read_exported(path)
    if not path.exists():
        raise HpcyuanError(f"{path}: no such checkpoint directory or exported .h5 file")
    weights, skipped = read_checkpoint_weights(path)
    for line in skipped:
        if say:
            say(f"generate: {line}")
    return weights


def model_config(weights: Weights) -> ModelConfig:
    """The ModelConfig stored with the weights; a field this hpcyuan does not know is an error."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(weights.model) - known)
    if not weights.model:
        raise HpcyuanError(f"{weights.source}: no model config stored with the weights")
    if unknown:
        raise HpcyuanError(f"{weights.source}: the stored model config has fields this hpcyuan does not "
                           f"know: {', '.join(unknown)} (written by another version?)")
    return ModelConfig(**weights.model)


def load_model(path, say: Callable[[str], None] | None = None) -> tuple[YuanStage, Weights]:
    """The whole model in fp32 on the CPU, in eval mode, with the weights of `path` loaded."""
    weights = load_weights(path, say)
    model = build_model(model_config(weights))
    tensors = {name: _as_fp32(array, weights.dtypes.get(name, array.dtype.name))
               for name, array in weights.tensors.items()}
    model.load_named_tensors(tensors, strict=True)
    return model.eval(), weights


def _as_fp32(array: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "bfloat16":  # stored as its uint16 bits
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(array)).float()


def tokenizer_path(weights: Weights, override: str | None = None) -> Path:
    """`override`, else tokenizer.model in the data.dir of the run's stored config (a relative dir
    is looked up from the current directory, then from the repository root, where presets point)."""
    if override:
        path = Path(override)
        if path.is_dir():
            path = path / TOKENIZER
        if not path.is_file():
            raise HpcyuanError(f"--tokenizer {override}: no tokenizer model there")
        return path
    data_dir = _stored_data_dir(weights)
    if data_dir is None:
        raise HpcyuanError(f"{weights.source}: no training config stored with the weights, so the "
                           f"tokenizer is unknown; pass --tokenizer PATH (the data dir's {TOKENIZER})")
    candidates = [data_dir / TOKENIZER] + ([] if data_dir.is_absolute() else [REPO_ROOT / data_dir / TOKENIZER])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise HpcyuanError(f"tokenizer not found: {candidates[0]} (data.dir of the run's config) does not exist; "
                       f"run `hpcyuan data prepare` with that config or pass --tokenizer PATH")


def _stored_data_dir(weights: Weights) -> Path | None:
    # read as plain TOML, not as a Config: a field added or renamed since must not stop generation
    if not weights.config_toml:
        return None
    try:
        data_dir = tomllib.loads(weights.config_toml).get("data", {}).get("dir")
    except tomllib.TOMLDecodeError:
        return None
    return Path(data_dir) if data_dir else None


def load_tokenizer(weights: Weights, model: YuanStage, override: str | None = None) -> Tokenizer:
    tok = Tokenizer.load(tokenizer_path(weights, override))
    if tok.vocab_size > model.config.vocab_size:
        raise HpcyuanError(f"{tok.source}: the tokenizer has {tok.vocab_size} pieces but the model only "
                           f"{model.config.vocab_size} (model.vocab_size): another run's tokenizer?")
    return tok


@torch.no_grad()
def sample(model: YuanStage, context: list[int], how: Sampling, tok: Tokenizer,
           say: Callable[[str], None] | None = None) -> list[int]:
    """`how.tokens` new token ids sampled after `context`, one forward per token."""
    gen = torch.Generator().manual_seed(how.seed)
    window = model.config.seq_length
    ids = list(context)
    new: list[int] = []
    progress = Progress(say)
    for i in range(how.tokens):
        tokens = torch.tensor([ids[-window:]], dtype=torch.int64)  # (1, T <= seq_length)
        logits = model(tokens, position_ids(tokens, tok.eod_id))[0, -1]  # (V,)
        next_id = pick(logits[:tok.vocab_size].float(), how, gen)  # rows past the tokenizer are padding
        ids.append(next_id)
        new.append(next_id)
        progress.update(lambda: f"generate: {i + 1}/{how.tokens} tokens")
    return new


def pick(logits: torch.Tensor, how: Sampling, gen: torch.Generator) -> int:
    """One token id from (V,) fp32 logits: greedy at temperature 0, else top-k sampling."""
    if how.temperature == 0:
        return int(logits.argmax())
    logits = logits / how.temperature
    if 0 < how.top_k < logits.numel():
        kth = torch.topk(logits, how.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def generate(path, prompt: str, how: Sampling, tokenizer: str | None = None,
             say: Callable[[str], None] | None = None) -> str:
    """The prompt and its continuation, as text."""
    model, weights = load_model(path, say)
    tok = load_tokenizer(weights, model, tokenizer)
    if say:
        params = sum(p.numel() for p in model.parameters())
        say(f"generate: {params / 1e6:.2f}M parameters from {weights.source} (step {weights.step}), "
            f"tokenizer {tok.source}, {how.tokens} tokens, temperature {how.temperature}, top-k {how.top_k}, "
            f"seed {how.seed}")
    prompt_ids = tok.encode(prompt)
    new = sample(model, [tok.eod_id, *prompt_ids], how, tok, say)  # after <eod>: a document starts
    return tok.decode(prompt_ids + new)  # encode/decode round-trip exactly, so this starts with the prompt
