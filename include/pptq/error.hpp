// pptq's error model: every exception the library and its tools throw is a pptq::Error of one of four
// kinds, so a caller (and the tools' exit codes) can tell misuse from bad data, a numerical failure that
// data caused, and a failing file system.
//
// Numerical trouble the caller can act on (H + λI not positive definite at any λ up to the cap) is not
// an exception: it is the result's Status, in the manner of Eigen's ComputationInfo. Exceptions are for
// what the caller must fix before calling again.
//
// Each class derives from the standard exception that matches it (so `catch (const std::exception&)`
// and `catch (const std::invalid_argument&)` keep working) and from the mix-in pptq::Error (so
// `catch (const pptq::Error& e)` catches them all and `e.kind()` says which).
#pragma once

#include <stdexcept>
#include <string>

namespace pptq {

enum class ErrorKind {
  Usage,      ///< the call itself is wrong: shapes, options, NaN in an argument, an unknown name
  Data,       ///< an input file or its content is malformed or does not fit the call
  Numerical,  ///< the data is valid but a quantity needed overflows or has no meaning (e.g. XᵀX overflows)
  Io,         ///< the file system failed: cannot open, read, write or rename
};

inline const char* to_string(ErrorKind k) {
  switch (k) {
    case ErrorKind::Usage: return "usage error";
    case ErrorKind::Data: return "data error";
    case ErrorKind::Numerical: return "numerical error";
    case ErrorKind::Io: return "i/o error";
  }
  return "error";
}

/// The mix-in every pptq exception carries. Catch it to catch everything pptq throws.
class Error {
 public:
  virtual ~Error() = default;
  virtual ErrorKind kind() const noexcept = 0;
  virtual const char* what() const noexcept = 0;
};

/// The call is wrong (shapes, options, a non-finite argument): fix the call.
class UsageError : public std::invalid_argument, public Error {
 public:
  explicit UsageError(const std::string& m) : std::invalid_argument(m) {}
  ErrorKind kind() const noexcept override { return ErrorKind::Usage; }
  const char* what() const noexcept override { return std::invalid_argument::what(); }
};

/// An input (file or array) is malformed or inconsistent with the call: fix the data.
class DataError : public std::runtime_error, public Error {
 public:
  explicit DataError(const std::string& m) : std::runtime_error(m) {}
  ErrorKind kind() const noexcept override { return ErrorKind::Data; }
  const char* what() const noexcept override { return std::runtime_error::what(); }
};

/// Valid data on which a needed quantity is not finite (an overflowing Gram, an unusable scale).
class NumericalError : public std::runtime_error, public Error {
 public:
  explicit NumericalError(const std::string& m) : std::runtime_error(m) {}
  ErrorKind kind() const noexcept override { return ErrorKind::Numerical; }
  const char* what() const noexcept override { return std::runtime_error::what(); }
};

/// The operating system refused or failed an operation on a file.
class IoError : public std::runtime_error, public Error {
 public:
  explicit IoError(const std::string& m) : std::runtime_error(m) {}
  ErrorKind kind() const noexcept override { return ErrorKind::Io; }
  const char* what() const noexcept override { return std::runtime_error::what(); }
};

}  // namespace pptq
