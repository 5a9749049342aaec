// LFA localized filter, CPU: lf = RMSNorm(conv2(conv1(x)) + x) on (B, T, C), both convs causal with
// kernel 2 (docs/model.md "LFA", reference_lfa_filter in hpcyuan/ops/reference.py). Schemas:
// kernels/registration.cpp; autograd + fake: hpcyuan/ops/registrations.py; tests:
// tests/kernels/test_lfa_filter.py. N = B*T rows, H = C/2; A = conv1.weight, B = conv2.weight.
//
// The six matmuls of a step are ATen GEMMs; everything between them is one OpenMP pass each:
//   forward   P  = x @ [A0; A1]^T                 (N, C)  GEMM: conv1's two taps side by side
//             Y  = y1[t-1], y1[t] interleaved, y1[t] = A1 x[t] + A0 x[t-1] + a  pass 1, (N, C)
//             Z  = Y @ B^T                        (N, C)  GEMM: conv2, no shift needed on Y
//             s  = Z + c + x;  lf = norm_w * s * rstd                           pass 2
//   backward  ds = RMSNorm'(grad, s, rstd); d norm_w, dc as column sums          pass 3
//             dB = ds^T @ Y;  dY = ds @ B                                       2 GEMMs
//             dy1[t] = dY[t, odd] + dY[t+1, even];  dP = [dy1[t+1] | dy1[t]]; da pass 4
//             dA = dP^T @ x;  dx = ds + dP @ [A0; A1]                           2 GEMMs (+= fused)
// Y interleaves the taps (Y[t, 2i + k] = y1[t-1+k, i]) as conv2.weight [C, H, 2] does, so B is conv2.weight
// viewed as (C, C) and dB comes out in its layout: no weight copies for conv2. conv1 pairs its outputs
// instead (P, dP: (N, C) rather than an (N, 2C) input pair), at the price of a [A0; A1] copy (C^2, not N*C).
// lfa_filter_forward returns (lf, Y, s, rstd); Y, s, rstd are what lfa_filter_backward needs.
//
// Dtypes. The convs compute in the conv weights' dtype ("conv dtype", GEMMs in it, y1 and Z rounded to it,
// x cast to it), the residual and the norm in at::opmath_type (fp32, fp64 for fp64), lf/s in x's dtype: the
// reference's numerics. x and the convs share a dtype, or x is fp32 with bf16/fp16 convs: what bf16
// autocast produces. The Autocast kernels below cast only the conv weights and biases (as F.linear's
// autocast does in the reference), never x or norm_w, so lf stays in x's dtype as in the reference.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace hpcyuan {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

void check_shapes(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& nw) {
  TORCH_CHECK(x.dim() == 3, "lfa_filter: x must be (B, T, C), got ", x.sizes());
  const int64_t C = x.size(2), H = C / 2;
  TORCH_CHECK(C >= 2 && C % 2 == 0, "lfa_filter: the channel count C = ", C, " must be even and >= 2");
  TORCH_CHECK(w1.sizes() == at::IntArrayRef({H, C, 2}), "lfa_filter: conv1_weight must be [C/2, C, 2] = [", H,
              ", ", C, ", 2], got ", w1.sizes());
  TORCH_CHECK(w2.sizes() == at::IntArrayRef({C, H, 2}), "lfa_filter: conv2_weight must be [C, C/2, 2] = [", C,
              ", ", H, ", 2], got ", w2.sizes());
  TORCH_CHECK(nw.dim() == 1 && nw.size(0) == C, "lfa_filter: norm_weight must have C = ", C, " elements");
}

// Calls f(x_t(), conv_t()) for the supported (x dtype, conv dtype) pairs: equal, or fp32 x with bf16/fp16 convs.
template <typename F>
void dispatch_pair(at::ScalarType xt, at::ScalarType ct, const char* name, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ct, "hpcyuan::lfa_filter", [&] {
    using conv_t = scalar_t;
    if (xt == ct) {
      f(conv_t(), conv_t());
    } else if constexpr (std::is_same_v<conv_t, at::BFloat16> || std::is_same_v<conv_t, at::Half>) {
      TORCH_CHECK(xt == at::kFloat, name, ": x is ", xt, " but the conv weights are ", ct,
                  "; x must have the convs' dtype, or be fp32 with bf16/fp16 convs (autocast)");
      f(float(), conv_t());
    } else {
      TORCH_CHECK(false, name, ": x is ", xt, " but the conv weights are ", ct,
                  "; x must have the convs' dtype, or be fp32 with bf16/fp16 convs (autocast)");
    }
  });
}

