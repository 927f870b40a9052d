#pragma once
// GGUF version 3: read, write, and validate (docs/formats.md §2).
//
// A File is ordered metadata (key -> typed Value, insertion order kept) plus ordered tensors (name, shape
// ne with ne[0] the contiguous dimension, ggml type, bytes). The reader checks everything it reads against
// the buffer's bounds; it never reads outside the buffer and never allocates more than the input can
// describe. The writer recomputes the tensor offsets (data in tensor order, each tensor aligned, zero
// padding, the last one padded too, as llama.cpp's writer does), so read -> serialize reproduces a
// llama.cpp-written file byte for byte. For models larger than memory, Reader parses the header and reads
// one tensor at a time, and StreamWriter writes the header and then one tensor at a time: a program
// holds one tensor, not the model.
//
// Errors (pptq/error.hpp), every message starting with "gguf: ": a malformed file, or a value whose type is
// not the one asked for, is a DataError; a File or Value built wrongly by the caller (duplicate names, data
// of the wrong size, a missing metadata key asked for with at()) is a UsageError; a file that cannot be
// opened or read, or written (AtomicFile), is an IoError.
//
// Depends on the standard library, ggml/blocks.hpp (tensor types), atomic_file.hpp (POSIX) and error.hpp.

#include "atomic_file.hpp"
#include "input_file.hpp"
#include "printable.hpp"
#include "../error.hpp"
#include "../ggml/blocks.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace pptq::gguf {

/// Metadata value types; the numbering is GGUF's (docs/formats.md §2).
enum class ValueType : std::uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12
};

inline const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "unknown";
}

class Value;

namespace detail {
// An array, stored compactly: a file's array costs memory in proportion to its bytes on disk, not a Value
// per element (a 20M-element u8 array is 20 MB here, not a gigabyte of Values).
struct ArrayData {
  ValueType elem = ValueType::U8;
  std::uint64_t count = 0;
  std::vector<std::uint8_t> raw;    // scalar elements: count × fixed_size(elem) bytes, little-endian as on disk
  std::vector<std::uint64_t> ends;  // strings: the end of each in `chars`
  std::string chars;                // strings: all of them, concatenated
  friend bool operator==(const ArrayData& a, const ArrayData& b) {
    return a.elem == b.elem && a.count == b.count && a.raw == b.raw && a.ends == b.ends && a.chars == b.chars;
  }
};

// The alternatives in GGUF type-id order: variant index == ValueType id.
using Storage = std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t, std::uint32_t, std::int32_t,
                             float, bool, std::string, ArrayData, std::uint64_t, std::int64_t, double>;

template <class T, class V>
struct index_of;
template <class T, class... Ts>
struct index_of<T, std::variant<Ts...>> {
  static constexpr std::size_t value = [] {
    constexpr bool match[] = {std::is_same_v<T, Ts>...};
    for (std::size_t i = 0; i < sizeof...(Ts); ++i)
      if (match[i]) return i;
    return sizeof...(Ts);
  }();
};

// Scalar C++ types that map one-to-one onto a GGUF value type.
template <class T>
inline constexpr bool is_scalar_v =
    std::is_same_v<T, std::uint8_t> || std::is_same_v<T, std::int8_t> || std::is_same_v<T, std::uint16_t> ||
    std::is_same_v<T, std::int16_t> || std::is_same_v<T, std::uint32_t> || std::is_same_v<T, std::int32_t> ||
    std::is_same_v<T, float> || std::is_same_v<T, bool> || std::is_same_v<T, std::uint64_t> ||
    std::is_same_v<T, std::int64_t> || std::is_same_v<T, double>;

template <class T>
constexpr ValueType value_type_of() {
  return static_cast<ValueType>(index_of<T, Storage>::value);
}

// Bytes of one scalar of the type on disk, or 0 for string/array (variable).
inline std::size_t fixed_size(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::BOOL: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
    default: return 0;
  }
}
inline bool is_known_value_type(std::uint32_t id) { return id <= 12; }

