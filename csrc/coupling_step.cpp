// The affine coupling on whole tensors: x = [x_a, x_b] and the network output h = [log_s, t]
// (halves along channels) give y = [x_a, (x_b + t)·s] with s = sigmoid(log_s + 2), and the
// per-sample logdet Σ log s, in one pass with no chunk or cat copies. The layout is kept
// (channels-last in, channels-last out). The backward works from the output y, so neither the
// standard nor the memory-saving path needs x. CUDA kernels: cuda/coupling_step_cuda.cu.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "coupling_runs.h"
#include "flow.h"
#include "flow_math.h"

namespace missingglow {

// --- which build of the run loops (coupling_runs.h) runs --------------------------------------

namespace {

struct RunTables {
  CouplingRuns<float> f;
  CouplingRuns<double> d;
};

RunTables portable_tables() {
  return {make_coupling_runs<float, float>("portable"),
          make_coupling_runs<double, double>("portable")};
}

// The table a name asks for, where this CPU and build can run it ("best": the widest that can).
bool tables_named(const std::string& name, RunTables* out) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if ((name == "avx512" || name == "best") && avx512 && coupling_runs_avx512(&out->f, &out->d))
    return true;
  if ((name == "avx2" || name == "best") && avx2 && coupling_runs_avx2(&out->f, &out->d))
    return true;
#endif
  if (name == "portable" || name == "best") {
    *out = portable_tables();
    return true;
  }
  return false;
}

RunTables& active_tables() {
  static RunTables tables = [] {
    RunTables t;
    tables_named("best", &t);
    return t;
  }();
  return tables;
}

template <typename T>
const CouplingRuns<T>& runs();
template <>
const CouplingRuns<float>& runs<float>() {
  return active_tables().f;
}
template <>
const CouplingRuns<double>& runs<double>() {
  return active_tables().d;
}

}  // namespace

const char* coupling_simd() { return active_tables().f.name; }

bool set_coupling_simd(const std::string& name) {
  RunTables t;
  if (!tables_named(name, &t)) return false;
  active_tables() = t;
  return true;
}

