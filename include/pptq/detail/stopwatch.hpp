// Wall-clock time of a call's parts, for the results' `seconds` (reports only: no arithmetic reads it).
#pragma once

#include <chrono>

namespace pptq::detail {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace pptq::detail
