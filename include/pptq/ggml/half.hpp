#pragma once
// The 16-bit floats of ggml's formats: IEEE binary16 (the d and dmin of every block, F16 tensors) and
// bfloat16 (BF16 tensors), to and from float32 by bit manipulation, so that no result depends on the
// FPU's rounding mode or on F16C. The one conversion the ggml family (blocks.hpp, grid.hpp) uses.
//
// Depends only on the standard library.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pptq::ggml {

inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ----------------------------------------------------------------------------------------------------
// binary16
// ----------------------------------------------------------------------------------------------------

/// Exact half -> float (every half is a float). NaNs keep their sign and payload.
inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  std::uint32_t m = h & 0x3ffu;
  if (e == 0) {
    if (m == 0) return bits_float(sign);
    // Subnormal m·2^-24: shift the leading one up to the implicit bit position.
    std::uint32_t exp = 113;  // float biased exponent of 2^-14, the first normal half binade
    while ((m & 0x400u) == 0) {
      m <<= 1;
      --exp;
    }
    m &= 0x3ffu;
    return bits_float(sign | (exp << 23) | (m << 13));
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));  // inf / NaN (payload kept)
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

namespace detail {
/// |f| below 2^-14 (ax its magnitude bits) to a subnormal half (or zero, or the smallest normal by carry).
inline std::uint16_t subnormal_half(std::uint32_t sign, std::uint32_t ax) noexcept {
  if (ax <= 0x33000000u) return static_cast<std::uint16_t>(sign);  // <= 2^-25 (tie -> even 0)
  const std::uint32_t e = ax >> 23;                                 // 102..112
  const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;             // value m·2^(e-150)
  const std::uint32_t shift = 126u - e;                             // to units of 2^-24: 14..24
  std::uint32_t q = m >> shift;
  const std::uint32_t rem = m & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into 0x400 = smallest normal: correct
  return static_cast<std::uint16_t>(sign | q);
}
}  // namespace detail

/// float -> half, round to nearest, ties to even: subnormal halves, overflow to ±inf (from 65520 on),
/// NaN -> a quiet NaN with the same sign and the top payload bits.
inline std::uint16_t float_to_half(float f) noexcept {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (ax < 0x38800000u) return detail::subnormal_half(sign, ax);              // below 2^-14
  std::uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu));
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is the right result
  return static_cast<std::uint16_t>(sign | h);
}

/// The nearest FINITE half to v (what a fit stores as d or dmin): overflow clamps to ±65504, a
/// non-finite v gives 0.
inline std::uint16_t nearest_finite_half(double v) noexcept {
  if (!std::isfinite(v)) v = 0;
  std::uint16_t h = float_to_half(static_cast<float>(v));
  if ((h & 0x7c00u) == 0x7c00u) h = static_cast<std::uint16_t>((h & 0x8000u) | 0x7bffu);
  return h;
}

/// The finite half k steps up (k > 0) or down (k < 0) the real line from h, stopping at ±65504
/// (±0 count as one point: +0 steps down to the smallest negative subnormal).
inline std::uint16_t half_step(std::uint16_t h, int k) noexcept {
  int key = (h & 0x8000u) ? -static_cast<int>(h & 0x7fffu) : static_cast<int>(h);
  key = std::min(std::max(key + k, -0x7bff), 0x7bff);
  return key < 0 ? static_cast<std::uint16_t>(0x8000u | static_cast<unsigned>(-key)) : static_cast<std::uint16_t>(key);
}

// ----------------------------------------------------------------------------------------------------
// bfloat16: the upper half of a float32 (docs/formats.md §1b)
// ----------------------------------------------------------------------------------------------------

/// Exact bf16 -> float.
inline float bf16_to_float(std::uint16_t b) noexcept { return bits_float(static_cast<std::uint32_t>(b) << 16); }

/// float -> bf16, round to nearest, ties to even (overflow to ±inf as the rounding gives it); a NaN stays a
/// NaN with its sign (quiet bit set, so that a payload only in the low bits cannot become inf).
inline std::uint16_t float_to_bf16(float f) noexcept {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  const std::uint32_t bias = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + bias) >> 16);
}

}  // namespace pptq::ggml