namespace {

// --- the kernels -------------------------------------------------------------------------------
//
// One sample is `runs` runs of `run` contiguous elements of each half: channels-last, one run of
// C/2 channels per pixel (the partner half C/2 further on); channels-first, one run of C/2·H·W
// (the partner half C/2·H·W further on). Long runs go to the run loops in place; short ones (the
// 6 channels of a 12-channel step) are gathered into contiguous scratch first, so the vector
// loops see whole vectors, and scattered back.

constexpr int64_t kScratch = 1024;  // elements per gathered chunk
constexpr int64_t kLongRun = 64;    // runs at least this long go straight to the loops
static_assert(kLongRun <= kScratch, "a short run must fit the scratch");

// Run r's first half starts at r·stride, its partner `partner` elements further on.
struct Layout {
  int64_t runs, run, stride, partner;
};

Layout layout_of_halves(bool channels_last, int64_t channels, int64_t pixels) {
  const int64_t half = channels / 2;
  return channels_last ? Layout{pixels, half, channels, half}
                       : Layout{1, half * pixels, 0, half * pixels};
}

// Calls fn(first_run, run_count) over chunks of short runs (< kLongRun) that fit kScratch elements.
template <typename Fn>
void for_each_chunk(const Layout& l, Fn fn) {
  if (l.run == 0) return;
  const int64_t per_chunk = kScratch / l.run;
  for (int64_t r = 0; r < l.runs; r += per_chunk) fn(r, std::min(per_chunk, l.runs - r));
}

// Copies `count` runs of `run` elements, each `src_stride` apart to each `dst_stride` apart. The
// run lengths of the usual channel counts (C/2 = 3, 6, 12, 24, 48) are compile-time constants, so
// each run is a few vector moves: a memcpy call per 6-element run costs more than the copy.
template <int64_t kRun, typename T>
void copy_runs_of(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t count) {
  for (int64_t r = 0; r < count; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, kRun * sizeof(T));
}

template <typename T>
void copy_runs(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t count,
               int64_t run) {
  switch (run) {
    case 3:
      return copy_runs_of<3>(dst, dst_stride, src, src_stride, count);
    case 6:
      return copy_runs_of<6>(dst, dst_stride, src, src_stride, count);
    case 12:
      return copy_runs_of<12>(dst, dst_stride, src, src_stride, count);
    case 24:
      return copy_runs_of<24>(dst, dst_stride, src, src_stride, count);
    case 48:
      return copy_runs_of<48>(dst, dst_stride, src, src_stride, count);
    default:
      for (int64_t r = 0; r < count; ++r)
        std::memcpy(dst + r * dst_stride, src + r * src_stride, run * sizeof(T));
  }
}

template <typename T>
void gather(const T* src, const Layout& l, int64_t first, int64_t count, int64_t offset, T* dst) {
  copy_runs(dst, l.run, src + first * l.stride + offset, l.stride, count, l.run);
}

template <typename T>
void scatter(const T* src, const Layout& l, int64_t first, int64_t count, int64_t offset, T* dst) {
  copy_runs(dst + first * l.stride + offset, l.stride, src, l.run, count, l.run);
}

// The passed-through half of runs first .. first + count − 1, from src to dst (same layout).
template <typename T>
void pass_through(const T* src, const Layout& l, int64_t first, int64_t count, T* dst) {
  copy_runs(dst + first * l.stride, l.stride, src + first * l.stride, l.stride, count, l.run);
}

// One sample's coupling: out = [in_a, coupling(in_b; h_a, h_b)]; returns Σ log s.
template <typename T, bool kInverse>
T coupling_sample(const T* in, const T* h, T* out, const Layout& l) {
  const auto& fns = runs<T>();
  const auto run_fn = kInverse ? fns.inverse : fns.forward;
  T acc = 0;
  if (l.run >= kLongRun) {
    for (int64_t r = 0; r < l.runs; ++r) {
      const int64_t a = r * l.stride, b = a + l.partner;
      std::memcpy(out + a, in + a, l.run * sizeof(T));
      acc += run_fn(in + b, h + a, h + b, out + b, l.run);
    }
    return acc;
  }
  T in_b[kScratch], log_s[kScratch], t[kScratch];
  for_each_chunk(l, [&](int64_t first, int64_t count) {
    const int64_t m = count * l.run;
    gather(in, l, first, count, l.partner, in_b);
    gather(h, l, first, count, 0, log_s);
    gather(h, l, first, count, l.partner, t);
    acc += run_fn(in_b, log_s, t, in_b, m);  // in place: each vector is read before it is written
    scatter(in_b, l, first, count, l.partner, out);
    pass_through(in, l, first, count, out);
  });
  return acc;
}

// One sample's backward from the output: grad_x = [grad_y_a, grad_x_b] and
// grad_h = [grad_log_s, grad_t], with grad_t = grad_x_b.
template <typename T>
void coupling_backward_sample(const T* grad_y, T grad_logdet, const T* y, const T* h, T* grad_x,
                              T* grad_h, const Layout& l) {
  const auto backward = runs<T>().backward;
  if (l.run >= kLongRun) {
    for (int64_t r = 0; r < l.runs; ++r) {
      const int64_t a = r * l.stride, b = a + l.partner;
      std::memcpy(grad_x + a, grad_y + a, l.run * sizeof(T));
      backward(grad_y + b, grad_logdet, y + b, h + a, grad_x + b, grad_h + a, l.run);
      std::memcpy(grad_h + b, grad_x + b, l.run * sizeof(T));
    }
    return;
  }
  T gy_b[kScratch], y_b[kScratch], log_s[kScratch];
  for_each_chunk(l, [&](int64_t first, int64_t count) {
    gather(grad_y, l, first, count, l.partner, gy_b);
    gather(y, l, first, count, l.partner, y_b);
    gather(h, l, first, count, 0, log_s);
    // in place: grad_x_b over grad_y_b, grad_log_s over log_s
    backward(gy_b, grad_logdet, y_b, log_s, gy_b, log_s, count * l.run);
    scatter(gy_b, l, first, count, l.partner, grad_x);
    scatter(gy_b, l, first, count, l.partner, grad_h);
    scatter(log_s, l, first, count, 0, grad_h);
    pass_through(grad_y, l, first, count, grad_x);
  });
}

template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_step_cpu(const at::Tensor& in_, const at::Tensor& h_,
                                                     const char* op) {
  check_coupling_step_args(in_, h_, op);
  const auto format = layout_of(in_);
  auto in = in_.contiguous(format), h = h_.contiguous(format);
  auto out = at::empty_like(in, in.options(), format);
  const int64_t n = in.size(0), c = in.size(1), per = n ? in.numel() / n : 0,
                pixels = c ? per / c : 0;
  auto logdet = at::empty({n}, in.options());
  const Layout l = layout_of_halves(format == at::MemoryFormat::ChannelsLast, c, pixels);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "coupling_step_cpu", [&] {
    const scalar_t *ip = in.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>();
    scalar_t *op_ = out.data_ptr<scalar_t>(), *lp = logdet.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const scalar_t acc =
            coupling_sample<scalar_t, kInverse>(ip + s * per, hp + s * per, op_ + s * per, l);
        lp[s] = kInverse ? -acc : acc;
      }
    });
  });
  return {out, logdet};
}

