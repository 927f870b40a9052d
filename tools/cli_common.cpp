// What the command-line tools share (cli_common.hpp): exit codes, the run loop, the .npy loaders.
#include "cli_common.hpp"

#include <pptq/io/atomic_file.hpp>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <sys/stat.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pptq_tools {

int exit_code(pptq::ErrorKind kind) {
  switch (kind) {
    case pptq::ErrorKind::Usage: return kExitUsage;
    case pptq::ErrorKind::Data: return kExitData;
    case pptq::ErrorKind::Numerical: return kExitNumerical;
    case pptq::ErrorKind::Io: return kExitIo;
  }
  return kExitIo;
}

Failure failure_of(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const pptq::Error& x) {
    const bool usage = x.kind() == pptq::ErrorKind::Usage;
    return {exit_code(x.kind()), std::string(x.what()) + (usage ? " (see --help)" : "")};
  } catch (const std::bad_alloc&) {
    return {kExitIo, "out of memory"};
  } catch (const std::exception& x) {
    return {kExitIo, std::string("internal error: ") + x.what()};
  } catch (...) {
    return {kExitIo, "internal error: an exception of unknown type"};
  }
}

namespace {

/// Length of the valid UTF-8 sequence at s[i] encoding a printable character (not a C1 control), or 0.
std::size_t printable_utf8(const std::string& s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1fu;
  else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0fu;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07u;
  else return 0;
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3fu);
  }
  const std::uint32_t min_cp = n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000;
  if (cp < min_cp || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;  // overlong, too large, surrogate
  if (cp <= 0x9f) return 0;                                                      // C1 controls
  return n;
}

}  // namespace

std::string terminal_safe(const std::string& s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    const std::size_t n = c >= 0x80 ? printable_utf8(s, i) : 0;
    if (n > 0) {
      out.append(s, i, n);
      i += n;
      continue;
    }
    out += "\\x";
    out += hex[c >> 4];
    out += hex[c & 15];
    ++i;
  }
  return out;
}

int report_failure(const char* prog, int code, const std::string& message) {
  std::string line = message;
  for (char& ch : line)
    if (ch == '\n' || ch == '\r') ch = ' ';
  // One write for the whole line: processes that fail together (the ranks of an MPI run) share stderr,
  // and a line written in pieces would interleave with theirs.
  const std::string out = std::string(prog) + ": " + terminal_safe(line) + "\n";
  std::fwrite(out.data(), 1, out.size(), stderr);
  std::fflush(stderr);
  return code;
}

void note(const char* prog, const std::string& line) {
  std::fprintf(stderr, "%s: %s\n", prog, terminal_safe(line).c_str());
  std::fflush(stderr);
}

// ------------------------------------------------------------------------------------------------
// Strict numeric options
// ------------------------------------------------------------------------------------------------

namespace {

[[noreturn]] void bad_number(const std::string& option, const std::string& text, const std::string& expected) {
  throw pptq::UsageError(option + " expects " + expected + ", got '" + terminal_safe(text) + "'");
}

}  // namespace

std::int64_t parse_int(const std::string& option, const std::string& text, std::int64_t lo, std::int64_t hi) {
  const std::string range = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  std::int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto r = std::from_chars(text.data(), end, v);
  if (text.empty() || r.ptr != end || r.ec == std::errc::invalid_argument) bad_number(option, text, range);
  if (r.ec == std::errc::result_out_of_range || v < lo || v > hi)
    throw pptq::UsageError(option + " must be " + range + ", got " + terminal_safe(text));
  return v;
}

std::uint64_t parse_u64(const std::string& option, const std::string& text) {
  const std::string what = "an integer in [0, " + std::to_string(std::numeric_limits<std::uint64_t>::max()) + "]";
  std::uint64_t v = 0;
  const char* end = text.data() + text.size();
  const auto r = std::from_chars(text.data(), end, v);
  if (text.empty() || text[0] == '-' || r.ptr != end || r.ec == std::errc::invalid_argument)
    bad_number(option, text, what);
  if (r.ec == std::errc::result_out_of_range) throw pptq::UsageError(option + " must be " + what + ", got " + terminal_safe(text));
  return v;
}

double parse_double(const std::string& option, const std::string& text) {
  const std::string what = "a finite number";
  // strtod accepts leading spaces, "inf", "nan" and hexadecimal: only digits, a sign, '.', 'e' pass here.
  const bool plain = !text.empty() && text.find_first_not_of("0123456789+-.eE") == std::string::npos;
  if (!plain) bad_number(option, text, what);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) bad_number(option, text, what);
  if (!std::isfinite(v) || (errno == ERANGE && std::abs(v) > 1))
    throw pptq::UsageError(option + " must be " + what + ", got " + terminal_safe(text) + " (out of range)");
  return v;
}

