// Batched neighbour search: schema and the CPU launcher (kernel math in neighbors.h).
//
// neighbor_search(positions [n, 3], ptr [R + 1], cell [R, 3, 3], pbc [R, 3], cutoff, full_list,
//                 max_pairs, mode) -> (i [P], j [P], shifts [P, 3], n_found [])
//   cell: effective cells (invertible, see neighbors.h); ptr: atom offsets of the replicas.
//   max_pairs < 0: P = n_found. max_pairs >= 0: P = max_pairs, the first min(n_found, max_pairs)
//   entries are valid, the rest are zeros; n_found > max_pairs means the list overflowed.
//   mode: 0 automatic, 1 brute force, 2 cell list (for every replica); plus nl::kPortable (4): the CPU op runs
//   nl::portable_search, the CUDA op's search with the kernel bodies of neighbors.h in at::parallel_for loops
//   (the CUDA op always runs it; the flag changes nothing there). Without the flag the CPU op runs search_cpu
//   below, vectorised loops of its own over the same predicates (nl::pair_wanted, nl::self_image_ok); the
//   two agree pair for pair and in order (tests/test_neighbors.py), except in an overflowed fixed-capacity
//   list, where the atom cut by the capacity may keep other entries (nl::fill_one).
// Output order: sorted by (i, j, shift), independent of the number of threads, on both paths and devices.
// Argument checks: nl::check_search_args / check_pair_vectors_args (neighbors_portable.h), shared with CUDA.
//
// pair_vectors(positions, cell, batch, i, j, shifts) -> (vectors, distances): the differentiable
// part, r_j - r_i + shifts @ cell[batch[i]] and its length, in one pass (backward in Python).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "neighbors.h"
#include "neighbors_portable.h"

