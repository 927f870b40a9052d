// The bound module (include/pptq/bounds.hpp, docs/bounds.md; docs/theory.md §3, §4, §5.5): constants
// against their definitions, a property sweep of every bound, the ordering table of §3.3, the
// adversarial example of §4.4, the stochastic hit fraction, the exactness of the certificate, the
// state of each check, and the error measurement of include/pptq/measure.hpp that the report uses.
// Set PPTQ_TEST_VERBOSE=1 to print the tables.
#include <catch2/catch.hpp>

#include <pptq/bounds.hpp>
#include <pptq/gpfq.hpp>
#include <pptq/measure.hpp>
#include <pptq/optq.hpp>
#include <pptq/qronos.hpp>
#include <pptq/rtn.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace test;
using pptq::GridSpec;
using pptq::OptqOptions;

namespace {

bool verbose() {
  const char* v = std::getenv("PPTQ_TEST_VERBOSE");
  return v && *v && *v != '0';
}

double lambda_rel(const MatrixXd& X, double c) { return c * X.squaredNorm() / static_cast<double>(X.cols()); }

std::vector<Index> increasing_norm(const MatrixXd& X) {
  std::vector<Index> p(static_cast<std::size_t>(X.cols()));
  for (Index i = 0; i < X.cols(); ++i) p[i] = i;
  const VectorXd n = X.colwise().squaredNorm().transpose();
  std::stable_sort(p.begin(), p.end(), [&](Index a, Index b) { return n(a) < n(b); });
  return p;
}

std::vector<Index> decreasing_norm(const MatrixXd& X) {
  auto p = increasing_norm(X);
  std::reverse(p.begin(), p.end());
  return p;
}

GridSpec infinite_grid(int bits, Index group_size = -1, bool static_groups = false, double delta = 0) {
  GridSpec g;
  g.bits = bits;
  g.alphabet = pptq::Alphabet::Infinite;
  g.group_size = group_size;
  g.static_groups = static_groups;
  g.delta = delta;
  return g;
}

/// Inputs of the property sweep: kind 0 gaussian, 1 low-rank + noise, 2 ill-conditioned, 3 outlier columns.
MatrixXd sweep_inputs(int kind, Index m, Index N, std::mt19937_64& rng) {
  switch (kind) {
    case 0: return gaussian(m, N, rng);
    case 1: return structured_inputs(m, N, rng, std::max<Index>(2, std::min(m, N) / 4), 1.0);
    case 2: {
      MatrixXd X = gaussian(m, N, rng);
      std::uniform_real_distribution<double> u(-3.0, 3.0);
      for (Index j = 0; j < N; ++j) X.col(j) *= std::pow(10.0, u(rng));
      X.col(N - 1) = X.col(0) + 1e-6 * X.col(N - 1);  // nearly collinear pair
      return X;
    }
    default: {
      MatrixXd X = structured_inputs(m, N, rng, 4, 0.5);
      std::uniform_int_distribution<Index> col(0, N - 1);
      for (int k = 0; k < 3; ++k) X.col(col(rng)) *= 100.0;
      return X;
    }
  }
}

}  // namespace

TEST_CASE("bounds: constants agree with their definitions (1e-8 relative)", "[bounds][constants]") {
  std::mt19937_64 rng(7);
  int cases = 0;
  for (int trial = 0; trial < 16; ++trial) {
    const Index m = trial % 2 ? 24 : 80, N = 40;
    const MatrixXd X = sweep_inputs(trial % 4, m, N, rng);
    const double c = std::pow(10.0, -(trial % 5));  // 1 .. 1e-4 relative
    const double lam = lambda_rel(X, c);
    std::vector<Index> perm;
    switch (trial % 4) {
      case 0: perm = ref::identity_perm(N); break;
      case 1: perm = decreasing_norm(X); break;
      case 2: perm = random_perm(N, rng); break;
      default: perm = increasing_norm(X); break;
    }
    const MatrixXd W = gaussian(3, N, rng);
    OptqOptions opt;
    opt.lambda = lam;
    opt.order = perm;
    const MatrixXd H = X.transpose() * X;
    const auto r = pptq::optq(W, H, infinite_grid(4), opt);
    REQUIRE(r.ok());
    const pptq::BoundConstants k = pptq::constants(r, X);

    const VectorXd schur = ref::inv_Ltt_sq_schur(X, lam, perm);
    const VectorXd push = ref::inv_Ltt_sq_pushthrough(X, lam, perm);
    for (Index t = 0; t < N; ++t) {
      REQUIRE(rel_diff(k.inv_Ltt_sq(t), schur(t)) < 1e-8);
      REQUIRE(rel_diff(k.inv_Ltt_sq(t), push(t)) < 1e-8);
    }
    REQUIRE(rel_diff(k.C2 * k.C2, ref::C2_sq(X, lam, perm)) < 1e-8);
    REQUIRE(rel_diff(k.Cw, ref::Cw(X, lam, perm)) < 1e-8);
    REQUIRE(rel_diff(*k.Cinf, ref::Cinf(X, lam, perm)) < 1e-8);
    REQUIRE(rel_diff(k.C2_max, std::sqrt(double(N)) * std::sqrt(schur.maxCoeff())) < 1e-8);
    REQUIRE(*k.Cinf <= *k.Cinf_crude * (1 + 1e-12));
    REQUIRE(k.C2 <= k.C2_max * (1 + 1e-12));
    // the diagonal formula's range [λ, λ + ‖X_t‖²] (docs/theory.md §3.1(v))
    for (Index t = 0; t < N; ++t) {
      REQUIRE(k.inv_Ltt_sq(t) >= lam * (1 - 1e-9));
      REQUIRE(k.inv_Ltt_sq(t) <= (lam + X.col(perm[t]).squaredNorm()) * (1 + 1e-9));
    }

    // the standalone overloads factor on their own and agree
    const pptq::BoundConstants a = pptq::constants_from_inputs(X, lam, perm);
    const pptq::BoundConstants b = pptq::constants_from_gram(H, lam, perm);
    REQUIRE(rel_diff(a.C2, k.C2) < 1e-10);
    REQUIRE(rel_diff(b.C2, k.C2) < 1e-10);
    REQUIRE(rel_diff(a.Cw, k.Cw) < 1e-9);
    REQUIRE(rel_diff(*a.Cinf, *k.Cinf) < 1e-9);
    REQUIRE_FALSE(b.Cinf.has_value());
    REQUIRE(b.Cinf_crude.has_value());

    // scale invariance: GPTQ's H = (2/n)XᵀX with λ scaled alike gives the same constants via h_scale
    const double h = 2.0 / static_cast<double>(m);
    OptqOptions opt2 = opt;
    opt2.lambda = h * lam;
    const auto r2 = pptq::optq(W, MatrixXd(h * H), infinite_grid(4), opt2);
    const pptq::BoundConstants k2 = pptq::constants(r2, X, h);
    REQUIRE(rel_diff(k2.C2, k.C2) < 1e-9);
    REQUIRE(rel_diff(k2.lambda, lam) < 1e-12);
    REQUIRE(rel_diff(*k2.Cinf, *k.Cinf) < 1e-9);
    ++cases;
  }
  REQUIRE(cases == 16);
}

