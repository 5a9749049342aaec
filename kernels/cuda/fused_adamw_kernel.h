// C-style launcher for the fused AdamW CUDA kernel (fused_adamw_kernel.cu). Plain pointers and a stream, no
// torch types: the kernel compiles with bare nvcc (kernels/check_cuda.sh) and the torch glue in fused_adamw.cu
// stays thin. master, exp_avg, exp_avg_sq, grad: n contiguous fp32 values, read; the step's new master, exp_avg and
// exp_avg_sq go to the *_out arrays (the same pointers for the in-place step, other buffers for the step into);
// param_out: n values of out_dtype (0 = fp32, 1 = bf16, the codes of rms_norm_kernel.h), or NULL to skip the
// write-back. The hyperparameters are the Python ones (doubles); the launcher rounds them to the fp32 scalars
// torch's foreach kernels use. Returns cudaGetLastError() after its launches.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t hpcyuan_fused_adamw(const float* master, const float* exp_avg, const float* exp_avg_sq, const float* grad,
                                float* master_out, float* exp_avg_out, float* exp_avg_sq_out, void* param_out,
                                int out_dtype, int64_t n, double lr, double beta1, double beta2, double eps,
                                double weight_decay, int64_t step, double grad_scale, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
