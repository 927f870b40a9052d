// The ggml block codec (include/pptq/ggml/blocks.hpp) against llama.cpp's own bytes and floats
// (tests/data/ggml, see its README.md) and against hand-computed layouts (docs/formats.md §1).
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include <pptq/ggml/blocks.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace gg = pptq::ggml;

namespace {

const std::string kDir = std::string(test::data_dir()) + "/ggml/";

std::vector<std::uint8_t> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// TEMPORARY: a minimal reader for the golden .npy files (v1, little-endian '<f4', C order, 2-D), used until
// include/pptq/io/npy.hpp (pptq::io::read_npy_matrix) lands; then switch to it. Returns the float bit
// patterns in C order, checking the header describes exactly rows × cols float32.
std::vector<std::uint32_t> read_npy_f32_bits(const std::string& path, int rows, int cols) {
  const std::vector<std::uint8_t> b = slurp(path);
  REQUIRE(b.size() >= 10);
  REQUIRE(std::memcmp(b.data(), "\x93NUMPY\x01\x00", 8) == 0);
  const std::size_t hl = b[8] | b[9] << 8;
  REQUIRE(b.size() >= 10 + hl);
  const std::string header(b.begin() + 10, b.begin() + 10 + static_cast<std::ptrdiff_t>(hl));
  REQUIRE(header.find("'descr': '<f4'") != std::string::npos);
  REQUIRE(header.find("'fortran_order': False") != std::string::npos);
  REQUIRE(header.find("'shape': (" + std::to_string(rows) + ", " + std::to_string(cols) + ")") != std::string::npos);
  const std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  REQUIRE(b.size() == 10 + hl + 4 * n);
  std::vector<std::uint32_t> out(n);
  const std::uint8_t* p = b.data() + 10 + hl;
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<std::uint32_t>(p[4 * i]) | static_cast<std::uint32_t>(p[4 * i + 1]) << 8 |
             static_cast<std::uint32_t>(p[4 * i + 2]) << 16 | static_cast<std::uint32_t>(p[4 * i + 3]) << 24;
  return out;
}

const char* const kCases[] = {"q4_0",   "q4_0+imat",   "q4_K",   "q4_K+imat",   "q3_K", "q3_K+imat", "q2_K",
                              "q2_K+imat", "q8_0",      "q8_0+imat", "q5_0",      "q5_0+imat", "q5_K", "q5_K+imat",
                              "q6_K",   "q6_K+imat",   "iq4_nl", "iq4_nl+imat", "iq4_xs", "iq4_xs+imat"};
constexpr int kRows = 6, kCols = 512;

gg::Type case_type(const std::string& c) { return gg::parse_type(c.substr(0, c.find('+'))); }

// Block-level decode of one block of type B at p: unpack, dequantize, plus the SubLattice route and an
// explicitly fused evaluation (std::fma) which must all agree bit for bit.
template <class B>
void decode_block_all_ways(const std::uint8_t* p, float* out, float* out_lat, float* out_fma) {
  B b;
  gg::unpack(p, b);
  gg::dequantize(b, out);
  gg::SubLattice lat[B::n_sub];
  gg::sub_lattices(b, lat);
  for (int i = 0; i < B::n; ++i) {
    const gg::SubLattice& L = lat[i / B::sub_size];
    REQUIRE(static_cast<int>(b.q[i]) <= L.qmax);
    out_lat[i] = L.value(b.q[i]);
    out_fma[i] = std::fma(L.scale, static_cast<float>(L.multiplier(b.q[i])), -L.min);
  }
}

template <class B>
void repack_all(const std::vector<std::uint8_t>& bin) {
  REQUIRE(bin.size() % B::bytes == 0);
  std::vector<std::uint8_t> again(bin.size());
  for (std::size_t off = 0; off < bin.size(); off += B::bytes) {
    B b;
    gg::unpack(bin.data() + off, b);
    gg::pack(b, again.data() + off);
  }
  CHECK(again == bin);
}

template <class B>
void fill_random(B& b, std::mt19937& rng);

std::uint16_t rand_u16(std::mt19937& rng) { return static_cast<std::uint16_t>(rng() & 0xffffu); }
template <class T, std::size_t N>
void rand_fill(T (&a)[N], std::mt19937& rng, int lo, int hi) {
  std::uniform_int_distribution<int> u(lo, hi);
  for (auto& x : a) x = static_cast<T>(u(rng));
}

template <>
void fill_random(gg::BlockQ40& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.q, rng, 0, 15);
}
template <>
void fill_random(gg::BlockQ4K& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  b.dmin = rand_u16(rng);
  rand_fill(b.ls, rng, 0, 63);
  rand_fill(b.lm, rng, 0, 63);
  rand_fill(b.q, rng, 0, 15);
}
template <>
void fill_random(gg::BlockQ3K& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.s, rng, -32, 31);
  rand_fill(b.q, rng, 0, 7);
}
template <>
void fill_random(gg::BlockQ2K& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  b.dmin = rand_u16(rng);
  rand_fill(b.ls, rng, 0, 15);
  rand_fill(b.lm, rng, 0, 15);
  rand_fill(b.q, rng, 0, 3);
}
template <>
void fill_random(gg::BlockQ80& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.q, rng, 0, 255);
}
template <>
void fill_random(gg::BlockQ50& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.q, rng, 0, 31);
}
template <>
void fill_random(gg::BlockQ5K& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  b.dmin = rand_u16(rng);
  rand_fill(b.ls, rng, 0, 63);
  rand_fill(b.lm, rng, 0, 63);
  rand_fill(b.q, rng, 0, 31);
}
template <>
void fill_random(gg::BlockQ6K& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.s, rng, -128, 127);
  rand_fill(b.q, rng, 0, 63);
}
template <>
void fill_random(gg::BlockIQ4NL& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.q, rng, 0, 15);
}
template <>
void fill_random(gg::BlockIQ4XS& b, std::mt19937& rng) {
  b.d = rand_u16(rng);
  rand_fill(b.ls, rng, 0, 63);
  rand_fill(b.q, rng, 0, 15);
}

