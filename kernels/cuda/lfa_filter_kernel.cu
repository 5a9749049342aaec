// LFA localized-filter CUDA kernels (sm_80+), pure CUDA: no torch headers (see lfa_filter_kernel.h). The math
// and layouts are those of the CPU passes in kernels/lfa_filter.cpp; the GEMMs between them run in lfa_filter.cu.
// - pass 1 and the zero fill: a grid-stride loop over (row, channel), each y1 value written to its two places;
// - pass 2: one block per row, block reduction of sum(s^2) in the math type;
// - passes 3 and 4: a grid of at most kMaxBlocks blocks strides over rows; thread j owns column j of every
//   row, so each block accumulates its own column-sum partial row (no atomics), summed by sum_partials_kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "lfa_filter_kernel.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 512;       // passes 3 and 4 (partial rows)
constexpr int64_t kMaxGridStride = 8192;  // pass 1

// sum of each thread's `v` over the block, broadcast to every thread
template <typename A> __device__ A block_sum(A v) {
  __shared__ A partial[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // the shared slots may still be read by the previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < nwarps ? partial[lane] : A(0);
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Pass 1: y[t, 2i + 1] = y[t+1, 2i] = y1[t, i] = p[t, H + i] + p[t-1, i] + a[i];  y[t=0, 2i] = 0.
template <typename Cv, typename A>
__global__ void conv1_pair_fwd_kernel(const Cv* __restrict__ p, const A* __restrict__ a, Cv* __restrict__ y,
                                      int64_t rows, int64_t T, int64_t H) {
  const int64_t C = 2 * H, total = rows * H;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / H, i = k - r * H, t = r % T;
    A v = to_acc(p[r * C + H + i]) + a[i];
    if (t > 0) v += to_acc(p[(r - 1) * C + i]);
    const Cv out = from_acc<Cv, A>(v);
    y[r * C + 2 * i + 1] = out;
    if (t + 1 < T) y[(r + 1) * C + 2 * i] = out;
    if (t == 0) y[r * C + 2 * i] = from_acc<Cv, A>(A(0));  // y1[-1] = 0
  }
}

// Pass 2: s = X(z + c + x); rstd = 1/sqrt(mean(s^2) + eps) over the rounded s; out = s * rstd * w.
template <typename X, typename Cv, typename A>
__global__ void norm_fwd_kernel(const Cv* __restrict__ z, const A* __restrict__ c, const X* __restrict__ x,
                                const A* __restrict__ w, X* __restrict__ s, X* __restrict__ out, A* __restrict__ rstd,
                                int64_t cols, A eps) {
  const int64_t base = blockIdx.x * cols;
  A ss = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const X v = from_acc<X, A>(to_acc(z[base + j]) + c[j] + to_acc(x[base + j]));
    s[base + j] = v;
    const A av = to_acc(v);
    ss += av * av;
  }
  ss = block_sum(ss);
  const A rs = A(1) / sqrt(ss / static_cast<A>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  // each thread reads back only the s values it wrote itself
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) out[base + j] = from_acc<X, A>(to_acc(s[base + j]) * rs * w[j]);
}

// Pass 3: ds = rstd * (g*w - s * rstd^2 * mean(g*w*s)); partial rows (2, cols) per block: d w and d c.
template <typename X, typename Cv, typename A>
__global__ void norm_bwd_kernel(const X* __restrict__ g, const X* __restrict__ s, const A* __restrict__ rstd,
                                const A* __restrict__ w, X* __restrict__ ds, Cv* __restrict__ ds_conv,
                                A* __restrict__ partial, int64_t rows, int64_t cols) {
  A* dw = partial + blockIdx.x * 2 * cols;
  A* dc = dw + cols;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dw[j] = dc[j] = A(0);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * cols;
    A dot = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dot += to_acc(g[base + j]) * w[j] * to_acc(s[base + j]);
    dot = block_sum(dot);
    const A rs = rstd[r], coef = rs * rs * dot / static_cast<A>(cols);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {  // the same thread owns column j for every row
      const A gv = to_acc(g[base + j]), sv = to_acc(s[base + j]);
      const A d = rs * (gv * w[j] - sv * coef);
      ds[base + j] = from_acc<X, A>(d);
      if (ds_conv != nullptr) ds_conv[base + j] = from_acc<Cv, A>(d);
      dw[j] += gv * sv * rs;
      dc[j] += d;
    }
  }
}

// Pass 4: dy1[t, i] = dy[t, 2i + 1] + dy[t+1, 2i]; dp[t, H + i] = dp[t-1, i] = dy1[t, i]; dp[T-1, i] = 0;
// partial row (H) per block: d a.
template <typename Cv, typename A>
__global__ void conv1_pair_bwd_kernel(const Cv* __restrict__ dy, Cv* __restrict__ dp, A* __restrict__ partial,
                                      int64_t rows, int64_t T, int64_t H) {
  const int64_t C = 2 * H;
  A* da = partial + blockIdx.x * H;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) da[i] = A(0);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t t = r % T;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      A v = to_acc(dy[r * C + 2 * i + 1]);
      if (t + 1 < T) v += to_acc(dy[(r + 1) * C + 2 * i]);
      const Cv out = from_acc<Cv, A>(v);
      dp[r * C + H + i] = out;
      if (t > 0) dp[(r - 1) * C + i] = out;
      if (t + 1 == T) dp[r * C + i] = from_acc<Cv, A>(A(0));  // x[T-1] feeds no y1[T]
      da[i] += v;
    }
  }
}

