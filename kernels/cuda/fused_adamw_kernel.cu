// Fused AdamW CUDA kernel (sm_80+), pure CUDA: no torch headers (see fused_adamw_kernel.h).
// One pass over the flat fp32 shard, per element in torch.optim.AdamW's foreach order (the math and the
// scalar rounding are those of kernels/fused_adamw.cpp). Grid-stride loop over float4 vectors (16-byte loads
// and stores of each array, 8 bytes for four bf16 outputs) when every pointer is aligned for it; a scalar
// kernel takes the tail (n % 4 elements) or the whole shard when a pointer is not aligned (an odd offset).
// nvcc contracts a*b + c into FMAs here as it does in torch's CUDA lerp_/addcmul_ kernels.
#include <cuda_bf16.h>
#include <math.h>

#include "fused_adamw_kernel.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// the per-step scalars, rounded to fp32 as torch's foreach kernels round them; see kernels/fused_adamw.cpp
struct Scalars {
  float grad_scale, decay, w1, one_minus_w1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
  bool small_w1;  // ATen lerp: weight < 0.5 -> a + w (b - a), else b - (b - a)(1 - w)
};

Scalars make_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                     double grad_scale) {
  Scalars c;
  c.grad_scale = static_cast<float>(grad_scale);
  c.decay = static_cast<float>(weight_decay != 0 ? 1 - lr * weight_decay : 1.0);
  c.w1 = static_cast<float>(1 - beta1);
  c.one_minus_w1 = 1.f - c.w1;
  c.small_w1 = fabsf(c.w1) < 0.5f;
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1 - beta2);
  const double bc1 = 1 - pow(beta1, static_cast<double>(step));
  const double bc2 = 1 - pow(beta2, static_cast<double>(step));
  c.neg_step_size = static_cast<float>((lr / bc1) * -1);
  c.bc2_sqrt = static_cast<float>(pow(bc2, 0.5));  // Python's bc ** 0.5
  c.eps = static_cast<float>(eps);
  return c;
}

// one element: p (master), m (exp_avg), v (exp_avg_sq) updated in registers
__device__ __forceinline__ void adamw_elem(float& p, float& m, float& v, float grad, const Scalars& c) {
  const float g = grad * c.grad_scale;
  p = p * c.decay;
  const float d = g - m;
  m = c.small_w1 ? m + c.w1 * d : g - d * c.one_minus_w1;
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const float denom = sqrtf(v) / c.bc2_sqrt + c.eps;  // IEEE sqrt and division (no --use_fast_math)
  p = p + c.neg_step_size * m / denom;
}

// Where a step reads master, m, v and where it writes them: the same arrays for the in-place step (so no
// __restrict__ on them; each element is read before it is written, by the same thread).
template <typename T> struct Arrays {
  const T *master, *exp_avg, *exp_avg_sq;
  T *master_out, *exp_avg_out, *exp_avg_sq_out;

  template <typename U> Arrays<U> cast() const {
    return {reinterpret_cast<const U*>(master), reinterpret_cast<const U*>(exp_avg),
            reinterpret_cast<const U*>(exp_avg_sq), reinterpret_cast<U*>(master_out),
            reinterpret_cast<U*>(exp_avg_out), reinterpret_cast<U*>(exp_avg_sq_out)};
  }
  Arrays offset(int64_t k) const {
    return {master + k, exp_avg + k, exp_avg_sq + k, master_out + k, exp_avg_out + k, exp_avg_sq_out + k};
  }
};

struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};

// kOut: -1 = no write-back, 0 = fp32, 1 = bf16 (round to nearest even)
template <int kOut> __device__ __forceinline__ void store1(void* out, int64_t i, float p) {
  if constexpr (kOut == 0) static_cast<float*>(out)[i] = p;
  if constexpr (kOut == 1) static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(p);
}
template <int kOut> __device__ __forceinline__ void store4(void* out, int64_t i, const float4& p) {
  if constexpr (kOut == 0) static_cast<float4*>(out)[i] = p;
  if constexpr (kOut == 1)
    static_cast<Bf16x4*>(out)[i] = Bf16x4{__floats2bfloat162_rn(p.x, p.y), __floats2bfloat162_rn(p.z, p.w)};
}