std::uint64_t parse_bytes(const std::string& option, const std::string& text) {
  const std::string what = "a byte count such as 4096, 512M or 8G";
  std::string digits = text;
  int shift = 0;
  if (!digits.empty()) {
    const char last = digits.back();
    const std::string units = "KMGT";
    const std::size_t u = units.find(static_cast<char>(last & ~0x20));  // K or k, M or m, ...
    if (u != std::string::npos) {
      shift = 10 * static_cast<int>(u + 1);
      digits.pop_back();
    }
  }
  if (digits.empty() || digits[0] == '-') bad_number(option, text, what);
  std::uint64_t v = 0;
  const char* end = digits.data() + digits.size();
  const auto r = std::from_chars(digits.data(), end, v);
  if (r.ptr != end || r.ec == std::errc::invalid_argument) bad_number(option, text, what);
  if (r.ec == std::errc::result_out_of_range || (shift > 0 && v > (std::numeric_limits<std::uint64_t>::max() >> shift)))
    throw pptq::UsageError(option + " must be " + what + " below 2^64 bytes, got " + terminal_safe(text));
  return v << shift;
}

// ------------------------------------------------------------------------------------------------
// Threads and memory
// ------------------------------------------------------------------------------------------------

int processor_count() {
#ifdef _OPENMP
  const int n = omp_get_num_procs();
#else
  const int n = static_cast<int>(std::thread::hardware_concurrency());
#endif
  return n > 0 ? n : 1;
}

void reuse_freed_memory() {
#if defined(__GLIBC__)
  // Blocks up to 1 GiB come from the heap (not a mapping of their own), and the heap's top is kept.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif
}

int cap_threads(const char* prog, int requested) {
  const int procs = processor_count();
  if (requested > procs) {
    note(prog, "note: --threads " + std::to_string(requested) + " is more than the " + std::to_string(procs) +
                   " processors available; using " + std::to_string(procs));
    requested = procs;
  }
#ifdef _OPENMP
  // The default reaches the library wherever no thread count is passed (the Gram's products among them):
  // lowered whatever --threads says.
  if (omp_get_max_threads() > procs) {
    if (requested == 0)
      note(prog, "note: OpenMP's default of " + std::to_string(omp_get_max_threads()) +
                     " threads (OMP_NUM_THREADS) is more than the " + std::to_string(procs) +
                     " processors available; using " + std::to_string(procs));
    omp_set_num_threads(procs);
  }
#endif
  return requested;
}

std::string bytes_str(double bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) bytes /= 1024, ++u;
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(u == 0 ? 0 : 1);
  os << bytes << " " << units[u];
  return os.str();
}

std::optional<std::uint64_t> memory_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kib * 1024;
  }
  return std::nullopt;
}

void check_memory(double estimate, const std::string& what, std::optional<std::uint64_t> max_memory) {
  if (max_memory && estimate > static_cast<double>(*max_memory))
    throw pptq::DataError(what + " needs about " + bytes_str(estimate) + " of memory, more than --max-memory " +
                          bytes_str(static_cast<double>(*max_memory)) + " allows");
  const std::optional<std::uint64_t> avail = memory_available();
  if (avail && estimate > static_cast<double>(*avail))
    throw pptq::DataError(what + " needs about " + bytes_str(estimate) + " of memory, more than the " +
                          bytes_str(static_cast<double>(*avail)) + " available (MemAvailable in /proc/meminfo)");
}

int run_tool(const char* prog, CLI::App& app, int argc, const char* const* argv, const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    return report_failure(prog, kExitUsage, std::string(e.what()) + " (see --help)");
  }
  try {
    return body();
  } catch (...) {
    const Failure f = failure_of(std::current_exception());
    return report_failure(prog, f.code, f.message);
  }
}

std::string without_library_prefix(const std::string& what) {
  static const std::string prefix = "pptq: ";
  return what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what;
}

std::string shape_str(std::int64_t rows, std::int64_t cols) { return std::to_string(rows) + " x " + std::to_string(cols); }

