// CUDA launchers for cfconv and pair_product: raw pointers in, same math as the CPU (csrc/cfconv.h).
#include <cuda_runtime.h>

#include "../cfconv.h"
#include "launch.h"

namespace boltzgrad {
namespace {

template <typename T>
__global__ void cfconv_kernel(const T* w, const T* x, const int64_t* i, const int64_t* j, int64_t P, int64_t K,
                              T* out) {
    const int64_t total = P * K;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
        const int64_t p = e / K, k = e % K;
        const int64_t a = i[p], b = j[p];
        T to_i, to_j;
        cfconv_messages(w[e], x[a * K + k], x[b * K + k], to_i, to_j);
        atomicAdd(out + a * K + k, to_i);
        atomicAdd(out + b * K + k, to_j);
    }
}

template <typename T>
__global__ void pair_product_kernel(const T* a, const T* b, const int64_t* i, const int64_t* j, int64_t P, int64_t K,
                                    T* y) {
    const int64_t total = P * K;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
        const int64_t p = e / K, k = e % K;
        const int64_t ii = i[p] * K + k, jj = j[p] * K + k;
        y[e] = pair_product_entry(a[ii], a[jj], b[ii], b[jj]);
    }
}

}  // namespace

template <typename T>
void cfconv_cuda(const T* w, const T* x, const int64_t* i, const int64_t* j, int64_t P, int64_t K, T* out,
                 cudaStream_t stream) {
    if (P * K == 0) return;
    cfconv_kernel<T><<<launch_blocks(P * K), kThreads, 0, stream>>>(w, x, i, j, P, K, out);
}

template <typename T>
void pair_product_cuda(const T* a, const T* b, const int64_t* i, const int64_t* j, int64_t P, int64_t K, T* y,
                       cudaStream_t stream) {
    if (P * K == 0) return;
    pair_product_kernel<T><<<launch_blocks(P * K), kThreads, 0, stream>>>(a, b, i, j, P, K, y);
}

template void cfconv_cuda<float>(const float*, const float*, const int64_t*, const int64_t*, int64_t, int64_t, float*,
                                 cudaStream_t);
template void cfconv_cuda<double>(const double*, const double*, const int64_t*, const int64_t*, int64_t, int64_t,
                                  double*, cudaStream_t);
template void pair_product_cuda<float>(const float*, const float*, const int64_t*, const int64_t*, int64_t, int64_t,
                                       float*, cudaStream_t);
template void pair_product_cuda<double>(const double*, const double*, const int64_t*, const int64_t*, int64_t,
                                        int64_t, double*, cudaStream_t);

}  // namespace boltzgrad