TEST_CASE("bounds: property sweep, 0 violations of any bound whose conditions hold", "[bounds][sweep]") {
  const int n_cases = 240;
  int evaluated = 0, violations = 0, prob_evaluated = 0, prob_failures = 0, not_applicable = 0, ref_checked = 0;
  int qronos_cases = 0, stochastic_cases = 0, grouped_cases = 0, wide_cases = 0;
  double max_ratio = 0, min_ratio = 1e300;
  for (int cs = 0; cs < n_cases; ++cs) {
    std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(cs));
    std::uniform_int_distribution<int> bits_d(2, 8);
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    const bool wide = cs % 2 == 0;  // m < N
    const Index N = 8 + static_cast<Index>(u01(rng) * 40);
    const Index m = wide ? std::max<Index>(4, N / 2 - 1) : N + 8 + static_cast<Index>(u01(rng) * 48);
    const int kind = (cs / 2) % 4;
    const MatrixXd X = sweep_inputs(kind, m, N, rng);
    const Index rows = 3 + cs % 3;
    MatrixXd W = gaussian(rows, N, rng, 0.05);
    if (cs % 7 == 0) W.col(0) *= 20.0;  // an outlier weight
    const double c = std::pow(10.0, -6.0 * u01(rng));  // 1e-6 .. 1 relative
    const int bits = bits_d(rng);
    GridSpec grid;
    grid.bits = bits;
    grid.symmetric = cs % 3 == 0;
    const int gkind = cs % 4;
    if (gkind >= 2) {
      grid.group_size = gkind == 2 ? 4 : 8;
      grid.static_groups = (cs / 4) % 2 == 0;
      ++grouped_cases;
    }
    // mostly the infinite alphabet (no clipping by construction); a quarter affine (bounds apply when no clip)
    if (cs % 4 != 1) grid.alphabet = pptq::Alphabet::Infinite;
    const int order_kind = (cs / 3) % 4;
    std::vector<Index> perm;
    switch (order_kind) {
      case 0: perm = ref::identity_perm(N); break;
      case 1: perm = decreasing_norm(X); break;
      case 2: perm = random_perm(N, rng); break;
      default: perm = increasing_norm(X); break;
    }
    const pptq::Rounding rounding = cs % 3 == 2 ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
    const bool qronos = cs % 5 == 4;
    if (wide) ++wide_cases;
    if (rounding == pptq::Rounding::Stochastic) ++stochastic_cases;

    pptq::LayerReport rep;
    pptq::QuantResult<double> r;
    MatrixXd Xt;
    if (!qronos) {
      OptqOptions opt;
      opt.lambda = lambda_rel(X, c);
      opt.order = perm;
      opt.rounding = rounding;
      opt.seed = static_cast<std::uint64_t>(cs);
      opt.block_size = 1 + cs % 16;
      r = pptq::optq(W, MatrixXd(X.transpose() * X), grid, opt);
      REQUIRE(r.ok());
      rep = pptq::layer_report(r, W, X);
    } else {
      ++qronos_cases;
      Xt = X + 0.1 * gaussian(m, N, rng) * (X.norm() / std::sqrt(double(m * N)));
      pptq::QronosOptions qo;
      qo.lambda = lambda_rel(Xt, c);
      qo.order = perm;
      qo.rounding = rounding;
      qo.seed = static_cast<std::uint64_t>(cs);
      qo.form = (cs / 5) % 2 ? pptq::QronosForm::Sequential : pptq::QronosForm::LeastSquaresThenOptq;
      r = pptq::qronos(W, X, Xt, grid, qo);
      REQUIRE(r.ok());
      rep = pptq::layer_report(r, W, X, Xt);
      REQUIRE(rep.R_lambda.has_value());
      // R_λ against the reference definition (docs/theory.md §5.5)
      for (Index i = 0; i < rows; ++i)
        REQUIRE(rel_diff((*rep.R_lambda)(i) * (*rep.R_lambda)(i), ref::R_lambda_sq(W.row(i).transpose(), X, Xt, r.lambda)) < 1e-6);
    }
    INFO("case " << cs << "\n" << rep.summary());
    // the certificate is an identity for any rounding, clipped or not
    REQUIRE(rep.certificate_gap.has_value());
    REQUIRE(*rep.certificate_gap < 1e-7);
    REQUIRE(*rep.certificate_fro >= rep.err_fro * (1 - 1e-9));

    for (const pptq::BoundCheck* b : rep.checks()) {
      // the state, the optional figures and the reason agree
      REQUIRE(b->holds.has_value() == b->evaluated());
      REQUIRE(b->bound.has_value() == b->evaluated());
      REQUIRE(b->why_not.empty() == b->evaluated());
      if (b->evaluated()) REQUIRE(*b->holds == (b->state == pptq::CheckState::Holds));
      if (b->state == pptq::CheckState::NotEvaluated) continue;
      if (!b->holds) {
        ++not_applicable;
        continue;
      }
      if (b->probabilistic) {
        ++prob_evaluated;
        if (!*b->holds) ++prob_failures;
      } else {
        ++evaluated;
        if (!*b->holds) ++violations;
        CHECK(*b->holds);
      }
      if (b->ratio) {
        max_ratio = std::max(max_ratio, *b->ratio);
        min_ratio = std::min(min_ratio, *b->ratio);
      }
    }
    // clipping ⇒ every bound that needs "no clipping" is reported not applicable
    if (r.clipped_total() > 0) {
      REQUIRE_FALSE(rep.l2.holds.has_value());
      REQUIRE_FALSE(rep.l2.bound.has_value());
      REQUIRE(rep.l2.why_not.find("clipping") != std::string::npos);
      REQUIRE(rep.l2.state == pptq::CheckState::NotApplicable);
    }

    // Independent check with the plain reference loop: the drift statement itself (docs/theory.md §3.4), the
    // l2 bound (δ/2)·C2 and the weight bound from reference constants (nearest, one δ per row, no clip).
    if (!qronos && rounding == pptq::Rounding::Nearest && grid.group_size < 0 && r.clipped_total() == 0) {
      MatrixXd E;
      const MatrixXd Qref = ref::optq(W, X.transpose() * X, r.lambda, perm, library_rounding(r.grid), &E);
      const double C2 = std::sqrt(ref::C2_sq(X, r.lambda, perm));
      const double Cw = ref::Cw(X, r.lambda, perm);
      for (Index i = 0; i < rows; ++i) {
        const double delta = r.grid.scale(i, 0);
        const VectorXd wp = ref::permute_vec(W.row(i).transpose(), perm);
        const VectorXd qp = ref::permute_vec(Qref.row(i).transpose(), perm);
        const double drift = ((qp + E.row(i).transpose()) - wp).cwiseAbs().maxCoeff();  // max_t |w^(t-1)_t − w_t|
        REQUIRE(drift <= 0.5 * delta * std::sqrt(double(N)) * Cw * (1 + 1e-9));
        const VectorXd d = (W.row(i) - Qref.row(i)).transpose();
        REQUIRE((X * d).norm() <= 0.5 * delta * C2 * (1 + 1e-9));
        REQUIRE(d.norm() <= 0.5 * delta * C2 / std::sqrt(r.lambda) * (1 + 1e-9));
      }
      ++ref_checked;
    }
  }
  if (verbose())
    std::printf("[bounds sweep] cases %d (m<N %d, qronos %d, stochastic %d, grouped %d): deterministic checks %d, "
                "violations %d; probabilistic %d, failures %d; not applicable %d; reference-checked %d; "
                "bound/measured in [%.4g, %.4g]\n",
                n_cases, wide_cases, qronos_cases, stochastic_cases, grouped_cases, evaluated, violations, prob_evaluated,
                prob_failures, not_applicable, ref_checked, min_ratio, max_ratio);
  REQUIRE(violations == 0);
  REQUIRE(evaluated >= 400);
  REQUIRE(prob_evaluated >= 60);
  REQUIRE(prob_failures <= std::max(1, prob_evaluated / 20));
  REQUIRE(ref_checked >= 20);
  REQUIRE(min_ratio >= 1.0 - 1e-9);
}

