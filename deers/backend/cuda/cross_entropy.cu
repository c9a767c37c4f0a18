// Fused cross-entropy forward + backward (contract item 15), one block per row of (N, C) logits:
//   loss_i = logsumexp(x_i) - (1 - s) x_i[t_i] - s mean(x_i)
//   grad_i = (softmax(x_i) - (1 - s) one_hot(t_i) - s / C) / max(count, 1)
// Rows whose target is ignore_index get loss 0 and gradient 0. The logits are read twice (once
// for max/sum, once to write the gradient) and the loss is accumulated in float (double for f64).
// The targets are checked on the device first (cross_entropy_targets, one block): it counts the
// rows that are not ignored and records a target outside [0, C) in the error flag, which the host
// raises at its next sync point; such a row gets loss 0 and gradient 0 meanwhile.
#include "common.cuh"

// count[0] = rows with target != ignore_index; a target outside [0, c) is flagged (one block).
extern "C" __global__ void MAX_THREADS_1024 cross_entropy_targets_i64(long long n, long long c,
                                                                    const long long* targets,
                                                                    long long ignore_index, long long* count,
                                                                    long long* flag, long long call) {
    __shared__ long long scratch[32];
    long long counted = 0;
    for (long long r = threadIdx.x; r < n; r += blockDim.x) {
        long long target = targets[r];
        if (target == ignore_index) continue;
        counted += 1;
        if (target < 0 || target >= c) flag_index_error(flag, target, call);
    }
    long long total = block_sum(counted, scratch);
    if (threadIdx.x == 0) count[0] = total;
}

template <typename T, typename A>
DEV void cross_entropy_body(long long n, long long c, T* grad, A* losses, const T* logits,
                            const long long* targets, long long ignore_index, A smoothing, const long long* count) {
    __shared__ A scratch[32];
    A scale = (A)1 / (A)(count[0] > 1 ? count[0] : 1);
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        const T* x = logits + r * c;
        T* gx = grad + r * c;
        long long target = targets[r];
        if (target == ignore_index || target < 0 || target >= c) {  // the whole block branches together
            for (long long j = threadIdx.x; j < c; j += blockDim.x) gx[j] = store<T>((A)0);
            if (threadIdx.x == 0) losses[r] = 0;
            continue;
        }
        // pass 1: running max and sum of exp(x - max), plus the plain sum for label smoothing
        A peak = neg_inf(A());
        A total = 0;
        A sum_x = 0;
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            A xj = load(x[j]);
            sum_x += xj;
            A next = nan_max(peak, xj);
            if (next == neg_inf(A())) continue;
            total = total * m_exp(peak - next) + m_exp(xj - next);
            peak = next;
        }
        A row_peak = block_max(peak, scratch);
        A scaled = (peak == neg_inf(A())) ? (A)0 : total * m_exp(peak - row_peak);
        A row_total = block_sum(scaled, scratch);
        A row_sum_x = block_sum(sum_x, scratch);
        A lse = row_peak + m_log(row_total);
        if (threadIdx.x == 0) {
            losses[r] = lse - ((A)1 - smoothing) * load(x[target]) - smoothing * row_sum_x / (A)c;
        }
        // pass 2: the gradient of the row
        A uniform = smoothing / (A)c;
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            A value = m_exp(load(x[j]) - lse) - uniform;
            if (j == target) value -= (A)1 - smoothing;
            gx[j] = store<T>(value * scale);
        }
    }
}

// losses[i] and grad[i, :] of each row i of the logits, in one block per row (count from cross_entropy_targets)
#define CROSS_ENTROPY_KERNEL(T, A, SUFFIX)                                                              \
    extern "C" __global__ void MAX_THREADS_1024 cross_entropy_##SUFFIX(                                 \
        long long n, long long c, T* grad, A* losses, const T* logits, const long long* targets,        \
        long long ignore_index, A smoothing, const long long* count) {                                  \
        cross_entropy_body<T, A>(n, c, grad, losses, logits, targets, ignore_index, smoothing, count);  \
    }

CROSS_ENTROPY_KERNEL(f16_t, float, f16)
CROSS_ENTROPY_KERNEL(bf16_t, float, bf16)
CROSS_ENTROPY_KERNEL(float, float, f32)
CROSS_ENTROPY_KERNEL(double, double, f64)