inline std::uint64_t load_le(const std::uint8_t* p, std::size_t k) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < k; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
inline void store_le(std::uint64_t v, std::size_t k, std::vector<std::uint8_t>& out) {
  for (std::size_t i = 0; i < k; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
}  // namespace detail

/// One metadata value with its exact GGUF type. Scalars are constructed from exactly the matching C++ type
/// (Value(std::uint8_t(7)) is a u8, Value(7) an i32, Value(7.0f) an f32, Value(true) a bool, Value("x") a
/// string); arrays with Value::array(elem_type, items) or Value::array_of(std::vector<T>). Arrays of arrays
/// are not supported (llama.cpp does not read them either). An array is stored compactly (its elements'
/// bytes, not a Value each): arr() and item() build Values on demand.
class Value {
 public:
  using Array = std::vector<Value>;

  Value() = default;  // u8 0
  template <class T, std::enable_if_t<detail::is_scalar_v<T>, int> = 0>
  Value(T x) : v_(std::in_place_type<T>, x) {}  // NOLINT: implicit on purpose, exact types only
  Value(std::string s) : v_(std::in_place_type<std::string>, std::move(s)) {}  // NOLINT
  Value(const char* s) : v_(std::in_place_type<std::string>, s) {}             // NOLINT

  /// An array of `elem` values; throws UsageError if an item has another type or elem is ARRAY.
  static Value array(ValueType elem, const Array& items) {
    if (elem == ValueType::ARRAY) throw UsageError("gguf: arrays of arrays are not supported");
    if (!detail::is_known_value_type(static_cast<std::uint32_t>(elem)))
      throw UsageError("gguf: unknown array element type " + std::to_string(static_cast<std::uint32_t>(elem)));
    for (std::size_t i = 0; i < items.size(); ++i)
      if (items[i].type() != elem)
        throw UsageError(std::string("gguf: array of ") + value_type_name(elem) + ": item " + std::to_string(i) +
                         " is a " + value_type_name(items[i].type()));
    detail::ArrayData d;
    d.elem = elem;
    for (const Value& x : items) x.append_to(d);
    return Value(std::move(d));
  }
  /// An array from a vector of scalars or strings (the element type follows from T).
  template <class T>
  static Value array_of(const std::vector<T>& xs) {
    static_assert(detail::is_scalar_v<T> || std::is_same_v<T, std::string>, "array_of: T must be a GGUF scalar or std::string");
    detail::ArrayData d;
    d.elem = detail::value_type_of<T>();
    for (const auto& x : xs) Value(T(x)).append_to(d);
    return Value(std::move(d));
  }
  /// An array taken as it is (the reader builds these); its parts must agree with each other.
  static Value from_array_data(detail::ArrayData d) { return Value(std::move(d)); }

  ValueType type() const { return static_cast<ValueType>(v_.index()); }
  bool is_array() const { return type() == ValueType::ARRAY; }
  /// Element type of an array; throws DataError for a non-array (the file holds a scalar there).
  ValueType elem_type() const { return data().elem; }
  /// Number of elements of an array; DataError for a non-array.
  std::uint64_t array_size() const { return data().count; }
  /// Element i of an array (a Value built on demand); DataError for a non-array, UsageError if i is out of range.
  Value item(std::uint64_t i) const {
    const detail::ArrayData& d = data();
    if (i >= d.count) throw UsageError("gguf: array item " + std::to_string(i) + " of " + std::to_string(d.count));
    if (d.elem == ValueType::STRING) {
      const std::uint64_t b = i == 0 ? 0 : d.ends[i - 1];
      return Value(d.chars.substr(static_cast<std::size_t>(b), static_cast<std::size_t>(d.ends[i] - b)));
    }
    const std::size_t k = detail::fixed_size(d.elem);
    return scalar_from_le(d.elem, detail::load_le(d.raw.data() + i * k, k));
  }

  /// The value as exactly T (std::string for strings); DataError naming both types if it is not a T (the
  /// file holds another type). No numeric conversions: a u32 is not an i32.
  template <class T>
  const T& get() const {
    if (const T* p = std::get_if<T>(&v_)) return *p;
    throw DataError(std::string("gguf: value is a ") + value_type_name(type()) + ", not a " +
                    value_type_name(detail::value_type_of<T>()));
  }
  const std::string& str() const { return get<std::string>(); }
  /// An array's items as Values (built here: prefer to_vector, item or array_size on large arrays).
  Array arr() const {
    const detail::ArrayData& d = data();
    Array out;
    out.reserve(static_cast<std::size_t>(d.count));
    for (std::uint64_t i = 0; i < d.count; ++i) out.push_back(item(i));
    return out;
  }
  /// An array's items as a vector<T> (T the exact element type); DataError for another element type.
  template <class T>
  std::vector<T> to_vector() const {
    const detail::ArrayData& d = data();
    if (d.elem != detail::value_type_of<T>())
      throw DataError(std::string("gguf: array of ") + value_type_name(d.elem) + ", not of " +
                      value_type_name(detail::value_type_of<T>()));
    std::vector<T> out;
    out.reserve(static_cast<std::size_t>(d.count));
    for (std::uint64_t i = 0; i < d.count; ++i) out.push_back(item(i).get<T>());
    return out;
  }

  /// The scalar's bits as GGUF stores them, little-endian in the low fixed_size(type()) bytes.
  std::uint64_t scalar_bits() const {
    switch (type()) {
      case ValueType::U8: return get<std::uint8_t>();
      case ValueType::I8: return static_cast<std::uint8_t>(get<std::int8_t>());
      case ValueType::U16: return get<std::uint16_t>();
      case ValueType::I16: return static_cast<std::uint16_t>(get<std::int16_t>());
      case ValueType::U32: return get<std::uint32_t>();
      case ValueType::I32: return static_cast<std::uint32_t>(get<std::int32_t>());
      case ValueType::F32: return ggml::float_bits(get<float>());
      case ValueType::BOOL: return get<bool>() ? 1 : 0;
      case ValueType::U64: return get<std::uint64_t>();
      case ValueType::I64: return static_cast<std::uint64_t>(get<std::int64_t>());
      case ValueType::F64: {
        std::uint64_t u;
        std::memcpy(&u, &get<double>(), 8);
        return u;
      }
      default: throw UsageError(std::string("gguf: scalar_bits() of a ") + value_type_name(type()));
    }
  }
  /// The scalar of type t whose stored bits are u (t a fixed-size type; a bool is u != 0).
  static Value scalar_from_le(ValueType t, std::uint64_t u) {
    switch (t) {
      case ValueType::U8: return Value(static_cast<std::uint8_t>(u));
      case ValueType::I8: return Value(static_cast<std::int8_t>(static_cast<std::uint8_t>(u)));
      case ValueType::U16: return Value(static_cast<std::uint16_t>(u));
      case ValueType::I16: return Value(static_cast<std::int16_t>(static_cast<std::uint16_t>(u)));
      case ValueType::U32: return Value(static_cast<std::uint32_t>(u));
      case ValueType::I32: return Value(static_cast<std::int32_t>(static_cast<std::uint32_t>(u)));
      case ValueType::F32: return Value(ggml::bits_float(static_cast<std::uint32_t>(u)));
      case ValueType::BOOL: return Value(u != 0);
      case ValueType::U64: return Value(u);
      case ValueType::I64: return Value(static_cast<std::int64_t>(u));
      case ValueType::F64: {
        double d;
        std::memcpy(&d, &u, 8);
        return Value(d);
      }
      default: throw UsageError(std::string("gguf: scalar_from_le of a ") + value_type_name(t));
    }
  }

  /// Same type and same value; floats compare by bits (so NaNs round-trip equal, and 0 != -0).
  friend bool operator==(const Value& a, const Value& b) {
    if (a.type() != b.type()) return false;
    switch (a.type()) {
      case ValueType::F32:
      case ValueType::F64: return a.scalar_bits() == b.scalar_bits();
      default: return a.v_ == b.v_;
    }
  }
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

 private:
  explicit Value(detail::ArrayData d) : v_(std::in_place_type<detail::ArrayData>, std::move(d)) {}

  const detail::ArrayData& data() const {
    if (const auto* p = std::get_if<detail::ArrayData>(&v_)) return *p;
    throw DataError(std::string("gguf: value is a ") + value_type_name(type()) + ", not an array");
  }
  /// Appends this value (of d.elem's type) to d.
  void append_to(detail::ArrayData& d) const {
    if (d.elem == ValueType::STRING) {
      d.chars += str();
      d.ends.push_back(d.chars.size());
    } else {
      detail::store_le(scalar_bits(), detail::fixed_size(d.elem), d.raw);
    }
    ++d.count;
  }

  detail::Storage v_;
};

/// A human-readable rendering (for tools and messages): 7, 0.1, "text", [1, 2, 3].
inline std::string to_string(const Value& v) {
  std::ostringstream os;
  os.precision(17);
  switch (v.type()) {
    case ValueType::U8: os << static_cast<unsigned>(v.get<std::uint8_t>()); break;
    case ValueType::I8: os << static_cast<int>(v.get<std::int8_t>()); break;
    case ValueType::U16: os << v.get<std::uint16_t>(); break;
    case ValueType::I16: os << v.get<std::int16_t>(); break;
    case ValueType::U32: os << v.get<std::uint32_t>(); break;
    case ValueType::I32: os << v.get<std::int32_t>(); break;
    case ValueType::F32: os.precision(9); os << v.get<float>(); break;
    case ValueType::BOOL: os << (v.get<bool>() ? "true" : "false"); break;
    case ValueType::STRING: os << '"' << v.str() << '"'; break;
    case ValueType::U64: os << v.get<std::uint64_t>(); break;
    case ValueType::I64: os << v.get<std::int64_t>(); break;
    case ValueType::F64: os << v.get<double>(); break;
    case ValueType::ARRAY: {
      os << '[';
      for (std::uint64_t i = 0; i < v.array_size(); ++i) os << (i ? ", " : "") << to_string(v.item(i));
      os << ']';
      break;
    }
  }
  return os.str();
}

namespace detail {
inline bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return true;
  out = a * b;
  return false;
}
}  // namespace detail

