#pragma once
// llama.cpp's block formats Q4_0, Q4_K, Q3_K, Q2_K, Q8_0, Q5_0, Q5_K, Q6_K, IQ4_NL, IQ4_XS (and plain
// F32/F16, and BF16 as a source type that is decoded, never produced) as an exact byte codec: type ids, sizes, pack / unpack, dequantization. No I/O (io/gguf.hpp
// reads and writes the files).
//
// Layouts and dequantization rules: docs/formats.md §1 and §1b. Everything here is written from that
// description and checked against ggml's own bytes and dequantized floats (tests/data/ggml). The decoded
// structs (BlockQ40, BlockQ4K, ...) are what a quantizer fills; pack() turns them into ggml's bytes,
// unpack() is its exact inverse (every bit of every format is meaningful, so bytes <-> struct is a
// bijection), and dequantize() reproduces ggml's float32 values bit for bit.
//
// Depends on the standard library, half.hpp and error.hpp.

#include "../error.hpp"
#include "half.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace pptq::ggml {

// ----------------------------------------------------------------------------------------------------
// Types (ids are GGUF's tensor type ids, docs/formats.md §2)
// ----------------------------------------------------------------------------------------------------

enum class Type : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q5_0 = 6,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  IQ4_NL = 20,
  IQ4_XS = 23,
  BF16 = 30,  ///< a source type only (docs/formats.md §1b): read, never produced by a fit
};

namespace detail {

struct TypeInfo {
  Type type;
  const char* name;         ///< ggml's spelling
  std::int64_t block_size;  ///< weights per block (1 for F32/F16/BF16: every element is its own "block")
  std::size_t block_bytes;  ///< docs/formats.md §1 and §1b tables
};

inline constexpr TypeInfo kTypes[] = {
    {Type::F32, "f32", 1, 4},          {Type::F16, "f16", 1, 2},           {Type::Q4_0, "q4_0", 32, 18},
    {Type::Q4_K, "q4_K", 256, 144},    {Type::Q3_K, "q3_K", 256, 110},     {Type::Q2_K, "q2_K", 256, 84},
    {Type::Q8_0, "q8_0", 32, 34},      {Type::Q5_0, "q5_0", 32, 22},       {Type::Q5_K, "q5_K", 256, 176},
    {Type::Q6_K, "q6_K", 256, 210},    {Type::IQ4_NL, "iq4_nl", 32, 18},   {Type::IQ4_XS, "iq4_xs", 256, 136},
    {Type::BF16, "bf16", 1, 2},
};

inline const TypeInfo* find_type(Type t) noexcept {
  for (const TypeInfo& i : kTypes)
    if (i.type == t) return &i;
  return nullptr;
}

[[noreturn]] inline void bad_type(Type t) {
  throw UsageError("ggml: unknown type id " + std::to_string(static_cast<std::uint32_t>(t)));
}

inline const TypeInfo& type_info(Type t) {
  const TypeInfo* i = find_type(t);
  if (!i) bad_type(t);
  return *i;
}

inline std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

}  // namespace detail

/// True if `id` is one of the tensor type ids this codec knows.
inline bool is_known_type_id(std::uint32_t id) noexcept { return detail::find_type(static_cast<Type>(id)) != nullptr; }

/// Weights per block (1 for F32/F16/BF16: every element is its own "block").
inline std::int64_t block_size(Type t) { return detail::type_info(t).block_size; }

/// Bytes per block (docs/formats.md §1 and §1b tables).
inline std::size_t block_bytes(Type t) { return detail::type_info(t).block_bytes; }

/// Bytes of a row of `n` weights; throws UsageError (a std::invalid_argument) if n < 0 or n is not a
/// multiple of the block size.
inline std::size_t row_bytes(Type t, std::int64_t n) {
  const std::int64_t bs = block_size(t);
  if (n < 0 || n % bs != 0)
    throw UsageError("ggml: row of " + std::to_string(n) + " weights is not a multiple of the block size " +
                     std::to_string(bs));
  return static_cast<std::size_t>(n / bs) * block_bytes(t);
}

/// ggml's name ("f32", "f16", "q4_0", "q4_K", "q3_K", "q2_K", "q8_0", "q5_0", "q5_K", "q6_K", "iq4_nl",
/// "iq4_xs").
inline const char* type_name(Type t) { return detail::type_info(t).name; }

/// Parses a type name case-insensitively ("q4_k", "q4_K", "Q4_K", "f32", ...); throws UsageError.
inline Type parse_type(const std::string& name) {
  const std::string s = detail::lower(name);
  std::string expected;
  for (const detail::TypeInfo& i : detail::kTypes) {
    if (s == detail::lower(i.name)) return i.type;
    expected += (expected.empty() ? "" : ", ") + detail::lower(i.name);
  }
  throw UsageError("ggml: unknown type name '" + name + "' (expected one of " + expected + ")");
}

/// Exact storage cost: 8·block_bytes/block_size (4.5, 4.5, 3.4375, 2.625 for Q4_0, Q4_K, Q3_K, Q2_K; 8.5,
/// 5.5, 5.5, 6.5625, 4.5, 4.25 for Q8_0, Q5_0, Q5_K, Q6_K, IQ4_NL, IQ4_XS).
inline double bits_per_weight(Type t) {
  return 8.0 * static_cast<double>(block_bytes(t)) / static_cast<double>(block_size(t));
}