template <int kOut>
__global__ void __launch_bounds__(kThreads)
    adamw_vec4_kernel(Arrays<float4> a, const float4* __restrict__ grad, void* __restrict__ out, int64_t n4,
                      Scalars c) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 p = a.master[i], m = a.exp_avg[i], v = a.exp_avg_sq[i];
    const float4 g = grad[i];
    adamw_elem(p.x, m.x, v.x, g.x, c);
    adamw_elem(p.y, m.y, v.y, g.y, c);
    adamw_elem(p.z, m.z, v.z, g.z, c);
    adamw_elem(p.w, m.w, v.w, g.w, c);
    a.master_out[i] = p;
    a.exp_avg_out[i] = m;
    a.exp_avg_sq_out[i] = v;
    store4<kOut>(out, i, p);
  }
}

template <int kOut>
__global__ void __launch_bounds__(kThreads)
    adamw_scalar_kernel(Arrays<float> a, const float* __restrict__ grad, void* __restrict__ out, int64_t n,
                        Scalars c) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float p = a.master[i], m = a.exp_avg[i], v = a.exp_avg_sq[i];
    adamw_elem(p, m, v, grad[i], c);
    a.master_out[i] = p;
    a.exp_avg_out[i] = m;
    a.exp_avg_sq_out[i] = v;
    store1<kOut>(out, i, p);
  }
}

unsigned blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b < kMaxBlocks ? b : kMaxBlocks));
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <int kOut>
cudaError_t launch(const Arrays<float>& a, const float* grad, void* out, int64_t n, const Scalars& c, cudaStream_t s) {
  const uintptr_t out_bytes = kOut == 1 ? 8 : 16;  // four outputs per vector
  const bool vec = aligned(a.master, 16) && aligned(a.exp_avg, 16) && aligned(a.exp_avg_sq, 16) &&
                   aligned(a.master_out, 16) && aligned(a.exp_avg_out, 16) && aligned(a.exp_avg_sq_out, 16) &&
                   aligned(grad, 16) && (kOut < 0 || aligned(out, out_bytes));
  const int64_t n4 = vec ? n / 4 : 0, done = 4 * n4;
  if (n4 > 0)
    adamw_vec4_kernel<kOut><<<blocks_for(n4), kThreads, 0, s>>>(a.cast<float4>(), reinterpret_cast<const float4*>(grad),
                                                               out, n4, c);
  if (n > done) {
    void* out_rest = kOut < 0 ? nullptr : static_cast<char*>(out) + done * (kOut == 1 ? 2 : 4);
    adamw_scalar_kernel<kOut><<<blocks_for(n - done), kThreads, 0, s>>>(a.offset(done), grad + done, out_rest,
                                                                        n - done, c);
  }
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t hpcyuan_fused_adamw(const float* master, const float* exp_avg, const float* exp_avg_sq,
                                           const float* grad, float* master_out, float* exp_avg_out,
                                           float* exp_avg_sq_out, void* param_out, int out_dtype, int64_t n,
                                           double lr, double beta1, double beta2, double eps, double weight_decay,
                                           int64_t step, double grad_scale, cudaStream_t s) {
  if (step < 1) return cudaErrorInvalidValue;
  const Scalars c = make_scalars(lr, beta1, beta2, eps, weight_decay, step, grad_scale);
  const Arrays<float> a{master, exp_avg, exp_avg_sq, master_out, exp_avg_out, exp_avg_sq_out};
  if (param_out == nullptr) return launch<-1>(a, grad, nullptr, n, c, s);
  switch (out_dtype) {
    case 0: return launch<0>(a, grad, param_out, n, c, s);
    case 1: return launch<1>(a, grad, param_out, n, c, s);
    default: return cudaErrorInvalidValue;
  }
}
