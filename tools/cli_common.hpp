// What the command-line tools (pptq-quantize, pptq-gguf) share: the exit codes and how pptq's error kinds
// map onto them, the run loop that turns every failure into one line on stderr, the strict parsing of
// numeric options, the thread cap, the memory pre-flight, the boundary at which the library's rejection of
// an argument becomes a data error, the one set of rules by which both tools read their .npy inputs, and
// the checks and commit of their outputs.
#pragma once

#include <pptq/error.hpp>
#include <pptq/io/npy.hpp>

#include <CLI/CLI.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

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

/// Prints "prog: message" as one line of stderr (line breaks become spaces, other control characters are
/// escaped: terminal_safe) and returns code.
int report_failure(const char* prog, int code, const std::string& message);

/// `s` safe to print on a terminal: control characters (C0, DEL, C1) and bytes that are not valid UTF-8
/// become \xHH; printable ASCII and valid UTF-8 stay as they are. Names read from files (GGUF keys and
/// tensor names, paths) pass through here before they reach stderr.
std::string terminal_safe(const std::string& s);

/// Prints "prog: line" on stderr (terminal_safe): the tools' notes, warnings and progress lines.
void note(const char* prog, const std::string& line);

// ------------------------------------------------------------------------------------------------
// Strict numeric options
// ------------------------------------------------------------------------------------------------
// The tools take every numeric option as text and parse it here: the whole text must be the number (no
// spaces, no empty value, no trailing characters), in range, never saturated (CLI11 turns
// 99999999999999999999 into the largest value of the type). Every failure is a UsageError naming the option.

/// An integer in [lo, hi], decimal.
std::int64_t parse_int(const std::string& option, const std::string& text, std::int64_t lo, std::int64_t hi);
/// An unsigned 64-bit integer, decimal (no sign).
std::uint64_t parse_u64(const std::string& option, const std::string& text);
/// A finite floating-point number (decimal or scientific; no inf, nan or hexadecimal).
double parse_double(const std::string& option, const std::string& text);
/// A byte count: an integer with an optional binary suffix K, M, G or T (KiB, MiB, GiB, TiB).
std::uint64_t parse_bytes(const std::string& option, const std::string& text);

// ------------------------------------------------------------------------------------------------
// Threads and memory
// ------------------------------------------------------------------------------------------------

/// The processors this process may run on (OpenMP's count, or the hardware's).
int processor_count();

/// The thread count to use for `requested` (0: OpenMP's default, OMP_NUM_THREADS or all): never more than
/// processor_count() — a request beyond it only slows the run, and a huge one exhausts libgomp's stack —
/// with a one-line note on stderr when capped. When the default itself is too large, it is lowered for the
/// whole process (omp_set_num_threads) before any parallel region starts. Returns 0 for the default.
int cap_threads(const char* prog, int requested);

/// Keeps freed large blocks in the heap for the next allocation instead of returning them to the system
/// (glibc; elsewhere nothing). A layer's temporaries are hundreds of MB, and each fresh mapping costs a
/// page fault per 4 KiB page on its first touch: measured, most of the report's time (docs/performance.md
/// §4). The process's resident size then stays at its high-water mark, which a one-layer tool reaches
/// anyway.
void reuse_freed_memory();

/// A number of bytes as people read it: "512 B", "3.2 MiB", "34.0 GiB".
std::string bytes_str(double bytes);

/// MemAvailable from /proc/meminfo, in bytes (nullopt where it cannot be read).
std::optional<std::uint64_t> memory_available();

/// The pre-flight check: throws a pptq::DataError naming `what`, the estimate and the limit when the
/// estimate exceeds --max-memory (if given) or MemAvailable.
void check_memory(double estimate, const std::string& what, std::optional<std::uint64_t> max_memory);

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

/// Throws pptq::UsageError unless `path` names a file in an existing, writable directory that is a regular
/// file if it exists (after symbolic links); `option` (e.g. "--output") names it in the message. Checked
/// before any work so that none is wasted.
void require_writable_file(const std::string& option, const std::string& path);

/// The outputs of a run, (option, path) each: every one writable (require_writable_file), no two the same
/// file — compared by identity (device and inode after symbolic links, pptq::io::file_identity), so
/// "o/Q.npy" and "o/./Q.npy" are one file. Throws pptq::UsageError.
void check_outputs(const std::vector<std::pair<std::string, std::string>>& outs);

/// The test-only hook: when the environment variable PPTQ_TEST_SIGNAL_AT is "POINT" or "POINT:SIGNAL"
/// (SIGNAL: TERM, the default, INT, HUP or KILL) and `point` is POINT, raises that signal here. Inert
/// unless set. The tools name two points: "after-first-temp" (the first output's temporary is written) and
/// "between-renames" (after the first of several renames).
void test_signal_point(const char* point);

/// Writes every (path, bytes) to its temporary, then renames them all (pptq::io::OutputGroup: SIGINT,
/// SIGTERM and SIGHUP leave the outputs all old or all new). Throws pptq::IoError naming the output.
void commit_outputs(const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& files);

/// An input .npy: its path and the command-line option that named it (empty if none did).
struct NpySource {
  std::string path;
  std::string option;
  /// "path (option)", or the path alone: how the tools' own messages name the input.
  std::string label() const;
};

/// Reads a 2-d, non-empty floating-point array: float16, float32 or float64, C or Fortran order; regular
/// files only. Every failure is a pptq::DataError naming the source: a file the tool cannot read is bad
/// input to it (exit 3).
pptq::io::NpyArray read_float_array(const NpySource& src);

/// Throws a pptq::DataError naming the source unless `a` (an array or a header) is 2-d, non-empty and of
/// float16, float32 or float64.
void check_float_2d(const pptq::io::NpyArray& a, const NpySource& src);

/// The header alone (dtype, shape; no data), with read_float_array's checks: what the tools plan with
/// (shapes, the memory pre-flight) before reading any data.
pptq::io::NpyArray read_float_header(const NpySource& src);

/// Throws pptq::NumericalError unless the lower triangle of `lower` (a Gram accumulator: XᵀX, X̃ᵀX̃) and
/// every entry of `full` (if given: X̃ᵀX) are finite. Finite X can still overflow its Gram: the message says
/// so ("X^T X of ... overflows double: scale X down") rather than leaving it to a later "non-finite entry".
void require_finite_gram(const Eigen::MatrixXd& lower, const Eigen::MatrixXd* full, const std::string& what);

/// The array (from read_float_array) as a matrix of S, every entry finite; a pptq::DataError names the
/// source and the first non-finite entry. Defined for S = float and double.
template <typename S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> to_finite_matrix(const pptq::io::NpyArray& a, const NpySource& src);

extern template Eigen::MatrixXf to_finite_matrix<float>(const pptq::io::NpyArray&, const NpySource&);
extern template Eigen::MatrixXd to_finite_matrix<double>(const pptq::io::NpyArray&, const NpySource&);

/// read_float_array, then to_finite_matrix<double>.
Eigen::MatrixXd load_matrix(const NpySource& src);

}  // namespace pptq_tools
