// Pieces shared by the methods of the mismatched problem min ‖Xw − X̃q‖ (Qronos, GPFQ; spec §5, §8):
// validation of the two Gram matrices, λ_max by power iteration, and row-parallel products with W.
#pragma once

#include "../common.hpp"
#include "parallel.hpp"
#include "philox.hpp"

#include <vector>

namespace pptq::detail {

/// H̃ (X̃ᵀX̃, symmetric) and G (X̃ᵀX) must both be cols × cols and finite.
template <typename DH, typename DG>
void require_cross_grams(const Eigen::MatrixBase<DH>& Ht, const Eigen::MatrixBase<DG>& G, Index cols) {
  require_gram(Ht, cols, "Htilde (Xq^T Xq)");
  if (G.rows() != cols || G.cols() != cols)
    fail("G (Xq^T X) is " + str(G.rows()) + " x " + str(G.cols()) + " but W has " + str(cols) +
         " columns (G must be cols x cols)");
  require_finite(G, "G (Xq^T X)");
}

/// X and X̃ must have W's columns and the same samples.
template <typename DX, typename DXq>
void require_mismatched_inputs(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DXq>& Xq, Index cols) {
  require_nonempty(X, "X");
  require_nonempty(Xq, "Xq");
  if (X.cols() != cols)
    fail("X is " + str(X.rows()) + " x " + str(X.cols()) + " but W has " + str(cols) + " columns (X must be samples x cols)");
  if (Xq.rows() != X.rows() || Xq.cols() != X.cols())
    fail("Xq is " + str(Xq.rows()) + " x " + str(Xq.cols()) + " but X is " + str(X.rows()) + " x " + str(X.cols()) +
         " (the quantized-model inputs must be the same samples and columns)");
}

/// λ_max of a symmetric positive semidefinite matrix by power iteration from a seeded start (spec §5.3
/// step 2: 30 steps, then the Rayleigh quotient). Deterministic: the start comes from Philox, not from
/// a global generator. Stops early once the Rayleigh quotient has settled to 1e-7 relative (λ = α·λ_max
/// needs λ_max to a few digits at most).
template <typename Scalar>
double lambda_max_power(const Eigen::Ref<const Matrix<Scalar>>& H, int iterations) {
  const Index n = H.rows();
  Eigen::VectorXd b(n);
  for (Index j = 0; j < n; ++j) b(j) = 0.5 + rounding_uniform(0x51a2b3c4d5e6f708ULL, 0, static_cast<std::uint64_t>(j), 7);
  b.normalize();
  const Eigen::Ref<const Matrix<double>> Hd(H.template cast<double>());  // no copy when H is double
  double rq = 0;
  for (int it = 0; it < iterations; ++it) {
    Eigen::VectorXd hb = Hd.template selfadjointView<Eigen::Lower>() * b;
    const double next = b.dot(hb);
    const double nrm = hb.norm();
    if (!(nrm > 0)) return 0;  // H b = 0: H is zero on the start's span (all-dead X̃)
    b = hb / nrm;
    if (it > 0 && std::abs(next - rq) <= 1e-7 * std::abs(next)) {
      rq = next;
      break;
    }
    rq = next;
  }
  Eigen::VectorXd hb = Hd.template selfadjointView<Eigen::Lower>() * b;
  return b.dot(hb);
}

/// out = A · B for a rows × N matrix A, computed over pptq's fixed row chunks (serial Eigen inside each):
/// both cores, and the same bits for any thread count (Eigen's own GEMM threading changes its blocking).
template <typename OutScalar, typename DA, typename F>
Matrix<OutScalar> rowwise_product(const Eigen::MatrixBase<DA>& A, Index out_cols, int threads, F&& chunk_product) {
  Matrix<OutScalar> out(A.rows(), out_cols);
  for_row_chunks(A.rows(), resolve_threads(threads), [&](Index r0, Index r1) {
    out.middleRows(r0, r1 - r0) = chunk_product(r0, r1);
  });
  return out;
}

}  // namespace pptq::detail
