// Declarations of the raw-pointer CUDA launchers of the neighbour search (defined in neighbors.cu,
// called from neighbors_ops.cpp). Kernel bodies in ../neighbors.h.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

#include "../neighbors.h"

namespace boltzgrad {

// Wrapped positions/fractional coordinates, wraps and bins of every atom (nl::place_one).
template <typename T>
void neighbor_place_cuda(const T* positions, int64_t n, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps,
                         T* pw, T* fw, int64_t* wrap, int64_t* bin, cudaStream_t stream);

// Number of neighbours of every atom (pass one of two, nl::count_one).
template <typename T>
void neighbor_count_cuda(int64_t n, const nl::SearchData<T>& s, int64_t* counts, cudaStream_t stream);

// Writes atom a's neighbours at offsets[a] (entries at or beyond capacity are dropped) and sorts
// them by (j, shift) (pass two of two, nl::fill_one).
template <typename T>
void neighbor_fill_cuda(int64_t n, const nl::SearchData<T>& s, const int64_t* offsets, int64_t capacity,
                        int64_t* out_i, int64_t* out_j, int64_t* out_shifts, cudaStream_t stream);

// vectors [P, 3] = r_j - r_i + shifts @ cell[batch[i]] and distances [P] (nl::pair_vector_at); an index out of
// range (i, j outside [0, n_atoms), batch[i] outside [0, n_replicas)) is a device-side assert.
template <typename T>
void pair_vectors_cuda(const T* positions, const T* cell, const int64_t* batch, const int64_t* i, const int64_t* j,
                       const int64_t* shifts, int64_t P, int64_t n_atoms, int64_t n_replicas, T* vectors,
                       T* distances, cudaStream_t stream);

}  // namespace boltzgrad