template <class B>
void random_roundtrip(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> bytes(B::bytes);
  for (int it = 0; it < 2000; ++it) {
    B b;
    fill_random(b, rng);
    gg::pack(b, bytes.data());
    B c;
    gg::unpack(bytes.data(), c);
    REQUIRE(c == b);
    // and the other direction on random bytes: every byte string is a valid block
    for (auto& x : bytes) x = static_cast<std::uint8_t>(rng() & 0xffu);
    gg::unpack(bytes.data(), c);
    std::vector<std::uint8_t> again(B::bytes);
    gg::pack(c, again.data());
    REQUIRE(again == bytes);
  }
}

std::uint32_t bits(float f) { return gg::float_bits(f); }

}  // namespace

TEST_CASE("ggml types: sizes, names, parsing, bits per weight", "[ggml]") {
  using gg::Type;
  CHECK(gg::block_size(Type::Q4_0) == 32);
  CHECK(gg::block_size(Type::Q4_K) == 256);
  CHECK(gg::block_size(Type::Q3_K) == 256);
  CHECK(gg::block_size(Type::Q2_K) == 256);
  CHECK(gg::block_size(Type::F32) == 1);
  CHECK(gg::block_size(Type::F16) == 1);
  CHECK(gg::block_bytes(Type::Q4_0) == 18);
  CHECK(gg::block_bytes(Type::Q4_K) == 144);
  CHECK(gg::block_bytes(Type::Q3_K) == 110);
  CHECK(gg::block_bytes(Type::Q2_K) == 84);
  CHECK(gg::block_bytes(Type::F32) == 4);
  CHECK(gg::block_bytes(Type::F16) == 2);
  CHECK(gg::row_bytes(Type::Q4_K, 512) == 288);
  CHECK(gg::row_bytes(Type::F16, 5) == 10);
  CHECK(gg::row_bytes(Type::Q4_0, 0) == 0);
  CHECK_THROWS_AS(gg::row_bytes(Type::Q4_K, 100), std::invalid_argument);
  CHECK_THROWS_AS(gg::row_bytes(Type::Q4_0, 33), std::invalid_argument);
  CHECK_THROWS_AS(gg::row_bytes(Type::Q2_K, -256), std::invalid_argument);

  const Type all[] = {Type::F32,  Type::F16,  Type::Q4_0, Type::Q4_K,   Type::Q3_K,  Type::Q2_K,
                      Type::Q8_0, Type::Q5_0, Type::Q5_K, Type::Q6_K, Type::IQ4_NL, Type::IQ4_XS};
  const char* names[] = {"f32", "f16", "q4_0", "q4_K", "q3_K", "q2_K", "q8_0", "q5_0", "q5_K", "q6_K", "iq4_nl", "iq4_xs"};
  const char* lower[] = {"f32", "f16", "q4_0", "q4_k", "q3_k", "q2_k", "q8_0", "q5_0", "q5_k", "q6_k", "iq4_nl", "iq4_xs"};
  const char* upper[] = {"F32", "F16", "Q4_0", "Q4_K", "Q3_K", "Q2_K", "Q8_0", "Q5_0", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"};
  for (int i = 0; i < 12; ++i) {
    CHECK(std::string(gg::type_name(all[i])) == names[i]);
    CHECK(gg::parse_type(lower[i]) == all[i]);
    CHECK(gg::parse_type(names[i]) == all[i]);
    CHECK(gg::parse_type(upper[i]) == all[i]);
    CHECK(gg::is_known_type_id(static_cast<std::uint32_t>(all[i])));
  }
  CHECK_THROWS_WITH(gg::parse_type("q5_1"), Catch::Contains("q5_1") && Catch::Contains("iq4_xs"));
  CHECK_THROWS_AS(gg::parse_type(""), std::invalid_argument);
  CHECK_THROWS_AS(gg::parse_type("iq4"), std::invalid_argument);
  CHECK_FALSE(gg::is_known_type_id(3));
  CHECK_FALSE(gg::is_known_type_id(9));
  CHECK(gg::is_known_type_id(30));  // BF16: a source type, decoded (never produced)
  CHECK_THROWS_AS(gg::block_size(static_cast<Type>(7)), std::invalid_argument);

  // GGUF's type ids (docs/formats.md §2, §1b)
  const std::uint32_t ids[] = {0, 1, 2, 12, 11, 10, 8, 6, 13, 14, 20, 23};
  for (int i = 0; i < 12; ++i) CHECK(static_cast<std::uint32_t>(all[i]) == ids[i]);
  const std::int64_t sizes[] = {1, 1, 32, 256, 256, 256, 32, 32, 256, 256, 32, 256};
  const std::size_t bytes[] = {4, 2, 18, 144, 110, 84, 34, 22, 176, 210, 18, 136};
  for (int i = 0; i < 12; ++i) {
    CHECK(gg::block_size(all[i]) == sizes[i]);
    CHECK(gg::block_bytes(all[i]) == bytes[i]);
  }
  // visit_block hands every block format its own struct, and refuses the others
  for (int i = 2; i < 12; ++i)
    CHECK(gg::visit_block(all[i], [](auto b) { return decltype(b)::type; }) == all[i]);
  CHECK_THROWS_AS(gg::visit_block(Type::F16, [](auto) { return 0; }), std::invalid_argument);
}

TEST_CASE("ggml bytes per weight are exactly 4.5, 4.5, 3.4375, 2.625", "[ggml]") {
  using gg::Type;
  const Type ts[] = {Type::Q4_0, Type::Q4_K, Type::Q3_K, Type::Q2_K};
  const double expect[] = {4.5, 4.5, 3.4375, 2.625};
  for (int t = 0; t < 4; ++t) {
    CHECK(gg::bits_per_weight(ts[t]) == expect[t]);
    for (std::int64_t k = 1; k <= 64; k *= 2) {
      const std::int64_t n = 256 * k;
      CHECK(static_cast<double>(gg::row_bytes(ts[t], n)) * 8.0 / static_cast<double>(n) == expect[t]);
    }
  }
  CHECK(gg::bits_per_weight(Type::F32) == 32.0);
  CHECK(gg::bits_per_weight(Type::F16) == 16.0);
}

TEST_CASE("half -> float -> half is the identity on all 65536 halves", "[ggml][half]") {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const std::uint16_t hh = static_cast<std::uint16_t>(h);
    const float f = gg::half_to_float(hh);
    const std::uint32_t e = (h >> 10) & 31u, m = h & 1023u;
    if (e == 31 && m != 0) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::signbit(f) == ((h & 0x8000u) != 0));
      const std::uint16_t back = gg::float_to_half(f);
      REQUIRE((back & 0x7c00u) == 0x7c00u);
      REQUIRE((back & 0x3ffu) != 0);  // still a NaN
      REQUIRE((back & 0x8000u) == (h & 0x8000u));
      continue;
    }
    // value check against an independent formula in double
    const double mag = e == 0 ? std::ldexp(static_cast<double>(m), -24)
                     : e == 31 ? std::numeric_limits<double>::infinity()
                               : std::ldexp(1.0 + static_cast<double>(m) / 1024.0, static_cast<int>(e) - 15);
    const double v = (h & 0x8000u) ? -mag : mag;
    REQUIRE(static_cast<double>(f) == v);
    REQUIRE(std::signbit(f) == ((h & 0x8000u) != 0));
    REQUIRE(gg::float_to_half(f) == hh);
  }
}