namespace detail {
// Bytes of a tensor of shape ne stored as `type`, or 0 with `err` saying why it has no valid size.
inline std::uint64_t tensor_nbytes(const std::vector<std::uint64_t>& ne, ggml::Type type, std::string& err) {
  if (ne.empty() || ne.size() > 4) {
    err = "n_dims " + std::to_string(ne.size()) + " is outside 1..4";
    return 0;
  }
  if (!ggml::is_known_type_id(static_cast<std::uint32_t>(type))) {
    err = "unknown tensor type " + std::to_string(static_cast<std::uint32_t>(type));
    return 0;
  }
  const auto bs = static_cast<std::uint64_t>(ggml::block_size(type));
  if (ne[0] % bs != 0) {
    err = "ne[0] = " + std::to_string(ne[0]) + " is not a multiple of the block size " + std::to_string(bs) + " of " +
          ggml::type_name(type);
    return 0;
  }
  constexpr std::uint64_t lim = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  // ggml keeps every ne in an int64: one at 2^63 or above is negative there, even when another ne is 0 and
  // the tensor would hold no bytes.
  for (std::size_t k = 0; k < ne.size(); ++k)
    if (ne[k] > lim) {
      err = "ne[" + std::to_string(k) + "] = " + std::to_string(ne[k]) + " does not fit in int64 (negative as ggml reads it)";
      return 0;
    }
  std::uint64_t bytes = 0;
  bool over = mul_overflows(ne[0] / bs, ggml::block_bytes(type), bytes) || bytes > lim;
  for (std::size_t k = 1; k < ne.size() && !over; ++k) over = mul_overflows(bytes, ne[k], bytes) || bytes > lim;
  // the element count must fit too (ggml keeps it in int64)
  std::uint64_t elems = 1;
  for (std::size_t k = 0; k < ne.size() && !over; ++k) over = mul_overflows(elems, ne[k], elems) || elems > lim;
  if (over) {
    err = "tensor size overflows (ne too large)";
    return 0;
  }
  return bytes;
}
}  // namespace detail

/// Bytes of a tensor of shape ne (ne[0] contiguous) stored as `type`: rows of blocks (docs/formats.md §2).
/// Throws UsageError if n_dims is not 1..4, ne[0] is not a multiple of the block size, or the size does not
/// fit in int64 (ggml's limit).
inline std::uint64_t tensor_nbytes(const std::vector<std::uint64_t>& ne, ggml::Type type) {
  std::string err;
  const std::uint64_t bytes = detail::tensor_nbytes(ne, type, err);
  if (!err.empty()) throw UsageError("gguf: " + err);
  return bytes;
}

namespace detail {
// The alignment that general.alignment (v, may be null) asks for; 32 if absent. On an invalid value returns
// 0 and sets err (docs/formats.md §2: a u32; ggml also requires a power of two).
inline std::uint32_t alignment_of(const Value* v, std::string& err) {
  if (!v) return 32;
  if (v->type() != ValueType::U32) {
    err = std::string("general.alignment must be a u32, not a ") + value_type_name(v->type());
    return 0;
  }
  const std::uint32_t a = v->get<std::uint32_t>();
  if (a == 0 || (a & (a - 1)) != 0) {
    err = "general.alignment " + std::to_string(a) + " is not a power of two";
    return 0;
  }
  return a;
}
}  // namespace detail

