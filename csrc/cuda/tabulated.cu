// CUDA kernels for the tabulated-filter cfconv: raw pointers in, same math as the CPU (csrc/tabulated.h).
#include <cuda_runtime.h>

#include "../tabulated.h"
#include "launch.h"

namespace boltzgrad {
namespace {

// one thread per (pair, column); messages accumulate with atomics
template <typename T>
__global__ void tabulated_cfconv_kernel(const T* d, const T* c, const T* x, const int64_t* i, const int64_t* j,
                                        int64_t P, int64_t K, int64_t G, T inv_h, T* out) {
    const int64_t total = P * K;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
        const int64_t p = e / K, k = e % K;
        TableRow<T> row;
        if (!table_row(c, d[p], inv_h, G, K, row)) continue;
        const T w = row_value(row, k);
        const int64_t a = i[p], b = j[p];
        atomicAdd(out + a * K + k, w * x[b * K + k]);
        atomicAdd(out + b * K + k, w * x[a * K + k]);
    }
}

// grad_x with atomics; the per-pair distance gradient summed over columns with atomics into gd [P]
template <typename T>
__global__ void tabulated_cfconv_backward_kernel(const T* gout, const T* d, const T* c, const T* x, const int64_t* i,
                                                 const int64_t* j, int64_t P, int64_t K, int64_t G, T inv_h, T* gd,
                                                 T* gx) {
    const int64_t total = P * K;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
        const int64_t p = e / K, k = e % K;
        TableRow<T> row;
        if (!table_row(c, d[p], inv_h, G, K, row)) continue;
        const T w = row_value(row, k);
        const T s = row_slope(row, k, inv_h);
        const int64_t a = i[p] * K + k, b = j[p] * K + k;
        atomicAdd(gd + p, s * (gout[a] * x[b] + gout[b] * x[a]));
        atomicAdd(gx + b, w * gout[a]);
        atomicAdd(gx + a, w * gout[b]);
    }
}

}  // namespace

template <typename T>
void tabulated_cfconv_cuda(const T* d, const T* c, const T* x, const int64_t* i, const int64_t* j, int64_t P,
                           int64_t K, int64_t G, T inv_h, T* out, cudaStream_t stream) {
    if (P * K == 0 || G == 0) return;
    tabulated_cfconv_kernel<T><<<launch_blocks(P * K), kThreads, 0, stream>>>(d, c, x, i, j, P, K, G, inv_h, out);
}

template <typename T>
void tabulated_cfconv_backward_cuda(const T* gout, const T* d, const T* c, const T* x, const int64_t* i,
                                    const int64_t* j, int64_t P, int64_t K, int64_t G, T inv_h, T* gd, T* gx,
                                    cudaStream_t stream) {
    if (P * K == 0 || G == 0) return;
    tabulated_cfconv_backward_kernel<T><<<launch_blocks(P * K), kThreads, 0, stream>>>(gout, d, c, x, i, j, P, K, G,
                                                                                     inv_h, gd, gx);
}

#define BG_INSTANTIATE(T)                                                                                         \
    template void tabulated_cfconv_cuda<T>(const T*, const T*, const T*, const int64_t*, const int64_t*, int64_t,   \
                                           int64_t, int64_t, T, T*, cudaStream_t);                                 \
    template void tabulated_cfconv_backward_cuda<T>(const T*, const T*, const T*, const T*, const int64_t*,        \
                                                    const int64_t*, int64_t, int64_t, int64_t, T, T*, T*,          \
                                                    cudaStream_t);
BG_INSTANTIATE(float)
BG_INSTANTIATE(double)
#undef BG_INSTANTIATE

}  // namespace boltzgrad
