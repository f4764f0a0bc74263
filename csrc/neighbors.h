// Batched neighbour search: kernel math shared by the CPU and CUDA launchers.
//
// Pair convention (see common.h): vector_ij = r_j - r_i + S_ij @ cell, cell rows = box vectors,
// S_ij the integer cell shift. A pair is reported when |vector_ij| < cutoff.
//
// Each replica gets an "effective cell" from the caller: its rows along non-periodic axes are
// replaced by unit normals of the periodic rows, so the cell is always invertible and its plane
// distances d_a (distance between lattice planes a = const) are those of the periodic lattice.
//
// Per atom (atom_place): fractional coordinates f = r @ inv(cell); along periodic axes they are
// wrapped into [0, 1) with the integer wrap w (r' = r - w @ cell), along non-periodic axes kept.
// In the wrapped frame the pair vector for image k is r'_j - r'_i + k @ cell, and the shift of
// the unwrapped atoms is S = k + w_i - w_j. So callers need not wrap, and atoms may sit anywhere.
//
// Two search modes per replica, both exhaustive:
//  * brute force: every atom j of the replica, with the exact image range per periodic axis
//    |f'_j - f'_i + k_a| <= cutoff / d_a (a necessary condition for |vector| < cutoff, since
//    |x . inv_col_a| <= |x| / d_a). Output per atom is ordered by (j, k) without sorting.
//  * cell list: the replica's fractional box (periodic axes: [0, 1); non-periodic: the atoms'
//    range) is cut into n_a bins per axis of thickness t_a = d_a * extent_a / n_a; every pair
//    within the cutoff has bin indices (in the periodic extension) that differ by at most
//    reach_a = ceil(cutoff / t_a) per axis, so scanning those bins (with the image k_a given by
//    the bin index wrap-around) finds all of them. reach_a > n_a (cutoff larger than the box)
//    visits the same bin several times with different images, which are different pairs.
//    The atom's entries are then sorted by (j, S).
// The host chooses the mode per replica from a cost estimate (replica_setup below).
//
// Kernel bodies: place_one, count_one and fill_one (end of the device part below) are the whole per-atom work
// of the CUDA kernels (csrc/cuda/neighbors.cu runs them in grid-stride loops). The CPU op runs the same
// bodies from at::parallel_for under mode flag kPortable (neighbors_portable.h), so the CPU tests test the
// GPU search; its default fast path (neighbors.cpp) has its own vectorised loops over the same predicates.
//
// Half list: i < j, or i == j with the first non-zero component of S positive (S = k when i == j).
#pragma once
#include "common.h"

#include <algorithm>
#include <cmath>

