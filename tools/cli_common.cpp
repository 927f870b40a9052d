// What the command-line tools share (cli_common.hpp): exit codes, the run loop, the .npy loaders.
#include "cli_common.hpp"

#include <cmath>
#include <iostream>
#include <new>
#include <sstream>

#include <unistd.h>

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

int report_failure(const char* prog, int code, const std::string& message) {
  std::string line = message;
  for (char& ch : line)
    if (ch == '\n' || ch == '\r') ch = ' ';
  std::cerr << prog << ": " << line << std::endl;
  return code;
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
  const std::string d = dir_of(path);
  if (::access(d.c_str(), W_OK | X_OK) != 0)
    throw pptq::UsageError(option + " '" + path + "': directory '" + d + "' does not exist or is not writable");
}

std::string NpySource::label() const { return option.empty() ? path : path + " (" + option + ")"; }

pptq::io::NpyArray read_float_array(const NpySource& src) {
  using pptq::io::DType;
  pptq::io::NpyArray a;
  try {
    a = pptq::io::read_npy(src.path);  // its messages name the path
  } catch (const pptq::Error& e) {     // NpyError (malformed) or IoError (unreadable)
    throw pptq::DataError(src.option.empty() ? e.what() : src.option + ": " + e.what());
  }
  if (a.dtype != DType::f16 && a.dtype != DType::f32 && a.dtype != DType::f64)
    throw pptq::DataError(src.label() + ": dtype " + pptq::io::dtype_descr(a.dtype) +
                          " is not supported: float16 ('<f2'), float32 ('<f4') or float64 ('<f8') only");
  if (a.shape.size() != 2)
    throw pptq::DataError(src.label() + ": expected a 2-d array, got " + std::to_string(a.shape.size()) +
                          " dimension(s)");
  if (a.shape[0] == 0 || a.shape[1] == 0)
    throw pptq::DataError(src.label() + ": the array is empty (" + shape_str(a.shape[0], a.shape[1]) + ")");
  return a;
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
