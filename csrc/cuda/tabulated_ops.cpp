// CUDA dispatch for the tabulated-filter cfconv (kernels in tabulated.cu). Index bounds are the caller's
// (boltzgrad.ops.tabulated checks shapes; the CPU op checks the indices too).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "launch.h"

namespace boltzgrad {
namespace {

void check(const at::Tensor& d, const at::Tensor& c, const at::Tensor& x, const at::Tensor& i, const at::Tensor& j,
           double spacing) {
    TORCH_CHECK(d.dim() == 1 && c.dim() == 3 && c.size(1) == 4 && x.dim() == 2 && x.size(1) == c.size(2),
                "d [P], coefficients [G, 4, K] and x [N, K] expected, got ", d.sizes(), ", ", c.sizes(), " and ",
                x.sizes());
    TORCH_CHECK(i.dim() == 1 && j.dim() == 1 && i.size(0) == d.size(0) && j.size(0) == d.size(0),
                "i and j must be 1-D with one entry per distance");
    TORCH_CHECK(i.scalar_type() == at::kLong && j.scalar_type() == at::kLong, "i and j must be int64");
    TORCH_CHECK(d.scalar_type() == x.scalar_type() && c.scalar_type() == x.scalar_type(),
                "d, coefficients and x must share a dtype");
    TORCH_CHECK(spacing > 0, "spacing must be > 0, got ", spacing);
}

at::Tensor tabulated_cfconv_cuda_op(const at::Tensor& d_, const at::Tensor& c_, const at::Tensor& x_,
                                    const at::Tensor& i_, const at::Tensor& j_, double spacing) {
    check(d_, c_, x_, i_, j_, spacing);
    const c10::cuda::CUDAGuard guard(x_.device());
    const auto d = d_.contiguous(), c = c_.contiguous(), x = x_.contiguous(), i = i_.contiguous(),
               j = j_.contiguous();
    auto out = at::zeros_like(x);
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tabulated_cfconv_cuda", [&] {
        tabulated_cfconv_cuda<scalar_t>(d.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        i.data_ptr<int64_t>(), j.data_ptr<int64_t>(), d.size(0), x.size(1),
                                        c.size(0), scalar_t(1.0 / spacing), out.data_ptr<scalar_t>(), stream);
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor> tabulated_cfconv_backward_cuda_op(const at::Tensor& gout_, const at::Tensor& d_,
                                                                     const at::Tensor& c_, const at::Tensor& x_,
                                                                     const at::Tensor& i_, const at::Tensor& j_,
                                                                     double spacing) {
    check(d_, c_, x_, i_, j_, spacing);
    TORCH_CHECK(gout_.sizes() == x_.sizes() && gout_.scalar_type() == x_.scalar_type(),
                "grad_out must be [N, K] like x, got ", gout_.sizes());
    const c10::cuda::CUDAGuard guard(x_.device());
    const auto gout = gout_.contiguous(), d = d_.contiguous(), c = c_.contiguous(), x = x_.contiguous(),
               i = i_.contiguous(), j = j_.contiguous();
    auto gd = at::zeros_like(d);
    auto gx = at::zeros_like(x);
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tabulated_cfconv_backward_cuda", [&] {
        tabulated_cfconv_backward_cuda<scalar_t>(gout.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                                                 c.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                 i.data_ptr<int64_t>(), j.data_ptr<int64_t>(), d.size(0), x.size(1),
                                                 c.size(0), scalar_t(1.0 / spacing), gd.data_ptr<scalar_t>(),
                                                 gx.data_ptr<scalar_t>(), stream);
    });
    return {gd, gx};
}

}  // namespace

TORCH_LIBRARY_IMPL(boltzgrad, CUDA, m) {
    m.impl("tabulated_cfconv", &tabulated_cfconv_cuda_op);
    m.impl("tabulated_cfconv_backward", &tabulated_cfconv_backward_cuda_op);
}

}  // namespace boltzgrad