// ----------------------------------------------------------------------------------------------------
// Exact float32 arithmetic as ggml does it
// ----------------------------------------------------------------------------------------------------
//
// ggml computes, in float32, the sub-block multiplier first (a_j = d·ls_j, d·s_j or d·(ls_j − 32)) and
// m_j = dmin·lm_j, then w = a_j·k − m_j with k the code's multiplier (code − zero, or the IQ4 table's
// entry) (docs/formats.md §1, §1b). Whether a compiler fuses a_j·k − m_j into an FMA (GCC does by default
// under -march=native, even across statements) does not matter here, and this is why no volatile or pragma
// is needed: every product in these formats is EXACT in float32. d and dmin are halves (11-bit
// significands); the sub-block integers add at most 7 significant bits (|s| ≤ 128 for Q6_K, ls, lm ≤ 63,
// |ls − 32| ≤ 32), the code multipliers at most 7 (|q| ≤ 128 for Q8_0, the IQ4 table's |T| ≤ 127), and no
// format has more than 23 < 24 bits in a product: Q6_K 11 + 7 + 5, IQ4_XS 11 + 5 + 7, Q5_K 11 + 6 + 5,
// Q8_0 and IQ4_NL 11 + 7. The exponent range of a float holds every product of a half and such small
// integers. So the product is the same rounded or not, and the only rounding is the final subtraction:
// fused and unfused evaluation give identical bits. (Likewise d·(q − 8) = d·q − 8d exactly for Q4_0.)
// Checked on the golden data (tests/data/ggml: both evaluations match ggml's *.dequant.npy everywhere) and
// exhaustively over the halves and integer factors in test_ggml_blocks.cpp and test_ggml_formats.cpp.

/// The table of IQ4_NL and IQ4_XS (docs/formats.md §1b): code k ∈ 0..15 stands for iq4_levels[k] times
/// the block's (or sub-block's) scale. A non-uniform lattice.
inline constexpr std::int8_t iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/// The lattice of one sub-block in float: value(code) = scale·multiplier(code) − min, with multiplier
/// code − zero, or table[code] for the non-uniform IQ4 formats. For the lattices that sub_lattices()
/// returns, value(code) is ggml's float32 value bit for bit (see above: the product is exact, so only the
/// subtraction rounds, whatever the compiler contracts). Codes run 0..qmax (the UNSIGNED codes of the
/// decoded blocks). The integer offset `zero` is subtracted before the multiply, as ggml does:
///   Q4_0: scale = d,      zero = 8, min = 0            (ggml: d·(q − 8))
///   Q4_K: scale = d·ls_j, zero = 0, min = dmin·lm_j
///   Q3_K: scale = d·s_j,  zero = 4, min = 0 on u = q + 4 (ggml: (d·s_j)·q with signed q)
///   Q2_K: scale = d·ls_j, zero = 0, min = dmin·lm_j
///   Q8_0: scale = d,      zero = 128 on u = q + 128 (ggml: d·q with q the stored int8)
///   Q5_0: scale = d,      zero = 16
///   Q5_K: scale = d·ls_j, zero = 0, min = dmin·lm_j
///   Q6_K: scale = d·s_j,  zero = 32
///   IQ4_NL: scale = d, table iq4_levels;  IQ4_XS: scale = d·(ls_j − 32), table iq4_levels
/// With min = 0 the subtraction is exact (x − 0 = x), so one formula serves all formats.
struct SubLattice {
  float scale = 0.0f;
  int zero = 0;
  float min = 0.0f;
  int qmax = 0;
  const std::int8_t* table = nullptr;  ///< non-uniform formats: code k's multiplier is table[k]

  int multiplier(int code) const noexcept { return table ? table[code] : code - zero; }
  float value(int code) const noexcept { return scale * static_cast<float>(multiplier(code)) - min; }
};

// ----------------------------------------------------------------------------------------------------
// Decoded blocks. Codes are UNSIGNED (0..qmax); d/dmin are raw IEEE half bits.
// ----------------------------------------------------------------------------------------------------

/// Q4_0: 32 weights, w = d·(q − 8), q ∈ 0..15.
struct BlockQ40 {
  static constexpr Type type = Type::Q4_0;
  static constexpr int n = 32;         // weights per block
  static constexpr int n_sub = 1;      // sub-blocks
  static constexpr int sub_size = 32;  // weights per sub-block
  static constexpr int qmax = 15;
  static constexpr std::size_t bytes = 18;

  std::uint16_t d = 0;
  std::uint8_t q[32] = {};
};

/// Q4_K: 256 = 8 × 32 weights, w = (d·ls_j)·q − (dmin·lm_j), q ∈ 0..15, ls_j, lm_j ∈ 0..63.
struct BlockQ4K {
  static constexpr Type type = Type::Q4_K;
  static constexpr int n = 256;
  static constexpr int n_sub = 8;
  static constexpr int sub_size = 32;
  static constexpr int qmax = 15;
  static constexpr int smax = 63;  // largest ls / lm
  static constexpr std::size_t bytes = 144;

  std::uint16_t d = 0, dmin = 0;
  std::uint8_t ls[8] = {}, lm[8] = {};
  std::uint8_t q[256] = {};
};

