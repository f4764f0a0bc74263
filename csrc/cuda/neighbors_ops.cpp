// CUDA dispatch of the neighbour search (torch side; kernels in neighbors.cu, kernel bodies in ../neighbors.h).
// The search is nl::portable_search (../neighbors_portable.h) with the CUDA launchers, and the argument checks
// are those of the CPU op: the CPU op runs the same code under its kPortable mode flag, launch aside.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "../neighbors_portable.h"
#include "neighbors_launch.h"

namespace boltzgrad {
namespace {

// The kernels of nl::portable_search: neighbors.cu's launchers on one stream.
struct CudaKernels {
    cudaStream_t stream;

    template <typename T>
    void place(int64_t n, const T* positions, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, T* pw, T* fw,
               int64_t* wrap, int64_t* bin) const {
        neighbor_place_cuda<T>(positions, n, ptr, R, reps, pw, fw, wrap, bin, stream);
    }
    template <typename T>
    void count(int64_t n, const nl::SearchData<T>& s, int64_t* counts) const {
        neighbor_count_cuda<T>(n, s, counts, stream);
    }
    template <typename T>
    void fill(int64_t n, const nl::SearchData<T>& s, const int64_t* offsets, int64_t capacity, int64_t* oi,
              int64_t* oj, int64_t* os) const {
        neighbor_fill_cuda<T>(n, s, offsets, capacity, oi, oj, os, stream);
    }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_search_cuda_op(
    const at::Tensor& positions, const at::Tensor& ptr, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
    bool full_list, int64_t max_pairs, int64_t mode) {
    nl::check_search_args(positions, ptr, cell, pbc, cutoff, mode);
    const c10::cuda::CUDAGuard guard(positions.device());
    const CudaKernels kernels{c10::cuda::getCurrentCUDAStream().stream()};
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "neighbor_search_cuda", [&] {
        out = nl::portable_search<scalar_t>(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode, kernels);
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor> pair_vectors_cuda_op(const at::Tensor& positions_, const at::Tensor& cell_,
                                                        const at::Tensor& batch_, const at::Tensor& i_,
                                                        const at::Tensor& j_, const at::Tensor& shifts_) {
    nl::check_pair_vectors_args(positions_, cell_, batch_, i_, j_, shifts_);
    const c10::cuda::CUDAGuard guard(positions_.device());
    const auto positions = positions_.contiguous(), cell = cell_.contiguous(), batch = batch_.contiguous();
    const auto pi = i_.contiguous(), pj = j_.contiguous(), ps = shifts_.contiguous();
    const int64_t P = pi.size(0), n = positions.size(0), R = cell.size(0);
    auto vectors = at::empty({P, 3}, positions.options());
    auto distances = at::empty({P}, positions.options());
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "pair_vectors_cuda", [&] {
        pair_vectors_cuda<scalar_t>(positions.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(),
                                    batch.data_ptr<int64_t>(), pi.data_ptr<int64_t>(), pj.data_ptr<int64_t>(),
                                    ps.data_ptr<int64_t>(), P, n, R, vectors.data_ptr<scalar_t>(),
                                    distances.data_ptr<scalar_t>(), stream);
    });
    return {vectors, distances};
}

}  // namespace

TORCH_LIBRARY_IMPL(boltzgrad, CUDA, m) {
    m.impl("neighbor_search", &neighbor_search_cuda_op);
    m.impl("pair_vectors", &pair_vectors_cuda_op);
}

}  // namespace boltzgrad
