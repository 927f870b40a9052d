// GPTQ's upper factor U of a result: (H_π + λI)⁻¹ = UᵀU (docs/theory.md §2), from the factor the sweep
// kept. The sweep never forms U (its left-looking form works with V = U⁻¹, detail/sweep.hpp); the bounds
// need it (docs/theory.md §3), so it is computed on demand, N³/3 FLOPs, never by a second factorization.
#pragma once

#include "common.hpp"
#include "detail/factor.hpp"
#include "detail/memory.hpp"
#include "result.hpp"

namespace pptq {

/// U = V⁻¹ = diag(Ltt)·S⁻¹ in double, sweep order, where the result kept S (unit upper) and Ltt.
/// Throws UsageError when the result holds no factor (RTN, GPFQ, or keep_factor = false).
template <typename Scalar>
Eigen::MatrixXd inverse_factor(const QuantResult<Scalar>& r) {
  if (!r.factor) detail::fail("the result holds no factor (RTN/GPFQ, or keep_factor = false)");
  Eigen::MatrixXd U = detail::on_huge_pages<double>(r.factor->rows(), r.factor->cols());
  U = r.factor->template cast<double>().template triangularView<Eigen::UnitUpper>();  // zeros below
  {
    const int threads = U.rows() < 1024 ? 1 : detail::resolve_threads(0);  // before the scope sets it to 1
    detail::SerialEigenScope serial;
    detail::invert_upper_inplace<double>(U, threads);
  }
  U = r.Ltt.asDiagonal() * U;  // row t times L_tt, a column at a time (U is column-major)
  return U;
}

}  // namespace pptq
