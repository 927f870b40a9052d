// Qronos (spec §5): quantize W for the mismatched layer objective min_q ‖Xw − X̃q‖² + λ‖·‖, where X are
// the full-precision model's inputs of the layer and X̃ ("Xq") those produced by the already quantized
// preceding network, on the same samples.
//
// Both published forms run on the one sweep engine (detail/sweep.hpp):
//  - LeastSquaresThenOptq (spec §5.4, "Remark 5.2"): w̃ = argmin_v ‖Xw − X̃v‖² + λ‖v − w‖²
//    = (H̃ + λI)⁻¹(X̃ᵀXw + λw), then OPTQ on H̃ = X̃ᵀX̃ from w̃.
//  - Sequential (spec §5.2/§5.3, Qronos 2025): the first step "corrects the past" and rounds
//    c₁ = ⟨X̃₁, Xw − X̃_{>1}w_{>1}⟩/‖X̃₁‖²; every later step is an OPTQ step. After that first decision
//    the iterate equals OPTQ(X̃, λ) started from w̃ (spec §5.4, verified there), so the engine runs the
//    same sweep from w̃ with c₁ as the first rounding argument: no second loop.
#pragma once

#include "common.hpp"
#include "detail/factor.hpp"
#include "detail/mismatch.hpp"
#include "detail/prepare.hpp"
#include "detail/sweep.hpp"
#include "gram.hpp"
#include "grid.hpp"
#include "result.hpp"

#include <functional>
#include <optional>
#include <vector>

namespace pptq {

enum class QronosForm {
  LeastSquaresThenOptq,  ///< spec §5.4: ridge least squares toward w, then OPTQ on X̃ (the default)
  Sequential,            ///< spec §5.2/§5.3: first step corrects the past (Brevitas 2025)
};

inline const char* to_string(QronosForm f) {
  return f == QronosForm::Sequential ? "sequential" : "least-squares-then-optq";
}

/// Options of Qronos. Damping: λ = α·λ_max(X̃ᵀX̃) by default (the paper's runs, α = 1e-6), or relative
/// (λ = damp·mean diag(X̃ᵀX̃), GPTQ's convention) or absolute; the most specific one set wins
/// (lambda, then damp, then alpha). Act-order is on, as in the paper's configurations.
struct QronosOptions {
  QronosForm form = QronosForm::LeastSquaresThenOptq;
  double alpha = 1e-6;             ///< λ = alpha·λ_max(H̃) unless damp or lambda is set
  std::optional<double> damp;      ///< λ = damp·mean(diag H̃)
  std::optional<double> lambda;    ///< absolute λ on the scale of X̃ᵀX̃ (spec §1)
  int power_iterations = 30;       ///< for λ_max (spec §5.3 step 2)
  bool act_order = true;           ///< sweep by decreasing diag(H̃)
  std::vector<Index> order;        ///< custom sweep order; overrides act_order
  Index block_size = 1024;  ///< lazy-batch block size (a performance knob only: OptqOptions::block_size)
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;
  int threads = 0;
  bool escalate_damping = true;
  double escalation_factor = 10;
  double max_damp = 1.0;
  bool keep_factor = true;
  std::function<void(double)> progress;