TEST_CASE("float -> half rounds to nearest even at every boundary", "[ggml][half]") {
  // Every midpoint between two adjacent finite halves is a float (12 significant bits); it must go to the
  // even neighbour, and the floats just below / above it to the lower / upper neighbour.
  for (std::uint32_t sgn = 0; sgn <= 0x8000u; sgn += 0x8000u)
    for (std::uint32_t h = 0; h < 0x7c00u; ++h) {
      const std::uint16_t lo = static_cast<std::uint16_t>(sgn | h), hi = static_cast<std::uint16_t>(sgn | (h + 1));
      const float flo = gg::half_to_float(lo), fhi = gg::half_to_float(hi);  // fhi is +-inf for h = 0x7bff
      const double mid = h == 0x7bffu ? (sgn ? -65520.0 : 65520.0)
                                      : (static_cast<double>(flo) + static_cast<double>(fhi)) / 2.0;
      const float fmid = static_cast<float>(mid);
      REQUIRE(static_cast<double>(fmid) == mid);
      const std::uint16_t even = (h & 1u) ? hi : lo;
      REQUIRE(gg::float_to_half(fmid) == even);
      const float below = std::nextafter(fmid, flo), above = std::nextafter(fmid, 2.0f * fmid - flo);
      REQUIRE(gg::float_to_half(below) == lo);
      REQUIRE(gg::float_to_half(above) == hi);
    }
  CHECK(gg::float_to_half(65504.0f) == 0x7bffu);
  CHECK(gg::float_to_half(std::nextafter(65520.0f, 0.0f)) == 0x7bffu);
  CHECK(gg::float_to_half(65520.0f) == 0x7c00u);
  CHECK(gg::float_to_half(-65520.0f) == 0xfc00u);
  CHECK(gg::float_to_half(1e10f) == 0x7c00u);
  CHECK(gg::float_to_half(std::numeric_limits<float>::max()) == 0x7c00u);
  CHECK(gg::float_to_half(std::numeric_limits<float>::infinity()) == 0x7c00u);
  CHECK(gg::float_to_half(-std::numeric_limits<float>::infinity()) == 0xfc00u);
  CHECK(gg::float_to_half(0.0f) == 0x0000u);
  CHECK(gg::float_to_half(-0.0f) == 0x8000u);
  CHECK(gg::float_to_half(1.0f) == 0x3c00u);
  CHECK(gg::float_to_half(-2.0f) == 0xc000u);
  CHECK(gg::float_to_half(std::ldexp(1.0f, -14)) == 0x0400u);  // smallest normal
  CHECK(gg::float_to_half(std::ldexp(1.0f, -24)) == 0x0001u);  // smallest subnormal
  CHECK(gg::float_to_half(std::ldexp(1.0f, -25)) == 0x0000u);  // tie -> even 0
  CHECK(gg::float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001u);
  CHECK(gg::float_to_half(std::ldexp(3.0f, -25)) == 0x0002u);     // 1.5 units: tie -> even 2
  CHECK(gg::float_to_half(std::ldexp(2047.0f, -25)) == 0x0400u);  // 1023.5 units: tie -> even 1024 = min normal
  CHECK(gg::float_to_half(std::numeric_limits<float>::denorm_min()) == 0x0000u);
  CHECK(gg::float_to_half(-std::numeric_limits<float>::denorm_min()) == 0x8000u);
  CHECK(gg::float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00u);        // tie -> even
  CHECK(gg::float_to_half(1.0f + 3.0f * std::ldexp(1.0f, -11)) == 0x3c02u); // tie -> even
  const std::uint16_t qn = gg::float_to_half(std::numeric_limits<float>::quiet_NaN());
  CHECK((qn & 0x7c00u) == 0x7c00u);
  CHECK((qn & 0x03ffu) != 0);
  // a signalling float NaN whose payload lives only in the low bits still becomes a NaN, not inf
  const std::uint16_t sn = gg::float_to_half(gg::bits_float(0xff800001u));
  CHECK((sn & 0x7c00u) == 0x7c00u);
  CHECK((sn & 0x03ffu) != 0);
  CHECK((sn & 0x8000u) != 0);

#if defined(__F16C__)
  // Independent oracle where the hardware has one: F16C's conversion with round-to-nearest-even,
  // on a stride through all 2^32 float bit patterns (NaNs excluded: payload conventions differ).
  long differ = 0;
  for (std::uint64_t x = 0; x < (1ull << 32); x += 4099) {
    const float f = gg::bits_float(static_cast<std::uint32_t>(x));
    if (std::isnan(f)) continue;
    const __m128i r = _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT);
    const std::uint16_t hw = static_cast<std::uint16_t>(_mm_extract_epi16(r, 0));
    differ += gg::float_to_half(f) != hw;
  }
  CHECK(differ == 0);
