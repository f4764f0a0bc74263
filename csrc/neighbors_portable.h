// Host side of the neighbour search shared by the CPU and CUDA ops (torch headers; not for nvcc):
//  * the argument checks of neighbor_search and pair_vectors, one function each for both devices;
//  * portable_search, the whole CUDA search (host setup, the place / count / fill passes over the kernel
//    bodies of neighbors.h, prefix sum, output), templated on where the kernel bodies run: the CUDA op runs
//    it with its launchers (cuda/neighbors_ops.cpp), the CPU op with at::parallel_for loops when the mode
//    carries kPortable (neighbors.cpp). So the CPU tests run the GPU search, launch aside.
// TORCH_CHECK messages here name the argument and format no integer values (formatting int64 values in
// them crashed under GCC 13 / torch 2.11 on a GPU machine); the Python wrapper checks first, with values.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "neighbors.h"

namespace boltzgrad {
namespace nl {

// Mode flag of neighbor_search (or-ed into mode 0, 1 or 2): run portable_search on the CPU too.
constexpr int64_t kPortable = 4;

inline bool is_float(const at::Tensor& t) {
    return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

// neighbor_search(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode): shapes, dtypes, devices.
inline void check_search_args(const at::Tensor& positions, const at::Tensor& ptr, const at::Tensor& cell,
                              const at::Tensor& pbc, double cutoff, int64_t mode) {
    TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "positions must be [n_atoms, 3]");
    TORCH_CHECK(is_float(positions), "positions must be float32 or float64");
    TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong, "ptr must be int64 [R + 1]");
    const int64_t R = ptr.size(0) - 1;
    TORCH_CHECK(cell.dim() == 3 && cell.size(0) == R && cell.size(1) == 3 && cell.size(2) == 3,
                "cell must be [R, 3, 3] with R + 1 the length of ptr");
    TORCH_CHECK(cell.scalar_type() == positions.scalar_type(), "cell must have the dtype of positions");
    TORCH_CHECK(pbc.dim() == 2 && pbc.size(0) == R && pbc.size(1) == 3 && pbc.scalar_type() == at::kBool,
                "pbc must be bool [R, 3]");
    TORCH_CHECK(ptr.device() == positions.device() && cell.device() == positions.device() &&
                    pbc.device() == positions.device(),
                "ptr, cell and pbc must be on the device of positions");
    TORCH_CHECK(cutoff > 0 && std::isfinite(cutoff), "cutoff must be finite and > 0");
    TORCH_CHECK(mode >= 0 && (mode & ~kPortable) <= 2,
                "mode must be 0 (auto), 1 (brute force) or 2 (cell list), plus 4 for the portable code path");
}

// The values of ptr (a host copy): offsets of R replicas of n atoms.
inline void check_ptr_values(const int64_t* p, int64_t R, int64_t n) {
    TORCH_CHECK(p[0] == 0 && p[R] == n, "ptr must run from 0 to n_atoms");
    for (int64_t r = 0; r < R; ++r) TORCH_CHECK(p[r + 1] >= p[r], "ptr must be non-decreasing");
}

// pair_vectors(positions, cell, batch, i, j, shifts): shapes, dtypes, devices. The index values are checked
// per pair by the kernel body (nl::pair_vector_at): an error on the CPU, a device-side assert on the GPU.
inline void check_pair_vectors_args(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& batch,
                                    const at::Tensor& i, const at::Tensor& j, const at::Tensor& shifts) {
    TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "positions must be [n_atoms, 3]");
    TORCH_CHECK(is_float(positions), "positions must be float32 or float64");
    TORCH_CHECK(cell.dim() == 3 && cell.size(1) == 3 && cell.size(2) == 3, "cell must be [R, 3, 3]");
    TORCH_CHECK(cell.scalar_type() == positions.scalar_type(), "cell must have the dtype of positions");
    TORCH_CHECK(batch.dim() == 1 && batch.size(0) == positions.size(0) && batch.scalar_type() == at::kLong,
                "batch must be int64 [n_atoms]");
    TORCH_CHECK(i.dim() == 1 && i.scalar_type() == at::kLong && j.sizes() == i.sizes() &&
                    j.scalar_type() == at::kLong,
                "i and j must be int64 [P]");
    TORCH_CHECK(shifts.dim() == 2 && shifts.size(0) == i.size(0) && shifts.size(1) == 3 &&
                    shifts.scalar_type() == at::kLong,
                "shifts must be int64 [P, 3]");
    const auto device = positions.device();
    TORCH_CHECK(cell.device() == device && batch.device() == device && i.device() == device &&
                    j.device() == device && shifts.device() == device,
                "cell, batch, i, j and shifts must be on the device of positions");
}