  void check() const {
    if (!(alpha >= 0) || !std::isfinite(alpha)) detail::fail("QronosOptions.alpha must be >= 0 and finite, got " + detail::str(alpha));
    if (damp && (!(*damp >= 0) || !std::isfinite(*damp)))
      detail::fail("QronosOptions.damp must be >= 0 and finite, got " + detail::str(*damp));
    if (lambda && (!(*lambda >= 0) || !std::isfinite(*lambda)))
      detail::fail("QronosOptions.lambda must be >= 0 and finite, got " + detail::str(*lambda));
    if (power_iterations < 1) detail::fail("QronosOptions.power_iterations must be >= 1, got " + detail::str(power_iterations));
    if (block_size < 1) detail::fail("QronosOptions.block_size must be >= 1, got " + detail::str(block_size));
    if (threads < 0) detail::fail("QronosOptions.threads must be >= 0 (0 = all), got " + detail::str(threads));
    if (!(escalation_factor > 1)) detail::fail("QronosOptions.escalation_factor must be > 1, got " + detail::str(escalation_factor));
    if (!(max_damp > 0)) detail::fail("QronosOptions.max_damp must be > 0, got " + detail::str(max_damp));
  }
};

namespace detail {

/// What qronos_impl is given next to H̃: the cross Gram G = X̃ᵀX (cols × cols), or the correction
/// (G − H̃)Wᵀ = X̃ᵀ(X − X̃)Wᵀ itself (cols × rows, from a CorrectionGram), which saves the rows·cols²
/// product with G.
enum class CrossInput { Gram, Correction };

/// ht_lower_only: Ht is an accumulator's lower triangle (its strict upper part is not read). consume:
/// H̃'s own matrix, given up by the caller: the factor is computed in its storage (optq.hpp), after the
/// last read of H̃.
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> qronos_impl(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& Ht,
                                                   const Eigen::MatrixBase<DerivedG>& G, CrossInput kind, const GridSpec* spec,
                                                   const Grid<typename DerivedW::Scalar>* fitted, const QronosOptions& opt,
                                                   bool ht_lower_only = false,
                                                   Matrix<typename DerivedH::Scalar>* consume = nullptr) {
  using Scalar = typename DerivedW::Scalar;
  using FScalar = typename DerivedH::Scalar;
  static_assert(std::is_floating_point_v<Scalar> && std::is_floating_point_v<FScalar>, "pptq: float or double only");
  opt.check();
  if (spec) spec->check();
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Eigen::Ref<const Matrix<FScalar>> Hm(Ht.derived());
  const Eigen::Ref<const Matrix<FScalar>> Gm(G.derived().template cast<FScalar>());  // no copy when G is FScalar
  detail::require_nonempty(W0, "W");
  detail::require_finite(W0, "W", 0, 0, opt.threads);
  const bool correction = kind == CrossInput::Correction;
  if (correction) {
    detail::require_gram(Hm, W0.cols(), "Htilde (Xq^T Xq)", ht_lower_only, opt.threads);
    if (Gm.rows() != W0.cols() || Gm.cols() != W0.rows())
      fail("the correction Xq^T (X - Xq) W^T is " + str(Gm.rows()) + " x " + str(Gm.cols()) + " but W is " +
           str(W0.rows()) + " x " + str(W0.cols()) + " (it must be cols x rows)");
    detail::require_finite(Gm, "the correction Xq^T (X - Xq) W^T", 0, 0, opt.threads);
  } else {
    detail::require_cross_grams(Hm, Gm, W0.cols(), ht_lower_only, opt.threads);
  }
  const Index rows = W0.rows(), cols = W0.cols();
  if (fitted) fitted->check(rows, cols);
  const int threads = detail::resolve_threads(opt.threads);
  // H̃(p, i) of the symmetric H̃, whether it is given whole or by its lower triangle.
  auto ht = [&](Index p, Index i) { return ht_lower_only && p < i ? Hm(i, p) : Hm(p, i); };

  // Columns X̃ never touches: H̃'s row and column are zero there. No fix is applied to H̃ (λ > 0 makes
  // H̃ + λI definite): w̃_j = w_j and the column is decoupled, so it ends as RTN of the original weight,
  // as Brevitas's Qronos does (spec §5.3 step 1). For ordering, such columns count as diag 1 (GPTQ).
  const detail::ColumnPlan plan = detail::plan_columns(Hm, opt.act_order, opt.order);
  const std::vector<bool>& dead = plan.dead;
  const Eigen::VectorXd& diag = plan.diag;
  const std::vector<Index>& perm = plan.perm;
  QuantResult<Scalar> r = detail::start_result<Scalar>(Method::Qronos, opt.rounding, opt.seed, perm);
  // The grid is fitted once on the original W before anything moves (spec §5.3 step 7 note).
  r.grid = fitted ? *fitted : fit_grid(W0, *spec, perm, {}, opt.threads);

  double lambda0;
  if (opt.lambda) {
    lambda0 = *opt.lambda;
  } else if (opt.damp) {
    lambda0 = *opt.damp * diag.mean();
  } else {
    r.lambda_max = detail::lambda_max_power(Hm, opt.power_iterations, threads);
    lambda0 = opt.alpha * r.lambda_max;
  }
  const detail::Damping damping =
      detail::damping_policy(diag.mean(), 0.0, lambda0, opt.escalate_damping, opt.escalation_factor, opt.max_damp);

  // Step 0 argument of the sequential form (spec §5.3 step 4), per row:
  // c₁ = (wᵀG_{p,:} − w_{≠p}ᵀH̃_{p,≠p}) / H̃_pp = w_p + wᵀ(G_{p,:} − H̃_{p,:})ᵀ / H̃_pp, p = perm[0];
  // a dead first column keeps its weight (any value gives the same residual).
  Vector<Scalar> c1;
  if (opt.form == QronosForm::Sequential) {
    const Index p = perm[0];
    if (dead[p]) {
      c1 = W0.col(p);
    } else {
      Vector<FScalar> corr;
      if (correction) {
        corr = Gm.row(p).transpose();
      } else {
        Vector<FScalar> d(cols);  // (G − H̃)_{p,:}
        for (Index i = 0; i < cols; ++i) d(i) = Gm(p, i) - ht(p, i);
        corr = W0.template cast<FScalar>() * d;
      }
      c1 = (corr / Hm(p, p) + W0.col(p).template cast<FScalar>()).template cast<Scalar>();
    }
  }

  // w̃ = (H̃ + λI)⁻¹(X̃ᵀXw + λw) = w + (H̃ + λI)⁻¹ b with b = (G − H̃)w: the correction form is cheaper
  // (its products run in W's scalar, like the sweep) and more accurate (rounding touches only the
  // correction, small when X̃ is close to X). In sweep order, with H̃_π + λI = VVᵀ and V = S·diag(d):
  //   (w̃ − w)_π = b_π V⁻ᵀV⁻¹ = (b_π S⁻ᵀ diag(d)⁻²)·S⁻¹.
  // The sweep needs only the offset (w̃ − w)_π·S = b_π S⁻ᵀ diag(d)⁻² (detail/sweep.hpp): one triangular
  // solve. Dynamic groups are fitted on the iterate itself, so there w̃ is formed (a second solve).
  // b_π comes first, before the factor: it is the last read of H̃, which a consumed H̃ gives up to the
  // factor. From the Grams it is W·Dt with Dt(i, k) = (G − H̃)(π_k, i), by panels of 1024 sweep
  // columns (Dt is N × 1024, not N × N). Row-chunked: both cores, the same bits for any thread count.
  const bool dynamic = r.grid.dynamic;
  Matrix<Scalar> C(rows, cols);  // rows × N, sweep order: b_π, then the offset
  if (correction) {
    detail::gather_rows_transposed(C, perm, threads, [&](Index p, Index i) { return Gm(p, i); });
  } else {
    constexpr Index panel = 1024;
    Matrix<Scalar> Dt;
    std::vector<Index> pk;
    for (Index k0 = 0; k0 < cols; k0 += panel) {
      const Index w = std::min(panel, cols - k0);
      pk.assign(perm.begin() + k0, perm.begin() + k0 + w);
      Dt.resize(cols, w);
      detail::gather_rows_transposed(Dt, pk, threads, [&](Index p, Index i) { return Gm(p, i) - ht(p, i); });
      detail::for_row_chunks(rows, threads, [&](Index r0, Index r1) {
        auto Cb = C.block(r0, k0, r1 - r0, w);
        Cb.setZero();  // what Eigen's "=" product does before accumulating: the same bits
        detail::gemm_acc<Scalar>(Cb, W0.middleRows(r0, r1 - r0), Dt);
      });
    }
  }

  auto f = consume ? detail::factor_permuted_consuming<FScalar>(std::move(*consume), perm, {}, damping, opt.threads, ht_lower_only)
                   : detail::factor_permuted<FScalar>(Hm, perm, {}, damping, opt.threads, ht_lower_only);
  detail::attach_factor(r, f);
  if (f.status == Status::NumericalIssue) return r;
  const auto F = detail::make_sweep_factor<Scalar>(std::move(f), opt.threads);
  const detail::MatrixMap<Scalar>& S = F->S;
  {
    const Vector<Scalar> inv_d2 = F->d.array().square().inverse().template cast<Scalar>();
    detail::for_row_chunks(rows, threads, [&](Index r0, Index r1) {
      auto blk = C.middleRows(r0, r1 - r0);
      detail::trsm_right_upper<Scalar>(S, blk, true, true);  // blk·S⁻ᵀ
      blk = blk * inv_d2.asDiagonal();
      if (dynamic) detail::trsm_right_upper<Scalar>(S, blk, false, true);  // blk·S⁻¹
    });
  }

  detail::SweepInput<Scalar> in = detail::sweep_input(W0, perm, F.get(), opt);
  in.offset = &C;
  in.offset_in_start = dynamic;
  in.first_argument = opt.form == QronosForm::Sequential ? &c1 : nullptr;
  detail::attach_sweep(r, detail::sweep(in, r.grid), F, opt.keep_factor);
  return r;
}

}  // namespace detail

/// Qronos from the two Gram matrices: Ht = X̃ᵀX̃ (symmetric) and G = X̃ᵀX, G(i, j) = ⟨X̃_i, X_j⟩.
/// The factor and w̃ are computed in the Grams' scalar type, the sweep in W's.
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> qronos_from_grams(const Eigen::MatrixBase<DerivedW>& W,
                                                         const Eigen::MatrixBase<DerivedH>& Ht,
                                                         const Eigen::MatrixBase<DerivedG>& G, const GridSpec& grid,
                                                         const QronosOptions& opt = {}) {
  return detail::qronos_impl(W, Ht, G, detail::CrossInput::Gram, &grid, nullptr, opt);
}

/// Qronos onto a grid the caller fitted (static; every weight (i, j) rounds to fitted.lattice(i, j)).
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> qronos_from_grams(const Eigen::MatrixBase<DerivedW>& W,
                                                         const Eigen::MatrixBase<DerivedH>& Ht,
                                                         const Eigen::MatrixBase<DerivedG>& G,
                                                         const Grid<typename DerivedW::Scalar>& fitted,
                                                         const QronosOptions& opt = {}) {
  return detail::qronos_impl(W, Ht, G, detail::CrossInput::Gram, nullptr, &fitted, opt);
}

/// Qronos from a streaming accumulator of X̃ᵀX̃ and X̃ᵀX.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const CrossGram<GScalar>& grams,
                                              const GridSpec& grid, const QronosOptions& opt = {}) {
  if (grams.samples() == 0) detail::fail("the CrossGram accumulator holds no samples: add calibration batches first");
  return detail::qronos_impl(W, grams.htilde_lower(), grams.cross(), detail::CrossInput::Gram, &grid, nullptr, opt, true);
}