#endif
}

TEST_CASE("bf16: exact widening, round to nearest even, NaN stays NaN", "[ggml][half]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const std::uint16_t bb = static_cast<std::uint16_t>(b);
    const float f = gg::bf16_to_float(bb);
    REQUIRE(gg::float_bits(f) == b << 16);  // the upper half of the float32
    if (std::isnan(f)) {
      const std::uint16_t back = gg::float_to_bf16(f);
      REQUIRE(std::isnan(gg::bf16_to_float(back)));
      REQUIRE((back & 0x8000u) == (bb & 0x8000u));
      continue;
    }
    REQUIRE(gg::float_to_bf16(f) == bb);
    // the midpoint to the next bf16 up in magnitude goes to the even one of the two
    if ((b & 0x7fffu) >= 0x7f7fu) continue;  // the next one is inf or NaN
    const std::uint32_t mid = (b << 16) | 0x8000u;
    const std::uint16_t even = (b & 1u) ? static_cast<std::uint16_t>(b + 1) : bb;
    REQUIRE(gg::float_to_bf16(gg::bits_float(mid)) == even);
    REQUIRE(gg::float_to_bf16(gg::bits_float(mid - 1)) == bb);
    REQUIRE(gg::float_to_bf16(gg::bits_float(mid + 1)) == static_cast<std::uint16_t>(b + 1));
  }
  CHECK(gg::float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80u);  // rounds up to inf
  CHECK(gg::float_to_bf16(-std::numeric_limits<float>::infinity()) == 0xff80u);
  // a NaN whose payload lives only in the low 16 bits must not become inf
  const std::uint16_t sn = gg::float_to_bf16(gg::bits_float(0x7f800001u));
  CHECK(std::isnan(gg::bf16_to_float(sn)));
}

