// Large working buffers on transparent huge pages.
//
// The factor's N × N storage, the sweep's working matrix (which becomes Q) and the codes are fresh
// allocations of tens to hundreds of MB, first touched inside pptq's passes. On 4 KiB pages every first
// touch is a page fault, and the sweep's products then walk the factor across thousands of pages. Linux
// can back such a buffer with 2 MiB pages when asked (madvise MADV_HUGEPAGE, honoured under the
// "madvise" and "always" settings of transparent huge pages), which makes both cheaper
// (docs/performance.md). Where the system says "never", or the kernel has no huge page at hand, the
// buffer simply stays on small pages: the advice changes speed only, never values. Define
// PPTQ_NO_HUGE_PAGES to turn it off.
#pragma once

#include "../common.hpp"

#include <cstddef>
#include <cstdint>

#if defined(__linux__) && !defined(PPTQ_NO_HUGE_PAGES)
#include <sys/mman.h>
#endif

namespace pptq::detail {

/// Asks for huge pages on the whole 2 MiB pages inside [p, p + bytes), before the buffer is first
/// touched. Buffers under 4 MiB are left alone (at most one huge page would fit).
inline void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && !defined(PPTQ_NO_HUGE_PAGES) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t huge = std::uintptr_t(1) << 21;
  if (p == nullptr || bytes < 2 * huge) return;
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t b = (a + huge - 1) / huge * huge, e = (a + bytes) / huge * huge;
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);  // advice: a failure changes nothing
#else
  (void)p;
  (void)bytes;
#endif
}

/// An uninitialized rows × cols matrix, advised onto huge pages before anything touches it: for the
/// layer-sized buffers that are written before they are read (copies, products' outputs).
template <typename Scalar>
Matrix<Scalar> on_huge_pages(Index rows, Index cols) {
  Matrix<Scalar> M(rows, cols);
  advise_huge_pages(M.data(), static_cast<std::size_t>(M.size()) * sizeof(Scalar));
  return M;
}

/// A zeroed rows × cols matrix, advised onto huge pages before the zeroing touches it: the Gram
/// accumulators (cols × cols) and the error products' outputs (samples × rows) are hundreds of MB at the
/// sizes of real layers, and on 4 KiB pages each first touch costs a fault.
template <typename Scalar>
Matrix<Scalar> zero_on_huge_pages(Index rows, Index cols) {
  Matrix<Scalar> M(rows, cols);
  advise_huge_pages(M.data(), static_cast<std::size_t>(M.size()) * sizeof(Scalar));
  M.setZero();
  return M;
}

}  // namespace pptq::detail