/// Q3_K: 256 = 16 × 16 weights, w = (d·s_j)·(u − 4), s_j ∈ −32..31.
/// NOTE: q holds the UNSIGNED code u = q_signed + 4 ∈ 0..7 (docs/formats.md §1 writes the signed q ∈ −4..3).
struct BlockQ3K {
  static constexpr Type type = Type::Q3_K;
  static constexpr int n = 256;
  static constexpr int n_sub = 16;
  static constexpr int sub_size = 16;
  static constexpr int qmax = 7;
  static constexpr int smin = -32, smax = 31;
  static constexpr std::size_t bytes = 110;

  std::uint16_t d = 0;
  std::int8_t s[16] = {};
  std::uint8_t q[256] = {};  // u = signed code + 4
};

/// Q2_K: 256 = 16 × 16 weights, w = (d·ls_j)·q − (dmin·lm_j), q ∈ 0..3, ls_j, lm_j ∈ 0..15.
struct BlockQ2K {
  static constexpr Type type = Type::Q2_K;
  static constexpr int n = 256;
  static constexpr int n_sub = 16;
  static constexpr int sub_size = 16;
  static constexpr int qmax = 3;
  static constexpr int smax = 15;
  static constexpr std::size_t bytes = 84;

  std::uint16_t d = 0, dmin = 0;
  std::uint8_t ls[16] = {}, lm[16] = {};
  std::uint8_t q[256] = {};
};

/// Q8_0: 32 weights, w = d·q with q the stored int8 (docs/formats.md §1b).
/// NOTE: q holds the UNSIGNED code u = q_int8 + 128 ∈ 0..255 (zero 128), as every decoded block here.
struct BlockQ80 {
  static constexpr Type type = Type::Q8_0;
  static constexpr int n = 32;
  static constexpr int n_sub = 1;
  static constexpr int sub_size = 32;
  static constexpr int qmax = 255;
  static constexpr std::size_t bytes = 34;

  std::uint16_t d = 0;
  std::uint8_t q[32] = {};  // u = int8 code + 128
};

/// Q5_0: 32 weights, w = d·(u − 16), u ∈ 0..31.
struct BlockQ50 {
  static constexpr Type type = Type::Q5_0;
  static constexpr int n = 32;
  static constexpr int n_sub = 1;
  static constexpr int sub_size = 32;
  static constexpr int qmax = 31;
  static constexpr std::size_t bytes = 22;

  std::uint16_t d = 0;
  std::uint8_t q[32] = {};
};

/// Q5_K: 256 = 8 × 32 weights, w = (d·ls_j)·u − (dmin·lm_j), u ∈ 0..31, ls_j, lm_j ∈ 0..63.
struct BlockQ5K {
  static constexpr Type type = Type::Q5_K;
  static constexpr int n = 256;
  static constexpr int n_sub = 8;
  static constexpr int sub_size = 32;
  static constexpr int qmax = 31;
  static constexpr int smax = 63;  // largest ls / lm
  static constexpr std::size_t bytes = 176;

  std::uint16_t d = 0, dmin = 0;
  std::uint8_t ls[8] = {}, lm[8] = {};
  std::uint8_t q[256] = {};
};

/// Q6_K: 256 = 16 × 16 weights, w = (d·s_j)·(u − 32), s_j ∈ −128..127 (int8), u ∈ 0..63.
struct BlockQ6K {
  static constexpr Type type = Type::Q6_K;
  static constexpr int n = 256;
  static constexpr int n_sub = 16;
  static constexpr int sub_size = 16;
  static constexpr int qmax = 63;
  static constexpr int smin = -128, smax = 127;
  static constexpr std::size_t bytes = 210;

  std::uint16_t d = 0;
  std::int8_t s[16] = {};
  std::uint8_t q[256] = {};  // u = signed code + 32
};

/// IQ4_NL: 32 weights, w = d·iq4_levels[k], k ∈ 0..15.
struct BlockIQ4NL {
  static constexpr Type type = Type::IQ4_NL;
  static constexpr int n = 32;
  static constexpr int n_sub = 1;
  static constexpr int sub_size = 32;
  static constexpr int qmax = 15;
  static constexpr std::size_t bytes = 18;

  std::uint16_t d = 0;
  std::uint8_t q[32] = {};  // k
};

/// IQ4_XS: 256 = 8 × 32 weights, w = (d·(ls_j − 32))·iq4_levels[k], ls_j ∈ 0..63, k ∈ 0..15.
struct BlockIQ4XS {
  static constexpr Type type = Type::IQ4_XS;
  static constexpr int n = 256;
  static constexpr int n_sub = 8;
  static constexpr int sub_size = 32;
  static constexpr int qmax = 15;
  static constexpr int smax = 63;  // largest ls
  static constexpr std::size_t bytes = 136;

  std::uint16_t d = 0;
  std::uint8_t ls[8] = {};
  std::uint8_t q[256] = {};  // k
};

namespace detail {
template <class T, std::size_t N>
bool arr_eq(const T (&a)[N], const T (&b)[N]) noexcept {
  for (std::size_t i = 0; i < N; ++i)
    if (a[i] != b[i]) return false;
  return true;
}
}  // namespace detail