struct TensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;  ///< ne[0] is the contiguous dimension; a linear layer W (out × in) is [in, out]
  ggml::Type type = ggml::Type::F32;
  std::uint64_t offset = 0;        ///< from the start of the data section; set by read() and layout(), ignored by write
  std::vector<std::uint8_t> data;  ///< exactly tensor_nbytes(ne, type) bytes

  std::uint64_t n_elements() const {
    std::uint64_t n = 1;
    for (std::uint64_t x : ne) n *= x;
    return n;
  }
  std::uint64_t nbytes() const { return tensor_nbytes(ne, type); }

  friend bool operator==(const TensorInfo& a, const TensorInfo& b) {
    return a.name == b.name && a.ne == b.ne && a.type == b.type && a.offset == b.offset && a.data == b.data;
  }
  friend bool operator!=(const TensorInfo& a, const TensorInfo& b) { return !(a == b); }
};

/// A GGUF file in memory. Metadata and tensors keep their order (the writer emits them in this order).
struct File {
  std::vector<std::pair<std::string, Value>> metadata;
  std::vector<TensorInfo> tensors;

  const Value* find(const std::string& key) const {
    for (const auto& kv : metadata)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
  Value* find(const std::string& key) {
    for (auto& kv : metadata)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
  /// The value of `key`; UsageError naming the key if absent (find() is the query that may fail).
  const Value& at(const std::string& key) const {
    if (const Value* v = find(key)) return *v;
    throw UsageError("gguf: no metadata key " + io::detail::quoted(key));
  }
  /// Replaces the value of an existing key in place, or appends a new key at the end.
  void set(const std::string& key, Value v) {
    if (Value* p = find(key))
      *p = std::move(v);
    else
      metadata.emplace_back(key, std::move(v));
  }
  bool erase(const std::string& key) {
    for (auto it = metadata.begin(); it != metadata.end(); ++it)
      if (it->first == key) {
        metadata.erase(it);
        return true;
      }
    return false;
  }

  const TensorInfo* find_tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  TensorInfo* find_tensor(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  /// Appends a tensor; throws UsageError if the name is taken, the shape is invalid or data has the wrong size.
  TensorInfo& add_tensor(std::string name, std::vector<std::uint64_t> ne, ggml::Type type, std::vector<std::uint8_t> data) {
    if (find_tensor(name)) throw UsageError("gguf: duplicate tensor name " + io::detail::quoted(name));
    std::string err;
    const std::uint64_t want = detail::tensor_nbytes(ne, type, err);
    if (!err.empty()) throw UsageError("gguf: tensor " + io::detail::quoted(name) + ": " + err);
    if (data.size() != want)
      throw UsageError("gguf: tensor " + io::detail::quoted(name) + " has " + std::to_string(data.size()) + " bytes, expected " +
                       std::to_string(want));
    tensors.push_back(TensorInfo{std::move(name), std::move(ne), type, 0, std::move(data)});
    return tensors.back();
  }

  /// general.alignment (a u32, a power of two) or the default 32; UsageError if present but invalid (the
  /// reader refuses such a file, so only a caller's set() can put it there).
  std::uint32_t alignment() const {
    std::string err;
    const std::uint32_t a = detail::alignment_of(find("general.alignment"), err);
    if (!err.empty()) throw UsageError("gguf: " + err);
    return a;
  }

  friend bool operator==(const File& a, const File& b) { return a.metadata == b.metadata && a.tensors == b.tensors; }
  friend bool operator!=(const File& a, const File& b) { return !(a == b); }
};

// ----------------------------------------------------------------------------------------------------
// Reader
// ----------------------------------------------------------------------------------------------------

namespace detail {

using io::detail::quoted;

constexpr std::uint32_t kVersion = 3;
constexpr std::size_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, smallest value
constexpr std::size_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, n_dims, one ne, type, offset

// Bounds-checked little-endian cursor over the input; every failure is a DataError prefixed with
// "gguf: <what>: ".
/// Thrown by a Cursor over a prefix of a file when the header runs past the prefix (Reader reads more).
struct NeedMore {};

class Cursor {
 public:
  /// `total`: the size of the whole file when only its first n bytes are in memory (Reader), else n.
  Cursor(const std::uint8_t* p, std::size_t n, const std::string& what, std::uint64_t total)
      : p_(p), n_(n), total_(total), what_(what) {}
  Cursor(const std::uint8_t* p, std::size_t n, const std::string& what) : Cursor(p, n, what, n) {}

  [[noreturn]] void fail(const std::string& msg) const { throw DataError("gguf: " + what_ + ": " + msg); }

  std::size_t pos() const { return pos_; }
  std::size_t left() const { return n_ - pos_; }
  /// Over a prefix of the file (Reader): NeedMore when `fits_whole_file` (what failed against the prefix
  /// would hold against the whole file), so that only the whole file's verdict is ever a DataError.
  void more_if(bool fits_whole_file) const {
    if (fits_whole_file && n_ < total_) throw NeedMore{};
  }
  std::uint64_t total_left() const { return total_ - pos_; }
  const std::uint8_t* here() const { return p_ + pos_; }

  void need(std::size_t k, const std::string& ctx) const {
    if (left() < k && n_ < total_) throw NeedMore{};
    if (left() < k)
      fail("truncated file while reading " + ctx + " at byte " + std::to_string(pos_) + " (needs " + std::to_string(k) +
           " bytes, " + std::to_string(left()) + " left)");
  }
  std::uint64_t uint(std::size_t k, const std::string& ctx) {
    need(k, ctx);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < k; ++i) v |= static_cast<std::uint64_t>(p_[pos_ + i]) << (8 * i);
    pos_ += k;
    return v;
  }
  void skip(std::size_t k) { pos_ += k; }  // after need(k)
  /// A length read from the file must fit in what is left of it.
  void need_len(std::uint64_t len, const std::string& ctx) const {
    if (len > left() && len <= total_ - pos_) throw NeedMore{};
    if (len > left())
      fail("truncated file: " + ctx + " has length " + std::to_string(len) + ", beyond the end of the file (" +
           std::to_string(left()) + " bytes left at byte " + std::to_string(pos_) + ")");
  }
  std::uint32_t u32(const std::string& ctx) { return static_cast<std::uint32_t>(uint(4, ctx)); }
  std::uint64_t u64(const std::string& ctx) { return uint(8, ctx); }
  std::string str(const std::string& ctx) {
    const std::uint64_t len = u64("length of " + ctx);
    need_len(len, ctx);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<std::size_t>(len));
    pos_ += static_cast<std::size_t>(len);
    return s;
  }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
  std::uint64_t total_;
  std::size_t pos_ = 0;
  const std::string& what_;
};

inline Value read_scalar(Cursor& c, ValueType t, const std::string& ctx) {
  switch (t) {
    case ValueType::U8: return Value(static_cast<std::uint8_t>(c.uint(1, ctx)));
    case ValueType::I8: return Value(static_cast<std::int8_t>(static_cast<std::uint8_t>(c.uint(1, ctx))));
    case ValueType::U16: return Value(static_cast<std::uint16_t>(c.uint(2, ctx)));
    case ValueType::I16: return Value(static_cast<std::int16_t>(static_cast<std::uint16_t>(c.uint(2, ctx))));
    case ValueType::U32: return Value(static_cast<std::uint32_t>(c.uint(4, ctx)));
    case ValueType::I32: return Value(static_cast<std::int32_t>(static_cast<std::uint32_t>(c.uint(4, ctx))));
    case ValueType::F32: return Value(ggml::bits_float(static_cast<std::uint32_t>(c.uint(4, ctx))));
    case ValueType::BOOL: {
      const std::size_t at = c.pos();
      const auto b = c.uint(1, ctx);
      if (b > 1) c.fail("invalid bool value " + std::to_string(b) + " in " + ctx + " at byte " + std::to_string(at));
      return Value(b == 1);
    }
    case ValueType::STRING: return Value(c.str(ctx));
    case ValueType::U64: return Value(static_cast<std::uint64_t>(c.uint(8, ctx)));
    case ValueType::I64: return Value(static_cast<std::int64_t>(c.uint(8, ctx)));
    case ValueType::F64: {
      const std::uint64_t u = c.uint(8, ctx);
      double d;
      std::memcpy(&d, &u, 8);
      return Value(d);
    }
    case ValueType::ARRAY: break;
  }
  c.fail("internal: read_scalar of an array");
}

/// An array's elements: scalars as their bytes (bools checked to be 0 or 1), strings one after the other.
inline Value read_array(Cursor& c, ValueType elem, std::uint64_t count, const std::string& key) {
  ArrayData d;
  d.elem = elem;
  d.count = count;
  if (elem != ValueType::STRING) {
    const std::size_t n = static_cast<std::size_t>(count) * fixed_size(elem);  // <= left(): checked by the caller
    d.raw.assign(c.here(), c.here() + n);
    if (elem == ValueType::BOOL)
      for (std::size_t i = 0; i < n; ++i)
        if (d.raw[i] > 1)
          c.fail("invalid bool value " + std::to_string(d.raw[i]) + " in array item " + std::to_string(i) + " of key " +
                 quoted(key) + " at byte " + std::to_string(c.pos() + i));
    c.skip(n);
    return Value::from_array_data(std::move(d));
  }
  d.ends.reserve(static_cast<std::size_t>(count));  // <= left() / 8: checked by the caller
  for (std::uint64_t i = 0; i < count; ++i) {  // the messages are built only on failure: arrays can be long
    if (c.left() < 8) c.need(8, "length of array item " + std::to_string(i) + " of key " + quoted(key));
    const std::uint64_t len = load_le(c.here(), 8);
    c.skip(8);
    if (len > c.left()) c.need_len(len, "array item " + std::to_string(i) + " of key " + quoted(key));
    d.chars.append(reinterpret_cast<const char*>(c.here()), static_cast<std::size_t>(len));
    c.skip(static_cast<std::size_t>(len));
    d.ends.push_back(d.chars.size());
  }
  return Value::from_array_data(std::move(d));
}

inline Value read_value(Cursor& c, const std::string& key) {
  const std::string k = quoted(key);
  const std::string ctx = "value of key " + k;
  const std::size_t at = c.pos();
  const std::uint32_t t = c.u32("value type of key " + k);
  if (!is_known_value_type(t))
    c.fail("unknown value type " + std::to_string(t) + " for key " + k + " at byte " + std::to_string(at));
  if (static_cast<ValueType>(t) != ValueType::ARRAY) return read_scalar(c, static_cast<ValueType>(t), ctx);

  const std::size_t eat = c.pos();
  const std::uint32_t et = c.u32("array element type of key " + k);
  if (!is_known_value_type(et))
    c.fail("unknown array element type " + std::to_string(et) + " for key " + k + " at byte " + std::to_string(eat));
  const auto elem = static_cast<ValueType>(et);
  if (elem == ValueType::ARRAY) c.fail("nested arrays are not supported (key " + k + ")");
  const std::uint64_t count = c.u64("array length of key " + k);
  // Every element takes at least this many bytes (a string at least its 8-byte length): a count that
  // cannot fit is rejected before anything is allocated, and what is allocated is bounded by the bytes left.
  const std::size_t min_elem = elem == ValueType::STRING ? 8 : fixed_size(elem);
  if (count > c.left() / min_elem) c.more_if(count <= c.total_left() / min_elem);
  if (count > c.left() / min_elem)
    c.fail("truncated file: array of " + std::to_string(count) + " " + value_type_name(elem) + " for key " + k +
           " goes beyond the end of the file (" + std::to_string(c.left()) + " bytes left at byte " +
           std::to_string(c.pos()) + ")");
  return read_array(c, elem, count, key);
}

}  // namespace detail

namespace detail {

/// The header of a GGUF v3 file of `total` bytes whose first `size` bytes are `data`: metadata and tensor
/// infos (data left empty), every tensor's extent checked against `total`. Sets `data_start` (where the
/// data section begins). Throws NeedMore when the header runs past the prefix, DataError when malformed.
inline File parse_index(const std::uint8_t* data, std::size_t size, std::uint64_t total, const std::string& what,
                        std::uint64_t& data_start) {
  detail::Cursor c(data, size, what, total);
  File f;

  c.need(4, "magic");
  if (std::memcmp(c.here(), "GGUF", 4) != 0) c.fail("bad magic (not a GGUF file)");
  c.uint(4, "magic");
  const std::uint32_t version = c.u32("version");
  if (version != detail::kVersion)
    c.fail("unsupported GGUF version " + std::to_string(version) + " (only version 3 is supported)");
  const std::uint64_t n_tensors = c.u64("tensor count");
  const std::uint64_t n_kv = c.u64("metadata count");

  // Metadata (docs/formats.md §2: key string, u32 type, value)
  std::unordered_set<std::string> keys;
  // Counts come from the file: reserve no more than the remaining bytes could hold. Each entry consumes at
  // least kMinKvBytes, so the loop ends (at the latest with a truncation error) whatever the count says.
  f.metadata.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n_kv, c.left() / detail::kMinKvBytes)));
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::size_t at = c.pos();
    std::string key = c.str("key of metadata entry " + std::to_string(i));
    if (!keys.insert(key).second) c.fail("duplicate key " + detail::quoted(key) + " at byte " + std::to_string(at));
    Value v = detail::read_value(c, key);
    f.metadata.emplace_back(std::move(key), std::move(v));
  }
  std::string align_err;
  const std::uint32_t alignment = detail::alignment_of(f.find("general.alignment"), align_err);
  if (!align_err.empty()) c.fail(align_err);

  // Tensor infos (name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset)
  std::unordered_set<std::string> names;
  std::vector<std::uint64_t> sizes;
  const auto max_infos = static_cast<std::size_t>(std::min<std::uint64_t>(n_tensors, c.left() / detail::kMinTensorInfoBytes));
  f.tensors.reserve(max_infos);
  sizes.reserve(max_infos);
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    const std::string ctx = "tensor info " + std::to_string(i);
    TensorInfo t;
    t.name = c.str("name of " + ctx);
    if (!names.insert(t.name).second) c.fail("duplicate tensor name " + detail::quoted(t.name));
    const std::string tn = "tensor " + detail::quoted(t.name);
    const std::uint32_t n_dims = c.u32("n_dims of " + tn);
    if (n_dims == 0 || n_dims > 4) c.fail(tn + ": n_dims " + std::to_string(n_dims) + " is outside 1..4");
    t.ne.resize(n_dims);
    for (std::uint32_t k = 0; k < n_dims; ++k) t.ne[k] = c.u64("ne[" + std::to_string(k) + "] of " + tn);
    const std::uint32_t type = c.u32("type of " + tn);
    if (!ggml::is_known_type_id(type)) c.fail(tn + ": unknown or unsupported tensor type " + std::to_string(type));
    t.type = static_cast<ggml::Type>(type);
    t.offset = c.u64("offset of " + tn);
    std::string size_err;
    const std::uint64_t nb = detail::tensor_nbytes(t.ne, t.type, size_err);
    if (!size_err.empty()) c.fail(tn + ": " + size_err);
    if (t.offset % alignment != 0)
      c.fail(tn + ": offset " + std::to_string(t.offset) + " is not aligned to " + std::to_string(alignment));
    sizes.push_back(nb);
    f.tensors.push_back(std::move(t));
  }

  // Data section: starts at the next multiple of the alignment.
  const std::uint64_t pad = (alignment - c.pos() % alignment) % alignment;
  data_start = c.pos() + std::min<std::uint64_t>(pad, total - c.pos());
  const std::uint64_t avail = total - data_start;
  std::vector<std::size_t> order(f.tensors.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  // Each tensor's data must lie in the file together with its zero padding up to the alignment, as GGUF
  // writers (llama.cpp's included) always write it; ggml's own reader requires that too.
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    const TensorInfo& t = f.tensors[i];
    const std::uint64_t padded = sizes[i] + (alignment - sizes[i] % alignment) % alignment;  // no overflow: sizes < 2^63
    if (t.offset > avail || padded > avail - t.offset)
      c.fail("tensor " + detail::quoted(t.name) + ": data out of range (offset " + std::to_string(t.offset) + " + " +
             std::to_string(sizes[i]) + " bytes padded to " + std::to_string(padded) + ", but the data section holds " +
             std::to_string(avail) + " bytes): truncated file or bad offset");
  }
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return f.tensors[a].offset != f.tensors[b].offset ? f.tensors[a].offset < f.tensors[b].offset : sizes[a] < sizes[b];
  });
  for (std::size_t k = 1; k < order.size(); ++k) {
    const std::size_t a = order[k - 1], b = order[k];
    if (sizes[a] > 0 && sizes[b] > 0 && f.tensors[a].offset + sizes[a] > f.tensors[b].offset)
      c.fail("tensors " + detail::quoted(f.tensors[a].name) + " and " + detail::quoted(f.tensors[b].name) + " overlap");
  }
  return f;
}

}  // namespace detail

