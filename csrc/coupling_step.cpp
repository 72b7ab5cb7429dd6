// The affine coupling on whole tensors: x = [x_a, x_b] and the network output h = [log_s, t]
// (halves along channels) give y = [x_a, (x_b + t)·s] with s = sigmoid(log_s + 2), and the
// per-sample logdet Σ log s, in one pass with no chunk or cat copies. The layout is kept
// (channels-last in, channels-last out). The backward works from the output y, so neither the
// standard nor the memory-saving path needs x. CUDA kernels: cuda/coupling_step_cuda.cu.
#include <ATen/Parallel.h>

#include "flow.h"
#include "flow_math.h"

namespace missingglow {
namespace {

// Calls fn(offset_a, offset_b) for every (channel < C/2, pixel) pair of one sample, in memory order.
template <bool kChannelsLast, typename Fn>
inline void for_each_pair(int64_t channels, int64_t pixels, Fn fn) {
  const int64_t half = channels / 2;
  if (kChannelsLast) {
    for (int64_t p = 0; p < pixels; ++p)
      for (int64_t c = 0; c < half; ++c) {
        auto o = half_offsets(true, c, p, channels, pixels);
        fn(o.a, o.b);
      }
  } else {
    for (int64_t c = 0; c < half; ++c)
      for (int64_t p = 0; p < pixels; ++p) {
        auto o = half_offsets(false, c, p, channels, pixels);
        fn(o.a, o.b);
      }
  }
}

template <typename Fn>
inline void for_each_pair(bool channels_last, int64_t channels, int64_t pixels, Fn fn) {
  if (channels_last) for_each_pair<true>(channels, pixels, fn);
  else for_each_pair<false>(channels, pixels, fn);
}

template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_step_cpu(const at::Tensor& in_, const at::Tensor& h_,
                                                     const char* op) {
  check_coupling_step_args(in_, h_, op);
  const auto format = layout_of(in_);
  auto in = in_.contiguous(format), h = h_.contiguous(format);
  auto out = at::empty_like(in, in.options(), format);
  const int64_t n = in.size(0), c = in.size(1), per = n ? in.numel() / n : 0, pixels = c ? per / c : 0;
  auto logdet = at::empty({n}, in.options());
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "coupling_step_cpu", [&] {
    const scalar_t *ip = in.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>();
    scalar_t *op_ = out.data_ptr<scalar_t>(), *lp = logdet.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const scalar_t *is = ip + s * per, *hs = hp + s * per;
        scalar_t* os = op_ + s * per;
        // Σ log s = Σ linear − Σ log(one_plus_e); the logs are taken once per kLogGroup factors.
        scalar_t linear_sum = 0, log_sum = 0, product = 1;
        int grouped = 0;
        for_each_pair(cl, c, pixels, [&](int64_t a, int64_t b) {
          scalar_t linear, one_plus_e;
          os[a] = is[a];
          if (kInverse) {
            coupling_inverse_factored(is[b], hs[a], hs[b], os[b], linear, one_plus_e);
          } else {
            coupling_forward_factored(is[b], hs[a], hs[b], os[b], linear, one_plus_e);
          }
          linear_sum += linear;
          product *= one_plus_e;
          if (++grouped == kLogGroup) {
            log_sum += std::log(product);
            product = 1, grouped = 0;
          }
        });
        const scalar_t acc = linear_sum - (log_sum + std::log(product));
        lp[s] = kInverse ? -acc : acc;
      }
    });
  });
  return {out, logdet};
}

std::tuple<at::Tensor, at::Tensor> coupling_step_forward_cpu(const at::Tensor& x, const at::Tensor& h) {
  return coupling_step_cpu<false>(x, h, "coupling_step_forward");
}

std::tuple<at::Tensor, at::Tensor> coupling_step_inverse_cpu(const at::Tensor& y, const at::Tensor& h) {
  return coupling_step_cpu<true>(y, h, "coupling_step_inverse");
}

// Gradients of (y, logdet) with respect to x and h, given the output y. The passed-through half
// of x gets grad_y as it is; its path through the network is autograd's business.
std::tuple<at::Tensor, at::Tensor> coupling_step_backward_cpu(const at::Tensor& grad_y_,
                                                              const at::Tensor& grad_logdet_,
                                                              const at::Tensor& y_, const at::Tensor& h_) {
  check_coupling_step_args(y_, h_, "coupling_step_backward");
  check_backward_grads(grad_y_, grad_logdet_, y_, "coupling_step_backward", "y");
  const auto format = layout_of(y_);
  auto y = y_.contiguous(format), h = h_.contiguous(format);
  auto gy = grad_y_.to(y.scalar_type()).contiguous(format);
  auto gl = grad_logdet_.to(y.scalar_type()).contiguous();
  auto gx = at::empty_like(y, y.options(), format), gh = at::empty_like(y, y.options(), format);
  const int64_t n = y.size(0), c = y.size(1), per = n ? y.numel() / n : 0, pixels = c ? per / c : 0;
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "coupling_step_backward", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>();
    const scalar_t *gyp = gy.data_ptr<scalar_t>(), *glp = gl.data_ptr<scalar_t>();
    scalar_t *gxp = gx.data_ptr<scalar_t>(), *ghp = gh.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const int64_t base = s * per;
        const scalar_t *ys = yp + base, *hs = hp + base, *gys = gyp + base;
        scalar_t *gxs = gxp + base, *ghs = ghp + base;
        for_each_pair(cl, c, pixels, [&](int64_t a, int64_t b) {
          gxs[a] = gys[a];
          coupling_backward_from_output_elem(gys[b], glp[s], ys[b], hs[a], gxs[b], ghs[a], ghs[b]);
        });
      }
    });
  });
  return {gx, gh};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(missingglow, m) {
  m.def("coupling_step_forward(Tensor x, Tensor h) -> (Tensor, Tensor)");
  m.def("coupling_step_inverse(Tensor y, Tensor h) -> (Tensor, Tensor)");
  m.def("coupling_step_backward(Tensor grad_y, Tensor grad_logdet, Tensor y, Tensor h) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) {
  m.impl("coupling_step_forward", &coupling_step_forward_cpu);
  m.impl("coupling_step_inverse", &coupling_step_inverse_cpu);
  m.impl("coupling_step_backward", &coupling_step_backward_cpu);
}

}  // namespace missingglow
