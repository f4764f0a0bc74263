// CUDA launchers for the smeared histogram ops: raw pointers in, same kernel math as the CPU.
#include <cuda_runtime.h>

#include "../histogram.h"
#include "launch.h"

namespace boltzgrad {
namespace {

template <typename T>
__global__ void scatter_kernel(const T* v, const int64_t* seg, const T* w, int64_t n, const T* c,
                               int32_t n_bins, T sigma, int32_t order, T* out) {
    const T inv_sigma = T(1) / sigma;
    for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
         k += int64_t(blockDim.x) * gridDim.x) {
        int32_t lo, hi;
        window_bins(v[k], T(kWindowSigmas) * sigma, c, n_bins, lo, hi);
        const T wk = w ? w[k] : T(1);
        T* row = out + seg[k] * n_bins;
        for (int32_t b = lo; b < hi; ++b) {
            atomicAdd(row + b, wk * gaussian_derivative(v[k] - c[b], inv_sigma, order));
        }
    }
}

template <typename T>
__global__ void gather_kernel(const T* g, const T* v, const int64_t* seg, int64_t n, const T* c,
                              int32_t n_bins, T sigma, int32_t order, T* out) {
    for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
         k += int64_t(blockDim.x) * gridDim.x) {
        out[k] = gather_one(v[k], c, n_bins, sigma, order, g + seg[k] * n_bins);
    }
}

int blocks_for(int64_t n) {
    const int64_t b = (n + kThreads - 1) / kThreads;
    return static_cast<int>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

}  // namespace

template <typename T>
void smeared_scatter_cuda(const T* v, const int64_t* seg, const T* w, int64_t n, const T* c, int32_t n_bins,
                          T sigma, int32_t order, T* out, cudaStream_t stream) {
    if (n == 0) return;
    scatter_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(v, seg, w, n, c, n_bins, sigma, order, out);
}

template <typename T>
void smeared_gather_cuda(const T* g, const T* v, const int64_t* seg, int64_t n, const T* c, int32_t n_bins,
                         T sigma, int32_t order, T* out, cudaStream_t stream) {
    if (n == 0) return;
    gather_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(g, v, seg, n, c, n_bins, sigma, order, out);
}

#define BG_INSTANTIATE(T)                                                                               \
    template void smeared_scatter_cuda<T>(const T*, const int64_t*, const T*, int64_t, const T*, int32_t, T, \
                                          int32_t, T*, cudaStream_t);                                     \
    template void smeared_gather_cuda<T>(const T*, const T*, const int64_t*, int64_t, const T*, int32_t, T,  \
                                         int32_t, T*, cudaStream_t);
BG_INSTANTIATE(float)
BG_INSTANTIATE(double)
#undef BG_INSTANTIATE

}  // namespace boltzgrad
