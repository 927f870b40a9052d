// Counter-based random numbers for stochastic rounding: Philox4x32-10 (Salmon, Moraes, Dror, Shaw,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011), written from the paper's description.
//
// Why counter-based: the random number used to round weight (row, original column) is a pure function
// of (seed, row, column). No generator state is shared or advanced, so one seed gives the same result
// for any thread count, block size or order of work (issue: stochastic OPTQ reproducibility).
// tests/test_reliability.cpp checks it against the published known-answer vectors (which Debian's
// Random123 reproduces bit for bit).
#pragma once

#include <array>
#include <cstdint>

namespace pptq::detail {

using Philox4x32Ctr = std::array<std::uint32_t, 4>;
using Philox4x32Key = std::array<std::uint32_t, 2>;

inline void philox_mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi, std::uint32_t& lo) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(p >> 32);
  lo = static_cast<std::uint32_t>(p);
}

/// Philox4x32 with 10 rounds (the paper's recommended, crush-resistant variant).
inline Philox4x32Ctr philox4x32_10(Philox4x32Ctr c, Philox4x32Key k) {
  constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // round multipliers
  constexpr std::uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k[0] += W0;
      k[1] += W1;
    }
    std::uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, c[0], hi0, lo0);
    philox_mulhilo(M1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
  return c;
}

/// Four uniforms in [0, 1) for rows 4·(row/4) .. 4·(row/4)+3 of one original column: one Philox call
/// serves four weights. `stream` separates independent uses under one seed.
inline Philox4x32Ctr philox_block(std::uint64_t seed, std::uint64_t row_quad, std::uint64_t col, std::uint32_t stream) {
  return philox4x32_10({static_cast<std::uint32_t>(col), static_cast<std::uint32_t>(row_quad),
                        static_cast<std::uint32_t>(col >> 32) ^ (stream << 16), static_cast<std::uint32_t>(row_quad >> 32)},
                       {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
}

inline double uniform_from_bits(std::uint32_t x) { return static_cast<double>(x) * (1.0 / 4294967296.0); }

/// The uniform in [0, 1) that rounds weight (row, col) under `seed`.
inline double rounding_uniform(std::uint64_t seed, std::uint64_t row, std::uint64_t col, std::uint32_t stream = 0) {
  return uniform_from_bits(philox_block(seed, row >> 2, col, stream)[row & 3]);
}

}  // namespace pptq::detail
