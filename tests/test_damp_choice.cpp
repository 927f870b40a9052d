// The damping chosen on held-out inputs (include/pptq/damp_choice.hpp, docs/theory.md §3.5): every candidate
// is measured on the held-out Gram (not the calibration one), the smallest held-out error wins, a failed
// candidate never does, and bad arguments are refused.
#include <catch2/catch.hpp>

#include <pptq/damp_choice.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/gram.hpp>

#include "test_support.hpp"

#include <limits>

using namespace test;

namespace {

struct Run {
  bool ok = true;
  double lambda = 0;
  pptq::Matrix<float> Q;
};

/// OPTQ into Q4_K at `damp` on the calibration Gram, as pptq-gguf's --damp auto runs it.
Run q4k(const pptq::Matrix<float>& W, const MatrixXd& H, double damp) {
  pptq::ggml::QuantizeOptions o;
  o.optq.damp = damp;
  o.optq.escalate_damping = false;
  const auto g = pptq::ggml::quantize_optq(W, H, pptq::ggml::Type::Q4_K, o);
  return Run{g.result.ok(), g.result.lambda, g.dequantized};
}

}  // namespace

TEST_CASE("choose_damp: held-out errors on the held-out Gram, the smallest wins", "[damp_choice]") {
  std::mt19937_64 rng(41);
  const Index N = 256, rows = 16;
  // About two calibration samples per column, as wide layers of real models get: the regime where GPTQ's
  // small damping overfits the calibration data.
  const MatrixXd All = structured_inputs(2 * N + 2 * N, N, rng, 16, 1.0);
  const MatrixXd X = All.topRows(2 * N), Xt = All.bottomRows(2 * N);
  const pptq::Matrix<float> W = gaussian(rows, N, rng, 0.05).cast<float>();
  const MatrixXd H = X.transpose() * X, Ht = Xt.transpose() * Xt;
  const auto c = pptq::choose_damp(W, H, Ht, pptq::default_damps(), [&](double d) { return q4k(W, H, d); });
  REQUIRE(c.points.size() == pptq::default_damps().size());
  double best = std::numeric_limits<double>::infinity();
  for (const auto& p : c.points) {
    INFO("damp " << p.damp);
    // Each figure is the error of that damp's result on the inputs it names (the held-out one on X_test).
    const Run r = q4k(W, H, p.damp);
    const MatrixXd E = W.cast<double>() - r.Q.cast<double>();
    CHECK(rel_diff(p.heldout, (Xt * E.transpose()).norm()) < 1e-9);
    CHECK(rel_diff(p.calibration, (X * E.transpose()).norm()) < 1e-9);
    CHECK(rel_diff(p.lambda, p.damp * H.diagonal().mean()) < 1e-12);
    best = std::min(best, p.heldout);
  }
  CHECK(c.points[static_cast<std::size_t>(c.best)].heldout == best);
  CHECK(c.damp == c.points[static_cast<std::size_t>(c.best)].damp);
  // Damping costs calibration error: the largest damp fits the calibration data worst.
  CHECK(c.points.front().calibration <= c.points.back().calibration);
}

TEST_CASE("choose_damp: a failed candidate scores infinity, bad arguments are refused", "[damp_choice]") {
  std::mt19937_64 rng(42);
  const Index N = 32;
  const MatrixXd X = gaussian(64, N, rng, 1.0);
  const MatrixXd H = X.transpose() * X;
  const pptq::Matrix<float> W = gaussian(4, N, rng, 0.1).cast<float>();
  auto rtn_at = [&](double d) {  // a stand-in quantizer: the result does not depend on d, only ok does
    Run r;
    r.ok = d >= 0.1;
    r.lambda = d;
    r.Q = (W.array() * 4.0f).round() / 4.0f;
    return r;
  };
  const auto c = pptq::choose_damp(W, H, H, {0.01, 0.1, 1.0}, rtn_at);
  CHECK(std::isinf(c.points[0].heldout));
  CHECK(c.best == 1);  // the first of the equal finite ones
  CHECK_THROWS_AS(pptq::choose_damp(W, H, H, {0.01}, rtn_at), pptq::NumericalError);
  CHECK_THROWS_AS(pptq::choose_damp(W, H, H, {}, rtn_at), pptq::UsageError);
  CHECK_THROWS_AS(pptq::choose_damp(W, H, H, {-1.0}, rtn_at), pptq::UsageError);
  CHECK_THROWS_AS(pptq::choose_damp(W, H, MatrixXd(H.topLeftCorner(8, 8)), {0.1}, rtn_at), pptq::UsageError);
}
