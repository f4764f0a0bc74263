// Shared definitions for boltzgrad kernels.
//
// Every kernel body is written once as an inline BG_HD function. The CPU launchers
// (csrc/*.cpp) call it from at::parallel_for; the CUDA launchers (csrc/cuda/*.cu) call
// the same function from a grid-stride loop. The CPU tests therefore test the GPU math. The neighbour
// search's CPU op also has a vectorised path of its own; its CPU tests run both (see neighbors_portable.h).
//
// Sign convention for pair vectors, used by every op that produces one:
//     vector_ij = r_j - r_i + shift_ij @ cell      (cell rows are box vectors)
#pragma once

#if defined(__CUDACC__)
#define BG_HD __host__ __device__ __forceinline__
#else
#define BG_HD inline __attribute__((always_inline))
#endif

#include <cstdint>
#include <cstring>
#include <cmath>

// Ask the host compiler to vectorise the loop that follows (no-op under nvcc).
// BG_SIMD_SUM(acc): the same for a loop that sums into acc.
#define BG_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define BG_SIMD
#define BG_SIMD_SUM(acc)
#else
#define BG_SIMD BG_PRAGMA(omp simd)
#define BG_SIMD_SUM(acc) BG_PRAGMA(omp simd reduction(+ : acc))
#endif

namespace boltzgrad {

// exp() of arguments below about -87 falls into a slow path in libm; kernels clamp.
constexpr float kExpArgFloor = -80.0f;

template <typename T>
BG_HD T clamp_exp_arg(T a) {
    return a < T(kExpArgFloor) ? T(kExpArgFloor) : a;
}

// exp(a) for a in [kExpArgFloor, 0], the range of every Gaussian factor in boltzgrad.
// float: branch-free Cephes-style range reduction + degree-6 polynomial (max relative
// error ~2 ulp), which the host compiler vectorises; on the GPU the hardware expf.
// double: the library exp.
BG_HD float exp_nonpos(float a) {
#if defined(__CUDA_ARCH__)
    return expf(a);
#else
    a = a < kExpArgFloor ? kExpArgFloor : (a > 0.0f ? 0.0f : a);
    const float fx = a * 1.44269504088896341f + 0.5f;
    int32_t n = static_cast<int32_t>(fx);  // trunc toward 0; fx <= 0.5 so adjust down for negatives
    n -= (fx < static_cast<float>(n)) ? 1 : 0;
    const float nf = static_cast<float>(n);
    const float r = a - nf * 0.693359375f + nf * 2.12194440e-4f;
    const float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    const int32_t bits = (n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    return y * scale;
#endif
}

BG_HD double exp_nonpos(double a) {
    return exp(a < double(kExpArgFloor) ? double(kExpArgFloor) : a);
}

}  // namespace boltzgrad
