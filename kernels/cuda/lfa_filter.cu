// Torch glue for the LFA localized-filter CUDA kernels: TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) + launch checks.
// Same algorithm and layouts as the CPU kernels (kernels/lfa_filter.cpp, whose header comment has the
// formulas): the six GEMMs through at::mm (cuBLAS, on the current stream), the fused passes between them in
// lfa_filter_kernel.cu behind the C-style launchers of lfa_filter_kernel.h. The Autocast kernel and the
// CompositeImplicitAutograd lfa_filter are device-generic and live in lfa_filter.cpp. This file needs a CUDA
// build of torch (its c10/cuda headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "lfa_filter_kernel.h"

namespace hpcyuan {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// the (activation, conv) dtype pair code of lfa_filter_kernel.h
int pair_code(at::ScalarType xt, at::ScalarType ct) {
  if (xt == ct && xt == at::kFloat) return 0;
  if (xt == ct && xt == at::kBFloat16) return 1;
  if (xt == ct && xt == at::kDouble) return 2;
  if (xt == at::kFloat && ct == at::kBFloat16) return 3;
  if (xt == ct && xt == at::kHalf) return 4;
  if (xt == at::kFloat && ct == at::kHalf) return 5;
  TORCH_CHECK(false, "hpcyuan::lfa_filter (CUDA): x is ", xt, " and the conv weights ", ct,
              "; supported: fp32, bf16, fp16 or fp64 for both, or fp32 x with bf16/fp16 convs (autocast)");
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " CUDA launch failed: ", cudaGetErrorString(err));
}

void check_inputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& nw) {
  TORCH_CHECK(x.dim() == 3, "lfa_filter: x must be (B, T, C), got ", x.sizes());
  const int64_t C = x.size(2), H = C / 2;
  TORCH_CHECK(C >= 2 && C % 2 == 0, "lfa_filter: the channel count C = ", C, " must be even and >= 2");
  TORCH_CHECK(w1.sizes() == at::IntArrayRef({H, C, 2}), "lfa_filter: conv1_weight must be [C/2, C, 2], got ",
              w1.sizes());
  TORCH_CHECK(w2.sizes() == at::IntArrayRef({C, H, 2}), "lfa_filter: conv2_weight must be [C, C/2, 2], got ",
              w2.sizes());
  TORCH_CHECK(nw.dim() == 1 && nw.size(0) == C, "lfa_filter: norm_weight must have C = ", C, " elements");
}

// [A0; A1] (C, C) and conv2.weight viewed as (C, C): see lfa_filter.cpp
at::Tensor conv1_rows(const at::Tensor& w1) { return w1.permute({2, 0, 1}).reshape({w1.size(1), w1.size(1)}); }
at::Tensor conv2_mat(const at::Tensor& w2) { return w2.contiguous().view({w2.size(0), w2.size(0)}); }

Forward lfa_filter_forward_cuda(const at::Tensor& x_in, const at::Tensor& w1, const at::Tensor& b1,
                                const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& nw, double eps) {
  check_inputs(x_in, w1, w2, nw);
  TORCH_CHECK(b1.scalar_type() == w1.scalar_type() && w2.scalar_type() == w1.scalar_type() &&
                  b2.scalar_type() == w1.scalar_type(),
              "lfa_filter: conv weights and biases must share one dtype");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2), H = C / 2, N = B * T;
  const at::ScalarType ct = w1.scalar_type();
  const int code = pair_code(x_in.scalar_type(), ct);
  const auto acc = code == 2 ? at::kDouble : at::kFloat;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor x = x_in.contiguous();
  at::Tensor a = b1.to(acc).contiguous(), c = b2.to(acc).contiguous(), w = nw.to(acc).contiguous();
  at::Tensor p = at::mm(x.view({N, C}).to(ct), conv1_rows(w1).t());  // (N, C) = [A0 x | A1 x]
  at::Tensor y = at::empty({B, T, C}, x.options().dtype(ct));         // y1[t-1], y1[t] interleaved
  check_launch(hpcyuan_lfa_conv1_pair_fwd(code, p.const_data_ptr(), a.const_data_ptr(), y.mutable_data_ptr(), N, T,
                                          H, stream),
               "hpcyuan::lfa_filter_forward (conv1)");
  at::mm_out(p, y.view({N, C}), conv2_mat(w2).t());  // Z = conv2 without bias, into P's storage
  at::Tensor s = at::empty_like(x, at::MemoryFormat::Contiguous), out = at::empty_like(s);
  at::Tensor rstd = at::empty({B, T}, x.options().dtype(acc));
  check_launch(hpcyuan_lfa_norm_fwd(code, p.const_data_ptr(), c.const_data_ptr(), x.const_data_ptr(),
                                    w.const_data_ptr(), s.mutable_data_ptr(), out.mutable_data_ptr(),
                                    rstd.mutable_data_ptr(), N, C, eps, stream),
               "hpcyuan::lfa_filter_forward (norm)");
  return {out, y, s, rstd};
}

