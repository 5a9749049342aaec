// C-style launchers for the LFA localized-filter CUDA kernels (lfa_filter_kernel.cu): the four fused passes
// between the GEMMs of kernels/lfa_filter.cpp's header comment (the GEMMs themselves run in the torch glue,
// lfa_filter.cu, through at::mm / cuBLAS). Plain pointers and a stream, no torch types, so the kernels compile
// with bare nvcc (kernels/check_cuda.sh). N = rows = B*T, C channels, H = C/2.
//
// dtype names the (activation, conv) pair: 0 = fp32, 1 = bf16, 2 = fp64, 4 = fp16 (both the same), 3 = fp32
// activations with bf16 convs (bf16 autocast), 5 = fp32 activations with fp16 convs (fp16 autocast). Biases
// and norm weights are passed in the math type (fp32; fp64 for 2); rstd and the column-sum outputs are in it
// too. Each launcher returns cudaGetLastError() after its launches.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Pass 1: y (N, C, conv dtype) = y1[t-1], y1[t] interleaved, y1[t] = p[t, H:] + p[t-1, :H] + bias1.
cudaError_t hpcyuan_lfa_conv1_pair_fwd(int dtype, const void* p, const void* bias1, void* y, int64_t rows,
                                       int64_t T, int64_t H, cudaStream_t stream);

// Pass 2: s = z + bias2 + x (activation dtype), rstd (N), out = s * rstd * norm_weight.
cudaError_t hpcyuan_lfa_norm_fwd(int dtype, const void* z, const void* bias2, const void* x, const void* norm_weight,
                                 void* s, void* out, void* rstd, int64_t rows, int64_t cols, double eps,
                                 cudaStream_t stream);

// Pass 3: ds (activation dtype) and, for dtypes 3 and 5, ds_conv (the convs' dtype; else null) from the RMSNorm
// backward; sums (2, cols) = (d norm_weight, d bias2). partial: workspace of hpcyuan_lfa_bwd_blocks(rows) * 2 *
// cols.
cudaError_t hpcyuan_lfa_norm_bwd(int dtype, const void* grad_out, const void* s, const void* rstd,
                                 const void* norm_weight, void* ds, void* ds_conv, void* partial, void* sums,
                                 int64_t rows, int64_t cols, cudaStream_t stream);

// Pass 4: dp (N, C) = [dy1[t+1] | dy1[t]], dy1[t, i] = dy[t, 2i + 1] + dy[t+1, 2i]; dbias1 (H) = sum of dy1.
// partial: workspace of hpcyuan_lfa_bwd_blocks(rows) * H.
cudaError_t hpcyuan_lfa_conv1_pair_bwd(int dtype, const void* dy, void* dp, void* partial, void* dbias1,
                                       int64_t rows, int64_t T, int64_t H, cudaStream_t stream);

int64_t hpcyuan_lfa_bwd_blocks(int64_t rows);

#ifdef __cplusplus
}
#endif
