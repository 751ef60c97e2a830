// Branch-free float exp / softplus / sigmoid that the compiler vectorises inside `omp simd` loops (plain
// float and int arithmetic, no intrinsics, no libm calls). Relative error about 2e-7 (a Cephes polynomial
// with Cody-Waite range reduction for exp, a fitted polynomial for log1p), well inside the scan's tolerances.
#pragma once

#include <cstdint>
#include <cstring>

namespace vssm_cpu {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
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

// log(1 + t) for t in [0, 1]: t * Q(t), Q a degree-9 fit of log1p(t) / t on [0, 1] (relative error 2e-7,
// down to tiny t, with no log and no division).
inline float log1p_unit(float t) {
  float q = -3.256378462538123e-3f;
  q = q * t + 1.9907161593437195e-2f;
  q = q * t - 5.7064201682806015e-2f;
  q = q * t + 1.0614264756441116e-1f;
  q = q * t - 1.5311862528324127e-1f;
  q = q * t + 1.9678117334842682e-1f;
  q = q * t - 2.4954558908939362e-1f;
  q = q * t + 3.3330005407333374e-1f;
  q = q * t - 4.999990463256836e-1f;
  q = q * t + 1.0f;
  return t * q;
}

// softplus with PyTorch's threshold (x > 20: x): max(x, 0) + log1p(exp(-|x|)).
inline float fast_softplus(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float sp = (x > 0.0f ? x : 0.0f) + log1p_unit(fast_exp(-ax));
  return x > 20.0f ? x : sp;
}

// softplus(x) and its derivative sigmoid(x), sharing exp(-|x|).
inline void fast_softplus_sigmoid(float x, float& softplus, float& sigmoid) {
  const float ax = x < 0.0f ? -x : x;
  const float t = fast_exp(-ax);
  const float sp = (x > 0.0f ? x : 0.0f) + log1p_unit(t);
  softplus = x > 20.0f ? x : sp;
  sigmoid = (x >= 0.0f ? 1.0f : t) / (1.0f + t);
}

inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

}  // namespace vssm_cpu
