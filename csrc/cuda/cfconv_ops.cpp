// CUDA dispatch for cfconv and pair_product (kernels in cfconv.cu). Index bounds are the caller's
// (boltzgrad.ops.cfconv checks them on the host before the op; the CPU op checks them too).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "launch.h"

namespace boltzgrad {
namespace {

at::Tensor cfconv_cuda_op(const at::Tensor& w_, const at::Tensor& x_, const at::Tensor& i_, const at::Tensor& j_) {
    TORCH_CHECK(w_.dim() == 2 && x_.dim() == 2 && x_.size(1) == w_.size(1), "w [P, K] and x [N, K] expected, got ",
                w_.sizes(), " and ", x_.sizes());
    TORCH_CHECK(i_.dim() == 1 && j_.dim() == 1 && i_.size(0) == w_.size(0) && j_.size(0) == w_.size(0),
                "i and j must be 1-D with one entry per row of w");
    TORCH_CHECK(i_.scalar_type() == at::kLong && j_.scalar_type() == at::kLong, "i and j must be int64");
    TORCH_CHECK(w_.scalar_type() == x_.scalar_type(), "w and x must share a dtype");
    const c10::cuda::CUDAGuard guard(w_.device());
    const auto w = w_.contiguous(), x = x_.contiguous(), i = i_.contiguous(), j = j_.contiguous();
    auto out = at::zeros_like(x);
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "cfconv_cuda", [&] {
        cfconv_cuda<scalar_t>(w.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), i.data_ptr<int64_t>(),
                              j.data_ptr<int64_t>(), w.size(0), w.size(1), out.data_ptr<scalar_t>(), stream);
    });
    return out;
}

at::Tensor pair_product_cuda_op(const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& i_,
                                const at::Tensor& j_) {
    TORCH_CHECK(a_.dim() == 2 && b_.sizes() == a_.sizes(), "a and b must be [N, K] of one shape");
    TORCH_CHECK(i_.dim() == 1 && j_.dim() == 1 && i_.size(0) == j_.size(0), "i and j must be 1-D of one length");
    TORCH_CHECK(i_.scalar_type() == at::kLong && j_.scalar_type() == at::kLong, "i and j must be int64");
    TORCH_CHECK(a_.scalar_type() == b_.scalar_type(), "a and b must share a dtype");
    const c10::cuda::CUDAGuard guard(a_.device());
    const auto a = a_.contiguous(), b = b_.contiguous(), i = i_.contiguous(), j = j_.contiguous();
    auto y = at::empty({i.size(0), a.size(1)}, a.options());
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pair_product_cuda", [&] {
        pair_product_cuda<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), i.data_ptr<int64_t>(),
                                    j.data_ptr<int64_t>(), i.size(0), a.size(1), y.data_ptr<scalar_t>(), stream);
    });
    return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(boltzgrad, CUDA, m) {
    m.impl("cfconv", &cfconv_cuda_op);
    m.impl("pair_product", &pair_product_cuda_op);
}

}  // namespace boltzgrad