namespace boltzgrad {
namespace {

// One neighbour j of an atom (the atom itself is implicit: entries are stored per atom) with the
// shift. Shifts are stored as int32 (24-byte entries: the buffers are memory-bound); the search checks
// that the atoms' wraps leave room for that (kMaxWrap).
struct Entry {
    int64_t j;
    int32_t s[3];
};
constexpr int64_t kMaxWrap = int64_t(1) << 29;

struct VectorEmit {
    std::vector<Entry>* out;
    void operator()(int64_t j, int64_t s0, int64_t s1, int64_t s2) {
        out->push_back(Entry{j, {static_cast<int32_t>(s0), static_cast<int32_t>(s1), static_cast<int32_t>(s2)}});
    }
};

bool entry_less(const Entry& a, const Entry& b) {
    if (a.j != b.j) return a.j < b.j;
    if (a.s[0] != b.s[0]) return a.s[0] < b.s[0];
    if (a.s[1] != b.s[1]) return a.s[1] < b.s[1];
    return a.s[2] < b.s[2];
}

// Sorts one atom's entries by (j, shift): insertion sort up to 128 entries (a full list at liquid
// density has ~50 per atom; ~10% faster there than std::sort), std::sort beyond.
void sort_entries(Entry* e, int64_t m) {
    if (m > 128) {
        std::sort(e, e + m, entry_less);
        return;
    }
    for (int64_t a = 1; a < m; ++a) {
        const Entry x = e[a];
        int64_t b = a - 1;
        while (b >= 0 && entry_less(x, e[b])) {
            e[b + 1] = e[b];
            --b;
        }
        e[b + 1] = x;
    }
}

// Atoms in bin order for the cell-list scan: wrapped positions per component, atom indices,
// wraps (3 per slot) and bin offsets.
template <typename T>
struct Binned {
    const T *x, *y, *z;
    const int64_t* atom;
    const int64_t* wrap;
    const int64_t* bin_start;
};

// Cell-list neighbours of atom i (wrapped position xi, global bin) of a cell-list replica, appended
// to out (unsorted). Same stencil and pair test as nl::visit_neighbors, organised for the CPU: along
// the last axis the bins of a stencil row are adjacent in bin order, so a row is one contiguous range
// of slots (or a few, where it wraps around a periodic axis, each with its own image). Each range is
// tested by a branch-free loop that compacts the hits into `hits`.
template <typename T>
void cell_neighbors(int64_t i, const nl::Replica<T>& rep, const T* xi, const int64_t* wi, int64_t bin,
                    const Binned<T>& bd, T rc2, bool full_list, std::vector<int64_t>& hits, std::vector<Entry>& out) {
    const int64_t n1 = rep.n_bins[1], n2 = rep.n_bins[2];
    const int64_t local = bin - rep.first_bin;
    const int64_t b[3] = {local / (n1 * n2), (local / n2) % n1, local % n2};
    const int64_t lo2 = b[2] - rep.reach[2], hi2 = b[2] + rep.reach[2];
    int64_t t0, t1, k0, k1;
    for (int64_t m0 = -rep.reach[0]; m0 <= rep.reach[0]; ++m0) {
        if (!nl::axis_step(b[0], m0, rep.n_bins[0], rep.periodic[0], t0, k0)) continue;
        for (int64_t m1 = -rep.reach[1]; m1 <= rep.reach[1]; ++m1) {
            if (!nl::axis_step(b[1], m1, rep.n_bins[1], rep.periodic[1], t1, k1)) continue;
            const int64_t row = rep.first_bin + (t0 * n1 + t1) * n2;
            int64_t k2_lo = 0, k2_hi = 0;
            if (rep.periodic[2]) {
                k2_lo = nl::floor_div(lo2, n2);
                k2_hi = nl::floor_div(hi2, n2);
            }
            for (int64_t k2 = k2_lo; k2 <= k2_hi; ++k2) {
                const int64_t ta = std::max(lo2 - k2 * n2, int64_t(0));
                const int64_t tb = std::min(hi2 - k2 * n2, n2 - 1);
                if (ta > tb) continue;
                const int64_t qa = bd.bin_start[row + ta], qb = bd.bin_start[row + tb + 1];
                if (qa == qb) continue;
                T base[3];
                nl::image_offset(rep.cell, k0, k1, k2, base);
                for (int c = 0; c < 3; ++c) base[c] -= xi[c];
                const bool self_ok = nl::self_image_ok(k0, k1, k2, full_list);
                if (static_cast<int64_t>(hits.size()) < qb - qa) hits.resize(qb - qa);
                int64_t* h = hits.data();
                int64_t cnt = 0;
                const T *x = bd.x, *y = bd.y, *z = bd.z;
                const int64_t* atom = bd.atom;
                for (int64_t q = qa; q < qb; ++q) {
                    const T dx = x[q] + base[0], dy = y[q] + base[1], dz = z[q] + base[2];
                    const T d2 = dx * dx + dy * dy + dz * dz;
                    const int64_t j = atom[q];
                    const bool ok = (d2 < rc2) & nl::pair_wanted(i, j, full_list, self_ok);
                    h[cnt] = q;
                    cnt += ok;
                }
                const int32_t s0 = static_cast<int32_t>(k0 + wi[0]), s1 = static_cast<int32_t>(k1 + wi[1]),
                              s2 = static_cast<int32_t>(k2 + wi[2]);
                for (int64_t e = 0; e < cnt; ++e) {
                    const int64_t* wj = bd.wrap + 3 * h[e];
                    out.push_back(Entry{atom[h[e]], {static_cast<int32_t>(s0 - wj[0]), static_cast<int32_t>(s1 - wj[1]),
                                                     static_cast<int32_t>(s2 - wj[2])}});
                }
            }
        }
    }
}

// True when brute force needs at most one image per pair: along every periodic axis the cutoff
// (with the fractional slack) is below half the plane distance. Molecules always qualify.
template <typename T>
bool single_image(const nl::Replica<T>& rep) {
    for (int a = 0; a < 3; ++a) {
        if (rep.periodic[a] && !(double(rep.rc_over_d[a]) + nl::kFracSlack < 0.5)) return false;
    }
    return true;
}

// Brute-force neighbours of atom i for a single_image replica, emitted in j order. The only image
// of j that can be within the cutoff is the nearest one in fractional coordinates, k_a = -round(f'_j - f'_i)
// along periodic axes (f' in [0, 1), so k_a in {-1, 0, 1}) and 0 along the others: one
// branch-free loop over the replica's atoms. Same arithmetic as nl::visit_neighbors, and the
// images it skips there (outside the fractional range) are farther than the cutoff, so the
// output is identical. Periodic = false: a replica without periodic axes (all k = 0).
template <bool Periodic, typename T>
void single_image_neighbors(int64_t i, const nl::Replica<T>& rep, const T* pw, const T* fw, const int64_t* wrap,
                            T rc2, bool full_list, std::vector<int64_t>& hits, std::vector<Entry>& out) {
    const int64_t j0 = full_list ? rep.atom_begin : i + 1;
    if (j0 >= rep.atom_end) return;
    if (static_cast<int64_t>(hits.size()) < rep.atom_end - j0) hits.resize(rep.atom_end - j0);
    const T* c = rep.cell;
    const T xi[3] = {pw[3 * i], pw[3 * i + 1], pw[3 * i + 2]};
    const T fi[3] = {fw[3 * i], fw[3 * i + 1], fw[3 * i + 2]};
    const T per[3] = {T(rep.periodic[0]), T(rep.periodic[1]), T(rep.periodic[2])};
    const T half = T(0.5);
    int64_t* h = hits.data();
    int64_t cnt = 0;
    for (int64_t j = j0; j < rep.atom_end; ++j) {
        T k[3] = {T(0), T(0), T(0)};
        if (Periodic) {
            for (int a = 0; a < 3; ++a) {
                const T df = fw[3 * j + a] - fi[a];
                k[a] = per[a] * (T(df < -half) - T(df > half));
            }
        }
        T d2 = T(0);
        for (int b = 0; b < 3; ++b) {
            const T base = (k[0] * c[b] + k[1] * c[3 + b] + k[2] * c[6 + b]) - xi[b];
            const T d = pw[3 * j + b] + base;
            d2 += d * d;
        }
        h[cnt] = j;
        cnt += (d2 < rc2) & (j != i);
    }
    const int64_t* wi = wrap + 3 * i;
    for (int64_t e = 0; e < cnt; ++e) {
        const int64_t j = h[e];
        int32_t s[3];
        for (int a = 0; a < 3; ++a) {
            const T df = fw[3 * j + a] - fi[a];
            const int64_t ka = Periodic && rep.periodic[a] ? int64_t(df < -half) - int64_t(df > half) : 0;
            s[a] = static_cast<int32_t>(ka + wi[a] - wrap[3 * j + a]);
        }
        out.push_back(Entry{j, {s[0], s[1], s[2]}});
    }
}

// The fractional range of each non-periodic replica's atoms (fmin, fmax; zeros for periodic or empty replicas)
// and every replica's inverse cell, for nl::setup_replicas.
template <typename T>
void replica_ranges(const T* pos, const int64_t* ptr, int64_t R, const double* cell, const bool* pbc,
                    std::vector<double>& inv, std::vector<double>& fmin, std::vector<double>& fmax) {
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
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
}

// The atoms placed in their boxes and sorted by bin (counting sort, stable), with the wrapped positions in bin
// order one array per component (contiguous scans in cell_neighbors).
template <typename T>
struct Placed {
    std::vector<T> pw, fw, bx, by, bz;
    std::vector<int64_t> wrap, bin, bin_start, bin_atoms, bwrap;
    Binned<T> binned() const {
        return Binned<T>{bx.data(), by.data(), bz.data(), bin_atoms.data(), bwrap.data(), bin_start.data()};
    }
};

template <typename T>
Placed<T> place_atoms(const T* pos, int64_t n, const int64_t* ptr, int64_t R, const std::vector<nl::Replica<T>>& reps,
                      int64_t n_bins) {
    Placed<T> P;
    auto &pw = P.pw, &fw = P.fw, &bx = P.bx, &by = P.by, &bz = P.bz;
    auto &wrap = P.wrap, &bin = P.bin, &bin_start = P.bin_start, &bin_atoms = P.bin_atoms, &bwrap = P.bwrap;
    // place atoms: wrapped positions, wrapped fractional coordinates, wraps, bins
    pw.resize(3 * n);
    fw.resize(3 * n);
    wrap.resize(3 * n);
    bin.resize(n);
    at::parallel_for(0, n, 1024, [&](int64_t a0, int64_t a1) {
        int64_t r = nl::replica_of_atom(ptr, R, a0);
        for (int64_t a = a0; a < a1; ++a) {
            while (a >= ptr[r + 1]) ++r;
            nl::atom_place(pos + 3 * a, reps[r], pw.data() + 3 * a, fw.data() + 3 * a, wrap.data() + 3 * a, &bin[a]);
        }
    });
    // counting sort of the atoms by bin (stable: atoms of a bin in index order)
    bin_start.assign(n_bins + 1, 0);
    bin_atoms.resize(n);
    int64_t max_wrap = 0;
    for (int64_t a = 0; a < n; ++a) {
        ++bin_start[bin[a] + 1];
        for (int c = 0; c < 3; ++c) max_wrap = std::max(max_wrap, std::abs(wrap[3 * a + c]));
    }
    // (the Python wrapper checks this bound first, with the value)
    TORCH_CHECK_VALUE(max_wrap <= kMaxWrap, "positions are more than 2**29 box lengths outside their box");
    for (int64_t b = 0; b < n_bins; ++b) bin_start[b + 1] += bin_start[b];
    {
        std::vector<int64_t> fill(bin_start.begin(), bin_start.end() - 1);
        for (int64_t a = 0; a < n; ++a) bin_atoms[fill[bin[a]]++] = a;
    }
    // wrapped positions in bin order, one array per component (contiguous scans in cell_neighbors)
    bx.resize(n);
    by.resize(n);
    bz.resize(n);
    bwrap.resize(3 * n);
    at::parallel_for(0, n, 4096, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
            const int64_t a = bin_atoms[q];
            bx[q] = pw[3 * a];
            by[q] = pw[3 * a + 1];
            bz[q] = pw[3 * a + 2];
            for (int c = 0; c < 3; ++c) bwrap[3 * q + c] = wrap[3 * a + c];
        }
    });
    return P;
}

