// Shared definitions for boltzgrad kernels.
//
// Every kernel body is written once as an inline BG_HD function. The CPU launchers
// (csrc/*.cpp) call it from at::parallel_for; the CUDA launchers (csrc/cuda/*.cu) call
// the same function from a grid-stride loop. The CPU tests therefore test the GPU math.
//
// Sign convention for pair vectors, used by every op that produces one:
//     vector_ij = r_j - r_i + shift_ij @ cell      (cell rows are box vectors)
#pragma once

#if defined(__CUDACC__)
#define BG_HD __host__ __device__ __forceinline__
#else
#define BG_HD inline
#endif

#include <cstdint>
#include <cmath>

namespace boltzgrad {

// exp() of arguments below about -87 falls into a slow path in libm; kernels clamp.
constexpr float kExpArgFloor = -80.0f;

template <typename T>
BG_HD T clamp_exp_arg(T a) {
    return a < T(kExpArgFloor) ? T(kExpArgFloor) : a;
}

}  // namespace boltzgrad