/// Parses a GGUF v3 image of `size` bytes; `what` names it in error messages (e.g. the path).
/// Throws DataError("gguf: <what>: <problem>") on anything malformed (docs/formats.md §2).
inline File parse(const std::uint8_t* data, std::size_t size, const std::string& what = "buffer") {
  std::uint64_t data_start = 0;
  File f = detail::parse_index(data, size, size, what, data_start);
  for (TensorInfo& t : f.tensors) {
    const std::uint8_t* p = data + data_start + t.offset;
    t.data.assign(p, p + t.nbytes());
  }
  return f;
}

/// Reads and parses a GGUF file (kept whole in memory while parsing): regular files only (input_file.hpp),
/// read to the size the file has. IoError if it cannot be opened or read, DataError if it is not a regular
/// file or is malformed.
inline File read(const std::string& path) {
  io::InputFile in(path, "gguf: ");
  if (in.size() > std::numeric_limits<std::size_t>::max())
    throw DataError("gguf: " + path + ": " + std::to_string(in.size()) + " bytes do not fit in memory");
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(in.size()));
  in.read_exact(buf.data(), buf.size());
  return parse(buf.data(), buf.size(), path);
}

/// A GGUF file opened for reading tensor by tensor: the header is parsed (and every tensor's extent checked
/// against the file's size) when it is opened, the data stays on disk until load() reads one tensor. A
/// program that handles one tensor at a time holds one tensor's bytes, never the model (docs/llama.md).
/// Errors as read(); a file that changes while it is read is a DataError.
class Reader {
 public:
  explicit Reader(const std::string& path) : in_(path, "gguf: "), path_(path) {
    // The header is read in a growing prefix: its size is known only once it is parsed, and a prefix that
    // is too short is found out by the cursor (NeedMore) without reading the data section.
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(in_.size(), std::uint64_t{1} << 20));
    std::vector<std::uint8_t> head;
    for (;;) {
      head.resize(n);
      in_.read_at(0, head.data(), n);
      try {
        index_ = detail::parse_index(head.data(), n, in_.size(), path_, data_start_);
        return;
      } catch (const detail::NeedMore&) {
        n = static_cast<std::size_t>(std::min<std::uint64_t>(in_.size(), 2 * static_cast<std::uint64_t>(n)));
      }
    }
  }

  /// The metadata and tensor infos; every tensor's data is empty (load() reads it).
  const File& index() const { return index_; }
  const std::string& path() const { return path_; }

  /// Tensor i's bytes, exactly index().tensors[i].nbytes() of them.
  std::vector<std::uint8_t> load(std::size_t i) {
    if (i >= index_.tensors.size())
      throw UsageError("gguf: " + path_ + ": no tensor " + std::to_string(i) + " (the file has " +
                       std::to_string(index_.tensors.size()) + ")");
    const TensorInfo& t = index_.tensors[i];
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(t.nbytes()));
    in_.read_at(data_start_ + t.offset, bytes.data(), bytes.size());
    return bytes;
  }

 private:
  io::InputFile in_;
  std::string path_;
  File index_;
  std::uint64_t data_start_ = 0;
};