Backward lfa_filter_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& w1,
                                  const at::Tensor& w2, const at::Tensor& nw, const at::Tensor& y_in,
                                  const at::Tensor& s_in, const at::Tensor& rstd_in) {
  check_inputs(x_in, w1, w2, nw);
  TORCH_CHECK(grad.sizes() == x_in.sizes() && y_in.sizes() == x_in.sizes() && s_in.sizes() == x_in.sizes(),
              "lfa_filter_backward: grad_out, y1_pair and s must have x's shape ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2), H = C / 2, N = B * T;
  const at::ScalarType xt = x_in.scalar_type(), ct = w1.scalar_type();
  const int code = pair_code(xt, ct);
  const auto acc = code == 2 ? at::kDouble : at::kFloat;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor x = x_in.contiguous().view({N, C}), y = y_in.contiguous().view({N, C});
  at::Tensor s = s_in.contiguous(), g = grad.to(xt).contiguous();
  at::Tensor w = nw.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
  const int64_t nb = hpcyuan_lfa_bwd_blocks(N);

  // RMSNorm backward: ds (the residual's grad, and conv2's output grad), d norm_w, d conv2.bias
  at::Tensor dsx = at::empty({N, C}, x.options());
  at::Tensor dsc = xt == ct ? dsx : at::empty({N, C}, x.options().dtype(ct));
  at::Tensor partial = at::empty({nb, 2 * C}, x.options().dtype(acc));
  at::Tensor sums = at::empty({2, C}, x.options().dtype(acc));
  check_launch(hpcyuan_lfa_norm_bwd(code, g.const_data_ptr(), s.const_data_ptr(), rstd.const_data_ptr(),
                                    w.const_data_ptr(), dsx.mutable_data_ptr(),
                                    xt == ct ? nullptr : dsc.mutable_data_ptr(), partial.mutable_data_ptr(),
                                    sums.mutable_data_ptr(), N, C, stream),
               "hpcyuan::lfa_filter_backward (norm)");
  at::Tensor dnw = sums[0].to(nw.scalar_type(), /*non_blocking=*/false, /*copy=*/true);  // no aliased outputs
  at::Tensor db2 = sums[1].to(ct, /*non_blocking=*/false, /*copy=*/true);

  // conv2: dB in conv2.weight's layout, dY interleaved like Y
  at::Tensor dw2 = at::mm(dsc.t(), y);
  at::Tensor dy = at::mm(dsc, conv2_mat(w2));

  // conv1: dP = [dy1[t+1] | dy1[t]], d conv1.bias; then dA and dx = ds + dP @ [A0; A1]
  at::Tensor dp = at::empty({N, C}, x.options().dtype(ct));
  at::Tensor partial1 = at::empty({nb, H}, x.options().dtype(acc));
  at::Tensor da = at::empty({H}, x.options().dtype(acc));
  check_launch(hpcyuan_lfa_conv1_pair_bwd(code, dy.const_data_ptr(), dp.mutable_data_ptr(),
                                          partial1.mutable_data_ptr(), da.mutable_data_ptr(), N, T, H, stream),
               "hpcyuan::lfa_filter_backward (conv1)");
  at::Tensor w1r = conv1_rows(w1);
  at::Tensor dw1 = at::mm(dp.t(), xt == ct ? x : x.to(ct));
  at::Tensor dx = xt == ct ? dsx.addmm_(dp, w1r) : dsx.add_(at::mm(dp, w1r));
  return {dx.view({B, T, C}), dw1.view({2, H, C}).permute({1, 2, 0}).contiguous(), da.to(ct),
          dw2.view({C, H, 2}), db2, dnw};
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CUDA, m) {
  m.impl("lfa_filter_forward", &lfa_filter_forward_cuda);
  m.impl("lfa_filter_backward", &lfa_filter_backward_cuda);
}

}  // namespace hpcyuan
