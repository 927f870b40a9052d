// The factor every sweep uses: the upper triangular U with (H + λI)⁻¹ = UᵀU in sweep order
// (GPTQ's `cholesky(cholesky_inverse(cholesky(H)), upper=True)`, spec §2 and §7 step 6), and the
// damping policy around it (relative, absolute, escalation when H + λI is not positive definite).
//
// U is computed WITHOUT forming H⁻¹ and without solving against the identity (performance.md):
//   with J the reversal permutation, factor JHJ = L_r L_rᵀ (one Cholesky); then V = J L_r J is upper
//   triangular with H = V Vᵀ, hence H⁻¹ = V⁻ᵀV⁻¹ and U = V⁻¹ (upper, positive diagonal: the unique
//   Cholesky factor). One Cholesky (N³/3) and one in-place triangular inverse (N³/3), in one N×N buffer.
#pragma once

#include "../common.hpp"
#include "parallel.hpp"

#include <Eigen/Cholesky>

#include <algorithm>
#include <string>
#include <vector>

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

/// In-place inverse of an upper triangular matrix (the strictly lower part must be zero and stays so).
/// Recursive split inv([A B; 0 C]) = [A⁻¹, −A⁻¹BC⁻¹; 0, C⁻¹]; B is formed by two triangular solves
/// BEFORE A and C are inverted, so no temporary is needed. The solves run over fixed chunks of B
/// (columns for A⁻¹B, rows for ·C⁻¹) and A, C are inverted concurrently: both cores, same bits.
template <typename Scalar>
void invert_upper_inplace(Eigen::Ref<Matrix<Scalar>> T, int threads = 1) {
  const Index n = T.rows();
  if (n <= 64) {
    // Back substitution column by column, right to left: column j of T⁻¹ needs T's columns ≤ j only.
    Vector<Scalar> x(n);
    for (Index j = n - 1; j >= 0; --j) {
      x(j) = Scalar(1) / T(j, j);
      for (Index i = j - 1; i >= 0; --i) {
        Scalar s = 0;
        for (Index k = i + 1; k <= j; ++k) s += T(i, k) * x(k);
        x(i) = -s / T(i, i);
      }
      T.col(j).head(j + 1) = x.head(j + 1);
    }
    return;
  }
  const Index h = (n / 2) / 16 * 16;  // n > 64, so 32 <= h < n; multiples of 16 keep the blocks SIMD-aligned
  auto A = T.topLeftCorner(h, h);
  auto B = T.topRightCorner(h, n - h);
  auto C = T.bottomRightCorner(n - h, n - h);
  constexpr Index chunk = 256;
  for_fixed_chunks(n - h, chunk, threads, [&](Index c0, Index c1) {
    A.template triangularView<Eigen::Upper>().solveInPlace(B.middleCols(c0, c1 - c0));
  });
  for_fixed_chunks(h, chunk, threads, [&](Index r0, Index r1) {
    C.template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(B.middleRows(r0, r1 - r0));
  });
  B = -B;
  for_fixed_chunks(2, 1, threads, [&](Index part, Index) {
    if (part == 0)
      invert_upper_inplace<Scalar>(A, 1);
    else
      invert_upper_inplace<Scalar>(C, 1);
  });
}

/// Blocked right-looking Cholesky A = L Lᵀ in place (lower triangle read and written; the strict upper
/// triangle is scratch). Panels of fixed width; the panel solve runs over fixed row chunks and the
/// trailing update over fixed column panels, in parallel, so the result is the same for any thread
/// count. Returns false when A is not positive definite in this precision.
template <typename Scalar>
bool cholesky_lower_inplace(Matrix<Scalar>& A, int threads) {
  const Index n = A.rows();
  constexpr Index nb = 128;
  for (Index k = 0; k < n; k += nb) {
    const Index b = std::min(nb, n - k);
    {
      Eigen::Ref<Matrix<Scalar>> A11(A.block(k, k, b, b));
      Eigen::LLT<Eigen::Ref<Matrix<Scalar>>, Eigen::Lower> llt(A11);
      if (llt.info() != Eigen::Success) return false;
    }
    const Index r = n - k - b;
    if (r == 0) break;
    const auto L11 = A.block(k, k, b, b);
    for_fixed_chunks(r, 256, threads, [&](Index i0, Index i1) {
      L11.template triangularView<Eigen::Lower>().transpose().template solveInPlace<Eigen::OnTheRight>(
          A.block(k + b + i0, k, i1 - i0, b));
    });
    const auto L21 = A.block(k + b, k, r, b);
    for_fixed_chunks(r, nb, threads, [&](Index c0, Index c1) {
      // Column panel [c0, c1) of A22 from its diagonal down; only the lower triangle is touched.
      const Index w = c1 - c0;
      const auto P = L21.middleRows(c0, w);
      A.block(k + b + c0, k + b + c0, w, w).template triangularView<Eigen::Lower>() -= P * P.transpose();
      if (r > c1) A.block(k + b + c1, k + b + c0, r - c1, w).noalias() -= L21.bottomRows(r - c1) * P.transpose();
    });
  }
  return true;
}

