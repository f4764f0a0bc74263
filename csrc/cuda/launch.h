// Declarations of the raw-pointer CUDA launchers (defined in csrc/cuda/*.cu).
// The .cu files include no torch headers so that nvcc compiles them in seconds; the
// torch dispatch lives in csrc/cuda/*.cpp.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

namespace boltzgrad {

constexpr int kThreads = 256;

// blocks of kThreads for a grid-stride loop over `total` elements
inline int launch_blocks(int64_t total) {
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    return static_cast<int>(blocks > 65535 ? 65535 : blocks);
}

template <typename T>
void smeared_scatter_cuda(const T* values, const int64_t* segment, const T* weights, int64_t n,
                          const T* centers, int32_t n_bins, T sigma, int32_t order, T* out,
                          cudaStream_t stream);
template <typename T>
void smeared_gather_cuda(const T* grad, const T* values, const int64_t* segment, int64_t n,
                         const T* centers, int32_t n_bins, T sigma, int32_t order, T* out,
                         cudaStream_t stream);

}  // namespace boltzgrad

namespace boltzgrad {

template <typename T>
void comoment_merge_cuda(const T* ca, const T* cb, const T* mxa, const T* mxb, const T* mya, const T* myb,
                         int64_t K, int64_t P, T factor, T frac_b, T* c, T* mx, T* my, cudaStream_t stream);

}  // namespace boltzgrad

namespace boltzgrad {

template <typename T>
void cfconv_cuda(const T* w, const T* x, const int64_t* i, const int64_t* j, int64_t P, int64_t K, T* out,
                 cudaStream_t stream);
template <typename T>
void pair_product_cuda(const T* a, const T* b, const int64_t* i, const int64_t* j, int64_t P, int64_t K, T* y,
                       cudaStream_t stream);

}  // namespace boltzgrad

namespace boltzgrad {

template <typename T>
void tabulated_cfconv_cuda(const T* d, const T* c, const T* x, const int64_t* i, const int64_t* j, int64_t P,
                           int64_t K, int64_t G, T inv_h, T* out, cudaStream_t stream);
template <typename T>
void tabulated_cfconv_backward_cuda(const T* gout, const T* d, const T* c, const T* x, const int64_t* i,
                                    const int64_t* j, int64_t P, int64_t K, int64_t G, T inv_h, T* gd, T* gx,
                                    cudaStream_t stream);

}  // namespace boltzgrad
