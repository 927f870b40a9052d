// What the command-line tools (pptq-quantize, pptq-gguf) share: the exit codes, the error kinds that map
// onto them, and the run loop that turns every failure into one line on stderr and its exit code.
#pragma once

#include <pptq/io/npy.hpp>

#include <CLI/CLI.hpp>

#include <iostream>
#include <new>
#include <stdexcept>
#include <string>

namespace pptq_tools {

enum ExitCode : int { kExitOk = 0, kExitFailure = 1, kExitUsage = 2, kExitData = 3, kExitNumerical = 4 };

/// Missing, conflicting or out-of-range options (exit 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// Unreadable or malformed input data, or data the tool cannot handle (exit 3).
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// The quantizer failed numerically (exit 4).
struct NumericalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// An output could not be written (exit 1).
struct OutputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The library's messages start with "pptq: "; the tools print their own prefix.
inline std::string strip_lib_prefix(const std::string& s) { return s.rfind("pptq: ", 0) == 0 ? s.substr(6) : s; }

/// "prog: what" on one line of stderr; returns code.
inline int report_failure(const char* prog, int code, const std::string& what) {
  std::string line = what;
  for (char& ch : line)
    if (ch == '\n' || ch == '\r') ch = ' ';
  std::cerr << prog << ": " << line << std::endl;
  return code;
}

/// Parses the command line with `app`, then runs body() (which returns the exit code); every exception
/// becomes one line and its exit code: usage 2, data 3 (including the library's std::invalid_argument and
/// malformed .npy), numerical 4, writing or anything unexpected 1.
template <typename Body>
int run_tool(const char* prog, CLI::App& app, int argc, const char* const* argv, Body&& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    return report_failure(prog, kExitUsage, std::string(e.what()) + " (see --help)");
  }
  try {
    return body();
  } catch (const UsageError& e) {
    return report_failure(prog, kExitUsage, std::string(e.what()) + " (see --help)");
  } catch (const DataError& e) {
    return report_failure(prog, kExitData, e.what());
  } catch (const pptq::io::NpyError& e) {
    return report_failure(prog, kExitData, e.what());
  } catch (const std::invalid_argument& e) {
    return report_failure(prog, kExitData, strip_lib_prefix(e.what()));
  } catch (const NumericalError& e) {
    return report_failure(prog, kExitNumerical, e.what());
  } catch (const OutputError& e) {
    return report_failure(prog, kExitFailure, std::string("cannot write the output: ") + e.what());
  } catch (const std::bad_alloc&) {
    return report_failure(prog, kExitFailure, "out of memory");
  } catch (const std::exception& e) {
    return report_failure(prog, kExitFailure, std::string("internal error: ") + e.what());
  }
}

}  // namespace pptq_tools