TEST_CASE("the fit's half helpers: nearest finite half and stepping along the halves", "[ggml][half]") {
  CHECK(gg::nearest_finite_half(1.0) == 0x3c00u);
  CHECK(gg::nearest_finite_half(1e6) == 0x7bffu);    // clamps to 65504, not inf
  CHECK(gg::nearest_finite_half(-1e6) == 0xfbffu);
  CHECK(gg::nearest_finite_half(std::numeric_limits<double>::quiet_NaN()) == 0x0000u);
  CHECK(gg::half_step(0x3c00u, 1) == 0x3c01u);
  CHECK(gg::half_step(0x3c00u, -2) == 0x3bfeu);
  CHECK(gg::half_step(0x0000u, -1) == 0x8001u);  // +0 down to the smallest negative subnormal
  CHECK(gg::half_step(0x8000u, 1) == 0x0001u);   // -0 is the same point as +0
  CHECK(gg::half_step(0x8001u, 1) == 0x0000u);
  CHECK(gg::half_step(0x7bffu, 1) == 0x7bffu);   // stops at the largest finite half
  CHECK(gg::half_step(0xfbffu, -3) == 0xfbffu);
}

TEST_CASE("every product in the block formats is exact in float32, so FMA contraction cannot matter", "[ggml]") {
  // a = d·k (k ≤ 64 covers ls, lm ≤ 63 and |s| ≤ 32) and a·c (|c| ≤ 15 covers every code minus zero) are
  // exact for every finite half d: computed in float they equal the exact product in double.
  long inexact = 0;  // counted rather than REQUIREd per product: 64M checks
  for (std::uint32_t h = 0; h < 0x7c00u; ++h) {
    const float d = gg::half_to_float(static_cast<std::uint16_t>(h));
    for (int k = 0; k <= 64; ++k) {
      const float a = d * static_cast<float>(k);
      inexact += static_cast<double>(a) != static_cast<double>(d) * k;
      for (int c = 1; c <= 15; ++c) inexact += static_cast<double>(a * static_cast<float>(c)) != static_cast<double>(a) * c;
    }
  }
  CHECK(inexact == 0);
}

TEST_CASE("ggml golden data: dequantize reproduces ggml's float32 values bit for bit", "[ggml][golden]") {
  for (const char* name : kCases) {
    SECTION(name) {
      const std::string c = name;
      const gg::Type t = case_type(c);
      const std::vector<std::uint8_t> bin = slurp(kDir + c + ".bin");
      const std::vector<std::uint32_t> want = read_npy_f32_bits(kDir + c + ".dequant.npy", kRows, kCols);
      const std::size_t rb = gg::row_bytes(t, kCols);
      REQUIRE(bin.size() == rb * kRows);

      // row level
      std::vector<float> got(static_cast<std::size_t>(kRows) * kCols);
      for (int r = 0; r < kRows; ++r) gg::dequantize_row(t, bin.data() + r * rb, kCols, got.data() + r * kCols);
      int mismatches = 0;
      for (std::size_t i = 0; i < got.size(); ++i) mismatches += bits(got[i]) != want[i];
      CHECK(mismatches == 0);

      // block level, via SubLattice::value, and fused: all the same bits
      std::vector<float> blk(got.size()), lat(got.size()), fused(got.size());
      const std::size_t bb = gg::block_bytes(t), bs = static_cast<std::size_t>(gg::block_size(t));
      for (std::size_t k = 0; k < bin.size() / bb; ++k) {
        const std::uint8_t* p = bin.data() + k * bb;
        float* o1 = blk.data() + k * bs;
        float* o2 = lat.data() + k * bs;
        float* o3 = fused.data() + k * bs;
        gg::visit_block(t, [&](auto b) { decode_block_all_ways<decltype(b)>(p, o1, o2, o3); });
      }
      int m1 = 0, m2 = 0, m3 = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        m1 += bits(blk[i]) != want[i];
        m2 += bits(lat[i]) != want[i];
        m3 += bits(fused[i]) != want[i];
      }
      CHECK(m1 == 0);
      CHECK(m2 == 0);
      CHECK(m3 == 0);
    }
  }
}

TEST_CASE("ggml golden data: pack(unpack(bytes)) == bytes for every block", "[ggml][golden]") {
  for (const char* name : kCases) {
    SECTION(name) {
      const std::string c = name;
      const std::vector<std::uint8_t> bin = slurp(kDir + c + ".bin");
      gg::visit_block(case_type(c), [&](auto b) { repack_all<decltype(b)>(bin); });
    }
  }
}

