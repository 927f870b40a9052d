// GPFQ (docs/theory.md §8): the greedy path-following quantizer for the mismatched objective ‖Xw − X̃q‖, the
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
#include "detail/stopwatch.hpp"
#include "detail/sweep.hpp"
#include "gram.hpp"
#include "grid.hpp"
#include "options.hpp"
#include "result.hpp"

#include <functional>
#include <memory>
#include <vector>

namespace pptq {

/// Options of GPFQ: the shared sweep options only (act-order by decreasing diag(X̃ᵀX̃), as Qronos and
/// OPTQ do in pptq). GPFQ has no damping: its feedback needs no factor (docs/theory.md §8).
struct GpfqOptions : SweepOptions {
  void check() const { SweepOptions::check("GpfqOptions"); }
};

namespace detail {

/// The start point: V(:, t) = Σ_{s ≤ t} w_{π_s} G(π_t, π_s) / H̃(π_t, π_t) (0 where X̃ never touches π_t),
/// original column order. Column panels of `panel` sweep columns: P(s, j) = G(π_{t0+j}, π_s) for
/// s ≤ t0 + j (0 above), then one product with the swept-so-far columns of the permuted W per row chunk.
/// P is N × panel, not N × N.
template <typename Scalar, typename FScalar>
Matrix<Scalar> gpfq_start(const Eigen::Ref<const Matrix<Scalar>>& W0, const Eigen::Ref<const Matrix<FScalar>>& Hm,
                          const Eigen::Ref<const Matrix<FScalar>>& Gm, const std::vector<Index>& perm, int threads) {
  const Index rows = W0.rows(), cols = W0.cols();
  Matrix<FScalar> Wp(rows, cols);
  for (Index k = 0; k < cols; ++k) Wp.col(k) = W0.col(perm[k]).template cast<FScalar>();
  Matrix<Scalar> V0(rows, cols);
  constexpr Index panel = 256;
  Matrix<FScalar> P;
  for (Index t0 = 0; t0 < cols; t0 += panel) {
    const Index t1 = std::min(cols, t0 + panel), w = t1 - t0;
    P.setZero(t1, w);
    for (Index s = 0; s < t1; ++s) {
      const FScalar* g = Gm.col(perm[s]).data();  // G(·, π_s): the rows π_t of the panel, gathered
      for (Index j = std::max<Index>(0, s - t0); j < w; ++j) P(s, j) = g[perm[t0 + j]];
    }
    const Matrix<FScalar> Vp = rowwise_product<FScalar>(Wp, w, threads, [&](Index r0, Index r1) {
      return Matrix<FScalar>(Wp.block(r0, 0, r1 - r0, t1) * P);
    });
    for (Index j = 0; j < w; ++j) {
      const Index t = t0 + j;
      const FScalar h = Hm(perm[t], perm[t]);
      V0.col(perm[t]) = (h > 0 ? (Vp.col(j) / h).eval() : Vector<FScalar>::Zero(rows)).template cast<Scalar>();
    }
  }
  return V0;
}

/// The feedback matrix M(s, t) = H̃(π_s, π_t)/H̃(π_t, π_t) for s < t, M(t, t) = 1 (unit upper, like the
/// engine's S): H̃_π's upper triangle filled as a factor's (either triangle of H̃ read, detail/factor.hpp),
/// then scaled and converted in place by the factor's own conversion. A column X̃ never touches gets no
/// feedback (its column of M is e_t).
template <typename Scalar, typename FScalar>
std::shared_ptr<const SweepFactor<Scalar>> gpfq_feedback_matrix(const Eigen::Ref<const Matrix<FScalar>>& Hm,
                                                                const std::vector<Index>& perm, bool ht_lower_only,
                                                                int threads, int requested_threads) {
  const Index cols = Hm.cols();
  FactorResult<FScalar> f;
  f.storage = std::make_shared<FactorStorage>(sizeof(FScalar) * static_cast<std::size_t>(cols * cols));
  seat(f.V, f.storage->data(), cols);
  fill_permuted_upper(f.V, Hm, perm, ht_lower_only, cols < 1024 ? 1 : threads);
  for (Index t = 0; t < cols; ++t)
    if (!(f.V(t, t) > FScalar(0))) {
      f.V.col(t).head(t).setZero();
      f.V(t, t) = FScalar(1);
    }
  return make_sweep_factor<Scalar>(std::move(f), requested_threads);
}

/// GPFQ from the Grams; ht_lower_only: Ht is an accumulator's lower triangle (its strict upper part is
/// not read). Besides W-sized buffers, the only N × N storage is the sweep's unit upper matrix (no N × N
/// copies of the inputs): G is read in place, by column panels.
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> gpfq_impl(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& Ht,
                                                 const Eigen::MatrixBase<DerivedG>& G,
                                                 const GridArg<typename DerivedW::Scalar>& grid, const GpfqOptions& opt,
                                                 bool ht_lower_only) {
  using Scalar = typename DerivedW::Scalar;
  using FScalar = typename DerivedH::Scalar;
  opt.check();
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Eigen::Ref<const Matrix<FScalar>> Hm(Ht.derived());
  // Bound in place when G has H's scalar (cast to the same type is the matrix itself); else converted once.
  const Eigen::Ref<const Matrix<FScalar>> Gm(G.derived().template cast<FScalar>());
  require_nonempty(W0, "W");
  require_finite(W0, "W", 0, 0, opt.threads);
  require_cross_grams(Hm, Gm, W0.cols(), ht_lower_only, opt.threads);
  const int threads = resolve_threads(opt.threads);
  const Stopwatch total;

  const std::vector<Index> perm = plan_columns(Hm, opt.act_order, opt.order).perm;
  QuantResult<Scalar> r = start_result<QuantResult<Scalar>>(Method::GPFQ, opt.rounding, opt.seed, perm);
  r.grid = grid_for(grid, W0, perm, {}, opt.threads);

  const Matrix<Scalar> V0 = gpfq_start<Scalar>(W0, Hm, Gm, perm, threads);
  const auto M = gpfq_feedback_matrix<Scalar>(Hm, perm, ht_lower_only, threads, opt.threads);
  const Eigen::Ref<const Matrix<Scalar>> start(V0);
  SweepInput<Scalar> in = sweep_input<Scalar>(start, perm, M.get(), opt);
  in.feedback = Feedback::NegatedValue;
  attach_sweep(r, sweep(in, r.grid), std::shared_ptr<const SweepFactor<Scalar>>(), false);
  r.seconds.sweep = total.seconds();
  return r;
}

}  // namespace detail

// The entry points: one per input form, each for a GridSpec or a fitted Grid (GridArg).

/// GPFQ from the two Gram matrices: Ht = X̃ᵀX̃ (symmetric), G = X̃ᵀX (G(i, j) = ⟨X̃_i, X_j⟩).
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> gpfq_from_grams(const Eigen::MatrixBase<DerivedW>& W,
                                                       const Eigen::MatrixBase<DerivedH>& Ht,
                                                       const Eigen::MatrixBase<DerivedG>& G,
                                                       const GridArg<typename DerivedW::Scalar>& grid,
                                                       const GpfqOptions& opt = {}) {
  return detail::gpfq_impl(W, Ht, G, grid, opt, false);
}

/// GPFQ from a streaming accumulator of X̃ᵀX̃ and X̃ᵀX (read in place: GPFQ never factors H̃).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> gpfq(const Eigen::MatrixBase<DerivedW>& W, const CrossGram<GScalar>& grams,
                                            const GridArg<typename DerivedW::Scalar>& grid, const GpfqOptions& opt = {}) {
  grams.require_samples("gpfq");
  return detail::gpfq_impl(W, grams.htilde_lower(), grams.cross(), grid, opt, true);
}

/// GPFQ from the two activation matrices (samples × cols): X (full precision) and Xq (X̃).
template <typename DerivedW, typename DerivedX, typename DerivedXq>
QuantResult<typename DerivedW::Scalar> gpfq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                                            const Eigen::MatrixBase<DerivedXq>& Xq,
                                            const GridArg<typename DerivedW::Scalar>& grid, const GpfqOptions& opt = {}) {
  opt.check();
  detail::require_mismatched_inputs(X, Xq, W.cols());
  CrossGram<double> grams(W.cols());
  grams.add(X, Xq);
  return gpfq(W, grams, grid, opt);
}

}  // namespace pptq
