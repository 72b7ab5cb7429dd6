// coupling_runs.h's loops built for AVX-512F: 16 floats or 8 doubles per instruction. The
// instructions are switched on for this file alone (#pragma GCC target, after the system
// headers), and its templates live in a namespace of their own (MG_MATH_NS), so nothing built
// here can run on a CPU without them: coupling_step.cpp asks the CPU before it takes this table.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <cmath>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#pragma GCC target("avx512f,avx2,fma")
#define MG_MATH_NS avx512
#define MG_SIMD_AVX512
#include "simd_x86.h"

namespace missingglow {

bool coupling_runs_avx512(CouplingRuns<float>* f, CouplingRuns<double>* d) {
  if (!sleef_found()) return false;
  *f = make_coupling_runs<VecF, float>("avx512");
  *d = make_coupling_runs<VecD, double>("avx512");
  return true;
}

}  // namespace missingglow
#else
#include "coupling_runs.h"

namespace missingglow {
bool coupling_runs_avx512(CouplingRuns<float>*, CouplingRuns<double>*) { return false; }
}  // namespace missingglow
#endif
