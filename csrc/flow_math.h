// Per-element math of the fused flow ops, shared by the CPU and CUDA kernels so that the CPU
// tests exercise exactly the arithmetic the GPU runs.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MG_HD __host__ __device__ __forceinline__
#else
#define MG_HD inline
#endif

// The CPU files compiled for one instruction set (coupling_runs_*.cpp) set MG_MATH_NS, so that
// their copies of these inline templates get names of their own: the linker must never hand the
// AVX-512 build of a function to code that runs where AVX-512 is missing.
#ifndef MG_MATH_NS
#define MG_MATH_NS portable
#endif

namespace missingglow {
inline namespace MG_MATH_NS {

#if !defined(__CUDACC__)
// On the host, pick the float overloads for float (CUDA's device math is overloaded already).
using std::exp;
using std::fabs;
using std::log;
#endif

// The few operations the templates below need, written without branches so that one template
// serves a scalar T (the CUDA kernels, the CPU's scalar loops and tails) and a SIMD vector of T
// (the CPU's vector loops: simd_x86.h specializes Elem for its AVX2 and AVX-512 vectors).
template <typename T>
struct Elem {
  static MG_HD T exp_neg_abs(T v) { return exp(-fabs(v)); }                  // exp(−|v|)
  static MG_HD T select_nonneg(T v, T a, T b) { return v >= T(0) ? a : b; }  // v ≥ 0 ? a : b
  static MG_HD T min_zero(T v) { return v < T(0) ? v : T(0); }               // min(v, 0)
  static MG_HD T log_(T v) { return log(v); }
};

// s = sigmoid(v) and 1 − s from one exp, with log s split as linear − log(one_plus_e), where
// linear = min(v, 0) and one_plus_e = 1 + exp(−|v|) ∈ (1, 2]. Stable for either sign of v. The
// CPU kernels multiply the one_plus_e of up to kLogGroup elements before taking one log (a
// product of 64 numbers in (1, 2] cannot overflow even in float32).
template <typename T>
MG_HD void sigmoid_factors(T v, T& s, T& one_minus_s, T& linear, T& one_plus_e) {
  using E = Elem<T>;
  const T e = E::exp_neg_abs(v);  // in (0, 1]
  one_plus_e = T(1) + e;
  const T r = T(1) / one_plus_e;
  const T er = e * r;
  s = E::select_nonneg(v, r, er);
  one_minus_s = E::select_nonneg(v, er, r);
  linear = E::min_zero(v);
}

// s, 1 − s and log s of v, with one exp and one log.
template <typename T>
MG_HD void sigmoid_parts(T v, T& s, T& one_minus_s, T& log_s) {
  T linear, one_plus_e;
  sigmoid_factors(v, s, one_minus_s, linear, one_plus_e);
  log_s = linear - Elem<T>::log_(one_plus_e);
}

// How many one_plus_e factors the CPU kernels multiply before one log.
constexpr int kLogGroup = 64;

// s = sigmoid(v) and 1 − s from one exp (no log), stable for either sign of v.
template <typename T>
MG_HD void sigmoid_pair(T v, T& s, T& one_minus_s) {
  T linear, one_plus_e;  // unused here; the compiler drops them
  sigmoid_factors(v, s, one_minus_s, linear, one_plus_e);
}

// Affine coupling, forward, with log s left factored (see sigmoid_factors).
template <typename T>
MG_HD void coupling_forward_factored(T x, T log_s, T t, T& y, T& linear, T& one_plus_e) {
  T s, one_minus_s;
  sigmoid_factors(log_s + T(2), s, one_minus_s, linear, one_plus_e);
  y = (x + t) * s;
}

// Affine coupling, inverse, with log s left factored.
template <typename T>
MG_HD void coupling_inverse_factored(T y, T log_s, T t, T& x, T& linear, T& one_plus_e) {
  T s, one_minus_s;
  sigmoid_factors(log_s + T(2), s, one_minus_s, linear, one_plus_e);
  x = y / s - t;
}

// Affine coupling, forward: s = sigmoid(log_s + 2), y = (x + t)·s; writes log s for the logdet.
template <typename T>
MG_HD void coupling_forward_elem(T x, T log_s, T t, T& y, T& log_scale) {
  T s, one_minus_s;
  sigmoid_parts(log_s + T(2), s, one_minus_s, log_scale);
  y = (x + t) * s;
}

// Affine coupling, inverse: x = y / s − t; writes log s (the inverse's logdet is −Σ log s).
template <typename T>
MG_HD void coupling_inverse_elem(T y, T log_s, T t, T& x, T& log_scale) {
  T s, one_minus_s;
  sigmoid_parts(log_s + T(2), s, one_minus_s, log_scale);
  x = y / s - t;
}

// Affine coupling, backward from the output: with y = (x + t)·s, dy/dlog_s = y·(1 − s), so the
// gradients need only y, not x; this lets the memory-saving path and the saved-output autograd
// skip rebuilding x_b. Gradients with respect to (x_b, log_s, t).
template <typename T>
MG_HD void coupling_backward_from_output_elem(T grad_y, T grad_logdet, T y, T log_s, T& grad_x,
                                              T& grad_log_s, T& grad_t) {
  T s, one_minus_s;
  sigmoid_pair(log_s + T(2), s, one_minus_s);
  grad_x = grad_y * s;
  grad_t = grad_x;
  grad_log_s = (grad_y * y + grad_logdet) * one_minus_s;
}

// Offsets of channel c (< C/2, the passed-through half) and of its partner c + C/2 at pixel p of a
// sample with C channels and P pixels, in NCHW (channel-major) or NHWC (pixel-major) order.
struct HalfOffsets {
  int64_t a, b;
};

MG_HD HalfOffsets half_offsets(bool channels_last, int64_t c, int64_t p, int64_t channels,
                               int64_t pixels) {
  const int64_t half = channels / 2;
  return channels_last ? HalfOffsets{p * channels + c, p * channels + c + half}
                       : HalfOffsets{c * pixels + p, (c + half) * pixels + p};
}

// The j-th of the C/2·P (channel, pixel) pairs of one sample, walked in memory order.
MG_HD HalfOffsets half_offsets_at(bool channels_last, int64_t j, int64_t channels, int64_t pixels) {
  const int64_t half = channels / 2;
  return channels_last ? half_offsets(true, j % half, j / half, channels, pixels)
                       : half_offsets(false, j / pixels, j % pixels, channels, pixels);
}

}  // namespace MG_MATH_NS
}  // namespace missingglow