TEST_CASE("bounds: ordering table of docs/theory.md §3.3 (decreasing norm gives the smallest C2)", "[bounds][order]") {
  std::mt19937_64 rng(33);
  const Index m = 512, N = 128;
  const MatrixXd X = structured_inputs(m, N, rng, 8, 1.0);
  const double lam = lambda_rel(X, 0.01);
  const double dec = std::pow(pptq::constants_from_inputs(X, lam, decreasing_norm(X)).C2, 2);
  const double nat = std::pow(pptq::constants_from_inputs(X, lam, ref::identity_perm(N)).C2, 2);
  const double inc = std::pow(pptq::constants_from_inputs(X, lam, increasing_norm(X)).C2, 2);
  double rnd_min = 1e300;
  for (int k = 0; k < 5; ++k) rnd_min = std::min(rnd_min, std::pow(pptq::constants_from_inputs(X, lam, random_perm(N, rng)).C2, 2));
  if (verbose())
    std::printf("[ordering, m=512 N=128 c=0.01] C2^2: decreasing %.4g, natural %.4g, increasing %.4g, best of 5 random "
                "%.4g; ||X||_F^2 (RTN scale) %.4g\n",
                dec, nat, inc, rnd_min, X.squaredNorm());
  REQUIRE(dec < nat);
  REQUIRE(nat < inc);
  REQUIRE(dec < rnd_min);
  REQUIRE(dec < 0.5 * inc);
  REQUIRE(dec < X.squaredNorm());  // far below RTN's scale Σ‖X_t‖²
}

TEST_CASE("bounds: adversarial example of docs/theory.md §4.4 (deterministic l-inf = (1/2 - eps) delta sqrt(N))", "[bounds][adversarial]") {
  const double delta = 1.0, eps = 0.05, eta = 0.05;
  for (Index N : {Index(64), Index(256), Index(1024)}) {
    const Index reps = 10;
    const auto ex = pptq::adversarial_example(N, delta, eps, reps);
    REQUIRE((ex.X.transpose() * ex.X - MatrixXd::Identity(N, N)).cwiseAbs().maxCoeff() < 1e-12);
    OptqOptions opt;
    opt.lambda = lambda_rel(ex.X, 0.01);
    const GridSpec grid = infinite_grid(4, -1, false, delta);

    const auto rd = pptq::optq(ex.W.topRows(1), MatrixXd(ex.X.transpose() * ex.X), grid, opt);
    const auto det = pptq::layer_report(rd, ex.W.topRows(1), ex.X);
    REQUIRE(rd.dequantized.cwiseAbs().maxCoeff() == 0.0);
    REQUIRE(rel_diff(*det.err_linf, ex.deterministic_linf()) < 1e-9);
    REQUIRE(rel_diff(det.err_fro, ex.deterministic_linf()) < 1e-9);
    REQUIRE(*det.l2.holds);
    // the l2 bound (δ/2)√(N(1+λ)) is tight up to ε
    REQUIRE(rel_diff(*det.l2.bound, 0.5 * delta * std::sqrt(N * (1 + *opt.lambda))) < 1e-9);
    REQUIRE(*det.l2.ratio < 1.0 / (1 - 2 * eps) * std::sqrt(1 + *opt.lambda) * (1 + 1e-9));

    // stochastic: 10 independent rows (the philox stream is keyed by row), each within the single-row bound
    opt.rounding = pptq::Rounding::Stochastic;
    opt.seed = 2024;
    const auto rs = pptq::optq(ex.W, MatrixXd(ex.X.transpose() * ex.X), grid, opt);
    const auto sto = pptq::layer_report(rs, ex.W, ex.X);
    REQUIRE(sto.clipped == 0);
    REQUIRE(rel_diff(*sto.constants->Cinf, 1.0) < 1e-9);  // a_t = X_t: rows of an orthogonal matrix
    const double single = delta * pptq::azuma_factor(double(N), eta) * *sto.constants->Cinf;
    const MatrixXd Err = ex.X * (ex.W - rs.dequantized).transpose();
    const double worst = Err.cwiseAbs().maxCoeff();
    REQUIRE(worst <= single);
    REQUIRE(*sto.linf.holds);
    REQUIRE(worst < ex.deterministic_linf());
    if (verbose())
      std::printf("[adversarial] N=%4ld  deterministic linf %.4f (= %.4f)  stochastic linf max of 10 rows %.4f  Azuma bound %.4f\n",
                  static_cast<long>(N), *det.err_linf, ex.deterministic_linf(), worst, single);
  }
  REQUIRE_THROWS_WITH(pptq::adversarial_example(48), Catch::Contains("power of two"));
}

TEST_CASE("bounds: stochastic l-inf bound holds in at least 1 - eta of 200 seeded trials", "[bounds][stochastic]") {
  std::mt19937_64 rng(5);
  const Index m = 96, N = 48, rows = 4;
  const MatrixXd X = structured_inputs(m, N, rng, 6, 0.7);
  const MatrixXd W = gaussian(rows, N, rng, 0.05);
  const MatrixXd H = X.transpose() * X;
  const double eta = 0.05;
  const int trials = 200;
  int layer_hits = 0, row_hits = 0, row_total = 0;
  double energy_mean = 0, energy_bound = 0, worst_ratio = 1e300;
  for (int k = 0; k < trials; ++k) {
    OptqOptions opt;
    opt.lambda = lambda_rel(X, 0.01);
    opt.rounding = pptq::Rounding::Stochastic;
    opt.seed = 9000 + static_cast<std::uint64_t>(k);
    const auto r = pptq::optq(W, H, infinite_grid(3, -1, false, 0.02), opt);
    pptq::ReportOptions ro;
    ro.eta = eta;
    const auto rep = pptq::layer_report(r, W, X, ro);
    REQUIRE(rep.linf.holds.has_value());
    if (*rep.linf.holds) ++layer_hits;
    worst_ratio = std::min(worst_ratio, *rep.linf.ratio);
    // per row at level η without the union over rows: δ√(½ log(2m/η))·C∞
    const double b = 0.02 * pptq::azuma_factor(double(m), eta) * *rep.constants->Cinf;
    const MatrixXd Err = X * (W - r.dequantized).transpose();
    for (Index i = 0; i < rows; ++i, ++row_total)
      if (Err.col(i).cwiseAbs().maxCoeff() <= b) ++row_hits;
    energy_mean += *rep.energy / trials;
    energy_bound = *rep.expected_energy_bound;
  }
  if (verbose())
    std::printf("[stochastic] %d trials: layer bound held in %d (%.3f), single-row bound in %d/%d (%.3f); "
                "min bound/measured %.3f; mean energy %.4g vs E-bound %.4g\n",
                trials, layer_hits, double(layer_hits) / trials, row_hits, row_total, double(row_hits) / row_total,
                worst_ratio, energy_mean, energy_bound);
  REQUIRE(layer_hits >= static_cast<int>(std::ceil((1 - eta) * trials)));
  REQUIRE(row_hits >= static_cast<int>(std::ceil((1 - eta) * row_total)));
  REQUIRE(energy_mean <= energy_bound);
}

