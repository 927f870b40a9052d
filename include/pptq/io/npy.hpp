#pragma once
// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// The reader treats its input as untrusted: every length is checked before it is used, the header is parsed
// by a small bounded-depth parser for the subset of Python literals numpy writes (never evaluated), and any
// problem is reported as an NpyError (a pptq::DataError) whose message names the source, the problem and the
// offending value. A file that cannot be opened or read is a pptq::IoError; writing goes through AtomicFile,
// whose failures are IoErrors too. Every message starts with "npy: " and then names the source.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../error.hpp"
#include "../ggml/half.hpp"
#include "atomic_file.hpp"
#include "input_file.hpp"
#include "printable.hpp"

namespace pptq {
namespace io {

/// A malformed .npy image, or an array that does not fit the conversion asked for: fix the data.
class NpyError : public DataError {
 public:
  using DataError::DataError;
};

namespace detail {
// Every message of this header starts with "npy: " and then names the source (a path, "<memory>", or the
// function given a hand-built array).
inline NpyError npy_error(const std::string& msg) { return NpyError("npy: " + msg); }
}  // namespace detail

// f16 is read-only: to_matrix converts it to the requested scalar through float.
enum class DType { f32, f64, i8, u8, i16, u16, i32, u32, i64, u64, f16 };

inline std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::i8:
    case DType::u8: return 1;
    case DType::i16:
    case DType::u16:
    case DType::f16: return 2;
    case DType::f32:
    case DType::i32:
    case DType::u32: return 4;
    case DType::f64:
    case DType::i64:
    case DType::u64: return 8;
  }
  return 0;
}

// The little-endian numpy descr of a dtype ('<f4', '|u1', ...), which is how NpyArray::bytes are laid out.
inline const char* dtype_descr(DType t) noexcept {
  switch (t) {
    case DType::f32: return "<f4";
    case DType::f64: return "<f8";
    case DType::i8: return "|i1";
    case DType::u8: return "|u1";
    case DType::i16: return "<i2";
    case DType::u16: return "<u2";
    case DType::i32: return "<i4";
    case DType::u32: return "<u4";
    case DType::i64: return "<i8";
    case DType::u64: return "<u8";
    case DType::f16: return "<f2";
  }
  return "?";
}

struct NpyArray {
  DType dtype = DType::f64;
  std::vector<std::int64_t> shape;  // () for 0-d
  bool fortran_order = false;
  std::vector<std::uint8_t> bytes;  // always little-endian (big-endian files are converted when read)

  // Product of shape (1 for 0-d). Checked, since an NpyArray may be built by hand rather than parsed.
  std::int64_t size() const;
};

