// A whole affine Glow flow step driven from C++: one op call per step instead of some forty
// small Python-dispatched ops, forward, inverse and backward.
//
//   out = actnorm_conv(x)                  W·(scale ⊙ (x + loc)), one GEMM (actnorm_conv.cpp)
//   h1  = relu(conv3x3(out_a; w1, b1))     ATen's conv2d, channels-last, ReLU in place
//   h2  = relu(conv1x1(h1; w2, b2))
//   h   = conv3x3(h2; w3·e, b3·e) + border  the zero-conv: e = exp(3·s3) folded into the weights,
//                                          its pad-with-1 replaced by a border bias
//   y, logdet = coupling_step(out, h)      the affine coupling on whole tensors (coupling_step.cpp)
//
// The backward takes what the forward returned (x, y, h1, h2, h) and runs the same chain back:
// coupling_step_backward, ATen's convolution_backward for the three convs, the ReLU masks applied
// in place, actnorm_conv_backward. The logdet here is the coupling's alone; the actnorm and 1×1
// conv terms (and the LU parametrisation of W) stay with the caller, which passes W as a (C, C)
// matrix. Our own pieces are called through the dispatcher, so the CUDA registration below runs
// the CUDA coupling kernels while the network stays ATen's (cuDNN there, oneDNN here).
#include <ATen/core/dispatch/Dispatcher.h>

#include "flow.h"

namespace missingglow {
namespace {

using Tensor = at::Tensor;
using Pair = std::tuple<Tensor, Tensor>;

// The coupling network's parameters as the op schemas list them.
struct Net {
  const Tensor &w1, &b1, &w2, &b2, &w3, &b3, &s3;
};

void check_flow_step_args(const Tensor& x, const Tensor& loc, const Tensor& scale,
                          const Tensor& weight, const Net& net, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected (N, C, H, W) activations, got ", x.dim(), " dims");
  const int64_t c = x.size(1), hidden = net.w1.size(0);
  TORCH_CHECK(c % 2 == 0, op, ": the channel count must be even, got ", c);
  TORCH_CHECK(net.w1.dim() == 4 && net.w1.sizes() == at::IntArrayRef({hidden, c / 2, 3, 3}), op,
              ": w1 must be (hidden, C/2, 3, 3) with C = ", c, ", got ", net.w1.sizes());
  TORCH_CHECK(net.w2.sizes() == at::IntArrayRef({hidden, hidden, 1, 1}), op, ": w2 must be (",
              hidden, ", ", hidden, ", 1, 1), got ", net.w2.sizes());
  TORCH_CHECK(net.w3.sizes() == at::IntArrayRef({c, hidden, 3, 3}), op, ": w3 must be (", c, ", ",
              hidden, ", 3, 3), got ", net.w3.sizes());
  TORCH_CHECK(net.b1.numel() == hidden && net.b2.numel() == hidden && net.b3.numel() == c &&
                  net.s3.numel() == c,
              op, ": b1 and b2 need ", hidden, " entries, b3 and s3 need ", c);
  for (const Tensor* t :
       {&loc, &scale, &weight, &net.w1, &net.b1, &net.w2, &net.b2, &net.w3, &net.b3, &net.s3}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op,
                ": x and every parameter must have one dtype");
    TORCH_CHECK(t->device() == x.device(), op, ": x and every parameter must be on one device");
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected floating-point tensors");
}

// The fused ops of actnorm_conv.cpp and coupling_step.cpp, through the dispatcher (one handle
// each, looked up once), so that a CUDA tensor reaches the CUDA kernels.
template <typename Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor actnorm_conv(const Tensor& x, const Tensor& loc, const Tensor& scale, const Tensor& weight) {
  static auto op = handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
      "missingglow::actnorm_conv_forward");
  return op.call(x, loc, scale, weight);
}

Tensor actnorm_conv_inverse(const Tensor& y, const Tensor& loc, const Tensor& scale,
                            const Tensor& weight) {
  static auto op = handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
      "missingglow::actnorm_conv_inverse");
  return op.call(y, loc, scale, weight);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> actnorm_conv_backward(const Tensor& grad_y,
                                                                 const Tensor& x, const Tensor& loc,
                                                                 const Tensor& scale,
                                                                 const Tensor& weight) {
  static auto op = handle<std::tuple<Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
      "missingglow::actnorm_conv_backward");
  return op.call(grad_y, x, loc, scale, weight);
}

Pair coupling_step(const Tensor& x, const Tensor& h, bool inverse) {
  static auto forward =
      handle<Pair(const Tensor&, const Tensor&)>("missingglow::coupling_step_forward");
  static auto backward =
      handle<Pair(const Tensor&, const Tensor&)>("missingglow::coupling_step_inverse");
  return inverse ? backward.call(x, h) : forward.call(x, h);
}

Pair coupling_step_backward(const Tensor& grad_y, const Tensor& grad_logdet, const Tensor& y,
                            const Tensor& h) {
  static auto op = handle<Pair(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
      "missingglow::coupling_step_backward");
  return op.call(grad_y, grad_logdet, y, h);
}

