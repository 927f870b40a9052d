#pragma once
// Gram files: the per-weight Gram matrices XᵀX that `pptq-gguf calibrate` collects from a GGUF model
// running on calibration text, stored as a GGUF file (docs/formats.md §2) so that one container format
// serves models and their calibration data.
//
// Format (version 1). One record per DISTINCT input: weights that read the same input (q, k and v read
// the attention norm's output; gate and up the FFN norm's) share one record, so the file holds each
// matrix once and names every weight that uses it.
//
//   metadata
//     general.type                 string  "pptq-grams"
//     pptq.grams.version           u32     1
//     pptq.grams.count             u32     N, the number of records
//     pptq.grams.<i>.weights       [string] the model tensors that read this input (non-empty)
//     pptq.grams.<i>.expert        i32     -1 for an ordinary (2-d) weight; e ≥ 0 for expert e of a 3-d
//                                          mixture-of-experts tensor: the Gram of the rows routed to e
//     pptq.grams.<i>.samples       u64     the number of rows (tokens) accumulated
//     pptq.grams.<i>.cols          u32     n, the input width
//     pptq.grams.<i>.input         string  the graph tensor the rows were read from (informative; optional)
//     pptq.calibration.*           any     how the data was collected (model, text, tokens, ...; optional)
//   tensors
//     pptq.grams.<i>.xtx           F32, 1-d, n(n+1)/2 elements: the lower triangle of the symmetric n × n
//                                  Gram, row by row: H(0,0), H(1,0), H(1,1), H(2,0), ... (half the bytes of
//                                  the full matrix; H(r, c) is at r(r+1)/2 + c for c ≤ r)
//     pptq.grams.<i>.cross         F32, 2-d [n, n], optional: the cross Gram G = X̃ᵀX of Qronos
//                                  (docs/theory.md §5.1), G(r, c) at r·n + c (ne[0] = n is the contiguous
//                                  dimension, as for every GGUF matrix). When present, xtx holds H̃ = X̃ᵀX̃,
//                                  the Gram of the quantized model's inputs.
//
// The Grams are plain sums over the rows (not means): λ then lives on the scale of H (docs/theory.md §1).
// Accumulation is in double; the file keeps float (7 significant digits, ample for a Hessian that OPTQ
// damps by a relative λ).
//
// API: GramRecord is one record; write_gram_file(path, records) or, record by record without keeping the
// matrices in memory, GramFileWriter; make_gram_file gives the GGUF image; read_gram_file(path) → GramFile,
// whose by_weight maps each weight (gram_key(weight, expert)) to its record: the Gram matrix (full,
// symmetric, double) and its sample count.
//
// Errors: a malformed file → pptq::DataError naming the problem; a file that cannot be opened or read →
// pptq::IoError; invalid records passed to the writer → pptq::UsageError.

#include "../common.hpp"
#include "../error.hpp"
#include "atomic_file.hpp"
#include "gguf.hpp"

#include <Eigen/Core>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace pptq::io {

/// One distinct input's Gram and the weights that read it.
struct GramRecord {
  std::vector<std::string> weights;  ///< model tensor names (non-empty)
  std::int32_t expert = -1;          ///< -1: the whole tensor; e ≥ 0: expert e of a 3-d expert tensor
  std::string input;                 ///< where the rows came from (informative)
  std::int64_t samples = 0;          ///< rows accumulated
  Eigen::MatrixXd H;                 ///< XᵀX (or X̃ᵀX̃ when cross is present), full symmetric n × n
  Eigen::MatrixXd cross;             ///< X̃ᵀX (n × n) or empty
};

/// The key under which read_gram_file indexes a weight: its tensor name, and "NAME#e" for expert e.
inline std::string gram_key(const std::string& weight, std::int32_t expert = -1) {
  return expert < 0 ? weight : weight + "#" + std::to_string(expert);
}

/// A Gram file in memory.
struct GramFile {
  std::vector<std::shared_ptr<const GramRecord>> grams;  ///< in file order
  /// gram_key(weight, expert) → its record: every weight of every record, each exactly once.
  std::map<std::string, std::shared_ptr<const GramRecord>> by_weight;
  /// The pptq.calibration.* metadata, in file order.
  std::vector<std::pair<std::string, gguf::Value>> calibration;

