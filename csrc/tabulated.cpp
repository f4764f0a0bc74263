// Tabulated-filter cfconv: schemas and CPU kernels (math in tabulated.h).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>

#include "tabulated.h"

namespace boltzgrad {
namespace {

// Column blocks of this many entries are the unit of CPU parallelism (each thread owns whole columns).
constexpr int64_t kColumnBlock = 16;

struct Checked {
    at::Tensor d, c, x, i, j;
    int64_t P, K, N, G;
};

Checked check(const at::Tensor& d, const at::Tensor& c, const at::Tensor& x, const at::Tensor& i,
              const at::Tensor& j, double spacing) {
    TORCH_CHECK(d.dim() == 1, "d must be 1-D [P], got ", d.sizes());
    TORCH_CHECK(c.dim() == 3 && c.size(1) == 4, "coefficients must be [G, 4, K], got ", c.sizes());
    TORCH_CHECK(x.dim() == 2 && x.size(1) == c.size(2), "x must be [N, K] with K = ", c.size(2), ", got ", x.sizes());
    TORCH_CHECK(i.dim() == 1 && j.dim() == 1 && i.size(0) == d.size(0) && j.size(0) == d.size(0),
                "i and j must be 1-D with one entry per distance, got ", i.sizes(), " and ", j.sizes());
    TORCH_CHECK(i.scalar_type() == at::kLong && j.scalar_type() == at::kLong, "i and j must be int64");
    TORCH_CHECK(d.scalar_type() == x.scalar_type() && c.scalar_type() == x.scalar_type(),
                "d, coefficients and x must share a dtype");
    TORCH_CHECK(spacing > 0, "spacing must be > 0, got ", spacing);
    Checked out{d.contiguous(), c.contiguous(), x.contiguous(), i.contiguous(), j.contiguous(),
                d.size(0), c.size(2), x.size(0), c.size(0)};
    if (out.P > 0) {
        const int64_t* pi = out.i.data_ptr<int64_t>();
        const int64_t* pj = out.j.data_ptr<int64_t>();
        const auto [lo_i, hi_i] = std::minmax_element(pi, pi + out.P);
        const auto [lo_j, hi_j] = std::minmax_element(pj, pj + out.P);
        TORCH_CHECK(std::min(*lo_i, *lo_j) >= 0 && std::max(*hi_i, *hi_j) < out.N,
                    "pair indices must lie in [0, ", out.N, ")");
    }
    return out;
}

at::Tensor tabulated_cfconv_cpu(const at::Tensor& d_, const at::Tensor& c_, const at::Tensor& x_,
                                const at::Tensor& i_, const at::Tensor& j_, double spacing) {
    const Checked a = check(d_, c_, x_, i_, j_, spacing);
    auto out = at::zeros_like(a.x);
    if (a.P == 0 || a.K == 0 || a.G == 0) return out;
    const int64_t *pi = a.i.data_ptr<int64_t>(), *pj = a.j.data_ptr<int64_t>();
    const int64_t P = a.P, K = a.K, G = a.G;
    AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "tabulated_cfconv_cpu", [&] {
        const scalar_t* pd = a.d.data_ptr<scalar_t>();
        const scalar_t* pc = a.c.data_ptr<scalar_t>();
        const scalar_t* px = a.x.data_ptr<scalar_t>();
        scalar_t* po = out.data_ptr<scalar_t>();
        const scalar_t inv_h = scalar_t(1.0 / spacing);
        const int64_t blocks = (K + kColumnBlock - 1) / kColumnBlock;
        at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
            const int64_t k0 = b0 * kColumnBlock, k1 = std::min(K, b1 * kColumnBlock);
            TableRow<scalar_t> row;
            for (int64_t p = 0; p < P; ++p) {
                if (!table_row(pc, pd[p], inv_h, G, K, row)) continue;
                const scalar_t* xi = px + pi[p] * K;
                const scalar_t* xj = px + pj[p] * K;
                scalar_t* oi = po + pi[p] * K;
                scalar_t* oj = po + pj[p] * K;
                if (oi == oj) {  // an atom and its own periodic image: both messages go to it
                    for (int64_t k = k0; k < k1; ++k) oi[k] += row_value(row, k) * (xi[k] + xj[k]);
                    continue;
                }
                BG_SIMD
                for (int64_t k = k0; k < k1; ++k) {
                    const scalar_t w = row_value(row, k);
                    oi[k] += w * xj[k];
                    oj[k] += w * xi[k];
                }
            }
        });
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor> tabulated_cfconv_backward_cpu(const at::Tensor& gout_, const at::Tensor& d_,
                                                                 const at::Tensor& c_, const at::Tensor& x_,
                                                                 const at::Tensor& i_, const at::Tensor& j_,
                                                                 double spacing) {
    const Checked a = check(d_, c_, x_, i_, j_, spacing);
    TORCH_CHECK(gout_.sizes() == a.x.sizes() && gout_.scalar_type() == a.x.scalar_type(),
                "grad_out must be [N, K] like x, got ", gout_.sizes());
    const auto gout = gout_.contiguous();
    auto gx = at::zeros_like(a.x);
    const int64_t P = a.P, K = a.K, G = a.G;
    const int64_t blocks = std::max<int64_t>(1, (K + kColumnBlock - 1) / kColumnBlock);
    auto gd_parts = at::zeros({blocks, P}, a.x.options());
    if (P == 0 || K == 0 || G == 0) return {gd_parts.sum(0), gx};
    const int64_t *pi = a.i.data_ptr<int64_t>(), *pj = a.j.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "tabulated_cfconv_backward_cpu", [&] {
        const scalar_t* pd = a.d.data_ptr<scalar_t>();
        const scalar_t* pc = a.c.data_ptr<scalar_t>();
        const scalar_t* px = a.x.data_ptr<scalar_t>();
        const scalar_t* pg = gout.data_ptr<scalar_t>();
        scalar_t* pgx = gx.data_ptr<scalar_t>();
        scalar_t* pgd = gd_parts.data_ptr<scalar_t>();
        const scalar_t inv_h = scalar_t(1.0 / spacing);
        // each chunk of column blocks (one per thread) sweeps the pairs once over all its columns and keeps its
        // partial distance gradients in its own row of gd_parts (row = its first block)
        at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
            const int64_t k0 = b0 * kColumnBlock, k1 = std::min(K, b1 * kColumnBlock);
            scalar_t* gd = pgd + b0 * P;
            TableRow<scalar_t> row;
            for (int64_t p = 0; p < P; ++p) {
                if (!table_row(pc, pd[p], inv_h, G, K, row)) continue;
                const scalar_t *xi = px + pi[p] * K, *xj = px + pj[p] * K;
                const scalar_t *gi = pg + pi[p] * K, *gj = pg + pj[p] * K;
                scalar_t* gxi = pgx + pi[p] * K;
                scalar_t* gxj = pgx + pj[p] * K;
                scalar_t acc = 0;
                if (gxi == gxj) {  // an atom and its own periodic image
                    for (int64_t k = k0; k < k1; ++k) {
                        const scalar_t w = row_value(row, k);
                        acc += row_slope(row, k, inv_h) * (gi[k] * xj[k] + gj[k] * xi[k]);
                        gxi[k] += w * (gj[k] + gi[k]);
                    }
                } else {
                    BG_SIMD_SUM(acc)
                    for (int64_t k = k0; k < k1; ++k) {
                        const scalar_t w = row_value(row, k);
                        acc += row_slope(row, k, inv_h) * (gi[k] * xj[k] + gj[k] * xi[k]);
                        gxi[k] += w * gj[k];
                        gxj[k] += w * gi[k];
                    }
                }
                gd[p] = acc;
            }
        });
    });
    return {blocks == 1 ? gd_parts.squeeze(0) : gd_parts.sum(0), gx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(boltzgrad, m) {
    m.def("tabulated_cfconv(Tensor d, Tensor coefficients, Tensor x, Tensor i, Tensor j, float spacing) -> Tensor");
    m.def("tabulated_cfconv_backward(Tensor grad_out, Tensor d, Tensor coefficients, Tensor x, Tensor i, Tensor j, "
          "float spacing) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(boltzgrad, CPU, m) {
    m.impl("tabulated_cfconv", &tabulated_cfconv_cpu);
    m.impl("tabulated_cfconv_backward", &tabulated_cfconv_backward_cpu);
}

}  // namespace boltzgrad
