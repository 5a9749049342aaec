// The math type of the CUDA kernels and the conversions to and from it: fp32 for bf16 and fp32
// tensors, fp64 for fp64 (what at::opmath_type is for the CPU kernels). Pure CUDA, shared by the
// *_kernel.cu files.
#pragma once
#include <cuda_bf16.h>

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