std::string dir_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void require_writable_file(const std::string& option, const std::string& path) {
  if (path.empty() || path.back() == '/') throw pptq::UsageError(option + " '" + path + "' does not name a file");
  const std::string target = pptq::io::detail::resolve_destination(path);  // a symbolic link is written through
  const std::string via = target == path ? "" : " (a link to '" + target + "')";
  struct stat st {};
  if (::stat(target.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw pptq::UsageError(option + " '" + path + "'" + via + " exists and is not a regular file: it cannot be replaced");
  const std::string d = dir_of(target);
  if (::access(d.c_str(), W_OK | X_OK) != 0)
    throw pptq::UsageError(option + " '" + path + "'" + via + ": directory '" + d + "' does not exist or is not writable");
}

void check_outputs(const std::vector<std::pair<std::string, std::string>>& outs) {
  std::vector<pptq::io::FileIdentity> ids;
  for (std::size_t i = 0; i < outs.size(); ++i) {
    require_writable_file(outs[i].first, outs[i].second);
    ids.push_back(pptq::io::file_identity(outs[i].second));
    for (std::size_t k = 0; k < i; ++k)
      if (ids[k] == ids[i])
        throw pptq::UsageError(outs[k].first + " '" + outs[k].second + "' and " + outs[i].first + " '" + outs[i].second +
                               "' name the same file");
  }
}

void test_signal_point(const char* point) {
  const char* env = std::getenv("PPTQ_TEST_SIGNAL_AT");
  if (env == nullptr || *env == '\0') return;
  const std::string spec = env;
  const std::size_t colon = spec.find(':');
  if (spec.substr(0, colon) != point) return;
  const std::string sig = colon == std::string::npos ? "TERM" : spec.substr(colon + 1);
  const int s = sig == "KILL" ? SIGKILL : sig == "INT" ? SIGINT : sig == "HUP" ? SIGHUP : SIGTERM;
  std::raise(s);
}

void commit_outputs(const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& files) {
  try {
    pptq::io::OutputGroup group;
    for (const auto& f : files) {
      group.add(f.first).write(f.second.data(), f.second.size());
      if (group.size() == 1) test_signal_point("after-first-temp");
    }
    group.commit([](std::size_t k) {
      if (k == 1) test_signal_point("between-renames");
    });
  } catch (const pptq::IoError& e) {
    throw pptq::IoError(std::string("cannot write the output: ") + e.what());
  }
}

std::string NpySource::label() const { return option.empty() ? path : path + " (" + option + ")"; }

namespace {

/// A pptq::Error of the npy reader as a DataError naming the option.
template <typename F>
pptq::io::NpyArray read_as_data(const NpySource& src, F&& read) {
  try {
    return read(src.path);  // its messages name the path
  } catch (const pptq::Error& e) {  // NpyError (malformed, not a regular file) or IoError (unreadable)
    throw pptq::DataError(src.option.empty() ? e.what() : src.option + ": " + e.what());
  }
}

}  // namespace

void check_float_2d(const pptq::io::NpyArray& a, const NpySource& src) {
  using pptq::io::DType;
  if (a.dtype != DType::f16 && a.dtype != DType::f32 && a.dtype != DType::f64)
    throw pptq::DataError(src.label() + ": dtype " + pptq::io::dtype_descr(a.dtype) +
                          " is not supported: float16 ('<f2'), float32 ('<f4') or float64 ('<f8') only");
  if (a.shape.size() != 2)
    throw pptq::DataError(src.label() + ": expected a 2-d array, got " + std::to_string(a.shape.size()) +
                          " dimension(s)");
  if (a.shape[0] == 0 || a.shape[1] == 0)
    throw pptq::DataError(src.label() + ": the array is empty (" + shape_str(a.shape[0], a.shape[1]) + ")");
}

pptq::io::NpyArray read_float_header(const NpySource& src) {
  pptq::io::NpyArray a = read_as_data(src, [](const std::string& p) { return pptq::io::read_npy_header(p); });
  check_float_2d(a, src);
  return a;
}

pptq::io::NpyArray read_float_array(const NpySource& src) {
  // The header first: a file whose header is unusable is refused before its data is read.
  check_float_2d(read_as_data(src, [](const std::string& p) { return pptq::io::read_npy_header(p); }), src);
  pptq::io::NpyArray a = read_as_data(src, [](const std::string& p) { return pptq::io::read_npy(p); });
  check_float_2d(a, src);
  return a;
}

void require_finite_gram(const Eigen::MatrixXd& lower, const Eigen::MatrixXd* full, const std::string& what) {
  bool finite = full == nullptr || full->allFinite();
  for (Eigen::Index j = 0; finite && j < lower.cols(); ++j) finite = lower.col(j).tail(lower.rows() - j).allFinite();
  if (!finite)
    throw pptq::NumericalError(what + " overflows double (an entry is infinite although every input is finite): "
                               "scale X down");
}

template <typename S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> to_finite_matrix(const pptq::io::NpyArray& a, const NpySource& src) {
  const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> m = pptq::io::to_matrix<S>(a, src.label());
  for (Eigen::Index j = 0; j < m.cols(); ++j)
    for (Eigen::Index i = 0; i < m.rows(); ++i)
      if (!std::isfinite(static_cast<double>(m(i, j)))) {
        std::ostringstream os;
        os << src.label() << ": non-finite entry " << static_cast<double>(m(i, j)) << " at (" << i << ", " << j << ")";
        throw pptq::DataError(os.str());
      }
  return m;
}

template Eigen::MatrixXf to_finite_matrix<float>(const pptq::io::NpyArray&, const NpySource&);
template Eigen::MatrixXd to_finite_matrix<double>(const pptq::io::NpyArray&, const NpySource&);

Eigen::MatrixXd load_matrix(const NpySource& src) { return to_finite_matrix<double>(read_float_array(src), src); }

}  // namespace pptq_tools
