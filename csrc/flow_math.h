// Per-element math of the fused flow ops, shared by the CPU and CUDA kernels so that the CPU
// tests exercise exactly the arithmetic the GPU runs.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MG_HD __host__ __device__ __forceinline__
#else
#define MG_HD inline
#endif

namespace missingglow {

// log(sigmoid(v)) without overflow for either sign of v.
template <typename T>
MG_HD T log_sigmoid(T v) {
  return v >= T(0) ? -log1p(exp(-v)) : v - log1p(exp(v));
}

// Affine coupling, forward: s = sigmoid(log_s + 2), y = (x + t)·s; writes log s for the logdet.
template <typename T>
MG_HD void coupling_forward_elem(T x, T log_s, T t, T& y, T& log_scale) {
  log_scale = log_sigmoid(log_s + T(2));
  y = (x + t) * exp(log_scale);
}

// Affine coupling, inverse: x = y / s − t; writes log s (the inverse's logdet is −Σ log s).
template <typename T>
MG_HD void coupling_inverse_elem(T y, T log_s, T t, T& x, T& log_scale) {
  log_scale = log_sigmoid(log_s + T(2));
  x = y * exp(-log_scale) - t;
}

// Affine coupling, backward of (y, logdet) with respect to (x, log_s, t).
// dy/dx = dy/dt = s; dy/dlog_s = (x + t)·s·(1 − s); dlogdet/dlog_s = 1 − s.
template <typename T>
MG_HD void coupling_backward_elem(T grad_y, T grad_logdet, T x, T log_s, T t,
                                  T& grad_x, T& grad_log_s, T& grad_t) {
  const T s = exp(log_sigmoid(log_s + T(2)));
  const T one_minus_s = exp(log_sigmoid(-(log_s + T(2))));
  grad_x = grad_y * s;
  grad_t = grad_x;
  grad_log_s = (grad_y * (x + t) * s + grad_logdet) * one_minus_s;
}

}  // namespace missingglow