TEST_CASE("bounds: the certificate equals the measured left-hand side (1e-10 relative)", "[bounds][certificate]") {
  std::mt19937_64 rng(11);
  const Index m = 120, N = 40, rows = 6;
  const MatrixXd X = structured_inputs(m, N, rng, 8, 0.5);
  const MatrixXd Xt = X + 0.05 * gaussian(m, N, rng) * (X.norm() / std::sqrt(double(m * N)));
  const MatrixXd W = gaussian(rows, N, rng, 0.1);
  int methods = 0;
  auto check = [&](const pptq::LayerReport& rep) {
    REQUIRE(rep.certificate.has_value());
    for (Index i = 0; i < rows; ++i) REQUIRE(rel_diff((*rep.certificate)(i), (*rep.certificate_lhs)(i)) < 1e-10);
    ++methods;
  };
  for (int affine = 0; affine < 2; ++affine) {
    GridSpec g = affine ? GridSpec{} : infinite_grid(4);
    if (affine) g.bits = 2;  // heavy clipping: the identity still holds
    for (auto rnd : {pptq::Rounding::Nearest, pptq::Rounding::Stochastic}) {
      OptqOptions opt;
      opt.rounding = rnd;
      opt.seed = 3;
      const auto r = pptq::optq(W, MatrixXd(X.transpose() * X), g, opt);
      check(pptq::layer_report(r, W, X));
      for (auto form : {pptq::QronosForm::LeastSquaresThenOptq, pptq::QronosForm::Sequential}) {
        pptq::QronosOptions qo;
        qo.damp = 0.01;
        qo.form = form;
        qo.rounding = rnd;
        qo.seed = 4;
        const auto q = pptq::qronos(W, X, Xt, g, qo);
        check(pptq::layer_report(q, W, X, Xt));
      }
    }
  }
  // RTN and GPFQ have no certificate
  const auto rt = pptq::rtn(W, infinite_grid(4));
  REQUIRE_FALSE(pptq::layer_report(rt, W, X).certificate.has_value());
  const auto gp = pptq::gpfq(W, X, Xt, infinite_grid(4));
  const auto grep = pptq::layer_report(gp, W, X, Xt);
  REQUIRE_FALSE(grep.certificate.has_value());
  REQUIRE(grep.notes.size() >= 1);
  REQUIRE(methods == 12);
}

TEST_CASE("bounds: Qronos bounds against the reference (R_lambda, sequential first-step excess)", "[bounds][qronos]") {
  std::mt19937_64 rng(21);
  const Index m = 90, N = 30, rows = 5;
  const MatrixXd X = structured_inputs(m, N, rng, 6, 0.5);
  const MatrixXd Xt = X + 0.1 * gaussian(m, N, rng) * (X.norm() / std::sqrt(double(m * N)));
  const MatrixXd W = gaussian(rows, N, rng, 0.1);
  const double lam = lambda_rel(Xt, 0.01);
  for (auto form : {pptq::QronosForm::LeastSquaresThenOptq, pptq::QronosForm::Sequential}) {
    pptq::QronosOptions qo;
    qo.lambda = lam;
    qo.form = form;
    const auto r = pptq::qronos(W, X, Xt, infinite_grid(3, -1, false, 0.05), qo);
    const auto rep = pptq::layer_report(r, W, X, Xt);
    INFO(rep.summary());
    const pptq::BoundConstants& k = *rep.constants;
    REQUIRE(rel_diff(k.C2 * k.C2, ref::C2_sq(Xt, lam, r.perm)) < 1e-8);
    REQUIRE(rel_diff(*k.Cinf, ref::Cinf(Xt, lam, r.perm)) < 1e-8);
    MatrixXd Wt;
    if (form == pptq::QronosForm::LeastSquaresThenOptq) {
      const MatrixXd Qref = ref::qronos_ls_then_optq(W, X, Xt, lam, r.perm, ref::round_to_grid(0.05), &Wt);
      REQUIRE((Qref - r.dequantized).cwiseAbs().maxCoeff() < 1e-12);
    }
    for (Index i = 0; i < rows; ++i) {
      const double R2 = ref::R_lambda_sq(W.row(i).transpose(), X, Xt, lam);
      REQUIRE(rel_diff((*rep.R_lambda)(i) * (*rep.R_lambda)(i), R2) < 1e-8);
      // docs/theory.md §5.5, uniform δ: ‖Xw − X̃q‖ ≤ sqrt(R² + (δ²/4)C2²) for the LS form
      if (form == pptq::QronosForm::LeastSquaresThenOptq)
        REQUIRE(rep.err_l2(i) <= pptq::qronos_l2_bound(std::sqrt(R2), 0.05, k) * (1 + 1e-9));
    }
    REQUIRE(*rep.l2.holds);
    REQUIRE(*rep.weight_l2_check.holds);
    REQUIRE(*rep.drift.holds);
    REQUIRE(rep.holds);
  }
  // stochastic Qronos (LS form): the l-inf statement is evaluated
  pptq::QronosOptions qo;
  qo.lambda = lam;
  qo.rounding = pptq::Rounding::Stochastic;
  const auto r = pptq::qronos(W, X, Xt, infinite_grid(3, -1, false, 0.05), qo);
  const auto rep = pptq::layer_report(r, W, X, Xt);
  REQUIRE(rep.linf.holds.has_value());
  REQUIRE(*rep.linf.holds);
  for (Index i = 0; i < rows; ++i) {
    const auto b = pptq::qronos_stochastic_linf_bound((*rep.ls_residual_inf)(i), 0.05, *rep.constants, m * rows, 0.05);
    REQUIRE(rel_diff(*b, rep.linf.row_bound(i)) < 1e-12);
  }
}

TEST_CASE("bounds: clipping makes the bounds not applicable, and the alphabet size prevents it", "[bounds][alphabet]") {
  std::mt19937_64 rng(17);
  const Index m = 64, N = 32, rows = 6;
  const MatrixXd X = structured_inputs(m, N, rng, 6, 1.0);
  MatrixXd W = gaussian(rows, N, rng, 0.05);
  const MatrixXd H = X.transpose() * X;
  OptqOptions opt;
  opt.damp = 0.01;
  // an affine 2-bit grid: OPTQ's updated weights leave the range
  GridSpec aff;
  aff.bits = 2;
  const auto rc = pptq::optq(W, H, aff, opt);
  REQUIRE(rc.clipped_total() > 0);
  const auto repc = pptq::layer_report(rc, W, X);
  REQUIRE_FALSE(repc.l2.holds.has_value());
  REQUIRE_FALSE(repc.l2.bound.has_value());
  REQUIRE_FALSE(repc.weight_l2_check.holds.has_value());
  REQUIRE(repc.l2.why_not.find("clipping") != std::string::npos);
  REQUIRE(repc.holds);
  // a first weight clipped far outside a small midtread grid: its error exceeds δ/2, and that is clipping,
  // not the first-step excess of sequential Qronos (no note about it)
  GridSpec small;
  small.alphabet = pptq::Alphabet::Midtread;
  small.bits = 2;
  small.delta = 0.01;
  const auto rs = pptq::optq(W, H, small, opt);
  REQUIRE(std::abs(W(0, rs.perm[0]) - rs.dequantized(0, rs.perm[0])) > 0.5 * small.delta);
  const auto reps = pptq::layer_report(rs, W, X);
  REQUIRE(reps.l2.state == pptq::CheckState::NotApplicable);
  for (const auto& n : reps.notes) CHECK(n.find("Qronos") == std::string::npos);

  // the deterministic K of docs/theory.md §3.4 on the infinite run, then the midtread alphabet with those bits: no clipping
  const double delta = 0.02;
  const auto ri = pptq::optq(W, H, infinite_grid(4, -1, false, delta), opt);
  const auto repi = pptq::layer_report(ri, W, X);
  REQUIRE(repi.alphabet.has_value());
  const pptq::AlphabetSize a = *repi.alphabet;
  const pptq::AlphabetSize a2 = pptq::alphabet_size(W.cwiseAbs().maxCoeff(), delta, *repi.constants, pptq::Rounding::Nearest);
  REQUIRE(a2.K == a.K);
  REQUIRE(a.bits <= 8);
  GridSpec mid;
  mid.alphabet = pptq::Alphabet::Midtread;
  mid.bits = a.bits;
  mid.delta = delta;
  REQUIRE(mid.K() >= a.K);
  const auto rm = pptq::optq(W, H, mid, opt);
  REQUIRE(rm.clipped_total() == 0);
  REQUIRE((rm.dequantized - ri.dequantized).cwiseAbs().maxCoeff() == 0.0);  // the same run as the infinite one
  const auto s = pptq::alphabet_size(W.cwiseAbs().maxCoeff(), delta, *repi.constants, pptq::Rounding::Stochastic, 0.05);
  REQUIRE(s.K_min > W.cwiseAbs().maxCoeff() / delta);
  REQUIRE(s.bits == static_cast<int>(std::ceil(std::log2(2.0 * s.K + 1))));
}

