// CUDA dispatch of the neighbour search (torch side; kernels in neighbors.cu, math in ../neighbors.h).
//
// The per-replica setup (inverse cells, bin grids, mode) is computed on the host, so the
// op copies cell, pbc, ptr and the atoms' fractional ranges to the host once per call. The
// dynamic-size mode also reads the total pair count back; with max_pairs >= 0 the output shape
// is fixed and the count stays on the device.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "neighbors_launch.h"

namespace boltzgrad {
namespace {

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> search_cuda(const at::Tensor& positions_,
                                                                       const at::Tensor& ptr_, const at::Tensor& cell_,
                                                                       const at::Tensor& pbc_, double cutoff,
                                                                       bool full_list, int64_t max_pairs,
                                                                       int64_t mode) {
    const auto device = positions_.device();
    const auto positions = positions_.contiguous();
    const auto ptr = ptr_.contiguous();
    const auto ptr_h = ptr.to(at::kCPU).contiguous();
    const auto cell_h = cell_.to(at::kCPU).to(at::kDouble).contiguous();
    const auto pbc_h = pbc_.to(at::kCPU).contiguous();
    const int64_t n = positions.size(0);
    const int64_t R = ptr_h.size(0) - 1;
    const int64_t* p = ptr_h.data_ptr<int64_t>();
    const bool* pbc = pbc_h.data_ptr<bool>();
    TORCH_CHECK(p[0] == 0 && p[R] == n, "ptr must run from 0 to n_atoms");
    for (int64_t r = 0; r < R; ++r) TORCH_CHECK(p[r + 1] >= p[r], "ptr must be non-decreasing");

    std::vector<double> inv(9 * R), fmin(3 * R, 0.0), fmax(3 * R, 0.0);
    bool any_open = false;
    for (int64_t r = 0; r < R; ++r) {
        nl::invert3(cell_h.data_ptr<double>() + 9 * r, inv.data() + 9 * r);
        any_open = any_open || !(pbc[3 * r] && pbc[3 * r + 1] && pbc[3 * r + 2]);
    }
    const auto long_opts = positions.options().dtype(at::kLong);
    if (any_open && n > 0) {
        // fractional ranges of the atoms of every replica (used along non-periodic axes)
        auto inv_d = at::from_blob(inv.data(), {R, 3, 3}, at::TensorOptions().dtype(at::kDouble))
                         .to(positions.options());
        auto counts = ptr.slice(0, 1) - ptr.slice(0, 0, R);
        // one replica index per atom (the one-argument overload: with a second int it would repeat `counts` n times)
        auto batch = at::repeat_interleave(counts);
        auto frac = at::bmm(positions.unsqueeze(1), inv_d.index_select(0, batch)).squeeze(1);
        auto index = batch.unsqueeze(1).expand({n, 3});
        const double big = std::numeric_limits<double>::infinity();
        auto lo = at::full({R, 3}, big, positions.options()).scatter_reduce(0, index, frac, "amin", true);
        auto hi = at::full({R, 3}, -big, positions.options()).scatter_reduce(0, index, frac, "amax", true);
        auto empty = (counts == 0).unsqueeze(1);
        lo = lo.masked_fill(empty, 0.0).to(at::kCPU).to(at::kDouble).contiguous();
        hi = hi.masked_fill(empty, 0.0).to(at::kCPU).to(at::kDouble).contiguous();
        std::memcpy(fmin.data(), lo.data_ptr<double>(), sizeof(double) * 3 * R);
        std::memcpy(fmax.data(), hi.data_ptr<double>(), sizeof(double) * 3 * R);
    }
    std::vector<nl::Replica<T>> reps(R);
    const int64_t n_bins = nl::setup_replicas<T>(R, cell_h.data_ptr<double>(), inv.data(), pbc, fmin.data(),
                                                 fmax.data(), p, cutoff, static_cast<int>(mode), reps.data());
    auto reps_h = at::empty({static_cast<int64_t>(sizeof(nl::Replica<T>)) * R}, at::TensorOptions().dtype(at::kByte));
    if (R) std::memcpy(reps_h.data_ptr<uint8_t>(), reps.data(), sizeof(nl::Replica<T>) * R);
    const auto reps_d = reps_h.to(device);
    const auto* rep_ptr = reinterpret_cast<const nl::Replica<T>*>(reps_d.data_ptr<uint8_t>());

    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    auto pw = at::empty({n, 3}, positions.options());
    auto fw = at::empty({n, 3}, positions.options());
    auto wrap = at::empty({n, 3}, long_opts);
    auto bin = at::empty({n}, long_opts);
    neighbor_place_cuda<T>(positions.data_ptr<T>(), n, ptr.data_ptr<int64_t>(), R, rep_ptr, pw.data_ptr<T>(),
                           fw.data_ptr<T>(), wrap.data_ptr<int64_t>(), bin.data_ptr<int64_t>(), stream);
    // atoms sorted by bin (stable: index order inside a bin) and the start of every bin
    auto sorted = at::sort(bin, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const auto bin_atoms = std::get<1>(sorted).contiguous();
    const auto bin_start = at::searchsorted(std::get<0>(sorted), at::arange(n_bins + 1, long_opts)).contiguous();
    const auto pw_binned = pw.index_select(0, bin_atoms).contiguous();

    auto counts = at::zeros({n}, long_opts);
    const T rc = static_cast<T>(cutoff);
    neighbor_count_cuda<T>(n, ptr.data_ptr<int64_t>(), R, rep_ptr, pw.data_ptr<T>(), pw_binned.data_ptr<T>(), fw.data_ptr<T>(),
                           wrap.data_ptr<int64_t>(), bin_start.data_ptr<int64_t>(), bin_atoms.data_ptr<int64_t>(), rc,
                           full_list, counts.data_ptr<int64_t>(), stream);
    const auto incl = at::cumsum(counts, 0);
    const auto offsets = (incl - counts).contiguous();
    const auto total = n > 0 ? incl.select(0, n - 1).clone() : at::zeros({}, long_opts);
    const int64_t P = max_pairs < 0 ? total.item<int64_t>() : max_pairs;
    auto out_i = at::zeros({P}, long_opts);
    auto out_j = at::zeros({P}, long_opts);
    auto out_s = at::zeros({P, 3}, long_opts);
    neighbor_fill_cuda<T>(n, ptr.data_ptr<int64_t>(), R, rep_ptr, pw.data_ptr<T>(), pw_binned.data_ptr<T>(), fw.data_ptr<T>(),
                          wrap.data_ptr<int64_t>(), bin_start.data_ptr<int64_t>(), bin_atoms.data_ptr<int64_t>(), rc,
                          full_list, offsets.data_ptr<int64_t>(), P, out_i.data_ptr<int64_t>(),
                          out_j.data_ptr<int64_t>(), out_s.data_ptr<int64_t>(), stream);
    return {out_i, out_j, out_s, total};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_search_cuda_op(
    const at::Tensor& positions, const at::Tensor& ptr, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
    bool full_list, int64_t max_pairs, int64_t mode) {
    TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "positions must be [n_atoms, 3]");
    TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong, "ptr must be int64 [R + 1]");
    TORCH_CHECK(cell.dim() == 3 && cell.size(0) == ptr.size(0) - 1, "cell must be [R, 3, 3]");
    TORCH_CHECK(pbc.dim() == 2 && pbc.size(0) == ptr.size(0) - 1 && pbc.scalar_type() == at::kBool,
                "pbc must be bool [R, 3]");
    TORCH_CHECK(cutoff > 0, "cutoff must be > 0");
    TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0, 1 or 2");
    const c10::cuda::CUDAGuard guard(positions.device());
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "neighbor_search_cuda", [&] {
        out = search_cuda<scalar_t>(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode);
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor> pair_vectors_cuda_op(const at::Tensor& positions_, const at::Tensor& cell_,
                                                        const at::Tensor& batch_, const at::Tensor& i_,
                                                        const at::Tensor& j_, const at::Tensor& shifts_) {
    TORCH_CHECK(positions_.dim() == 2 && positions_.size(1) == 3, "positions must be [n_atoms, 3]");
    TORCH_CHECK(cell_.dim() == 3 && cell_.scalar_type() == positions_.scalar_type(), "cell must be [R, 3, 3]");
    TORCH_CHECK(i_.dim() == 1 && j_.sizes() == i_.sizes() && shifts_.dim() == 2 && shifts_.size(0) == i_.size(0),
                "i, j must be [P] and shifts [P, 3]");
    const c10::cuda::CUDAGuard guard(positions_.device());
    const auto positions = positions_.contiguous(), cell = cell_.contiguous(), batch = batch_.contiguous();
    const auto pi = i_.contiguous(), pj = j_.contiguous(), ps = shifts_.contiguous();
    const int64_t P = pi.size(0);
    auto vectors = at::empty({P, 3}, positions.options());
    auto distances = at::empty({P}, positions.options());
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "pair_vectors_cuda", [&] {
        pair_vectors_cuda<scalar_t>(positions.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(),
                                    batch.data_ptr<int64_t>(), pi.data_ptr<int64_t>(), pj.data_ptr<int64_t>(),
                                    ps.data_ptr<int64_t>(), P, vectors.data_ptr<scalar_t>(),
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
