// Shapes and checks shared by the CPU and CUDA entry points of the fused flow ops.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

namespace missingglow {

// The layout the fused ops compute in and return: channels-last when x is a 4-d tensor that is
// channels-last-dense and not also plainly contiguous (1×1 images or one channel are both);
// everything else is made contiguous. missingglow/flow/ops.py's fake kernels follow the same rule.
inline bool layout_is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat layout_of(const at::Tensor& x) {
  return layout_is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// (N, C, H, W) activations as the (N·H·W, C) matrix of their pixels, for GEMMs over the channels:
// a view when x is channels-last-dense, a copy otherwise.
inline at::Tensor pixel_rows(const at::Tensor& x) {
  return x.permute({0, 2, 3, 1}).reshape({-1, x.size(1)});
}

// The (N·H·W, C) matrix `rows` (contiguous) as channels-last (N, C, H, W) activations shaped like
// `like` in every dim but C: a view.
inline at::Tensor from_pixel_rows(const at::Tensor& rows, const at::Tensor& like) {
  return rows.view({like.size(0), like.size(2), like.size(3), rows.size(1)}).permute({0, 3, 1, 2});
}

// The whole-tensor coupling ops take x (or y) of shape (N, C, ...) with an even C and the coupling
// network's output h of the same shape (h = [log_s, t] along channels).
inline void check_coupling_step_args(const at::Tensor& x, const at::Tensor& h, const char* op) {
  TORCH_CHECK(x.dim() >= 2, op, ": expected (N, C, ...) activations, got ", x.dim(), " dims");
  TORCH_CHECK(x.size(1) % 2 == 0, op, ": the channel count must be even, got ", x.size(1));
  TORCH_CHECK(x.sizes() == h.sizes(), op, ": x and the network output h must have one shape, got ",
              x.sizes(), " and ", h.sizes());
  TORCH_CHECK(x.scalar_type() == h.scalar_type(), op, ": x and h must have one dtype");
  TORCH_CHECK(x.device() == h.device(), op, ": x and h must be on one device");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected floating-point tensors");
}

// The backward ops take grad_y shaped like the tensor `like` (named `like_name` in the message)
// and one grad_logdet entry per sample; shared by every backward op on both backends.
inline void check_backward_grads(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                 const at::Tensor& like, const char* op, const char* like_name) {
  TORCH_CHECK(grad_y.sizes() == like.sizes(), op, ": grad_y must match ", like_name, "'s shape");
  TORCH_CHECK(grad_logdet.dim() == 1 && grad_logdet.size(0) == like.size(0), op,
              ": grad_logdet must have one entry per sample");
}

}  // namespace missingglow