TEST_CASE("bounds: report forms (H only, RTN, GPFQ, float) and validation", "[bounds][report]") {
  std::mt19937_64 rng(19);
  const Index m = 64, N = 24, rows = 4;
  const MatrixXd X = structured_inputs(m, N, rng, 6, 0.5);
  const MatrixXd W = gaussian(rows, N, rng, 0.05);
  const MatrixXd H = X.transpose() * X;
  const auto r = pptq::optq(W, H, infinite_grid(4));
  pptq::ReportOptions ro;
  ro.compare_rtn = true;
  const auto rx = pptq::layer_report(r, W, X, ro);
  const auto rh = pptq::layer_report_gram(r, W, H, ro);
  REQUIRE(rel_diff(rx.err_fro, rh.err_fro) < 1e-9);
  REQUIRE(rel_diff(*rx.l2.bound, *rh.l2.bound) < 1e-12);
  REQUIRE_FALSE(rh.err_linf.has_value());
  REQUIRE_FALSE(rh.constants->Cinf.has_value());
  REQUIRE(rh.constants->Cinf_crude.has_value());
  REQUIRE(rx.rtn_fro.has_value());
  REQUIRE(rel_diff(*rx.rtn_fro, *rh.rtn_fro) < 1e-9);
  REQUIRE(rx.err_fro < *rx.rtn_fro);
  REQUIRE(rel_diff(rx.rel_fro, rx.err_fro / (X * W.transpose()).norm()) < 1e-12);
  REQUIRE(rx.holds);
  REQUIRE(rx.summary().find("all evaluated bounds hold: yes") != std::string::npos);

  // RTN: measured, the triangle-inequality bound; constants only on request
  const auto rt = pptq::rtn(W, infinite_grid(4));
  auto rep = pptq::layer_report(rt, W, X);
  REQUIRE_FALSE(rep.constants.has_value());
  REQUIRE(*rep.rtn_l2.holds);
  pptq::ReportOptions rc;
  rc.rtn_constants = true;
  rep = pptq::layer_report(rt, W, X, rc);
  REQUIRE(rep.constants.has_value());
  REQUIRE(rel_diff(rep.constants->C2, pptq::constants(r, X).C2) < 1e-9);  // = OPTQ's defaults (act order, damp 0.01)
  pptq::RtnOptions so;
  so.rounding = pptq::Rounding::Stochastic;
  rep = pptq::layer_report(pptq::rtn(W, infinite_grid(4), so), W, X);
  REQUIRE(*rep.rtn_linf.holds);

  // float results: same report within float tolerance
  const Eigen::MatrixXf Wf = W.cast<float>();
  const auto rf = pptq::optq(Wf, H, infinite_grid(4));
  const auto repf = pptq::layer_report(rf, Wf, X);
  REQUIRE(repf.holds);
  REQUIRE(*repf.certificate_gap < 1e-4);

  // validation
  pptq::ReportOptions bad;
  bad.eta = 0;
  REQUIRE_THROWS_WITH(pptq::layer_report(r, W, X, bad), "pptq: ReportOptions.eta must be in (0, 1), got 0");
  bad.eta = 1;
  REQUIRE_THROWS_WITH(pptq::layer_report(r, W, X, bad), "pptq: ReportOptions.eta must be in (0, 1), got 1");
  REQUIRE_THROWS_AS(pptq::layer_report(r, W, MatrixXd(X.leftCols(N - 1))), std::invalid_argument);
  REQUIRE_THROWS_AS(pptq::layer_report(r, MatrixXd(W.topRows(2)), X), std::invalid_argument);
  REQUIRE_THROWS_AS(pptq::layer_report(r, W, X, MatrixXd(X.topRows(m - 1))), std::invalid_argument);
  MatrixXd Xn = X;
  Xn(3, 4) = std::nan("");
  REQUIRE_THROWS_WITH(pptq::layer_report(r, W, Xn), Catch::Contains("non-finite"));
  // inputs that do not belong to the factor (a wrong h_scale) are caught
  pptq::ReportOptions hs;
  hs.h_scale = 2.0;
  REQUIRE_THROWS_WITH(pptq::layer_report(r, W, X, hs), Catch::Contains("does not belong"));
}

TEST_CASE("bounds: each check's state (not evaluated, not applicable, holds, violated)", "[bounds][state]") {
  std::mt19937_64 rng(29);
  const Index m = 80, N = 24, rows = 4;
  const MatrixXd X = structured_inputs(m, N, rng, 6, 0.5);
  const MatrixXd Xt = X + 0.05 * gaussian(m, N, rng);
  const MatrixXd W = gaussian(rows, N, rng, 0.05);
  const MatrixXd H = X.transpose() * X;
  const double delta = 0.01;
  const auto r = pptq::optq(W, H, infinite_grid(4, -1, false, delta));
  const auto rep = pptq::layer_report(r, W, X);
  REQUIRE(rep.l2.state == pptq::CheckState::Holds);
  REQUIRE(rep.drift.state == pptq::CheckState::Holds);
  REQUIRE(rep.linf.state == pptq::CheckState::NotApplicable);  // deterministic rounding
  REQUIRE(rep.linf.why_not.find("deterministic") != std::string::npos);
  REQUIRE(rep.rtn_l2.state == pptq::CheckState::NotEvaluated);
  REQUIRE(rep.summary().find("rtn_l2") == std::string::npos);   // what the method has no bound for is not listed
  REQUIRE(rep.summary().find("linf: deterministic") != std::string::npos);

  // the Gram form has no l-infinity figures: stochastic OPTQ's l-inf check needs X
  pptq::OptqOptions so;
  so.rounding = pptq::Rounding::Stochastic;
  so.seed = 1;
  const auto rs = pptq::optq(W, H, infinite_grid(4, -1, false, delta), so);
  REQUIRE(pptq::layer_report(rs, W, X).linf.state == pptq::CheckState::Holds);
  const auto gs = pptq::layer_report_gram(rs, W, H);
  REQUIRE(gs.linf.state == pptq::CheckState::NotApplicable);
  REQUIRE(gs.linf.why_not == "needs X (only H was given)");

  // OPTQ judged on the mismatched objective: its bounds are for the matched problem
  const auto mis = pptq::layer_report(r, W, X, Xt);
  for (const pptq::BoundCheck* b : {&mis.l2, &mis.linf, &mis.weight_l2_check, &mis.drift})
    REQUIRE(b->state == pptq::CheckState::NotApplicable);

  // RTN has only its own two; GPFQ none
  const auto rt = pptq::layer_report(pptq::rtn(W, infinite_grid(4)), W, X);
  REQUIRE(rt.rtn_l2.state == pptq::CheckState::Holds);
  REQUIRE(rt.rtn_linf.state == pptq::CheckState::NotApplicable);
  REQUIRE(rt.l2.state == pptq::CheckState::NotEvaluated);
  const auto gp = pptq::layer_report(pptq::gpfq(W, X, Xt, infinite_grid(4)), W, X, Xt);
  for (const pptq::BoundCheck* b : gp.checks()) {
    REQUIRE(b->state == pptq::CheckState::NotEvaluated);
    REQUIRE(b->why_not == "does not apply to this method");
  }

  // a result whose weights were moved off the run's output breaks the l2 and weight bounds: Violated
  auto bad = r;
  bad.dequantized.row(0).array() += 100 * delta;
  const auto vb = pptq::layer_report(bad, W, X);
  REQUIRE(vb.l2.state == pptq::CheckState::Violated);
  REQUIRE_FALSE(*vb.l2.holds);
  REQUIRE(vb.l2.why_not.empty());
  REQUIRE(vb.weight_l2_check.state == pptq::CheckState::Violated);
  REQUIRE_FALSE(vb.holds);
  REQUIRE(vb.summary().find("VIOLATED") != std::string::npos);
  REQUIRE(vb.summary().find("all evaluated bounds hold: NO") != std::string::npos);
  REQUIRE(std::string(pptq::to_string(pptq::CheckState::Violated)) == "violated");
}

