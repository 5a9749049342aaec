// The one TORCH_LIBRARY(hpcyuan, m) block: the schemas of every hpcyuan op (extension-cpp layout).
// CPU kernels live in kernels/<op>.cpp, CUDA kernels in kernels/cuda/<op>.cu, autograd and fake
// (meta) registrations in Python under hpcyuan/ops/. Signatures match hpcyuan/ops/reference.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import hpcyuan._C` loads this .so, which runs the registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hpcyuan, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // grad_x (x's dtype) and grad_weight (weight's dtype); rstd is recomputed, not saved
  m.def("rms_norm_backward(Tensor grad_out, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  // lf (B, T, C) in x's dtype; CompositeImplicitAutograd over lfa_filter_forward (kernels/lfa_filter.cpp)
  m.def("lfa_filter(Tensor x, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight, Tensor conv2_bias, "
        "Tensor norm_weight, float eps) -> Tensor");
  // (lf, y1_pair, s, rstd): y1_pair (B, T, C) = y1[t-1], y1[t] interleaved, in the convs' dtype; s = conv2 + x
  // (B, T, C) in x's dtype; rstd (B, T) fp32 (fp64 for fp64): what the backward needs, so it recomputes no GEMM
  m.def("lfa_filter_forward(Tensor x, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight, "
        "Tensor conv2_bias, Tensor norm_weight, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // (grad_x, grad_conv1_weight, grad_conv1_bias, grad_conv2_weight, grad_conv2_bias, grad_norm_weight)
  m.def("lfa_filter_backward(Tensor grad_out, Tensor x, Tensor conv1_weight, Tensor conv2_weight, "
        "Tensor norm_weight, Tensor y1_pair, Tensor s, Tensor rstd) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor)");
  // fp32/fp64 (N, E) q, k, v -> gates (N, top_k) in q's dtype, expert indices (N, top_k) int64
  m.def("attention_router(Tensor q, Tensor k, Tensor v, int top_k) -> (Tensor, Tensor)");
  // (grad_q, grad_k, grad_v); only the top_k selected rows of the E×E softmax are recomputed
  m.def("attention_router_backward(Tensor grad_gates, Tensor gates, Tensor indices, Tensor q, Tensor k, "
        "Tensor v) -> (Tensor, Tensor, Tensor)");
  // AdamW step in place on a flat fp32 shard, torch.optim.AdamW's order of operations; param_out (fp32 or
  // bf16, may be None) receives the updated master weights
  m.def("fused_adamw(Tensor(a!) master, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor grad, "
        "Tensor(d!)? param_out, float lr, float beta1, float beta2, float eps, float weight_decay, int step, "
        "float grad_scale) -> ()");
  // the same step from (master, exp_avg, exp_avg_sq), left unchanged, into the *_out tensors
  m.def("fused_adamw_into(Tensor master, Tensor exp_avg, Tensor exp_avg_sq, Tensor grad, Tensor(a!) master_out, "
        "Tensor(b!) exp_avg_out, Tensor(c!) exp_avg_sq_out, Tensor(d!)? param_out, float lr, float beta1, "
        "float beta2, float eps, float weight_decay, int step, float grad_scale) -> ()");
}
