// Streaming covariance: the pairwise merge of co-moment accumulators (Chan, Golub & LeVeque).
//
// An accumulator over n samples holds the means mx [K], my [P] and the co-moment
// C[k, p] = sum_m (x_mk - mx_k)(y_mp - my_p). Merging (n_a, mx_a, my_a, C_a) with
// (n_b, mx_b, my_b, C_b), n = n_a + n_b, dx = mx_b - mx_a, dy = my_b - my_a:
//   C  = C_a + C_b + (n_a n_b / n) dx dy^T
//   mx = mx_a + dx n_b / n,  my = my_a + dy n_b / n
// The unbiased covariance is C / (n - 1).
#pragma once
#include "common.h"

namespace boltzgrad {

template <typename T>
BG_HD T comoment_merge_entry(T ca, T cb, T dx, T dy, T factor) {
    return ca + cb + factor * dx * dy;
}

template <typename T>
BG_HD T mean_merge_entry(T ma, T mb, T frac_b) {
    return ma + (mb - ma) * frac_b;
}

}  // namespace boltzgrad