inline bool operator==(const BlockQ40& a, const BlockQ40& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ4K& a, const BlockQ4K& b) noexcept {
  return a.d == b.d && a.dmin == b.dmin && detail::arr_eq(a.ls, b.ls) && detail::arr_eq(a.lm, b.lm) &&
         detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ3K& a, const BlockQ3K& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.s, b.s) && detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ2K& a, const BlockQ2K& b) noexcept {
  return a.d == b.d && a.dmin == b.dmin && detail::arr_eq(a.ls, b.ls) && detail::arr_eq(a.lm, b.lm) &&
         detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ80& a, const BlockQ80& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ50& a, const BlockQ50& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ5K& a, const BlockQ5K& b) noexcept {
  return a.d == b.d && a.dmin == b.dmin && detail::arr_eq(a.ls, b.ls) && detail::arr_eq(a.lm, b.lm) &&
         detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockQ6K& a, const BlockQ6K& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.s, b.s) && detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockIQ4NL& a, const BlockIQ4NL& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.q, b.q);
}
inline bool operator==(const BlockIQ4XS& a, const BlockIQ4XS& b) noexcept {
  return a.d == b.d && detail::arr_eq(a.ls, b.ls) && detail::arr_eq(a.q, b.q);
}
inline bool operator!=(const BlockQ40& a, const BlockQ40& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ4K& a, const BlockQ4K& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ3K& a, const BlockQ3K& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ2K& a, const BlockQ2K& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ80& a, const BlockQ80& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ50& a, const BlockQ50& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ5K& a, const BlockQ5K& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockQ6K& a, const BlockQ6K& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockIQ4NL& a, const BlockIQ4NL& b) noexcept { return !(a == b); }
inline bool operator!=(const BlockIQ4XS& a, const BlockIQ4XS& b) noexcept { return !(a == b); }

/// Calls f(B{}) with a default block of the decoded struct B of block format t and returns what f returns;
/// throws UsageError for F32, F16, BF16 (not block formats) and unknown types.
template <class F>
decltype(auto) visit_block(Type t, F&& f) {
  switch (t) {
    case Type::Q4_0: return f(BlockQ40{});
    case Type::Q4_K: return f(BlockQ4K{});
    case Type::Q3_K: return f(BlockQ3K{});
    case Type::Q2_K: return f(BlockQ2K{});
    case Type::Q8_0: return f(BlockQ80{});
    case Type::Q5_0: return f(BlockQ50{});
    case Type::Q5_K: return f(BlockQ5K{});
    case Type::Q6_K: return f(BlockQ6K{});
    case Type::IQ4_NL: return f(BlockIQ4NL{});
    case Type::IQ4_XS: return f(BlockIQ4XS{});
    default: break;
  }
  if (t == Type::F32 || t == Type::F16 || t == Type::BF16)
    throw UsageError(std::string("ggml: ") + type_name(t) + " is not a block format");
  detail::bad_type(t);
}

// ----------------------------------------------------------------------------------------------------
// pack / unpack (docs/formats.md §1 byte layouts)
// ----------------------------------------------------------------------------------------------------

namespace detail {
inline void put_u16(std::uint8_t* p, std::uint16_t v) noexcept {
  p[0] = static_cast<std::uint8_t>(v & 0xffu);
  p[1] = static_cast<std::uint8_t>(v >> 8);
}
inline std::uint16_t get_u16(const std::uint8_t* p) noexcept {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline void put_u32(std::uint8_t* p, std::uint32_t v) noexcept {
  for (int k = 0; k < 4; ++k) p[k] = static_cast<std::uint8_t>((v >> (8 * k)) & 0xffu);
}
inline std::uint32_t get_u32(const std::uint8_t* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}
[[noreturn]] inline void out_of_range(const char* fmt, const char* field, int index, int value, int lo, int hi) {
  throw UsageError(std::string("ggml pack ") + fmt + ": " + field + "[" + std::to_string(index) + "] = " +
                   std::to_string(value) + " is outside " + std::to_string(lo) + ".." + std::to_string(hi));
}
template <class T, std::size_t N>
void check_range(const char* fmt, const char* field, const T (&a)[N], int lo, int hi) {
  for (std::size_t i = 0; i < N; ++i)
    if (static_cast<int>(a[i]) < lo || static_cast<int>(a[i]) > hi)
      out_of_range(fmt, field, static_cast<int>(i), static_cast<int>(a[i]), lo, hi);
}

// 32 four-bit fields in 16 bytes, as Q4_0, IQ4_NL and each sub-block of IQ4_XS pack their codes (and Q5_0
// their low four bits) (docs/formats.md §1, §1b): qs[l] = (c[l] & 15) | (c[l + 16] & 15) << 4.
inline void pack_nibbles32(const std::uint8_t* c, std::uint8_t* qs) noexcept {
  for (int l = 0; l < 16; ++l) qs[l] = static_cast<std::uint8_t>((c[l] & 15u) | (c[l + 16] & 15u) << 4);
}
inline void unpack_nibbles32(const std::uint8_t* qs, std::uint8_t* c) noexcept {
  for (int l = 0; l < 16; ++l) {
    c[l] = qs[l] & 15u;
    c[l + 16] = qs[l] >> 4;
  }
}

// Q3_K and Q2_K codes: 2-bit fields, four to a byte, per 128-weight half h (docs/formats.md §1):
// qs[32h + l] = c[128h+l] | c[128h+32+l] << 2 | c[128h+64+l] << 4 | c[128h+96+l] << 6.
inline void pack_2bit(const std::uint8_t* c, std::uint8_t* qs) noexcept {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const std::uint8_t* b = c + 128 * h + l;
      qs[32 * h + l] = static_cast<std::uint8_t>((b[0] & 3u) | (b[32] & 3u) << 2 | (b[64] & 3u) << 4 | (b[96] & 3u) << 6);
    }
}
inline void unpack_2bit(const std::uint8_t* qs, std::uint8_t* c) noexcept {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const std::uint8_t v = qs[32 * h + l];
      std::uint8_t* b = c + 128 * h + l;
      b[0] = v & 3u;
      b[32] = (v >> 2) & 3u;
      b[64] = (v >> 4) & 3u;
      b[96] = (v >> 6) & 3u;
    }
}

