// The first half of a fused flow step: ActNorm and the 1×1 conv as one GEMM over the channels,
// out = x·A + b with A and b folded once per block (missingglow/flow/step_params.py), handing back
// beside `out` the dense copy of its first half that the coupling network convolves.
//
// Written as ATen calls and one op with a C++ autograd formula because the training step runs it
// once per flow step: as separate autograd nodes (permute, GEMM, view, slice, copy) its backward
// builds a zero tensor for the slice's gradient and adds it to the coupling's, node by node, at
// host cost that outweighs the arithmetic at small shapes. Here the backward adds the network's
// gradient into the coupling's once and runs the GEMMs. The same code serves CPU and CUDA.
#include <torch/autograd.h>

#include "flow.h"

namespace missingglow {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x and the folded weight, as both ops take them; the forward's bias is checked beside
void check_channel_gemm_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected (N, C, H, W) activations, got ", x.dim(), " dims");
  const int64_t c = x.size(1);
  TORCH_CHECK(c % 2 == 0, op, ": the channel count must be even, got ", c);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == c && weight.size(1) == c, op,
              ": weight must be (C, C) with C = ", c, ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op,
              ": x, weight and bias must have one dtype");
  TORCH_CHECK(weight.device() == x.device(), op, ": x, weight and bias must be on one device");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected floating-point tensors");
}

std::tuple<at::Tensor, at::Tensor> channel_gemm_split_forward(const at::Tensor& x,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& bias) {
  const char* op = "channel_gemm_split_forward";
  check_channel_gemm_args(x, weight, op);
  const int64_t c = x.size(1);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == c, op, ": bias must be (C,) with C = ", c,
              ", got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), op,
              ": x, weight and bias must have one dtype");
  TORCH_CHECK(bias.device() == x.device(), op, ": x, weight and bias must be on one device");
  auto out = from_pixel_rows(at::addmm(bias, pixel_rows(x), weight), x);
  // always a copy: `contiguous` would return the slice itself where it already counts as
  // channels-last (one 1×1 image, or none), and the two outputs must not share memory
  auto half = at::empty({x.size(0), x.size(1) / 2, x.size(2), x.size(3)}, x.options(),
                        at::MemoryFormat::ChannelsLast);
  half.copy_(out.narrow(1, 0, x.size(1) / 2));
  return {out, half};
}

// Gradients for x, weight and bias of Σ grad_out·out + Σ grad_half·half; the two output
// gradients meet in one (N·H·W, C) matrix, the half's added into its first columns.
std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_gemm_split_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_half, const at::Tensor& x,
    const at::Tensor& weight) {
  const char* op = "channel_gemm_split_backward";
  check_channel_gemm_args(x, weight, op);
  const int64_t c = x.size(1);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must match x's shape");
  TORCH_CHECK(grad_half.dim() == 4 && grad_half.size(0) == x.size(0) &&
                  grad_half.size(1) == c / 2 && grad_half.size(2) == x.size(2) &&
                  grad_half.size(3) == x.size(3),
              op, ": grad_half must be the shape of x's first half of channels");
  const int64_t half = c / 2;
  const auto rows = pixel_rows(grad_out);
  auto grad = at::empty({x.numel() / c, c}, x.options());
  auto first = grad.narrow(1, 0, half);
  at::add_out(first, rows.narrow(1, 0, half), pixel_rows(grad_half));
  grad.narrow(1, half, half).copy_(rows.narrow(1, half, half));
  auto grad_x = from_pixel_rows(at::mm(grad, weight.t()), x);
  return {grad_x, at::mm(pixel_rows(x).t(), grad), grad.sum(0)};
}

const c10::TypedOperatorHandle<decltype(channel_gemm_split_forward)>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("missingglow::channel_gemm_split_forward", "")
                             .typed<decltype(channel_gemm_split_forward)>();
  return op;
}

const c10::TypedOperatorHandle<decltype(channel_gemm_split_backward)>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("missingglow::channel_gemm_split_backward", "")
                             .typed<decltype(channel_gemm_split_backward)>();
  return op;
}

class ChannelGemmSplit : public torch::autograd::Function<ChannelGemmSplit> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, half] = forward_op().call(x, weight, bias);
    ctx->save_for_backward({x, weight});
    return {out, half};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const at::Tensor grad_half =
        grads[1].defined() ? grads[1] : at::zeros_like(x.narrow(1, 0, x.size(1) / 2));
    auto [grad_x, grad_weight, grad_bias] = backward_op().call(grad_out, grad_half, x, weight);
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_weight : at::Tensor(),
            ctx->needs_input_grad(2) ? grad_bias : at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> channel_gemm_split_autograd(const at::Tensor& x,
                                                               const at::Tensor& weight,
                                                               const at::Tensor& bias) {
  auto out = ChannelGemmSplit::apply(x, weight, bias);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(missingglow, m) {
  m.def("channel_gemm_split_forward(Tensor x, Tensor weight, Tensor bias) -> (Tensor, Tensor)");
  m.def("channel_gemm_split_backward(Tensor grad_out, Tensor grad_half, Tensor x, Tensor weight)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) {
  m.impl("channel_gemm_split_forward", &channel_gemm_split_forward);
  m.impl("channel_gemm_split_backward", &channel_gemm_split_backward);
}

#ifdef MISSINGGLOW_WITH_CUDA
// The same ATen calls run on the GPU (cuBLAS GEMMs on the current stream); no kernel of our own.
TORCH_LIBRARY_IMPL(missingglow, CUDA, m) {
  m.impl("channel_gemm_split_forward", &channel_gemm_split_forward);
  m.impl("channel_gemm_split_backward", &channel_gemm_split_backward);
}
#endif

TORCH_LIBRARY_IMPL(missingglow, Autograd, m) {
  m.impl("channel_gemm_split_forward", &channel_gemm_split_autograd);
}

}  // namespace missingglow