// [A0; A1] (C, C): row k < H is tap 0 (t-1) of output channel k, row H + k tap 1 (t). Same as the reference.
at::Tensor conv1_rows(const at::Tensor& w1) { return w1.permute({2, 0, 1}).reshape({w1.size(1), w1.size(1)}); }
// B (C, C): conv2.weight [C, H, 2] as is, column 2i + k is tap k of input channel i (Y's layout).
at::Tensor conv2_mat(const at::Tensor& w2) { return w2.contiguous().view({w2.size(0), w2.size(0)}); }

// Passes over fewer elements run on one thread (ATen's GRAIN_SIZE): a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 32768;

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Pass 1: Y[t, 2i + 1] = Y[t+1, 2i] = y1[t, i] from P = [A0 x | A1 x]; Y[0, 2i] = y1[-1, i] = 0. Row t writes
// its odd and row t+1's even columns.
template <typename c_t, typename acc_t>
void conv1_pair_fwd(const c_t* p, const acc_t* a, c_t* y, int64_t rows, int64_t T, int64_t H) {
  const int64_t C = 2 * H;
#pragma omp parallel for schedule(static) if (rows * C >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r % T;
    const c_t* cur = p + r * C + H;  // A1 x[t]
    c_t* self = y + r * C;
    c_t* next = y + (r + 1) * C;
    if (t > 0 && t + 1 < T) {  // the common case, branch-free inner loop
      const c_t* prev = p + (r - 1) * C;  // A0 x[t-1]
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) {
        const c_t v = static_cast<c_t>(static_cast<acc_t>(cur[i]) + static_cast<acc_t>(prev[i]) + a[i]);
        self[2 * i + 1] = v;
        next[2 * i] = v;
      }
      continue;
    }
    for (int64_t i = 0; i < H; ++i) {
      acc_t v = static_cast<acc_t>(cur[i]) + a[i];
      if (t > 0) v += static_cast<acc_t>(p[(r - 1) * C + i]);
      self[2 * i + 1] = static_cast<c_t>(v);
      if (t + 1 < T) next[2 * i] = static_cast<c_t>(v);
      if (t == 0) self[2 * i] = c_t(0);  // y1[-1] = 0
    }
  }
}

// Pass 2: s = x_t(Z + c + x), rstd = 1/sqrt(mean(s^2) + eps), lf = s * rstd * norm_w (norm on the rounded s,
// which is what backward sees).
template <typename x_t, typename c_t, typename acc_t>
void residual_norm_fwd(const c_t* z, const acc_t* c, const x_t* x, const acc_t* nw, x_t* s, x_t* out, acc_t* rstd,
                       int64_t rows, int64_t C, acc_t eps) {
#pragma omp parallel for schedule(static) if (rows * C >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const c_t* zr = z + r * C;
    const x_t* xr = x + r * C;
    x_t* sr = s + r * C;
    x_t* outr = out + r * C;
    acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < C; ++j) {
      const x_t v = static_cast<x_t>(static_cast<acc_t>(zr[j]) + c[j] + static_cast<acc_t>(xr[j]));
      sr[j] = v;
      ss += static_cast<acc_t>(v) * static_cast<acc_t>(v);
    }
    const acc_t rs = acc_t(1) / std::sqrt(ss / static_cast<acc_t>(C) + eps);
    rstd[r] = rs;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) outr[j] = static_cast<x_t>(static_cast<acc_t>(sr[j]) * rs * nw[j]);
  }
}

// Pass 3: ds = rstd * (g*w - s * rstd^2 * mean(g*w*s)) into dsx (x dtype) and, if not null, dsc (conv dtype);
// column sums d norm_w += g * s * rstd and dc += ds into per-thread rows of `partial` (nthreads, 2, C).
template <typename x_t, typename c_t, typename acc_t>
void residual_norm_bwd(const x_t* g, const x_t* s, const acc_t* rstd, const acc_t* nw, x_t* dsx, c_t* dsc,
                       acc_t* partial, int64_t rows, int64_t C) {
#pragma omp parallel if (rows * C >= kParallelMin)
  {
    acc_t* dnw = partial + static_cast<int64_t>(thread_id()) * 2 * C;
    acc_t* dc = dnw + C;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const x_t* gr = g + r * C;
      const x_t* sr = s + r * C;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < C; ++j) dot += static_cast<acc_t>(gr[j]) * nw[j] * static_cast<acc_t>(sr[j]);
      const acc_t rs = rstd[r], coef = rs * rs * dot / static_cast<acc_t>(C);
      x_t* dxr = dsx + r * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) {
        const acc_t gv = static_cast<acc_t>(gr[j]), sv = static_cast<acc_t>(sr[j]);
        const acc_t d = rs * (gv * nw[j] - sv * coef);
        dxr[j] = static_cast<x_t>(d);
        dnw[j] += gv * sv * rs;
        dc[j] += d;
      }
      if (dsc != nullptr) {
        c_t* dcr = dsc + r * C;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) dcr[j] = static_cast<c_t>(static_cast<acc_t>(dxr[j]));
      }
    }
  }
}

