// GPFQ (spec §8): the greedy path-following quantizer for the mismatched objective ‖Xw − X̃q‖, the
// baseline Qronos is compared with. Per row, u₀ = 0, q_t = Q(⟨X̃_t, u_{t−1} + w_t X_t⟩ / ‖X̃_t‖²),
// u_t = u_{t−1} + w_t X_t − q_t X̃_t, so u_N = Xw − X̃q.
//
// Gram form, which needs only H̃ = X̃ᵀX̃ and G = X̃ᵀX (never the m × N activations in the loop):
//   argument_t = (Σ_{s≤t} G_ts w_s − Σ_{s<t} H̃_ts q_s) / H̃_tt.
// With v⁽⁰⁾_t = (Σ_{s≤t} G_ts w_s)/H̃_tt and M_st = H̃_st/H̃_tt (s < t) this is the sweep
// v ← v − q_s·M_{s,:}: the one engine of detail/sweep.hpp with −q as feedback and S = M.
#pragma once

#include "common.hpp"
#include "detail/mismatch.hpp"
#include "detail/prepare.hpp"
#include "detail/sweep.hpp"
#include "gram.hpp"
#include "grid.hpp"
#include "result.hpp"

#include <functional>
#include <memory>
#include <vector>

namespace pptq {

struct GpfqOptions {
  bool act_order = true;      ///< sweep by decreasing diag(X̃ᵀX̃), as Qronos and OPTQ do in pptq
  std::vector<Index> order;   ///< custom sweep order; overrides act_order
  Index block_size = 1024;  ///< lazy-batch block size (a performance knob only: OptqOptions::block_size)
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;
  int threads = 0;
  std::function<void(double)> progress;

  void check() const {
    if (block_size < 1) detail::fail("GpfqOptions.block_size must be >= 1, got " + detail::str(block_size));
    if (threads < 0) detail::fail("GpfqOptions.threads must be >= 0 (0 = all), got " + detail::str(threads));
  }
};

/// GPFQ from the two Gram matrices: Ht = X̃ᵀX̃ (symmetric), G = X̃ᵀX (G(i, j) = ⟨X̃_i, X_j⟩).
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> gpfq_from_grams(const Eigen::MatrixBase<DerivedW>& W,
                                                       const Eigen::MatrixBase<DerivedH>& Ht,
                                                       const Eigen::MatrixBase<DerivedG>& G, const GridSpec& grid,
                                                       const GpfqOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  using FScalar = typename DerivedH::Scalar;
  opt.check();
  grid.check();
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Eigen::Ref<const Matrix<FScalar>> Hm(Ht.derived());
  const Matrix<FScalar> Gm = G.derived().template cast<FScalar>();
  detail::require_nonempty(W0, "W");
  detail::require_finite(W0, "W");
  detail::require_cross_grams(Hm, Gm, W0.cols(), false, opt.threads);
  const Index rows = W0.rows(), cols = W0.cols();

  const std::vector<Index> perm = detail::plan_columns(Hm, opt.act_order, opt.order).perm;
  QuantResult<Scalar> r = detail::start_result<Scalar>(Method::GPFQ, opt.rounding, opt.seed, perm);
  r.grid = fit_grid(W0, grid, perm, {}, opt.threads);

  // Sweep-order matrices: Lg(t, s) = G(π_t, π_s) for s ≤ t; M(s, t) = H̃(π_s, π_t)/H̃(π_t, π_t) for s < t,
  // M(t, t) = 1 (unit upper, like the engine's S). A column X̃ never touches gets argument 0 and no feedback.
  Matrix<FScalar> Lg(cols, cols);
  for (Index s = 0; s < cols; ++s)
    for (Index t = 0; t < cols; ++t) Lg(t, s) = t >= s ? Gm(perm[t], perm[s]) : FScalar(0);
  Matrix<FScalar> Wp(rows, cols);
  for (Index k = 0; k < cols; ++k) Wp.col(k) = W0.col(perm[k]).template cast<FScalar>();
  Matrix<FScalar> V = detail::rowwise_product<FScalar>(Wp, cols, opt.threads, [&](Index r0, Index r1) {
    return Matrix<FScalar>(Wp.middleRows(r0, r1 - r0) * Lg.transpose().template triangularView<Eigen::Upper>());
  });
  Lg.resize(0, 0);
  Wp.resize(0, 0);
  Matrix<Scalar> V0(rows, cols);  // start point, original column order
  for (Index t = 0; t < cols; ++t) {
    const FScalar h = Hm(perm[t], perm[t]);
    V0.col(perm[t]) = (h > 0 ? (V.col(t) / h).eval() : Vector<FScalar>::Zero(rows)).template cast<Scalar>();
  }
  V.resize(0, 0);
  auto M = std::make_shared<detail::SweepFactor<Scalar>>();
  M->allocate_zero(cols);
  M->d = Eigen::VectorXd::Ones(cols);
  for (Index t = 0; t < cols; ++t) {
    const FScalar h = Hm(perm[t], perm[t]);
    if (h > 0)
      for (Index s = 0; s < t; ++s) M->S(s, t) = static_cast<Scalar>(Hm(perm[s], perm[t]) / h);
    M->S(t, t) = Scalar(1);
  }

  const Eigen::Ref<const Matrix<Scalar>> start(V0);
  detail::SweepInput<Scalar> in = detail::sweep_input<Scalar>(start, perm, M.get(), opt);
  in.feedback = detail::Feedback::NegatedValue;
  detail::attach_sweep(r, detail::sweep(in, r.grid), std::shared_ptr<const detail::SweepFactor<Scalar>>(), false);
  return r;
}

template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> gpfq(const Eigen::MatrixBase<DerivedW>& W, const CrossGram<GScalar>& grams,
                                            const GridSpec& grid, const GpfqOptions& opt = {}) {
  if (grams.samples() == 0) detail::fail("the CrossGram accumulator holds no samples: add calibration batches first");
  return gpfq_from_grams(W, grams.htilde(), grams.cross(), grid, opt);
}

/// GPFQ from the two activation matrices (samples × cols): X (full precision) and Xq (X̃).
template <typename DerivedW, typename DerivedX, typename DerivedXq>
QuantResult<typename DerivedW::Scalar> gpfq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                                            const Eigen::MatrixBase<DerivedXq>& Xq, const GridSpec& grid,
                                            const GpfqOptions& opt = {}) {
  opt.check();
  detail::require_mismatched_inputs(X, Xq, W.cols());
  CrossGram<double> grams(W.cols());
  grams.add(X, Xq);
  return gpfq(W, grams, grid, opt);
}

}  // namespace pptq
