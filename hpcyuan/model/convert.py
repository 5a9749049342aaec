"""Import released Yuan 2.0 (dense) weights from a Hugging Face state dict into our logical names.

    hf = torch.load("yuan2-2b-hf/pytorch_model.bin", weights_only=True)  # tensors only, no pickled code
    model = build_model(config)
    model.load_named_tensors(from_hf_state_dict(hf, config))

The HF port's q_proj/k_proj are not "the queries" and "the keys": they are the two row halves of
Megatron's fused [2P, h] `get_query_key`, whose rows are per head [Q_j (d rows); K_j (d rows)].
So HF q_proj holds Q and K of heads 0..H/2-1 and k_proj those of heads H/2..H-1; we de-interleave.
The HF MLP names are swapped: up_proj is the SiLU branch (our w1), gate_proj the linear one (w3).
LF conv weights stay Conv2d-shaped [out, in, 2, 1]; load_named_tensors accepts that shape.
The M32 (MoE) mapping is documented in docs/model.md; it is not implemented here.
"""

from __future__ import annotations

import torch

from hpcyuan.config import ModelConfig
from hpcyuan.errors import HpcyuanError

_LAYER_RENAMES = {
    "input_layernorm.weight": "input_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "self_attn.lf_gate.conv1.weight": "attn.lf.conv1.weight",
    "self_attn.lf_gate.conv1.bias": "attn.lf.conv1.bias",
    "self_attn.lf_gate.conv2.weight": "attn.lf.conv2.weight",
    "self_attn.lf_gate.conv2.bias": "attn.lf.conv2.bias",
    "self_attn.lf_gate.output_layernorm.weight": "attn.lf.norm.weight",
    "mlp.up_proj.weight": "mlp.w1.weight",
    "mlp.gate_proj.weight": "mlp.w3.weight",
    "mlp.down_proj.weight": "mlp.w2.weight",
}


def split_hf_query_key(hf_q: torch.Tensor, hf_k: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HF (q_proj, k_proj), each [P, h], -> per-head (Q, K) weights, each [P, h]."""
    P, h = hf_q.shape
    fused = torch.cat([hf_q, hf_k]).view(num_heads, 2, P // num_heads, h)  # (H, [Q|K], d, h)
    return fused[:, 0].reshape(P, h), fused[:, 1].reshape(P, h)


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF YuanForCausalLM names -> our logical names. `lm_head.weight` (a copy of the tied
    embedding in the HF export) is dropped; rotary buffers are skipped."""
    if config.is_moe:
        raise HpcyuanError("from_hf_state_dict converts dense Yuan 2.0 only; see docs/model.md for the M32 mapping")
    out = {"embedding.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        for theirs, ours in _LAYER_RENAMES.items():
            out[f"layers.{i}.{ours}"] = hf[prefix + theirs]
        q, k = split_hf_query_key(hf[prefix + "self_attn.q_proj.weight"], hf[prefix + "self_attn.k_proj.weight"],
                                  config.num_heads)
        out[f"layers.{i}.attn.q_proj.weight"], out[f"layers.{i}.attn.k_proj.weight"] = q, k
    return out