namespace detail {
/// Empties an accumulator handed over to qronos (std::move) when the call ends, however it ends.
template <typename Acc>
struct ClearOnExit {
  Acc& acc;
  ~ClearOnExit() { acc.clear(); }
};
}  // namespace detail

/// Qronos consuming the accumulator (`qronos(W, std::move(grams), grid)`): the factor is computed in H̃'s
/// own storage, one N × N matrix less in the call; bit-identical results. The accumulator is left empty.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, CrossGram<GScalar>&& grams,
                                              const GridSpec& grid, const QronosOptions& opt = {}) {
  if (grams.samples() == 0) detail::fail("the CrossGram accumulator holds no samples: add calibration batches first");
  detail::ClearOnExit<CrossGram<GScalar>> clear{grams};
  Matrix<GScalar> ht = std::move(grams).release_htilde();
  return detail::qronos_impl(W, ht, grams.cross(), detail::CrossInput::Gram, &grid, nullptr, opt, true, &ht);
}

/// Qronos from a CorrectionGram, which kept H̃ and X̃ᵀ(X − X̃)Wᵀ during calibration instead of the cols ×
/// cols cross Gram: the same result up to rounding, without Qronos's rows·cols² product with G.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const CorrectionGram<GScalar>& grams,
                                              const GridSpec& grid, const QronosOptions& opt = {}) {
  grams.require_matches(W);
  return detail::qronos_impl(W, grams.htilde_lower(), grams.correction(), detail::CrossInput::Correction, &grid, nullptr, opt,
                             true);
}

