// ActNorm followed by the invertible 1×1 convolution, as one small GEMM with folded weights:
//   y = W·(scale ⊙ (x + loc)) = W'·x + b,   W' = W·diag(scale),  b = W'·loc,
// its inverse x = diag(1/scale)·W⁻¹·y − loc, and the backward for x, loc, scale and W.
//
// Everything here is a handful of ATen calls (a GEMM with the bias folded in, and C×C algebra),
// so the same code serves CPU and CUDA: on CUDA the GEMMs are ATen's (cuBLAS underneath). The
// activations keep their layout: a channels-last x gives a channels-last y through one
// (N·H·W, C)×(C, C) GEMM; any other layout is made contiguous and multiplied per sample.
#include "flow.h"

namespace missingglow {
namespace {

struct Folded {
  at::Tensor w;      // (C, C) weight matrix
  at::Tensor scale;  // (C,)
  at::Tensor loc;    // (C,)
};

Folded check_actnorm_conv_args(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& scale,
                               const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() >= 2, op, ": expected (N, C, ...) activations, got ", x.dim(), " dims");
  const int64_t c = x.size(1);
  TORCH_CHECK(loc.numel() == c && scale.numel() == c, op, ": loc and scale need ", c,
              " entries (one per channel), got ", loc.numel(), " and ", scale.numel());
  TORCH_CHECK(weight.numel() == c * c && weight.size(0) == c && weight.size(1) == c, op,
              ": weight must be (C, C) or (C, C, 1, 1) with C = ", c, ", got ", weight.sizes());
  for (const at::Tensor* t : {&loc, &scale, &weight}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op,
                ": x, loc, scale and weight must have one dtype");
    TORCH_CHECK(t->device() == x.device(), op, ": x, loc, scale and weight must be on one device");
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected floating-point tensors");
  return {weight.reshape({c, c}), scale.reshape({c}), loc.reshape({c})};
}

// y = w·x + bias over the channel dim, keeping x's layout (see layout_is_channels_last).
at::Tensor channel_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t n = x.size(0), c = x.size(1);
  if (layout_is_channels_last(x)) {
    return from_pixel_rows(at::addmm(bias, pixel_rows(x), w.t()), x);  // a view: x is NHWC-dense
  }
  auto x3 = x.contiguous().view({n, c, -1});
  auto y = at::matmul(w, x3);
  y.add_(bias.view({1, c, 1}));
  return y.view(x.sizes());
}

at::Tensor actnorm_conv_forward(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& scale,
                                const at::Tensor& weight) {
  auto f = check_actnorm_conv_args(x, loc, scale, weight, "actnorm_conv_forward");
  auto w_folded = f.w * f.scale.unsqueeze(0);  // W·diag(scale)
  auto bias = at::mv(w_folded, f.loc);
  return channel_gemm(x, w_folded, bias);
}

at::Tensor actnorm_conv_inverse(const at::Tensor& y, const at::Tensor& loc, const at::Tensor& scale,
                                const at::Tensor& weight) {
  auto f = check_actnorm_conv_args(y, loc, scale, weight, "actnorm_conv_inverse");
  auto w_inv = at::linalg_inv(f.w) / f.scale.unsqueeze(1);  // diag(1/scale)·W⁻¹
  return channel_gemm(y, w_inv, -f.loc);
}

// With g = ∂L/∂y, M = Σ g·xᵀ (C×C, over samples and pixels), G = Σ g (per output channel) and
// A = M + G·locᵀ:  ∂L/∂W = A·diag(scale),  ∂L/∂scale_c = Σ_o W_oc A_oc,
// ∂L/∂loc = scale ⊙ (Wᵀ·G),  ∂L/∂x = (W·diag(scale))ᵀ·g.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> actnorm_conv_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& loc, const at::Tensor& scale,
    const at::Tensor& weight) {
  auto f = check_actnorm_conv_args(x, loc, scale, weight, "actnorm_conv_backward");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "actnorm_conv_backward: grad_y must match x's shape");
  const int64_t n = x.size(0), c = x.size(1);
  auto w_folded = f.w * f.scale.unsqueeze(0);
  auto g_in = grad_y.to(x.scalar_type());
  at::Tensor grad_x, m, g_sum;
  if (layout_is_channels_last(x)) {
    auto g2 = pixel_rows(g_in.contiguous(at::MemoryFormat::ChannelsLast));
    grad_x = from_pixel_rows(at::mm(g2, w_folded), x);
    m = at::mm(g2.t(), pixel_rows(x));
    g_sum = g2.sum(0);
  } else {
    auto g3 = g_in.contiguous().view({n, c, -1});
    auto x3 = x.contiguous().view({n, c, -1});
    grad_x = at::matmul(w_folded.t(), g3).view(x.sizes());
    m = at::bmm(g3, x3.transpose(1, 2)).sum(0);
    g_sum = g3.sum(at::IntArrayRef{0, 2});
  }
  auto a = m + at::outer(g_sum, f.loc);
  auto grad_w = a * f.scale.unsqueeze(0);
  auto grad_scale = (f.w * a).sum(0);
  auto grad_loc = f.scale * at::mv(f.w.t(), g_sum);
  return {grad_x, grad_loc.view(loc.sizes()), grad_scale.view(scale.sizes()),
          grad_w.view(weight.sizes())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(missingglow, m) {
  m.def("actnorm_conv_forward(Tensor x, Tensor loc, Tensor scale, Tensor weight) -> Tensor");
  m.def("actnorm_conv_inverse(Tensor y, Tensor loc, Tensor scale, Tensor weight) -> Tensor");
  m.def("actnorm_conv_backward(Tensor grad_y, Tensor x, Tensor loc, Tensor scale,"
        " Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) {
  m.impl("actnorm_conv_forward", &actnorm_conv_forward);
  m.impl("actnorm_conv_inverse", &actnorm_conv_inverse);
  m.impl("actnorm_conv_backward", &actnorm_conv_backward);
}

#ifdef MISSINGGLOW_WITH_CUDA
// The same ATen calls run on the GPU (cuBLAS GEMMs on the current stream); no kernel of our own.
TORCH_LIBRARY_IMPL(missingglow, CUDA, m) {
  m.impl("actnorm_conv_forward", &actnorm_conv_forward);
  m.impl("actnorm_conv_inverse", &actnorm_conv_inverse);
  m.impl("actnorm_conv_backward", &actnorm_conv_backward);
}
#endif

}  // namespace missingglow
