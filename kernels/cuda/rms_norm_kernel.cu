// RMSNorm CUDA kernels (sm_80+), pure CUDA: no torch headers (see rms_norm_kernel.h).
// Forward: one block per row, fp32 (fp64) block reduction of sum(x^2). Backward: a grid of blocks strides
// over rows; each block writes its dx rows and accumulates its own dw partial row (no atomics), then a
// second kernel sums the partials over blocks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "rms_norm_kernel.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBwdBlocks = 512;

// sum over the block of each thread's `v` (two values at once); result broadcast to every thread
template <typename A> __device__ void block_sum2(A& a, A& b) {
  __shared__ A sa[32], sb[32];
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // the shared slots may still be read by the previous call
  if (lane == 0) { sa[warp] = a; sb[warp] = b; }
  __syncthreads();
  a = lane < nwarps ? sa[lane] : A(0);
  b = lane < nwarps ? sb[lane] : A(0);
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
}

template <typename T, typename A>
__global__ void rms_norm_fwd_kernel(const T* __restrict__ x, const A* __restrict__ w, T* __restrict__ y,
                                   int64_t cols, A eps) {
  const T* xr = x + blockIdx.x * cols;
  T* yr = y + blockIdx.x * cols;
  A ss = 0, unused = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) { A v = to_acc(xr[j]); ss += v * v; }
  block_sum2(ss, unused);
  const A rstd = A(1) / sqrt(ss / static_cast<A>(cols) + eps);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = from_acc<T, A>(to_acc(xr[j]) * rstd * w[j]);
}

template <typename T, typename A>
__global__ void rms_norm_bwd_kernel(const T* __restrict__ g, const T* __restrict__ x, const A* __restrict__ w,
                                    T* __restrict__ dx, A* __restrict__ dw_partial, int64_t rows, int64_t cols,
                                    A eps) {
  A* dwp = dw_partial + blockIdx.x * cols;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dwp[j] = A(0);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    const T* gr = g + r * cols;
    A ss = 0, dot = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      A xv = to_acc(xr[j]);
      ss += xv * xv;
      dot += to_acc(gr[j]) * w[j] * xv;
    }
    block_sum2(ss, dot);
    const A rstd = A(1) / sqrt(ss / static_cast<A>(cols) + eps);
    const A coef = rstd * rstd * dot / static_cast<A>(cols);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {  // same thread owns column j for every row
      A xv = to_acc(xr[j]), gv = to_acc(gr[j]);
      dx[r * cols + j] = from_acc<T, A>(rstd * (gv * w[j] - xv * coef));
      dwp[j] += gv * xv * rstd;
    }
  }
}

template <typename T, typename A>
cudaError_t launch_fwd(const void* x, const void* w, void* y, int64_t rows, int64_t cols, double eps,
                       cudaStream_t s) {
  if (rows > 0 && cols > 0)
    rms_norm_fwd_kernel<T, A><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const A*>(w), static_cast<T*>(y), cols, static_cast<A>(eps));
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t launch_bwd(const void* g, const void* x, const void* w, void* dx, void* dwp, void* dw, int64_t rows,
                       int64_t cols, double eps, cudaStream_t s) {
  if (cols <= 0) return cudaGetLastError();
  const int64_t nb = hpcyuan_rms_norm_bwd_blocks(rows);
  if (rows > 0)
    rms_norm_bwd_kernel<T, A><<<static_cast<unsigned>(nb), kThreads, 0, s>>>(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<const A*>(w), static_cast<T*>(dx),
        static_cast<A*>(dwp), rows, cols, static_cast<A>(eps));
  else
    return cudaMemsetAsync(dw, 0, cols * sizeof(A), s);
  const cudaError_t err = cudaGetLastError();
  return err != cudaSuccess ? err : sum_partials<A>(dwp, dw, nb, cols, s);
}

}  // namespace

extern "C" int64_t hpcyuan_rms_norm_bwd_blocks(int64_t rows) {
  return rows < 1 ? 1 : (rows < kMaxBwdBlocks ? rows : kMaxBwdBlocks);
}

extern "C" cudaError_t hpcyuan_rms_norm_fwd(int dtype, const void* x, const void* w, void* y, int64_t rows,
                                            int64_t cols, double eps, cudaStream_t s) {
  switch (dtype) {
    case 0: return launch_fwd<float, float>(x, w, y, rows, cols, eps, s);
    case 1: return launch_fwd<__nv_bfloat16, float>(x, w, y, rows, cols, eps, s);
    case 2: return launch_fwd<double, double>(x, w, y, rows, cols, eps, s);
    case 3: return launch_fwd<__half, float>(x, w, y, rows, cols, eps, s);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t hpcyuan_rms_norm_bwd(int dtype, const void* g, const void* x, const void* w, void* dx,
                                            void* dwp, void* dw, int64_t rows, int64_t cols, double eps,
                                            cudaStream_t s) {
  switch (dtype) {
    case 0: return launch_bwd<float, float>(g, x, w, dx, dwp, dw, rows, cols, eps, s);
    case 1: return launch_bwd<__nv_bfloat16, float>(g, x, w, dx, dwp, dw, rows, cols, eps, s);
    case 2: return launch_bwd<double, double>(g, x, w, dx, dwp, dw, rows, cols, eps, s);
    case 3: return launch_bwd<__half, float>(g, x, w, dx, dwp, dw, rows, cols, eps, s);
    default: return cudaErrorInvalidValue;
  }
}
