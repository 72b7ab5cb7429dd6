// The missingglow op library and the Python module missingglow._C that loads it.
#include <Python.h>

#include "coupling_runs.h"
#include "flow.h"

namespace missingglow {

// The op library itself; each op's schema and kernels live in its own file
// (TORCH_LIBRARY_FRAGMENT): actnorm_conv.cpp, coupling_step.cpp, flow_step.cpp, and cuda/.
TORCH_LIBRARY(missingglow, m) {}

}  // namespace missingglow

// coupling_simd() names the build of the CPU coupling loops in use; coupling_simd(name) switches
// to another ("avx512", "avx2", "portable" or "best") and raises ValueError where it cannot run.
static PyObject* py_coupling_simd(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "|s", &name)) return nullptr;
  if (name != nullptr && !missingglow::set_coupling_simd(name)) {
    return PyErr_Format(PyExc_ValueError, "coupling_simd: '%s' cannot run on this CPU or build",
                        name);
  }
  return PyUnicode_FromString(missingglow::coupling_simd());
}

static PyMethodDef methods[] = {
    {"coupling_simd", py_coupling_simd, METH_VARARGS,
     "coupling_simd([name]) -> the build of the CPU coupling loops in use, after switching to "
     "name"},
    {nullptr, nullptr, 0, nullptr},
};

// A plain Python module, so that `import missingglow._C` loads the library and with it every op
// registration; the ops themselves are reached through torch.ops.missingglow.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