// Pass 4: dy1[t, i] = dY[t, 2i + 1] + dY[t+1, 2i] (t < T-1); dP[t] = [dy1[t+1] | dy1[t]] (dy1[T] = 0);
// da += dy1 into per-thread rows of `partial` (nthreads, H).
template <typename c_t, typename acc_t>
void conv1_pair_bwd(const c_t* dy, c_t* dp, acc_t* partial, int64_t rows, int64_t T, int64_t H) {
  const int64_t C = 2 * H;
#pragma omp parallel if (rows * C >= kParallelMin)
  {
    acc_t* da = partial + static_cast<int64_t>(thread_id()) * H;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = r % T;
      const c_t* self = dy + r * C;  // y1[t] in row t's odd columns
      c_t* out = dp + r * C + H;
      if (t + 1 < T) {
        const c_t* next = dy + (r + 1) * C;  // and in row t+1's even columns
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) {
          const acc_t v = static_cast<acc_t>(self[2 * i + 1]) + static_cast<acc_t>(next[2 * i]);
          out[i] = static_cast<c_t>(v);
          da[i] += v;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) {
          out[i] = self[2 * i + 1];
          da[i] += static_cast<acc_t>(self[2 * i + 1]);
        }
        std::fill(dp + r * C, dp + r * C + H, c_t(0));  // x[T-1] feeds no y1[T]
      }
      if (t > 0) std::memcpy(dp + (r - 1) * C, out, H * sizeof(c_t));
    }
  }
}

// sums the (n, cols) per-thread rows of `partial` into out (cols)
template <typename acc_t>
void sum_rows(const acc_t* partial, acc_t* out, int64_t n, int64_t cols) {
  for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] += partial[i * cols + j];
  }
}

Forward lfa_filter_forward_cpu(const at::Tensor& x_in, const at::Tensor& w1, const at::Tensor& b1,
                               const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& nw, double eps) {
  check_shapes(x_in, w1, w2, nw);
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2), H = C / 2, N = B * T;
  const at::ScalarType xt = x_in.scalar_type(), ct = w1.scalar_type();
  TORCH_CHECK(b1.scalar_type() == ct && w2.scalar_type() == ct && b2.scalar_type() == ct,
              "lfa_filter: conv weights and biases must share one dtype");
  at::Tensor x = x_in.contiguous();
  at::Tensor p = at::mm(x.view({N, C}).to(ct), conv1_rows(w1).t());  // (N, C) = [A0 x | A1 x]
  at::Tensor y = at::empty({B, T, C}, x.options().dtype(ct));         // (N, C): y1[t-1], y1[t] interleaved
  at::Tensor s = at::empty_like(x, at::MemoryFormat::Contiguous), out = at::empty_like(s);
  at::Tensor rstd;
  dispatch_pair(xt, ct, "hpcyuan::lfa_filter_forward", [&](auto xtag, auto ctag) {
    using x_t = decltype(xtag);
    using c_t = decltype(ctag);
    using acc_t = at::opmath_type<x_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor a = b1.to(acc).contiguous(), c = b2.to(acc).contiguous(), w = nw.to(acc).contiguous();
    rstd = at::empty({B, T}, x.options().dtype(acc));
    conv1_pair_fwd<c_t, acc_t>(p.const_data_ptr<c_t>(), a.const_data_ptr<acc_t>(), y.mutable_data_ptr<c_t>(), N, T,
                               H);
    at::mm_out(p, y.view({N, C}), conv2_mat(w2).t());  // Z = conv2 without bias, into P's storage
    residual_norm_fwd<x_t, c_t, acc_t>(p.const_data_ptr<c_t>(), c.const_data_ptr<acc_t>(), x.const_data_ptr<x_t>(),
                                       w.const_data_ptr<acc_t>(), s.mutable_data_ptr<x_t>(),
                                       out.mutable_data_ptr<x_t>(), rstd.mutable_data_ptr<acc_t>(), N, C,
                                       static_cast<acc_t>(eps));
  });
  return {out, y, s, rstd};
}