TEST_CASE("bounds: a numerical failure of the standalone constants is a NumericalError", "[bounds][constants][errors]") {
  std::mt19937_64 rng(31);
  // finite X whose Gram overflows double: X^T X + lambda I cannot be factored
  const MatrixXd Xhuge = 1e200 * gaussian(6, 4, rng);
  REQUIRE_THROWS_AS(pptq::constants_from_inputs(Xhuge, 1.0), pptq::NumericalError);
  try {
    pptq::constants_from_inputs(Xhuge, 1.0);
    FAIL("no exception");
  } catch (const pptq::Error& e) {
    REQUIRE(e.kind() == pptq::ErrorKind::Numerical);
    REQUIRE(std::string(e.what()).find("constants_from_inputs") != std::string::npos);
  }
  // a symmetric H with a positive diagonal that is not positive semidefinite: H + 0.1 I is indefinite
  MatrixXd H(2, 2);
  H << 1, 2, 2, 1;
  REQUIRE_THROWS_AS(pptq::constants_from_gram(H, 0.1), pptq::NumericalError);
  REQUIRE_THROWS_WITH(pptq::constants_from_gram(H, 0.1), Catch::Contains("constants_from_gram"));
  // misuse stays a UsageError (std::invalid_argument)
  REQUIRE_THROWS_AS(pptq::constants_from_gram(H, 0.0), pptq::UsageError);
  MatrixXd Xn = gaussian(6, 4, rng);
  Xn(2, 1) = std::nan("");
  REQUIRE_THROWS_AS(pptq::constants_from_inputs(Xn, 1.0), std::invalid_argument);
  // a well-posed H still works
  REQUIRE(pptq::constants_from_gram(MatrixXd(H + 2 * MatrixXd::Identity(2, 2)), 0.1).C2 > 0);
}

TEST_CASE("measure: errors against their definitions (matched, mismatched, Gram), as the report gives them", "[measure]") {
  std::mt19937_64 rng(37);
  const Index m = 300, N = 40, rows = 37;  // m·rows·N well above the size the BLAS backend takes
  const MatrixXd X = structured_inputs(m, N, rng, 8, 0.5);
  const MatrixXd Xq = X + 0.05 * gaussian(m, N, rng);
  const MatrixXd W = gaussian(rows, N, rng, 0.1);
  const auto r = pptq::optq(W, MatrixXd(X.transpose() * X), infinite_grid(3));
  const MatrixXd& Q = r.dequantized;

  const MatrixXd E = X * (W - Q).transpose(), Y = X * W.transpose();
  const pptq::MeasuredErrors e = pptq::measure_errors(W, Q, X);
  REQUIRE(e.row_l2.size() == rows);
  REQUIRE(e.row_linf.size() == rows);
  for (Index i = 0; i < rows; ++i) {
    REQUIRE(rel_diff(e.row_l2(i), E.col(i).norm()) < 1e-12);
    REQUIRE(rel_diff(e.row_linf(i), E.col(i).cwiseAbs().maxCoeff()) < 1e-12);
  }
  REQUIRE(rel_diff(e.fro, E.norm()) < 1e-12);
  REQUIRE(rel_diff(*e.linf, E.cwiseAbs().maxCoeff()) < 1e-12);
  REQUIRE(rel_diff(e.ref_fro, Y.norm()) < 1e-12);
  REQUIRE(rel_diff(e.rel_fro, E.norm() / Y.norm()) < 1e-12);

  const MatrixXd Em = Y - Xq * Q.transpose();
  const pptq::MeasuredErrors em = pptq::measure_errors(W, Q, X, Xq);
  REQUIRE(rel_diff(em.fro, Em.norm()) < 1e-12);
  REQUIRE(rel_diff(*em.linf, Em.cwiseAbs().maxCoeff()) < 1e-12);
  for (Index i = 0; i < rows; ++i) REQUIRE(rel_diff(em.row_l2(i), Em.col(i).norm()) < 1e-12);
  REQUIRE(rel_diff(em.fro, e.fro) > 1e-3);  // X-tilde is used

  // from the Gram (any positive multiple with its h_scale): the same l2 figures, no l-infinity ones
  const MatrixXd H = X.transpose() * X;
  const pptq::MeasuredErrors eg = pptq::measure_errors_gram(W, Q, MatrixXd(0.25 * H), 0.25);
  for (Index i = 0; i < rows; ++i) REQUIRE(rel_diff(eg.row_l2(i), e.row_l2(i)) < 1e-8);
  REQUIRE(rel_diff(eg.ref_fro, e.ref_fro) < 1e-10);
  REQUIRE_FALSE(eg.linf.has_value());
  REQUIRE(eg.row_linf.size() == 0);

  // float weights are measured in double
  const Eigen::MatrixXf Wf = W.cast<float>(), Qf = Q.cast<float>();
  REQUIRE(rel_diff(pptq::measure_errors(Wf, Qf, X).fro, (X * (Wf.cast<double>() - Qf.cast<double>()).transpose()).norm()) < 1e-12);

  // the report's measured figures are these, computed the same way
  pptq::ReportOptions ro;
  ro.compare_rtn = true;
  const auto rep = pptq::layer_report(r, W, X, ro);
  REQUIRE(rep.err_fro == e.fro);
  REQUIRE(*rep.err_linf == *e.linf);
  REQUIRE(rep.rel_fro == e.rel_fro);
  REQUIRE(rep.err_l2 == e.row_l2);
  MatrixXd Qr(rows, N);  // RTN on the result's grid
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < N; ++j) {
      const auto lat = r.grid.lattice(i, j);
      bool clipped = false;
      Qr(i, j) = lat.value(lat.nearest(W(i, j), clipped));
    }
  REQUIRE(rel_diff(*rep.rtn_fro, pptq::measure_errors(W, Qr, X).fro) < 1e-12);
  const auto repm = pptq::layer_report(r, W, X, Xq);
  REQUIRE(repm.err_fro == em.fro);
  REQUIRE(pptq::layer_report_gram(r, W, H).err_fro == pptq::measure_errors_gram(W, Q, H).fro);

  // misuse
  REQUIRE_THROWS_AS(pptq::measure_errors(W, MatrixXd(Q.topRows(rows - 1)), X), pptq::UsageError);
  REQUIRE_THROWS_AS(pptq::measure_errors(W, Q, MatrixXd(X.leftCols(N - 1))), pptq::UsageError);
  REQUIRE_THROWS_AS(pptq::measure_errors(W, Q, X, MatrixXd(Xq.topRows(m - 1))), pptq::UsageError);
  REQUIRE_THROWS_AS(pptq::measure_errors_gram(W, Q, H, 0.0), pptq::UsageError);
  MatrixXd Xn = X;
  Xn(5, 7) = std::nan("");
  REQUIRE_THROWS_WITH(pptq::measure_errors(W, Q, Xn), Catch::Contains("non-finite"));
}

