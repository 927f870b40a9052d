// Threads: pptq parallelizes over fixed chunks of rows (rows are independent in every algorithm here),
// so the arithmetic done for a row never depends on how many threads run: results are identical for any
// thread count. Eigen's own GEMM threading is switched off inside pptq's work because it changes the
// blocking (and so the rounding) of products with the thread count.
#pragma once

#include "../common.hpp"

#include <algorithm>
#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pptq::detail {

/// True on the thread that called into pptq (thread 0 of a pptq parallel region is the caller).
inline bool is_calling_thread() {
#ifdef _OPENMP
  return omp_get_thread_num() == 0;
#else
  return true;
#endif
}

/// The index of the calling thread in the enclosing parallel region (0 outside one).
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/// While alive, Eigen's products started from this thread run on one thread (Eigen reads the OpenMP
/// nthreads ICV, which is per thread: other threads of the program are not affected).
class SerialEigenScope {
 public:
#ifdef _OPENMP
  SerialEigenScope() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialEigenScope() { omp_set_num_threads(saved_); }

 private:
  int saved_;
#else
  SerialEigenScope() = default;
#endif
 public:
  SerialEigenScope(const SerialEigenScope&) = delete;
  SerialEigenScope& operator=(const SerialEigenScope&) = delete;
};

/// Rows per chunk: a function of the row count only (never of the thread count), a multiple of 4
/// (one Philox call serves four rows) and large enough for efficient GEMMs.
inline Index row_chunk(Index rows) {
  Index c = (rows + 7) / 8;
  c = std::max<Index>(32, std::min<Index>(512, c));
  return (c + 3) / 4 * 4;
}

/// Runs f(r0, r1) over the row chunks on `threads` threads. Exceptions are carried to the caller.
/// `chunk` (> 0) overrides row_chunk(rows): a block of a larger layer's rows (RowBlock, options.hpp) runs on
/// the layer's chunks, so each of its rows sees the same products as in the whole-layer call.
template <typename F>
void for_row_chunks(Index rows, int threads, F&& f, Index chunk = 0) {
  if (chunk <= 0) chunk = row_chunk(rows);
  const Index n = (rows + chunk - 1) / chunk;
  SerialEigenScope serial;
  std::exception_ptr error;
  std::mutex error_mutex;
  const int t = static_cast<int>(std::min<Index>(threads, n));
#ifdef _OPENMP
#pragma omp parallel for num_threads(t) schedule(dynamic, 1) if (t > 1)
#endif
  for (Index c = 0; c < n; ++c) {
    try {
      const Index r0 = c * chunk;
      f(r0, std::min(rows, r0 + chunk));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  (void)t;
  if (error) std::rethrow_exception(error);
}

}  // namespace pptq::detail
