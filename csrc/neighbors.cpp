// Batched neighbour search: schema and the CPU launcher (kernel math in neighbors.h).
//
// neighbor_search(positions [n, 3], ptr [R + 1], cell [R, 3, 3], pbc [R, 3], cutoff, full_list,
//                 max_pairs, mode) -> (i [P], j [P], shifts [P, 3], n_found [])
//   cell: effective cells (invertible, see neighbors.h); ptr: atom offsets of the replicas.
//   max_pairs < 0: P = n_found. max_pairs >= 0: P = max_pairs, the first min(n_found, max_pairs)
//   entries are valid, the rest are zeros; n_found > max_pairs means the list overflowed.
//   mode: 0 automatic, 1 brute force, 2 cell list (for every replica).
// Output order: sorted by (i, j, shift), independent of the number of threads.
//
// pair_vectors(positions, cell, batch, i, j, shifts) -> (vectors, distances): the differentiable
// part, r_j - r_i + shifts @ cell[batch[i]] and its length, in one pass (backward in Python).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "neighbors.h"

namespace boltzgrad {
namespace {

struct Entry {
    int64_t i, j, s[3];
};

struct VectorEmit {
    std::vector<Entry>* out;
    int64_t i;
    void operator()(int64_t j, int64_t s0, int64_t s1, int64_t s2) { out->push_back(Entry{i, j, {s0, s1, s2}}); }
};

bool entry_less(const Entry& a, const Entry& b) { return nl::pair_less(a.j, a.s, b.j, b.s); }

// Replica of each chunk start, found by binary search in ptr; then advanced atom by atom.
int64_t replica_of(const int64_t* ptr, int64_t R, int64_t atom) {
    return static_cast<int64_t>(std::upper_bound(ptr, ptr + R + 1, atom) - ptr) - 1;
}

void check_inputs(const at::Tensor& positions, const at::Tensor& ptr, const at::Tensor& cell, const at::Tensor& pbc,
                  double cutoff, int64_t mode) {
    TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "positions must be [n_atoms, 3], got ",
                positions.sizes());
    TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong, "ptr must be int64 [R + 1]");
    const int64_t R = ptr.size(0) - 1;
    TORCH_CHECK(cell.dim() == 3 && cell.size(0) == R && cell.size(1) == 3 && cell.size(2) == 3,
                "cell must be [R, 3, 3] with R = ", R, ", got ", cell.sizes());
    TORCH_CHECK(cell.scalar_type() == positions.scalar_type(), "cell must have the dtype of positions");
    TORCH_CHECK(pbc.dim() == 2 && pbc.size(0) == R && pbc.size(1) == 3 && pbc.scalar_type() == at::kBool,
                "pbc must be bool [R, 3]");
    TORCH_CHECK(cutoff > 0 && std::isfinite(cutoff), "cutoff must be finite and > 0, got ", cutoff);
    TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0 (auto), 1 (brute force) or 2 (cell list), got ", mode);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> search_cpu(const at::Tensor& positions_,
                                                                      const at::Tensor& ptr_, const at::Tensor& cell_,
                                                                      const at::Tensor& pbc_, double cutoff,
                                                                      bool full_list, int64_t max_pairs, int64_t mode) {
    const auto positions = positions_.contiguous();
    const auto ptr_t = ptr_.contiguous();
    const auto cell_t = cell_.to(at::kDouble).contiguous();
    const auto pbc_t = pbc_.contiguous();
    const int64_t n = positions.size(0);
    const int64_t R = ptr_t.size(0) - 1;
    const T* pos = positions.data_ptr<T>();
    const int64_t* ptr = ptr_t.data_ptr<int64_t>();
    const double* cell = cell_t.data_ptr<double>();
    const bool* pbc = pbc_t.data_ptr<bool>();
    TORCH_CHECK(ptr[0] == 0 && ptr[R] == n, "ptr must run from 0 to n_atoms");

    // per-replica setup: inverse cells, fractional ranges along non-periodic axes
    std::vector<double> inv(9 * R), fmin(3 * R, 0.0), fmax(3 * R, 0.0);
    std::vector<nl::Replica<T>> reps(R);
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            TORCH_CHECK(ptr[r + 1] >= ptr[r], "ptr must be non-decreasing");
            nl::invert3(cell + 9 * r, inv.data() + 9 * r);
            if (pbc[3 * r] && pbc[3 * r + 1] && pbc[3 * r + 2]) continue;
            double lo[3] = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(),
                            std::numeric_limits<double>::infinity()};
            double hi[3] = {-lo[0], -lo[1], -lo[2]};
            const double* iv = inv.data() + 9 * r;
            for (int64_t a = ptr[r]; a < ptr[r + 1]; ++a) {
                const double x[3] = {double(pos[3 * a]), double(pos[3 * a + 1]), double(pos[3 * a + 2])};
                double f[3];
                nl::frac_of(x, iv, f);
                for (int k = 0; k < 3; ++k) {
                    lo[k] = std::min(lo[k], f[k]);
                    hi[k] = std::max(hi[k], f[k]);
                }
            }
            for (int k = 0; k < 3; ++k) {
                fmin[3 * r + k] = ptr[r + 1] > ptr[r] ? lo[k] : 0.0;
                fmax[3 * r + k] = ptr[r + 1] > ptr[r] ? hi[k] : 0.0;
            }
        }
    });
    const int64_t n_bins = nl::setup_replicas<T>(R, cell, inv.data(), pbc, fmin.data(), fmax.data(), ptr, cutoff,
                                                 static_cast<int>(mode), reps.data());

    // place atoms: wrapped positions, wrapped fractional coordinates, wraps, bins
    std::vector<T> pw(3 * n), fw(3 * n);
    std::vector<int64_t> wrap(3 * n), bin(n);
    at::parallel_for(0, n, 1024, [&](int64_t a0, int64_t a1) {
        int64_t r = replica_of(ptr, R, a0);
        for (int64_t a = a0; a < a1; ++a) {
            while (a >= ptr[r + 1]) ++r;
            nl::atom_place(pos + 3 * a, reps[r], pw.data() + 3 * a, fw.data() + 3 * a, wrap.data() + 3 * a, &bin[a]);
        }
    });
    // counting sort of the atoms by bin (stable: atoms of a bin in index order)
    std::vector<int64_t> bin_start(n_bins + 1, 0), bin_atoms(n);
    for (int64_t a = 0; a < n; ++a) ++bin_start[bin[a] + 1];
    for (int64_t b = 0; b < n_bins; ++b) bin_start[b + 1] += bin_start[b];
    {
        std::vector<int64_t> fill(bin_start.begin(), bin_start.end() - 1);
        for (int64_t a = 0; a < n; ++a) bin_atoms[fill[bin[a]]++] = a;
    }
    std::vector<T> pw_binned(3 * n);
    at::parallel_for(0, n, 4096, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
            for (int b = 0; b < 3; ++b) pw_binned[3 * q + b] = pw[3 * bin_atoms[q] + b];
        }
    });

    // search: fixed chunks of atoms (independent of the thread count), each into its own buffer
    constexpr int64_t kChunk = 64;
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    std::vector<std::vector<Entry>> found(n_chunks);
    const T rc = static_cast<T>(cutoff);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
        std::vector<Entry> atom_buf;
        for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t a0 = ch * kChunk, a1 = std::min(n, a0 + kChunk);
            int64_t r = replica_of(ptr, R, a0);
            auto& out = found[ch];
            for (int64_t a = a0; a < a1; ++a) {
                while (a >= ptr[r + 1]) ++r;
                const auto& rep = reps[r];
                if (rep.brute) {  // emits in (j, shift) order already
                    VectorEmit emit{&out, a};
                    nl::visit_neighbors(a, rep, pw.data(), pw_binned.data(), fw.data(), wrap.data(), bin_start.data(),
                                        bin_atoms.data(), rc, full_list, emit);
                } else {
                    atom_buf.clear();
                    VectorEmit emit{&atom_buf, a};
                    nl::visit_neighbors(a, rep, pw.data(), pw_binned.data(), fw.data(), wrap.data(), bin_start.data(),
                                        bin_atoms.data(), rc, full_list, emit);
                    std::sort(atom_buf.begin(), atom_buf.end(), entry_less);
                    out.insert(out.end(), atom_buf.begin(), atom_buf.end());
                }
            }
        }
    });

    std::vector<int64_t> offset(n_chunks + 1, 0);
    for (int64_t ch = 0; ch < n_chunks; ++ch) offset[ch + 1] = offset[ch] + static_cast<int64_t>(found[ch].size());
    const int64_t total = offset[n_chunks];
    const int64_t P = max_pairs < 0 ? total : max_pairs;
    const auto opts = positions.options().dtype(at::kLong);
    auto out_i = at::zeros({P}, opts);
    auto out_j = at::zeros({P}, opts);
    auto out_s = at::zeros({P, 3}, opts);
    int64_t* oi = out_i.data_ptr<int64_t>();
    int64_t* oj = out_j.data_ptr<int64_t>();
    int64_t* os = out_s.data_ptr<int64_t>();
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t ch = c0; ch < c1; ++ch) {
            const auto& src = found[ch];
            for (size_t q = 0; q < src.size(); ++q) {
                const int64_t p = offset[ch] + static_cast<int64_t>(q);
                if (p >= P) break;
                oi[p] = src[q].i;
                oj[p] = src[q].j;
                os[3 * p] = src[q].s[0];
                os[3 * p + 1] = src[q].s[1];
                os[3 * p + 2] = src[q].s[2];
            }
        }
    });
    return {out_i, out_j, out_s, at::scalar_tensor(total, opts)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_search_cpu(
    const at::Tensor& positions, const at::Tensor& ptr, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
    bool full_list, int64_t max_pairs, int64_t mode) {
    check_inputs(positions, ptr, cell, pbc, cutoff, mode);
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "neighbor_search_cpu", [&] {
        out = search_cpu<scalar_t>(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode);
    });
    return out;
}

