// cfconv ops: schemas and CPU kernels (math in cfconv.h).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cfconv.h"

namespace boltzgrad {
namespace {

void check_pairs(const at::Tensor& rows, const at::Tensor& i, const at::Tensor& j, const char* what) {
    TORCH_CHECK(rows.dim() == 2, what, " must be 2-D [P, K], got ", rows.sizes());
    TORCH_CHECK(i.dim() == 1 && j.dim() == 1 && i.size(0) == rows.size(0) && j.size(0) == rows.size(0),
                "i and j must be 1-D with one entry per row of ", what, ", got ", i.sizes(), " and ", j.sizes());
    TORCH_CHECK(i.scalar_type() == at::kLong && j.scalar_type() == at::kLong, "i and j must be int64");
}

void check_atoms(const at::Tensor& x, int64_t k, const char* what) {
    TORCH_CHECK(x.dim() == 2 && x.size(1) == k, what, " must be [N, K] with K = ", k, ", got ", x.sizes());
}

void check_index_range(const int64_t* pi, const int64_t* pj, int64_t P, int64_t N) {
    const auto [lo_i, hi_i] = std::minmax_element(pi, pi + P);
    const auto [lo_j, hi_j] = std::minmax_element(pj, pj + P);
    TORCH_CHECK(std::min(*lo_i, *lo_j) >= 0 && std::max(*hi_i, *hi_j) < N, "pair indices must lie in [0, ", N, ")");
}

// Column blocks of this many entries are the unit of CPU parallelism (each thread owns whole columns).
constexpr int64_t kColumnBlock = 16;

at::Tensor cfconv_cpu(const at::Tensor& w_, const at::Tensor& x_, const at::Tensor& i_, const at::Tensor& j_) {
    check_pairs(w_, i_, j_, "w");
    check_atoms(x_, w_.size(1), "x");
    TORCH_CHECK(w_.scalar_type() == x_.scalar_type(), "w and x must share a dtype");
    const auto w = w_.contiguous(), x = x_.contiguous(), i = i_.contiguous(), j = j_.contiguous();
    const int64_t P = w.size(0), K = w.size(1), N = x.size(0);
    auto out = at::zeros_like(x);
    if (P == 0 || K == 0) return out;
    const int64_t* pi = i.data_ptr<int64_t>();
    const int64_t* pj = j.data_ptr<int64_t>();
    check_index_range(pi, pj, P, N);
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "cfconv_cpu", [&] {
        const scalar_t* pw = w.data_ptr<scalar_t>();
        const scalar_t* px = x.data_ptr<scalar_t>();
        scalar_t* po = out.data_ptr<scalar_t>();
        const int64_t blocks = (K + kColumnBlock - 1) / kColumnBlock;
        at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
            const int64_t k0 = b0 * kColumnBlock, k1 = std::min(K, b1 * kColumnBlock);
            for (int64_t p = 0; p < P; ++p) {
                const scalar_t* wp = pw + p * K;
                const scalar_t* xi = px + pi[p] * K;
                const scalar_t* xj = px + pj[p] * K;
                scalar_t* oi = po + pi[p] * K;
                scalar_t* oj = po + pj[p] * K;
                if (oi == oj) {  // a pair of an atom with its own periodic image: both messages go to it
                    for (int64_t k = k0; k < k1; ++k) {
                        scalar_t to_i, to_j;
                        cfconv_messages(wp[k], xi[k], xj[k], to_i, to_j);
                        oi[k] += to_i + to_j;
                    }
                    continue;
                }
                BG_SIMD
                for (int64_t k = k0; k < k1; ++k) {
                    scalar_t to_i, to_j;
                    cfconv_messages(wp[k], xi[k], xj[k], to_i, to_j);
                    oi[k] += to_i;
                    oj[k] += to_j;
                }
            }
        });
    });
    return out;
}

at::Tensor pair_product_cpu(const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& i_, const at::Tensor& j_) {
    TORCH_CHECK(a_.dim() == 2 && b_.sizes() == a_.sizes(), "a and b must be [N, K] of one shape, got ", a_.sizes(),
                " and ", b_.sizes());
    TORCH_CHECK(a_.scalar_type() == b_.scalar_type(), "a and b must share a dtype");
    TORCH_CHECK(i_.dim() == 1 && j_.dim() == 1 && i_.size(0) == j_.size(0), "i and j must be 1-D of one length");
    TORCH_CHECK(i_.scalar_type() == at::kLong && j_.scalar_type() == at::kLong, "i and j must be int64");
    const auto a = a_.contiguous(), b = b_.contiguous(), i = i_.contiguous(), j = j_.contiguous();
    const int64_t P = i.size(0), K = a.size(1), N = a.size(0);
    auto y = at::empty({P, K}, a.options());
    if (P == 0 || K == 0) return y;
    const int64_t* pi = i.data_ptr<int64_t>();
    const int64_t* pj = j.data_ptr<int64_t>();
    check_index_range(pi, pj, P, N);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pair_product_cpu", [&] {
        const scalar_t* pa = a.data_ptr<scalar_t>();
        const scalar_t* pb = b.data_ptr<scalar_t>();
        scalar_t* py = y.data_ptr<scalar_t>();
        at::parallel_for(0, P, 256, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const scalar_t *ai = pa + pi[p] * K, *aj = pa + pj[p] * K;
                const scalar_t *bi = pb + pi[p] * K, *bj = pb + pj[p] * K;
                scalar_t* yp = py + p * K;
                BG_SIMD
                for (int64_t k = 0; k < K; ++k) yp[k] = pair_product_entry(ai[k], aj[k], bi[k], bj[k]);
            }
        });
    });
    return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(boltzgrad, m) {
    m.def("cfconv(Tensor w, Tensor x, Tensor i, Tensor j) -> Tensor");
    m.def("pair_product(Tensor a, Tensor b, Tensor i, Tensor j) -> Tensor");
}

TORCH_LIBRARY_IMPL(boltzgrad, CPU, m) {
    m.impl("cfconv", &cfconv_cpu);
    m.impl("pair_product", &pair_product_cpu);
}

}  // namespace boltzgrad