TEST_CASE("ggml golden data: the special rows decode as the README describes", "[ggml][golden]") {
  // row 1 has an all-zero first super-block: every format must give exact zeros there
  for (const char* name : kCases) {
    const std::string c = name;
    const std::vector<std::uint32_t> want = read_npy_f32_bits(kDir + c + ".dequant.npy", kRows, kCols);
    const std::vector<std::uint8_t> bin = slurp(kDir + c + ".bin");
    const gg::Type t = case_type(c);
    std::vector<float> row(kCols);
    gg::dequantize_row(t, bin.data() + gg::row_bytes(t, kCols), kCols, row.data());
    for (int i = 0; i < 256; ++i) {
      INFO(c << " col " << i);
      REQUIRE(row[static_cast<std::size_t>(i)] == 0.0f);
      REQUIRE(bits(row[static_cast<std::size_t>(i)]) == want[static_cast<std::size_t>(kCols + i)]);
    }
  }
}

TEST_CASE("ggml random blocks: unpack(pack(block)) == block and pack(unpack(bytes)) == bytes", "[ggml]") {
  random_roundtrip<gg::BlockQ40>(1);
  random_roundtrip<gg::BlockQ4K>(2);
  random_roundtrip<gg::BlockQ3K>(3);
  random_roundtrip<gg::BlockQ2K>(4);
  random_roundtrip<gg::BlockQ80>(5);
  random_roundtrip<gg::BlockQ50>(6);
  random_roundtrip<gg::BlockQ5K>(7);
  random_roundtrip<gg::BlockQ6K>(8);
  random_roundtrip<gg::BlockIQ4NL>(9);
  random_roundtrip<gg::BlockIQ4XS>(10);
}

TEST_CASE("ggml hand-made Q4_0 block", "[ggml]") {
  gg::BlockQ40 b;
  b.d = 0x3800;  // 0.5
  for (int i = 0; i < 16; ++i) {
    b.q[i] = static_cast<std::uint8_t>(i);
    b.q[16 + i] = static_cast<std::uint8_t>(15 - i);
  }
  std::uint8_t bytes[18];
  gg::pack(b, bytes);
  CHECK(bytes[0] == 0x00);
  CHECK(bytes[1] == 0x38);
  CHECK(bytes[2 + 0] == 0xf0);   // q[0] = 0 | q[16] = 15 << 4
  CHECK(bytes[2 + 5] == 0xa5);   // q[5] = 5 | q[21] = 10 << 4
  CHECK(bytes[2 + 15] == 0x0f);  // q[15] = 15 | q[31] = 0 << 4
  float w[32];
  gg::dequantize(b, w);
  CHECK(w[0] == -4.0f);
  CHECK(w[8] == 0.0f);
  CHECK(w[15] == 3.5f);
  CHECK(w[16] == 3.5f);
  CHECK(w[31] == -4.0f);
  gg::SubLattice L[1];
  gg::sub_lattices(b, L);
  CHECK(L[0].scale == 0.5f);
  CHECK(L[0].zero == 8);
  CHECK(L[0].min == 0.0f);
  CHECK(L[0].qmax == 15);
}

TEST_CASE("ggml hand-made Q4_K block", "[ggml]") {
  gg::BlockQ4K b;
  b.d = 0x3c00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  for (int j = 0; j < 8; ++j) {
    b.ls[j] = static_cast<std::uint8_t>(j + 1);
    b.lm[j] = static_cast<std::uint8_t>(2 * j);
  }
  for (int i = 0; i < 256; ++i) b.q[i] = static_cast<std::uint8_t>(i % 16);
  float w[256];
  gg::dequantize(b, w);
  // w = (1·(j+1))·q − 0.5·(2j) = (j+1)·q − j, j = i / 32
  CHECK(w[0] == 0.0f);
  CHECK(w[5] == 5.0f);
  CHECK(w[33] == 1.0f);     // j 1, q 1: 2 − 1
  CHECK(w[100] == 13.0f);   // j 3, q 4: 16 − 3
  CHECK(w[255] == 113.0f);  // j 7, q 15: 120 − 7
  for (int i = 0; i < 256; ++i) REQUIRE(w[i] == static_cast<float>((i / 32 + 1) * (i % 16) - i / 32));

  std::uint8_t bytes[144];
  gg::pack(b, bytes);
  const std::uint8_t head[16] = {0x00, 0x3c, 0x00, 0x38, 1, 2, 3, 4, 0, 2, 4, 6, 0x85, 0xa6, 0xc7, 0xe8};
  for (int k = 0; k < 16; ++k) CHECK(bytes[k] == head[k]);
  CHECK(bytes[16 + 0] == 0x00);  // q[0] | q[32] << 4
  CHECK(bytes[16 + 1] == 0x11);
  CHECK(bytes[16 + 47] == 0xff);  // chunk 1, l = 15: q[79] | q[111] << 4

  // scales with the high bits in use: ls = 63..56, lm = 0, 9, ..., 63
  for (int j = 0; j < 8; ++j) {
    b.ls[j] = static_cast<std::uint8_t>(63 - j);
    b.lm[j] = static_cast<std::uint8_t>(9 * j);
  }
  gg::pack(b, bytes);
  const std::uint8_t sc[12] = {0xff, 0xfe, 0xfd, 0xfc, 0x80, 0x89, 0xd2, 0xdb, 0x4b, 0xda, 0x69, 0xf8};
  for (int k = 0; k < 12; ++k) {
    INFO("scales[" << k << "]");
    CHECK(bytes[4 + k] == sc[k]);
  }
  gg::BlockQ4K c;
  gg::unpack(bytes, c);
  CHECK(c == b);
  gg::SubLattice L[8];
  gg::sub_lattices(c, L);
  CHECK(L[7].scale == 56.0f);
  CHECK(L[7].min == 31.5f);
  CHECK(L[7].zero == 0);
  CHECK(L[7].qmax == 15);
}