// ----------------------------------------------------------------------------------------------------
// Writer
// ----------------------------------------------------------------------------------------------------

namespace detail {

inline std::uint64_t align_up(std::uint64_t x, std::uint64_t a) { return (x + a - 1) / a * a; }

struct Bytes {
  std::vector<std::uint8_t> b;
  void raw(const void* p, std::size_t n) {
    const auto* q = static_cast<const std::uint8_t*>(p);
    b.insert(b.end(), q, q + n);
  }
  void uint(std::uint64_t v, std::size_t k) {
    for (std::size_t i = 0; i < k; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void u32(std::uint32_t v) { uint(v, 4); }
  void u64(std::uint64_t v) { uint(v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void pad_to(std::uint64_t a) { b.resize(static_cast<std::size_t>(align_up(b.size(), a)), 0); }
};

inline void put_scalar(Bytes& o, const Value& v) {
  switch (v.type()) {
    case ValueType::U8: o.uint(v.get<std::uint8_t>(), 1); break;
    case ValueType::I8: o.uint(static_cast<std::uint8_t>(v.get<std::int8_t>()), 1); break;
    case ValueType::U16: o.uint(v.get<std::uint16_t>(), 2); break;
    case ValueType::I16: o.uint(static_cast<std::uint16_t>(v.get<std::int16_t>()), 2); break;
    case ValueType::U32: o.uint(v.get<std::uint32_t>(), 4); break;
    case ValueType::I32: o.uint(static_cast<std::uint32_t>(v.get<std::int32_t>()), 4); break;
    case ValueType::F32: o.uint(ggml::float_bits(v.get<float>()), 4); break;
    case ValueType::BOOL: o.uint(v.get<bool>() ? 1 : 0, 1); break;
    case ValueType::STRING: o.str(v.str()); break;
    case ValueType::U64: o.uint(v.get<std::uint64_t>(), 8); break;
    case ValueType::I64: o.uint(static_cast<std::uint64_t>(v.get<std::int64_t>()), 8); break;
    case ValueType::F64: {
      std::uint64_t u;
      std::memcpy(&u, &v.get<double>(), 8);
      o.uint(u, 8);
      break;
    }
    case ValueType::ARRAY: throw UsageError("gguf: arrays of arrays are not supported");
  }
}

inline void put_value(Bytes& o, const std::string& key, const Value& v) {
  o.u32(static_cast<std::uint32_t>(v.type()));
  if (!v.is_array()) return put_scalar(o, v);
  (void)key;
  const ValueType elem = v.elem_type();
  o.u32(static_cast<std::uint32_t>(elem));
  o.u64(v.array_size());
  if (elem != ValueType::STRING) {  // the elements' bytes, as stored
    const std::size_t k = fixed_size(elem);
    for (std::uint64_t i = 0; i < v.array_size(); ++i) o.uint(v.item(i).scalar_bits(), k);
    return;
  }
  for (std::uint64_t i = 0; i < v.array_size(); ++i) o.str(v.item(i).str());
}

// Validates f for writing (UsageError: the caller built it) and returns the header (everything before the
// data, padded to the alignment) and the data offsets. `with_data`: every tensor's data must be there
// (write, serialize); without, the sizes come from shapes and types alone (StreamWriter).
inline Bytes header(const File& f, std::vector<std::uint64_t>& offsets, bool with_data = true) {
  const std::uint32_t alignment = f.alignment();
  std::unordered_set<std::string> keys, names;
  for (const auto& kv : f.metadata)
    if (!keys.insert(kv.first).second) throw UsageError("gguf: duplicate key " + quoted(kv.first));
  offsets.clear();
  std::uint64_t off = 0;
  for (const TensorInfo& t : f.tensors) {
    if (!names.insert(t.name).second) throw UsageError("gguf: duplicate tensor name " + quoted(t.name));
    std::string err;
    const std::uint64_t nb = tensor_nbytes(t.ne, t.type, err);
    if (!err.empty()) throw UsageError("gguf: tensor " + quoted(t.name) + ": " + err);
    if (with_data && t.data.size() != nb)
      throw UsageError("gguf: tensor " + quoted(t.name) + " has " + std::to_string(t.data.size()) +
                       " bytes of data, its shape and type need " + std::to_string(nb));
    offsets.push_back(off);
    off = align_up(off + nb, alignment);
  }

  Bytes o;
  o.raw("GGUF", 4);
  o.u32(kVersion);
  o.u64(f.tensors.size());
  o.u64(f.metadata.size());
  for (const auto& kv : f.metadata) {
    o.str(kv.first);
    put_value(o, kv.first, kv.second);
  }
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    const TensorInfo& t = f.tensors[i];
    o.str(t.name);
    o.u32(static_cast<std::uint32_t>(t.ne.size()));
    for (std::uint64_t x : t.ne) o.u64(x);
    o.u32(static_cast<std::uint32_t>(t.type));
    o.u64(offsets[i]);
  }
  o.pad_to(alignment);
  return o;
}

}  // namespace detail

/// Sets every tensor's offset to where write()/serialize() put its data (tensor order, each aligned).
/// Throws UsageError like serialize() on an invalid File.
inline void layout(File& f) {
  std::vector<std::uint64_t> offsets;
  detail::header(f, offsets);
  for (std::size_t i = 0; i < f.tensors.size(); ++i) f.tensors[i].offset = offsets[i];
}

/// The file's bytes (docs/formats.md §2): header, metadata in order, tensor infos with recomputed offsets, zero
/// padding to the alignment, then each tensor's data followed by zero padding to the alignment.
/// Throws UsageError on an invalid File (duplicate keys or names, bad shape, wrong data size, bad
/// general.alignment, mixed-type arrays).
inline std::vector<std::uint8_t> serialize(const File& f) {
  std::vector<std::uint64_t> offsets;
  detail::Bytes o = detail::header(f, offsets);
  const std::uint32_t alignment = f.alignment();
  for (const TensorInfo& t : f.tensors) {
    o.raw(t.data.data(), t.data.size());
    o.pad_to(alignment);
  }
  return std::move(o.b);
}

/// Writes a GGUF file tensor by tensor: the header of `index` (metadata, tensor infos; the tensors' data is
/// not looked at, their sizes follow from shape and type) when constructed, then each tensor's bytes in
/// the index's order through write(), then finish(). What it writes is byte for byte what write_to()
/// writes for the same file. UsageError on an invalid index (before anything is written), on bytes of the
/// wrong size and on finish() before the last tensor; IoError if the file system fails.
class StreamWriter {
 public:
  StreamWriter(const File& index, io::AtomicFile& out) : out_(out), alignment_(index.alignment()) {
    std::vector<std::uint64_t> offsets;
    const detail::Bytes head = detail::header(index, offsets, false);
    for (const TensorInfo& t : index.tensors) sizes_.push_back(t.nbytes()), names_.push_back(t.name);
    out_.write(head.b.data(), head.b.size());
  }

  /// The number of tensors written so far (the index of the next one).
  std::size_t written() const { return next_; }

  /// The next tensor's bytes.
  void write(const std::uint8_t* p, std::size_t n) {
    if (next_ >= sizes_.size())
      throw UsageError("gguf: all " + std::to_string(sizes_.size()) + " tensors are written already");
    if (n != sizes_[next_])
      throw UsageError("gguf: tensor " + detail::quoted(names_[next_]) + " gets " + std::to_string(n) +
                       " bytes, its shape and type need " + std::to_string(sizes_[next_]));
    out_.write(p, n);
    static constexpr std::uint8_t zeros[256] = {};
    std::size_t pad = static_cast<std::size_t>(detail::align_up(n, alignment_) - n);
    while (pad > 0) {
      const std::size_t k = std::min(pad, sizeof zeros);
      out_.write(zeros, k);
      pad -= k;
    }
    ++next_;
  }
  void write(const std::vector<std::uint8_t>& bytes) { write(bytes.data(), bytes.size()); }

  /// Checks that every tensor was written (the caller then commits the AtomicFile).
  void finish() const {
    if (next_ != sizes_.size())
      throw UsageError("gguf: " + std::to_string(next_) + " of " + std::to_string(sizes_.size()) +
                       " tensors written: the file is not complete");
  }

 private:
  io::AtomicFile& out_;
  std::uint32_t alignment_;
  std::vector<std::uint64_t> sizes_;
  std::vector<std::string> names_;
  std::size_t next_ = 0;
};

/// Writes f into `out` (an open AtomicFile, not committed: the caller commits it, alone or with others in
/// an io::OutputGroup). Tensor data is streamed, not copied. UsageError on an invalid File (checked before
/// anything is written), IoError if the file system fails.
inline void write_to(const File& f, io::AtomicFile& out) {
  std::vector<std::uint64_t> offsets;
  detail::header(f, offsets);  // validates the data sizes before anything touches the disk
  StreamWriter w(f, out);
  for (const TensorInfo& t : f.tensors) w.write(t.data);
  w.finish();
}

/// Writes f to `path` atomically (a temporary file in the same directory, renamed on success: nothing is
/// left behind on failure). UsageError on an invalid File (checked before anything touches the disk),
/// IoError if the file system fails.
inline void write(const File& f, const std::string& path) {
  std::vector<std::uint64_t> offsets;
  detail::header(f, offsets);  // validates before the temporary is created
  io::AtomicFile out(path);
  write_to(f, out);
  out.commit();
}

}  // namespace pptq::gguf
