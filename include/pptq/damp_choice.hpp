// The damping chosen for new data (docs/theory.md §3.5): run a quantizer at several damp values on the
// calibration Gram and keep the one whose result has the smallest error on held-out inputs. The error on
// inputs X_test of a quantized W is ‖X_test(W − Q)ᵀ‖_F² = tr((W − Q) H_test (W − Q)ᵀ) with H_test = X_testᵀX_test,
// so a held-out Gram is all it needs: the held-out inputs may be a split of the calibration samples or the
// Gram of other text. The quantizer is the caller's (a plain grid through optq, a llama.cpp format through
// ggml::quantize_optq, stochastic rounding...): the choice judges its output, not its algorithm.
#pragma once

#include "common.hpp"
#include "measure.hpp"

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace pptq {

/// One candidate: damp, the λ it gave, and ‖X(W − Q)ᵀ‖_F on the calibration and on the held-out inputs
/// (Frobenius norms on the scale of the Grams given; infinity when the quantizer failed at this damp).
struct DampPoint {
  double damp = 0, lambda = 0;
  double calibration = 0, heldout = 0;
};

/// The candidates in the order tried and the one with the smallest held-out error (the first of equals).
struct DampChoice {
  std::vector<DampPoint> points;
  Index best = -1;
  double damp = 0, lambda = 0;
};

/// The damp values tried when none are given: two per decade from 0.001 to 1, around GPTQ's 0.01 and the
/// formats' 0.1 (docs/formats.md §4.2: on a wide real layer with about two samples per column, 0.01 lost
/// the held-out gain that 0.1 kept; a layer with many samples per column wants less damping).
inline std::vector<double> default_damps() { return {0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0}; }

/// Runs `quantize(damp)` for every damp in `damps` and measures each result on the calibration Gram H and
/// the held-out Gram H_test (both cols × cols, symmetric positive semidefinite, any common scale).
/// `quantize(damp)` returns a struct with `ok` (bool), `lambda` (the λ it used) and `Q` (the dequantized
/// rows × cols weights); a result that is not ok scores infinity. UsageError on an empty or invalid damp
/// list, shapes that do not match, or a non-finite Gram; NumericalError when no damp gave a result.
template <typename DerivedW, typename Quantize>
DampChoice choose_damp(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixXd& H, const Eigen::MatrixXd& H_test,
                       const std::vector<double>& damps, Quantize&& quantize) {
  if (damps.empty()) detail::fail("choose_damp: the list of damp values is empty");
  for (double d : damps)
    if (!(d >= 0) || !std::isfinite(d)) detail::fail("choose_damp: every damp must be >= 0 and finite, got " + detail::str(d));
  if (H.rows() != W.cols() || H.cols() != W.cols() || H_test.rows() != W.cols() || H_test.cols() != W.cols())
    detail::fail("choose_damp: W has " + detail::str(W.cols()) + " columns but H is " + detail::str(H.rows()) + " x " +
                 detail::str(H.cols()) + " and H_test " + detail::str(H_test.rows()) + " x " + detail::str(H_test.cols()));
  DampChoice c;
  double best = std::numeric_limits<double>::infinity();
  for (double d : damps) {
    const auto r = quantize(d);
    DampPoint p;
    p.damp = d;
    p.lambda = r.lambda;
    p.calibration = p.heldout = std::numeric_limits<double>::infinity();
    if (r.ok) {
      p.calibration = measure_errors_gram(W, r.Q, H).fro;
      p.heldout = measure_errors_gram(W, r.Q, H_test).fro;
    }
    if (p.heldout < best) {
      best = p.heldout;
      c.best = static_cast<Index>(c.points.size());
    }
    c.points.push_back(p);
  }
  if (c.best < 0) throw NumericalError("choose_damp: the quantizer failed at every damp value tried");
  c.damp = c.points[static_cast<std::size_t>(c.best)].damp;
  c.lambda = c.points[static_cast<std::size_t>(c.best)].lambda;
  return c;
}

}  // namespace pptq
