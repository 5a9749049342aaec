// Torch glue for the RMSNorm CUDA kernels: TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) + launch checks.
// The kernels themselves are in rms_norm_kernel.cu behind the C-style launchers of rms_norm_kernel.h,
// so they compile with bare nvcc; this file needs a CUDA build of torch (its c10/cuda headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "rms_norm_kernel.h"

namespace hpcyuan {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kDouble: return 2;
    case at::kHalf: return 3;
    default: TORCH_CHECK(false, "hpcyuan::rms_norm (CUDA): fp32, bf16, fp16 or fp64 inputs only, got ", t);
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor rms_norm_cuda(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x_in.size(-1), "rms_norm: weight must have x.size(-1) elements");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int code = dtype_code(x_in.scalar_type());
  at::Tensor x = x_in.contiguous();
  at::Tensor w = weight.to(code == 2 ? at::kDouble : at::kFloat).contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  check_launch(hpcyuan_rms_norm_fwd(code, x.const_data_ptr(), w.const_data_ptr(), y.mutable_data_ptr(), rows, cols,
                                    eps, c10::cuda::getCurrentCUDAStream().stream()),
               "hpcyuan::rms_norm");
  return y;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                          const at::Tensor& weight, double eps) {
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "rms_norm_backward: grad_out and x shapes differ");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int code = dtype_code(x_in.scalar_type());
  const auto acc = code == 2 ? at::kDouble : at::kFloat;
  at::Tensor x = x_in.contiguous();
  at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor w = weight.to(acc).contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor partial = at::empty({hpcyuan_rms_norm_bwd_blocks(rows), cols}, x.options().dtype(acc));
  at::Tensor dw = at::empty({cols}, x.options().dtype(acc));
  check_launch(hpcyuan_rms_norm_bwd(code, g.const_data_ptr(), x.const_data_ptr(), w.const_data_ptr(),
                                    dx.mutable_data_ptr(), partial.mutable_data_ptr(), dw.mutable_data_ptr(), rows,
                                    cols, eps, c10::cuda::getCurrentCUDAStream().stream()),
               "hpcyuan::rms_norm_backward");
  return {dx, dw.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("rms_norm_backward", &rms_norm_backward_cuda);
}

}  // namespace hpcyuan
