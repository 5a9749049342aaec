// What the *_kernel.cu files share (pure CUDA): the math type and the conversions to and from it
// (fp32 for bf16, fp16 and fp32 tensors, fp64 for fp64: what at::opmath_type is for the CPU kernels; explicit
// intrinsics, since torch builds with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__), and
// the column sum of per-block partial rows that the backward kernels use instead of atomics.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }

// out[j] = sum over b of partial[b, j]: the per-block partial rows (nblocks x cols) summed. A block of 32 x 8
// threads takes 32 columns: thread (x, y) sums rows y, y + 8, ... of column x (coalesced across x), then the
// 8 sums of a column are added in shared memory. Launch with sum_partials (below).
constexpr int kSumCols = 32, kSumRows = 8;

template <typename A>
__global__ void __launch_bounds__(kSumCols * kSumRows)
    sum_partials_kernel(const A* __restrict__ partial, A* __restrict__ out, int64_t nblocks, int64_t cols) {
  __shared__ A part[kSumRows][kSumCols + 1];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kSumCols + threadIdx.x;
  A s = 0;
  if (j < cols)
    for (int64_t b = threadIdx.y; b < nblocks; b += kSumRows) s += partial[b * cols + j];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int r = 1; r < kSumRows; ++r) s += part[r][threadIdx.x];
    out[j] = s;
  }
}

// launches sum_partials_kernel on `stream` (nothing for cols <= 0); returns cudaGetLastError()
template <typename A>
cudaError_t sum_partials(const void* partial, void* out, int64_t nblocks, int64_t cols, cudaStream_t stream) {
  if (cols > 0)
    sum_partials_kernel<A><<<static_cast<unsigned>((cols + kSumCols - 1) / kSumCols), dim3(kSumCols, kSumRows), 0,
                             stream>>>(static_cast<const A*>(partial), static_cast<A*>(out), nblocks, cols);
  return cudaGetLastError();
}
