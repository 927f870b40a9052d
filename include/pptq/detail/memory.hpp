// Large working buffers on transparent huge pages.
//
// The factor's N × N storage, the sweep's working matrix (which becomes Q) and the codes are fresh
// allocations of 64-128 MB at 4096², first touched inside pptq's passes. On 4 KiB pages the first
// touches alone took 31-42 ms per 128 MB on two cores here (one page fault per page), and the sweep's
// products then walk the factor across thousands of pages. Linux can back such a buffer with 2 MiB pages
// when asked (madvise MADV_HUGEPAGE; the "madvise" setting of transparent huge pages, this machine's):
// the same 128 MB then took 6-7 ms to touch on most runs, and an OPTQ call at 4096² (the first call in
// its process, as the benchmark times it) fell from a median of 0.81 s to 0.76 s over eight alternating
// processes each way. A first touch of huge pages is sometimes much slower (256 MB: 0.3 s in 2 of 9
// trials here, against 0.06-0.08 s on small pages; likely the virtual host backing them lazily), which
// the medians include. Where the system says "never", or the kernel has no huge page at hand, the
// buffer simply stays on small pages: the advice changes speed only, never values. Define
// PPTQ_NO_HUGE_PAGES to turn it off.
#pragma once

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

}  // namespace pptq::detail