  /// The record for a weight; nullptr if the file has none.
  const GramRecord* find(const std::string& weight, std::int32_t expert = -1) const {
    const auto it = by_weight.find(gram_key(weight, expert));
    return it == by_weight.end() ? nullptr : it->second.get();
  }
  /// The record for a weight; pptq::DataError naming it if the file has none.
  const GramRecord& at(const std::string& weight, std::int32_t expert = -1) const {
    if (const GramRecord* r = find(weight, expert)) return *r;
    throw DataError("Gram file: no Gram for weight '" + gram_key(weight, expert) + "'");
  }
};

namespace detail {

constexpr const char* kGramType = "pptq-grams";
constexpr std::uint32_t kGramVersion = 1;

inline std::string gram_prefix(std::size_t i) { return "pptq.grams." + std::to_string(i); }

inline std::uint64_t tri_size(std::uint64_t n) { return n * (n + 1) / 2; }

inline std::vector<std::uint8_t> floats_to_bytes(const std::vector<float>& v) {
  std::vector<std::uint8_t> b(v.size() * sizeof(float));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());  // GGUF is little-endian, as the hosts ggml runs on
  return b;
}

inline void check_record(const GramRecord& r, std::size_t i) {
  const std::string who = "write_gram_file: record " + std::to_string(i);
  if (r.weights.empty()) pptq::detail::fail(who + " names no weight");
  if (r.expert < -1) pptq::detail::fail(who + ": expert " + std::to_string(r.expert) + " (must be -1 or an index)");
  if (r.samples < 0) pptq::detail::fail(who + ": negative sample count");
  if (r.H.rows() != r.H.cols() || r.H.rows() == 0)
    pptq::detail::fail(who + ": H is " + std::to_string(r.H.rows()) + " x " + std::to_string(r.H.cols()) + " (must be square, non-empty)");
  if (r.cross.size() != 0 && (r.cross.rows() != r.H.rows() || r.cross.cols() != r.H.cols()))
    pptq::detail::fail(who + ": cross is " + std::to_string(r.cross.rows()) + " x " + std::to_string(r.cross.cols()) +
                       ", H is " + std::to_string(r.H.rows()) + " x " + std::to_string(r.H.cols()));
  pptq::detail::require_finite(r.H, "Gram H");
  if (r.cross.size() != 0) pptq::detail::require_finite(r.cross, "cross Gram");
}

/// H's lower triangle, row by row (the file's xtx layout), rounded to float.
inline std::vector<std::uint8_t> pack_lower(const Eigen::MatrixXd& H) {
  const Index n = H.rows();
  std::vector<float> v;
  v.reserve(static_cast<std::size_t>(tri_size(static_cast<std::uint64_t>(n))));
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c <= r; ++c) v.push_back(static_cast<float>(H(r, c)));
  return floats_to_bytes(v);
}

/// A full n × n matrix with G(r, c) at r·n + c.
inline std::vector<std::uint8_t> pack_rows(const Eigen::MatrixXd& G) {
  const Index n = G.rows();
  std::vector<float> v;
  v.reserve(static_cast<std::size_t>(n * G.cols()));
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c < G.cols(); ++c) v.push_back(static_cast<float>(G(r, c)));
  return floats_to_bytes(v);
}

}  // namespace detail

/// The GGUF image of a Gram file (the format above). `calibration` holds pptq.calibration.* entries
/// (keys without the prefix are prefixed). Throws pptq::UsageError on an invalid record.
inline gguf::File make_gram_file(const std::vector<GramRecord>& records,
                                 const std::vector<std::pair<std::string, gguf::Value>>& calibration = {}) {
  gguf::File f;
  f.set("general.type", detail::kGramType);
  f.set("pptq.grams.version", detail::kGramVersion);
  f.set("pptq.grams.count", static_cast<std::uint32_t>(records.size()));
  for (const auto& kv : calibration) {
    const std::string key = kv.first.rfind("pptq.calibration.", 0) == 0 ? kv.first : "pptq.calibration." + kv.first;
    f.set(key, kv.second);
  }
  for (std::size_t i = 0; i < records.size(); ++i) {
    const GramRecord& r = records[i];
    detail::check_record(r, i);
    const std::string p = detail::gram_prefix(i);
    const auto n = static_cast<std::uint64_t>(r.H.rows());
    f.set(p + ".weights", gguf::Value::array_of(r.weights));
    f.set(p + ".expert", r.expert);
    f.set(p + ".samples", static_cast<std::uint64_t>(r.samples));
    f.set(p + ".cols", static_cast<std::uint32_t>(n));
    if (!r.input.empty()) f.set(p + ".input", r.input);
    f.add_tensor(p + ".xtx", {detail::tri_size(n)}, ggml::Type::F32, detail::pack_lower(r.H));
    if (r.cross.size() != 0) f.add_tensor(p + ".cross", {n, n}, ggml::Type::F32, detail::pack_rows(r.cross));
  }
  return f;
}

