// CUDA launcher for the co-moment merge: raw pointers in, same math as the CPU.
#include <cuda_runtime.h>

#include "../covariance.h"
#include "launch.h"

namespace boltzgrad {
namespace {

template <typename T>
__global__ void comoment_merge_kernel(const T* ca, const T* cb, const T* mxa, const T* mxb, const T* mya,
                                      const T* myb, int64_t K, int64_t P, T factor, T frac_b, T* c, T* mx,
                                      T* my) {
    const int64_t total = K * P;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
        const int64_t k = i / P, p = i % P;
        c[i] = comoment_merge_entry(ca[i], cb[i], mxb[k] - mxa[k], myb[p] - mya[p], factor);
        if (p == 0) mx[k] = mean_merge_entry(mxa[k], mxb[k], frac_b);
        if (k == 0) my[p] = mean_merge_entry(mya[p], myb[p], frac_b);
    }
}

}  // namespace

template <typename T>
void comoment_merge_cuda(const T* ca, const T* cb, const T* mxa, const T* mxb, const T* mya, const T* myb,
                         int64_t K, int64_t P, T factor, T frac_b, T* c, T* mx, T* my, cudaStream_t stream) {
    const int64_t total = K * P;
    if (total == 0) return;
    int64_t blocks = (total + kThreads - 1) / kThreads;
    blocks = blocks > 65535 ? 65535 : blocks;
    comoment_merge_kernel<T><<<static_cast<int>(blocks), kThreads, 0, stream>>>(ca, cb, mxa, mxb, mya, myb, K, P,
                                                                                factor, frac_b, c, mx, my);
}

template void comoment_merge_cuda<float>(const float*, const float*, const float*, const float*, const float*,
                                         const float*, int64_t, int64_t, float, float, float*, float*, float*,
                                         cudaStream_t);
template void comoment_merge_cuda<double>(const double*, const double*, const double*, const double*,
                                          const double*, const double*, int64_t, int64_t, double, double, double*,
                                          double*, double*, cudaStream_t);

}  // namespace boltzgrad
