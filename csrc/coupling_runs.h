// The affine coupling over contiguous runs of elements: the loops the CPU kernels spend their
// time in. They are written once over a lane type L, either the scalar T (the portable build) or a
// SIMD vector of T (simd_x86.h, compiled in coupling_runs_avx2.cpp and coupling_runs_avx512.cpp),
// and they call the per-element templates of flow_math.h, the same ones the CUDA kernels run.
// A vector loop ends with a scalar tail through the same templates.
#pragma once

#include <cstdint>
#include <string>

#include "flow_math.h"

namespace missingglow {

// The run functions of one (instruction set, dtype); coupling_step.cpp picks a table at load.
template <typename T>
struct CouplingRuns {
  // out = the coupling (forward or inverse) of n elements; returns their Σ log s.
  T (*forward)(const T* x_b, const T* log_s, const T* t, T* y_b, int64_t n);
  T (*inverse)(const T* y_b, const T* log_s, const T* t, T* x_b, int64_t n);
  // grad_x_b (which is also grad_t) and grad_log_s of n elements from the output y_b.
  void (*backward)(const T* grad_y, T grad_logdet, const T* y_b, const T* log_s, T* grad_x_b,
                   T* grad_log_s, int64_t n);
  const char* name;
};

// Tables of the SIMD builds; false where this build, CPU or torch's Sleef cannot run them (the
// caller checks the CPU first: these files' code must not run on a CPU without the instructions).
bool coupling_runs_avx2(CouplingRuns<float>* f, CouplingRuns<double>* d);
bool coupling_runs_avx512(CouplingRuns<float>* f, CouplingRuns<double>* d);

// The build of the loops in use ("avx512", "avx2" or "portable"; the widest this CPU runs, at
// load), and a switch for tests and benchmarks (missingglow._C.coupling_simd); false where the
// named build cannot run here.
const char* coupling_simd();
bool set_coupling_simd(const std::string& name);

inline namespace MG_MATH_NS {

// How to load, store and sum a lane type; a scalar is a vector of one lane.
template <typename L>
struct Lanes {
  static constexpr int64_t kSize = 1;
  static L load(const L* p) { return *p; }
  static void store(L v, L* p) { *p = v; }
  static L sum(L v) { return v; }
};

// Σ log s = Σ linear − Σ log(one_plus_e) (flow_math.h), one log per lane per kLogGroup vectors.
template <typename L, typename T, bool kInverse>
T coupling_run(const T* in, const T* log_s, const T* t, T* out, int64_t n) {
  using LL = Lanes<L>;
  L linear_sum(T(0)), log_sum(T(0)), product(T(1));
  int grouped = 0;
  int64_t i = 0;
  for (; i + LL::kSize <= n; i += LL::kSize) {
    L y, linear, one_plus_e;
    if (kInverse) {
      coupling_inverse_factored(LL::load(in + i), LL::load(log_s + i), LL::load(t + i), y, linear,
                                one_plus_e);
    } else {
      coupling_forward_factored(LL::load(in + i), LL::load(log_s + i), LL::load(t + i), y, linear,
                                one_plus_e);
    }
    LL::store(y, out + i);
    linear_sum = linear_sum + linear;
    product = product * one_plus_e;
    if (++grouped == kLogGroup) {
      log_sum = log_sum + Elem<L>::log_(product);
      product = L(T(1));
      grouped = 0;
    }
  }
  T acc = LL::sum(linear_sum - (log_sum + Elem<L>::log_(product)));
  if (i < n) acc += coupling_run<T, T, kInverse>(in + i, log_s + i, t + i, out + i, n - i);
  return acc;
}

template <typename L, typename T>
void coupling_backward_run(const T* grad_y, T grad_logdet, const T* y, const T* log_s, T* grad_x,
                           T* grad_log_s, int64_t n) {
  using LL = Lanes<L>;
  const L gl(grad_logdet);
  int64_t i = 0;
  for (; i + LL::kSize <= n; i += LL::kSize) {
    L gx, gls, gt;
    coupling_backward_from_output_elem(LL::load(grad_y + i), gl, LL::load(y + i),
                                       LL::load(log_s + i), gx, gls, gt);
    LL::store(gx, grad_x + i);
    LL::store(gls, grad_log_s + i);
  }
  if (i < n)
    coupling_backward_run<T, T>(grad_y + i, grad_logdet, y + i, log_s + i, grad_x + i,
                                grad_log_s + i, n - i);
}

template <typename L, typename T>
CouplingRuns<T> make_coupling_runs(const char* name) {
  return {&coupling_run<L, T, false>, &coupling_run<L, T, true>, &coupling_backward_run<L, T>,
          name};
}

}  // namespace MG_MATH_NS
}  // namespace missingglow