template <typename X, typename Cv, typename A> struct Launch {
  static cudaError_t conv1_fwd(const void* p, const void* a, void* y, int64_t rows, int64_t T, int64_t H,
                               cudaStream_t st) {
    const int64_t total = rows * H, need = (total + kThreads - 1) / kThreads;
    if (total > 0)
      conv1_pair_fwd_kernel<Cv, A><<<static_cast<unsigned>(need < kMaxGridStride ? need : kMaxGridStride), kThreads,
                                      0, st>>>(static_cast<const Cv*>(p), static_cast<const A*>(a),
                                               static_cast<Cv*>(y), rows, T, H);
    return cudaGetLastError();
  }
  static cudaError_t norm_fwd(const void* z, const void* c, const void* x, const void* w, void* s, void* out,
                              void* rstd, int64_t rows, int64_t cols, double eps, cudaStream_t st) {
    if (rows > 0 && cols > 0)
      norm_fwd_kernel<X, Cv, A><<<static_cast<unsigned>(rows), kThreads, 0, st>>>(
          static_cast<const Cv*>(z), static_cast<const A*>(c), static_cast<const X*>(x), static_cast<const A*>(w),
          static_cast<X*>(s), static_cast<X*>(out), static_cast<A*>(rstd), cols, static_cast<A>(eps));
    return cudaGetLastError();
  }
  static cudaError_t norm_bwd(const void* g, const void* s, const void* rstd, const void* w, void* ds, void* ds_conv,
                              void* partial, void* sums, int64_t rows, int64_t cols, cudaStream_t st) {
    if (cols <= 0) return cudaGetLastError();
    if (rows <= 0) return cudaMemsetAsync(sums, 0, 2 * cols * sizeof(A), st);
    const int64_t nb = hpcyuan_lfa_bwd_blocks(rows);
    norm_bwd_kernel<X, Cv, A><<<static_cast<unsigned>(nb), kThreads, 0, st>>>(
        static_cast<const X*>(g), static_cast<const X*>(s), static_cast<const A*>(rstd), static_cast<const A*>(w),
        static_cast<X*>(ds), static_cast<Cv*>(ds_conv), static_cast<A*>(partial), rows, cols);
    const cudaError_t err = cudaGetLastError();
    return err != cudaSuccess ? err : sum_partials<A>(partial, sums, nb, 2 * cols, st);
  }
  static cudaError_t conv1_bwd(const void* dy, void* dp, void* partial, void* da, int64_t rows, int64_t T, int64_t H,
                               cudaStream_t st) {
    if (H <= 0) return cudaGetLastError();
    if (rows <= 0) return cudaMemsetAsync(da, 0, H * sizeof(A), st);
    const int64_t nb = hpcyuan_lfa_bwd_blocks(rows);
    conv1_pair_bwd_kernel<Cv, A><<<static_cast<unsigned>(nb), kThreads, 0, st>>>(
        static_cast<const Cv*>(dy), static_cast<Cv*>(dp), static_cast<A*>(partial), rows, T, H);
    const cudaError_t err = cudaGetLastError();
    return err != cudaSuccess ? err : sum_partials<A>(partial, da, nb, H, st);
  }
};

using F32 = Launch<float, float, float>;
using BF16 = Launch<__nv_bfloat16, __nv_bfloat16, float>;
using F64 = Launch<double, double, double>;
using F32BF16 = Launch<float, __nv_bfloat16, float>;
using F16 = Launch<__half, __half, float>;
using F32F16 = Launch<float, __half, float>;

}  // namespace

#define HPCYUAN_LFA_DISPATCH(dtype, call)         \
  switch (dtype) {                                \
    case 0: return F32::call;                     \
    case 1: return BF16::call;                    \
    case 2: return F64::call;                     \
    case 3: return F32BF16::call;                 \
    case 4: return F16::call;                     \
    case 5: return F32F16::call;                  \
    default: return cudaErrorInvalidValue;        \
  }

extern "C" int64_t hpcyuan_lfa_bwd_blocks(int64_t rows) {
  return rows < 1 ? 1 : (rows < kMaxBlocks ? rows : kMaxBlocks);
}

extern "C" cudaError_t hpcyuan_lfa_conv1_pair_fwd(int dtype, const void* p, const void* a, void* y, int64_t rows,
                                                  int64_t T, int64_t H, cudaStream_t st) {
  HPCYUAN_LFA_DISPATCH(dtype, conv1_fwd(p, a, y, rows, T, H, st))
}

extern "C" cudaError_t hpcyuan_lfa_norm_fwd(int dtype, const void* z, const void* c, const void* x, const void* w,
                                            void* s, void* out, void* rstd, int64_t rows, int64_t cols, double eps,
                                            cudaStream_t st) {
  HPCYUAN_LFA_DISPATCH(dtype, norm_fwd(z, c, x, w, s, out, rstd, rows, cols, eps, st))
}

extern "C" cudaError_t hpcyuan_lfa_norm_bwd(int dtype, const void* g, const void* s, const void* rstd, const void* w,
                                            void* ds, void* ds_conv, void* partial, void* sums, int64_t rows,
                                            int64_t cols, cudaStream_t st) {
  HPCYUAN_LFA_DISPATCH(dtype, norm_bwd(g, s, rstd, w, ds, ds_conv, partial, sums, rows, cols, st))
}

extern "C" cudaError_t hpcyuan_lfa_conv1_pair_bwd(int dtype, const void* dy, void* dp, void* partial, void* da,
                                                  int64_t rows, int64_t T, int64_t H, cudaStream_t st) {
  HPCYUAN_LFA_DISPATCH(dtype, conv1_bwd(dy, dp, partial, da, rows, T, H, st))
}
