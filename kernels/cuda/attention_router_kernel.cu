// Attention router CUDA kernels (sm_80+), pure CUDA: no torch headers (see attention_router_kernel.h).
// Same math as the CPU kernels in kernels/attention_router.cpp, one warp per token (grid-stride over tokens):
//   forward: lane i (and i + 32, ...) computes row i of A = softmax_row(q kᵀ) on the fly and p_i = A_i· v into
//            the warp's shared p (E values); then K rounds of a warp arg-max (ties: lower index) pick the
//            experts, and lane 0 writes gates = softmax over the K picked values.
//   backward: only the K selected rows of A are recomputed (dp is zero elsewhere); lanes own columns j, so
//            dk_j and dv_j accumulate without atomics, and dq_i is a warp sum.
// The row max needs no pass over j: max_j q_i k_j = q_i · (q_i >= 0 ? max_j k_j : min_j k_j).
#include <math.h>

#include "attention_router_kernel.h"

namespace {

constexpr int kThreads = 128;  // 4 warps per block, one token each at a time
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }

template <typename T> __device__ __forceinline__ T warp_sum(T x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFull, x, off);
  return x;
}

// max_j k_j and min_j k_j of one token, on every lane
template <typename T>
__device__ __forceinline__ void k_range(const T* __restrict__ k, int E, int lane, T& kmax, T& kmin) {
  kmax = kmin = k[0];
  for (int j = lane; j < E; j += 32) {
    kmax = k[j] > kmax ? k[j] : kmax;
    kmin = k[j] < kmin ? k[j] : kmin;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const T hi = __shfl_xor_sync(kFull, kmax, off), lo = __shfl_xor_sync(kFull, kmin, off);
    kmax = hi > kmax ? hi : kmax;
    kmin = lo < kmin ? lo : kmin;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    router_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                      T* __restrict__ gates, int64_t* __restrict__ indices, int64_t N, int E, int K) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T* p = reinterpret_cast<T*>(smem) + warp * E;  // this warp's p (E values)
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < N;
       n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T *qn = q + n * E, *kn = k + n * E, *vn = v + n * E;
    T kmax, kmin;
    k_range(kn, E, lane, kmax, kmin);
    for (int i = lane; i < E; i += 32) {
      const T qi = qn[i], mi = qi * (qi >= T(0) ? kmax : kmin);
      T s = 0, t = 0;
      for (int j = 0; j < E; ++j) {  // every lane reads the same k_j, v_j: broadcast loads
        const T e = exp_t(qi * kn[j] - mi);
        s += e;
        t += e * vn[j];
      }
      p[i] = t / s;
    }
    __syncwarp();
    // top-K: K rounds of a warp arg-max over the experts not yet taken (bit r of `taken`: expert lane + 32 r)
    T* gn = gates + n * K;
    int64_t* in = indices + n * K;
    uint32_t taken = 0;
    for (int t = 0; t < K; ++t) {
      T best = 0;
      int bi = -1;
      for (int i = lane, r = 0; i < E; i += 32, ++r)  // ascending i: strict > keeps the lower index on ties
        if (!((taken >> r) & 1u) && (bi < 0 || p[i] > best)) {
          best = p[i];
          bi = i;
        }
      for (int off = 16; off > 0; off >>= 1) {
        const T ob = __shfl_xor_sync(kFull, best, off);
        const int oi = __shfl_xor_sync(kFull, bi, off);
        if (oi >= 0 && (bi < 0 || ob > best || (ob == best && oi < bi))) {
          best = ob;
          bi = oi;
        }
      }
      bi = __shfl_sync(kFull, bi, 0);  // lane 0's pick for all (NaNs could make the lanes' picks differ)
      best = __shfl_sync(kFull, best, 0);
      if (lane == (bi & 31)) taken |= 1u << (bi >> 5);
      if (lane == 0) {
        in[t] = bi;
        gn[t] = best;
      }
    }
    if (lane == 0) {  // gates: softmax over the picked values, gn[0] being their max
      const T top = gn[0];
      T total = 0;
      for (int t = 0; t < K; ++t) total += (gn[t] = exp_t(gn[t] - top));
      for (int t = 0; t < K; ++t) gn[t] /= total;
    }
    __syncwarp();  // p is rewritten for the next token
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    router_bwd_kernel(const T* __restrict__ dgates, const T* __restrict__ gates, const int64_t* __restrict__ indices,
                      const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ dq,
                      T* __restrict__ dk, T* __restrict__ dv, int64_t N, int E, int K) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < N;
       n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T *qn = q + n * E, *kn = k + n * E, *vn = v + n * E, *g = gates + n * K, *dg = dgates + n * K;
    T *dqn = dq + n * E, *dkn = dk + n * E, *dvn = dv + n * E;
    const int64_t* in = indices + n * K;
    for (int j = lane; j < E; j += 32) dqn[j] = dkn[j] = dvn[j] = T(0);
    T kmax, kmin;
    k_range(kn, E, lane, kmax, kmin);
    T gdg = 0;  // Σ_t g_t dG_t (softmax backward over the K gates)
    for (int t = lane; t < K; t += 32) gdg += g[t] * dg[t];
    gdg = warp_sum(gdg);
    __syncwarp();  // the zeroed dq row is visible to lane 0 below
    for (int t = 0; t < K; ++t) {
      const int i = static_cast<int>(in[t]);
      const T qi = qn[i], mi = qi * (qi >= T(0) ? kmax : kmin), dp = g[t] * (dg[t] - gdg);
      T s = 0, pt = 0;
      for (int j = lane; j < E; j += 32) {
        const T e = exp_t(qi * kn[j] - mi);
        s += e;
        pt += e * vn[j];
      }
      s = warp_sum(s);
      pt = warp_sum(pt);
      const T pi = pt / s, c = dp / s;  // A_ij dp_i = e_j * c
      T dqi = 0;
      for (int j = lane; j < E; j += 32) {  // lane owns column j: no other lane touches dk_j, dv_j
        const T adp = exp_t(qi * kn[j] - mi) * c, ds = adp * (vn[j] - pi);
        dqi += ds * kn[j];
        dkn[j] += ds * qi;
        dvn[j] += adp;
      }
      dqi = warp_sum(dqi);
      if (lane == 0) dqn[i] += dqi;
    }
  }
}