// Q4_K's twelve bytes of 6-bit sub-block scales ls and mins lm (docs/formats.md §1):
// scales[0..3]  = ls[0..3] | (ls[4..7] >> 4) << 6
// scales[4..7]  = lm[0..3] | (lm[4..7] >> 4) << 6
// scales[8..11] = (ls[4..7] & 15) | (lm[4..7] & 15) << 4
inline void pack_scales_6bit(const std::uint8_t* ls, const std::uint8_t* lm, std::uint8_t* sc) noexcept {
  for (int j = 0; j < 4; ++j) {
    sc[j] = static_cast<std::uint8_t>(ls[j] | (ls[j + 4] >> 4) << 6);
    sc[j + 4] = static_cast<std::uint8_t>(lm[j] | (lm[j + 4] >> 4) << 6);
    sc[j + 8] = static_cast<std::uint8_t>((ls[j + 4] & 15u) | (lm[j + 4] & 15u) << 4);
  }
}
inline void unpack_scales_6bit(const std::uint8_t* sc, std::uint8_t* ls, std::uint8_t* lm) noexcept {
  for (int j = 0; j < 4; ++j) {
    ls[j] = sc[j] & 63u;
    lm[j] = sc[j + 4] & 63u;
    ls[j + 4] = static_cast<std::uint8_t>((sc[j + 8] & 15u) | (sc[j] >> 6) << 4);
    lm[j + 4] = static_cast<std::uint8_t>((sc[j + 8] >> 4) | (sc[j + 4] >> 6) << 4);
  }
}

// Q3_K's sixteen 6-bit scales v_j = s_j + 32 (docs/formats.md §1): the low nibble of v_j in scales[j]
// (j < 8) or the high nibble of scales[j − 8] (j ≥ 8), bits 4..5 at bit 2·(j/4) of scales[8 + j%4].
inline void pack_scales_q3k(const std::int8_t* s, std::uint8_t* sc) noexcept {
  std::memset(sc, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const unsigned v = static_cast<unsigned>(s[j] + 32);
    if (j < 8)
      sc[j] = static_cast<std::uint8_t>(sc[j] | (v & 15u));
    else
      sc[j - 8] = static_cast<std::uint8_t>(sc[j - 8] | (v & 15u) << 4);
    sc[8 + j % 4] = static_cast<std::uint8_t>(sc[8 + j % 4] | (v >> 4) << (2 * (j / 4)));
  }
}
inline void unpack_scales_q3k(const std::uint8_t* sc, std::int8_t* s) noexcept {
  for (int j = 0; j < 16; ++j) {
    const unsigned lo = j < 8 ? (sc[j] & 15u) : (sc[j - 8] >> 4);
    const unsigned hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3u;
    s[j] = static_cast<std::int8_t>(static_cast<int>(lo | hi << 4) - 32);
  }
}
}  // namespace detail

/// Q4_0: d(f16) qs[16]; qs[l] = q[l] | q[l+16] << 4 (docs/formats.md §1). Writes 18 bytes.
inline void pack(const BlockQ40& b, std::uint8_t* out) {
  detail::check_range("q4_0", "q", b.q, 0, 15);
  detail::put_u16(out, b.d);
  detail::pack_nibbles32(b.q, out + 2);
}
inline void unpack(const std::uint8_t* in, BlockQ40& b) noexcept {
  b.d = detail::get_u16(in);
  detail::unpack_nibbles32(in + 2, b.q);
}

/// Q4_K: d(f16) dmin(f16) scales[12] qs[128] (docs/formats.md §1). Writes 144 bytes.
/// Codes in four chunks of 64 weights: qs[32c + l] = q[64c + l] | q[64c + 32 + l] << 4.
inline void pack(const BlockQ4K& b, std::uint8_t* out) {
  detail::check_range("q4_K", "ls", b.ls, 0, 63);
  detail::check_range("q4_K", "lm", b.lm, 0, 63);
  detail::check_range("q4_K", "q", b.q, 0, 15);
  detail::put_u16(out, b.d);
  detail::put_u16(out + 2, b.dmin);
  detail::pack_scales_6bit(b.ls, b.lm, out + 4);
  std::uint8_t* qs = out + 16;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = static_cast<std::uint8_t>(b.q[64 * c + l] | b.q[64 * c + 32 + l] << 4);
}
inline void unpack(const std::uint8_t* in, BlockQ4K& b) noexcept {
  b.d = detail::get_u16(in);
  b.dmin = detail::get_u16(in + 2);
  detail::unpack_scales_6bit(in + 4, b.ls, b.lm);
  const std::uint8_t* qs = in + 16;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      b.q[64 * c + l] = qs[32 * c + l] & 15u;
      b.q[64 * c + 32 + l] = qs[32 * c + l] >> 4;
    }
}

