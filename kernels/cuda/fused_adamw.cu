// Torch glue for the fused AdamW CUDA kernel: TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) + launch check.
// The kernel is in fused_adamw_kernel.cu behind the C-style launcher of fused_adamw_kernel.h, so it compiles
// with bare nvcc; this file needs a CUDA build of torch (its c10/cuda headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "fused_adamw_kernel.h"

namespace hpcyuan {
namespace {

void check_flat(const at::Tensor& t, const char* name, const at::Tensor& master) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == master.numel() && t.is_contiguous(), "fused_adamw: ", name,
              " must be 1-D contiguous with ", master.numel(), " elements (master's), got ", t.sizes());
  TORCH_CHECK(t.device() == master.device(), "fused_adamw: ", name, " is on ", t.device(), ", master on ",
              master.device());
}

void adamw_cuda(const at::Tensor& master, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                const at::Tensor& grad, const at::Tensor& master_out, const at::Tensor& exp_avg_out,
                const at::Tensor& exp_avg_sq_out, const std::optional<at::Tensor>& param_out, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  for (const auto& [t, name] :
       {std::pair{&master, "master"}, std::pair{&exp_avg, "exp_avg"}, std::pair{&exp_avg_sq, "exp_avg_sq"},
        std::pair{&grad, "grad"}, std::pair{&master_out, "master_out"}, std::pair{&exp_avg_out, "exp_avg_out"},
        std::pair{&exp_avg_sq_out, "exp_avg_sq_out"}}) {
    check_flat(*t, name, master);
    TORCH_CHECK(t->scalar_type() == at::kFloat, "fused_adamw: ", name, " must be fp32, got ", t->scalar_type());
  }
  TORCH_CHECK(step >= 1, "fused_adamw: step must be >= 1, got ", step);
  void* out = nullptr;
  int out_dtype = 0;
  if (param_out.has_value()) {
    check_flat(*param_out, "param_out", master);
    const auto t = param_out->scalar_type();
    TORCH_CHECK(t == at::kFloat || t == at::kBFloat16, "fused_adamw: param_out must be fp32 or bf16, got ", t);
    out = param_out->mutable_data_ptr();
    out_dtype = t == at::kFloat ? 0 : 1;
  }
  const c10::cuda::CUDAGuard guard(master.device());
  const cudaError_t err = hpcyuan_fused_adamw(
      master.const_data_ptr<float>(), exp_avg.const_data_ptr<float>(), exp_avg_sq.const_data_ptr<float>(),
      grad.const_data_ptr<float>(), master_out.mutable_data_ptr<float>(), exp_avg_out.mutable_data_ptr<float>(),
      exp_avg_sq_out.mutable_data_ptr<float>(), out, out_dtype, master.numel(), lr, beta1, beta2, eps, weight_decay,
      step, grad_scale, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "hpcyuan::fused_adamw CUDA launch failed: ", cudaGetErrorString(err));
}

void fused_adamw_cuda(const at::Tensor& master, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                      const at::Tensor& grad, const std::optional<at::Tensor>& param_out, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  adamw_cuda(master, exp_avg, exp_avg_sq, grad, master, exp_avg, exp_avg_sq, param_out, lr, beta1, beta2, eps,
             weight_decay, step, grad_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) {
  m.impl("fused_adamw", &fused_adamw_cuda);
  m.impl("fused_adamw_into", &adamw_cuda);
}

}  // namespace hpcyuan
