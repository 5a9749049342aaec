// C-style launchers for the attention router CUDA kernels (attention_router_kernel.cu). Plain pointers and a
// stream, no torch types: the kernels compile with bare nvcc (kernels/check_cuda.sh) and the torch glue in
// attention_router.cu stays thin. All tensors are contiguous and row-major: q, k, v, dq, dk, dv (N, E);
// gates, grad_gates (N, K) in the input dtype; indices (N, K) int64.
// dtype: 0 = fp32, 2 = fp64 (the codes of rms_norm_kernel.h). Each launcher returns cudaGetLastError().
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// the largest expert count the kernels take (per-warp shared memory and a 32-bit mask per lane)
#define HPCYUAN_ROUTER_MAX_EXPERTS 1024

cudaError_t hpcyuan_attention_router_fwd(int dtype, const void* q, const void* k, const void* v, void* gates,
                                         int64_t* indices, int64_t N, int64_t E, int64_t K, cudaStream_t stream);

cudaError_t hpcyuan_attention_router_bwd(int dtype, const void* grad_gates, const void* gates,
                                         const int64_t* indices, const void* q, const void* k, const void* v,
                                         void* dq, void* dk, void* dv, int64_t N, int64_t E, int64_t K,
                                         cudaStream_t stream);

#ifdef __cplusplus
}
#endif