/// A → U in place, where A holds J(H + λI)J in its LOWER triangle (J the reversal): after the Cholesky
/// J(H + λI)J = L_r L_rᵀ, V = J L_r J is upper with H + λI = VVᵀ, and U = V⁻¹ (module comment).
/// Returns false when the matrix is not positive definite in this precision (A is then garbage).
template <typename Scalar>
bool reversed_inverse_factor_inplace(Matrix<Scalar>& A, int threads) {
  if (!cholesky_lower_inplace(A, threads)) return false;
  A.reverseInPlace();  // V = J L_r J, upper
  A.template triangularView<Eigen::StrictlyLower>().setZero();
  invert_upper_inplace<Scalar>(A, threads);
  for (Index j = 0; j < A.cols(); ++j)
    for (Index i = 0; i <= j; ++i)
      if (!std::isfinite(static_cast<double>(A(i, j)))) return false;
  return true;
}

/// How λ is chosen and raised when H + λI is not positive definite (anchors.md §4, pain point 1).
struct Damping {
  double lambda = 0;             ///< the requested λ on the scale of H
  bool escalate = true;          ///< raise λ on failure instead of failing at once
  double factor = 10;            ///< each step multiplies λ by this
  double floor = 0;              ///< a λ of 0 escalates to this first (a tiny fraction of mean(diag H))
  double cap = 0;                ///< never go beyond this λ
};

template <typename Scalar>
struct FactorResult {
  Matrix<Scalar> U;                  ///< upper, (H_π + λI)⁻¹ = UᵀU, sweep order
  double lambda = 0;                 ///< the λ actually used
  std::vector<double> lambda_tried;  ///< every λ tried, in order (the last one is `lambda` on success)
  Status status = Status::Success;
  std::string message;
};

/// Factor (H_π + λI) with H_π = H[perm][:, perm], diagonal entries of dead columns set to 1 first
/// (spec §7 step 3). Escalates λ as `damping` says; fails with NumericalIssue past the cap.
template <typename FScalar, typename DerivedH>
FactorResult<FScalar> factor_permuted(const Eigen::MatrixBase<DerivedH>& H, const std::vector<Index>& perm,
                                      const std::vector<bool>& dead, const Damping& damping, int threads = 0) {
  const Index n = H.rows();
  // Before the scope below, which sets this thread's OpenMP count to 1. Small factors stay on one thread:
  // their chunks are too few to pay for the synchronization (the arithmetic is the same either way).
  threads = n < 1024 ? 1 : resolve_threads(threads);
  SerialEigenScope serial;  // Eigen's own threading off: pptq's fixed chunks give the same bits for any count
  FactorResult<FScalar> out;
  double lambda = damping.lambda;
  for (;;) {
    out.lambda_tried.push_back(lambda);
    // The lower triangle of J(H_π + λI)J, filled directly: A(i, j) = H(π[n−1−i], π[n−1−j]), i ≥ j.
    out.U.resize(n, n);
    for_fixed_chunks(n, 256, threads, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const Index pj = perm[n - 1 - j];
        for (Index i = j; i < n; ++i) out.U(i, j) = static_cast<FScalar>(H(perm[n - 1 - i], pj));
        if (!dead.empty() && dead[pj]) out.U(j, j) = FScalar(1);
        out.U(j, j) += static_cast<FScalar>(lambda);
      }
    });
    if (reversed_inverse_factor_inplace(out.U, threads)) {
      out.lambda = lambda;
      if (out.lambda_tried.size() > 1) {
        out.status = Status::DampingEscalated;
        out.message = "H + lambda*I was not positive definite at lambda = " + str(out.lambda_tried.front()) +
                      "; escalated to lambda = " + str(lambda) + " after " + str(out.lambda_tried.size() - 1) +
                      " step(s)";
      }
      return out;
    }
    double next = lambda > 0 ? lambda * damping.factor : damping.floor;
    if (!(next > lambda)) next = damping.floor > 0 ? damping.floor : 1e-12;
    if (!damping.escalate || next > damping.cap * (1 + 1e-12)) {
      out.U.resize(0, 0);
      out.status = Status::NumericalIssue;
      out.message = "H + lambda*I is not positive definite in this precision at lambda = " + str(lambda) +
                    (damping.escalate ? " (the escalation cap, " + str(damping.cap) + ", was reached)"
                                      : " (damping escalation is off)") +
                    "; tried lambda = ";
      for (std::size_t i = 0; i < out.lambda_tried.size(); ++i)
        out.message += (i ? ", " : "") + str(out.lambda_tried[i]);
      out.message += ". Raise damp/lambda, add calibration samples, or use a double-precision H.";
      return out;
    }
    lambda = next;
  }
}

}  // namespace pptq::detail