/// Q3_K: hmask[32] qs[64] scales[12] d(f16) (docs/formats.md §1). Writes 110 bytes.
/// Bit 2 of u_i -> bit i/32 of hmask[i%32]; the low two bits -> qs as in pack_2bit.
inline void pack(const BlockQ3K& b, std::uint8_t* out) {
  detail::check_range("q3_K", "s", b.s, -32, 31);
  detail::check_range("q3_K", "q", b.q, 0, 7);
  std::uint8_t* hmask = out;
  std::memset(hmask, 0, 32);
  for (int i = 0; i < 256; ++i)
    if (b.q[i] & 4u) hmask[i % 32] = static_cast<std::uint8_t>(hmask[i % 32] | 1u << (i / 32));
  detail::pack_2bit(b.q, out + 32);
  detail::pack_scales_q3k(b.s, out + 96);
  detail::put_u16(out + 108, b.d);
}
inline void unpack(const std::uint8_t* in, BlockQ3K& b) noexcept {
  const std::uint8_t* hmask = in;
  detail::unpack_2bit(in + 32, b.q);
  for (int i = 0; i < 256; ++i)
    b.q[i] = static_cast<std::uint8_t>(b.q[i] | ((hmask[i % 32] >> (i / 32)) & 1u) << 2);
  detail::unpack_scales_q3k(in + 96, b.s);
  b.d = detail::get_u16(in + 108);
}

/// Q2_K: scales[16] qs[64] d(f16) dmin(f16); scales[j] = ls_j | lm_j << 4; codes as Q3_K's low bits
/// (docs/formats.md §1). Writes 84 bytes.
inline void pack(const BlockQ2K& b, std::uint8_t* out) {
  detail::check_range("q2_K", "ls", b.ls, 0, 15);
  detail::check_range("q2_K", "lm", b.lm, 0, 15);
  detail::check_range("q2_K", "q", b.q, 0, 3);
  for (int j = 0; j < 16; ++j) out[j] = static_cast<std::uint8_t>(b.ls[j] | b.lm[j] << 4);
  detail::pack_2bit(b.q, out + 16);
  detail::put_u16(out + 80, b.d);
  detail::put_u16(out + 82, b.dmin);
}
inline void unpack(const std::uint8_t* in, BlockQ2K& b) noexcept {
  for (int j = 0; j < 16; ++j) {
    b.ls[j] = in[j] & 15u;
    b.lm[j] = in[j] >> 4;
  }
  detail::unpack_2bit(in + 16, b.q);
  b.d = detail::get_u16(in + 80);
  b.dmin = detail::get_u16(in + 82);
}

/// Q8_0: d(f16) qs[32], qs[l] the int8 u[l] − 128 (docs/formats.md §1b). Writes 34 bytes.
inline void pack(const BlockQ80& b, std::uint8_t* out) noexcept {
  detail::put_u16(out, b.d);
  for (int l = 0; l < 32; ++l) out[2 + l] = static_cast<std::uint8_t>(b.q[l] ^ 0x80u);  // two's complement of u − 128
}
inline void unpack(const std::uint8_t* in, BlockQ80& b) noexcept {
  b.d = detail::get_u16(in);
  for (int l = 0; l < 32; ++l) b.q[l] = static_cast<std::uint8_t>(in[2 + l] ^ 0x80u);
}

/// Q5_0: d(f16) qh[4] qs[16] (docs/formats.md §1b): qh, a little-endian u32, holds bit 4 of u_i at bit i;
/// qs the low four bits as Q4_0. Writes 22 bytes.
inline void pack(const BlockQ50& b, std::uint8_t* out) {
  detail::check_range("q5_0", "q", b.q, 0, 31);
  detail::put_u16(out, b.d);
  std::uint32_t qh = 0;
  for (int i = 0; i < 32; ++i) qh |= static_cast<std::uint32_t>((b.q[i] >> 4) & 1u) << i;
  detail::put_u32(out + 2, qh);
  detail::pack_nibbles32(b.q, out + 6);
}
inline void unpack(const std::uint8_t* in, BlockQ50& b) noexcept {
  b.d = detail::get_u16(in);
  const std::uint32_t qh = detail::get_u32(in + 2);
  detail::unpack_nibbles32(in + 6, b.q);
  for (int i = 0; i < 32; ++i) b.q[i] = static_cast<std::uint8_t>(b.q[i] | ((qh >> i) & 1u) << 4);
}

/// Q5_K: d(f16) dmin(f16) scales[12] qh[32] qs[128] (docs/formats.md §1b); scales as Q4_K's; codes in four
/// chunks c of 64 weights: qs[32c + l] = (u[64c + l] & 15) | (u[64c + 32 + l] & 15) << 4, and bit 4 of
/// u[64c + l] (u[64c + 32 + l]) is bit 2c (2c + 1) of qh[l]. Writes 176 bytes.
inline void pack(const BlockQ5K& b, std::uint8_t* out) {
  detail::check_range("q5_K", "ls", b.ls, 0, 63);
  detail::check_range("q5_K", "lm", b.lm, 0, 63);
  detail::check_range("q5_K", "q", b.q, 0, 31);
  detail::put_u16(out, b.d);
  detail::put_u16(out + 2, b.dmin);
  detail::pack_scales_6bit(b.ls, b.lm, out + 4);
  std::uint8_t* qh = out + 16;
  std::uint8_t* qs = out + 48;
  std::memset(qh, 0, 32);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const unsigned lo = b.q[64 * c + l], hi = b.q[64 * c + 32 + l];
      qs[32 * c + l] = static_cast<std::uint8_t>((lo & 15u) | (hi & 15u) << 4);
      qh[l] = static_cast<std::uint8_t>(qh[l] | ((lo >> 4) & 1u) << (2 * c) | ((hi >> 4) & 1u) << (2 * c + 1));
    }
}
inline void unpack(const std::uint8_t* in, BlockQ5K& b) noexcept {
  b.d = detail::get_u16(in);
  b.dmin = detail::get_u16(in + 2);
  detail::unpack_scales_6bit(in + 4, b.ls, b.lm);
  const std::uint8_t* qh = in + 16;
  const std::uint8_t* qs = in + 48;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      b.q[64 * c + l] = static_cast<std::uint8_t>((qs[32 * c + l] & 15u) | ((qh[l] >> (2 * c)) & 1u) << 4);
      b.q[64 * c + 32 + l] = static_cast<std::uint8_t>((qs[32 * c + l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1u) << 4);
    }
}

