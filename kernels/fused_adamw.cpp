// Fused AdamW CPU kernel: one pass over a flat fp32 shard (the ZeRO optimizer's, hpcyuan/parallel/zero.py),
// in place (fused_adamw) or from one set of master/m/v buffers into another (fused_adamw_into: the step after a
// checkpoint snapshot, which leaves the snapshot untouched for the background writer).
// Per element, in exactly torch.optim.AdamW's foreach order (torch/optim/adam.py `_multi_tensor_adam`),
// each step rounded to fp32 like the foreach ops, with the scalars computed in double as Python does:
//   g = grad * grad_scale
//   master *= 1 - lr * wd                                 (skipped by torch when wd == 0: *1 is exact)
//   exp_avg = lerp(exp_avg, g, 1 - beta1)                 (ATen's two-branch lerp formula)
//   exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g (mul_ then addcmul_)
//   denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps
//   master += (-lr / (1 - beta1^step)) * exp_avg / denom  (addcdiv_)
//   param_out = master cast to param_out's dtype (fp32 or bf16, round to nearest even)
// Not bit-identical to torch on CPU: torch's lerp_/addcmul_ kernels use FMA and its CPU sqrt is not correctly
// rounded (about 1 ulp); this kernel rounds every operation (IEEE sqrt). Differences stay within a few ulp
// (tests/kernels/test_fused_adamw.py states the tolerance).
// OpenMP over blocks of elements, `omp simd` inside, compiled for SSE2 and for AVX2 (picked at load time,
// same results); the sqrt vectorizes thanks to -fno-math-errno (setup.py).
// Schema: kernels/registration.cpp; reference: hpcyuan/ops/reference.py reference_fused_adamw_.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>

// GCC target_clones: a default (SSE2) and an x86-64-v3 (AVX2, FMA) body, chosen by the CPU when the library
// loads (the extension's baseline is SSE2). Only on functions without OpenMP pragmas inside. fp-contract=off:
// no a*b + c is fused into an FMA, so both clones round every operation and give the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HPCYUAN_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=off")))
#else
#define HPCYUAN_SIMD_CLONES
#endif

namespace hpcyuan {
namespace {

constexpr int64_t kBlock = 1 << 14;  // elements per OpenMP work item (64 KiB of each array)

// the per-step scalars, each rounded to fp32 where torch's foreach kernels round it (Scalar -> opmath float)
struct AdamwScalars {
  float grad_scale, decay, w1, one_minus_w1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
  bool small_w1;  // ATen lerp: weight < 0.5 -> a + w (b - a), else b - (b - a)(1 - w)
};

AdamwScalars make_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                          double grad_scale) {
  AdamwScalars c;
  c.grad_scale = static_cast<float>(grad_scale);
  c.decay = static_cast<float>(weight_decay != 0 ? 1 - lr * weight_decay : 1.0);
  c.w1 = static_cast<float>(1 - beta1);
  c.one_minus_w1 = 1.f - c.w1;
  c.small_w1 = std::abs(c.w1) < 0.5f;
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1 - beta2);
  const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
  c.neg_step_size = static_cast<float>((lr / bc1) * -1);
  c.bc2_sqrt = static_cast<float>(std::pow(bc2, 0.5));  // Python's bc ** 0.5
  c.eps = static_cast<float>(eps);
  return c;
}

