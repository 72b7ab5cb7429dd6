// The autograd formula of coupling_step_forward, in C++: the training step calls the coupling once
// per flow step, and a formula registered from Python runs the interpreter twice per call (the
// forward's context and the backward), which costs more host time than the op's own pass over
// the activations at small shapes. Same gradients as the formula it replaces: the backward op
// from the saved output y and h, zeros for an output nobody used, and only the gradients wanted.
#include <torch/autograd.h>
#include <torch/library.h>

#include "flow.h"

namespace missingglow {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using PairOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&);
using BackwardOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, const at::Tensor&);

const c10::TypedOperatorHandle<PairOp>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("missingglow::coupling_step_forward", "")
                             .typed<PairOp>();
  return op;
}

const c10::TypedOperatorHandle<BackwardOp>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("missingglow::coupling_step_backward", "")
                             .typed<BackwardOp>();
  return op;
}

class CouplingStep : public torch::autograd::Function<CouplingStep> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& h) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] = forward_op().call(x, h);
    ctx->save_for_backward({y, h});  // the backward needs the output y, not x
    return {y, logdet};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &h = saved[1];
    const at::Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(y);
    const at::Tensor grad_logdet =
        grads[1].defined() ? grads[1] : at::zeros({y.size(0)}, y.options());
    auto [grad_x, grad_h] = backward_op().call(grad_y, grad_logdet, y, h);
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_h : at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> coupling_step_forward_autograd(const at::Tensor& x,
                                                                  const at::Tensor& h) {
  auto out = CouplingStep::apply(x, h);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(missingglow, Autograd, m) {
  m.impl("coupling_step_forward", &coupling_step_forward_autograd);
}

}  // namespace missingglow
