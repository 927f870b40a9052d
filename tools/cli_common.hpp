// What the command-line tools (pptq-quantize, pptq-gguf) share: the exit codes and how pptq's error kinds
// map onto them, the run loop that turns every failure into one line on stderr, the boundary at which the
// library's rejection of an argument becomes a data error, and the one set of rules by which both tools
// read their .npy inputs.
#pragma once

#include <pptq/error.hpp>
#include <pptq/io/npy.hpp>

#include <CLI/CLI.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>

namespace pptq_tools {

// ------------------------------------------------------------------------------------------------
// Exit codes
// ------------------------------------------------------------------------------------------------

/// The tools' exit codes, as their --help and the README document them. Each pptq error kind has one.
enum ExitCode : int {
  kExitOk = 0,
  kExitIo = 1,         ///< an output could not be written (pptq::IoError); also any unexpected failure
  kExitUsage = 2,      ///< a bad command line (pptq::UsageError, CLI11's parse errors)
  kExitData = 3,       ///< unreadable or malformed input, or input the tool cannot use (pptq::DataError)
  kExitNumerical = 4,  ///< valid input on which the quantizer fails numerically (pptq::NumericalError)
};

/// The exit code of an error kind.
int exit_code(pptq::ErrorKind kind);

/// What a failed run reports: its exit code and the one line printed after the program's name.
struct Failure {
  int code = kExitIo;
  std::string message;
};

/// The exit code and message of an exception, chosen by its type alone: a pptq::Error by its kind() (a
/// UsageError's message points to --help), std::bad_alloc "out of memory", anything else an internal error.
Failure failure_of(std::exception_ptr e);

/// Prints "prog: message" as one line of stderr (line breaks become spaces) and returns code.
int report_failure(const char* prog, int code, const std::string& message);

/// Parses the command line with `app`, then runs body(), which returns the exit code. --help and --version
/// exit 0; a parse error exits 2; every exception from body() becomes one line and failure_of's code.
int run_tool(const char* prog, CLI::App& app, int argc, const char* const* argv, const std::function<int()>& body);

// ------------------------------------------------------------------------------------------------
// The library boundary
// ------------------------------------------------------------------------------------------------

/// The library's message without its "pptq: " prefix: the tools print their own program name first.
std::string without_library_prefix(const std::string& what);

/// Runs library work on the data the tool has read. The tools check every option before they call the
/// library, so an argument the library still rejects (std::invalid_argument, pptq::UsageError among them)
/// came from the input data: it is rethrown as a pptq::DataError (exit 3) with `context` in front of the
/// library's message. Everything else passes unchanged, pptq::NumericalError (exit 4) in particular.
template <typename F>
decltype(auto) on_input_data(const std::string& context, F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    throw pptq::DataError(context + without_library_prefix(e.what()));
  }
}

// ------------------------------------------------------------------------------------------------
// Inputs and outputs
// ------------------------------------------------------------------------------------------------

/// "rows x cols", as every shape in the tools' messages is written.
std::string shape_str(std::int64_t rows, std::int64_t cols);

/// The directory part of a path ("." if it has none).
std::string dir_of(const std::string& path);

/// Throws pptq::UsageError unless `path` names a file in an existing, writable directory; `option` (e.g.
/// "--output") names it in the message. Checked before any work so that none is wasted.
void require_writable_file(const std::string& option, const std::string& path);

/// An input .npy: its path and the command-line option that named it (empty if none did).
struct NpySource {
  std::string path;
  std::string option;
  /// "path (option)", or the path alone: how the tools' own messages name the input.
  std::string label() const;
};

/// Reads a 2-d, non-empty floating-point array: float16, float32 or float64, C or Fortran order. Every
/// failure is a pptq::DataError naming the source: a file the tool cannot read is bad input to it (exit 3).
pptq::io::NpyArray read_float_array(const NpySource& src);

/// The array (from read_float_array) as a matrix of S, every entry finite; a pptq::DataError names the
/// source and the first non-finite entry. Defined for S = float and double.
template <typename S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> to_finite_matrix(const pptq::io::NpyArray& a, const NpySource& src);

extern template Eigen::MatrixXf to_finite_matrix<float>(const pptq::io::NpyArray&, const NpySource&);
extern template Eigen::MatrixXd to_finite_matrix<double>(const pptq::io::NpyArray&, const NpySource&);

/// read_float_array, then to_finite_matrix<double>.
Eigen::MatrixXd load_matrix(const NpySource& src);

}  // namespace pptq_tools