// Fixed chunks of slots (independent of the thread count), each into its own buffer; every atom's entries are
// contiguous and sorted by (j, shift), at start[a] in chunk slot[a] / kChunk.
constexpr int64_t kChunk = 256;

struct Found {
    std::vector<std::vector<Entry>> chunks;
    std::vector<int64_t> slot, start, count;
};

// The pairs of every atom. The atoms of replica r occupy slots [ptr[r], ptr[r + 1]) both in index order and in
// bin order. Slot q is atom q of a brute-force replica, or atom bin_atoms[q] of a cell-list replica (bin order:
// neighbouring atoms are processed together and share cached bins).
template <typename T>
Found find_pairs(int64_t n, const int64_t* ptr, int64_t R, const std::vector<nl::Replica<T>>& reps,
                 const Placed<T>& placed, double cutoff, bool full_list) {
    const auto binned = placed.binned();
    const auto &pw = placed.pw, &fw = placed.fw, &bwrap = placed.bwrap;
    const auto &wrap = placed.wrap, &bin = placed.bin, &bin_atoms = placed.bin_atoms;
    Found F;
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    F.chunks.resize(n_chunks);
    F.slot.resize(n);
    F.start.resize(n);
    F.count.resize(n);
    auto &found = F.chunks;
    auto &atom_slot = F.slot, &atom_start = F.start, &atom_count = F.count;
    const T rc = static_cast<T>(cutoff);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
        std::vector<int64_t> hits;
        size_t expect = 0;  // entries of the previous chunk: the next one's capacity
        for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t q0 = ch * kChunk, q1 = std::min(n, q0 + kChunk);
            int64_t r = nl::replica_of_atom(ptr, R, q0);
            auto& out = found[ch];
            out.reserve(expect + expect / 8);
            for (int64_t q = q0; q < q1; ++q) {
                while (q >= ptr[r + 1]) ++r;
                const auto& rep = reps[r];
                const int64_t start = static_cast<int64_t>(out.size());
                int64_t a = q;
                if (rep.brute && !rep.periodic[0] && !rep.periodic[1] && !rep.periodic[2]) {
                    single_image_neighbors<false>(a, rep, pw.data(), fw.data(), wrap.data(), rc * rc, full_list, hits,
                                                  out);
                } else if (rep.brute && single_image(rep)) {
                    single_image_neighbors<true>(a, rep, pw.data(), fw.data(), wrap.data(), rc * rc, full_list, hits,
                                                 out);
                } else if (rep.brute) {  // emits in (j, shift) order already; reads no bins
                    VectorEmit emit{&out};
                    nl::visit_neighbors<T>(a, rep, pw.data(), nullptr, fw.data(), wrap.data(), nullptr, nullptr, rc,
                                        full_list, emit);
                } else {
                    a = bin_atoms[q];
                    cell_neighbors(a, rep, pw.data() + 3 * a, bwrap.data() + 3 * q, bin[a], binned, rc * rc, full_list,
                                   hits, out);
                    sort_entries(out.data() + start, static_cast<int64_t>(out.size()) - start);
                }
                atom_slot[a] = q;
                atom_start[a] = start;
                atom_count[a] = static_cast<int64_t>(out.size()) - start;
            }
            expect = out.size();
        }
    });
    return F;
}

