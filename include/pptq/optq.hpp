// OPTQ (= GPTQ), deterministic and stochastic (spec §2, §4, §7).
#pragma once

#include "common.hpp"
#include "detail/factor.hpp"
#include "detail/prepare.hpp"
#include "detail/sweep.hpp"
#include "gram.hpp"
#include "grid.hpp"
#include "result.hpp"

#include <algorithm>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <vector>

namespace pptq {

/// Options of OPTQ. Defaults are the GPTQ reference's (spec §7) except act_order, which pptq turns on:
/// ordering columns by decreasing norm lowers the error bound C2 (spec §3.3).
struct OptqOptions {
  double damp = 0.01;             ///< λ = damp · mean(diag(H)) (GPTQ's percdamp)
  std::optional<double> lambda;   ///< absolute λ on the scale of H; overrides damp when set
  bool act_order = true;          ///< sweep columns by decreasing diag(H) (stable for ties)
  std::vector<Index> order;       ///< custom sweep order (perm[k] = original column); overrides act_order
  /// Lazy-batch block size B: a performance knob only (any B ≥ 1 gives the same result in exact
  /// arithmetic). GPTQ uses 128; pptq's left-looking sweep repacks the swept columns once per block, and
  /// inside a block it already works in pieces of 128 and 16 columns (detail/sweep.hpp), so larger blocks
  /// cost less: the 4096² sweep 0.539 → 0.514 s, 11008 columns 3.66 → 3.40 s (B 128 → 1024, medians).
  Index block_size = 1024;
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;         ///< stochastic rounding: the key of the counter-based generator
  int threads = 0;                ///< 0: all OpenMP threads; results are identical for any count
  bool escalate_damping = true;   ///< raise λ ×escalation_factor while H + λI is not positive definite
  double escalation_factor = 10;
  double max_damp = 1.0;          ///< escalation cap: λ ≤ max(max_damp · mean(diag H), requested λ)
  bool keep_factor = true;        ///< keep the factor in the result (the bound module reuses it: no second factorization)
  std::function<void(double)> progress;  ///< called with the fraction of the sweep done (from the calling thread)

  void check() const {
    if (!(damp >= 0) || !std::isfinite(damp)) detail::fail("OptqOptions.damp must be >= 0 and finite, got " + detail::str(damp));
    if (lambda && (!(*lambda >= 0) || !std::isfinite(*lambda)))
      detail::fail("OptqOptions.lambda must be >= 0 and finite, got " + detail::str(*lambda));
    if (block_size < 1) detail::fail("OptqOptions.block_size must be >= 1, got " + detail::str(block_size));
    if (threads < 0) detail::fail("OptqOptions.threads must be >= 0 (0 = all), got " + detail::str(threads));
    if (!(escalation_factor > 1)) detail::fail("OptqOptions.escalation_factor must be > 1, got " + detail::str(escalation_factor));
    if (!(max_damp > 0)) detail::fail("OptqOptions.max_damp must be > 0, got " + detail::str(max_damp));
  }
};


namespace detail {

/// OPTQ with either a grid to fit (spec) or a grid fitted by the caller (fitted). h_lower_only: H is an
/// accumulator's lower triangle (its strict upper part is not read). consume: H's own matrix, given up by
/// the caller; the factor is computed in its storage (no second N × N buffer).
template <typename DerivedW, typename DerivedH>
QuantResult<typename DerivedW::Scalar> optq_impl(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                                 const GridSpec* spec, const Grid<typename DerivedW::Scalar>* fitted,
                                                 const OptqOptions& opt, bool h_lower_only = false,
                                                 Matrix<typename DerivedH::Scalar>* consume = nullptr) {
  using Scalar = typename DerivedW::Scalar;
  using FScalar = typename DerivedH::Scalar;
  static_assert(std::is_floating_point_v<Scalar> && std::is_floating_point_v<FScalar>, "pptq: W and H must be float or double");
  opt.check();
  if (spec) spec->check();
  // Bind (or evaluate, for expressions such as X.transpose() * X) once: no copy of a plain matrix.
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Eigen::Ref<const Matrix<FScalar>> Hm(H.derived());
  detail::require_nonempty(W0, "W");
  detail::require_finite(W0, "W", 0, 0, opt.threads);
  detail::require_gram(Hm, W0.cols(), "H", h_lower_only, opt.threads);
  const Index cols = W0.cols();
  if (fitted) fitted->check(W0.rows(), cols);

  // Dead columns (spec §7 step 3): diag(H) == 0 → H_ii = 1, W[:, i] = 0.
  const detail::ColumnPlan plan = detail::plan_columns(Hm, opt.act_order, opt.order);
  const std::vector<bool>& dead = plan.dead;
  const Eigen::VectorXd& diag = plan.diag;
  const std::vector<Index>& perm = plan.perm;
  QuantResult<Scalar> r = detail::start_result<Scalar>(Method::OPTQ, opt.rounding, opt.seed, perm);
  r.grid = fitted ? *fitted : fit_grid(W0, *spec, perm, dead, opt.threads);

  const detail::Damping damping = detail::damping_policy(diag.mean(), opt.damp, opt.lambda, opt.escalate_damping,
                                                         opt.escalation_factor, opt.max_damp);
  auto f = consume ? detail::factor_permuted_consuming<FScalar>(std::move(*consume), perm, dead, damping, opt.threads, h_lower_only)
                   : detail::factor_permuted<FScalar>(Hm, perm, dead, damping, opt.threads, h_lower_only);
  detail::attach_factor(r, f);
  if (f.status == Status::NumericalIssue) return r;
  const auto F = detail::make_sweep_factor<Scalar>(std::move(f), opt.threads);

  detail::SweepInput<Scalar> in = detail::sweep_input(W0, perm, F.get(), opt);
  in.zero_cols = &dead;
  detail::attach_sweep(r, detail::sweep(in, r.grid), F, opt.keep_factor);
  return r;
}

}  // namespace detail

/// OPTQ of W (rows × cols) given H (cols × cols, any positive multiple of XᵀX; λ is on H's scale).
/// The factor is computed in H's scalar type, the sweep in W's.
template <typename DerivedW, typename DerivedH>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                            const GridSpec& grid, const OptqOptions& opt = {}) {
  return detail::optq_impl(W, H, &grid, nullptr, opt);
}