#ifdef _OPENMP
TEST_CASE("measure: the figures do not depend on the thread count", "[measure][threads]") {
  std::mt19937_64 rng(41);
  const Index m = 700, N = 48, rows = 40;  // several fixed chunks of samples
  const MatrixXd X = gaussian(m, N, rng), Xq = X + 0.1 * gaussian(m, N, rng);
  const MatrixXd W = gaussian(rows, N, rng, 0.1), Q = W + 0.01 * gaussian(rows, N, rng);
  const MatrixXd H = X.transpose() * X;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto a = pptq::measure_errors(W, Q, X, Xq);
  const auto ag = pptq::measure_errors_gram(W, Q, H);
  omp_set_num_threads(2);
  const auto b = pptq::measure_errors(W, Q, X, Xq);
  const auto bg = pptq::measure_errors_gram(W, Q, H);
  omp_set_num_threads(saved);
  REQUIRE(a.row_l2 == b.row_l2);
  REQUIRE(a.row_linf == b.row_linf);
  REQUIRE(a.ref_fro == b.ref_fro);
  REQUIRE(ag.row_l2 == bg.row_l2);
  REQUIRE(ag.ref_fro == bg.ref_fro);
}
#endif

TEST_CASE("bounds: OPTQ on a layer with dead columns reports about its start point (dead weights 0)", "[bounds][dead]") {
  std::mt19937_64 rng(91);
  MatrixXd X = structured_inputs(200, 40, rng);
  X.col(3).setZero();
  X.col(17).setZero();
  const MatrixXd W = gaussian(12, 40, rng);  // nonzero weights on the dead columns
  GridSpec g;
  g.alphabet = pptq::Alphabet::Infinite;
  g.delta = 0.05;
  const auto r = pptq::optq(W, MatrixXd(X.transpose() * X), g);
  REQUIRE(r.ok());
  const pptq::LayerReport rep = pptq::layer_report(r, W, X);
  REQUIRE(rep.certificate_gap);
  CHECK(*rep.certificate_gap < 1e-9);  // λ·Σ w_dead² would show here if the report used W itself
  for (const auto& n : rep.notes) CHECK(n.find("inputs may not be those") == std::string::npos);
  CHECK(rep.weight_l2_check.state == pptq::CheckState::Holds);
  CHECK(rep.drift.state == pptq::CheckState::Holds);
  CHECK(rep.l2.state == pptq::CheckState::Holds);
}

TEST_CASE("bounds: an OPTQ result judged on the mismatched objective gets measured errors only", "[bounds][mismatch]") {
  std::mt19937_64 rng(92);
  const MatrixXd X = structured_inputs(150, 30, rng);
  const MatrixXd Xq = X + 0.05 * gaussian(150, 30, rng);
  const MatrixXd W = gaussian(8, 30, rng);
  const auto r = pptq::optq(W, MatrixXd(Xq.transpose() * Xq), GridSpec{});
  const pptq::LayerReport rep = pptq::layer_report(r, W, X, Xq);
  CHECK_FALSE(rep.certificate);
  CHECK_FALSE(rep.certificate_gap);
  for (const auto& n : rep.notes) CHECK(n.find("certificate identity off") == std::string::npos);
  CHECK(rep.l2.state == pptq::CheckState::NotApplicable);
  CHECK(rep.err_fro > 0);
}

namespace {

/// The test's own RTN row error ‖X(w − rtn(w))‖ on the result's grid (each weight to its nearest point).
double rtn_row_error(const pptq::QuantResult<double>& r, const MatrixXd& W, const MatrixXd& X, Index i) {
  VectorXd e(W.cols());
  for (Index j = 0; j < W.cols(); ++j) {
    const auto lat = r.grid.lattice(i, j);
    bool clip = false;
    e(j) = W(i, j) - lat.value(lat.nearest(W(i, j), clip));
  }
  return (X * e).norm();
}

}  // namespace

TEST_CASE("bounds: a report without products with X equals the full one where it measures, and samples rows",
          "[bounds][report][sampled]") {
  std::mt19937_64 rng(93);
  const Index m = 300, N = 48, rows = 40;
  const MatrixXd X = structured_inputs(m, N, rng, 8, 0.7);
  const MatrixXd W = gaussian(rows, N, rng, 0.2);
  const MatrixXd H = X.transpose() * X;
  for (auto rnd : {pptq::Rounding::Nearest, pptq::Rounding::Stochastic}) {
    OptqOptions opt;
    opt.rounding = rnd;
    opt.seed = 5;
    opt.damp = 0.05;
    const auto r = pptq::optq(W, H, infinite_grid(3), opt);  // no clipping: every bound is evaluated
    REQUIRE(r.ok());
    pptq::ReportOptions full;
    full.compare_rtn = true;
    pptq::ReportOptions fast = full;
    fast.products_with_x = false;
    fast.sample_rows = rows;  // every row sampled: every figure is measured, as in the full report
    const pptq::LayerReport a = pptq::layer_report(r, W, X, full), b = pptq::layer_report(r, W, X, fast);
    REQUIRE(b.sampled_rows == rows);
    REQUIRE_FALSE(a.sampled_rows);
    for (Index i = 0; i < rows; ++i) CHECK(rel_diff(a.err_l2(i), b.err_l2(i)) < 1e-9);
    CHECK(rel_diff(a.err_fro, b.err_fro) < 1e-9);
    CHECK(rel_diff(a.ref_fro, b.ref_fro) < 1e-12);
    CHECK(rel_diff(a.rel_fro, b.rel_fro) < 1e-9);
    CHECK(rel_diff(*a.rtn_fro, *b.rtn_fro) < 1e-12);
    CHECK(rel_diff(*a.certificate_fro, *b.certificate_fro) < 1e-12);
    CHECK(*b.certificate_gap < 1e-9);
    CHECK(a.err_linf);
    CHECK_FALSE(b.err_linf);
    REQUIRE(a.constants);
    REQUIRE(b.constants);
    CHECK(a.constants->C2 == b.constants->C2);
    CHECK(a.constants->Cw == b.constants->Cw);
    CHECK(a.constants->Cinf_crude == b.constants->Cinf_crude);
    CHECK(a.constants->Cinf);
    CHECK_FALSE(b.constants->Cinf);
    CHECK(b.l2.state == a.l2.state);
    CHECK(b.drift.state == a.drift.state);
    if (rnd == pptq::Rounding::Stochastic) {
      CHECK(a.linf.evaluated());
      CHECK(b.linf.state == pptq::CheckState::NotApplicable);
    }
    // From H alone, the same figures.
    const pptq::LayerReport g = pptq::layer_report_gram(r, W, H, fast);
    CHECK(rel_diff(g.err_fro, b.err_fro) < 1e-9);
    CHECK(rel_diff(g.rel_fro, b.rel_fro) < 1e-9);
    CHECK(rel_diff(*g.rtn_fro, *b.rtn_fro) < 1e-9);

    // 7 of 40 rows: the rows ⌊k·40/7⌋; every row's error still from the energy identity.
    fast.sample_rows = 7;
    const pptq::LayerReport s = pptq::layer_report(r, W, X, fast);
    REQUIRE(s.sampled_rows == 7);
    for (Index i = 0; i < rows; ++i) CHECK(rel_diff(a.err_l2(i), s.err_l2(i)) < 1e-9);
    double err2 = 0, ref2 = 0, rtn2 = 0;
    for (Index k = 0; k < 7; ++k) {
      const Index i = k * rows / 7;
      err2 += a.err_l2(i) * a.err_l2(i);
      ref2 += (X * W.row(i).transpose()).squaredNorm();
      rtn2 += std::pow(rtn_row_error(r, W, X, i), 2);
    }
    CHECK(rel_diff(s.rel_fro, std::sqrt(err2 / ref2)) < 1e-9);
    CHECK(rel_diff(s.ref_fro, std::sqrt(ref2 * rows / 7.0)) < 1e-12);
    CHECK(rel_diff(*s.rtn_fro, std::sqrt(rtn2 * rows / 7.0)) < 1e-9);
    CHECK(rel_diff(*s.rtn_rel_fro, std::sqrt(rtn2 / ref2)) < 1e-9);
  }
}

