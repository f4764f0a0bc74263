// CUDA dispatch for the co-moment merge (kernel in covariance.cu).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "launch.h"

namespace boltzgrad {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> comoment_merge_cuda_op(
    const at::Tensor& ca_, const at::Tensor& mxa_, const at::Tensor& mya_, int64_t na,
    const at::Tensor& cb_, const at::Tensor& mxb_, const at::Tensor& myb_, int64_t nb) {
    TORCH_CHECK(ca_.dim() == 2 && cb_.sizes() == ca_.sizes(), "co-moments must be [K, P] of equal shape");
    TORCH_CHECK(na >= 0 && nb >= 0 && na + nb > 0, "sample counts must be >= 0 and not both 0");
    const c10::cuda::CUDAGuard guard(ca_.device());
    const auto ca = ca_.contiguous(), cb = cb_.contiguous();
    const auto mxa = mxa_.contiguous(), mxb = mxb_.contiguous(), mya = mya_.contiguous(), myb = myb_.contiguous();
    auto c = at::empty_like(ca);
    auto mx = at::empty_like(mxa);
    auto my = at::empty_like(mya);
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(ca.scalar_type(), "comoment_merge_cuda", [&] {
        const double n = double(na) + double(nb);
        comoment_merge_cuda<scalar_t>(ca.data_ptr<scalar_t>(), cb.data_ptr<scalar_t>(), mxa.data_ptr<scalar_t>(),
                                      mxb.data_ptr<scalar_t>(), mya.data_ptr<scalar_t>(), myb.data_ptr<scalar_t>(),
                                      ca.size(0), ca.size(1), static_cast<scalar_t>(double(na) * double(nb) / n),
                                      static_cast<scalar_t>(double(nb) / n), c.data_ptr<scalar_t>(),
                                      mx.data_ptr<scalar_t>(), my.data_ptr<scalar_t>(), stream);
    });
    return {c, mx, my};
}

}  // namespace

TORCH_LIBRARY_IMPL(boltzgrad, CUDA, m) {
    m.impl("comoment_merge", &comoment_merge_cuda_op);
}

}  // namespace boltzgrad
