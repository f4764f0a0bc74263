// Covariance ops: schema, the device-generic one-shot covariance, and the CPU merge kernel.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <tuple>

#include "covariance.h"

namespace boltzgrad {
namespace {

// Unbiased sample covariance of x [M, K] with y [M, P]. Centring x alone suffices in exact
// arithmetic: sum_m (x_m - mean x)(y_m - mean y)^T = sum_m (x_m - mean x) y_m^T, which avoids a
// centred [M, P] copy of y. In floating point sum_m (x_m - mean x) = s is not exactly 0, and
// s (mean y)^T would swamp the result when y has a large mean; subtracting that rank-1 term
// (O(K P) work) restores full accuracy.
at::Tensor covariance_impl(const at::Tensor& x, const at::Tensor& y) {
    TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0),
                "x [M, K] and y [M, P] must be 2-D with equal M, got ", x.sizes(), " and ", y.sizes());
    TORCH_CHECK(x.size(0) >= 2, "covariance needs at least 2 samples, got ", x.size(0));
    // x centred and scaled by 1 / (M - 1) ([M, K], small), so the [K, P] output is written by the
    // product and updated once in place by the rank-1 correction (BLAS ger / cuBLAS), never copied.
    const auto xc = (x - x.mean(0, /*keepdim=*/true)).div_(static_cast<double>(x.size(0) - 1));
    auto out = at::mm(xc.t(), y);
    return out.addr_(xc.sum(0), y.mean(0), /*beta=*/1, /*alpha=*/-1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> comoment_merge_cpu(
    const at::Tensor& ca_, const at::Tensor& mxa_, const at::Tensor& mya_, int64_t na,
    const at::Tensor& cb_, const at::Tensor& mxb_, const at::Tensor& myb_, int64_t nb) {
    TORCH_CHECK(ca_.dim() == 2 && cb_.sizes() == ca_.sizes(), "co-moments must be [K, P] of equal shape");
    TORCH_CHECK(mxa_.numel() == ca_.size(0) && mxb_.numel() == ca_.size(0), "means of x must have K entries");
    TORCH_CHECK(mya_.numel() == ca_.size(1) && myb_.numel() == ca_.size(1), "means of y must have P entries");
    TORCH_CHECK(na >= 0 && nb >= 0 && na + nb > 0, "sample counts must be >= 0 and not both 0");
    const auto ca = ca_.contiguous(), cb = cb_.contiguous();
    const auto mxa = mxa_.contiguous(), mxb = mxb_.contiguous(), mya = mya_.contiguous(), myb = myb_.contiguous();
    const int64_t K = ca.size(0), P = ca.size(1);
    auto c = at::empty_like(ca);
    auto mx = at::empty_like(mxa);
    auto my = at::empty_like(mya);
    AT_DISPATCH_FLOATING_TYPES(ca.scalar_type(), "comoment_merge_cpu", [&] {
        const double n = double(na) + double(nb);
        const scalar_t factor = static_cast<scalar_t>(double(na) * double(nb) / n);
        const scalar_t frac_b = static_cast<scalar_t>(double(nb) / n);
        const scalar_t *pca = ca.data_ptr<scalar_t>(), *pcb = cb.data_ptr<scalar_t>();
        const scalar_t *pxa = mxa.data_ptr<scalar_t>(), *pxb = mxb.data_ptr<scalar_t>();
        const scalar_t *pya = mya.data_ptr<scalar_t>(), *pyb = myb.data_ptr<scalar_t>();
        scalar_t* pc = c.data_ptr<scalar_t>();
        at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
            for (int64_t k = k0; k < k1; ++k) {
                const scalar_t dx = pxb[k] - pxa[k];
                for (int64_t p = 0; p < P; ++p) {
                    pc[k * P + p] = comoment_merge_entry(pca[k * P + p], pcb[k * P + p], dx, pyb[p] - pya[p], factor);
                }
            }
        });
        scalar_t* px = mx.data_ptr<scalar_t>();
        scalar_t* py = my.data_ptr<scalar_t>();
        for (int64_t k = 0; k < K; ++k) px[k] = mean_merge_entry(pxa[k], pxb[k], frac_b);
        for (int64_t p = 0; p < P; ++p) py[p] = mean_merge_entry(pya[p], pyb[p], frac_b);
    });
    return {c, mx, my};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(boltzgrad, m) {
    m.def("covariance(Tensor x, Tensor y) -> Tensor");
    m.def("comoment_merge(Tensor c_a, Tensor mean_x_a, Tensor mean_y_a, int n_a, Tensor c_b, "
          "Tensor mean_x_b, Tensor mean_y_b, int n_b) -> (Tensor, Tensor, Tensor)");
}

// One implementation for every device: the product goes to the BLAS behind at::mm.
TORCH_LIBRARY_IMPL(boltzgrad, CompositeExplicitAutograd, m) {
    m.impl("covariance", &covariance_impl);
}

TORCH_LIBRARY_IMPL(boltzgrad, CPU, m) {
    m.impl("comoment_merge", &comoment_merge_cpu);
}

}  // namespace boltzgrad
