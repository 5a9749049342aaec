// Torch glue for the attention router CUDA kernels: TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) + launch checks.
// The kernels are in attention_router_kernel.cu behind the C-style launchers of attention_router_kernel.h, so
// they compile with bare nvcc; this file needs a CUDA build of torch (its c10/cuda headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "attention_router_kernel.h"

namespace hpcyuan {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kDouble: return 2;
    default: TORCH_CHECK(false, "hpcyuan::attention_router (CUDA): fp32 or fp64 inputs only, got ", t);
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t top_k) {
  TORCH_CHECK(q.dim() == 2, "attention_router: q must be (N, E), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "attention_router: q, k, v must have one shape");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "attention_router: q, k, v must have one dtype");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), "attention_router: q, k, v on one device");
  TORCH_CHECK(top_k >= 1 && top_k <= q.size(1), "attention_router: top_k must be in [1, E = ", q.size(1),
              "], got ", top_k);
  TORCH_CHECK(q.size(1) <= HPCYUAN_ROUTER_MAX_EXPERTS, "attention_router (CUDA): at most ",
              HPCYUAN_ROUTER_MAX_EXPERTS, " experts, got ", q.size(1));
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> attention_router_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                         const at::Tensor& v_in, int64_t top_k) {
  check_inputs(q_in, k_in, v_in, top_k);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int code = dtype_code(q_in.scalar_type());
  at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t N = q.size(0), E = q.size(1);
  at::Tensor gates = at::empty({N, top_k}, q.options());
  at::Tensor indices = at::empty({N, top_k}, q.options().dtype(at::kLong));
  check_launch(hpcyuan_attention_router_fwd(code, q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(),
                                            gates.mutable_data_ptr(), indices.mutable_data_ptr<int64_t>(), N, E,
                                            top_k, c10::cuda::getCurrentCUDAStream().stream()),
               "hpcyuan::attention_router");
  return {gates, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_router_backward_cuda(
    const at::Tensor& grad_gates, const at::Tensor& gates_in, const at::Tensor& indices_in, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in) {
  const int64_t K = gates_in.size(-1);
  check_inputs(q_in, k_in, v_in, K);
  TORCH_CHECK(gates_in.dim() == 2 && gates_in.size(0) == q_in.size(0) && grad_gates.sizes() == gates_in.sizes() &&
                  indices_in.sizes() == gates_in.sizes(),
              "attention_router_backward: grad_gates, gates and indices must be (N, top_k)");
  TORCH_CHECK(indices_in.scalar_type() == at::kLong, "attention_router_backward: indices must be int64");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int code = dtype_code(q_in.scalar_type());
  at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  at::Tensor g = gates_in.to(q.scalar_type()).contiguous(), dg = grad_gates.to(q.scalar_type()).contiguous();
  at::Tensor indices = indices_in.contiguous();
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(q), dv = at::empty_like(q);
  check_launch(hpcyuan_attention_router_bwd(code, dg.const_data_ptr(), g.const_data_ptr(),
                                            indices.const_data_ptr<int64_t>(), q.const_data_ptr(), k.const_data_ptr(),
                                            v.const_data_ptr(), dq.mutable_data_ptr(), dk.mutable_data_ptr(),
                                            dv.mutable_data_ptr(), q.size(0), q.size(1), K,
                                            c10::cuda::getCurrentCUDAStream().stream()),
               "hpcyuan::attention_router_backward");
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) {
  m.impl("attention_router", &attention_router_cuda);
  m.impl("attention_router_backward", &attention_router_backward_cuda);
}

}  // namespace hpcyuan
