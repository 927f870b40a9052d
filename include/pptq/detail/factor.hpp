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

/// In-place inverse of an upper triangular matrix (the strictly lower part must be zero and stays so).
/// Recursive split inv([A B; 0 C]) = [A⁻¹, −A⁻¹BC⁻¹; 0, C⁻¹]; B is formed by two triangular solves
/// BEFORE A and C are inverted, so no temporary is needed.
template <typename Scalar>
void invert_upper_inplace(Eigen::Ref<Matrix<Scalar>> T) {
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
  A.template triangularView<Eigen::Upper>().solveInPlace(B);
  C.template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(B);
  B = -B;
  invert_upper_inplace<Scalar>(A);
  invert_upper_inplace<Scalar>(C);
}

/// A → U in place, where A holds a symmetric positive definite matrix (its UPPER triangle is read).
/// Returns false when A is not positive definite in this precision (A is then garbage).
template <typename Scalar>
bool upper_inverse_factor_inplace(Matrix<Scalar>& A) {
  A.reverseInPlace();  // J A J
  {
    Eigen::LLT<Eigen::Ref<Matrix<Scalar>>, Eigen::Lower> llt(A);
    if (llt.info() != Eigen::Success) return false;
  }
  A.template triangularView<Eigen::StrictlyUpper>().setZero();
  A.reverseInPlace();  // V = J L_r J, upper
  invert_upper_inplace<Scalar>(A);
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
                                      const std::vector<bool>& dead, const Damping& damping) {
  SerialEigenScope serial;  // identical factors for any thread count
  const Index n = H.rows();
  FactorResult<FScalar> out;
  double lambda = damping.lambda;
  for (;;) {
    out.lambda_tried.push_back(lambda);
    // Only the upper triangle is filled: the reversal below maps it onto the lower one, which LLT reads.
    out.U.resize(n, n);
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i <= j; ++i) out.U(i, j) = static_cast<FScalar>(H(perm[i], perm[j]));
    for (Index k = 0; k < n; ++k) {
      if (!dead.empty() && dead[perm[k]]) out.U(k, k) = FScalar(1);
      out.U(k, k) += static_cast<FScalar>(lambda);
    }
    if (upper_inverse_factor_inplace(out.U)) {
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