TEST_CASE("ggml hand-made Q3_K block", "[ggml]") {
  gg::BlockQ3K b;
  b.d = 0x3c00;  // 1.0
  for (auto& s : b.s) s = -32;
  b.s[5] = 31;   // v = 63
  b.s[10] = 0;   // v = 32
  b.s[15] = -1;  // v = 31
  for (auto& u : b.q) u = 0;
  b.q[37] = 4;   // only bit 2: hmask[5] bit 1
  b.q[200] = 7;  // hmask[8] bit 6; low bits 3 at half 1, position 72 = 64 + 8 -> qs[32 + 8] bits 4..5
  std::uint8_t bytes[110];
  gg::pack(b, bytes);
  for (int k = 0; k < 32; ++k) {
    INFO("hmask[" << k << "]");
    CHECK(bytes[k] == (k == 5 ? 0x02 : k == 8 ? 0x40 : 0x00));
  }
  for (int k = 0; k < 64; ++k) {
    INFO("qs[" << k << "]");
    CHECK(bytes[32 + k] == (k == 40 ? 0x30 : 0x00));
  }
  const std::uint8_t sc[12] = {0, 0, 0, 0, 0, 0x0f, 0, 0xf0, 0, 0x0c, 0x20, 0x40};
  for (int k = 0; k < 12; ++k) {
    INFO("scales[" << k << "]");
    CHECK(bytes[96 + k] == sc[k]);
  }
  CHECK(bytes[108] == 0x00);
  CHECK(bytes[109] == 0x3c);

  float w[256];
  gg::dequantize(b, w);
  CHECK(w[0] == 128.0f);   // s −32, u 0 (q −4)
  CHECK(w[37] == 0.0f);    // u 4 (q 0)
  CHECK(w[80] == -124.0f); // j 5: s 31, q −4
  CHECK(w[200] == -96.0f); // j 12: s −32, u 7 (q 3)
  CHECK(w[160] == 0.0f);   // j 10: s 0
  CHECK(w[250] == 4.0f);   // j 15: s −1, q −4

  // a regular pattern: s_j = j − 8, u = i % 8 -> w = (j − 8)·(i % 8 − 4)
  for (int j = 0; j < 16; ++j) b.s[j] = static_cast<std::int8_t>(j - 8);
  for (int i = 0; i < 256; ++i) b.q[i] = static_cast<std::uint8_t>(i % 8);
  gg::pack(b, bytes);
  for (int k = 0; k < 32; ++k) CHECK(bytes[k] == ((k % 8) >= 4 ? 0xff : 0x00));
  gg::dequantize(b, w);
  for (int i = 0; i < 256; ++i) REQUIRE(w[i] == static_cast<float>((i / 16 - 8) * (i % 8 - 4)));
  gg::SubLattice L[16];
  gg::sub_lattices(b, L);
  CHECK(L[3].scale == -5.0f);
  CHECK(L[3].zero == 4);
  CHECK(L[3].min == 0.0f);
  CHECK(L[3].qmax == 7);
}