namespace detail {

// ---------------------------------------------------------------------------------------------------------
// Small helpers for messages.

inline std::string shape_repr(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// Overflow-checked arithmetic on non-negative int64 values; false on overflow.
inline bool mul_nonneg(std::int64_t a, std::int64_t b, std::int64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::int64_t>::max() / a) return false;
  out = a * b;
  return true;
}

// Product of dims; a zero anywhere gives 0 even if the other dims alone would overflow (numpy agrees: such
// an array is empty). Returns false on a negative dim or on overflow.
inline bool shape_product(const std::vector<std::int64_t>& shape, std::int64_t& out) {
  for (std::int64_t d : shape)
    if (d < 0) return false;
  for (std::int64_t d : shape)
    if (d == 0) {
      out = 0;
      return true;
    }
  std::int64_t p = 1;
  for (std::int64_t d : shape)
    if (!mul_nonneg(p, d, p)) return false;
  out = p;
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// A parser for the Python literal subset found in .npy headers: dicts, tuples, lists, strings, integers,
// True/False/None. Anything else is an error; nothing is evaluated.

struct PyValue {
  enum class Kind { Str, Int, Bool, None, Tuple, List, Dict };
  Kind kind = Kind::None;
  std::string text;             // Str: the decoded string; Int: the literal as written
  std::int64_t ival = 0;        // Int (valid unless overflow)
  bool overflow = false;        // Int does not fit int64
  bool bval = false;            // Bool
  std::vector<PyValue> items;   // Tuple/List elements; Dict: key0, value0, key1, value1, ...
};

inline std::string repr(const PyValue& v, std::size_t budget = 60) {
  std::string s;
  switch (v.kind) {
    case PyValue::Kind::Str: s = "'" + printable(v.text, budget) + "'"; break;
    case PyValue::Kind::Int: s = printable(v.text, budget); break;
    case PyValue::Kind::Bool: s = v.bval ? "True" : "False"; break;
    case PyValue::Kind::None: s = "None"; break;
    case PyValue::Kind::Tuple:
    case PyValue::Kind::List:
    case PyValue::Kind::Dict: {
      const bool dict = v.kind == PyValue::Kind::Dict;
      s = v.kind == PyValue::Kind::Tuple ? "(" : dict ? "{" : "[";
      for (std::size_t i = 0; i < v.items.size(); ++i) {
        if (s.size() > budget) {
          s += "...";
          break;
        }
        if (i) s += (dict && i % 2 == 1) ? ": " : ", ";
        s += repr(v.items[i], budget);
      }
      if (v.kind == PyValue::Kind::Tuple && v.items.size() == 1) s += ",";
      s += v.kind == PyValue::Kind::Tuple ? ")" : dict ? "}" : "]";
      break;
    }
  }
  return s;
}

class PyLiteralParser {
 public:
  PyLiteralParser(const char* s, std::size_t n, const std::string& what) : s_(s), n_(n), what_(what) {}

  // The whole input must be one literal surrounded by whitespace only.
  PyValue parse_all() {
    skip_ws();
    PyValue v = parse_value(0);
    skip_ws();
    if (pos_ != n_) fail("unexpected characters after the header dict");
    return v;
  }

 private:
  // Recursion is bounded so a header of nested brackets cannot exhaust the stack.
  static constexpr int kMaxDepth = 16;

  [[noreturn]] void fail(const std::string& msg) const {
    const std::size_t from = pos_ > 20 ? pos_ - 20 : 0;
    throw detail::npy_error(what_ + ": malformed header: " + msg + " at offset " + std::to_string(pos_) + " near '" +
                   printable(s_ + from, (n_ - from < 40 ? n_ - from : 40)) + "'");
  }

  bool at_end() const { return pos_ >= n_; }
  char peek() const { return pos_ < n_ ? s_[pos_] : '\0'; }

  void skip_ws() {
    while (pos_ < n_) {
      const char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v')
        ++pos_;
      else
        break;
    }
  }

  static bool is_ident_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  static bool is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }

  PyValue parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    if (at_end()) fail("unexpected end of header");
    const char c = peek();
    if (c == '\'' || c == '"') return parse_string();
    if (c == '{') return parse_dict(depth);
    if (c == '(') return parse_tuple(depth);
    if (c == '[') return parse_list(depth);
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) return parse_int();
    if (is_ident_start(c)) {
      const std::size_t start = pos_;
      while (pos_ < n_ && is_ident_char(s_[pos_])) ++pos_;
      const std::string id(s_ + start, pos_ - start);
      // A u'' prefix is harmless and was written by some Python 2 era tools.
      if ((id == "u" || id == "U") && (peek() == '\'' || peek() == '"')) return parse_string();
      PyValue v;
      if (id == "True" || id == "False") {
        v.kind = PyValue::Kind::Bool;
        v.bval = id == "True";
      } else if (id == "None") {
        v.kind = PyValue::Kind::None;
      } else {
        pos_ = start;
        fail("unsupported token '" + printable(id, 30) + "'");
      }
      return v;
    }
    fail("unexpected character");
  }

  PyValue parse_string() {
    const char q = s_[pos_++];
    PyValue v;
    v.kind = PyValue::Kind::Str;
    for (;;) {
      if (at_end()) fail("unterminated string");
      const char c = s_[pos_++];
      if (c == q) break;
      if (c == '\n' || c == '\r') fail("line break inside a string");
      if (c == '\\') {
        if (at_end()) fail("unterminated string");
        const char e = s_[pos_++];
        switch (e) {
          case '\\': v.text += '\\'; break;
          case '\'': v.text += '\''; break;
          case '"': v.text += '"'; break;
          case 'n': v.text += '\n'; break;
          case 't': v.text += '\t'; break;
          default:  // Python keeps unknown escapes verbatim.
            v.text += '\\';
            v.text += e;
        }
        continue;
      }
      v.text += c;
    }
    return v;
  }

  PyValue parse_int() {
    const std::size_t start = pos_;
    bool neg = false;
    if (peek() == '-' || peek() == '+') {
      neg = peek() == '-';
      ++pos_;
      skip_ws();  // Python allows "- 3"
    }
    if (at_end() || !(peek() >= '0' && peek() <= '9')) fail("expected a digit");
    PyValue v;
    v.kind = PyValue::Kind::Int;
    // Accumulate as a negative number so that -2^63 is representable.
    std::int64_t acc = 0;
    while (pos_ < n_ && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const int d = s_[pos_++] - '0';
      if (acc < (std::numeric_limits<std::int64_t>::min() + d) / 10)
        v.overflow = true;
      else
        acc = acc * 10 - d;
    }
    // Python 2 numpy wrote long integers with an L suffix.
    if (pos_ < n_ && (s_[pos_] == 'L' || s_[pos_] == 'l')) ++pos_;
    if (pos_ < n_ && (is_ident_char(s_[pos_]) || s_[pos_] == '.')) fail("unsupported number literal");
    if (!neg) {
      if (acc == std::numeric_limits<std::int64_t>::min())
        v.overflow = true;
      else
        acc = -acc;
    }
    v.ival = v.overflow ? 0 : acc;
    v.text.assign(s_ + start, pos_ - start);
    return v;
  }

  // Comma-separated elements up to `close`, a trailing comma allowed. Returns whether any comma was seen,
  // which is what distinguishes the tuple (3,) from the parenthesised expression (3).
  bool parse_sequence(char close, int depth, std::vector<PyValue>& out) {
    bool comma = false;
    ++pos_;  // opening bracket
    skip_ws();
    while (peek() != close) {
      out.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        comma = true;
        ++pos_;
        skip_ws();
      } else if (peek() != close) {
        fail(at_end() ? "unexpected end of header" : std::string("expected ',' or '") + close + "'");
      }
    }
    ++pos_;  // closing bracket
    return comma;
  }

  PyValue parse_tuple(int depth) {
    PyValue v;
    v.kind = PyValue::Kind::Tuple;
    const bool comma = parse_sequence(')', depth, v.items);
    if (v.items.size() == 1 && !comma) {
      PyValue inner = std::move(v.items[0]);
      return inner;
    }
    return v;
  }

  PyValue parse_list(int depth) {
    PyValue v;
    v.kind = PyValue::Kind::List;
    parse_sequence(']', depth, v.items);
    return v;
  }

  PyValue parse_dict(int depth) {
    PyValue v;
    v.kind = PyValue::Kind::Dict;
    ++pos_;  // '{'
    skip_ws();
    while (peek() != '}') {
      v.items.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() != ':') fail("expected ':' after a dict key");
      ++pos_;
      skip_ws();
      v.items.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        skip_ws();
      } else if (peek() != '}') {
        fail(at_end() ? "unexpected end of header" : "expected ',' or '}'");
      }
    }
    ++pos_;  // '}'
    return v;
  }

  const char* s_;
  std::size_t n_;
  std::size_t pos_ = 0;
  const std::string& what_;
};