// The pairs in (i, j, shift) order into tensors of P rows (P = max_pairs, or all when max_pairs < 0; rows past the
// total zeroed), and the total.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> write_pairs(const Found& F, int64_t n, int64_t max_pairs,
                                                                       const at::TensorOptions& opts) {
    const auto &found = F.chunks;
    const auto &atom_slot = F.slot, &atom_start = F.start, &atom_count = F.count;
    std::vector<int64_t> offset(n + 1, 0);
    for (int64_t a = 0; a < n; ++a) offset[a + 1] = offset[a] + atom_count[a];
    const int64_t total = offset[n];
    const int64_t P = max_pairs < 0 ? total : max_pairs;
    auto out_i = at::empty({P}, opts);
    auto out_j = at::empty({P}, opts);
    auto out_s = at::empty({P, 3}, opts);
    int64_t* oi = out_i.data_ptr<int64_t>();
    int64_t* oj = out_j.data_ptr<int64_t>();
    int64_t* os = out_s.data_ptr<int64_t>();
    at::parallel_for(0, n, 1024, [&](int64_t a0, int64_t a1) {
        for (int64_t a = a0; a < a1; ++a) {
            if (a + 8 < a1) __builtin_prefetch(found[atom_slot[a + 8] / kChunk].data() + atom_start[a + 8]);
            const Entry* src = found[atom_slot[a] / kChunk].data() + atom_start[a];
            const int64_t m = std::min(atom_count[a], P - offset[a]);
            for (int64_t e = 0; e < m; ++e) {
                const int64_t p = offset[a] + e;
                oi[p] = a;
                oj[p] = src[e].j;
                os[3 * p] = src[e].s[0];
                os[3 * p + 1] = src[e].s[1];
                os[3 * p + 2] = src[e].s[2];
            }
        }
    });
    if (P > total) {  // fixed-capacity padding
        out_i.slice(0, total).zero_();
        out_j.slice(0, total).zero_();
        out_s.slice(0, total).zero_();
    }
    return {out_i, out_j, out_s, at::scalar_tensor(total, opts)};
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
    nl::check_ptr_values(ptr, R, n);

    std::vector<double> inv(9 * R), fmin(3 * R, 0.0), fmax(3 * R, 0.0);
    replica_ranges(pos, ptr, R, cell, pbc, inv, fmin, fmax);
    std::vector<nl::Replica<T>> reps(R);
    const int64_t n_bins = nl::setup_replicas<T>(R, cell, inv.data(), pbc, fmin.data(), fmax.data(), ptr, cutoff,
                                                 static_cast<int>(mode), reps.data());
    const Placed<T> placed = place_atoms(pos, n, ptr, R, reps, n_bins);
    const Found found = find_pairs(n, ptr, R, reps, placed, cutoff, full_list);
    return write_pairs(found, n, max_pairs, positions.options().dtype(at::kLong));
}

