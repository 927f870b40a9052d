// The measured error of a quantized layer: how far the quantized layer's outputs X̃Qᵀ are from the
// original ones XWᵀ on calibration inputs, per row of W (‖Xw − X̃q‖₂ and ‖Xw − X̃q‖_∞), over the layer
// (Frobenius, largest entry) and relative to ‖XWᵀ‖_F. X̃ = X unless the quantized layer sees other inputs
// (Qronos, GPFQ: docs/theory.md §5). With only the Gram H = h·XᵀX, the l2 figures come from the quadratic
// form (w − q)ᵀH(w − q)/h, and the l∞ ones are unavailable.
//
// The report of bounds.hpp and the command-line tools measure through these functions, so that every
// error pptq prints is computed one way.
//
// The products with X are the cost (m·rows·N each): they run on the backend's GEMM (detail/blas.hpp,
// OpenBLAS when pptq is built with it) over fixed chunks of samples, so the values do not depend on the
// thread count.
#pragma once

#include "common.hpp"
#include "detail/blas.hpp"
#include "detail/kernels.hpp"
#include "detail/memory.hpp"
#include "detail/parallel.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <optional>

namespace pptq {

/// The measured errors of Q against W (E = XWᵀ − X̃Qᵀ, m × rows; X̃ = X when matched).
struct MeasuredErrors {
  Eigen::VectorXd row_l2;       ///< per row of W: ‖Xw − X̃q‖₂ (a column of E)
  Eigen::VectorXd row_linf;     ///< per row of W: ‖Xw − X̃q‖_∞ (empty when only H was given)
  double fro = 0;               ///< ‖E‖_F
  std::optional<double> linf;   ///< largest |entry| of E (needs X)
  double ref_fro = 0;           ///< ‖XWᵀ‖_F
  double rel_fro = 0;           ///< fro / ref_fro (0 when ref_fro = 0)
};

namespace detail {

using ConstMatRef = Eigen::Ref<const Eigen::MatrixXd>;

/// C −= A·Bᵀ (A m × k, B n × k, C m × n) on the backend's GEMM, over fixed chunks of A's rows on all
/// OpenMP threads. The chunks depend on m only, so each entry's arithmetic does not depend on the thread
/// count; Eigen's own threading is off inside (detail/parallel.hpp says why).
inline void sub_abt_by_rows(Eigen::Ref<Eigen::MatrixXd> C, const ConstMatRef& A, const ConstMatRef& B) {
  const int threads = resolve_threads(0);  // before the scope below sets this thread's count to 1
  SerialEigenScope serial;
  for_fixed_chunks(A.rows(), row_chunk(A.rows()), threads, [&](Index i0, Index i1) {
    gemm_sub_abt<double>(C.middleRows(i0, i1 - i0), A.middleRows(i0, i1 - i0), B);
  });
}

/// X Wᵀ (m × rows).
inline Eigen::MatrixXd layer_outputs(const ConstMatRef& X, const ConstMatRef& W) {
  Eigen::MatrixXd Y = zero_on_huge_pages<double>(X.rows(), W.rows());
  sub_abt_by_rows(Y, X, W);  // Y = −XWᵀ
  Y = -Y;                    // exact
  return Y;
}

/// The error matrix E (m × rows): X(W − Q)ᵀ when matched (Xq null; one product of the difference, which
/// keeps the small error free of the cancellation of two large outputs), Y − X̃Qᵀ when mismatched, with
/// Y = XWᵀ given (the mismatched form needs it; the matched one does not read it).
inline Eigen::MatrixXd error_matrix(const ConstMatRef& W, const ConstMatRef& Q, const ConstMatRef& X, const ConstMatRef* Xq,
                                    const Eigen::MatrixXd& Y) {
  if (Xq) {
    Eigen::MatrixXd E = Y;
    sub_abt_by_rows(E, *Xq, Q);
    return E;
  }
  Eigen::MatrixXd E = zero_on_huge_pages<double>(X.rows(), W.rows());
  sub_abt_by_rows(E, X, Q - W);  // E −= X(Q − W)ᵀ, i.e. E = X(W − Q)ᵀ
  return E;
}

/// The figures of an error matrix E (m × rows), given ‖XWᵀ‖_F.
inline MeasuredErrors errors_of(const Eigen::MatrixXd& E, double ref_fro) {
  MeasuredErrors e;
  e.row_l2 = E.colwise().norm().transpose();
  e.row_linf = E.cwiseAbs().colwise().maxCoeff().transpose();
  e.fro = e.row_l2.norm();
  e.linf = e.row_linf.size() ? e.row_linf.maxCoeff() : 0.0;
  e.ref_fro = ref_fro;
  e.rel_fro = ref_fro > 0 ? e.fro / ref_fro : 0.0;
  return e;
}

/// Measured errors on inputs. Y = XWᵀ is computed into Y when Y is empty and reused otherwise (a second
/// Q on the same W and inputs, e.g. RTN's for comparison, costs one product).
inline MeasuredErrors measure_on_inputs(const ConstMatRef& W, const ConstMatRef& Q, const ConstMatRef& X,
                                        const ConstMatRef* Xq, Eigen::MatrixXd& Y) {
  if (Y.size() == 0) Y = layer_outputs(X, W);
  return errors_of(error_matrix(W, Q, X, Xq, Y), Y.norm());
}

/// Per row i: (A_i H A_iᵀ)/h, the squared output norm of row A_i when H = h·XᵀX (not clamped at 0).
/// H is symmetric, so its part above the diagonal blocks of column panels P is never multiplied: each
/// panel takes A_P·H_PP + 2·A_>P·H_>P,P and its dot with A_P, n·(N² + N·panel) FLOPs instead of A·H's
/// 2·n·N², and no n × N product. Fixed chunks of rows on all threads, as sub_abt_by_rows.
inline Eigen::VectorXd quadratic_rows(const ConstMatRef& A, const ConstMatRef& H, double h_scale) {
  constexpr Index kPanel = 256;
  const Index n = A.rows(), N = A.cols();
  Eigen::VectorXd q = Eigen::VectorXd::Zero(n);
  const int threads = resolve_threads(0);
  SerialEigenScope serial;
  for_fixed_chunks(n, row_chunk(n), threads, [&](Index i0, Index i1) {
    const Index r = i1 - i0;
    Eigen::MatrixXd B(r, std::min(kPanel, N));
    for (Index c0 = 0; c0 < N; c0 += kPanel) {
      const Index w = std::min(kPanel, N - c0), c1 = c0 + w;
      auto Bp = B.leftCols(w);
      Bp.setZero();
      if (c1 < N) {
        gemm_acc<double>(Bp, A.block(i0, c1, r, N - c1), H.block(c1, c0, N - c1, w));
        Bp *= 2;  // exact
      }
      gemm_acc<double>(Bp, A.block(i0, c0, r, w), H.block(c0, c0, w, w));
      for (Index i = 0; i < r; ++i) q(i0 + i) += Bp.row(i).dot(A.row(i0 + i).segment(c0, w));
    }
  });
  return q / h_scale;
}

/// Per row ‖X(w − q)‖₂ from H = h·XᵀX (rounding can make the form slightly negative: clamped at 0).
inline Eigen::VectorXd gram_error_rows(const ConstMatRef& W, const ConstMatRef& Q, const ConstMatRef& H, double h_scale) {
  return quadratic_rows(W - Q, H, h_scale).cwiseMax(0.0).cwiseSqrt();
}

/// Measured errors from H = h·XᵀX only: no l∞ figures.
inline MeasuredErrors measure_on_gram(const ConstMatRef& W, const ConstMatRef& Q, const ConstMatRef& H, double h_scale) {
  MeasuredErrors e;
  e.row_l2 = gram_error_rows(W, Q, H, h_scale);
  e.fro = e.row_l2.norm();
  e.ref_fro = std::sqrt(std::max(0.0, quadratic_rows(W, H, h_scale).sum()));
  e.rel_fro = e.ref_fro > 0 ? e.fro / e.ref_fro : 0.0;
  return e;
}

/// W and Q (rows × N) of one shape, finite, non-empty; `inputs` has N columns.
inline void require_measurable(const ConstMatRef& W, const ConstMatRef& Q, Index input_cols, const char* inputs) {
  require_nonempty(W, "W");
  if (Q.rows() != W.rows() || Q.cols() != W.cols())
    fail("measure_errors: Q is " + str(Q.rows()) + " x " + str(Q.cols()) + " but W is " + str(W.rows()) + " x " +
         str(W.cols()));
  if (input_cols != W.cols())
    fail("measure_errors: " + std::string(inputs) + " has " + str(input_cols) + " columns but W has " + str(W.cols()));
  require_finite(W, "W");
  require_finite(Q, "Q");
}

}  // namespace detail

/// Errors of Q against W on inputs X (m × N): E = X(W − Q)ᵀ.
template <typename DerivedW, typename DerivedQ, typename DerivedX>
MeasuredErrors measure_errors(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedQ>& Q,
                              const Eigen::MatrixBase<DerivedX>& X) {
  const detail::ConstMatRef Wd(W.derived().template cast<double>());
  const detail::ConstMatRef Qd(Q.derived().template cast<double>());
  const detail::ConstMatRef Xd(X.derived().template cast<double>());
  detail::require_measurable(Wd, Qd, Xd.cols(), "X");
  detail::require_nonempty(Xd, "X");
  detail::require_finite(Xd, "X");
  Eigen::MatrixXd Y;
  return detail::measure_on_inputs(Wd, Qd, Xd, nullptr, Y);
}

/// Mismatched: the quantized layer sees X̃ = Xq (same shape as X): E = XWᵀ − X̃Qᵀ.
template <typename DerivedW, typename DerivedQ, typename DerivedX, typename DerivedXq>
MeasuredErrors measure_errors(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedQ>& Q,
                              const Eigen::MatrixBase<DerivedX>& X, const Eigen::MatrixBase<DerivedXq>& Xq) {
  const detail::ConstMatRef Wd(W.derived().template cast<double>());
  const detail::ConstMatRef Qd(Q.derived().template cast<double>());
  const detail::ConstMatRef Xd(X.derived().template cast<double>());
  const detail::ConstMatRef Xqd(Xq.derived().template cast<double>());
  detail::require_measurable(Wd, Qd, Xd.cols(), "X");
  detail::require_nonempty(Xd, "X");
  if (Xqd.rows() != Xd.rows() || Xqd.cols() != Xd.cols())
    detail::fail("measure_errors: Xq is " + detail::str(Xqd.rows()) + " x " + detail::str(Xqd.cols()) + " but X is " +
                 detail::str(Xd.rows()) + " x " + detail::str(Xd.cols()) + " (same samples, same columns)");
  detail::require_finite(Xd, "X");
  detail::require_finite(Xqd, "Xq");
  Eigen::MatrixXd Y;
  return detail::measure_on_inputs(Wd, Qd, Xd, &Xqd, Y);
}

/// From the Gram H = h_scale·XᵀX (N × N) only: the l2 figures; `linf` and `row_linf` are empty.
template <typename DerivedW, typename DerivedQ, typename DerivedH>
MeasuredErrors measure_errors_gram(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedQ>& Q,
                                   const Eigen::MatrixBase<DerivedH>& H, double h_scale = 1.0) {
  const detail::ConstMatRef Wd(W.derived().template cast<double>());
  const detail::ConstMatRef Qd(Q.derived().template cast<double>());
  const detail::ConstMatRef Hd(H.derived().template cast<double>());
  detail::require_measurable(Wd, Qd, Hd.cols(), "H");
  detail::require_gram(Hd, Wd.cols(), "H");
  if (!(h_scale > 0) || !std::isfinite(h_scale))
    detail::fail("measure_errors_gram: h_scale must be > 0 and finite, got " + detail::str(h_scale));
  return detail::measure_on_gram(Wd, Qd, Hd, h_scale);
}

}  // namespace pptq
