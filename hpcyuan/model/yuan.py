"""The Yuan 2.0 / M32 decoder, built per pipeline stage.

    stage = YuanStage(config, first_layer=0, num_layers=2, has_embedding=True, has_head=False)
    stage.init_weights(seed=1234)
    hidden = stage(tokens, position_ids)            # (B, T) int64 -> (B, T, h)

A stage holds a contiguous run of decoder layers, keyed by their GLOBAL index (`layers.7.…`), plus
the embedding on the first stage and the final norm + tied LM head on the last. `build_model`
is the whole model as one stage. Parameter names, shapes and init are listed in docs/model.md.

Block (pre-norm): x = x + LFA(input_norm(x)); x = x + MLP(mlp_norm(x)), the MLP being SwiGLU or,
when config.num_experts > 0, the M32 mixture of experts.

Init is a pure function of (seed, logical parameter name), so any cut of the model into stages
gets exactly the weights of the full model. A last stage without the embedding holds its own
`lm_head.weight`, a copy of the tied embedding; `logical_name` maps it to `embedding.weight`.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpcyuan.config import ModelConfig
from hpcyuan.errors import HpcyuanError
from hpcyuan.model.layers import RMSNorm, SwiGLU
from hpcyuan.model.lfa import LFAAttention
from hpcyuan.model.moe import MoE
from hpcyuan.model.rope import rope_cos_sin

TIED_HEAD = "lm_head.weight"
EMBEDDING = "embedding.weight"
_SHOW = 5  # names listed in an error message before "and N more"


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = LFAAttention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        # the two kinds get different names (`mlp.*` / `moe.*`) so a checkpoint says which it holds
        if config.is_moe:
            self.moe = MoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.ffn_hidden_size)
        self.is_moe = config.is_moe

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # (B, T, h) -> (B, T, h)
        x = x + self.attn(self.input_norm(x), cos, sin)
        ffn = self.moe if self.is_moe else self.mlp
        return x + ffn(self.mlp_norm(x))


class YuanStage(nn.Module):
    def __init__(self, config: ModelConfig, first_layer: int, num_layers: int, has_embedding: bool,
                 has_head: bool):
        super().__init__()
        if first_layer < 0 or num_layers < 0 or first_layer + num_layers > config.num_layers:
            raise HpcyuanError(f"stage layers [{first_layer}, {first_layer + num_layers}) do not fit in "
                               f"model.num_layers = {config.num_layers}")
        self.config = config
        self.first_layer, self.num_layers = first_layer, num_layers
        self.has_embedding, self.has_head = has_embedding, has_head
        self.recompute_layers = 0
        """The first this many layers recompute their activations in backward (parallel.recompute_layers)."""
        h, V = config.hidden_size, config.vocab_size
        if has_embedding:
            self.embedding = nn.Embedding(V, h)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(config)
                                     for i in range(first_layer, first_layer + num_layers)})
        if has_head:
            self.final_norm = RMSNorm(h, config.norm_eps)
            if not has_embedding:
                self.lm_head = nn.Linear(h, V, bias=False)  # holds lm_head.weight [V, h], the tied copy

    # ---------------------------------------------------------------------------------------------
    # forward

    def head_weight(self) -> torch.Tensor:
        """The tied LM head [V, h]: the embedding itself, or this stage's copy of it."""
        return self.embedding.weight if self.has_embedding else self.lm_head.weight

    def forward(self, inputs: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """inputs: token ids (B, T) int64 on the first stage, else hidden (B, T, h); position_ids (B, T).

        Returns hidden (B, T, h) without the head; with it, logits (B, T, V), or, when targets
        (B, T) are given, the mean cross-entropy over all B*T tokens as an fp32 scalar.
        """
        cfg = self.config
        x = self.embedding(inputs) if self.has_embedding else inputs  # (B, T, h)
        cos, sin = rope_cos_sin(position_ids, cfg.rotary_dim, cfg.rotary_base, cfg.rope_bf16_angles)
        for i, layer in enumerate(self.layers.values()):
            if i < self.recompute_layers and torch.is_grad_enabled():
                # keep only the layer's input; backward runs its forward again (RNG state restored)
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        if not self.has_head:
            return x
        logits = F.linear(self.final_norm(x), self.head_weight())  # (B, T, V)
        if targets is None:
            return logits
        # CE in fp32: autograd keeps only log_softmax's fp32 (B*T, V) output (the linear saves its
        # inputs, the cast saves nothing); the bf16 logits and the fp32 cast are freed on return
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))

    # ---------------------------------------------------------------------------------------------
    # names, init, loading

    def logical_name(self, local_name: str) -> str:
        """The model-wide name of a parameter: `lm_head.weight` is the tied `embedding.weight`."""
        return EMBEDDING if local_name == TIED_HEAD else local_name

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """{logical name: parameter data} of this stage (detached, shared storage)."""
        return {self.logical_name(n): p.detach() for n, p in self.named_parameters()}

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Re-initialise every parameter from its own generator seeded by (seed, logical name)."""
        for name, param in self.named_parameters():
            if param.device.type != "meta":
                param.copy_(init_tensor(self.config, self.logical_name(name), param.shape, seed))

    @torch.no_grad()
    def load_named_tensors(self, tensors: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
        """Copy this stage's tensors out of a full-model {logical name: tensor} dict.

        Names of other stages' layers are skipped. With strict, a name this stage needs but
        `tensors` lacks, or a name no stage of this config has, raises HpcyuanError; shape
        mismatches always do. LF conv weights also load from Megatron/HF Conv2d shape [out, in, 2, 1].
        Returns the names this stage did not find (empty when strict).
        """
        wanted = {self.logical_name(n): p for n, p in self.named_parameters()}
        if strict:
            unknown = sorted(set(tensors) - model_tensor_names(self.config))
            if unknown:
                raise HpcyuanError(f"unexpected tensor name(s) for this model config: {_listing(unknown)}")
        missing = sorted(set(wanted) - set(tensors))
        if strict and missing:
            raise HpcyuanError(f"missing tensor(s) for stage layers [{self.first_layer}, "
                               f"{self.first_layer + self.num_layers}): {_listing(missing)}")
        found = {name: _conv2d_squeezed(name, tensors[name]) for name in wanted if name in tensors}
        bad = [f"{n} (expected {list(wanted[n].shape)}, got {list(t.shape)})"
               for n, t in found.items() if t.shape != wanted[n].shape]
        if bad:
            raise HpcyuanError(f"shape mismatch: {_listing(bad)}")
        for name, tensor in found.items():
            wanted[name].copy_(tensor)
        return missing


def _conv2d_squeezed(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Megatron/HF store LF conv weights as Conv2d [out, in, 2, 1]; ours are Conv1d [out, in, 2]."""
    if ".lf.conv" in name and tensor.dim() == 4 and tensor.shape[-1] == 1:
        return tensor.squeeze(-1)
    return tensor


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def model_tensor_names(config: ModelConfig) -> set[str]:
    """Every logical tensor name of the full model of `config` (built on the meta device)."""
    with torch.device("meta"):
        return set(build_model(config).named_tensors())


