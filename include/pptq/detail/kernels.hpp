// The large products of the factor and the sweep, in one place, on Eigen's kernels over pptq's fixed
// chunks: the result does not depend on the thread count.
//
// OpenBLAS was measured here as a backend and is deliberately not used (the design notes list its
// kernels): (1) LAPACK's dpotrf, and at some sizes OpenBLAS's dtrsm/dsyrk, give different bits for 1
// and 2 OpenBLAS threads (a 1500-column factor differed), which breaks pptq's "same result for any
// thread count"; (2) in the sweep, alternating OpenBLAS's spinning worker threads with OpenMP's regions
// made it slower (0.93 s against 0.61 s at 4096²); (3) the factor gained little (0.48 s against 0.52 s
// at 4096², double).
#pragma once

#include "../common.hpp"
#include "parallel.hpp"

#include <algorithm>

namespace pptq::detail {

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

/// C += A·B (C m × n, A m × k, B k × n) over pptq's fixed row chunks.
template <typename Scalar>
void gemm_add(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A,
              const Eigen::Ref<const Matrix<Scalar>>& B, int threads) {
  const Index m = C.rows();
  if (m == 0 || C.cols() == 0 || A.cols() == 0) return;
  for_row_chunks(m, resolve_threads(threads), [&](Index r0, Index r1) {
    C.middleRows(r0, r1 - r0).noalias() += A.middleRows(r0, r1 - r0) * B;
  });
}

/// A ← A·L⁻ᵀ for L lower triangular (the panel solve of a Cholesky).
template <typename Scalar>
void trsm_right_lower_trans(const Eigen::Ref<const Matrix<Scalar>>& L, Eigen::Ref<Matrix<Scalar>> A, int threads) {
  if (A.rows() == 0 || A.cols() == 0) return;
  for_fixed_chunks(A.rows(), 256, threads, [&](Index i0, Index i1) {
    L.template triangularView<Eigen::Lower>().transpose().template solveInPlace<Eigen::OnTheRight>(
        A.middleRows(i0, i1 - i0));
  });
}

/// Lower triangle of C −= A·Aᵀ (C n × n, A n × k); the strict upper triangle of C is scratch: the
/// Eigen path updates each column panel's diagonal block whole, so that every task is one GEMM.
template <typename Scalar>
void syrk_sub_lower(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A, int threads) {
  const Index n = C.rows();
  if (n == 0 || A.cols() == 0) return;
  for_fixed_chunks(n, 256, threads, [&](Index c0, Index c1) {
    C.block(c0, c0, n - c0, c1 - c0).noalias() -= A.bottomRows(n - c0) * A.middleRows(c0, c1 - c0).transpose();
  });
}

}  // namespace pptq::detail
