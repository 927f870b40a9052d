// λ guidance (docs/theory.md §3.5): a tuning driver, not a bound. It runs OPTQ at several λ and sets the
// layer l2 bound of bounds.hpp (or the error on held-out inputs) against λ. The constants pull in
// opposite directions as λ grows: C2² gets an Nλ floor while the drift constant Cw and C2/√λ shrink, so
// the bound has a minimum in between; the held-out error is the better judge when such data exists.
#pragma once

#include "bounds.hpp"
#include "common.hpp"
#include "grid.hpp"
#include "measure.hpp"
#include "optq.hpp"

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace pptq {

struct LambdaPoint {
  double c = 0, lambda = 0;
  double C2 = 0, Cw = 0;
  std::optional<double> bound;    ///< layer l2 bound (null when clipping made it inapplicable)
  double measured = 0;            ///< ‖X(W − Q)ᵀ‖_F on the calibration X
  std::optional<double> heldout;  ///< ‖X_test(W − Q)ᵀ‖_F
  Index clipped = 0;
};

struct LambdaGuide {
  std::vector<LambdaPoint> points;
  Index best = -1;                ///< index into points
  double lambda = 0, c = 0;       ///< the recommendation
  std::string rule;
};

namespace detail {

inline void check_sweep_inputs(Index w_cols, const ConstMatRef& X, const ConstMatRef* Xtest, const std::vector<double>& cs) {
  for (double c : cs)
    if (!(c > 0) || !std::isfinite(c)) fail("lambda_sweep: every c must be > 0 and finite, got " + str(c));
  require_nonempty(X, "X");
  require_finite(X, "X");
  if (X.cols() != w_cols) fail("lambda_sweep: X has " + str(X.cols()) + " columns but W has " + str(w_cols));
  if (Xtest) {
    if (Xtest->cols() != w_cols) fail("lambda_sweep: X_test has " + str(Xtest->cols()) + " columns but W has " + str(w_cols));
    require_finite(*Xtest, "X_test");
  }
}

/// One point of the sweep: OPTQ at opt.lambda, its constants, bound and errors.
template <typename DerivedW>
LambdaPoint lambda_point(const Eigen::MatrixBase<DerivedW>& W, const ConstMatRef& Wd, const ConstMatRef& X,
                         const ConstMatRef* Xtest, const Eigen::MatrixXd& H, const GridSpec& grid, const OptqOptions& opt,
                         double c) {
  const auto r = optq(W, H, grid, opt);
  LambdaPoint p;
  p.c = c;
  p.lambda = *opt.lambda;
  p.clipped = r.clipped_total();
  if (!r.ok()) {
    p.measured = std::numeric_limits<double>::infinity();
    return p;
  }
  const LayerReport rep = layer_report(r, W, X);
  p.C2 = rep.constants->C2;
  p.Cw = rep.constants->Cw;
  p.bound = rep.l2.bound;
  p.measured = rep.err_fro;
  if (Xtest) {
    const Eigen::MatrixXd Q = r.dequantized.template cast<double>();
    p.heldout = error_matrix(Wd, Q, *Xtest, nullptr, Eigen::MatrixXd()).norm();  // matched: XWᵀ not needed
  }
  return p;
}

/// The recommendation: the smallest held-out error when there is held-out data, else the smallest
/// layer l2 bound, else (clipping at every λ) the smallest calibration error.
inline void pick_lambda(LambdaGuide& g, bool heldout) {
  auto score = [&](const LambdaPoint& p) -> double {
    if (heldout) return p.heldout ? *p.heldout : std::numeric_limits<double>::infinity();
    return p.bound ? *p.bound : std::numeric_limits<double>::infinity();
  };
  double best = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < g.points.size(); ++i)
    if (score(g.points[i]) < best) {
      best = score(g.points[i]);
      g.best = static_cast<Index>(i);
    }
  if (heldout) {
    g.rule = "smallest held-out error ||X_test (W - Q)^T||_F";
  } else if (g.best >= 0) {
    g.rule = "smallest layer l2 bound sqrt(sum_rows row_bound^2) (no held-out data given)";
  } else {
    g.rule = "no bound applicable (clipping at every lambda): smallest calibration error";
    for (std::size_t i = 0; i < g.points.size(); ++i)
      if (g.best < 0 || g.points[i].measured < g.points[g.best].measured) g.best = static_cast<Index>(i);
  }
  g.lambda = g.points[g.best].lambda;
  g.c = g.points[g.best].c;
}

template <typename DerivedW>
LambdaGuide lambda_sweep_impl(const Eigen::MatrixBase<DerivedW>& W, const ConstMatRef& X, const ConstMatRef* Xtest,
                              const GridSpec& grid, OptqOptions opt, std::vector<double> cs) {
  if (cs.empty()) cs = {1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  check_sweep_inputs(W.cols(), X, Xtest, cs);
  const Eigen::MatrixXd H = gram_of(X);
  const double base = X.squaredNorm() / static_cast<double>(X.cols());
  const ConstMatRef Wd(W.derived().template cast<double>());
  opt.keep_factor = true;
  opt.escalate_damping = false;
  LambdaGuide g;
  for (double c : cs) {
    opt.lambda = c * base;
    g.points.push_back(lambda_point(W, Wd, X, Xtest, H, grid, opt, c));
  }
  pick_lambda(g, Xtest != nullptr);
  return g;
}

}  // namespace detail

/// Sweep λ = c·‖X‖_F²/N over `cs` (default 1e-4, 1e-3, 1e-2, 0.1, 1), running OPTQ (opt's other fields kept)
/// for each; recommend the smallest layer l2 bound.
template <typename DerivedW, typename DerivedX>
LambdaGuide lambda_sweep(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X, const GridSpec& grid,
                         const OptqOptions& opt = {}, const std::vector<double>& cs = {}) {
  const detail::ConstMatRef Xd(X.derived().template cast<double>());
  return detail::lambda_sweep_impl(W, Xd, nullptr, grid, opt, cs);
}

/// As above with held-out inputs: recommend the smallest held-out error ‖X_test(W − Q)ᵀ‖_F.
template <typename DerivedW, typename DerivedX, typename DerivedT>
LambdaGuide lambda_sweep(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                         const Eigen::MatrixBase<DerivedT>& X_test, const GridSpec& grid, const OptqOptions& opt = {},
                         const std::vector<double>& cs = {}) {
  const detail::ConstMatRef Xd(X.derived().template cast<double>());
  const detail::ConstMatRef Td(X_test.derived().template cast<double>());
  return detail::lambda_sweep_impl(W, Xd, &Td, grid, opt, cs);
}

}  // namespace pptq
