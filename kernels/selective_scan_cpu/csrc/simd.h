// Explicit vectors across channels for the CPU scan: one type `Vec` of kLanes floats and the operations the
// kernels need, chosen when compiling (-march): AVX-512 (F, BW, VL, DQ: 16 lanes, masked tails, vscalefps), else
// AVX2 with FMA and F16C (8 lanes), else one plain float (the portable build). The math (exp2, softplus,
// sigmoid) is written once over these operations.
//
// Accuracy: exp2 is a degree-6 polynomial on [-1/2, 1/2] with the exponent added back (relative error below
// 1e-7); log1p(t) on [0, 1] is t times a degree-8 polynomial (2.1e-7, down to tiny t); the reciprocal in the
// sigmoid is refined by one Newton step. NaN inputs stay NaN.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define VSSM_SIMD_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define VSSM_SIMD_AVX2 1
#endif
#if defined(VSSM_SIMD_AVX512) || defined(VSSM_SIMD_AVX2)
#include <immintrin.h>
#endif

namespace vssm_cpu {
namespace simd {

// ---- the vector type and its loads and stores (float, bfloat16, half rows; `n` < kLanes: a partial vector) ---

#if defined(VSSM_SIMD_AVX512)
constexpr int kLanes = 16;
constexpr const char* kName = "avx512";
struct Vec {
  __m512 v;
};
struct Mask {
  __mmask16 m;
};
inline Vec bcast(float x) { return {_mm512_set1_ps(x)}; }
inline Vec zero() { return {_mm512_setzero_ps()}; }
inline __mmask16 lanes(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

inline Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline Vec load(const float* p, int n) { return {_mm512_maskz_loadu_ps(lanes(n), p)}; }
inline void store(float* p, Vec a) { _mm512_storeu_ps(p, a.v); }
// A store past the caches where the address allows it (64-byte aligned): for outputs nothing reads soon.
inline void stream(float* p, Vec a) {
  if ((reinterpret_cast<uintptr_t>(p) & 63) == 0)
    _mm512_stream_ps(p, a.v);
  else
    _mm512_storeu_ps(p, a.v);
}
inline void fence() { _mm_sfence(); }  // orders the streamed stores before what follows
inline void store(float* p, Vec a, int n) { _mm512_mask_storeu_ps(p, lanes(n), a.v); }

inline Vec widen_bf16(__m256i h) { return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))}; }
inline Vec load(const c10::BFloat16* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline Vec load(const c10::BFloat16* p, int n) { return widen_bf16(_mm256_maskz_loadu_epi16(lanes(n), p)); }
inline __m256i narrow_bf16(Vec a) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
#if defined(__AVX512BF16__)
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(a.v));
#else
  const __m512i bits = _mm512_castps_si512(a.v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
#endif
}
inline void store(c10::BFloat16* p, Vec a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(a)); }
inline void store(c10::BFloat16* p, Vec a, int n) { _mm256_mask_storeu_epi16(p, lanes(n), narrow_bf16(a)); }

inline Vec load(const c10::Half* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
inline Vec load(const c10::Half* p, int n) { return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes(n), p))}; }
inline __m256i narrow_half(Vec a) { return _mm512_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline void store(c10::Half* p, Vec a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_half(a)); }
inline void store(c10::Half* p, Vec a, int n) { _mm256_mask_storeu_epi16(p, lanes(n), narrow_half(a)); }

inline Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }    // a * b + c
inline Vec fnma(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a * b
inline Vec max_nan(Vec lo, Vec a) { return {_mm512_max_ps(lo.v, a.v)}; }  // max(lo, a), NaN a stays NaN
inline Vec min_nan(Vec hi, Vec a) { return {_mm512_min_ps(hi.v, a.v)}; }
inline Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
inline Mask nonnegative(Vec a) { return {_mm512_cmp_ps_mask(a.v, _mm512_setzero_ps(), _CMP_GE_OQ)}; }
inline Vec select(Mask m, Vec yes, Vec no) { return {_mm512_mask_blend_ps(m.m, no.v, yes.v)}; }
inline Vec round_nearest(Vec a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline Vec scale_pow2(Vec p, Vec n) { return {_mm512_scalef_ps(p.v, n.v)}; }  // p * 2^n, n integral
inline Vec reciprocal(Vec d) {                                                    // one Newton step on rcp14
  const __m512 r = _mm512_rcp14_ps(d.v);
  return {_mm512_mul_ps(r, _mm512_fnmadd_ps(d.v, r, _mm512_set1_ps(2.0f)))};
}
inline float sum(Vec a) { return _mm512_reduce_add_ps(a.v); }
// The lane sums of kLanes vectors v[0], v[stride], ...: lane j of the result is the sum of v[j * stride]
// (interleaving adds: 45 operations for 16 sums).
inline Vec sum_each(const Vec* v, int stride) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[2 * i * stride].v, b = v[(2 * i + 1) * stride].v;
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d c = _mm512_castps_pd(t[2 * i]), d = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
  }
  const __m512 p0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 p1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return {_mm512_add_ps(_mm512_shuffle_f32x4(p0, p1, 0x88), _mm512_shuffle_f32x4(p0, p1, 0xDD))};
}
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

