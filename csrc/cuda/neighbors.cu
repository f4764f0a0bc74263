// CUDA launchers of the neighbour search: one thread per atom. Every kernel is a grid-stride loop around
// a kernel body of ../neighbors.h (place_one, count_one, fill_one, pair_vector_at), which the CPU op also
// runs under its portable mode flag, so the CPU tests test these kernels' math.
// Two passes: count the neighbours of each atom, then (after a prefix sum on the torch side)
// write them at the atom's offset and sort the atom's segment by (j, shift).
#include <cassert>
#include <cuda_runtime.h>

#include "launch.h"
#include "neighbors_launch.h"

namespace boltzgrad {
namespace {

template <typename T>
__global__ void place_kernel(const T* positions, int64_t n, const int64_t* ptr, int64_t R,
                             const nl::Replica<T>* reps, T* pw, T* fw, int64_t* wrap, int64_t* bin) {
    for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(blockDim.x) * gridDim.x) {
        nl::place_one(a, positions, ptr, R, reps, pw, fw, wrap, bin);
    }
}

template <typename T>
__global__ void count_kernel(int64_t n, const nl::SearchData<T> s, int64_t* counts) {
    for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(blockDim.x) * gridDim.x) {
        counts[a] = nl::count_one(a, s);
    }
}

template <typename T>
__global__ void fill_kernel(int64_t n, const nl::SearchData<T> s, const int64_t* offsets, int64_t capacity,
                            int64_t* oi, int64_t* oj, int64_t* os) {
    for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(blockDim.x) * gridDim.x) {
        nl::fill_one(a, s, offsets, capacity, oi, oj, os);
    }
}

template <typename T>
__global__ void pair_vectors_kernel(const T* positions, const T* cell, const int64_t* batch, const int64_t* i,
                                    const int64_t* j, const int64_t* shifts, int64_t P, int64_t n_atoms,
                                    int64_t n_replicas, T* vectors, T* distances) {
    for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < P; p += int64_t(blockDim.x) * gridDim.x) {
        if (!nl::pair_vector_at(p, positions, cell, batch, i, j, shifts, n_atoms, n_replicas, vectors, distances)) {
            // the CPU op's index check, as a device-side assert (like torch's own indexing kernels); not
            // compiled out by NDEBUG
            __assert_fail("pair_vectors: i and j must index positions and batch[i] cell", __FILE__, __LINE__,
                          __func__);
        }
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
void neighbor_count_cuda(int64_t n, const nl::SearchData<T>& s, int64_t* counts, cudaStream_t stream) {
    if (n == 0) return;
    count_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(n, s, counts);
}

template <typename T>
void neighbor_fill_cuda(int64_t n, const nl::SearchData<T>& s, const int64_t* offsets, int64_t capacity,
                        int64_t* out_i, int64_t* out_j, int64_t* out_shifts, cudaStream_t stream) {
    if (n == 0) return;
    fill_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(n, s, offsets, capacity, out_i, out_j, out_shifts);
}

template <typename T>
void pair_vectors_cuda(const T* positions, const T* cell, const int64_t* batch, const int64_t* i, const int64_t* j,
                       const int64_t* shifts, int64_t P, int64_t n_atoms, int64_t n_replicas, T* vectors,
                       T* distances, cudaStream_t stream) {
    if (P == 0) return;
    pair_vectors_kernel<T><<<blocks_for(P), kThreads, 0, stream>>>(positions, cell, batch, i, j, shifts, P, n_atoms,
                                                                   n_replicas, vectors, distances);
}

#define BG_INSTANTIATE(T)                                                                                          \
    template void neighbor_place_cuda<T>(const T*, int64_t, const int64_t*, int64_t, const nl::Replica<T>*, T*, T*, \
                                         int64_t*, int64_t*, cudaStream_t);                                        \
    template void neighbor_count_cuda<T>(int64_t, const nl::SearchData<T>&, int64_t*, cudaStream_t);              \
    template void neighbor_fill_cuda<T>(int64_t, const nl::SearchData<T>&, const int64_t*, int64_t, int64_t*,      \
                                        int64_t*, int64_t*, cudaStream_t);                                         \
    template void pair_vectors_cuda<T>(const T*, const T*, const int64_t*, const int64_t*, const int64_t*,         \
                                       const int64_t*, int64_t, int64_t, int64_t, T*, T*, cudaStream_t);
BG_INSTANTIATE(float)
BG_INSTANTIATE(double)
#undef BG_INSTANTIATE

}  // namespace boltzgrad
