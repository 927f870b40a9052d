// OPTQ (= GPTQ), deterministic and stochastic (docs/theory.md §2, §4, §7; arXiv 2210.17323, 2508.04853).
#pragma once

#include "common.hpp"
#include "detail/factor.hpp"
#include "detail/prepare.hpp"
#include "detail/stopwatch.hpp"
#include "detail/sweep.hpp"
#include "gram.hpp"
#include "grid.hpp"
#include "options.hpp"
#include "result.hpp"

#include <algorithm>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <vector>

namespace pptq {

/// Options of OPTQ. Defaults are the GPTQ reference's (docs/theory.md §7) except act_order, which pptq
/// turns on: ordering columns by decreasing norm lowers the error bound C2 (docs/theory.md §3.3).
struct OptqOptions : SweepOptions, DampingOptions {
  double damp = 0.01;  ///< λ = damp · mean(diag(H)) (GPTQ's percdamp), unless DampingOptions::lambda is set
  /// W is this block of a layer's rows (options.hpp: the pieces of a layer split across processes are
  /// bit-identical to the whole-layer call, pptq/mpi.hpp); the default is the whole layer.
  RowBlock row_block;

  void check() const {
    SweepOptions::check("OptqOptions");
    DampingOptions::check("OptqOptions");
    detail::check_damp("OptqOptions", damp);
  }
};

namespace detail {

/// OPTQ onto the grid argument (a spec to fit, or a fitted grid). h_lower_only: H is an
/// accumulator's lower triangle (its strict upper part is not read). consume: H's own matrix, given up by
/// the caller; the factor is computed in its storage (no second N × N buffer).
template <typename DerivedW, typename DerivedH>
QuantResult<typename DerivedW::Scalar> optq_impl(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                                 const GridArg<typename DerivedW::Scalar>& grid, const OptqOptions& opt,
                                                 bool h_lower_only = false,
                                                 Matrix<typename DerivedH::Scalar>* consume = nullptr) {
  using Scalar = typename DerivedW::Scalar;
  using FScalar = typename DerivedH::Scalar;
  static_assert(std::is_floating_point_v<Scalar> && std::is_floating_point_v<FScalar>, "pptq: W and H must be float or double");
  opt.check();
  const detail::Stopwatch total;
  // Bind (or evaluate, for expressions such as X.transpose() * X) once: no copy of a plain matrix.
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Eigen::Ref<const Matrix<FScalar>> Hm(H.derived());
  detail::require_nonempty(W0, "W");
  opt.row_block.check("OptqOptions", W0.rows());
  detail::require_finite(W0, "W", 0, 0, opt.threads);
  detail::require_gram(Hm, W0.cols(), "H", h_lower_only, opt.threads);

  // Dead columns (docs/theory.md §7 step 3): diag(H) == 0 → H_ii = 1, W[:, i] = 0.
  const detail::ColumnPlan plan = detail::plan_columns(Hm, opt.act_order, opt.order);
  const std::vector<bool>& dead = plan.dead;
  const Eigen::VectorXd& diag = plan.diag;
  const std::vector<Index>& perm = plan.perm;
  QuantResult<Scalar> r = detail::start_result<QuantResult<Scalar>>(Method::OPTQ, opt.rounding, opt.seed, perm);
  r.grid = detail::grid_for(grid, W0, perm, dead, opt.threads);

  const detail::Damping damping = detail::damping_policy(diag.mean(), opt.damp, opt.lambda, opt.escalate_damping,
                                                         opt.escalation_factor, opt.max_damp);
  const detail::Stopwatch factor_time;
  auto f = consume ? detail::factor_permuted_consuming<FScalar>(std::move(*consume), perm, dead, damping, opt.threads, h_lower_only)
                   : detail::factor_permuted<FScalar>(Hm, perm, dead, damping, opt.threads, h_lower_only);
  r.seconds.factor = factor_time.seconds();
  detail::attach_factor(r, f);
  if (f.status == Status::NumericalIssue) return r;
  const auto F = detail::make_sweep_factor<Scalar>(std::move(f), opt.threads);

  detail::SweepInput<Scalar> in = detail::sweep_input(W0, perm, F.get(), opt);
  in.zero_cols = &dead;
  in.row_offset = opt.row_block.offset;
  in.chunk = opt.row_block.chunk(W0.rows());
  detail::attach_sweep(r, detail::sweep(in, r.grid), F, opt.keep_factor);
  r.seconds.sweep = total.seconds() - r.seconds.factor;
  return r;
}

}  // namespace detail

// The entry points: one per input form and ownership, each for a GridSpec or a fitted Grid (GridArg).
// Handing H or a Gram over (std::move) lets the factor be computed in its own storage: one N × N
// matrix instead of two, bit-identical results, the argument left empty (tests/test_optq.cpp).

/// OPTQ of W (rows × cols) given H (cols × cols, any positive multiple of XᵀX; λ is on H's scale).
/// The factor is computed in H's scalar type, the sweep in W's.
template <typename DerivedW, typename DerivedH>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                            const GridArg<typename DerivedW::Scalar>& grid, const OptqOptions& opt = {}) {
  return detail::optq_impl(W, H, grid, opt);
}

/// OPTQ consuming H (`optq(W, std::move(H), grid)`): H is left empty, whatever happens.
template <typename DerivedW, typename FScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, Matrix<FScalar>&& H,
                                            const GridArg<typename DerivedW::Scalar>& grid, const OptqOptions& opt = {}) {
  Matrix<FScalar> h = std::move(H);
  return detail::optq_impl(W, h, grid, opt, false, &h);
}

/// OPTQ from a streaming Gram accumulator (H = XᵀX of all batches added).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, const Gram<GScalar>& gram,
                                            const GridArg<typename DerivedW::Scalar>& grid, const OptqOptions& opt = {}) {
  gram.require_samples("optq");
  return detail::optq_impl(W, gram.lower(), grid, opt, true);
}

/// OPTQ consuming a Gram accumulator (`optq(W, std::move(gram), grid)`): the accumulator is left
/// empty (0 samples), whatever happens.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, Gram<GScalar>&& gram,
                                            const GridArg<typename DerivedW::Scalar>& grid, const OptqOptions& opt = {}) {
  gram.require_samples("optq");
  Matrix<GScalar> h = std::move(gram).release();
  return detail::optq_impl(W, h, grid, opt, true, &h);
}

}  // namespace pptq
