// M32 attention router CPU kernels, fused per token (math: hpcyuan/ops/reference.py reference_attention_router).
// Per token n, with q, k, v the (E,) rows of the (N, E) inputs:
//   A_ij = exp(q_i k_j - m_i) / s_i,  m_i = max_j q_i k_j,  s_i = Σ_j exp(q_i k_j - m_i)   (E×E, no scaling)
//   p_i  = Σ_j A_ij v_j;  idx = top-k of p (descending);  gates = softmax(p[idx])
// One OpenMP loop over blocks of tokens; the E×E matrix A is never stored, only O(E) per-thread scratch.
// m_i needs no pass over j: max_j q_i k_j = q_i · (q_i >= 0 ? max_j k_j : min_j k_j).
// Backward recomputes, per token, only the k selected rows of A (dp is zero elsewhere):
//   dp_t = g_t (dG_t - Σ_s g_s dG_s);  dS_ij = A_ij dp_i (v_j - p_i)
//   dq_i = Σ_j dS_ij k_j;  dk_j += dS_ij q_i;  dv_j += dp_i A_ij
// fp32 uses a vectorizable exp (Cephes polynomial, ~2 ulp) so `omp simd` loops vectorize without
// -ffast-math; fp64 (exact tests, gradcheck) uses std::exp. On x86-64 the per-block functions are also
// compiled for AVX2 + FMA and picked at load time (about 4x the SSE2 baseline's exp throughput).
// Schemas: kernels/registration.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

// GCC target_clones: a default (SSE2) and an x86-64-v3 (AVX2, FMA) body, chosen by the CPU when the library
// loads. Only on functions without OpenMP pragmas inside; helpers they call are inlined into each clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HPCYUAN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HPCYUAN_SIMD_CLONES
#endif
#define HPCYUAN_INLINE inline __attribute__((always_inline))

