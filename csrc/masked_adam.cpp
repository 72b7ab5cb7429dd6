// Adam's update over a list of tensors in one op, skipped whole when found_inf is set: the CPU
// twin of torch's fused CUDA Adam with found_inf (missingglow/training/adam.py). The learning
// rate, the skip flag and each step count are 0-dim tensors read inside the op, never on the
// host side, so a step dispatches one op and no scalar read. The formula is masked_adam_'s in
// missingglow/flow/ops_reference.py: m ← β1·m + (1 − β1)·g, v ← β2·v + (1 − β2)·g²,
// θ ← θ + (m / (√v / √(1 − β2^t) + ε))·(−lr / (1 − β1^t)), bias corrections in double.
// CUDA runs torch's own fused kernel, so this op has no CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace missingglow {

namespace {

// A 0-dim (or one-element) CPU tensor's value, read from its memory (no ATen op dispatched).
double scalar_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1, "masked_adam_: ", name, " must hold one number, got ", t.numel());
  TORCH_CHECK(t.device().is_cpu(), "masked_adam_: ", name, " must be on the CPU");
  switch (t.scalar_type()) {
    case at::kDouble:
      return *t.const_data_ptr<double>();
    case at::kFloat:
      return *t.const_data_ptr<float>();
    default:
      TORCH_CHECK(false, "masked_adam_: ", name, " must be float32 or float64, got ",
                  t.scalar_type());
  }
  return 0.0;
}

// Whether b's elements lie in memory as a's do, so that one flat index walks both: the same sizes,
// both dense, and the same strides wherever a size is above 1 (a size-1 dim's stride is arbitrary).
bool same_memory_order(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || !b.is_non_overlapping_and_dense()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

void check_lists(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList steps) {
  const size_t n = params.size();
  TORCH_CHECK(
      grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
      "masked_adam_: params, grads, exp_avgs, exp_avg_sqs and steps must be lists of one "
      "length");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device().is_cpu(), "masked_adam_: expected CPU tensors (CUDA runs torch's "
                                     "fused Adam)");
    TORCH_CHECK(p.scalar_type() == params[0].scalar_type() &&
                    (p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble),
                "masked_adam_: params must all be float32 or all float64");
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "masked_adam_: params must be dense tensors");
    for (const at::Tensor* t : {&grads[i], &exp_avgs[i], &exp_avg_sqs[i]}) {
      TORCH_CHECK(same_memory_order(p, *t) && t->scalar_type() == p.scalar_type() &&
                      t->device() == p.device(),
                  "masked_adam_: each grad and moment must have its param's shape, dtype, "
                  "device and memory layout");
    }
    const at::ScalarType step_type = steps[i].scalar_type();
    TORCH_CHECK(steps[i].numel() == 1 && steps[i].device().is_cpu() &&
                    (step_type == at::kFloat || step_type == at::kDouble),
                "masked_adam_: each step count must be a one-number float32 or float64 CPU "
                "tensor");
  }
}

// Adds 1 to a step count (float32, as torch's Adam keeps it, or float64) and returns the new count.
double advance(const at::Tensor& step) {
  if (step.scalar_type() == at::kDouble) return *step.data_ptr<double>() += 1.0;
  return *step.data_ptr<float>() += 1.0f;
}

// Per tensor: the step's two rates, from its (already advanced) step count.
struct Rates {
  double rate;         // −lr / (1 − β1^t)
  double correction2;  // √(1 − β2^t)
};

// The loop the op spends its time in: restrict pointers, and setup.py's -fno-math-errno for the
// sqrt (its argument is never negative), let the compiler vectorise it.
template <typename T>
void update_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                  int64_t begin, int64_t end, double beta1, double beta2, T eps, T rate,
                  T correction2) {
  // the coefficients rounded once from double, as the reference's Python numbers are
  const T keep1 = T(beta1), add1 = T(1.0 - beta1), keep2 = T(beta2), add2 = T(1.0 - beta2);
  for (int64_t k = begin; k < end; ++k) {
    const T grad = g[k];
    const T mk = m[k] * keep1 + grad * add1;
    const T vk = v[k] * keep2 + add2 * grad * grad;
    m[k] = mk;
    v[k] = vk;
    const T denom = std::sqrt(vk) / correction2 + eps;
    p[k] = p[k] + (mk / denom) * rate;
  }
}

}  // namespace

void masked_adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                  at::TensorList exp_avg_sqs, at::TensorList steps, const at::Tensor& lr,
                  double beta1, double beta2, double eps, const at::Tensor& found_inf) {
  check_lists(params, grads, exp_avgs, exp_avg_sqs, steps);
  const double learning_rate = scalar_of(lr, "lr");
  if (scalar_of(found_inf, "found_inf") != 0.0 || params.empty()) return;  // a bad step

  const size_t n = params.size();
  std::vector<int64_t> offsets(n + 1, 0);  // where each tensor starts in one flat index
  std::vector<Rates> rates(n);
  for (size_t i = 0; i < n; ++i) {
    const double t = advance(steps[i]);
    rates[i] = {-learning_rate / (1.0 - std::pow(beta1, t)), std::sqrt(1.0 - std::pow(beta2, t))};
    offsets[i + 1] = offsets[i] + params[i].numel();
  }

  AT_DISPATCH_FLOATING_TYPES(params[0].scalar_type(), "masked_adam_", [&] {
    // contiguous ranges of the flat index, split over threads without regard to tensor borders
    at::parallel_for(0, offsets[n], 1 << 14, [&](int64_t begin, int64_t end) {
      size_t i = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
      while (begin < end) {
        const int64_t stop = std::min(end, offsets[i + 1]);
        update_range<scalar_t>(params[i].data_ptr<scalar_t>(), grads[i].const_data_ptr<scalar_t>(),
                               exp_avgs[i].data_ptr<scalar_t>(),
                               exp_avg_sqs[i].data_ptr<scalar_t>(), begin - offsets[i],
                               stop - offsets[i], beta1, beta2, scalar_t(eps),
                               scalar_t(rates[i].rate), scalar_t(rates[i].correction2));
        begin = stop;
        ++i;
      }
    });
  });
}

TORCH_LIBRARY_FRAGMENT(missingglow, m) {
  m.def("masked_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs,"
        " Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, Tensor lr, float beta1, float beta2,"
        " float eps, Tensor found_inf) -> ()");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) { m.impl("masked_adam_", &masked_adam_); }

}  // namespace missingglow
