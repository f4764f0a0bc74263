// CUDA launchers of the neighbour search: one thread per atom, same math as the CPU (../neighbors.h).
// Two passes: count the neighbours of each atom, then (after a prefix sum on the torch side)
// write them at the atom's offset and sort the atom's segment by (j, shift).
#include <cuda_runtime.h>

#include "launch.h"
#include "neighbors_launch.h"

namespace boltzgrad {
namespace {

__device__ __forceinline__ int64_t replica_of_atom(const int64_t* ptr, int64_t R, int64_t a) {
    int64_t lo = 0, hi = R;  // ptr[lo] <= a < ptr[hi]
    while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (ptr[mid] <= a) lo = mid;
        else hi = mid;
    }
    return lo;
}

struct CountEmit {
    int64_t count;
    BG_HD void operator()(int64_t, int64_t, int64_t, int64_t) { ++count; }
};

struct WriteEmit {
    int64_t i, pos, capacity;
    int64_t *oi, *oj, *os;
    BG_HD void operator()(int64_t j, int64_t s0, int64_t s1, int64_t s2) {
        if (pos < capacity) {
            oi[pos] = i;
            oj[pos] = j;
            os[3 * pos] = s0;
            os[3 * pos + 1] = s1;
            os[3 * pos + 2] = s2;
        }
        ++pos;
    }
};

template <typename T>
__global__ void place_kernel(const T* positions, int64_t n, const int64_t* ptr, int64_t R,
                             const nl::Replica<T>* reps, T* pw, T* fw, int64_t* wrap, int64_t* bin) {
    for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(blockDim.x) * gridDim.x) {
        const int64_t r = replica_of_atom(ptr, R, a);
        nl::atom_place(positions + 3 * a, reps[r], pw + 3 * a, fw + 3 * a, wrap + 3 * a, bin + a);
    }
}

template <typename T>
__global__ void count_kernel(int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, const T* pw,
                             const T* pw_binned, const T* fw, const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms,
                             T cutoff, bool full_list, int64_t* counts) {
    for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(blockDim.x) * gridDim.x) {
        const int64_t r = replica_of_atom(ptr, R, a);
        CountEmit emit{0};
        nl::visit_neighbors(a, reps[r], pw, pw_binned, fw, wrap, bin_start, bin_atoms, cutoff, full_list, emit);
        counts[a] = emit.count;
    }
}

template <typename T>
__global__ void fill_kernel(int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, const T* pw,
                            const T* pw_binned, const T* fw, const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms,
                            T cutoff, bool full_list, const int64_t* offsets, int64_t capacity, int64_t* oi,
                            int64_t* oj, int64_t* os) {
    for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(blockDim.x) * gridDim.x) {
        const int64_t r = replica_of_atom(ptr, R, a);
        WriteEmit emit{a, offsets[a], capacity, oi, oj, os};
        nl::visit_neighbors(a, reps[r], pw, pw_binned, fw, wrap, bin_start, bin_atoms, cutoff, full_list, emit);
        if (!reps[r].brute && emit.pos <= capacity) {
            nl::sort_segment(oj + offsets[a], os + 3 * offsets[a], emit.pos - offsets[a]);
        }
    }
}

template <typename T>
__global__ void pair_vectors_kernel(const T* positions, const T* cell, const int64_t* batch, const int64_t* i,
                                    const int64_t* j, const int64_t* shifts, int64_t P, T* vectors, T* distances) {
    for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < P; p += int64_t(blockDim.x) * gridDim.x) {
        nl::pair_vector(positions, cell + 9 * batch[i[p]], i[p], j[p], shifts + 3 * p, vectors + 3 * p, distances + p);
    }
}

int blocks_for(int64_t n) {
    const int64_t b = (n + kThreads - 1) / kThreads;
    return static_cast<int>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

}  // namespace

template <typename T>
void neighbor_place_cuda(const T* positions, int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps,
                         T* pw, T* fw, int64_t* wrap, int64_t* bin, cudaStream_t stream) {
    if (n == 0) return;
    place_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(positions, n, ptr, R, reps, pw, fw, wrap, bin);
}

template <typename T>
void neighbor_count_cuda(int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, const T* pw,
                         const T* pw_binned, const T* fw, const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms,
                         T cutoff, bool full_list, int64_t* counts, cudaStream_t stream) {
    if (n == 0) return;
    count_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(n, ptr, R, reps, pw, pw_binned, fw, wrap, bin_start, bin_atoms, cutoff,
                                                            full_list, counts);
}

template <typename T>
void neighbor_fill_cuda(int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, const T* pw,
                        const T* pw_binned, const T* fw, const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms,
                        T cutoff, bool full_list, const int64_t* offsets, int64_t capacity, int64_t* out_i,
                        int64_t* out_j, int64_t* out_shifts, cudaStream_t stream) {
    if (n == 0) return;
    fill_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(n, ptr, R, reps, pw, pw_binned, fw, wrap, bin_start, bin_atoms, cutoff,
                                                           full_list, offsets, capacity, out_i, out_j, out_shifts);
}

template <typename T>
void pair_vectors_cuda(const T* positions, const T* cell, const int64_t* batch, const int64_t* i, const int64_t* j,
                       const int64_t* shifts, int64_t P, T* vectors, T* distances, cudaStream_t stream) {
    if (P == 0) return;
    pair_vectors_kernel<T><<<blocks_for(P), kThreads, 0, stream>>>(positions, cell, batch, i, j, shifts, P, vectors,
                                                                   distances);
}

#define BG_INSTANTIATE(T)                                                                                        \
    template void neighbor_place_cuda<T>(const T*, int64_t, const int64_t*, int64_t, const nl::Replica<T>*, T*, T*, \
                                         int64_t*, int64_t*, cudaStream_t);                                      \
    template void neighbor_count_cuda<T>(int64_t, const int64_t*, int64_t, const nl::Replica<T>*, const T*,        \
                                         const T*, const T*, const int64_t*, const int64_t*, const int64_t*, T, bool,       \
                                         int64_t*, cudaStream_t);                                                \
    template void neighbor_fill_cuda<T>(int64_t, const int64_t*, int64_t, const nl::Replica<T>*, const T*,         \
                                        const T*, const T*, const int64_t*, const int64_t*, const int64_t*, T, bool,        \
                                        const int64_t*, int64_t, int64_t*, int64_t*, int64_t*, cudaStream_t);     \
    template void pair_vectors_cuda<T>(const T*, const T*, const int64_t*, const int64_t*, const int64_t*,         \
                                       const int64_t*, int64_t, T*, T*, cudaStream_t);
BG_INSTANTIATE(float)
BG_INSTANTIATE(double)
#undef BG_INSTANTIATE

}  // namespace boltzgrad