TEST_CASE("bounds: a report without products falls back to measuring where the energy identity does not apply",
          "[bounds][report][sampled]") {
  std::mt19937_64 rng(94);
  MatrixXd X = structured_inputs(200, 32, rng);
  const MatrixXd W = gaussian(10, 32, rng);
  pptq::ReportOptions fast;
  fast.products_with_x = false;
  auto measured_in_full = [](const pptq::LayerReport& rep) {
    bool noted = false;
    for (const auto& n : rep.notes) noted = noted || n.find("energy identity gives them") != std::string::npos;
    return !rep.sampled_rows && noted;
  };
  CHECK(measured_in_full(pptq::layer_report(pptq::rtn(W, GridSpec{4}), W, X, fast)));  // RTN: no energy
  X.col(5).setZero();  // a dead column with non-zero weights: the start point is not w there
  const auto r = pptq::optq(W, MatrixXd(X.transpose() * X), GridSpec{4});
  const pptq::LayerReport rep = pptq::layer_report(r, W, X, fast);
  CHECK(measured_in_full(rep));
  CHECK(rel_diff(rep.err_fro, pptq::layer_report(r, W, X).err_fro) < 1e-12);
  fast.sample_rows = 0;
  CHECK_THROWS_WITH(pptq::layer_report(r, W, X, fast), Catch::Contains("ReportOptions.sample_rows must be >= 1, got 0"));
}

TEST_CASE("bounds: W is read as given (float, double, a block of a larger matrix, row-major): the same report",
          "[bounds][report][views]") {
  std::mt19937_64 rng(97);
  const Index m = 240, N = 48, rows = 20;
  MatrixXd X = structured_inputs(m, N, rng, 8, 0.6);
  const Eigen::MatrixXf Wf = gaussian(rows, N, rng, 0.1).cast<float>();
  const MatrixXd Wd = Wf.cast<double>();  // the same numbers
  const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Wr = Wf;
  Eigen::MatrixXf big = Eigen::MatrixXf::Constant(rows + 3, N + 2, 7.0f);
  big.block(2, 1, rows, N) = Wf;
  const auto same = [](const pptq::LayerReport& a, const pptq::LayerReport& b) {
    CHECK(a.err_l2 == b.err_l2);
    CHECK(a.weight_l2 == b.weight_l2);
    CHECK(a.ref_fro == b.ref_fro);
    CHECK(a.rtn_fro == b.rtn_fro);
    CHECK(*a.certificate == *b.certificate);
    const pptq::BoundCheck* const pairs[3][2] = {{&a.l2, &b.l2}, {&a.weight_l2_check, &b.weight_l2_check}, {&a.drift, &b.drift}};
    for (const auto& p : pairs) {
      REQUIRE(p[0]->evaluated());
      CHECK(p[0]->row_bound == p[1]->row_bound);
      CHECK(p[0]->row_measured == p[1]->row_measured);
    }
    CHECK(a.alphabet->K_min == b.alphabet->K_min);
  };
  for (const bool dead : {false, true}) {
    if (dead) X.col(5).setZero();  // W is not 0 there: the start point is, and the report measures in full
    const MatrixXd H = X.transpose() * X;
    OptqOptions opt;
    opt.damp = 0.05;
    const auto r = pptq::optq(Wf, H, infinite_grid(4, 8, true, 0.02), opt);
    REQUIRE(r.ok());
    pptq::ReportOptions fast;
    fast.products_with_x = false;
    fast.compare_rtn = true;
    fast.sample_rows = 7;
    const pptq::LayerReport a = pptq::layer_report_gram(r, Wf, H, fast);
    CHECK(a.sampled_rows.has_value() == !dead);
    same(a, pptq::layer_report_gram(r, Wd, H, fast));
    same(a, pptq::layer_report_gram(r, Wr, H, fast));
    same(a, pptq::layer_report_gram(r, big.block(2, 1, rows, N), H, fast));
    // ...and the figures read from W are what they are defined as, on W in double (dead weights 0).
    MatrixXd S = Wd;
    if (dead) S.col(5).setZero();
    const MatrixXd Q = r.dequantized.cast<double>();
    for (Index i = 0; i < rows; ++i) {
      CHECK(rel_diff(a.weight_l2(i), (Wd.row(i) - Q.row(i)).norm()) < 1e-14);
      CHECK(rel_diff(a.weight_l2_check.row_measured(i), (S.row(i) - Q.row(i)).norm()) < 1e-14);
      CHECK(a.drift.row_measured(i) == (S.row(i) - Q.row(i)).cwiseAbs().maxCoeff());
    }
  }
}

TEST_CASE("bounds: the report's step per (row, sweep step) is the step of that column's lattice", "[bounds][report][steps]") {
  std::mt19937_64 rng(98);
  const Index m = 120, N = 40, rows = 6;
  const MatrixXd X = structured_inputs(m, N, rng, 6, 0.8);
  const MatrixXd W = gaussian(rows, N, rng, 0.3);
  GridSpec g;
  g.bits = 3;
  g.group_size = 8;
  g.static_groups = true;
  const auto r = pptq::optq(W, MatrixXd(X.transpose() * X), g);  // act order: steps visit groups out of order
  REQUIRE(r.ok());
  const auto D = pptq::detail::step_table(r.grid, r.perm, rows);
  MatrixXd dense(rows, N);
  for (Index t = 0; t < N; ++t)
    for (Index i = 0; i < rows; ++i) dense(i, t) = r.grid.lattice(i, r.perm[static_cast<std::size_t>(t)]).step();
  CHECK(D.size() == N);
  CHECK(D.dense() == dense);
  for (Index t = 0; t < N; ++t) CHECK(D.col(t) == dense.col(t));
  CHECK(D.row_max() == dense.rowwise().maxCoeff());
  CHECK(D.row_min() == dense.rowwise().minCoeff());
  CHECK(dense.rowwise().maxCoeff() != dense.rowwise().minCoeff());  // the groups' steps differ: a real test
}
