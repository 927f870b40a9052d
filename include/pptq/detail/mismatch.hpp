// Pieces shared by the methods of the mismatched problem min ‖Xw − X̃q‖ (Qronos, GPFQ; docs/theory.md §5, §8):
// validation of the two Gram matrices, λ_max by power iteration, and row-parallel products with W.
#pragma once

#include "../common.hpp"
#include "parallel.hpp"
#include "kernels.hpp"
#include "philox.hpp"

#include <vector>

namespace pptq::detail {

/// H̃ (X̃ᵀX̃, symmetric) and G (X̃ᵀX) must both be cols × cols and finite.
template <typename DH, typename DG>
void require_cross_grams(const Eigen::MatrixBase<DH>& Ht, const Eigen::MatrixBase<DG>& G, Index cols,
                         bool ht_lower_only = false, int threads = 0) {
  require_gram(Ht, cols, "Htilde (Xq^T Xq)", ht_lower_only, threads);
  if (G.rows() != cols || G.cols() != cols)
    fail("G (Xq^T X) is " + str(G.rows()) + " x " + str(G.cols()) + " but W has " + str(cols) +
         " columns (G must be cols x cols)");
  require_finite(G, "G (Xq^T X)", 0, 0, threads);
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

/// y = H·b for a symmetric H given by its lower triangle, over fixed column panels on all threads: each
/// lower entry is read once and used twice (the power iteration is bound by reading H). A panel's own
/// rows of y are its own; its contributions below it are kept apart and added in panel order after, so
/// the sum is the same for any thread count. The products run in H's scalar (no N × N cast of a float H).
template <typename Scalar>
void symmetric_lower_times(const Eigen::Ref<const Matrix<Scalar>>& H, const Eigen::VectorXd& b, Eigen::VectorXd& y,
                           int threads) {
  const Index n = H.rows();
  constexpr Index panel = 256;
  const Index panels = (n + panel - 1) / panel;
  const Vector<Scalar> bs = b.template cast<Scalar>();
  std::vector<Vector<Scalar>> below(static_cast<std::size_t>(panels));
  y.resize(n);
  SerialEigenScope serial;
  for_fixed_chunks(panels, 1, threads, [&](Index t, Index) {
    const Index c0 = t * panel, c1 = std::min(n, c0 + panel), w = c1 - c0;
    const auto P = H.block(c1, c0, n - c1, w);  // the panel's part below its diagonal block
    Vector<Scalar> own = H.block(c0, c0, w, w).template selfadjointView<Eigen::Lower>() * bs.segment(c0, w);
    own.noalias() += P.transpose() * bs.tail(n - c1);
    y.segment(c0, w) = own.template cast<double>();
    below[static_cast<std::size_t>(t)].noalias() = P * bs.segment(c0, w);
  });
  for (Index t = 0; t < panels; ++t) {
    const Index c1 = std::min(n, (t + 1) * panel);
    y.tail(n - c1) += below[static_cast<std::size_t>(t)].template cast<double>();
  }
}

/// λ_max of a symmetric positive semidefinite matrix by power iteration from a seeded start (docs/theory.md §5.3
/// step 2: 30 steps, then the Rayleigh quotient). Deterministic: the start comes from Philox, not from
/// a global generator. Stops early once the Rayleigh quotient has settled to 1e-7 relative (λ = α·λ_max
/// needs λ_max to a few digits at most). Only H's lower triangle is read.
template <typename Scalar>
double lambda_max_power(const Eigen::Ref<const Matrix<Scalar>>& H, int iterations, int threads = 1) {
  const Index n = H.rows();
  Eigen::VectorXd b(n);
  for (Index j = 0; j < n; ++j) b(j) = 0.5 + rounding_uniform(0x51a2b3c4d5e6f708ULL, 0, static_cast<std::uint64_t>(j), 7);
  b.normalize();
  Eigen::VectorXd hb;
  double rq = 0;
  for (int it = 0; it < iterations; ++it) {
    symmetric_lower_times(H, b, hb, threads);
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
  symmetric_lower_times(H, b, hb, threads);
  return b.dot(hb);
}

/// out(i, k) = f(perm[k], i): a transposed row gather of an implicit matrix M = f (for a column-major M,
/// row p is a strided read). By blocks of 16 rows of out, i.e. 16 columns of M, which stay in cache
/// while k runs over the whole order; all threads (each entry is written once: any thread count).
template <typename OutScalar, typename F>
void gather_rows_transposed(Matrix<OutScalar>& out, const std::vector<Index>& perm, int threads, F&& f) {
  const Index m = out.rows(), K = static_cast<Index>(perm.size());
  for_fixed_chunks(m, 16, threads, [&](Index i0, Index i1) {
    for (Index k = 0; k < K; ++k) {
      const Index p = perm[k];
      for (Index i = i0; i < i1; ++i) out(i, k) = static_cast<OutScalar>(f(p, i));
    }
  });
}

/// out = A · B for a rows × N matrix A, computed over pptq's fixed row chunks (serial Eigen inside each):
/// all threads, and the same bits for any thread count (Eigen's own GEMM threading changes its blocking).
template <typename OutScalar, typename DA, typename F>
Matrix<OutScalar> rowwise_product(const Eigen::MatrixBase<DA>& A, Index out_cols, int threads, F&& chunk_product) {
  Matrix<OutScalar> out(A.rows(), out_cols);
  for_row_chunks(A.rows(), resolve_threads(threads), [&](Index r0, Index r1) {
    out.middleRows(r0, r1 - r0) = chunk_product(r0, r1);
  });
  return out;
}

}  // namespace pptq::detail