/// Writes a Gram file record by record without keeping the matrices in memory: each record's tensors go to
/// an anonymous spill file next to the output (removed by the system when the writer goes away), and
/// commit() writes the GGUF header followed by the spilled data, atomically. The file is byte for byte
/// what gguf::write(make_gram_file(records, calibration)) writes.
class GramFileWriter {
 public:
  explicit GramFileWriter(std::string path, const std::vector<std::pair<std::string, gguf::Value>>& calibration = {})
      : path_(std::move(path)), meta_(make_gram_file({}, calibration)) {
    std::string tmpl = io::detail::dir_of(path_) + "/." + io::detail::base_of(path_).substr(0, 200) + ".spill-XXXXXX";
    fd_ = ::mkstemp(tmpl.data());
    if (fd_ < 0) throw IoError("cannot create a spill file for '" + path_ + "': " + io::detail::errno_message(errno));
    ::unlink(tmpl.c_str());  // anonymous from now on: nothing is left behind, whatever happens
  }
  GramFileWriter(const GramFileWriter&) = delete;
  GramFileWriter& operator=(const GramFileWriter&) = delete;
  ~GramFileWriter() {
    if (fd_ >= 0) ::close(fd_);
  }

  /// Appends a record (pptq::UsageError if it is invalid, pptq::IoError if the spill cannot be written).
  void add(const GramRecord& r) {
    detail::check_record(r, count_);
    gguf::File one = make_gram_file({r});
    for (const auto& kv : one.metadata)
      if (kv.first.rfind("pptq.grams.0.", 0) == 0) meta_.set(detail::gram_prefix(count_) + kv.first.substr(12), kv.second);
    for (gguf::TensorInfo& t : one.tensors) {
      tensors_.push_back({detail::gram_prefix(count_) + t.name.substr(12), t.ne, spilled_});
      spill(t.data);
    }
    ++count_;
  }

  std::size_t size() const { return count_; }

