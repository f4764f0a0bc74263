// Smeared histogram ops: schema, argument checks and the CPU launchers.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#include "histogram.h"

namespace boltzgrad {
namespace {

void check_common(const at::Tensor& values, const at::Tensor& segment, const at::Tensor& centers,
                  double sigma, int64_t order) {
    TORCH_CHECK(values.dim() == 1, "values must be 1-D, got shape ", values.sizes());
    TORCH_CHECK(segment.dim() == 1 && segment.size(0) == values.size(0),
                "segment must be 1-D with the length of values (", values.size(0), "), got shape ",
                segment.sizes());
    TORCH_CHECK(segment.scalar_type() == at::kLong, "segment must be int64");
    TORCH_CHECK(centers.dim() == 1, "centers must be 1-D, got shape ", centers.sizes());
    TORCH_CHECK(centers.scalar_type() == values.scalar_type(), "centers must have the dtype of values");
    TORCH_CHECK(sigma > 0, "sigma must be > 0, got ", sigma);
    TORCH_CHECK(order >= 0 && order <= 8, "order must be in [0, 8], got ", order);
    TORCH_CHECK(centers.size(0) < (int64_t(1) << 31), "too many bins");
}

// Every segment index in range, checked once before the loops.
void check_segments(const at::Tensor& segment, int64_t n_segments) {
    const int64_t n = segment.size(0);
    const int64_t* seg = segment.data_ptr<int64_t>();
    for (int64_t k = 0; k < n; ++k) {
        TORCH_CHECK(seg[k] >= 0 && seg[k] < n_segments, "segment[", k, "] = ", seg[k], " is out of range [0, ",
                    n_segments, ")");
    }
}

// What a loop over values needs besides the values themselves.
template <typename T>
struct Job {
    const T* v;
    const int64_t* seg;
    const T* w;  // per-value weights or nullptr
    const T* c;
    int32_t n_bins;
    T sigma;
    int32_t order;
};

template <typename T>
Job<T> make_job(const at::Tensor& values, const at::Tensor& segment, const T* w, const at::Tensor& centers,
                double sigma, int64_t order) {
    return Job<T>{values.data_ptr<T>(), segment.data_ptr<int64_t>(), w, centers.data_ptr<T>(),
                  static_cast<int32_t>(centers.size(0)), static_cast<T>(sigma), static_cast<int32_t>(order)};
}

template <typename T>
inline __attribute__((always_inline)) void scatter_range(const Job<T>& job, int64_t k0, int64_t k1, T* out) {
    for (int64_t k = k0; k < k1; ++k) {
        scatter_one<T>(job.v[k], job.w ? job.w[k] : T(1), job.c, job.n_bins, job.sigma, job.order,
                       out + job.seg[k] * job.n_bins);
    }
}

template <typename T>
inline __attribute__((always_inline)) void gather_range(const Job<T>& job, const T* g, int64_t k0, int64_t k1, T* o) {
    for (int64_t k = k0; k < k1; ++k) {
        o[k] = gather_one<T>(job.v[k], job.c, job.n_bins, job.sigma, job.order, g + job.seg[k] * job.n_bins);
    }
}

// The loops are compiled twice on x86-64 with GCC, for AVX2+FMA and for the baseline ISA;
// the loader picks the one the CPU supports.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BG_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define BG_CPU_CLONES
#endif

BG_CPU_CLONES void scatter_loop(const Job<float>& job, int64_t k0, int64_t k1, float* out) {
    scatter_range(job, k0, k1, out);
}
BG_CPU_CLONES void scatter_loop(const Job<double>& job, int64_t k0, int64_t k1, double* out) {
    scatter_range(job, k0, k1, out);
}
BG_CPU_CLONES void gather_loop(const Job<float>& job, const float* g, int64_t k0, int64_t k1, float* o) {
    gather_range(job, g, k0, k1, o);
}
BG_CPU_CLONES void gather_loop(const Job<double>& job, const double* g, int64_t k0, int64_t k1, double* o) {
    gather_range(job, g, k0, k1, o);
}

at::Tensor smeared_scatter_cpu(const at::Tensor& values_, const at::Tensor& segment_,
                               const std::optional<at::Tensor>& weights_, int64_t n_segments,
                               const at::Tensor& centers_, double sigma, int64_t order) {
    check_common(values_, segment_, centers_, sigma, order);
    const auto values = values_.contiguous();
    const auto segment = segment_.contiguous();
    const auto centers = centers_.contiguous();
    at::Tensor weights;
    if (weights_.has_value()) {
        weights = weights_->contiguous();
        TORCH_CHECK(weights.sizes() == values.sizes(), "weights must have the shape of values");
        TORCH_CHECK(weights.scalar_type() == values.scalar_type(), "weights must have the dtype of values");
    }
    check_segments(segment, n_segments);
    const int64_t n = values.size(0);
    const int32_t n_bins = static_cast<int32_t>(centers.size(0));
    // Fixed chunking (independent of which thread runs a chunk) keeps results deterministic.
    const int64_t grain = 2048;
    const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / grain));
    auto buffers = at::zeros({n_chunks, n_segments, n_bins}, values.options());
    AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "smeared_scatter_cpu", [&] {
        const auto job = make_job<scalar_t>(values, segment, weights.defined() ? weights.data_ptr<scalar_t>() : nullptr,
                                            centers, sigma, order);
        scalar_t* buf = buffers.data_ptr<scalar_t>();
        const int64_t chunk = (n + n_chunks - 1) / n_chunks;
        at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t ch = c0; ch < c1; ++ch) {
                scatter_loop(job, ch * chunk, std::min(n, (ch + 1) * chunk), buf + ch * n_segments * n_bins);
            }
        });
    });
    return n_chunks == 1 ? buffers[0] : buffers.sum(0);
}

at::Tensor smeared_gather_cpu(const at::Tensor& grad_, const at::Tensor& values_, const at::Tensor& segment_,
                              const at::Tensor& centers_, double sigma, int64_t order) {
    check_common(values_, segment_, centers_, sigma, order);
    TORCH_CHECK(grad_.dim() == 2 && grad_.size(1) == centers_.size(0),
                "grad must be [n_segments, n_bins], got shape ", grad_.sizes());
    TORCH_CHECK(grad_.scalar_type() == values_.scalar_type(), "grad must have the dtype of values");
    const auto grad = grad_.contiguous();
    const auto values = values_.contiguous();
    const auto segment = segment_.contiguous();
    const auto centers = centers_.contiguous();
    check_segments(segment, grad.size(0));
    auto out = at::empty({values.size(0)}, values.options());
    AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "smeared_gather_cpu", [&] {
        const auto job = make_job<scalar_t>(values, segment, nullptr, centers, sigma, order);
        const scalar_t* g = grad.data_ptr<scalar_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        at::parallel_for(0, values.size(0), 2048, [&](int64_t k0, int64_t k1) { gather_loop(job, g, k0, k1, o); });
    });
    return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(boltzgrad, m) {
    m.def("smeared_scatter(Tensor values, Tensor segment, Tensor? weights, int n_segments, "
          "Tensor centers, float sigma, int order) -> Tensor");
    m.def("smeared_gather(Tensor grad, Tensor values, Tensor segment, Tensor centers, "
          "float sigma, int order) -> Tensor");
}

TORCH_LIBRARY_IMPL(boltzgrad, CPU, m) {
    m.impl("smeared_scatter", &smeared_scatter_cpu);
    m.impl("smeared_gather", &smeared_gather_cpu);
}

}  // namespace boltzgrad
