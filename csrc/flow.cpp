// Schemas of the fused flow ops and their CPU kernels. The CUDA kernels live in cuda/flow_cuda.cu.
#include <Python.h>

#include <ATen/Parallel.h>

#include "coupling_runs.h"
#include "flow.h"
#include "flow_math.h"

namespace missingglow {
namespace {

// Runs `elem(i, log_scale_out)` over every element of each sample and sums log s per sample.
template <typename T, typename Elem>
void per_sample(int64_t n, int64_t per, T* logdet, Elem elem) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T acc = 0;
      for (int64_t i = b * per; i < (b + 1) * per; ++i) {
        T log_scale;
        elem(i, log_scale);
        acc += log_scale;
      }
      logdet[b] = acc;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> coupling_forward_cpu(const at::Tensor& x_b, const at::Tensor& log_s,
                                                        const at::Tensor& t) {
  check_coupling_args(x_b, log_s, t, "coupling_forward");
  auto x = x_b.contiguous(), h = log_s.contiguous(), tt = t.contiguous();
  auto y = at::empty_like(x);
  const int64_t n = x.size(0), per = n ? x.numel() / n : 0;
  auto logdet = at::empty({n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coupling_forward_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>(), *tp = tt.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    per_sample<scalar_t>(n, per, logdet.data_ptr<scalar_t>(), [&](int64_t i, scalar_t& ls) {
      coupling_forward_elem(xp[i], hp[i], tp[i], yp[i], ls);
    });
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> coupling_inverse_cpu(const at::Tensor& y_b, const at::Tensor& log_s,
                                                        const at::Tensor& t) {
  check_coupling_args(y_b, log_s, t, "coupling_inverse");
  auto y = y_b.contiguous(), h = log_s.contiguous(), tt = t.contiguous();
  auto x = at::empty_like(y);
  const int64_t n = y.size(0), per = n ? y.numel() / n : 0;
  auto logdet = at::empty({n}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "coupling_inverse_cpu", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>(), *tp = tt.data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    per_sample<scalar_t>(n, per, logdet.data_ptr<scalar_t>(), [&](int64_t i, scalar_t& ls) {
      coupling_inverse_elem(yp[i], hp[i], tp[i], xp[i], ls);
      ls = -ls;
    });
  });
  return {x, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x_b,
    const at::Tensor& log_s, const at::Tensor& t) {
  check_coupling_args(x_b, log_s, t, "coupling_backward");
  check_backward_grads(grad_y, grad_logdet, x_b, "coupling_backward", "x_b");
  auto gy = grad_y.contiguous().to(x_b.scalar_type()), gl = grad_logdet.contiguous().to(x_b.scalar_type());
  auto x = x_b.contiguous(), h = log_s.contiguous(), tt = t.contiguous();
  auto gx = at::empty_like(x), gh = at::empty_like(x), gt = at::empty_like(x);
  const int64_t n = x.size(0), per = n ? x.numel() / n : 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coupling_backward_cpu", [&] {
    const scalar_t *gyp = gy.data_ptr<scalar_t>(), *glp = gl.data_ptr<scalar_t>();
    const scalar_t *xp = x.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>(), *tp = tt.data_ptr<scalar_t>();
    scalar_t *gxp = gx.data_ptr<scalar_t>(), *ghp = gh.data_ptr<scalar_t>(), *gtp = gt.data_ptr<scalar_t>();
    at::parallel_for(0, n * per, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        coupling_backward_elem(gyp[i], glp[i / per], xp[i], hp[i], tp[i], gxp[i], ghp[i], gtp[i]);
      }
    });
  });
  return {gx, gh, gt};
}

}  // namespace

TORCH_LIBRARY(missingglow, m) {
  m.def("coupling_forward(Tensor x_b, Tensor log_s, Tensor t) -> (Tensor, Tensor)");
  m.def("coupling_inverse(Tensor y_b, Tensor log_s, Tensor t) -> (Tensor, Tensor)");
  m.def("coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x_b, Tensor log_s, Tensor t)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(missingglow, CPU, m) {
  m.impl("coupling_forward", &coupling_forward_cpu);
  m.impl("coupling_inverse", &coupling_inverse_cpu);
  m.impl("coupling_backward", &coupling_backward_cpu);
}

}  // namespace missingglow

// coupling_simd() names the build of the CPU coupling loops in use; coupling_simd(name) switches
// to another ("avx512", "avx2", "portable" or "best") and raises ValueError where it cannot run.
static PyObject* py_coupling_simd(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "|s", &name)) return nullptr;
  if (name != nullptr && !missingglow::set_coupling_simd(name)) {
    return PyErr_Format(PyExc_ValueError, "coupling_simd: '%s' cannot run on this CPU or build", name);
  }
  return PyUnicode_FromString(missingglow::coupling_simd());
}

static PyMethodDef methods[] = {
    {"coupling_simd", py_coupling_simd, METH_VARARGS,
     "coupling_simd([name]) -> the build of the CPU coupling loops in use, after switching to name"},
    {nullptr, nullptr, 0, nullptr}};

// A plain Python module, so that `import missingglow._C` loads the library and runs the
// registrations above; the ops themselves are reached through torch.ops.missingglow.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