// pair_vectors(positions [n, 3], cell [R, 3, 3], batch [n], i [P], j [P], shifts [P, 3])
//   -> (vectors [P, 3] = r_j - r_i + shifts @ cell[batch[i]], distances [P])
std::tuple<at::Tensor, at::Tensor> pair_vectors_cpu(const at::Tensor& positions_, const at::Tensor& cell_,
                                                    const at::Tensor& batch_, const at::Tensor& i_,
                                                    const at::Tensor& j_, const at::Tensor& shifts_) {
    TORCH_CHECK(positions_.dim() == 2 && positions_.size(1) == 3, "positions must be [n_atoms, 3]");
    TORCH_CHECK(cell_.dim() == 3 && cell_.size(1) == 3 && cell_.size(2) == 3, "cell must be [R, 3, 3]");
    TORCH_CHECK(cell_.scalar_type() == positions_.scalar_type(), "cell must have the dtype of positions");
    TORCH_CHECK(batch_.dim() == 1 && batch_.size(0) == positions_.size(0), "batch must be [n_atoms]");
    TORCH_CHECK(i_.dim() == 1 && j_.sizes() == i_.sizes() && shifts_.dim() == 2 && shifts_.size(0) == i_.size(0) &&
                    shifts_.size(1) == 3,
                "i, j must be [P] and shifts [P, 3]");
    const auto positions = positions_.contiguous();
    const auto cell = cell_.contiguous();
    const auto batch = batch_.contiguous();
    const auto pi = i_.contiguous(), pj = j_.contiguous(), ps = shifts_.contiguous();
    const int64_t P = pi.size(0), n = positions.size(0), R = cell.size(0);
    auto vectors = at::empty({P, 3}, positions.options());
    auto distances = at::empty({P}, positions.options());
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "pair_vectors_cpu", [&] {
        const scalar_t* x = positions.data_ptr<scalar_t>();
        const scalar_t* c = cell.data_ptr<scalar_t>();
        const int64_t* bt = batch.data_ptr<int64_t>();
        const int64_t *ii = pi.data_ptr<int64_t>(), *jj = pj.data_ptr<int64_t>(), *ss = ps.data_ptr<int64_t>();
        scalar_t* v = vectors.data_ptr<scalar_t>();
        scalar_t* d = distances.data_ptr<scalar_t>();
        at::parallel_for(0, P, 8192, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                TORCH_CHECK(ii[p] >= 0 && ii[p] < n && jj[p] >= 0 && jj[p] < n, "pair ", p, " indexes outside [0, ",
                            n, ")");
                const int64_t r = bt[ii[p]];
                TORCH_CHECK(r >= 0 && r < R, "batch[", ii[p], "] = ", r, " outside [0, ", R, ")");
                nl::pair_vector(x, c + 9 * r, ii[p], jj[p], ss + 3 * p, v + 3 * p, d + p);
            }
        });
    });
    return {vectors, distances};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(boltzgrad, m) {
    m.def("neighbor_search(Tensor positions, Tensor ptr, Tensor cell, Tensor pbc, float cutoff, bool full_list, "
          "int max_pairs, int mode) -> (Tensor, Tensor, Tensor, Tensor)");
    m.def("pair_vectors(Tensor positions, Tensor cell, Tensor batch, Tensor i, Tensor j, Tensor shifts) "
          "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(boltzgrad, CPU, m) {
    m.impl("neighbor_search", &neighbor_search_cpu);
    m.impl("pair_vectors", &pair_vectors_cpu);
}

}  // namespace boltzgrad
