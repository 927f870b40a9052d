// gpfq.hpp: GPFQ on the one sweep engine against the plain recursion (docs/theory.md §8).
#include <catch2/catch.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <pptq/gpfq.hpp>
#include <pptq/qronos.hpp>
#include <pptq/rtn.hpp>

using namespace test;
using pptq::GridSpec;
using pptq::Rounding;

TEST_CASE("GPFQ equals the plain recursion and its error u_N is Xw - X~q exactly", "[gpfq]") {
  std::mt19937_64 rng(31);
  for (int trial = 0; trial < 5; ++trial) {
    const Index n = 16 + 11 * trial, m = trial == 2 ? n / 2 : 2 * n;
    const MatrixXd X = structured_inputs(m, n, rng);
    MatrixXd Xq = X + 0.1 * gaussian(m, n, rng);
    if (trial == 3) Xq.col(5).setZero();  // a column the quantized model never feeds
    const MatrixXd W = gaussian(7, n, rng);
    GridSpec grid;
    grid.bits = 2 + trial;
    pptq::GpfqOptions o;
    o.block_size = 1 + 9 * trial;
    o.act_order = trial % 2 == 0;
    if (trial == 4) {
      o.rounding = Rounding::Stochastic;
      o.seed = 77;
    }
    const auto r = pptq::gpfq(W, X, Xq, grid, o);
    MatrixXd U;
    const MatrixXd Qref = ref::gpfq(W, X, Xq, r.perm, library_rounding(r.grid, o.rounding, o.seed), &U);
    INFO("trial " << trial);
    CHECK((r.dequantized - Qref).cwiseAbs().maxCoeff() <= 1e-9);
    const MatrixXd residual = X * W.transpose() - Xq * r.dequantized.transpose();  // m × rows
    CHECK((U - residual).cwiseAbs().maxCoeff() <= 1e-9 * (1 + residual.cwiseAbs().maxCoeff()));
  }
}

TEST_CASE("GPFQ from full Grams equals GPFQ from the accumulator's lower triangle, bit for bit", "[gpfq]") {
  // The accumulator path reads H̃'s lower triangle only and G in place (no N × N copies); from full
  // matrices both triangles are there. Same sweep matrix and start point, so identical codes and values.
  // n = 600 spans three 256-column panels of the start point's product (the last one partial).
  std::mt19937_64 rng(37);
  const Index n = 600;
  const MatrixXd X = structured_inputs(900, n, rng);
  MatrixXd Xq = X + 0.05 * gaussian(900, n, rng);
  Xq.col(17).setZero();  // a column X̃ never touches: argument 0, no feedback
  pptq::CrossGram<double> grams(n);
  grams.add(X, Xq);
  const MatrixXd Ht = grams.htilde(), G = grams.cross();
  const MatrixXd W = gaussian(70, n, rng);
  GridSpec grid;
  grid.bits = 3;
  for (bool act : {true, false}) {
    pptq::GpfqOptions o;
    o.act_order = act;
    const auto a = pptq::gpfq(W, grams, grid, o);
    const auto b = pptq::gpfq_from_grams(W, Ht, G, grid, o);
    INFO("act_order " << act);
    CHECK(a.codes == b.codes);
    CHECK(a.dequantized == b.dequantized);
    // The float path (W float, Grams double) agrees with the double one on almost every code.
    const auto c = pptq::gpfq(W.cast<float>().eval(), grams, grid, o);
    CHECK((c.codes.array() == a.codes.array()).cast<double>().mean() > 0.99);
  }
  // Against the plain recursion (the test above does it for one panel): every panel's start point counts.
  // Near-ties may round the other way in a different summation order, hence a fraction, not equality.
  pptq::GpfqOptions o;
  const auto r = pptq::gpfq(W, grams, grid, o);
  const MatrixXd Qref = ref::gpfq(W, X, Xq, r.perm, library_rounding(r.grid, o.rounding, o.seed));
  CHECK(((r.dequantized - Qref).array().abs() <= 1e-9).cast<double>().mean() > 0.999);
}
