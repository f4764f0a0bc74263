// Declarations of the raw-pointer CUDA launchers of the neighbour search (defined in neighbors.cu,
// called from neighbors_ops.cpp). Kernel math in ../neighbors.h.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

#include "../neighbors.h"

namespace boltzgrad {

// Wrapped positions/fractional coordinates, wraps and bins of every atom (nl::atom_place).
template <typename T>
void neighbor_place_cuda(const T* positions, int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps,
                         T* pw, T* fw, int64_t* wrap, int64_t* bin, cudaStream_t stream);

// Number of neighbours of every atom (pass one of two).
template <typename T>
void neighbor_count_cuda(int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, const T* pw,
                         const T* pw_binned, const T* fw, const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms,
                         T cutoff, bool full_list, int64_t* counts, cudaStream_t stream);

// Writes atom a's neighbours at offsets[a] (entries at or beyond capacity are dropped) and sorts
// them by (j, shift) (pass two of two).
template <typename T>
void neighbor_fill_cuda(int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, const T* pw,
                        const T* pw_binned, const T* fw, const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms,
                        T cutoff, bool full_list, const int64_t* offsets, int64_t capacity, int64_t* out_i,
                        int64_t* out_j, int64_t* out_shifts, cudaStream_t stream);

// vectors [P, 3] = r_j - r_i + shifts @ cell[batch[i]] and distances [P] (nl::pair_vector).
template <typename T>
void pair_vectors_cuda(const T* positions, const T* cell, const int64_t* batch, const int64_t* i, const int64_t* j,
                       const int64_t* shifts, int64_t P, T* vectors, T* distances, cudaStream_t stream);

}  // namespace boltzgrad
