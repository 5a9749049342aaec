// RMSNorm CPU kernels: y = weight * x * rsqrt(mean(x^2) + eps) over the last dim.
// OpenMP over rows, `omp simd` inner loops over channels; math in at::opmath_type (fp32 for
// bf16/fp16/fp32, fp64 for fp64), like reference_rms_norm. Schemas: kernels/registration.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace hpcyuan {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1, "rms_norm: x must have at least 1 dim");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight must be 1-D with x.size(-1) = ", x.size(-1), " elements, got ", weight.sizes());
  TORCH_CHECK(x.is_floating_point() && weight.is_floating_point(), "rms_norm: floating-point inputs only");
}

template <typename scalar_t, typename acc_t>
void rms_norm_fwd(const scalar_t* x, const acc_t* w, scalar_t* y, int64_t rows, int64_t C, acc_t eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xr = x + r * C;
    scalar_t* yr = y + r * C;
    acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < C; ++j) {
      acc_t v = static_cast<acc_t>(xr[j]);
      ss += v * v;
    }
    const acc_t rstd = acc_t(1) / std::sqrt(ss / static_cast<acc_t>(C) + eps);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) yr[j] = static_cast<scalar_t>(static_cast<acc_t>(xr[j]) * rstd * w[j]);
  }
}

// dx = rstd * (g*w - x * rstd^2 * mean(g*w*x)),  dw = sum_rows g * x * rstd
template <typename scalar_t, typename acc_t>
void rms_norm_bwd(const scalar_t* g, const scalar_t* x, const acc_t* w, scalar_t* dx, acc_t* dw, int64_t rows,
                  int64_t C, acc_t eps) {
  int nthreads = 1;
#ifdef _OPENMP
  nthreads = omp_get_max_threads();
#endif
  std::vector<acc_t> partial(static_cast<size_t>(nthreads) * C, acc_t(0));  // per-thread dw
#pragma omp parallel num_threads(nthreads)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    acc_t* dwp = partial.data() + static_cast<int64_t>(tid) * C;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* xr = x + r * C;
      const scalar_t* gr = g + r * C;
      scalar_t* dxr = dx + r * C;
      acc_t ss = 0, dot = 0;
#pragma omp simd reduction(+ : ss, dot)
      for (int64_t j = 0; j < C; ++j) {
        acc_t xv = static_cast<acc_t>(xr[j]);
        ss += xv * xv;
        dot += static_cast<acc_t>(gr[j]) * w[j] * xv;
      }
      const acc_t rstd = acc_t(1) / std::sqrt(ss / static_cast<acc_t>(C) + eps);
      const acc_t coef = rstd * rstd * dot / static_cast<acc_t>(C);
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) {
        acc_t xv = static_cast<acc_t>(xr[j]);
        acc_t gv = static_cast<acc_t>(gr[j]);
        dxr[j] = static_cast<scalar_t>(rstd * (gv * w[j] - xv * coef));
        dwp[j] += gv * xv * rstd;
      }
    }
  }
  for (int t = 0; t < nthreads; ++t) {
    const acc_t* p = partial.data() + static_cast<int64_t>(t) * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) dw[j] += p[j];
  }
}

at::Tensor rms_norm_cpu(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  check_inputs(x_in, weight);
  at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t C = x.size(-1), rows = C == 0 ? 0 : x.numel() / C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "hpcyuan::rms_norm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor w = weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    rms_norm_fwd<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<acc_t>(),
                                  y.mutable_data_ptr<scalar_t>(), rows, C, static_cast<acc_t>(eps));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                         const at::Tensor& weight, double eps) {
  check_inputs(x_in, weight);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "rms_norm_backward: grad_out and x shapes differ");
  at::Tensor x = x_in.contiguous();
  at::Tensor g = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dw;
  const int64_t C = x.size(-1), rows = C == 0 ? 0 : x.numel() / C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "hpcyuan::rms_norm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor w = weight.to(acc).contiguous();
    dw = at::zeros({C}, weight.options().dtype(acc));
    rms_norm_bwd<scalar_t, acc_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), w.const_data_ptr<acc_t>(),
                                  dx.mutable_data_ptr<scalar_t>(), dw.mutable_data_ptr<acc_t>(), rows, C,
                                  static_cast<acc_t>(eps));
  });
  return {dx, dw.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("rms_norm_backward", &rms_norm_backward_cpu);
}

}  // namespace hpcyuan
