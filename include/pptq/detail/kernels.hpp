// The large products of the factor, in one place, over pptq's fixed chunks: the result does not
// depend on the thread count. Each chunk's product runs on one thread, on OpenBLAS's kernels when pptq
// is built with them, on Eigen's otherwise (detail/blas.hpp says why only OpenBLAS's OpenMP build, and
// only one thread per call: OpenBLAS's own threading changes the bits with its thread count, and its
// spinning workers slowed the sweep).
#pragma once

#include "../common.hpp"
#include "blas.hpp"
#include "parallel.hpp"

#include <algorithm>

namespace pptq::detail {

/// Column panel width of syrk_sub_upper (one task per panel): narrower panels waste less of the
/// diagonal blocks, but below 128 the panels' GEMMs get too narrow to run at full rate
/// (docs/performance.md).
constexpr Index syrk_band = 128;

/// Runs f(i0, i1) over fixed chunks [i0, i1) of [0, n), on up to `threads` OpenMP threads. The chunks
/// depend on n and chunk only, and Eigen runs serially inside a parallel region, so the arithmetic is
/// the same for any thread count (the point of pptq's threading, detail/parallel.hpp).
template <typename F>
void for_fixed_chunks(Index n, Index chunk, int threads, F&& f) {
  const Index nc = (n + chunk - 1) / chunk;
  const int t = static_cast<int>(std::max<Index>(1, std::min<Index>(threads, nc)));
#ifdef _OPENMP
#pragma omp parallel for num_threads(t) schedule(dynamic, 1) if (t > 1)
#endif
  for (Index c = 0; c < nc; ++c) f(c * chunk, std::min(n, (c + 1) * chunk));
  (void)t;
}

/// A ← A·V⁻ᵀ for V upper triangular (the panel solve of the upper-lower Cholesky, detail/factor.hpp):
/// rows are independent, so fixed chunks of rows run trsm_right_upper (detail/blas.hpp, which splits the
/// triangle into GEMMs) on all threads. The chunk
/// depends on A's row count only (never on the thread count): about half the rows, 128 to 512 of them,
/// so that the small panels still give every thread a chunk and the large ones run long GEMMs (with
/// trsm_right_upper's split: docs/performance.md).
template <typename Scalar>
void trsm_right_upper_trans(const Eigen::Ref<const Matrix<Scalar>>& V, Eigen::Ref<Matrix<Scalar>> A, int threads) {
  if (A.rows() == 0 || A.cols() == 0) return;
  const Index chunk = std::max<Index>(128, std::min<Index>(512, (A.rows() / 2 + 63) / 64 * 64));
  for_fixed_chunks(A.rows(), chunk, threads, [&](Index i0, Index i1) {
    trsm_right_upper<Scalar>(V, A.middleRows(i0, i1 - i0), true, false);
  });
}

/// Upper triangle of C −= A·Aᵀ (C n × n, A n × k); the strict lower triangle of C is not written (a
/// consumed H keeps its lower half intact through the factor: optq.hpp). Each task is one column panel:
/// one GEMM for its rows above the diagonal block and a triangular update of the block's upper half
/// (Eigen's triangular product, no wasted lower half). The panels grow to the right and are handed out
/// largest first (the result does not depend on the order: they are independent).
template <typename Scalar>
void syrk_sub_upper(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A, int threads) {
  const Index n = C.rows();
  if (n == 0 || A.cols() == 0) return;
  const Index panels = (n + syrk_band - 1) / syrk_band;
  for_fixed_chunks(panels, 1, threads, [&](Index t, Index) {
    const Index c0 = (panels - 1 - t) * syrk_band, c1 = std::min(n, c0 + syrk_band), w = c1 - c0;
    const auto Ap = A.middleRows(c0, w);
    if (c0 > 0) gemm_sub_abt<Scalar>(C.block(0, c0, c0, w), A.topRows(c0), Ap);
    syrk_sub_upper_block<Scalar>(C.block(c0, c0, w, w), Ap);
  });
}

}  // namespace pptq::detail
