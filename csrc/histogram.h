// Gaussian-smeared histograms: kernel math shared by the CPU and CUDA launchers.
//
//   scatter:  out[s, b] += w_k * G^(n)(v_k - c_b)          for every k with segment[k] = s
//   gather:   out_k      = sum_b g[segment[k], b] * G^(n)(v_k - c_b)
//
// with G(d) = exp(-d^2 / (2 sigma^2)) and G^(n) its n-th derivative,
//   G^(n)(d) = (-1/sigma)^n He_n(d/sigma) G(d)   (He_n: probabilists' Hermite polynomials).
// scatter (n = 0) is the histogram; gather is its transpose. The gradient of each is the
// other one, with the order raised by one for the derivative in v, so every derivative
// order is available from these two kernels.
//
// Truncation: only bins with |v_k - c_b| <= kWindowSigmas * sigma are touched. The
// largest value dropped is G(6 sigma) = exp(-18) = 1.5e-8 of the peak, below float32
// resolution of the peak; the total dropped mass per value is erfc(6/sqrt 2) = 2.0e-9
// of the Gaussian's integral. Centers must be sorted ascending; uniform spacing makes
// the window lookup O(1), other sorted grids are handled by a short walk.
#pragma once
#include "common.h"

namespace boltzgrad {

constexpr double kWindowSigmas = 6.0;

// Bin range [lo, hi) of the sorted centers within [v - half, v + half].
template <typename T>
BG_HD void window_bins(T v, T half, const T* centers, int32_t n_bins, int32_t& lo, int32_t& hi) {
    lo = 0;
    hi = 0;
    if (n_bins <= 0) return;
    const T c0 = centers[0];
    const T c1 = centers[n_bins - 1];
    const T left = v - half;
    const T right = v + half;
    if (right < c0 || left > c1 || !(v == v)) return;
    // uniform grids: the guesses are exact up to rounding; other sorted grids walk from them
    const T inv_dc = n_bins > 1 ? T(n_bins - 1) / (c1 - c0) : T(0);
    const T g = (left - c0) * inv_dc;
    lo = g <= T(0) ? 0 : (g >= T(n_bins - 1) ? n_bins - 1 : int32_t(g));
    while (lo > 0 && centers[lo - 1] >= left) --lo;
    while (lo < n_bins && centers[lo] < left) ++lo;
    const int32_t guess_hi = lo + int32_t((right - left) * inv_dc);
    hi = guess_hi > n_bins ? n_bins : (guess_hi < lo ? lo : guess_hi);
    while (hi > lo && centers[hi - 1] > right) --hi;
    while (hi < n_bins && centers[hi] <= right) ++hi;
}

// He_n(x), probabilists' Hermite polynomial, by the three-term recurrence.
template <typename T>
BG_HD T hermite(T x, int32_t order) {
    T h_prev = T(1);
    T h = order == 0 ? T(1) : x;
    for (int32_t m = 1; m < order; ++m) {
        const T h_next = x * h - T(m) * h_prev;
        h_prev = h;
        h = h_next;
    }
    return h;
}

// (-1/sigma)^n: the factor that turns He_n(d/sigma) G(d) into G^(n)(d).
template <typename T>
BG_HD T derivative_scale(T inv_sigma, int32_t order) {
    T scale = T(1);
    for (int32_t m = 0; m < order; ++m) scale *= -inv_sigma;
    return scale;
}

template <typename T>
BG_HD T gaussian_derivative(T d, T inv_sigma, int32_t order) {
    const T x = d * inv_sigma;
    return derivative_scale(inv_sigma, order) * hermite(x, order) * exp_nonpos(T(-0.5) * x * x);
}

// Adds value v's contribution (weight w) to one segment's row of n_bins entries.
// Orders 0-2 have branch-free loops the host compiler vectorises.
template <typename T>
BG_HD void scatter_one(T v, T w, const T* centers, int32_t n_bins, T sigma, int32_t order, T* row) {
    int32_t lo, hi;
    window_bins(v, T(kWindowSigmas) * sigma, centers, n_bins, lo, hi);
    const T inv_sigma = T(1) / sigma;
    const T ws = w * derivative_scale(inv_sigma, order);
    if (order == 0) {
        BG_SIMD for (int32_t b = lo; b < hi; ++b) {
            const T x = (v - centers[b]) * inv_sigma;
            row[b] += ws * exp_nonpos(T(-0.5) * x * x);
        }
    } else if (order == 1) {
        BG_SIMD for (int32_t b = lo; b < hi; ++b) {
            const T x = (v - centers[b]) * inv_sigma;
            row[b] += ws * x * exp_nonpos(T(-0.5) * x * x);
        }
    } else {
        for (int32_t b = lo; b < hi; ++b) {
            const T x = (v - centers[b]) * inv_sigma;
            row[b] += ws * hermite(x, order) * exp_nonpos(T(-0.5) * x * x);
        }
    }
}

// sum_b grad_row[b] G^(order)(v - c_b) over the window of v.
template <typename T>
BG_HD T gather_one(T v, const T* centers, int32_t n_bins, T sigma, int32_t order, const T* grad_row) {
    int32_t lo, hi;
    window_bins(v, T(kWindowSigmas) * sigma, centers, n_bins, lo, hi);
    const T inv_sigma = T(1) / sigma;
    T acc = T(0);
    if (order == 0) {
        BG_SIMD_SUM(acc) for (int32_t b = lo; b < hi; ++b) {
            const T x = (v - centers[b]) * inv_sigma;
            acc += grad_row[b] * exp_nonpos(T(-0.5) * x * x);
        }
    } else if (order == 1) {
        BG_SIMD_SUM(acc) for (int32_t b = lo; b < hi; ++b) {
            const T x = (v - centers[b]) * inv_sigma;
            acc += grad_row[b] * x * exp_nonpos(T(-0.5) * x * x);
        }
    } else {
        for (int32_t b = lo; b < hi; ++b) {
            const T x = (v - centers[b]) * inv_sigma;
            acc += grad_row[b] * hermite(x, order) * exp_nonpos(T(-0.5) * x * x);
        }
    }
    return acc * derivative_scale(inv_sigma, order);
}

}  // namespace boltzgrad