// The zero-conv with exp(3·s3) folded in: weight w3·e, bias b3·e, and the gain e itself.
struct ZeroConv {
  Tensor gain, weight, bias;
};

ZeroConv fold_zero_conv(const Net& net) {
  auto gain = at::exp(net.s3.reshape({-1}) * 3);
  return {gain, net.w3 * gain.view({-1, 1, 1, 1}), net.b3.reshape({-1}) * gain};
}

// A (1, 1, H+2, W+2) image of zeros framed by ones: what reference.ZeroConv2d's padding adds.
Tensor ones_frame(const Tensor& like, int64_t height, int64_t width) {
  return at::constant_pad_nd(at::zeros({1, 1, height, width}, like.options()), {1, 1, 1, 1}, 1);
}

// h = ZeroConv2d(h2) = conv_0(h2; W', b') + border, border = conv(frame, Σ_in W'): (1, C, H, W).
Tensor zero_conv_forward(const Tensor& h2, const ZeroConv& z) {
  auto h = at::conv2d(h2, z.weight, z.bias, /*stride=*/{1, 1}, /*padding=*/{1, 1});
  auto frame = ones_frame(h2, h2.size(2), h2.size(3));
  h.add_(at::conv2d(frame, z.weight.sum(1, /*keepdim=*/true)));
  return h;
}

