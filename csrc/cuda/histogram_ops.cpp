// CUDA dispatch for the smeared histogram ops (torch side; kernels in histogram.cu).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>

#include "launch.h"

namespace boltzgrad {
namespace {

at::Tensor smeared_scatter_cuda_op(const at::Tensor& values_, const at::Tensor& segment_,
                                   const std::optional<at::Tensor>& weights_, int64_t n_segments,
                                   const at::Tensor& centers_, double sigma, int64_t order) {
    TORCH_CHECK(values_.dim() == 1 && segment_.sizes() == values_.sizes(), "values/segment must be 1-D of equal length");
    TORCH_CHECK(sigma > 0 && order >= 0 && order <= 8, "sigma must be > 0 and order in [0, 8]");
    const c10::cuda::CUDAGuard guard(values_.device());
    const auto values = values_.contiguous();
    const auto segment = segment_.contiguous();
    const auto centers = centers_.contiguous();
    at::Tensor weights = weights_.has_value() ? weights_->contiguous() : at::Tensor();
    auto out = at::zeros({n_segments, centers.size(0)}, values.options());
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "smeared_scatter_cuda", [&] {
        smeared_scatter_cuda<scalar_t>(values.data_ptr<scalar_t>(), segment.data_ptr<int64_t>(),
                                       weights.defined() ? weights.data_ptr<scalar_t>() : nullptr,
                                       values.size(0), centers.data_ptr<scalar_t>(),
                                       static_cast<int32_t>(centers.size(0)), static_cast<scalar_t>(sigma),
                                       static_cast<int32_t>(order), out.data_ptr<scalar_t>(), stream);
    });
    return out;
}

at::Tensor smeared_gather_cuda_op(const at::Tensor& grad_, const at::Tensor& values_, const at::Tensor& segment_,
                                  const at::Tensor& centers_, double sigma, int64_t order) {
    TORCH_CHECK(values_.dim() == 1 && segment_.sizes() == values_.sizes(), "values/segment must be 1-D of equal length");
    TORCH_CHECK(grad_.dim() == 2 && grad_.size(1) == centers_.size(0), "grad must be [n_segments, n_bins]");
    const c10::cuda::CUDAGuard guard(values_.device());
    const auto grad = grad_.contiguous();
    const auto values = values_.contiguous();
    const auto segment = segment_.contiguous();
    const auto centers = centers_.contiguous();
    auto out = at::empty_like(values);
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "smeared_gather_cuda", [&] {
        smeared_gather_cuda<scalar_t>(grad.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                      segment.data_ptr<int64_t>(), values.size(0), centers.data_ptr<scalar_t>(),
                                      static_cast<int32_t>(centers.size(0)), static_cast<scalar_t>(sigma),
                                      static_cast<int32_t>(order), out.data_ptr<scalar_t>(), stream);
    });
    return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(boltzgrad, CUDA, m) {
    m.impl("smeared_scatter", &smeared_scatter_cuda_op);
    m.impl("smeared_gather", &smeared_gather_cuda_op);
}

}  // namespace boltzgrad
