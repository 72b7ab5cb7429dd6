// SIMD lane types for coupling_runs.h on x86-64: AVX2 (8 floats, 4 doubles) where MG_SIMD_AVX2 is
// set, AVX-512 (16, 8) where MG_SIMD_AVX512 is. Only coupling_runs_avx2.cpp and
// coupling_runs_avx512.cpp include it, after `#pragma GCC target` has switched the instructions on.
//
// exp and log are the Sleef functions inside libtorch_cpu, the ones ATen's own vector code calls.
// They are declared weak: a torch built without them still loads us, and the tables report false.
#pragma once

#include <cstring>

#include <immintrin.h>

#include "coupling_runs.h"
#include "flow_math.h"

extern "C" {
#if defined(MG_SIMD_AVX2)
__m256 Sleef_expf8_u10avx2(__m256) __attribute__((weak));
__m256 Sleef_logf8_u10avx2(__m256) __attribute__((weak));
__m256d Sleef_expd4_u10avx2(__m256d) __attribute__((weak));
__m256d Sleef_logd4_u10avx2(__m256d) __attribute__((weak));
#endif
#if defined(MG_SIMD_AVX512)
__m512 Sleef_expf16_u10avx512f(__m512) __attribute__((weak));
__m512 Sleef_logf16_u10avx512f(__m512) __attribute__((weak));
__m512d Sleef_expd8_u10avx512f(__m512d) __attribute__((weak));
__m512d Sleef_logd8_u10avx512f(__m512d) __attribute__((weak));
#endif
}

// A register type as a template argument loses its alignment attribute, which GCC warns about;
// Vec never relies on it (loads and stores go through memcpy).
#pragma GCC diagnostic ignored "-Wignored-attributes"

namespace missingglow {
inline namespace MG_MATH_NS {

// N lanes of T in the register type R, with the arithmetic flow_math.h's templates use (GCC's
// vector extensions give R its +, −, ×, ÷ lane by lane).
template <typename R, typename T, int N>
struct Vec {
  R v;
  Vec() = default;
  Vec(R r) : v(r) {}
  explicit Vec(T x) : v(R{} + x) {}  // every lane x
  friend Vec operator+(Vec a, Vec b) { return Vec(a.v + b.v); }
  friend Vec operator-(Vec a, Vec b) { return Vec(a.v - b.v); }
  friend Vec operator*(Vec a, Vec b) { return Vec(a.v * b.v); }
  friend Vec operator/(Vec a, Vec b) { return Vec(a.v / b.v); }
};

template <typename R, typename T, int N>
struct Lanes<Vec<R, T, N>> {
  static constexpr int64_t kSize = N;
  static Vec<R, T, N> load(const T* p) {
    R r;
    std::memcpy(&r, p, sizeof(R));  // an unaligned vector load
    return r;
  }
  static void store(Vec<R, T, N> x, T* p) { std::memcpy(p, &x.v, sizeof(R)); }
  static T sum(Vec<R, T, N> x) {
    T lanes[N];
    std::memcpy(lanes, &x.v, sizeof(R));
    T total = 0;
    for (int i = 0; i < N; ++i) total += lanes[i];
    return total;
  }
};

#if defined(MG_SIMD_AVX2)
using VecF = Vec<__m256, float, 8>;
using VecD = Vec<__m256d, double, 4>;

template <>
struct Elem<VecF> {
  static VecF exp_neg_abs(VecF x) {
    return Sleef_expf8_u10avx2(_mm256_or_ps(x.v, _mm256_set1_ps(-0.0f)));
  }
  static VecF select_nonneg(VecF x, VecF a, VecF b) {
    return _mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(x.v, _mm256_setzero_ps(), _CMP_GE_OQ));
  }
  // NaN → 0, as the scalar's
  static VecF min_zero(VecF x) { return _mm256_min_ps(x.v, _mm256_setzero_ps()); }
  static VecF log_(VecF x) { return Sleef_logf8_u10avx2(x.v); }
};

template <>
struct Elem<VecD> {
  static VecD exp_neg_abs(VecD x) {
    return Sleef_expd4_u10avx2(_mm256_or_pd(x.v, _mm256_set1_pd(-0.0)));
  }
  static VecD select_nonneg(VecD x, VecD a, VecD b) {
    return _mm256_blendv_pd(b.v, a.v, _mm256_cmp_pd(x.v, _mm256_setzero_pd(), _CMP_GE_OQ));
  }
  static VecD min_zero(VecD x) { return _mm256_min_pd(x.v, _mm256_setzero_pd()); }
  static VecD log_(VecD x) { return Sleef_logd4_u10avx2(x.v); }
};

inline bool sleef_found() {
  return Sleef_expf8_u10avx2 && Sleef_logf8_u10avx2 && Sleef_expd4_u10avx2 && Sleef_logd4_u10avx2;
}
#endif

#if defined(MG_SIMD_AVX512)
using VecF = Vec<__m512, float, 16>;
using VecD = Vec<__m512d, double, 8>;

template <>
struct Elem<VecF> {
  static VecF exp_neg_abs(VecF x) {
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return Sleef_expf16_u10avx512f(
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x.v), sign)));
  }
  static VecF select_nonneg(VecF x, VecF a, VecF b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_GE_OQ), b.v, a.v);
  }
  static VecF min_zero(VecF x) {  // x where x < 0, else 0 (NaN → 0); GCC 12 misreads _mm512_min_ps
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_LT_OQ), x.v);
  }
  static VecF log_(VecF x) { return Sleef_logf16_u10avx512f(x.v); }
};

template <>
struct Elem<VecD> {
  static VecD exp_neg_abs(VecD x) {
    const __m512i sign = _mm512_set1_epi64(static_cast<long long>(0x8000000000000000ull));
    return Sleef_expd8_u10avx512f(
        _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(x.v), sign)));
  }
  static VecD select_nonneg(VecD x, VecD a, VecD b) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x.v, _mm512_setzero_pd(), _CMP_GE_OQ), b.v, a.v);
  }
  static VecD min_zero(VecD x) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x.v, _mm512_setzero_pd(), _CMP_LT_OQ), x.v);
  }
  static VecD log_(VecD x) { return Sleef_logd8_u10avx512f(x.v); }
};

inline bool sleef_found() {
  return Sleef_expf16_u10avx512f && Sleef_logf16_u10avx512f && Sleef_expd8_u10avx512f &&
         Sleef_logd8_u10avx512f;
}
#endif

}  // namespace MG_MATH_NS
}  // namespace missingglow