/// OPTQ onto a grid the caller fitted (for example a llama.cpp block format, or a grid reused across
/// runs): every weight (i, j) rounds to fitted.lattice(i, j). The grid must be static (not dynamic).
template <typename DerivedW, typename DerivedH>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                            const Grid<typename DerivedW::Scalar>& fitted, const OptqOptions& opt = {}) {
  return detail::optq_impl(W, H, nullptr, &fitted, opt);
}

/// OPTQ consuming H: `optq(W, std::move(H), grid)` computes the factor in H's own storage, so the call
/// needs one N × N matrix instead of two (at 4096 × 11008 with H double: 1.1 GiB less). H is left empty.
/// The result is bit-identical to `optq(W, H, grid)` (tests/test_optq.cpp). For a layer's H that is not
/// needed afterwards, as in a quantization pipeline.
template <typename DerivedW, typename FScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, Matrix<FScalar>&& H, const GridSpec& grid,
                                            const OptqOptions& opt = {}) {
  Matrix<FScalar> h = std::move(H);  // H is empty from here on, whatever happens
  return detail::optq_impl(W, h, &grid, nullptr, opt, false, &h);
}

/// OPTQ consuming H, onto a grid the caller fitted (see the two overloads above).
template <typename DerivedW, typename FScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, Matrix<FScalar>&& H,
                                            const Grid<typename DerivedW::Scalar>& fitted, const OptqOptions& opt = {}) {
  Matrix<FScalar> h = std::move(H);
  return detail::optq_impl(W, h, nullptr, &fitted, opt, false, &h);
}

/// OPTQ from a streaming Gram accumulator (H = XᵀX of all batches added).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, const Gram<GScalar>& gram,
                                            const GridSpec& grid, const OptqOptions& opt = {}) {
  if (gram.samples() == 0) detail::fail("the Gram accumulator holds no samples: add calibration batches first");
  return detail::optq_impl(W, gram.lower(), &grid, nullptr, opt, true);
}

/// OPTQ consuming a Gram accumulator (`optq(W, std::move(gram), grid)`): the factor is computed in the
/// accumulator's storage, one N × N matrix instead of two; the accumulator is left empty (0 samples).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> optq(const Eigen::MatrixBase<DerivedW>& W, Gram<GScalar>&& gram, const GridSpec& grid,
                                            const OptqOptions& opt = {}) {
  if (gram.samples() == 0) detail::fail("the Gram accumulator holds no samples: add calibration batches first");
  Matrix<GScalar> h = std::move(gram).release();
  return detail::optq_impl(W, h, &grid, nullptr, opt, true, &h);
}

}  // namespace pptq
