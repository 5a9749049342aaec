// C-style launchers for the RMSNorm CUDA kernels (rms_norm_kernel.cu). Plain pointers and a stream, no
// torch types: the kernels compile with bare nvcc (kernels/check_cuda.sh) and the torch glue in
// rms_norm.cu stays thin. Weights are passed in the math type (fp32, or fp64 for fp64 inputs).
// dtype: 0 = fp32, 1 = bf16, 2 = fp64, 3 = fp16. Each launcher returns cudaGetLastError() after its launches.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t hpcyuan_rms_norm_fwd(int dtype, const void* x, const void* weight, void* y, int64_t rows, int64_t cols,
                                 double eps, cudaStream_t stream);

// dw_partial: workspace of hpcyuan_rms_norm_bwd_blocks(rows) * cols math-type elements; dw: cols elements.
cudaError_t hpcyuan_rms_norm_bwd(int dtype, const void* grad_out, const void* x, const void* weight, void* dx,
                                 void* dw_partial, void* dw, int64_t rows, int64_t cols, double eps,
                                 cudaStream_t stream);

int64_t hpcyuan_rms_norm_bwd_blocks(int64_t rows);

#ifdef __cplusplus
}
#endif