// The coupling network: (h1, h2, h), channels-last. ATen's convs keep a channels-last input's
// layout on the CPU and in float32 on cuDNN, but cuDNN returns float64 contiguous; the layout is
// pinned here so that the op's outputs are what its fake kernel says on every device and dtype
// (a no-op where the conv already returned channels-last).
std::tuple<Tensor, Tensor, Tensor> coupling_net(const Tensor& x_a, const Net& net,
                                                const ZeroConv& z) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  auto h1 = at::conv2d(x_a, net.w1, net.b1.reshape({-1}), /*stride=*/{1, 1}, /*padding=*/{1, 1})
                .contiguous(cl);
  h1.relu_();
  auto h2 = at::conv2d(h1, net.w2, net.b2.reshape({-1})).contiguous(cl);
  h2.relu_();
  return {h1, h2, zero_conv_forward(h2, z).contiguous(cl)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> flow_step_forward(
    const Tensor& x_, const Tensor& loc, const Tensor& scale, const Tensor& weight,
    const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2, const Tensor& w3,
    const Tensor& b3, const Tensor& s3) {
  const Net net{w1, b1, w2, b2, w3, b3, s3};
  check_flow_step_args(x_, loc, scale, weight, net, "flow_step_forward");
  auto x = x_.contiguous(at::MemoryFormat::ChannelsLast);
  auto out = actnorm_conv(x, loc, scale, weight);
  auto [h1, h2, h] = coupling_net(out.narrow(1, 0, x.size(1) / 2), net, fold_zero_conv(net));
  auto [y, logdet] = coupling_step(out, h, /*inverse=*/false);
  return {y, logdet, h1, h2, h};
}

std::tuple<Tensor, Tensor> flow_step_inverse(const Tensor& y_, const Tensor& loc,
                                             const Tensor& scale, const Tensor& weight,
                                             const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                             const Tensor& b2, const Tensor& w3, const Tensor& b3,
                                             const Tensor& s3) {
  const Net net{w1, b1, w2, b2, w3, b3, s3};
  check_flow_step_args(y_, loc, scale, weight, net, "flow_step_inverse");
  auto y = y_.contiguous(at::MemoryFormat::ChannelsLast);
  auto h = std::get<2>(coupling_net(y.narrow(1, 0, y.size(1) / 2), net, fold_zero_conv(net)));
  auto [out, logdet] = coupling_step(y, h, /*inverse=*/true);
  return {actnorm_conv_inverse(out, loc, scale, weight), logdet};
}

// Gradients of (y, logdet) with respect to x and every parameter, from x, y and the network's
// activations h1, h2 (after ReLU) and h, as flow_step_forward returned them.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
flow_step_backward(const Tensor& grad_y, const Tensor& grad_logdet, const Tensor& x_,
                   const Tensor& y_, const Tensor& h1, const Tensor& h2, const Tensor& h,
                   const Tensor& loc, const Tensor& scale, const Tensor& weight, const Tensor& w1,
                   const Tensor& b1, const Tensor& w2, const Tensor& b2, const Tensor& w3,
                   const Tensor& b3, const Tensor& s3) {
  const Net net{w1, b1, w2, b2, w3, b3, s3};
  check_flow_step_args(x_, loc, scale, weight, net, "flow_step_backward");
  check_backward_grads(grad_y, grad_logdet, x_, "flow_step_backward", "x");
  const int64_t c = x_.size(1), half = c / 2, hidden = w1.size(0);
  TORCH_CHECK(y_.sizes() == x_.sizes() && h.sizes() == x_.sizes(),
              "flow_step_backward: y and h must match x's shape");
  const std::vector<int64_t> hidden_shape{x_.size(0), hidden, x_.size(2), x_.size(3)};
  TORCH_CHECK(h1.sizes() == hidden_shape && h2.sizes() == hidden_shape,
              "flow_step_backward: h1 and h2 must be (N, hidden, H, W)");
  const auto cl = at::MemoryFormat::ChannelsLast;
  auto x = x_.contiguous(cl), y = y_.contiguous(cl);
  const auto z = fold_zero_conv(net);
  const std::vector<int64_t> one{1, 1}, zero{0, 0};

  // Each incoming gradient is released as soon as it has been used (reset), as autograd would:
  // this keeps the backward's peak memory, and so the heap the next step must fault in, low.
  // the coupling: gradients of its input (both halves) and of the network's output h
  auto [grad_out, grad_h] = coupling_step_backward(grad_y, grad_logdet, y, h.contiguous(cl));

  // the zero-conv, and its border: border = conv(frame, Σ_in W') is shared by the whole batch
  auto [grad_h2, grad_wz, grad_bz] = at::convolution_backward(
      grad_h, h2, z.weight, c10::IntArrayRef{c}, one, one, one, false, zero, 1, {true, true, true});
  auto frame = ones_frame(x, x.size(2), x.size(3));
  grad_wz.add_(std::get<1>(at::convolution_backward(grad_h.sum(0, /*keepdim=*/true), frame,
                                                    z.weight.sum(1, true), std::nullopt, one, zero,
                                                    one, false, zero, 1, {false, true, false})));
  grad_h.reset();

  // ReLU, 1×1 conv, ReLU, 3×3 conv: the ReLU masks go in place into the incoming gradients
  at::threshold_backward_out(grad_h2, grad_h2, h2, 0);
  auto [grad_h1, grad_w2, grad_b2] =
      at::convolution_backward(grad_h2, h1, w2, c10::IntArrayRef{hidden}, one, zero, one, false,
                               zero, 1, {true, true, true});
  grad_h2.reset();
  at::threshold_backward_out(grad_h1, grad_h1, h1, 0);
  auto [grad_xa, grad_w1, grad_b1] =
      at::convolution_backward(grad_h1, y.narrow(1, 0, half), w1, c10::IntArrayRef{hidden}, one,
                               one, one, false, zero, 1, {true, true, true});
  grad_h1.reset();
  grad_out.narrow(1, 0, half).add_(grad_xa);  // out_a = y_a fed the network
  grad_xa.reset();

  auto [grad_x, grad_loc, grad_scale, grad_weight] =
      actnorm_conv_backward(grad_out, x, loc, scale, weight);
  grad_out.reset();

  // unfold exp(3·s3): W' = w3·e, b' = b3·e
  auto grad_gain = (grad_wz * w3).sum({1, 2, 3}) + grad_bz * b3.reshape({-1});
  auto grad_s3 = (grad_gain * z.gain * 3).view(s3.sizes());
  auto grad_w3 = grad_wz.mul_(z.gain.view({-1, 1, 1, 1}));
  auto grad_b3 = (grad_bz * z.gain).view(b3.sizes());
  // ATen's backward picks the layout of the weights' gradients; the parameters are contiguous
  return std::make_tuple(grad_x, grad_loc, grad_scale, grad_weight, grad_w1.contiguous(),
                         grad_b1.view(b1.sizes()), grad_w2.contiguous(), grad_b2.view(b2.sizes()),
                         grad_w3.contiguous(), grad_b3, grad_s3);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(missingglow, m) {
  m.def("flow_step_forward(Tensor x, Tensor loc, Tensor scale, Tensor weight, Tensor w1,"
        " Tensor b1, Tensor w2, Tensor b2, Tensor w3, Tensor b3, Tensor s3)"
        " -> (Tensor y, Tensor logdet, Tensor h1, Tensor h2, Tensor h)");
  m.def("flow_step_inverse(Tensor y, Tensor loc, Tensor scale, Tensor weight, Tensor w1,"
        " Tensor b1, Tensor w2, Tensor b2, Tensor w3, Tensor b3, Tensor s3)"
        " -> (Tensor x, Tensor logdet)");
  m.def("flow_step_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor y, Tensor h1,"
        " Tensor h2, Tensor h, Tensor loc, Tensor scale, Tensor weight, Tensor w1, Tensor b1,"
        " Tensor w2, Tensor b2, Tensor w3, Tensor b3, Tensor s3)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,"
        " Tensor)");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) {
  m.impl("flow_step_forward", &flow_step_forward);
  m.impl("flow_step_inverse", &flow_step_inverse);
  m.impl("flow_step_backward", &flow_step_backward);
}

#ifdef MISSINGGLOW_WITH_CUDA
// The same driver: ATen's convolutions run on cuDNN and the dispatcher sends our pieces to the
// CUDA coupling kernels (cuda/coupling_step_cuda.cu) and cuBLAS GEMMs.
TORCH_LIBRARY_IMPL(missingglow, CUDA, m) {
  m.impl("flow_step_forward", &flow_step_forward);
  m.impl("flow_step_inverse", &flow_step_inverse);
  m.impl("flow_step_backward", &flow_step_backward);
}
#endif

}  // namespace missingglow
