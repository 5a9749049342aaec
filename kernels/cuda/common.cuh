// What the *_kernel.cu files share (pure CUDA): the math type and the conversions to and from it
// (fp32 for bf16 and fp32 tensors, fp64 for fp64: what at::opmath_type is for the CPU kernels), and
// the column sum of per-block partial rows that the backward kernels use instead of atomics.
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

// out[j] = sum over b of partial[b, j]: the per-block partial rows (nblocks x cols) summed, one thread per column
template <typename A>
__global__ void sum_partials_kernel(const A* __restrict__ partial, A* __restrict__ out, int64_t nblocks,
                                    int64_t cols) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= cols) return;
  A s = 0;
  for (int64_t b = 0; b < nblocks; ++b) s += partial[b * cols + j];
  out[j] = s;
}