// ---------------------------------------------------------------------------------------------------------
// dtype descriptors.

inline bool host_is_little_endian() {
  const std::uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

// Parses '<f4', '>i8', '|u1', ... Sets big_endian when the file's bytes must be swapped to little-endian.
inline bool parse_descr(const std::string& d, DType& t, bool& big_endian) {
  if (d.size() != 3) return false;
  const char order = d[0];
  const std::string code = d.substr(1);
  static const struct {
    const char* code;
    DType type;
  } table[] = {{"f2", DType::f16}, {"f4", DType::f32}, {"f8", DType::f64}, {"i1", DType::i8},
               {"u1", DType::u8},  {"i2", DType::i16}, {"u2", DType::u16}, {"i4", DType::i32},
               {"u4", DType::u32}, {"i8", DType::i64}, {"u8", DType::u64}};
  for (const auto& e : table) {
    if (code != e.code) continue;
    if (dtype_size(e.type) == 1) {
      // Byte order is meaningless for one-byte types; numpy writes '|' but accepts any.
      if (order != '|' && order != '<' && order != '>' && order != '=') return false;
      big_endian = false;
    } else {
      // '|' ("not applicable") on a multi-byte type is not something numpy writes; refuse to guess.
      if (order == '<')
        big_endian = false;
      else if (order == '>')
        big_endian = true;
      else if (order == '=')
        big_endian = !host_is_little_endian();
      else
        return false;
    }
    t = e.type;
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------
// Little-endian element access, independent of the host byte order.

template <typename T>
T load_le(const std::uint8_t* p) {
  using U = std::conditional_t<sizeof(T) == 1, std::uint8_t,
            std::conditional_t<sizeof(T) == 2, std::uint16_t,
            std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>>;
  U u = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) u = static_cast<U>(u | (static_cast<U>(p[i]) << (8 * i)));
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

template <typename T>
void store_le(T v, std::uint8_t* p) {
  using U = std::conditional_t<sizeof(T) == 1, std::uint8_t,
            std::conditional_t<sizeof(T) == 2, std::uint16_t,
            std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>>;
  U u;
  std::memcpy(&u, &v, sizeof(T));
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::uint8_t>(u >> (8 * i));
}

// Value conversion to the requested scalar without undefined behaviour: a float that does not fit an
// integer type (or is NaN) is an error rather than UB, and a double too large for float becomes +-inf as
// IEEE rounding would give, instead of relying on an out-of-range cast.
template <typename To, typename From>
bool convert_value(From v, To& out) {
  if constexpr (std::is_floating_point<To>::value) {
    if constexpr (std::is_floating_point<From>::value && sizeof(From) > sizeof(To)) {
      if (std::isfinite(v) && std::fabs(v) > static_cast<From>(std::numeric_limits<To>::max())) {
        out = std::signbit(v) ? -std::numeric_limits<To>::infinity() : std::numeric_limits<To>::infinity();
        return true;
      }
    }
    out = static_cast<To>(v);
    return true;
  } else if constexpr (std::is_floating_point<From>::value) {
    if (!std::isfinite(v)) return false;
    const From t = std::trunc(v);
    // 2^digits is exact in binary floating point, so these bounds are exact.
    const From hi = std::ldexp(static_cast<From>(1), std::numeric_limits<To>::digits);
    const From lo = std::is_signed<To>::value ? -hi : static_cast<From>(0);
    if (!(t >= lo && t < hi)) return false;
    out = static_cast<To>(t);
    return true;
  } else {
    if constexpr (std::is_signed<From>::value) {
      if (v < 0) {
        if constexpr (!std::is_signed<To>::value) {
          return false;
        } else {
          if (static_cast<std::intmax_t>(v) < static_cast<std::intmax_t>(std::numeric_limits<To>::lowest()))
            return false;
          out = static_cast<To>(v);
          return true;
        }
      }
    }
    if (static_cast<std::uintmax_t>(v) > static_cast<std::uintmax_t>(std::numeric_limits<To>::max())) return false;
    out = static_cast<To>(v);
    return true;
  }
}

template <typename Scalar>
const char* scalar_name() {
  if (std::is_same<Scalar, float>::value) return "float";
  if (std::is_same<Scalar, double>::value) return "double";
  if (std::is_same<Scalar, long double>::value) return "long double";
  return std::is_signed<Scalar>::value ? "signed integer" : "unsigned integer";
}

// Tag for binary16 elements, which have no C++ type: they are decoded to float first.
struct Half {};

template <typename Src>
struct element {
  using value_type = Src;
  static constexpr std::size_t size = sizeof(Src);
  static Src load(const std::uint8_t* p) { return load_le<Src>(p); }
};
template <>
struct element<Half> {
  using value_type = float;
  static constexpr std::size_t size = 2;
  static float load(const std::uint8_t* p) { return ggml::half_to_float(load_le<std::uint16_t>(p)); }
};

template <typename Scalar, typename Src, typename Mat>
void fill_matrix(const NpyArray& a, Mat& m, bool c_order_2d, const std::string& what) {
  const std::uint8_t* p = a.bytes.data();
  auto value_at = [&](std::size_t k) -> Scalar {
    Scalar out{};
    if (!convert_value<Scalar>(element<Src>::load(p + k * element<Src>::size), out))
      throw detail::npy_error(what + ": element " + std::to_string(k) + " of the " + dtype_descr(a.dtype) +
                     " array is not representable as " + scalar_name<Scalar>());
    return out;
  };
  const Eigen::Index rows = m.rows(), cols = m.cols();
  if (c_order_2d) {
    std::size_t k = 0;
    for (Eigen::Index i = 0; i < rows; ++i)
      for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = value_at(k++);
  } else {
    // Eigen's default column-major storage is exactly Fortran order (and any order for 0-d/1-d).
    const std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
    for (std::size_t k = 0; k < n; ++k) m.data()[k] = value_at(k);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing.

template <typename T, typename Enable = void>
struct npy_dtype_of;  // undefined for unsupported scalars: a compile error names this template
template <>
struct npy_dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct npy_dtype_of<double> {
  static constexpr DType value = DType::f64;
};
// Integers by size and signedness, so both long and long long (and int8_t = signed char) map correctly.
template <typename T>
struct npy_dtype_of<T, std::enable_if_t<std::is_integral<T>::value && !std::is_same<T, bool>::value>> {
  static constexpr DType value =
      sizeof(T) == 1 ? (std::is_signed<T>::value ? DType::i8 : DType::u8)
      : sizeof(T) == 2 ? (std::is_signed<T>::value ? DType::i16 : DType::u16)
      : sizeof(T) == 4 ? (std::is_signed<T>::value ? DType::i32 : DType::u32)
                       : (std::is_signed<T>::value ? DType::i64 : DType::u64);
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8,
                "unsupported integer width for .npy");
};

// Magic, version, header length and the header dict, padded with spaces and ended by '\n' so the data
// starts at a multiple of 64 bytes (numpy's alignment, which lets readers mmap the data aligned).
inline std::vector<std::uint8_t> npy_preamble(DType dtype, bool fortran_order,
                                              const std::vector<std::int64_t>& shape) {
  const std::string dict = std::string("{'descr': '") + dtype_descr(dtype) +
                           "', 'fortran_order': " + (fortran_order ? "True" : "False") +
                           ", 'shape': " + shape_repr(shape) + ", }";
  std::size_t prefix = 10;  // magic(6) + version(2) + uint16 length
  std::size_t total = prefix + dict.size() + 1;
  total += (64 - total % 64) % 64;
  if (total - prefix > 65535) {  // only then version 2.0 with a uint32 length
    prefix = 12;
    total = prefix + dict.size() + 1;
    total += (64 - total % 64) % 64;
    if (total - prefix > 0xffffffffu) throw detail::npy_error("serialize_npy: header too large");
  }
  const std::size_t hlen = total - prefix;
  std::vector<std::uint8_t> out(total, static_cast<std::uint8_t>(' '));
  const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  std::memcpy(out.data(), magic, 6);
  out[6] = prefix == 10 ? 1 : 2;
  out[7] = 0;
  if (prefix == 10) {
    store_le(static_cast<std::uint16_t>(hlen), out.data() + 8);
  } else {
    store_le(static_cast<std::uint32_t>(hlen), out.data() + 8);
  }
  std::memcpy(out.data() + prefix, dict.data(), dict.size());
  out[total - 1] = '\n';
  return out;
}

template <typename Derived>
std::vector<std::uint8_t> serialize_npy_impl(const Eigen::DenseBase<Derived>& m,
                                             const std::vector<std::int64_t>& shape) {
  using Scalar = typename Derived::Scalar;
  constexpr DType dt = npy_dtype_of<Scalar>::value;
  // Evaluate once so expressions (products, blocks of expressions) are read through plain coefficients.
  auto&& e = m.derived().eval();
  std::vector<std::uint8_t> out = npy_preamble(dt, false, shape);
  const std::size_t head = out.size();
  const Eigen::Index rows = e.rows(), cols = e.cols();
  out.resize(head + static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) * sizeof(Scalar));
  std::uint8_t* p = out.data() + head;
  for (Eigen::Index i = 0; i < rows; ++i)  // C order: row by row
    for (Eigen::Index j = 0; j < cols; ++j, p += sizeof(Scalar)) store_le<Scalar>(e(i, j), p);
  return out;
}

}  // namespace detail

inline std::int64_t NpyArray::size() const {
  std::int64_t n = 0;
  if (!detail::shape_product(shape, n))
    throw detail::npy_error("NpyArray: shape " + detail::shape_repr(shape) + " is negative or overflows int64");
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Reading.

namespace detail {

/// The preamble: magic, version, header length. Returns the header's offset and length. data holds the
/// first n bytes of an image of `total` bytes (n >= min(total, 12): all a preamble needs).
inline std::pair<std::size_t, std::size_t> parse_preamble(const std::uint8_t* data, std::size_t n, const std::string& what,
                                                          std::size_t total) {
  if (data == nullptr && n != 0) throw npy_error(what + ": null buffer");
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (n < 6 || std::memcmp(data, magic, 6) != 0)
    throw npy_error(what + ": bad magic (not a .npy file): starts with '" +
                    printable(reinterpret_cast<const char*>(data), n < 6 ? n : 6) + "'");
  if (n < 8) throw npy_error(what + ": truncated preamble: " + std::to_string(n) + " bytes, no version");
  n = total;  // the rest is checked against the whole image
  const unsigned major = data[6], minor = data[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    throw npy_error(what + ": unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                    " (supported: 1.0, 2.0, 3.0)");
  // 1.0 has a uint16 header length; 2.0 a uint32; 3.0 is 2.0 with a utf8 header (our parser only needs
  // ASCII, and any non-ASCII byte can appear only inside strings we then reject).
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  const std::size_t prefix = 8 + len_bytes;
  if (n < prefix)
    throw npy_error(what + ": truncated preamble: " + std::to_string(n) + " bytes, version " + std::to_string(major) +
                    ".0 needs " + std::to_string(prefix));
  const std::uint64_t hlen = major == 1 ? load_le<std::uint16_t>(data + 8) : load_le<std::uint32_t>(data + 8);
  if (hlen > n - prefix)
    throw npy_error(what + ": header length " + std::to_string(hlen) + " exceeds the file (" + std::to_string(n - prefix) +
                    " bytes after the preamble)");
  return {prefix, static_cast<std::size_t>(hlen)};
}

/// The header dict's three values, each present exactly once (numpy rejects extra keys; a duplicate
/// would silently pick one of two contradicting values).
struct HeaderKeys {
  const PyValue *descr = nullptr, *fortran = nullptr, *shape = nullptr;
};

inline HeaderKeys header_keys(const PyValue& top, const std::string& what) {
  if (top.kind != PyValue::Kind::Dict) throw npy_error(what + ": header is not a Python dict literal: " + repr(top));
  HeaderKeys h;
  for (std::size_t i = 0; i + 1 < top.items.size(); i += 2) {
    const PyValue& k = top.items[i];
    if (k.kind != PyValue::Kind::Str) throw npy_error(what + ": header dict key is not a string: " + repr(k));
    const PyValue** slot = k.text == "descr" ? &h.descr : k.text == "fortran_order" ? &h.fortran : k.text == "shape" ? &h.shape : nullptr;
    if (!slot) throw npy_error(what + ": unexpected key " + repr(k) + " in header");
    if (*slot) throw npy_error(what + ": duplicate key " + repr(k) + " in header");
    *slot = &top.items[i + 1];
  }
  for (auto kv : {std::make_pair(h.descr, "descr"), std::make_pair(h.fortran, "fortran_order"), std::make_pair(h.shape, "shape")})
    if (!kv.first) throw npy_error(what + ": header is missing key '" + kv.second + "'");
  return h;
}

/// dtype (and byte order) and Fortran order from the header.
inline void parse_dtype_and_order(const HeaderKeys& h, NpyArray& a, bool& big_endian, const std::string& what) {
  if (h.descr->kind == PyValue::Kind::List) throw npy_error(what + ": unsupported dtype: structured dtype " + repr(*h.descr));
  if (h.descr->kind != PyValue::Kind::Str)
    throw npy_error(what + ": unsupported dtype: descr is not a string: " + repr(*h.descr));
  if (!parse_descr(h.descr->text, a.dtype, big_endian))
    throw npy_error(what + ": unsupported dtype " + repr(*h.descr) + " (supported: f2, f4, f8, i1-i8, u1-u8 in either byte order)");
  if (h.fortran->kind != PyValue::Kind::Bool)
    throw npy_error(what + ": fortran_order must be True or False, got " + repr(*h.fortran));
  a.fortran_order = h.fortran->bval;
}

/// The shape: a tuple of at most 64 non-negative int64 dimensions (numpy itself caps them at 64).
inline void parse_shape(const PyValue& shape, NpyArray& a, const std::string& what) {
  if (shape.kind != PyValue::Kind::Tuple)
    throw npy_error(what + ": malformed shape: expected a tuple of integers, got " + repr(shape));
  if (shape.items.size() > 64)
    throw npy_error(what + ": malformed shape: " + std::to_string(shape.items.size()) + " dimensions (at most 64)");
  for (const PyValue& d : shape.items) {
    if (d.kind != PyValue::Kind::Int)
      throw npy_error(what + ": malformed shape " + repr(shape) + ": dimension " + repr(d) + " is not an integer");
    if (d.overflow) throw npy_error(what + ": shape " + repr(shape) + ": dimension " + repr(d) + " overflows int64");
    if (d.ival < 0) throw npy_error(what + ": negative dimension " + std::to_string(d.ival) + " in shape " + repr(shape));
    a.shape.push_back(d.ival);
  }
}

/// Bytes of data the parsed header asks for; NpyError if the count overflows.
inline std::size_t data_bytes(const NpyArray& a, const std::string& descr, const std::string& what) {
  const std::string shape_s = shape_repr(a.shape);
  std::int64_t count = 0, nbytes = 0;
  const std::int64_t isz = static_cast<std::int64_t>(dtype_size(a.dtype));
  if (!shape_product(a.shape, count)) throw npy_error(what + ": shape " + shape_s + ": element count overflows int64");
  if (!mul_nonneg(count, isz, nbytes) ||
      static_cast<std::uint64_t>(nbytes) > static_cast<std::uint64_t>(std::numeric_limits<std::size_t>::max()))
    throw npy_error(what + ": shape " + shape_s + " of " + descr + ": byte size overflows");
  return static_cast<std::size_t>(nbytes);
}

/// The data must be exactly the shape's size: no truncation, no trailing bytes.
inline void check_data_size(std::uint64_t have, std::size_t need, const NpyArray& a, const std::string& descr,
                            const std::string& what) {
  if (have != need)
    throw npy_error(what + ": " + (have < need ? "truncated data" : "trailing data") + ": file holds " + std::to_string(have) +
                    " bytes of data, shape " + shape_repr(a.shape) + " of " + descr + " needs " + std::to_string(need));
}

/// The data bytes (checked by check_data_size), in host (little) order.
inline void take_data(const std::uint8_t* p, std::size_t need, bool big_endian, NpyArray& a) {
  a.bytes.assign(p, p + need);
  const std::size_t isz = dtype_size(a.dtype);
  if (big_endian && isz > 1)
    for (std::size_t k = 0; k < need; k += isz)
      for (std::size_t i = 0, j = isz - 1; i < j; ++i, --j) std::swap(a.bytes[k + i], a.bytes[k + j]);
}

/// What the header says: the array without its data, where the data starts and how many bytes it takes.
struct ParsedHeader {
  NpyArray array;  ///< dtype, shape, order; no bytes
  bool big_endian = false;
  std::string descr;
  std::size_t data_offset = 0, data_bytes = 0;
};

/// Parses the preamble and header dict of an image of `total` bytes whose first n bytes are in data
/// (n >= the header's end, which parse_preamble gives).
inline ParsedHeader parse_header(const std::uint8_t* data, std::size_t prefix, std::size_t hn, const std::string& what) {
  const PyValue top = PyLiteralParser(reinterpret_cast<const char*>(data + prefix), hn, what).parse_all();
  const HeaderKeys h = header_keys(top, what);
  ParsedHeader ph;
  parse_dtype_and_order(h, ph.array, ph.big_endian, what);
  parse_shape(*h.shape, ph.array, what);
  ph.descr = h.descr->text;
  ph.data_offset = prefix + hn;
  ph.data_bytes = data_bytes(ph.array, ph.descr, what);
  return ph;
}

/// Reads the preamble and header of an open file and checks the data size it claims against the file's.
inline ParsedHeader read_header(InputFile& in, std::vector<std::uint8_t>& buf, const std::string& what) {
  const std::uint64_t size = in.size();
  buf.resize(static_cast<std::size_t>(std::min<std::uint64_t>(size, 12)));
  in.read_exact(buf.data(), buf.size());
  const auto pre = parse_preamble(buf.data(), buf.size(), what, static_cast<std::size_t>(std::min<std::uint64_t>(
                                                                     size, std::numeric_limits<std::size_t>::max())));
  const std::size_t end = pre.first + pre.second;  // <= size: parse_preamble checked it
  const std::size_t have = buf.size();
  buf.resize(end);
  if (end > have) in.read_exact(buf.data() + have, end - have);
  ParsedHeader ph = parse_header(buf.data(), pre.first, pre.second, what);
  check_data_size(size - end, ph.data_bytes, ph.array, ph.descr, what);
  return ph;
}

}  // namespace detail

// Parses a .npy image of n bytes; `what` names it in messages. Throws NpyError on anything malformed.
inline NpyArray parse_npy(const std::uint8_t* data, std::size_t n, const std::string& what = "<memory>") {
  const auto [prefix, hn] = detail::parse_preamble(data, n, what, n);
  detail::ParsedHeader h = detail::parse_header(data, prefix, hn, what);
  detail::check_data_size(n - h.data_offset, h.data_bytes, h.array, h.descr, what);
  detail::take_data(data + h.data_offset, h.data_bytes, h.big_endian, h.array);
  return std::move(h.array);
}

// The header of a .npy image of n bytes (dtype, shape, order; no bytes copied), with every check parse_npy
// makes except the data's content (its size must be the header's).
inline NpyArray parse_npy_header(const std::uint8_t* data, std::size_t n, const std::string& what = "<memory>") {
  const auto [prefix, hn] = detail::parse_preamble(data, n, what, n);
  detail::ParsedHeader h = detail::parse_header(data, prefix, hn, what);
  detail::check_data_size(n - h.data_offset, h.data_bytes, h.array, h.descr, what);
  return std::move(h.array);
}

// Reads and parses a whole file: regular files only (input_file.hpp), the data's size checked against the
// header before the data is read. A file that cannot be opened or read is an IoError; a path that is not a
// regular file, or a malformed file, an NpyError (a DataError).
inline NpyArray read_npy(const std::string& path) {
  std::vector<std::uint8_t> buf;
  InputFile in(path, "npy: ");
  detail::ParsedHeader h = detail::read_header(in, buf, path);
  buf.resize(h.data_bytes);
  in.read_exact(buf.data(), buf.size());
  detail::take_data(buf.data(), buf.size(), h.big_endian, h.array);
  return std::move(h.array);
}

// The header of a file alone (dtype, shape, order; no bytes), with every check read_npy makes except the
// data's content: what a caller needs to plan (shapes, memory) before reading any data.
inline NpyArray read_npy_header(const std::string& path) {
  std::vector<std::uint8_t> buf;
  InputFile in(path, "npy: ");
  return detail::read_header(in, buf, path).array;
}

// The array as a rows x cols matrix (0-d: 1 x 1, 1-d: n x 1) of Scalar; `what` names the array in messages
// (a path, say). Throws NpyError for more than 2 dimensions, bytes that do not match the shape, or an element
// Scalar cannot represent (an integer out of range, NaN into an integer).
template <typename Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> to_matrix(const NpyArray& a,
                                                                const std::string& what = "to_matrix") {
  static_assert(std::is_arithmetic<Scalar>::value && !std::is_same<Scalar, bool>::value,
                "to_matrix: Scalar must be a floating-point or integer type");
  if (a.shape.size() > 2)
    throw detail::npy_error(what + ": expected a 0-, 1- or 2-d array, got shape " + detail::shape_repr(a.shape));
  const std::int64_t count = a.size();
  const std::size_t isz = dtype_size(a.dtype);
  if (isz == 0) throw detail::npy_error(what + ": invalid dtype");
  if (static_cast<std::uint64_t>(count) > static_cast<std::uint64_t>(a.bytes.size() / isz) ||
      a.bytes.size() != static_cast<std::size_t>(count) * isz)
    throw detail::npy_error(what + ": " + std::to_string(a.bytes.size()) + " bytes of data do not match shape " +
                            detail::shape_repr(a.shape) + " of " + dtype_descr(a.dtype));
  const std::int64_t r = a.shape.size() >= 1 ? a.shape[0] : 1;
  const std::int64_t c = a.shape.size() == 2 ? a.shape[1] : 1;
  if (r > std::numeric_limits<Eigen::Index>::max() || c > std::numeric_limits<Eigen::Index>::max())
    throw detail::npy_error(what + ": shape " + detail::shape_repr(a.shape) + " exceeds Eigen::Index");
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> m(static_cast<Eigen::Index>(r),
                                                          static_cast<Eigen::Index>(c));
  const bool c_order = a.shape.size() == 2 && !a.fortran_order;
  switch (a.dtype) {
    case DType::f32: detail::fill_matrix<Scalar, float>(a, m, c_order, what); break;
    case DType::f64: detail::fill_matrix<Scalar, double>(a, m, c_order, what); break;
    case DType::i8: detail::fill_matrix<Scalar, std::int8_t>(a, m, c_order, what); break;
    case DType::u8: detail::fill_matrix<Scalar, std::uint8_t>(a, m, c_order, what); break;
    case DType::i16: detail::fill_matrix<Scalar, std::int16_t>(a, m, c_order, what); break;
    case DType::u16: detail::fill_matrix<Scalar, std::uint16_t>(a, m, c_order, what); break;
    case DType::i32: detail::fill_matrix<Scalar, std::int32_t>(a, m, c_order, what); break;
    case DType::u32: detail::fill_matrix<Scalar, std::uint32_t>(a, m, c_order, what); break;
    case DType::i64: detail::fill_matrix<Scalar, std::int64_t>(a, m, c_order, what); break;
    case DType::u64: detail::fill_matrix<Scalar, std::uint64_t>(a, m, c_order, what); break;
    case DType::f16: detail::fill_matrix<Scalar, detail::Half>(a, m, c_order, what); break;
  }
  return m;
}

// read_npy then to_matrix; every message names the file.
template <typename Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> read_npy_matrix(const std::string& path) {
  return to_matrix<Scalar>(read_npy(path), path);
}

// ---------------------------------------------------------------------------------------------------------
// Writing: float '<f4', double '<f8', integers by width and signedness ('<i4', '<i8', '|u1', ...).
// write_* replace the file atomically (AtomicFile): a failure is an IoError and leaves no partial file.

// 2-d array, rows x cols, C order.
template <typename Derived>
std::vector<std::uint8_t> serialize_npy(const Eigen::DenseBase<Derived>& m) {
  return detail::serialize_npy_impl(m, {static_cast<std::int64_t>(m.rows()), static_cast<std::int64_t>(m.cols())});
}

// 1-d array of length v.size(); v must be a row or column vector.
template <typename Derived>
std::vector<std::uint8_t> serialize_npy_vector(const Eigen::DenseBase<Derived>& v) {
  if (v.rows() != 1 && v.cols() != 1)  // the caller's mistake, not the data's
    throw UsageError("npy: serialize_npy_vector: expected a vector, got a " + std::to_string(v.rows()) + "x" +
                     std::to_string(v.cols()) + " matrix");
  return detail::serialize_npy_impl(v, {static_cast<std::int64_t>(v.size())});
}

// Any NpyArray (its bytes are little-endian by definition), e.g. one returned by parse_npy.
inline std::vector<std::uint8_t> serialize_npy(const NpyArray& a) {
  const std::int64_t count = a.size();
  const std::size_t isz = dtype_size(a.dtype);
  if (isz == 0 || static_cast<std::uint64_t>(count) > static_cast<std::uint64_t>(a.bytes.size() / isz) ||
      a.bytes.size() != static_cast<std::size_t>(count) * isz)
    throw detail::npy_error("serialize_npy: " + std::to_string(a.bytes.size()) + " bytes of data do not match shape " +
                   detail::shape_repr(a.shape) + " of " + dtype_descr(a.dtype));
  std::vector<std::uint8_t> out = detail::npy_preamble(a.dtype, a.fortran_order, a.shape);
  out.insert(out.end(), a.bytes.begin(), a.bytes.end());
  return out;
}

template <typename Derived>
void write_npy(const std::string& path, const Eigen::DenseBase<Derived>& m) {
  const std::vector<std::uint8_t> b = serialize_npy(m);
  write_file_atomic(path, b.data(), b.size());
}

template <typename Derived>
void write_npy_vector(const std::string& path, const Eigen::DenseBase<Derived>& v) {
  const std::vector<std::uint8_t> b = serialize_npy_vector(v);
  write_file_atomic(path, b.data(), b.size());
}

inline void write_npy(const std::string& path, const NpyArray& a) {
  const std::vector<std::uint8_t> b = serialize_npy(a);
  write_file_atomic(path, b.data(), b.size());
}

}  // namespace io
}  // namespace pptq