TEST_CASE("ggml hand-made Q2_K block", "[ggml]") {
  gg::BlockQ2K b;
  b.d = 0x3c00;     // 1.0
  b.dmin = 0x3400;  // 0.25
  for (int j = 0; j < 16; ++j) {
    b.ls[j] = static_cast<std::uint8_t>(j);
    b.lm[j] = static_cast<std::uint8_t>(15 - j);
  }
  for (int i = 0; i < 256; ++i) b.q[i] = static_cast<std::uint8_t>(i % 4);
  std::uint8_t bytes[84];
  gg::pack(b, bytes);
  CHECK(bytes[0] == 0xf0);
  CHECK(bytes[3] == 0xc3);
  CHECK(bytes[15] == 0x0f);
  CHECK(bytes[16 + 0] == 0x00);
  CHECK(bytes[16 + 1] == 0x55);
  CHECK(bytes[16 + 3] == 0xff);
  CHECK(bytes[16 + 34] == 0xaa);
  CHECK(bytes[80] == 0x00);
  CHECK(bytes[81] == 0x3c);
  CHECK(bytes[82] == 0x00);
  CHECK(bytes[83] == 0x34);
  float w[256];
  gg::dequantize(b, w);
  CHECK(w[0] == -3.75f);
  CHECK(w[19] == -0.5f);  // j 1, q 3: 3 − 3.5
  CHECK(w[255] == 45.0f);
  for (int i = 0; i < 256; ++i) REQUIRE(w[i] == static_cast<float>(i / 16) * static_cast<float>(i % 4) - 0.25f * static_cast<float>(15 - i / 16));
}

TEST_CASE("ggml pack rejects out-of-range fields, naming field, index and value", "[ggml]") {
  std::uint8_t buf[144];
  gg::BlockQ40 a;
  a.q[3] = 16;
  CHECK_THROWS_WITH(gg::pack(a, buf), Catch::Contains("q[3] = 16"));
  gg::BlockQ4K k;
  k.ls[6] = 64;
  CHECK_THROWS_WITH(gg::pack(k, buf), Catch::Contains("ls[6] = 64"));
  k.ls[6] = 0;
  k.lm[2] = 200;
  CHECK_THROWS_WITH(gg::pack(k, buf), Catch::Contains("lm[2] = 200"));
  k.lm[2] = 0;
  k.q[255] = 16;
  CHECK_THROWS_WITH(gg::pack(k, buf), Catch::Contains("q[255] = 16"));
  gg::BlockQ3K t;
  t.s[9] = 32;
  CHECK_THROWS_WITH(gg::pack(t, buf), Catch::Contains("s[9] = 32"));
  t.s[9] = -33;
  CHECK_THROWS_WITH(gg::pack(t, buf), Catch::Contains("s[9] = -33"));
  t.s[9] = 0;
  t.q[1] = 8;
  CHECK_THROWS_WITH(gg::pack(t, buf), Catch::Contains("q[1] = 8"));
  gg::BlockQ2K q2;
  q2.lm[15] = 16;
  CHECK_THROWS_WITH(gg::pack(q2, buf), Catch::Contains("lm[15] = 16"));
  q2.lm[15] = 0;
  q2.q[0] = 4;
  CHECK_THROWS_AS(gg::pack(q2, buf), std::invalid_argument);
}

TEST_CASE("bf16 and q8_0 tensors decode exactly (dequantize_row): the sources pptq-gguf reads", "[ggml][half]") {
  using gg::Type;
  // BF16 is a type of the codec: 2 bytes per weight, every one of the 65536 values widened exactly.
  CHECK(gg::parse_type("BF16") == Type::BF16);
  CHECK(std::string(gg::type_name(Type::BF16)) == "bf16");
  CHECK(gg::row_bytes(Type::BF16, 7) == 14);
  CHECK_THROWS_AS(gg::visit_block(Type::BF16, [](auto) { return 0; }), std::invalid_argument);
  std::vector<std::uint8_t> bytes(2 * 65536);
  for (std::uint32_t u = 0; u < 65536; ++u) {
    bytes[2 * u] = static_cast<std::uint8_t>(u & 0xffu);
    bytes[2 * u + 1] = static_cast<std::uint8_t>(u >> 8);
  }
  std::vector<float> out(65536);
  gg::dequantize_row(Type::BF16, bytes.data(), 65536, out.data());
  std::uint32_t wrong = 0;
  for (std::uint32_t u = 0; u < 65536; ++u) {
    wrong += gg::float_bits(out[u]) != u << 16;
    if (!std::isnan(out[u])) wrong += gg::float_to_bf16(out[u]) != u;  // and back
  }
  CHECK(wrong == 0);
  // Q8_0: w = d·q for every code q and a spread of halves d (subnormal, normal, the largest), exactly.
  wrong = 0;
  for (std::uint16_t d : {std::uint16_t(0x0001), std::uint16_t(0x03ff), std::uint16_t(0x3c00), std::uint16_t(0xb555),
                          std::uint16_t(0x7bff), std::uint16_t(0x2e66)}) {
    for (int first = -128; first < 128; first += 32) {
      std::uint8_t block[34];
      block[0] = static_cast<std::uint8_t>(d & 0xff);
      block[1] = static_cast<std::uint8_t>(d >> 8);
      for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(first + i));
      float w[32];
      gg::dequantize_row(Type::Q8_0, block, 32, w);
      for (int i = 0; i < 32; ++i)
        wrong += static_cast<double>(w[i]) != static_cast<double>(gg::half_to_float(d)) * (first + i);
    }
  }
  CHECK(wrong == 0);
}