Backward lfa_filter_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& w1,
                                 const at::Tensor& w2, const at::Tensor& nw, const at::Tensor& y_in,
                                 const at::Tensor& s_in, const at::Tensor& rstd_in) {
  check_shapes(x_in, w1, w2, nw);
  TORCH_CHECK(grad.sizes() == x_in.sizes() && y_in.sizes() == x_in.sizes() && s_in.sizes() == x_in.sizes(),
              "lfa_filter_backward: grad_out, y1_pair and s must have x's shape ", x_in.sizes());
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2), H = C / 2, N = B * T;
  const at::ScalarType xt = x_in.scalar_type(), ct = w1.scalar_type();
  at::Tensor x = x_in.contiguous().view({N, C}), y = y_in.contiguous().view({N, C});
  at::Tensor s = s_in.contiguous(), g = grad.to(xt).contiguous();
  at::Tensor dsx = at::empty({N, C}, x.options());
  at::Tensor dsc = xt == ct ? dsx : at::empty({N, C}, x.options().dtype(ct));
  at::Tensor dp = at::empty({N, C}, x.options().dtype(ct));
  at::Tensor w1r = conv1_rows(w1), w2m = conv2_mat(w2);
  at::Tensor dw2, dnw, db1, db2;
  dispatch_pair(xt, ct, "hpcyuan::lfa_filter_backward", [&](auto xtag, auto ctag) {
    using x_t = decltype(xtag);
    using c_t = decltype(ctag);
    using acc_t = at::opmath_type<x_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor w = nw.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
    const int nthreads = max_threads();
    std::vector<acc_t> part(static_cast<size_t>(nthreads) * 2 * C, acc_t(0));
    residual_norm_bwd<x_t, c_t, acc_t>(g.const_data_ptr<x_t>(), s.const_data_ptr<x_t>(), rstd.const_data_ptr<acc_t>(),
                                       w.const_data_ptr<acc_t>(), dsx.mutable_data_ptr<x_t>(),
                                       xt == ct ? nullptr : dsc.mutable_data_ptr<c_t>(), part.data(), N, C);
    at::Tensor sums = at::zeros({2, C}, x.options().dtype(acc));
    sum_rows<acc_t>(part.data(), sums.mutable_data_ptr<acc_t>(), nthreads, 2 * C);
    dnw = sums[0].to(nw.scalar_type(), /*non_blocking=*/false, /*copy=*/true);  // copies: no aliased outputs
    db2 = sums[1].to(ct, /*non_blocking=*/false, /*copy=*/true);
    dw2 = at::mm(dsc.t(), y);          // (C, C) = dB in conv2.weight's layout
    at::Tensor dy = at::mm(dsc, w2m);  // (N, C) = dY, interleaved like Y
    std::fill(part.begin(), part.end(), acc_t(0));
    conv1_pair_bwd<c_t, acc_t>(dy.const_data_ptr<c_t>(), dp.mutable_data_ptr<c_t>(), part.data(), N, T, H);
    at::Tensor da = at::zeros({H}, x.options().dtype(acc));
    sum_rows<acc_t>(part.data(), da.mutable_data_ptr<acc_t>(), nthreads, H);
    db1 = da.to(ct);
  });
  at::Tensor dw1 = at::mm(dp.t(), xt == ct ? x : x.to(ct));  // (C, C) = [dA0; dA1]
  // dx = ds (the residual) + dP @ [A0; A1], accumulated into ds's buffer
  at::Tensor dx = xt == ct ? dsx.addmm_(dp, w1r) : dsx.add_(at::mm(dp, w1r));
  return {dx.view({B, T, C}), dw1.view({2, H, C}).permute({1, 2, 0}).contiguous(), db1,
          dw2.view({C, H, 2}), db2, dnw};
}

// The public op: lf only. CompositeImplicitAutograd over lfa_filter_forward, whose registered autograd
// (hpcyuan/ops/registrations.py) saves Y, s and rstd for the backward, so no GEMM is recomputed.
at::Tensor lfa_filter_composite(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& nw, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hpcyuan::lfa_filter_forward", "")
                       .typed<Forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, double)>();
  return std::get<0>(op.call(x, w1, b1, w2, b2, nw, eps));
}

// Autocast: cast the conv weights and biases to the autocast dtype (cached for leaf weights, like F.linear's
// autocast), keep x and norm_w; then run lfa_filter_forward below autocast. Device-generic (no CUDA headers).
template <c10::DeviceType device, c10::DispatchKey key>
Forward lfa_filter_forward_autocast(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                    const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& nw, double eps) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const at::ScalarType dt = at::autocast::get_autocast_dtype(device);
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dt, t, device); };
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hpcyuan::lfa_filter_forward", "")
                       .typed<Forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, cast(w1), cast(b1), cast(w2), cast(b2), nw, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CPU, m) {
  m.impl("lfa_filter_forward", &lfa_filter_forward_cpu);
  m.impl("lfa_filter_backward", &lfa_filter_backward_cpu);
}

TORCH_LIBRARY_IMPL(hpcyuan, CompositeImplicitAutograd, m) { m.impl("lfa_filter", &lfa_filter_composite); }

TORCH_LIBRARY_IMPL(hpcyuan, AutocastCPU, m) {
  m.impl("lfa_filter_forward", &lfa_filter_forward_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(hpcyuan, AutocastCUDA, m) {
  m.impl("lfa_filter_forward", &lfa_filter_forward_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace hpcyuan
