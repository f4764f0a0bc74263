// SchNet's continuous-filter convolution with tabulated filters (a model's filter-generating network replaced, for
// inference, by piecewise cubic Hermite interpolation of its output on a uniform grid of distances).
//
// The table holds, for each interval g of width h on [0, G h), the cubic in t = d / h - g in [0, 1):
//     w_k(d) = c[g, 0, k] + t (c[g, 1, k] + t (c[g, 2, k] + t c[g, 3, k]))          (coefficients c [G, 4, K])
//     dw_k/dd = (c[g, 1, k] + t (2 c[g, 2, k] + 3 t c[g, 3, k])) / h
// Distances at or beyond G h (the cutoff) give w = 0. For pairs p = (i_p, j_p) of a half list, atom features
// x [N, K] and upstream gradient gout [N, K]:
//   forward:   out[i_p] += w(d_p) * x[j_p];   out[j_p] += w(d_p) * x[i_p]
//   backward:  gx[j_p] += w(d_p) * gout[i_p]; gx[i_p] += w(d_p) * gout[j_p]
//              gd[p] = sum_k dw_k/dd(d_p) (gout[i_p, k] x[j_p, k] + gout[j_p, k] x[i_p, k])
// No [P, K] tensor is ever written: the filters exist one pair at a time.
#pragma once
#include "common.h"

namespace boltzgrad {

// Interval and local coordinate of distance d; false when d lies outside [0, G h) (zero filter).
template <typename T>
BG_HD bool table_locate(T d, T inv_h, int64_t G, int64_t& g, T& t) {
    const T u = d * inv_h;
    if (!(u >= T(0)) || !(u < T(G))) return false;  // also rejects NaN
    g = static_cast<int64_t>(u);
    if (g >= G) g = G - 1;  // u just below G rounding up
    t = u - T(g);
    return true;
}

// The four coefficient rows (each K long) of the interval holding distance d, and t; false outside the table.
template <typename T>
struct TableRow {
    const T *c0, *c1, *c2, *c3;
    T t;
};

template <typename T>
BG_HD bool table_row(const T* coefficients, T d, T inv_h, int64_t G, int64_t K, TableRow<T>& row) {
    int64_t g;
    if (!table_locate(d, inv_h, G, g, row.t)) return false;
    row.c0 = coefficients + g * 4 * K;
    row.c1 = row.c0 + K;
    row.c2 = row.c0 + 2 * K;
    row.c3 = row.c0 + 3 * K;
    return true;
}

// w_k at local coordinate t from the interval's coefficient rows c0..c3 (each K long).
template <typename T>
BG_HD T table_value(T c0, T c1, T c2, T c3, T t) {
    return c0 + t * (c1 + t * (c2 + t * c3));
}

// dw_k/dd at t (inv_h = 1 / h).
template <typename T>
BG_HD T table_slope(T c1, T c2, T c3, T t, T inv_h) {
    return (c1 + t * (T(2) * c2 + T(3) * t * c3)) * inv_h;
}

template <typename T>
BG_HD T row_value(const TableRow<T>& r, int64_t k) {
    return table_value(r.c0[k], r.c1[k], r.c2[k], r.c3[k], r.t);
}

template <typename T>
BG_HD T row_slope(const TableRow<T>& r, int64_t k, T inv_h) {
    return table_slope(r.c1[k], r.c2[k], r.c3[k], r.t, inv_h);
}

}  // namespace boltzgrad