/// Q6_K: ql[128] qh[64] scales[16] d(f16) (docs/formats.md §1b). Per half h (weights 128h..) with
/// ql + 64h and qh + 32h, for l = 0..31: the low nibbles of weights 128h + l and 128h + 32 + l are the low
/// nibbles of ql[l] and ql[l + 32], those of weights 128h + 64 + l and 128h + 96 + l their high nibbles;
/// the top two bits of the four weights are bits 0–1, 2–3, 4–5, 6–7 of qh[l]. Writes 210 bytes.
inline void pack(const BlockQ6K& b, std::uint8_t* out) {
  detail::check_range("q6_K", "q", b.q, 0, 63);
  for (int h = 0; h < 2; ++h) {
    const std::uint8_t* u = b.q + 128 * h;
    std::uint8_t* ql = out + 64 * h;
    std::uint8_t* qh = out + 128 + 32 * h;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<std::uint8_t>((u[l] & 15u) | (u[l + 64] & 15u) << 4);
      ql[l + 32] = static_cast<std::uint8_t>((u[l + 32] & 15u) | (u[l + 96] & 15u) << 4);
      qh[l] = static_cast<std::uint8_t>((u[l] >> 4) | (u[l + 32] >> 4) << 2 | (u[l + 64] >> 4) << 4 | (u[l + 96] >> 4) << 6);
    }
  }
  for (int j = 0; j < 16; ++j) out[192 + j] = static_cast<std::uint8_t>(b.s[j]);
  detail::put_u16(out + 208, b.d);
}
inline void unpack(const std::uint8_t* in, BlockQ6K& b) noexcept {
  for (int h = 0; h < 2; ++h) {
    std::uint8_t* u = b.q + 128 * h;
    const std::uint8_t* ql = in + 64 * h;
    const std::uint8_t* qh = in + 128 + 32 * h;
    for (int l = 0; l < 32; ++l) {
      u[l] = static_cast<std::uint8_t>((ql[l] & 15u) | (qh[l] & 3u) << 4);
      u[l + 32] = static_cast<std::uint8_t>((ql[l + 32] & 15u) | ((qh[l] >> 2) & 3u) << 4);
      u[l + 64] = static_cast<std::uint8_t>((ql[l] >> 4) | ((qh[l] >> 4) & 3u) << 4);
      u[l + 96] = static_cast<std::uint8_t>((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3u) << 4);
    }
  }
  for (int j = 0; j < 16; ++j) b.s[j] = static_cast<std::int8_t>(in[192 + j]);
  b.d = detail::get_u16(in + 208);
}

/// IQ4_NL: d(f16) qs[16], the codes k packed as Q4_0's (docs/formats.md §1b). Writes 18 bytes.
inline void pack(const BlockIQ4NL& b, std::uint8_t* out) {
  detail::check_range("iq4_nl", "q", b.q, 0, 15);
  detail::put_u16(out, b.d);
  detail::pack_nibbles32(b.q, out + 2);
}
inline void unpack(const std::uint8_t* in, BlockIQ4NL& b) noexcept {
  b.d = detail::get_u16(in);
  detail::unpack_nibbles32(in + 2, b.q);
}

/// IQ4_XS: d(f16) scales_h(u16) scales_l[4] qs[128] (docs/formats.md §1b): the low four bits of ls_j in
/// scales_l[j/2] (low nibble for even j, high for odd), its top two bits at bits 2j, 2j + 1 of scales_h;
/// sub-block j's 32 codes in qs[16j .. 16j + 15] as IQ4_NL packs a block. Writes 136 bytes.
inline void pack(const BlockIQ4XS& b, std::uint8_t* out) {
  detail::check_range("iq4_xs", "ls", b.ls, 0, 63);
  detail::check_range("iq4_xs", "q", b.q, 0, 15);
  detail::put_u16(out, b.d);
  std::uint16_t sh = 0;
  std::uint8_t* sl = out + 4;
  std::memset(sl, 0, 4);
  for (int j = 0; j < 8; ++j) {
    sh = static_cast<std::uint16_t>(sh | (b.ls[j] >> 4) << (2 * j));
    sl[j / 2] = static_cast<std::uint8_t>(sl[j / 2] | (b.ls[j] & 15u) << (4 * (j % 2)));
  }
  detail::put_u16(out + 2, sh);
  for (int j = 0; j < 8; ++j) detail::pack_nibbles32(b.q + 32 * j, out + 8 + 16 * j);
}
inline void unpack(const std::uint8_t* in, BlockIQ4XS& b) noexcept {
  b.d = detail::get_u16(in);
  const std::uint16_t sh = detail::get_u16(in + 2);
  for (int j = 0; j < 8; ++j)
    b.ls[j] = static_cast<std::uint8_t>(((in[4 + j / 2] >> (4 * (j % 2))) & 15u) | ((sh >> (2 * j)) & 3u) << 4);
  for (int j = 0; j < 8; ++j) detail::unpack_nibbles32(in + 8 + 16 * j, b.q + 32 * j);
}

