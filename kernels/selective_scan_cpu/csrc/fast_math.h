// Branch-free float exp / log / softplus / sigmoid that the compiler vectorises inside `omp simd` loops
// (plain float and int arithmetic, no intrinsics, no libm calls). Relative error about 2e-7 (Cephes
// polynomials with Cody-Waite range reduction), well inside the fp32 tolerances of the scan.
#pragma once

#include <cstdint>
#include <cstring>

namespace vssm_cpu {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// e^x; exactly 0 below -87.3 (where float underflows), saturates at 88.7.
inline float fast_exp(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.3f ? 0.0f : p * scale;
}

// natural log of a positive, finite, normal x.
inline float fast_log(float x) {
  const int32_t bits = float_to_bits(x);
  float e = static_cast<float>((bits >> 23) - 126);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + e * 0.693359375f;
}

// log(1 + t) for t in [0, 1], accurate for tiny t (the classic u = 1 + t correction).
inline float fast_log1p_unit(float t) {
  const float u = 1.0f + t;
  const float d = u - 1.0f;
  const float l = fast_log(u);
  return d == 0.0f ? t : l * (t / d);
}

// softplus with PyTorch's threshold (x > 20: x).
inline float fast_softplus(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float sp = (x > 0.0f ? x : 0.0f) + fast_log1p_unit(fast_exp(-ax));
  return x > 20.0f ? x : sp;
}

inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

}  // namespace vssm_cpu