inline __attribute__((always_inline)) void store(float* out, int64_t i, float x) { out[i] = x; }
// round to nearest even, NaN -> 0x7FC0, as c10::BFloat16; the NaN test is on the bits (a float compare
// would keep GCC from vectorizing the loop without -fno-trapping-math)
inline __attribute__((always_inline)) void store(uint16_t* out, int64_t i, float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  const uint32_t b = (u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  out[i] = static_cast<uint16_t>(b);
}

// One AdamW step from (master, exp_avg, exp_avg_sq) into `to` (the same arrays for the in-place step); the
// pointers of a pair may alias, element i reads its inputs before it writes element i.
struct State {
  const float *master, *exp_avg, *exp_avg_sq;
};
struct StateOut {
  float *master, *exp_avg, *exp_avg_sq;
};

// elements [begin, end): out_t = float, or uint16_t for bf16 bits; kWrite = false skips the write-back.
// The body is branch-free so that GCC vectorizes it under `omp simd` (which also promises GCC that the loop
// carries no dependence, so the aliasing of the in-place step does not block it): both lerp branches are
// computed and one is selected (a loop-invariant choice), and the scalars are local copies.
template <typename out_t, bool kWrite>
HPCYUAN_SIMD_CLONES void adamw_range(State from, StateOut to, const float* __restrict grad, out_t* __restrict out,
                                     int64_t begin, int64_t end, const AdamwScalars& c) {
  const float grad_scale = c.grad_scale, decay = c.decay, w1 = c.w1, one_minus_w1 = c.one_minus_w1;
  const float beta2 = c.beta2, one_minus_beta2 = c.one_minus_beta2, bc2_sqrt = c.bc2_sqrt, eps = c.eps;
  const float neg_step_size = c.neg_step_size;
  const bool small_w1 = c.small_w1;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float g = grad[i] * grad_scale;
    const float p = from.master[i] * decay;
    const float m = from.exp_avg[i], d = g - m;
    const float m_lo = m + w1 * d, m_hi = g - d * one_minus_w1;  // lerp, weight < 0.5 and >= 0.5
    const float m_new = small_w1 ? m_lo : m_hi;
    const float v_new = from.exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
    const float denom = std::sqrt(v_new) / bc2_sqrt + eps;
    const float p_new = p + neg_step_size * m_new / denom;
    to.exp_avg[i] = m_new;
    to.exp_avg_sq[i] = v_new;
    to.master[i] = p_new;
    if constexpr (kWrite) store(out, i, p_new);
  }
}

template <typename out_t, bool kWrite>
void adamw_loop(State from, StateOut to, const float* grad, out_t* out, int64_t n, const AdamwScalars& c) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b += kBlock)
    adamw_range<out_t, kWrite>(from, to, grad, out, b, std::min(b + kBlock, n), c);
}

void check_flat(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == n, "fused_adamw: ", name, " must be 1-D with ", n,
              " elements (master's), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "fused_adamw: ", name, " must be contiguous");
}

void check_state(const at::Tensor& t, const char* name, int64_t n) {
  check_flat(t, name, n);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "fused_adamw: ", name, " must be fp32, got ", t.scalar_type());
}

void adamw_cpu(const at::Tensor& master, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
               const at::Tensor& grad, const at::Tensor& master_out, const at::Tensor& exp_avg_out,
               const at::Tensor& exp_avg_sq_out, const std::optional<at::Tensor>& param_out, double lr, double beta1,
               double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  const int64_t n = master.numel();
  for (const auto& [t, name] :
       {std::pair{&master, "master"}, std::pair{&exp_avg, "exp_avg"}, std::pair{&exp_avg_sq, "exp_avg_sq"},
        std::pair{&grad, "grad"}, std::pair{&master_out, "master_out"}, std::pair{&exp_avg_out, "exp_avg_out"},
        std::pair{&exp_avg_sq_out, "exp_avg_sq_out"}})
    check_state(*t, name, n);
  TORCH_CHECK(step >= 1, "fused_adamw: step must be >= 1, got ", step);
  const AdamwScalars c = make_scalars(lr, beta1, beta2, eps, weight_decay, step, grad_scale);
  const State from{master.const_data_ptr<float>(), exp_avg.const_data_ptr<float>(),
                   exp_avg_sq.const_data_ptr<float>()};
  const StateOut to{master_out.mutable_data_ptr<float>(), exp_avg_out.mutable_data_ptr<float>(),
                    exp_avg_sq_out.mutable_data_ptr<float>()};
  const float* pg = grad.const_data_ptr<float>();
  if (!param_out.has_value()) {
    adamw_loop<float, false>(from, to, pg, nullptr, n, c);
    return;
  }
  const at::Tensor& out = *param_out;
  check_flat(out, "param_out", n);
  if (out.scalar_type() == at::kFloat)
    adamw_loop<float, true>(from, to, pg, out.mutable_data_ptr<float>(), n, c);
  else if (out.scalar_type() == at::kBFloat16)
    adamw_loop<uint16_t, true>(from, to, pg, static_cast<uint16_t*>(out.mutable_data_ptr()), n, c);
  else
    TORCH_CHECK(false, "fused_adamw: param_out must be fp32 or bf16, got ", out.scalar_type());
}

void fused_adamw_cpu(const at::Tensor& master, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                     const at::Tensor& grad, const std::optional<at::Tensor>& param_out, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  adamw_cpu(master, exp_avg, exp_avg_sq, grad, master, exp_avg, exp_avg_sq, param_out, lr, beta1, beta2, eps,
            weight_decay, step, grad_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CPU, m) {
  m.impl("fused_adamw", &fused_adamw_cpu);
  m.impl("fused_adamw_into", &adamw_cpu);
}

}  // namespace hpcyuan