std::tuple<at::Tensor, at::Tensor> coupling_step_forward_cpu(const at::Tensor& x,
                                                             const at::Tensor& h) {
  return coupling_step_cpu<false>(x, h, "coupling_step_forward");
}

std::tuple<at::Tensor, at::Tensor> coupling_step_inverse_cpu(const at::Tensor& y,
                                                             const at::Tensor& h) {
  return coupling_step_cpu<true>(y, h, "coupling_step_inverse");
}

// Gradients of (y, logdet) with respect to x and h, given the output y. The passed-through half
// of x gets grad_y as it is; its path through the network is autograd's business.
std::tuple<at::Tensor, at::Tensor> coupling_step_backward_cpu(const at::Tensor& grad_y_,
                                                              const at::Tensor& grad_logdet_,
                                                              const at::Tensor& y_,
                                                              const at::Tensor& h_) {
  check_coupling_step_args(y_, h_, "coupling_step_backward");
  check_backward_grads(grad_y_, grad_logdet_, y_, "coupling_step_backward", "y");
  const auto format = layout_of(y_);
  auto y = y_.contiguous(format), h = h_.contiguous(format);
  auto gy = grad_y_.to(y.scalar_type()).contiguous(format);
  auto gl = grad_logdet_.to(y.scalar_type()).contiguous();
  auto gx = at::empty_like(y, y.options(), format), gh = at::empty_like(y, y.options(), format);
  const int64_t n = y.size(0), c = y.size(1), per = n ? y.numel() / n : 0, pixels = c ? per / c : 0;
  const Layout l = layout_of_halves(format == at::MemoryFormat::ChannelsLast, c, pixels);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "coupling_step_backward", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>();
    const scalar_t *gyp = gy.data_ptr<scalar_t>(), *glp = gl.data_ptr<scalar_t>();
    scalar_t *gxp = gx.data_ptr<scalar_t>(), *ghp = gh.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const int64_t off = s * per;
        coupling_backward_sample(gyp + off, glp[s], yp + off, hp + off, gxp + off, ghp + off, l);
      }
    });
  });
  return {gx, gh};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(missingglow, m) {
  m.def("coupling_step_forward(Tensor x, Tensor h) -> (Tensor, Tensor)");
  m.def("coupling_step_inverse(Tensor y, Tensor h) -> (Tensor, Tensor)");
  m.def("coupling_step_backward(Tensor grad_y, Tensor grad_logdet, Tensor y, Tensor h)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) {
  m.impl("coupling_step_forward", &coupling_step_forward_cpu);
  m.impl("coupling_step_inverse", &coupling_step_inverse_cpu);
  m.impl("coupling_step_backward", &coupling_step_backward_cpu);
}

}  // namespace missingglow