namespace boltzgrad {
namespace nl {

// Per-replica search parameters, computed on the host (replica_setup) and read by the kernels.
template <typename T>
struct Replica {
    T cell[9];          // effective cell, row-major (rows = box vectors)
    T inv[9];           // its inverse: f = r @ inv
    T rc_over_d[3];     // cutoff / plane distance per axis
    T origin[3];        // fractional coordinate where bin 0 starts (0 along periodic axes)
    T bins_per_frac[3]; // n_bins / fractional extent
    int32_t n_bins[3];
    int32_t reach[3];   // bins scanned on each side along each axis
    int32_t periodic[3];
    int32_t brute;      // 1: brute force with per-pair image ranges, 0: cell list
    int64_t first_bin;  // global index of this replica's bin (0, 0, 0)
    int64_t atom_begin; // atoms [atom_begin, atom_end) belong to this replica
    int64_t atom_end;
};

// Slack of the image ranges in fractional units: covers the rounding of f.
constexpr double kFracSlack = 1e-4;

// Bin index along one axis of an atom with wrapped fractional coordinate f, clamped into [0, n_bins).
template <typename T>
BG_HD int64_t axis_bin(T f, T origin, T bins_per_frac, int32_t n_bins) {
    const T x = floor((f - origin) * bins_per_frac);
    const int64_t c = x < T(0) ? 0 : static_cast<int64_t>(x);
    return c >= n_bins ? n_bins - 1 : c;
}

template <typename T>
BG_HD void frac_of(const T* r, const T* inv, T* f) {
    for (int a = 0; a < 3; ++a) f[a] = r[0] * inv[a] + r[1] * inv[3 + a] + r[2] * inv[6 + a];
}

// Wrapped position r' [3], wrapped fractional f' [3], wrap w [3] and global bin of one atom.
template <typename T>
BG_HD void atom_place(const T* r, const Replica<T>& rep, T* pw, T* fw, int64_t* w, int64_t* bin) {
    T f[3];
    frac_of(r, rep.inv, f);
    for (int a = 0; a < 3; ++a) {
        if (rep.periodic[a]) {
            T fl = floor(f[a]);
            T g = f[a] - fl;
            if (g >= T(1)) {  // rounding of f - floor(f) for tiny negative f
                g -= T(1);
                fl += T(1);
            }
            w[a] = static_cast<int64_t>(fl);
            fw[a] = g;
        } else {
            w[a] = 0;
            fw[a] = f[a];
        }
    }
    for (int b = 0; b < 3; ++b) {
        pw[b] = r[b] - (T(w[0]) * rep.cell[b] + T(w[1]) * rep.cell[3 + b] + T(w[2]) * rep.cell[6 + b]);
    }
    int64_t idx[3];
    for (int a = 0; a < 3; ++a) idx[a] = axis_bin(fw[a], rep.origin[a], rep.bins_per_frac[a], rep.n_bins[a]);
    *bin = rep.first_bin + (idx[0] * rep.n_bins[1] + idx[1]) * rep.n_bins[2] + idx[2];
}

BG_HD bool first_nonzero_positive(int64_t s0, int64_t s1, int64_t s2) {
    return s0 != 0 ? s0 > 0 : (s1 != 0 ? s1 > 0 : s2 > 0);
}

// Whether image k of atom i itself is listed: k != 0 in a full list, k "positive" (first non-zero component)
// in a half list.
BG_HD bool self_image_ok(int64_t k0, int64_t k1, int64_t k2, bool full_list) {
    return full_list ? (k0 != 0 || k1 != 0 || k2 != 0) : first_nonzero_positive(k0, k1, k2);
}

// Whether a candidate (i, j) within the cutoff is listed: j > i, or j < i in a full list, or j == i when the
// image is (self_ok = self_image_ok(k)). Bitwise operators: branch-free, so the CPU loops that use it vectorise.
BG_HD bool pair_wanted(int64_t i, int64_t j, bool full_list, bool self_ok) {
    return (j > i) | (full_list & (j < i)) | ((j == i) & self_ok);
}

BG_HD int64_t floor_div(int64_t a, int64_t b) {
    const int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// Cartesian offset k @ cell of image k.
template <typename T>
BG_HD void image_offset(const T* c, int64_t k0, int64_t k1, int64_t k2, T* off) {
    for (int b = 0; b < 3; ++b) off[b] = T(k0) * c[b] + T(k1) * c[3 + b] + T(k2) * c[6 + b];
}

// Candidate atom j (wrapped position xj, image k) of atom i: d = xj + base with base = k @ cell - r'_i.
// Reports (i, j, S) if |d| < cutoff and pair_wanted (not atom i itself, k = 0; in a half list not j < i nor
// the mirror image of a self-pair).
template <typename T, typename Emit>
BG_HD void test_pair(int64_t i, int64_t j, const T* xj, const T* base, int64_t k0, int64_t k1, int64_t k2,
                     const int64_t* wrap, T rc2, bool full_list, Emit& emit) {
    const T d0 = xj[0] + base[0], d1 = xj[1] + base[1], d2 = xj[2] + base[2];
    if (d0 * d0 + d1 * d1 + d2 * d2 >= rc2) return;
    if (!pair_wanted(i, j, full_list, self_image_ok(k0, k1, k2, full_list))) return;
    emit(j, k0 + wrap[3 * i] - wrap[3 * j], k1 + wrap[3 * i + 1] - wrap[3 * j + 1],
         k2 + wrap[3 * i + 2] - wrap[3 * j + 2]);
}

// Neighbour bin along one axis: bin index t = b + m, folded into [0, n) with image k along a
// periodic axis; false when it falls outside a non-periodic axis.
BG_HD bool axis_step(int64_t b, int64_t m, int32_t n, int32_t periodic, int64_t& t, int64_t& k) {
    t = b + m;
    k = 0;
    if (periodic) {
        k = floor_div(t, n);
        t -= k * n;
        return true;
    }
    return t >= 0 && t < n;
}

// All neighbours of atom i; emit(j, s0, s1, s2) for each. Brute-force mode emits in (j, S) order.
// pw: wrapped positions in atom order; pw_binned: the same in bin order (pw_binned[q] = pw[bin_atoms[q]]),
// so that the cell-list scan reads memory contiguously.
template <typename T, typename Emit>
BG_HD void visit_neighbors(int64_t i, const Replica<T>& rep, const T* pw, const T* pw_binned, const T* fw,
                           const int64_t* wrap, const int64_t* bin_start, const int64_t* bin_atoms, T cutoff,
                           bool full_list, Emit& emit) {
    const T rc2 = cutoff * cutoff;
    const T* c = rep.cell;
    const T xi[3] = {pw[3 * i], pw[3 * i + 1], pw[3 * i + 2]};
    if (rep.brute) {
        const T slack = T(kFracSlack);
        const int64_t j0 = full_list ? rep.atom_begin : i;
        for (int64_t j = j0; j < rep.atom_end; ++j) {
            int64_t lo[3], hi[3];
            for (int a = 0; a < 3; ++a) {
                if (rep.periodic[a]) {
                    const T df = fw[3 * j + a] - fw[3 * i + a];
                    lo[a] = static_cast<int64_t>(ceil(-rep.rc_over_d[a] - df - slack));
                    hi[a] = static_cast<int64_t>(floor(rep.rc_over_d[a] - df + slack));
                } else {
                    lo[a] = 0;
                    hi[a] = 0;
                }
            }
            for (int64_t k0 = lo[0]; k0 <= hi[0]; ++k0)
                for (int64_t k1 = lo[1]; k1 <= hi[1]; ++k1)
                    for (int64_t k2 = lo[2]; k2 <= hi[2]; ++k2) {
                        T base[3];
                        image_offset(c, k0, k1, k2, base);
                        for (int b = 0; b < 3; ++b) base[b] -= xi[b];
                        test_pair(i, j, pw + 3 * j, base, k0, k1, k2, wrap, rc2, full_list, emit);
                    }
        }
        return;
    }
    int64_t b[3];
    for (int a = 0; a < 3; ++a) b[a] = axis_bin(fw[3 * i + a], rep.origin[a], rep.bins_per_frac[a], rep.n_bins[a]);
    int64_t t0, t1, t2, k0, k1, k2;
    for (int64_t m0 = -rep.reach[0]; m0 <= rep.reach[0]; ++m0) {
        if (!axis_step(b[0], m0, rep.n_bins[0], rep.periodic[0], t0, k0)) continue;
        for (int64_t m1 = -rep.reach[1]; m1 <= rep.reach[1]; ++m1) {
            if (!axis_step(b[1], m1, rep.n_bins[1], rep.periodic[1], t1, k1)) continue;
            for (int64_t m2 = -rep.reach[2]; m2 <= rep.reach[2]; ++m2) {
                if (!axis_step(b[2], m2, rep.n_bins[2], rep.periodic[2], t2, k2)) continue;
                const int64_t bin = rep.first_bin + (t0 * rep.n_bins[1] + t1) * rep.n_bins[2] + t2;
                T base[3];
                image_offset(c, k0, k1, k2, base);
                for (int q = 0; q < 3; ++q) base[q] -= xi[q];
                const int64_t q1 = bin_start[bin + 1];
                for (int64_t q = bin_start[bin]; q < q1; ++q) {
                    const int64_t j = bin_atoms[q];
                    if (!full_list && j < i) continue;
                    test_pair(i, j, pw_binned + 3 * q, base, k0, k1, k2, wrap, rc2, full_list, emit);
                }
            }
        }
    }
}

// Pair vector r_j - r_i + s @ cell and its length (the differentiable output; see pair_vectors op).
template <typename T>
BG_HD void pair_vector(const T* positions, const T* cell, int64_t i, int64_t j, const int64_t* s, T* v, T* d) {
    T acc = T(0);
    for (int b = 0; b < 3; ++b) {
        v[b] = positions[3 * j + b] - positions[3 * i + b] +
               (T(s[0]) * cell[b] + T(s[1]) * cell[3 + b] + T(s[2]) * cell[6 + b]);
        acc += v[b] * v[b];
    }
    *d = sqrt(acc);
}

BG_HD bool pair_less(int64_t ja, const int64_t* sa, int64_t jb, const int64_t* sb) {
    if (ja != jb) return ja < jb;
    if (sa[0] != sb[0]) return sa[0] < sb[0];
    if (sa[1] != sb[1]) return sa[1] < sb[1];
    return sa[2] < sb[2];
}

// Insertion sort of one atom's entries (j [n], shifts [n, 3]) by (j, shift); used on the GPU,
// where segments are short (tens of entries).
BG_HD void sort_segment(int64_t* j, int64_t* s, int64_t n) {
    for (int64_t a = 1; a < n; ++a) {
        const int64_t jj = j[a];
        const int64_t ss[3] = {s[3 * a], s[3 * a + 1], s[3 * a + 2]};
        int64_t b = a - 1;
        while (b >= 0 && pair_less(jj, ss, j[b], s + 3 * b)) {
            j[b + 1] = j[b];
            s[3 * (b + 1)] = s[3 * b];
            s[3 * (b + 1) + 1] = s[3 * b + 1];
            s[3 * (b + 1) + 2] = s[3 * b + 2];
            --b;
        }
        j[b + 1] = jj;
        s[3 * (b + 1)] = ss[0];
        s[3 * (b + 1) + 1] = ss[1];
        s[3 * (b + 1) + 2] = ss[2];
    }
}

// ------------------------------------------------------------------ kernel bodies
// One call = one atom, the whole work of one CUDA thread. The CUDA kernels (cuda/neighbors.cu) call them in
// grid-stride loops, the CPU op under kPortable from at::parallel_for (neighbors_portable.h). Pointers are
// device pointers on the GPU, host pointers on the CPU.

// Replica of atom a: the largest r with ptr[r] <= a (ptr non-decreasing; empty replicas are skipped).
BG_HD int64_t replica_of_atom(const int64_t* ptr, int64_t R, int64_t a) {
    int64_t lo = 0, hi = R;  // ptr[lo] <= a < ptr[hi]
    while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (ptr[mid] <= a) lo = mid;
        else hi = mid;
    }
    return lo;
}

// What the count and fill passes read. pw/fw/wrap in atom order, pw_binned in bin order (see visit_neighbors).
template <typename T>
struct SearchData {
    const int64_t* ptr;  // [R + 1] atom offsets of the replicas
    int64_t n_replicas;
    const Replica<T>* reps;
    const T* pw;
    const T* pw_binned;
    const T* fw;
    const int64_t* wrap;
    const int64_t* bin_start;
    const int64_t* bin_atoms;
    T cutoff;
    bool full_list;
};

struct CountEmit {
    int64_t count;
    BG_HD void operator()(int64_t, int64_t, int64_t, int64_t) { ++count; }
};

// Writes entry pos of the output (i, j, shifts); entries at or beyond capacity are counted, not written.
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

// Pass 0: wrapped position, wrapped fractional coordinates, wrap and global bin of atom a.
template <typename T>
BG_HD void place_one(int64_t a, const T* positions, const int64_t* ptr, int64_t R, const Replica<T>* reps, T* pw,
                     T* fw, int64_t* wrap, int64_t* bin) {
    const int64_t r = replica_of_atom(ptr, R, a);
    atom_place(positions + 3 * a, reps[r], pw + 3 * a, fw + 3 * a, wrap + 3 * a, bin + a);
}

// Pass 1: the number of neighbours of atom a.
template <typename T>
BG_HD int64_t count_one(int64_t a, const SearchData<T>& s) {
    const int64_t r = replica_of_atom(s.ptr, s.n_replicas, a);
    CountEmit emit{0};
    visit_neighbors(a, s.reps[r], s.pw, s.pw_binned, s.fw, s.wrap, s.bin_start, s.bin_atoms, s.cutoff, s.full_list,
                    emit);
    return emit.count;
}

// Pass 2: atom a's neighbours written from offsets[a] on (the output holds `capacity` entries), sorted by
// (j, shift): brute force emits in that order, a cell-list segment is sorted here. Where the capacity cuts an
// atom's entries (the list has overflowed), the part written holds the first ones found, sorted; the CPU's
// fast path keeps the first ones in (j, shift) order instead.
template <typename T>
BG_HD void fill_one(int64_t a, const SearchData<T>& s, const int64_t* offsets, int64_t capacity, int64_t* oi,
                    int64_t* oj, int64_t* os) {
    const int64_t r = replica_of_atom(s.ptr, s.n_replicas, a);
    WriteEmit emit{a, offsets[a], capacity, oi, oj, os};
    visit_neighbors(a, s.reps[r], s.pw, s.pw_binned, s.fw, s.wrap, s.bin_start, s.bin_atoms, s.cutoff, s.full_list,
                    emit);
    const int64_t end = emit.pos < capacity ? emit.pos : capacity;
    if (!s.reps[r].brute && end > offsets[a]) sort_segment(oj + offsets[a], os + 3 * offsets[a], end - offsets[a]);
}

// pair_vectors of pair p: false (nothing written) when i, j or the replica batch[i] is out of range.
template <typename T>
BG_HD bool pair_vector_at(int64_t p, const T* positions, const T* cell, const int64_t* batch, const int64_t* i,
                          const int64_t* j, const int64_t* shifts, int64_t n_atoms, int64_t n_replicas, T* vectors,
                          T* distances) {
    const int64_t a = i[p], b = j[p];
    if (a < 0 || a >= n_atoms || b < 0 || b >= n_atoms) return false;
    const int64_t r = batch[a];
    if (r < 0 || r >= n_replicas) return false;
    pair_vector(positions, cell + 9 * r, a, b, shifts + 3 * p, vectors + 3 * p, distances + p);
    return true;
}

// ------------------------------------------------------------------ host-side setup

// Fills one replica's parameters. cell: effective cell (row-major, invertible), inv its inverse; periodic[3];
// fmin/fmax: range of the atoms' fractional coordinates along non-periodic axes; n_atoms of
// the replica. Returns the number of bins (>= 1). Mode choice (mode 0 = automatic): brute force
// costs per atom about n_atoms x (0.5 for the image-range computation + the expected number of
// images tested, the product over periodic axes of 2 cutoff / d_a); the cell list costs
// (2 reach + 1)^3 x (atoms per bin) tests plus about 16 for sorting the atom's neighbours. Brute
// force is taken when its estimate is at most kBruteFactor times the cell-list one. In effect:
// molecules and small boxes (up to a few hundred atoms) use brute force, large boxes the cell list.
constexpr double kBruteFactor = 1.5;
constexpr double kBinSlack = 1e-5;  // bins are kept at least cutoff * (1 + kBinSlack) thick

// Inverse of a row-major 3x3 matrix (the caller guarantees it is invertible).
inline void invert3(const double* c, double* inv) {
    const double det = c[0] * (c[4] * c[8] - c[5] * c[7]) - c[1] * (c[3] * c[8] - c[5] * c[6]) +
                       c[2] * (c[3] * c[7] - c[4] * c[6]);
    inv[0] = (c[4] * c[8] - c[5] * c[7]) / det;
    inv[1] = (c[2] * c[7] - c[1] * c[8]) / det;
    inv[2] = (c[1] * c[5] - c[2] * c[4]) / det;
    inv[3] = (c[5] * c[6] - c[3] * c[8]) / det;
    inv[4] = (c[0] * c[8] - c[2] * c[6]) / det;
    inv[5] = (c[2] * c[3] - c[0] * c[5]) / det;
    inv[6] = (c[3] * c[7] - c[4] * c[6]) / det;
    inv[7] = (c[1] * c[6] - c[0] * c[7]) / det;
    inv[8] = (c[0] * c[4] - c[1] * c[3]) / det;
}

template <typename T>
inline int64_t replica_setup(const double* cell, const double* inv, const bool* periodic, const double* fmin,
                             const double* fmax, double cutoff, int64_t atom_begin, int64_t atom_end, int mode,
                             int64_t first_bin, Replica<T>& rep) {
    for (int k = 0; k < 9; ++k) {
        rep.cell[k] = static_cast<T>(cell[k]);
        rep.inv[k] = static_cast<T>(inv[k]);
    }
    const int64_t n = atom_end - atom_begin;
    double d[3], extent[3], nb[3];
    for (int a = 0; a < 3; ++a) {
        // plane distance: 1 / |column a of inv|
        d[a] = 1.0 / std::sqrt(inv[a] * inv[a] + inv[3 + a] * inv[3 + a] + inv[6 + a] * inv[6 + a]);
        rep.periodic[a] = periodic[a] ? 1 : 0;
        rep.rc_over_d[a] = static_cast<T>(cutoff / d[a]);
        const double lo = periodic[a] ? 0.0 : fmin[a];
        const double ext = periodic[a] ? 1.0 : std::max(fmax[a] - fmin[a], 0.0);
        rep.origin[a] = static_cast<T>(lo);
        extent[a] = ext;
        nb[a] = std::max(1.0, std::floor(d[a] * ext / (cutoff * (1.0 + kBinSlack))));
    }
    // at most ~2 bins per atom (sparse replicas, e.g. molecules far apart)
    const double cap = std::max(8.0, 2.0 * double(n));
    while (nb[0] * nb[1] * nb[2] > cap) {
        const double s = std::cbrt(cap / (nb[0] * nb[1] * nb[2]));
        for (int a = 0; a < 3; ++a) nb[a] = std::max(1.0, std::floor(nb[a] * std::min(s, 0.999)));
    }
    double cell_cost = 1.0, brute_images = 1.0;  // images: product over periodic axes of 2 cutoff / d_a
    for (int a = 0; a < 3; ++a) {
        rep.n_bins[a] = static_cast<int32_t>(nb[a]);
        const double thick = d[a] * (extent[a] > 0 ? extent[a] : 1.0) / nb[a];
        // clamped in double before the cast: a non-periodic axis with a tiny atom range (e.g. two atoms
        // 1e-25 apart) has bins far thinner than the cutoff
        double reach = std::ceil(cutoff / thick * (1.0 + kBinSlack));
        if (!periodic[a]) reach = std::min(reach, nb[a]);
        rep.reach[a] = static_cast<int32_t>(std::min(reach, 1e9));
        rep.bins_per_frac[a] = static_cast<T>(extent[a] > 0 ? nb[a] / extent[a] : 0.0);
        cell_cost *= 2.0 * rep.reach[a] + 1.0;
        if (periodic[a]) brute_images *= 2.0 * cutoff / d[a];
    }
    const double n_bins = nb[0] * nb[1] * nb[2];
    cell_cost = cell_cost * double(n) / n_bins + 16.0;
    const double brute_cost = double(n) * (0.5 + brute_images);
    rep.brute = mode == 1 ? 1 : (mode == 2 ? 0 : (brute_cost <= kBruteFactor * cell_cost ? 1 : 0));
    rep.first_bin = first_bin;
    rep.atom_begin = atom_begin;
    rep.atom_end = atom_end;
    return static_cast<int64_t>(n_bins);
}

// Parameters of every replica. cell [R, 9] effective cells, inv [R, 9] their inverses, periodic [R, 3],
// fmin/fmax [R, 3] fractional ranges along non-periodic axes, ptr [R + 1] atom offsets.
// Returns the total number of bins.
template <typename T>
inline int64_t setup_replicas(int64_t R, const double* cell, const double* inv, const bool* periodic,
                              const double* fmin, const double* fmax, const int64_t* ptr, double cutoff, int mode,
                              Replica<T>* reps) {
    int64_t first_bin = 0;
    for (int64_t r = 0; r < R; ++r) {
        first_bin += replica_setup<T>(cell + 9 * r, inv + 9 * r, periodic + 3 * r, fmin + 3 * r, fmax + 3 * r, cutoff,
                                      ptr[r], ptr[r + 1], mode, first_bin, reps[r]);
    }
    return first_bin;
}

}  // namespace nl
}  // namespace boltzgrad