def build_model(config: ModelConfig, seed: int | None = None) -> YuanStage:
    """The whole model as one stage; initialised with init_weights(seed) when a seed is given."""
    model = YuanStage(config, 0, config.num_layers, has_embedding=True, has_head=True)
    if seed is not None:
        model.init_weights(seed)
    return model


def init_tensor(config: ModelConfig, name: str, shape, seed: int) -> torch.Tensor:
    """The initial value (fp32, CPU) of the parameter with logical `name`: spec §2.

    Norm weights: ones. LF convs: PyTorch's default U(±1/sqrt(fan_in)), fan_in = 2 * in_channels,
    for weight and bias. Output projections (o_proj, mlp.w2, experts.w2): N(0, std/sqrt(2L)).
    Everything else (linears, router, embedding, expert w1/w3): N(0, std).
    """
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    # the CPU generator (mt19937) keeps only 32 bits of its seed, so hash seed and name together
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    out = torch.empty(shape)
    if ".lf.conv" in name:
        in_channels = config.hidden_size if ".lf.conv1." in name else config.hidden_size // 2
        bound = 1.0 / math.sqrt(2 * in_channels)
        return out.uniform_(-bound, bound, generator=gen)
    std = config.init_std
    if name.endswith(("attn.o_proj.weight", "mlp.w2.weight", "experts.w2")):
        std /= math.sqrt(2 * config.num_layers)
    return out.normal_(0.0, std, generator=gen)


def param_groups(stage: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups as in Megatron: decay for >= 2-D tensors (linear and conv weights, the
    embedding, expert stacks), none for 1-D ones (norm weights, conv biases). Each group also
    carries the local parameter `names` in the same order as `params`."""
    decay = [(n, p) for n, p in stage.named_parameters() if p.dim() >= 2]
    no_decay = [(n, p) for n, p in stage.named_parameters() if p.dim() < 2]
    return [{"params": [p for _, p in group], "names": [n for n, _ in group], "weight_decay": wd}
            for group, wd in ((decay, weight_decay), (no_decay, 0.0))]