namespace hpcyuan {
namespace {

constexpr int64_t kTokenBlock = 256;  // tokens per OpenMP work item

// exp(x) for x <= 0 (arguments here are q_i k_j - m_i): x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes'
// degree-7 polynomial, 2^n put in the exponent bits. Only arithmetic and bit casts, so it vectorizes.
// x is clamped at -87 (exp(-87) ~ 1.6e-38: negligible next to the row's max term, which is exp(0) = 1).
// The clamp compares bit patterns as integers (for x <= 0 a larger magnitude is a larger pattern): a float
// compare would stop GCC from vectorizing the loop without -fno-trapping-math.
HPCYUAN_INLINE float exp_nonpos(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  u = u > 0xC2AE0000u ? 0xC2AE0000u : u;  // 0xC2AE0000 = -87.0f
  std::memcpy(&x, &u, sizeof(x));
  const float round = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + round) - round;
  float r = x - n * 0.693359375f;  // ln2 in two parts (Cody-Waite) keeps r exact
  r = r + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
HPCYUAN_INLINE double exp_nonpos(double x) { return std::exp(x); }

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t top_k) {
  TORCH_CHECK(q.dim() == 2, "attention_router: q must be (N, E), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "attention_router: q, k, v must have one shape, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "attention_router: q, k, v must have one dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "attention_router: fp32 or fp64 inputs only (the router runs in fp32), got ", q.scalar_type());
  TORCH_CHECK(top_k >= 1 && top_k <= q.size(1), "attention_router: top_k must be in [1, E = ", q.size(1), "], got ",
              top_k);
}

// Every loop below runs over experts. The kernels are templates on kE: the expert counts of the configs
// (4, 8, 16, 32) are compile-time constants there, so the short loops unroll and vectorize without remainder
// code (E = 8 is two SSE vectors); kE = 0 is the general case, E given at run time.
template <typename F>
void dispatch_experts(int64_t E, F&& f) {
  switch (E) {
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

template <typename T>
HPCYUAN_INLINE void k_range(const T* k, int64_t E, T& kmax, T& kmin) {
  kmax = kmin = k[0];
  for (int64_t j = 1; j < E; ++j) {
    kmax = std::max(kmax, k[j]);
    kmin = std::min(kmin, k[j]);
  }
}

// p_i = Σ_j e_ij v_j / Σ_j e_ij with e_ij = exp(q_i k_j - m_i), for all rows i of one token.
// Loop over j outside, rows i inside: the inner loop has no reduction and vectorizes over i.
template <typename T, int kE>
HPCYUAN_INLINE void router_rows(const T* __restrict q, const T* __restrict k, const T* __restrict v, int64_t E_rt,
                                T* __restrict m, T* __restrict s, T* __restrict p) {
  const int64_t E = kE > 0 ? kE : E_rt;
  T kmax, kmin;
  k_range(k, E, kmax, kmin);
#pragma omp simd
  for (int64_t i = 0; i < E; ++i) {
    m[i] = q[i] * (q[i] >= T(0) ? kmax : kmin);
    s[i] = T(0);
    p[i] = T(0);
  }
  for (int64_t j = 0; j < E; ++j) {
    const T kj = k[j], vj = v[j];
#pragma omp simd
    for (int64_t i = 0; i < E; ++i) {
      const T e = exp_nonpos(q[i] * kj - m[i]);
      s[i] += e;
      p[i] += e * vj;
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < E; ++i) p[i] /= s[i];
}

// top-k of p (E values) by insertion into a sorted list, descending; on ties the lower index comes first
template <typename T>
HPCYUAN_INLINE void top_k_desc(const T* p, int64_t E, int64_t K, T* val, int64_t* idx) {
  int64_t filled = 0;
  for (int64_t i = 0; i < E; ++i) {
    if (filled == K && !(p[i] > val[K - 1])) continue;
    int64_t pos = filled < K ? filled++ : K - 1;
    while (pos > 0 && p[i] > val[pos - 1]) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = p[i];
    idx[pos] = i;
  }
}

// tokens [n0, n1): gates and indices; scratch holds 3E + K values
template <typename T, int kE>
HPCYUAN_SIMD_CLONES void router_fwd_block(const T* q, const T* k, const T* v, T* gates, int64_t* indices, int64_t n0,
                                          int64_t n1, int64_t E_rt, int64_t K, T* scratch) {
  const int64_t E = kE > 0 ? kE : E_rt;
  T *m = scratch, *s = m + E, *p = s + E, *val = p + E;
  for (int64_t n = n0; n < n1; ++n) {
    router_rows<T, kE>(q + n * E, k + n * E, v + n * E, E, m, s, p);
    int64_t* idx = indices + n * K;
    top_k_desc(p, E, K, val, idx);
    T* g = gates + n * K;  // softmax over the K selected values; val[0] is their max
    T total = 0;
    for (int64_t t = 0; t < K; ++t) total += (g[t] = exp_nonpos(val[t] - val[0]));
    for (int64_t t = 0; t < K; ++t) g[t] /= total;
  }
}

template <typename T, int kE>
void router_fwd(const T* q, const T* k, const T* v, T* gates, int64_t* indices, int64_t N, int64_t E, int64_t K) {
#pragma omp parallel
  {
    std::vector<T> scratch(3 * E + K);
#pragma omp for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += kTokenBlock)
      router_fwd_block<T, kE>(q, k, v, gates, indices, n0, std::min(n0 + kTokenBlock, N), E, K, scratch.data());
  }
}

// tokens [n0, n1): dq, dk, dv; e holds E values (one recomputed row of exp(q_i k_j - m_i))
template <typename T, int kE>
HPCYUAN_SIMD_CLONES void router_bwd_block(const T* dgates, const T* gates, const int64_t* indices, const T* q,
                                          const T* k, const T* v, T* dq, T* dk, T* dv, int64_t n0, int64_t n1,
                                          int64_t E_rt, int64_t K, T* __restrict e) {
  const int64_t E = kE > 0 ? kE : E_rt;
  for (int64_t n = n0; n < n1; ++n) {
    const T* __restrict qn = q + n * E;
    const T* __restrict kn = k + n * E;
    const T* __restrict vn = v + n * E;
    T* __restrict dqn = dq + n * E;
    T* __restrict dkn = dk + n * E;
    T* __restrict dvn = dv + n * E;
    const T *g = gates + n * K, *dg = dgates + n * K;
    const int64_t* idx = indices + n * K;
    T kmax, kmin;
    k_range(kn, E, kmax, kmin);
    T gdg = 0;  // Σ_s g_s dG_s (softmax backward over the K gates)
    for (int64_t t = 0; t < K; ++t) gdg += g[t] * dg[t];
#pragma omp simd
    for (int64_t j = 0; j < E; ++j) dqn[j] = dkn[j] = dvn[j] = T(0);
    for (int64_t t = 0; t < K; ++t) {
      const int64_t i = idx[t];
      const T qi = qn[i], mi = qi * (qi >= T(0) ? kmax : kmin), dp = g[t] * (dg[t] - gdg);
      T s = 0, pt = 0;
#pragma omp simd reduction(+ : s, pt)
      for (int64_t j = 0; j < E; ++j) {
        e[j] = exp_nonpos(qi * kn[j] - mi);
        s += e[j];
        pt += e[j] * vn[j];
      }
      const T pi = pt / s, c = dp / s;  // A_ij dp_i = e_j * c
      T dqi = 0;
#pragma omp simd reduction(+ : dqi)
      for (int64_t j = 0; j < E; ++j) {
        const T adp = e[j] * c, ds = adp * (vn[j] - pi);
        dqi += ds * kn[j];
        dkn[j] += ds * qi;
        dvn[j] += adp;
      }
      dqn[i] += dqi;
    }
  }
}

template <typename T, int kE>
void router_bwd(const T* dgates, const T* gates, const int64_t* indices, const T* q, const T* k, const T* v, T* dq,
                T* dk, T* dv, int64_t N, int64_t E, int64_t K) {
#pragma omp parallel
  {
    std::vector<T> e(E);
#pragma omp for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += kTokenBlock)
      router_bwd_block<T, kE>(dgates, gates, indices, q, k, v, dq, dk, dv, n0, std::min(n0 + kTokenBlock, N), E, K,
                              e.data());
  }
}

std::tuple<at::Tensor, at::Tensor> attention_router_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                        const at::Tensor& v_in, int64_t top_k) {
  check_inputs(q_in, k_in, v_in, top_k);
  at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t N = q.size(0), E = q.size(1);
  at::Tensor gates = at::empty({N, top_k}, q.options());
  at::Tensor indices = at::empty({N, top_k}, q.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hpcyuan::attention_router", [&] {
    dispatch_experts(E, [&](auto kE) {
      router_fwd<scalar_t, decltype(kE)::value>(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
                               v.const_data_ptr<scalar_t>(), gates.mutable_data_ptr<scalar_t>(),
                               indices.mutable_data_ptr<int64_t>(), N, E, top_k);
    });
  });
  return {gates, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_router_backward_cpu(
    const at::Tensor& grad_gates, const at::Tensor& gates_in, const at::Tensor& indices_in, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in) {
  check_inputs(q_in, k_in, v_in, gates_in.size(-1));
  const int64_t N = q_in.size(0), E = q_in.size(1), K = gates_in.size(-1);
  TORCH_CHECK(gates_in.sizes() == at::IntArrayRef({N, K}) && grad_gates.sizes() == gates_in.sizes() &&
                  indices_in.sizes() == gates_in.sizes(),
              "attention_router_backward: grad_gates, gates and indices must be (N, top_k)");
  TORCH_CHECK(indices_in.scalar_type() == at::kLong, "attention_router_backward: indices must be int64");
  at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  at::Tensor g = gates_in.to(q.scalar_type()).contiguous(), dg = grad_gates.to(q.scalar_type()).contiguous();
  at::Tensor indices = indices_in.contiguous();
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(q), dv = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hpcyuan::attention_router_backward", [&] {
    dispatch_experts(E, [&](auto kE) {
      router_bwd<scalar_t, decltype(kE)::value>(dg.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                               indices.const_data_ptr<int64_t>(), q.const_data_ptr<scalar_t>(),
                               k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                               dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
                               dv.mutable_data_ptr<scalar_t>(), N, E, K);
    });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(hpcyuan, CPU, m) {
  m.impl("attention_router", &attention_router_cpu);
  m.impl("attention_router_backward", &attention_router_backward_cpu);
}

}  // namespace hpcyuan