  /// Writes the file (atomically: on failure nothing replaces path). pptq::IoError on failure.
  void commit() {
    meta_.set("pptq.grams.count", static_cast<std::uint32_t>(count_));
    const std::vector<std::uint8_t> head = header();
    try {
      io::AtomicFile out(path_);
      out.write(head.data(), head.size());
      if (::lseek(fd_, 0, SEEK_SET) != 0) throw std::runtime_error("cannot rewind the spill file");
      std::vector<char> buf(1 << 20);
      for (std::uint64_t left = spilled_; left > 0;) {
        const ::ssize_t got = ::read(fd_, buf.data(), static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size())));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) throw std::runtime_error("cannot read the spill file back");
        out.write(buf.data(), static_cast<std::size_t>(got));
        left -= static_cast<std::uint64_t>(got);
      }
      out.commit();
    } catch (const std::runtime_error& e) {
      throw IoError("cannot write the Gram file '" + path_ + "': " + e.what());
    }
  }

 private:
  struct Spilled {
    std::string name;
    std::vector<std::uint64_t> ne;
    std::uint64_t offset;
  };
  static constexpr std::uint64_t kAlign = 32;  // GGUF's default alignment: the file sets no general.alignment

  void spill(const std::vector<std::uint8_t>& bytes) {
    static constexpr std::uint8_t zeros[kAlign] = {};
    const auto pad = static_cast<std::size_t>(gguf::detail::align_up(bytes.size(), kAlign) - bytes.size());
    put(bytes.data(), bytes.size());
    put(zeros, pad);  // each tensor's data padded to the alignment, as GGUF lays them out
    spilled_ += bytes.size() + pad;
  }

  void put(const std::uint8_t* p, std::size_t n) {
    while (n > 0) {
      const ::ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw IoError("cannot write the spill file of '" + path_ + "': " + io::detail::errno_message(errno));
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  // GGUF's header (docs/formats.md §2): magic, version, counts, metadata, tensor infos, padding.
  std::vector<std::uint8_t> header() const {
    gguf::detail::Bytes o;
    o.raw("GGUF", 4);
    o.u32(gguf::detail::kVersion);
    o.u64(tensors_.size());
    o.u64(meta_.metadata.size());
    for (const auto& kv : meta_.metadata) {
      o.str(kv.first);
      gguf::detail::put_value(o, kv.first, kv.second);
    }
    for (const Spilled& t : tensors_) {
      o.str(t.name);
      o.u32(static_cast<std::uint32_t>(t.ne.size()));
      for (std::uint64_t x : t.ne) o.u64(x);
      o.u32(static_cast<std::uint32_t>(ggml::Type::F32));
      o.u64(t.offset);
    }
    o.pad_to(kAlign);
    return std::move(o.b);
  }

  std::string path_;
  gguf::File meta_;  // metadata only
  std::vector<Spilled> tensors_;
  std::uint64_t spilled_ = 0;
  std::size_t count_ = 0;
  int fd_ = -1;
};

/// Writes a Gram file atomically (nothing is left behind on failure). Throws pptq::UsageError on an
/// invalid record, pptq::IoError if the file cannot be written.
inline void write_gram_file(const std::string& path, const std::vector<GramRecord>& records,
                            const std::vector<std::pair<std::string, gguf::Value>>& calibration = {}) {
  for (std::size_t i = 0; i < records.size(); ++i) detail::check_record(records[i], i);  // before touching the disk
  GramFileWriter w(path, calibration);
  for (const GramRecord& r : records) w.add(r);
  w.commit();
}

namespace detail {

// Checks for the reader; every failure is a DataError naming the file.
class GramReader {
 public:
  GramReader(const gguf::File& f, const std::string& what) : f_(f), what_(what) {}

  [[noreturn]] void bad(const std::string& msg) const { throw DataError("Gram file '" + what_ + "': " + msg); }

  template <class T>
  const T& get(const std::string& key) const {
    const gguf::Value* v = f_.find(key);
    if (!v) bad("missing metadata key '" + key + "'");
    if (v->type() != gguf::detail::value_type_of<T>())
      bad("'" + key + "' is a " + gguf::value_type_name(v->type()) + ", not a " +
          gguf::value_type_name(gguf::detail::value_type_of<T>()));
    return v->get<T>();
  }

  const gguf::TensorInfo& tensor(const std::string& name, ggml::Type type, const std::vector<std::uint64_t>& ne) const {
    const gguf::TensorInfo* t = f_.find_tensor(name);
    if (!t) bad("missing tensor '" + name + "'");
    if (t->type != type) bad("tensor '" + name + "' is " + ggml::type_name(t->type) + ", not " + ggml::type_name(type));
    if (t->ne != ne) bad("tensor '" + name + "' has the wrong shape");
    return *t;
  }

  std::vector<float> floats(const gguf::TensorInfo& t) const {
    std::vector<float> v(t.data.size() / sizeof(float));
    if (!v.empty()) std::memcpy(v.data(), t.data.data(), v.size() * sizeof(float));
    for (std::size_t k = 0; k < v.size(); ++k)
      if (!std::isfinite(v[k])) bad("tensor '" + t.name + "' has a non-finite entry at " + std::to_string(k));
    return v;
  }

  void header() const {
    const std::string& type = get<std::string>("general.type");
    if (type != kGramType) bad("general.type is '" + type + "', not '" + kGramType + "' (not a Gram file)");
    const std::uint32_t version = get<std::uint32_t>("pptq.grams.version");
    if (version != kGramVersion) bad("unsupported version " + std::to_string(version) + " (this reader reads 1)");
  }

  GramRecord record(std::size_t i) const;

 private:
  const gguf::File& f_;
  const std::string& what_;
};

inline GramRecord GramReader::record(std::size_t i) const {
  const std::string p = gram_prefix(i);
  GramRecord r;
  const gguf::Value* w = f_.find(p + ".weights");
  if (!w) bad("missing metadata key '" + p + ".weights'");
  if (!w->is_array() || w->elem_type() != gguf::ValueType::STRING) bad("'" + p + ".weights' is not an array of strings");
  r.weights = w->to_vector<std::string>();
  if (r.weights.empty()) bad("'" + p + ".weights' is empty");
  r.expert = get<std::int32_t>(p + ".expert");
  if (r.expert < -1) bad("'" + p + ".expert' is " + std::to_string(r.expert));
  const std::uint64_t samples = get<std::uint64_t>(p + ".samples");
  if (samples > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) bad("'" + p + ".samples' is too large");
  r.samples = static_cast<std::int64_t>(samples);
  const std::uint32_t n = get<std::uint32_t>(p + ".cols");
  if (n == 0) bad("'" + p + ".cols' is 0");
  if (const gguf::Value* in = f_.find(p + ".input")) {
    if (in->type() != gguf::ValueType::STRING) bad("'" + p + ".input' is not a string");
    r.input = in->str();
  }
  const std::vector<float> tri = floats(tensor(p + ".xtx", ggml::Type::F32, {tri_size(n)}));
  r.H.resize(n, n);
  std::size_t k = 0;
  for (Index a = 0; a < n; ++a)
    for (Index c = 0; c <= a; ++c) r.H(a, c) = r.H(c, a) = tri[k++];
  for (Index a = 0; a < n; ++a)
    if (r.H(a, a) < 0) bad("'" + p + ".xtx' has a negative diagonal entry (" + std::to_string(r.H(a, a)) + ", not a Gram)");
  if (f_.find_tensor(p + ".cross")) {
    const std::vector<float> g = floats(tensor(p + ".cross", ggml::Type::F32, {n, n}));
    r.cross = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(g.data(), n, n).cast<double>();
  }
  return r;
}

/// Every tensor must belong to a record (a stray tensor means a different or damaged file).
inline void check_tensor_names(const gguf::File& f, std::size_t count, const GramReader& rd) {
  std::map<std::string, bool> known;
  for (std::size_t i = 0; i < count; ++i) {
    known[gram_prefix(i) + ".xtx"] = true;
    known[gram_prefix(i) + ".cross"] = true;
  }
  for (const gguf::TensorInfo& t : f.tensors)
    if (!known.count(t.name)) rd.bad("unexpected tensor '" + t.name + "'");
}

}  // namespace detail

/// Reads a Gram file from its GGUF image (`what` names it in messages).
inline GramFile read_gram_file(const gguf::File& f, const std::string& what) {
  const detail::GramReader rd(f, what);
  rd.header();
  const std::uint32_t count = rd.get<std::uint32_t>("pptq.grams.count");
  if (count > f.tensors.size()) rd.bad("pptq.grams.count is " + std::to_string(count) + " but the file has " +
                                       std::to_string(f.tensors.size()) + " tensors");
  detail::check_tensor_names(f, count, rd);
  GramFile out;
  for (std::size_t i = 0; i < count; ++i) {
    auto rec = std::make_shared<const GramRecord>(rd.record(i));
    for (const std::string& w : rec->weights)
      if (!out.by_weight.emplace(gram_key(w, rec->expert), rec).second)
        rd.bad("weight '" + gram_key(w, rec->expert) + "' has more than one Gram");
    out.grams.push_back(std::move(rec));
  }
  for (const auto& kv : f.metadata)
    if (kv.first.rfind("pptq.calibration.", 0) == 0) out.calibration.push_back(kv);
  return out;
}

/// Reads a Gram file: every weight's Gram, indexed by gram_key(weight, expert). pptq::IoError if the file
/// cannot be opened or read, pptq::DataError if it is not a valid Gram file.
inline GramFile read_gram_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open the Gram file '" + path + "'");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) throw IoError("cannot determine the size of the Gram file '" + path + "'");
  in.seekg(0, std::ios::beg);
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(end));
  if (!buf.empty() && !in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size())))
    throw IoError("error reading the Gram file '" + path + "'");
  gguf::File f;
  try {
    f = gguf::parse(buf.data(), buf.size(), path);
  } catch (const std::runtime_error& e) {
    throw DataError(std::string("Gram file: ") + e.what());
  }
  buf = {};
  return read_gram_file(f, path);
}

}  // namespace pptq::io