#elif defined(VSSM_SIMD_AVX2)
constexpr int kLanes = 8;
constexpr const char* kName = "avx2";
struct Vec {
  __m256 v;
};
struct Mask {
  __m256 m;
};
inline Vec bcast(float x) { return {_mm256_set1_ps(x)}; }
inline Vec zero() { return {_mm256_setzero_ps()}; }
inline __m256i lanes(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }

inline Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline Vec load(const float* p, int n) { return {_mm256_maskload_ps(p, lanes(n))}; }
inline void store(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
inline void stream(float* p, Vec a) {
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0)
    _mm256_stream_ps(p, a.v);
  else
    _mm256_storeu_ps(p, a.v);
}
inline void fence() { _mm_sfence(); }
inline void store(float* p, Vec a, int n) { _mm256_maskstore_ps(p, lanes(n), a.v); }

inline Vec load(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}
inline __m128i narrow_bf16(Vec a) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
  const __m256i bits = _mm256_castps_si256(a.v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
inline void store(c10::BFloat16* p, Vec a) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_bf16(a)); }
inline Vec load(const c10::Half* p) { return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
inline void store(c10::Half* p, Vec a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
template <typename T>  // partial 16-bit rows go through a buffer
inline Vec load(const T* p, int n) {
  alignas(32) T buf[kLanes] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return load(static_cast<const T*>(buf));
}
template <typename T>
inline void store(T* p, Vec a, int n) {
  alignas(32) T buf[kLanes];
  store(static_cast<T*>(buf), a);
  std::memcpy(p, buf, n * sizeof(T));
}

inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec fnma(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline Vec max_nan(Vec lo, Vec a) { return {_mm256_max_ps(lo.v, a.v)}; }
inline Vec min_nan(Vec hi, Vec a) { return {_mm256_min_ps(hi.v, a.v)}; }
inline Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
inline Mask nonnegative(Vec a) { return {_mm256_cmp_ps(a.v, _mm256_setzero_ps(), _CMP_GE_OQ)}; }
inline Vec select(Mask m, Vec yes, Vec no) { return {_mm256_blendv_ps(no.v, yes.v, m.m)}; }
inline Vec round_nearest(Vec a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline Vec scale_pow2(Vec p, Vec n) {  // n integral in [-127, 128] (exp2 clamps): 2^-127 -> 0, 2^128 -> inf
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
  return {_mm256_mul_ps(p.v, _mm256_castsi256_ps(e))};
}
inline Vec reciprocal(Vec d) {
  const __m256 r = _mm256_rcp_ps(d.v);
  return {_mm256_mul_ps(r, _mm256_fnmadd_ps(d.v, r, _mm256_set1_ps(2.0f)))};
}
inline float sum(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// The lane sums of kLanes vectors v[0], v[stride], ...: lane j of the result is the sum of v[j * stride].
inline Vec sum_each(const Vec* v, int stride) {
  __m256 t[4], u[2];
  for (int i = 0; i < 4; ++i) {
    const __m256 a = v[2 * i * stride].v, b = v[(2 * i + 1) * stride].v;
    t[i] = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  }
  for (int i = 0; i < 2; ++i) {
    const __m256d c = _mm256_castps_pd(t[2 * i]), d = _mm256_castps_pd(t[2 * i + 1]);
    u[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(c, d)), _mm256_castpd_ps(_mm256_unpackhi_pd(c, d)));
  }
  return {_mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20), _mm256_permute2f128_ps(u[0], u[1], 0x31))};
}
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

#else  // portable: one float
constexpr int kLanes = 1;
constexpr const char* kName = "scalar";
struct Vec {
  float v;
};
struct Mask {
  bool m;
};
inline Vec bcast(float x) { return {x}; }
inline Vec zero() { return {0.0f}; }
template <typename T>
inline Vec load(const T* p) { return {static_cast<float>(*p)}; }
template <typename T>
inline Vec load(const T* p, int) { return load(p); }
template <typename T>
inline void store(T* p, Vec a) { *p = static_cast<T>(a.v); }
template <typename T>
inline void store(T* p, Vec a, int) { store(p, a); }
inline void stream(float* p, Vec a) { store(p, a); }
inline void fence() {}
inline Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
inline Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
inline Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
inline Vec fnma(Vec a, Vec b, Vec c) { return {c.v - a.v * b.v}; }
inline Vec max_nan(Vec lo, Vec a) { return {a.v != a.v ? a.v : (a.v > lo.v ? a.v : lo.v)}; }
inline Vec min_nan(Vec hi, Vec a) { return {a.v != a.v ? a.v : (a.v < hi.v ? a.v : hi.v)}; }
inline Vec abs(Vec a) { return {a.v < 0.0f ? -a.v : a.v}; }
inline Mask nonnegative(Vec a) { return {a.v >= 0.0f}; }
inline Vec select(Mask m, Vec yes, Vec no) { return m.m ? yes : no; }
inline Vec round_nearest(Vec a) { return {__builtin_nearbyintf(a.v)}; }
inline Vec scale_pow2(Vec p, Vec n) {  // n integral in [-127, 128] (exp2 clamps)
  const int32_t e = (static_cast<int32_t>(n.v) + 127) << 23;
  float s;
  std::memcpy(&s, &e, sizeof s);
  return {p.v * s};
}
inline Vec reciprocal(Vec d) { return {1.0f / d.v}; }
inline float sum(Vec a) { return a.v; }
inline Vec sum_each(const Vec* v, int) { return v[0]; }
inline void prefetch(const void* p) { __builtin_prefetch(p); }
#endif

template <typename T>  // 16-bit rows: plain stores
inline void stream(T* p, Vec a) { store(p, a); }

// ---- math ------------------------------------------------------------------------------------------------

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// 2^x (0 below -127 on the builds without vscalefps; exactly 0 far below, inf far above; NaN stays NaN).
inline Vec exp2(Vec x) {
#if defined(VSSM_SIMD_AVX512)
  x = min_nan(bcast(192.0f), max_nan(bcast(-192.0f), x));
#else
  x = min_nan(bcast(128.0f), max_nan(bcast(-127.0f), x));
#endif
  const Vec n = round_nearest(x);
  const Vec f = x - n;  // [-1/2, 1/2]
  Vec p = bcast(1.534580806037411e-4f);
  p = fma(p, f, bcast(1.339993206784129e-3f));
  p = fma(p, f, bcast(9.618489071726799e-3f));
  p = fma(p, f, bcast(5.550328642129898e-2f));
  p = fma(p, f, bcast(2.402264624834061e-1f));
  p = fma(p, f, bcast(6.931471824645996e-1f));
  p = fma(p, f, bcast(1.0f));
  return scale_pow2(p, n);
}

// log(1 + t) for t in [0, 1]: t * Q(t).
inline Vec log1p_unit(Vec t) {
  Vec q = bcast(5.232629366219044e-3f);
  q = fma(q, t, bcast(-2.9504986479878426e-2f));
  q = fma(q, t, bcast(7.822556048631668e-2f));
  q = fma(q, t, bcast(-1.3663214445114136e-1f));
  q = fma(q, t, bcast(1.910599321126938e-1f));
  q = fma(q, t, bcast(-2.484297901391983e-1f));
  q = fma(q, t, bcast(3.331909775733948e-1f));
  q = fma(q, t, bcast(-4.999949336051941e-1f));
  q = fma(q, t, bcast(9.999999403953552e-1f));
  return t * q;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); above 20 this rounds to x itself, as PyTorch's threshold gives.
inline Vec softplus(Vec x) {
  const Vec t = exp2(abs(x) * bcast(-kLog2e));
  return max_nan(zero(), x) + log1p_unit(t);
}

// softplus(x) and its derivative sigmoid(x), sharing exp(-|x|).
inline void softplus_sigmoid(Vec x, Vec& sp, Vec& sg) {
  const Vec t = exp2(abs(x) * bcast(-kLog2e));
  sp = max_nan(zero(), x) + log1p_unit(t);
  sg = select(nonnegative(x), bcast(1.0f), t) * reciprocal(bcast(1.0f) + t);
}

inline Vec sigmoid(Vec x) { return reciprocal(bcast(1.0f) + exp2(x * bcast(-kLog2e))); }

}  // namespace simd
}  // namespace vssm_cpu
