// Shapes and checks shared by the CPU and CUDA entry points of the fused flow ops.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

namespace missingglow {

// The coupling ops take (N, C, H, W)-shaped x_b, log_s, t of one dtype and device.
inline void check_coupling_args(const at::Tensor& a, const at::Tensor& log_s, const at::Tensor& t,
                                const char* op) {
  TORCH_CHECK(a.dim() >= 2, op, ": expected a batch of tensors, got ", a.dim(), " dims");
  TORCH_CHECK(a.sizes() == log_s.sizes() && a.sizes() == t.sizes(), op,
              ": x_b, log_s and t must have one shape, got ", a.sizes(), ", ", log_s.sizes(),
              ", ", t.sizes());
  TORCH_CHECK(a.scalar_type() == log_s.scalar_type() && a.scalar_type() == t.scalar_type(), op,
              ": x_b, log_s and t must have one dtype");
  TORCH_CHECK(a.device() == log_s.device() && a.device() == t.device(), op,
              ": x_b, log_s and t must be on one device");
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), op, ": expected floating-point tensors");
}

}  // namespace missingglow