/// Qronos from a CorrectionGram onto a grid the caller fitted (static).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const CorrectionGram<GScalar>& grams,
                                              const Grid<typename DerivedW::Scalar>& fitted, const QronosOptions& opt = {}) {
  grams.require_matches(W);
  return detail::qronos_impl(W, grams.htilde_lower(), grams.correction(), detail::CrossInput::Correction, nullptr, &fitted,
                             opt, true);
}

/// Qronos consuming a CorrectionGram (`qronos(W, std::move(grams), grid)`): the factor is computed in
/// H̃'s own storage; bit-identical results. The accumulator is left empty.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, CorrectionGram<GScalar>&& grams,
                                              const GridSpec& grid, const QronosOptions& opt = {}) {
  grams.require_matches(W);
  detail::ClearOnExit<CorrectionGram<GScalar>> clear{grams};
  Matrix<GScalar> ht = std::move(grams).release_htilde();
  return detail::qronos_impl(W, ht, grams.correction(), detail::CrossInput::Correction, &grid, nullptr, opt, true, &ht);
}

/// Qronos consuming a CorrectionGram, onto a grid the caller fitted (static).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, CorrectionGram<GScalar>&& grams,
                                              const Grid<typename DerivedW::Scalar>& fitted, const QronosOptions& opt = {}) {
  grams.require_matches(W);
  detail::ClearOnExit<CorrectionGram<GScalar>> clear{grams};
  Matrix<GScalar> ht = std::move(grams).release_htilde();
  return detail::qronos_impl(W, ht, grams.correction(), detail::CrossInput::Correction, nullptr, &fitted, opt, true, &ht);
}

/// Qronos from the two activation matrices, samples × cols: X (full-precision model) and Xq (X̃, the
/// quantized model's inputs of the same samples). The Grams are accumulated in double, and handed over
/// to the factor (one N × N matrix less than keeping them).
template <typename DerivedW, typename DerivedX, typename DerivedXq>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                                              const Eigen::MatrixBase<DerivedXq>& Xq, const GridSpec& grid,
                                              const QronosOptions& opt = {}) {
  opt.check();
  detail::require_mismatched_inputs(X, Xq, W.cols());
  CrossGram<double> grams(W.cols());
  grams.add(X, Xq);
  return qronos(W, std::move(grams), grid, opt);
}

}  // namespace pptq
