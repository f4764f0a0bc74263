// SchNet's continuous-filter convolution over a half pair list, and the pair product that is its adjoint.
//
// For pairs p = (i_p, j_p) (each unordered pair once), filters w [P, K] and atom features x [N, K]:
//   cfconv:        out[i_p, k] += w[p, k] * x[j_p, k];  out[j_p, k] += w[p, k] * x[i_p, k]      (out [N, K])
//   pair_product:  y[p, k] = a[i_p, k] * b[j_p, k] + a[j_p, k] * b[i_p, k]                     (y [P, K])
// The two are closed under differentiation, so derivatives of any order are these ops again:
//   d cfconv: grad_w = pair_product(g, x), grad_x = cfconv(w, g)
//   d pair_product: grad_a = cfconv(g, b), grad_b = cfconv(g, a)
// One pass over the [P, K] filters replaces gathers, products and scatters that each write or read a [P, K]
// temporary. The CPU accumulates serially per column block (no two threads write one entry); CUDA uses atomics.
#pragma once
#include "common.h"

namespace boltzgrad {

// The two messages of pair p in column k: to atom i (from x_j) and to atom j (from x_i).
template <typename T>
BG_HD void cfconv_messages(T w, T xi, T xj, T& to_i, T& to_j) {
    to_i = w * xj;
    to_j = w * xi;
}

template <typename T>
BG_HD T pair_product_entry(T ai, T aj, T bi, T bj) {
    return ai * bj + aj * bi;
}

}  // namespace boltzgrad
