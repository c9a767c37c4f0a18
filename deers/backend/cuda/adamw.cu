// Fused AdamW update (contract item 17), in place on flat buffers, one thread per element:
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= (lr / bias1) m / (sqrt(v / bias2) + eps)       with bias_k = 1 - b_k^step
// Computed in the moments' type (float, or double for f64); parameters and gradients may be
// f16/bf16 with f32 moments.
#include "common.cuh"

template <typename P, typename M>
DEV void adamw_body(long long n, P* param, const P* grad, M* m, M* v, double lr, double beta1, double beta2,
                    double eps, double weight_decay, double bias1, double bias2) {
    typedef typename Acc<M>::type A;
    A decay = (A)(1.0 - lr * weight_decay);
    A b1 = (A)beta1, b2 = (A)beta2, step_size = (A)(lr / bias1), inv_bias2 = (A)(1.0 / bias2), epsilon = (A)eps;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        A g = (A)load(grad[i]);
        A p = (A)load(param[i]) * decay;
        A mi = b1 * load(m[i]) + ((A)1 - b1) * g;
        A vi = b2 * load(v[i]) + ((A)1 - b2) * g * g;
        m[i] = store<M>(mi);
        v[i] = store<M>(vi);
        param[i] = Convert<P>::from(p - step_size * mi / (m_sqrt(vi * inv_bias2) + epsilon));
    }
}

// param, m, v <- one AdamW step (P: parameter and gradient type, M: moment type)
#define ADAMW_KERNEL(P, PS, M, MS)                                                                      \
    extern "C" __global__ void adamw_##PS##_##MS(long long n, P* param, const P* grad, M* m, M* v,      \
                                                 double lr, double beta1, double beta2, double eps,     \
                                                 double weight_decay, double bias1, double bias2) {     \
        adamw_body<P, M>(n, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, bias1, bias2);      \
    }

ADAMW_KERNEL(float, f32, float, f32)
ADAMW_KERNEL(double, f64, double, f64)
ADAMW_KERNEL(f16_t, f16, f16_t, f16)
ADAMW_KERNEL(bf16_t, bf16, bf16_t, bf16)
ADAMW_KERNEL(f16_t, f16, float, f32)
ADAMW_KERNEL(bf16_t, bf16, float, f32)