// The kernels of nl::portable_search on the CPU: the loops of the CUDA kernels (cuda/neighbors.cu), one
// kernel body call per atom, from at::parallel_for instead of a grid.
struct CpuKernels {
    template <typename T>
    void place(int64_t n, const T* positions, const int64_t* ptr, int64_t R, const nl::Replica<T>* reps, T* pw, T* fw,
               int64_t* wrap, int64_t* bin) const {
        at::parallel_for(0, n, 256, [&](int64_t a0, int64_t a1) {
            for (int64_t a = a0; a < a1; ++a) nl::place_one(a, positions, ptr, R, reps, pw, fw, wrap, bin);
        });
    }
    template <typename T>
    void count(int64_t n, const nl::SearchData<T>& s, int64_t* counts) const {
        at::parallel_for(0, n, 64, [&](int64_t a0, int64_t a1) {
            for (int64_t a = a0; a < a1; ++a) counts[a] = nl::count_one(a, s);
        });
    }
    template <typename T>
    void fill(int64_t n, const nl::SearchData<T>& s, const int64_t* offsets, int64_t capacity, int64_t* oi,
              int64_t* oj, int64_t* os) const {
        at::parallel_for(0, n, 64, [&](int64_t a0, int64_t a1) {
            for (int64_t a = a0; a < a1; ++a) nl::fill_one(a, s, offsets, capacity, oi, oj, os);
        });
    }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_search_cpu(
    const at::Tensor& positions, const at::Tensor& ptr, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
    bool full_list, int64_t max_pairs, int64_t mode) {
    nl::check_search_args(positions, ptr, cell, pbc, cutoff, mode);
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
    AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "neighbor_search_cpu", [&] {
        if (mode & nl::kPortable) {
            out = nl::portable_search<scalar_t>(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode,
                                                CpuKernels{});
        } else {
            out = search_cpu<scalar_t>(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode);
        }
    });
    return out;
}

// pair_vectors(positions [n, 3], cell [R, 3, 3], batch [n], i [P], j [P], shifts [P, 3])
//   -> (vectors [P, 3] = r_j - r_i + shifts @ cell[batch[i]], distances [P])
std::tuple<at::Tensor, at::Tensor> pair_vectors_cpu(const at::Tensor& positions_, const at::Tensor& cell_,
                                                    const at::Tensor& batch_, const at::Tensor& i_,
                                                    const at::Tensor& j_, const at::Tensor& shifts_) {
    nl::check_pair_vectors_args(positions_, cell_, batch_, i_, j_, shifts_);
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
                TORCH_CHECK(nl::pair_vector_at(p, x, c, bt, ii, jj, ss, n, R, v, d),
                            "i and j must index positions and batch[i] cell (0 <= i, j < n_atoms, 0 <= batch < R)");
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