// ----------------------------------------------------------------------------------------------------
// Sub-block lattices and dequantization (bit-exact with ggml: see "Exact float32 arithmetic" above)
// ----------------------------------------------------------------------------------------------------

/// One SubLattice (out[0]).
inline void sub_lattices(const BlockQ40& b, SubLattice* out) noexcept {
  out[0] = SubLattice{half_to_float(b.d), 8, 0.0f, 15};
}
/// Eight SubLattices, a_j = d·ls_j and m_j = dmin·lm_j rounded to float as ggml does.
inline void sub_lattices(const BlockQ4K& b, SubLattice* out) noexcept {
  const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
  for (int j = 0; j < 8; ++j)
    out[j] = SubLattice{d * static_cast<float>(b.ls[j]), 0, dmin * static_cast<float>(b.lm[j]), 15};
}
/// Sixteen SubLattices on u = q + 4: scale d·s_j, zero 4.
inline void sub_lattices(const BlockQ3K& b, SubLattice* out) noexcept {
  const float d = half_to_float(b.d);
  for (int j = 0; j < 16; ++j) out[j] = SubLattice{d * static_cast<float>(b.s[j]), 4, 0.0f, 7};
}
/// Sixteen SubLattices, as Q4_K with 4-bit ls/lm and 2-bit codes.
inline void sub_lattices(const BlockQ2K& b, SubLattice* out) noexcept {
  const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
  for (int j = 0; j < 16; ++j)
    out[j] = SubLattice{d * static_cast<float>(b.ls[j]), 0, dmin * static_cast<float>(b.lm[j]), 3};
}

/// One SubLattice, scale d, zero 128 (u = int8 + 128).
inline void sub_lattices(const BlockQ80& b, SubLattice* out) noexcept {
  out[0] = SubLattice{half_to_float(b.d), 128, 0.0f, 255};
}
/// One SubLattice, scale d, zero 16.
inline void sub_lattices(const BlockQ50& b, SubLattice* out) noexcept {
  out[0] = SubLattice{half_to_float(b.d), 16, 0.0f, 31};
}
/// Eight SubLattices, as Q4_K with 5-bit codes.
inline void sub_lattices(const BlockQ5K& b, SubLattice* out) noexcept {
  const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
  for (int j = 0; j < 8; ++j)
    out[j] = SubLattice{d * static_cast<float>(b.ls[j]), 0, dmin * static_cast<float>(b.lm[j]), 31};
}
/// Sixteen SubLattices on u = q + 32: scale d·s_j, zero 32.
inline void sub_lattices(const BlockQ6K& b, SubLattice* out) noexcept {
  const float d = half_to_float(b.d);
  for (int j = 0; j < 16; ++j) out[j] = SubLattice{d * static_cast<float>(b.s[j]), 32, 0.0f, 63};
}
/// One SubLattice on the table: scale d.
inline void sub_lattices(const BlockIQ4NL& b, SubLattice* out) noexcept {
  out[0] = SubLattice{half_to_float(b.d), 0, 0.0f, 15, iq4_levels};
}
/// Eight SubLattices on the table: scale d·(ls_j − 32).
inline void sub_lattices(const BlockIQ4XS& b, SubLattice* out) noexcept {
  const float d = half_to_float(b.d);
  for (int j = 0; j < 8; ++j) out[j] = SubLattice{d * static_cast<float>(b.ls[j] - 32), 0, 0.0f, 15, iq4_levels};
}

/// Writes the block's B::n weights to out, exactly ggml's float32 values.
template <class B>
void dequantize(const B& b, float* out) noexcept {
  SubLattice lat[B::n_sub];
  sub_lattices(b, lat);
  for (int i = 0; i < B::n; ++i) out[i] = lat[i / B::sub_size].value(b.q[i]);
}

/// Dequantizes one row of n weights stored as `type` in `bytes` (row_bytes(type, n) bytes, little-endian).
/// Throws UsageError (a std::invalid_argument) if n is not a multiple of the block size.
inline void dequantize_row(Type type, const std::uint8_t* bytes, std::int64_t n, float* out) {
  const std::size_t nb = row_bytes(type, n) / block_bytes(type);
  if (type == Type::F32) {
    for (std::size_t i = 0; i < nb; ++i) out[i] = bits_float(detail::get_u32(bytes + 4 * i));
    return;
  }
  if (type == Type::F16) {
    for (std::size_t i = 0; i < nb; ++i) out[i] = half_to_float(detail::get_u16(bytes + 2 * i));
    return;
  }
  if (type == Type::BF16) {  // the upper half of a float: exact
    for (std::size_t i = 0; i < nb; ++i) out[i] = bf16_to_float(detail::get_u16(bytes + 2 * i));
    return;
  }
  visit_block(type, [&](auto blk) {
    using B = decltype(blk);
    for (std::size_t i = 0; i < nb; ++i) {
      unpack(bytes + i * B::bytes, blk);
      dequantize(blk, out + i * B::n);
    }
  });
}

}  // namespace pptq::ggml