// The search as the CUDA op runs it. The per-replica setup (inverse cells, bin grids, mode) is computed on the
// host, so the op copies cell, pbc, ptr and the atoms' fractional ranges to the host once per call. The
// dynamic-size mode also reads the total pair count back; with max_pairs >= 0 the output shape is fixed and
// the count stays on the device. Kernels: place / count / fill, each a loop over the atoms around
// nl::place_one / count_one / fill_one (on the GPU, kernels on the current stream).
template <typename T, typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> portable_search(const at::Tensor& positions_,
                                                                           const at::Tensor& ptr_,
                                                                           const at::Tensor& cell_,
                                                                           const at::Tensor& pbc_, double cutoff,
                                                                           bool full_list, int64_t max_pairs,
                                                                           int64_t mode, const Kernels& kernels) {
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
    check_ptr_values(p, R, n);

    std::vector<double> inv(9 * R), fmin(3 * R, 0.0), fmax(3 * R, 0.0);
    bool any_open = false;
    for (int64_t r = 0; r < R; ++r) {
        invert3(cell_h.data_ptr<double>() + 9 * r, inv.data() + 9 * r);
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
    std::vector<Replica<T>> reps(R);
    const int64_t n_bins = setup_replicas<T>(R, cell_h.data_ptr<double>(), inv.data(), pbc, fmin.data(), fmax.data(),
                                             p, cutoff, static_cast<int>(mode & ~kPortable), reps.data());
    auto reps_h = at::empty({static_cast<int64_t>(sizeof(Replica<T>)) * R}, at::TensorOptions().dtype(at::kByte));
    if (R) std::memcpy(reps_h.data_ptr<uint8_t>(), reps.data(), sizeof(Replica<T>) * R);
    const auto reps_d = reps_h.to(device);
    const auto* rep_ptr = reinterpret_cast<const Replica<T>*>(reps_d.data_ptr<uint8_t>());

    auto pw = at::empty({n, 3}, positions.options());
    auto fw = at::empty({n, 3}, positions.options());
    auto wrap = at::empty({n, 3}, long_opts);
    auto bin = at::empty({n}, long_opts);
    kernels.place(n, positions.data_ptr<T>(), ptr.data_ptr<int64_t>(), R, rep_ptr, pw.data_ptr<T>(),
                  fw.data_ptr<T>(), wrap.data_ptr<int64_t>(), bin.data_ptr<int64_t>());
    // atoms sorted by bin (stable: index order inside a bin) and the start of every bin
    auto sorted = at::sort(bin, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const auto bin_atoms = std::get<1>(sorted).contiguous();
    const auto bin_start = at::searchsorted(std::get<0>(sorted), at::arange(n_bins + 1, long_opts)).contiguous();
    const auto pw_binned = pw.index_select(0, bin_atoms).contiguous();

    const SearchData<T> data{ptr.data_ptr<int64_t>(),    R,
                             rep_ptr,                    pw.data_ptr<T>(),
                             pw_binned.data_ptr<T>(),    fw.data_ptr<T>(),
                             wrap.data_ptr<int64_t>(),   bin_start.data_ptr<int64_t>(),
                             bin_atoms.data_ptr<int64_t>(), static_cast<T>(cutoff),
                             full_list};
    auto counts = at::zeros({n}, long_opts);
    kernels.count(n, data, counts.data_ptr<int64_t>());
    const auto incl = at::cumsum(counts, 0);
    const auto offsets = (incl - counts).contiguous();
    const auto total = n > 0 ? incl.select(0, n - 1).clone() : at::zeros({}, long_opts);
    const int64_t P = max_pairs < 0 ? total.item<int64_t>() : max_pairs;
    auto out_i = at::zeros({P}, long_opts);
    auto out_j = at::zeros({P}, long_opts);
    auto out_s = at::zeros({P, 3}, long_opts);
    kernels.fill(n, data, offsets.data_ptr<int64_t>(), P, out_i.data_ptr<int64_t>(), out_j.data_ptr<int64_t>(),
                 out_s.data_ptr<int64_t>());
    return {out_i, out_j, out_s, total};
}

}  // namespace nl
}  // namespace boltzgrad
