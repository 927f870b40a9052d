// λ guidance (include/pptq/lambda_sweep.hpp, docs/theory.md §3.5): the constants move as the theory says
// along the sweep, and the recommendation is the point with the smallest bound or held-out error.
// Set PPTQ_TEST_VERBOSE=1 to print the table.
#include <catch2/catch.hpp>

#include <pptq/lambda_sweep.hpp>

#include "test_support.hpp"

#include <cstdio>
#include <cstdlib>

using namespace test;
using pptq::GridSpec;
using pptq::OptqOptions;

namespace {

bool verbose() {
  const char* v = std::getenv("PPTQ_TEST_VERBOSE");
  return v && *v && *v != '0';
}

GridSpec infinite_grid(int bits) {
  GridSpec g;
  g.bits = bits;
  g.alphabet = pptq::Alphabet::Infinite;
  return g;
}

}  // namespace

TEST_CASE("lambda_sweep: lambda guidance (docs/theory.md §3.5)", "[lambda_sweep][lambda]") {
  std::mt19937_64 rng(23);
  const Index N = 48, rows = 8;
  MatrixXd All = structured_inputs(400, N, rng, 8, 1.0);
  const MatrixXd X = All.topRows(200), Xtest = All.bottomRows(200);
  const MatrixXd W = gaussian(rows, N, rng, 0.05);
  const GridSpec g = infinite_grid(4);
  const auto guide = pptq::lambda_sweep(W, X, g);
  REQUIRE(guide.points.size() == 5);
  for (std::size_t i = 1; i < guide.points.size(); ++i) {
    REQUIRE(guide.points[i].C2 > guide.points[i - 1].C2);   // the Nλ floor grows
    REQUIRE(guide.points[i].Cw < guide.points[i - 1].Cw);   // drift shrinks
    REQUIRE(rel_diff(guide.points[i].lambda, guide.points[i].c * X.squaredNorm() / N) < 1e-12);
  }
  double best = 1e300;
  for (const auto& p : guide.points) best = std::min(best, *p.bound);
  REQUIRE(*guide.points[guide.best].bound == best);
  const auto held = pptq::lambda_sweep(W, X, Xtest, g, OptqOptions{}, {1e-3, 1e-2, 1e-1});
  REQUIRE(held.points.size() == 3);
  double hb = 1e300;
  for (const auto& p : held.points) hb = std::min(hb, *p.heldout);
  REQUIRE(*held.points[held.best].heldout == hb);
  REQUIRE(held.rule.find("held-out") != std::string::npos);
  if (verbose())
    for (const auto& p : guide.points)
      std::printf("[lambda] c=%g lambda=%.4g C2^2=%.4g Cw^2=%.4g bound=%.4g measured=%.4g\n", p.c, p.lambda, p.C2 * p.C2,
                  p.Cw * p.Cw, *p.bound, p.measured);
}

TEST_CASE("lambda_sweep: validation, and clipping at every lambda falls back to the calibration error", "[lambda_sweep][lambda]") {
  std::mt19937_64 rng(43);
  const Index N = 16, rows = 4;
  const MatrixXd X = structured_inputs(64, N, rng, 4, 1.0);
  const MatrixXd W = gaussian(rows, N, rng, 0.05);
  REQUIRE_THROWS_AS(pptq::lambda_sweep(W, X, infinite_grid(4), OptqOptions{}, {0.01, -1.0}), pptq::UsageError);
  REQUIRE_THROWS_AS(pptq::lambda_sweep(W, MatrixXd(X.leftCols(N - 1)), infinite_grid(4)), pptq::UsageError);
  REQUIRE_THROWS_AS(pptq::lambda_sweep(W, X, MatrixXd(X.leftCols(N - 1)), infinite_grid(4)), pptq::UsageError);
  // a 2-bit affine grid with an outlier weight: OPTQ's updates leave the range at every lambda
  MatrixXd Wo = W;
  Wo(0, 0) = 5.0;
  GridSpec aff;
  aff.bits = 2;
  const auto g = pptq::lambda_sweep(Wo, X, aff, OptqOptions{}, {1e-4, 1e-3});
  for (const auto& p : g.points) {
    REQUIRE(p.clipped > 0);
    REQUIRE_FALSE(p.bound.has_value());
  }
  REQUIRE(g.rule.find("smallest calibration error") != std::string::npos);
  const double best = std::min(g.points[0].measured, g.points[1].measured);
  REQUIRE(g.points[g.best].measured == best);
  REQUIRE(g.lambda == g.points[g.best].lambda);
}