unsigned blocks_for(int64_t N) {
  const int64_t b = (N + kWarps - 1) / kWarps;
  return static_cast<unsigned>(b < 1 ? 1 : (b < kMaxBlocks ? b : kMaxBlocks));
}

template <typename T>
cudaError_t launch_fwd(const void* q, const void* k, const void* v, void* gates, int64_t* indices, int64_t N,
                       int64_t E, int64_t K, cudaStream_t s) {
  if (N > 0)
    router_fwd_kernel<T><<<blocks_for(N), kThreads, kWarps * E * sizeof(T), s>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(gates),
        indices, N, static_cast<int>(E), static_cast<int>(K));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const void* dg, const void* g, const int64_t* indices, const void* q, const void* k,
                       const void* v, void* dq, void* dk, void* dv, int64_t N, int64_t E, int64_t K, cudaStream_t s) {
  if (N > 0)
    router_bwd_kernel<T><<<blocks_for(N), kThreads, 0, s>>>(
        static_cast<const T*>(dg), static_cast<const T*>(g), indices, static_cast<const T*>(q),
        static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(dq), static_cast<T*>(dk),
        static_cast<T*>(dv), N, static_cast<int>(E), static_cast<int>(K));
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t hpcyuan_attention_router_fwd(int dtype, const void* q, const void* k, const void* v,
                                                    void* gates, int64_t* indices, int64_t N, int64_t E, int64_t K,
                                                    cudaStream_t s) {
  if (E < 1 || E > HPCYUAN_ROUTER_MAX_EXPERTS || K < 1 || K > E) return cudaErrorInvalidValue;
  switch (dtype) {
    case 0: return launch_fwd<float>(q, k, v, gates, indices, N, E, K, s);
    case 2: return launch_fwd<double>(q, k, v, gates, indices, N, E, K, s);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t hpcyuan_attention_router_bwd(int dtype, const void* grad_gates, const void* gates,
                                                    const int64_t* indices, const void* q, const void* k,
                                                    const void* v, void* dq, void* dk, void* dv, int64_t N,
                                                    int64_t E, int64_t K, cudaStream_t s) {
  if (E < 1 || E > HPCYUAN_ROUTER_MAX_EXPERTS || K < 1 || K > E) return cudaErrorInvalidValue;
  switch (dtype) {
    case 0: return launch_bwd<float>(grad_gates, gates, indices, q, k, v, dq, dk, dv, N, E, K, s);
    case 2: return launch_bwd<double>(grad_gates, gates, indices, q, k, v, dq, dk, dv, N, E, K, s);
    default: return cudaErrorInvalidValue;
  }
}
