// grid.hpp: fitting the GPTQ affine grid (docs/theory.md §7) against hand-checked rows and a plain
// transcription of the reference quantizer; the paper's alphabets (§1); nearest and stochastic
// rounding on a lattice (§1, §4.1); fitted grids given by the caller.
#include <catch2/catch.hpp>

#include <pptq/pptq.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

using namespace test;
using Catch::Contains;
using pptq::GridSpec;
using pptq::OptqOptions;
using pptq::Rounding;


TEST_CASE("grid fitting matches docs/theory.md §7 on hand-checked rows", "[grid]") {
  auto fit1 = [](std::vector<double> v, GridSpec g) {
    MatrixXd W(1, static_cast<Index>(v.size()));
    for (std::size_t i = 0; i < v.size(); ++i) W(0, static_cast<Index>(i)) = v[i];
    std::vector<Index> perm(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) perm[i] = static_cast<Index>(i);
    return pptq::fit_grid(W, g, perm);
  };
  GridSpec g;
  g.bits = 4;
  g.symmetric = true;
  // sym: xmax = max(|−1|, 0.5) = 1, xmin = −1: scale = 2/15, zero = (15+1)/2 = 8
  auto gr = fit1({-1.0, 0.5, 0.25}, g);
  REQUIRE(gr.scale(0, 0) == Approx(2.0 / 15).epsilon(1e-15));
  REQUIRE(gr.zero(0, 0) == 8.0);
  // sym, all positive: xmin stays 0 (reference quirk): scale = 0.7/15, zero 8
  gr = fit1({0.1, 0.7}, g);
  REQUIRE(gr.scale(0, 0) == Approx(0.7 / 15).epsilon(1e-15));
  REQUIRE(gr.zero(0, 0) == 8.0);
  g.symmetric = false;
  // asym on [0.1, 0.7]: xmin = 0, xmax = 0.7: scale 0.7/15, zero = round(0) = 0
  gr = fit1({0.1, 0.7}, g);
  REQUIRE(gr.scale(0, 0) == Approx(0.7 / 15).epsilon(1e-15));
  REQUIRE(gr.zero(0, 0) == 0.0);
  // asym on [−0.3, 0.9]: scale = 1.2/15 = 0.08, zero = round(0.3/0.08) = round(3.75) = 4
  gr = fit1({-0.3, 0.9, 0.2}, g);
  REQUIRE(gr.scale(0, 0) == Approx(0.08).epsilon(1e-14));
  REQUIRE(gr.zero(0, 0) == 4.0);
  // all-zero row: (−1, +1) → scale 2/15, zero round(1/(2/15)) = round(7.5) = 8 (ties to even)
  gr = fit1({0.0, 0.0, 0.0}, g);
  REQUIRE(gr.scale(0, 0) == Approx(2.0 / 15).epsilon(1e-15));
  REQUIRE(gr.zero(0, 0) == 8.0);
  // 2-bit asym on [−1, 2]: scale = 3/3 = 1, zero = round(1) = 1: grid {−1, 0, 1, 2}
  g.bits = 2;
  gr = fit1({-1.0, 2.0, 0.4}, g);
  REQUIRE(gr.scale(0, 0) == 1.0);
  REQUIRE(gr.zero(0, 0) == 1.0);
  bool clip = false;
  REQUIRE(gr.lattice(0, 0).value(gr.lattice(0, 0).nearest(0.5, clip)) == 0.0);  // tie 0.5 → even (0)
  REQUIRE(gr.lattice(0, 0).value(gr.lattice(0, 0).nearest(1.5, clip)) == 2.0);  // tie 1.5 → even (2)
  REQUIRE(!clip);
  gr.lattice(0, 0).nearest(7.0, clip);
  REQUIRE(clip);
}

TEST_CASE("grid fitting equals a plain transcription of the reference quantizer (incl. MSE)", "[grid]") {
  std::mt19937_64 rng(9);
  int shrunk = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const Index n = 8 + trial;
    Eigen::VectorXf x = gaussian(n, 1, rng).cast<float>();
    if (trial % 5 == 0) x(trial % n) = 12.0f;  // an outlier: MSE shrinks the range
    if (trial % 7 == 3) x = x.cwiseAbs();      // all positive
    GridSpec g;
    g.bits = 2 + trial % 7;
    g.symmetric = trial % 2 == 0;
    g.mse = trial % 3 != 0;
    Eigen::MatrixXf W = x.transpose();
    std::vector<Index> perm(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) perm[i] = i;
    const auto gr = pptq::fit_grid(W, g, perm);
    float s = 0, z = 0;
    ref::find_params<float>(x, g.bits, g.symmetric, g.mse, 2.4f, 100, 0.8f, s, z);
    INFO("trial " << trial);
    REQUIRE(gr.scale(0, 0) == s);
    REQUIRE(gr.zero(0, 0) == z);
    if (g.mse && trial % 5 == 0 && g.bits <= 3) {  // at few bits, clipping the outlier pays
      REQUIRE(gr.scale(0, 0) < (x.maxCoeff() - std::min(0.0f, x.minCoeff())) / g.maxq());
      ++shrunk;
    }
  }
  REQUIRE(shrunk >= 1);
}

TEST_CASE("paper alphabets: midtread A_K and the infinite alphabet", "[grid]") {
  std::mt19937_64 rng(2);
  const MatrixXd W = gaussian(4, 30, rng);
  GridSpec g;
  g.bits = 3;  // K = 3: {−3δ..3δ}
  g.alphabet = pptq::Alphabet::Midtread;
  const auto r = pptq::rtn(W, g);
  for (Index i = 0; i < 4; ++i) {
    const double delta = W.row(i).cwiseAbs().maxCoeff() / 3;
    REQUIRE(r.grid.scale(i, 0) == Approx(delta).epsilon(1e-15));
    for (Index j = 0; j < 30; ++j) {
      REQUIRE(std::abs(r.codes(i, j)) <= 3);
      REQUIRE(std::abs(W(i, j) - r.dequantized(i, j)) <= delta / 2 + 1e-15);
    }
  }
  g.alphabet = pptq::Alphabet::Infinite;
  g.delta = 0.01;
  const auto ri = pptq::rtn(W, g);
  REQUIRE(ri.clipped_total() == 0);
  for (Index j = 0; j < 30; ++j)
    for (Index i = 0; i < 4; ++i) REQUIRE(ri.dequantized(i, j) == Approx(0.01 * std::nearbyint(W(i, j) / 0.01)).margin(1e-15));
  g.alphabet = pptq::Alphabet::Affine;
  REQUIRE_THROWS_WITH(g.check(), Catch::Contains("GridSpec.delta"));
}

TEST_CASE("stochastic rounding is unbiased and moves a value by less than one step", "[stochastic]") {
  // One value per column, rounded independently in 20000 rows (each row has its own Philox counter).
  const Index rows = 20000;
  const double delta = 0.25;
  const std::vector<double> values = {0.0, 0.01, 0.1, 0.125, 0.2, -0.3, 1.0 / 3.0, -2.9, 7.49};
  Eigen::MatrixXd W(rows, static_cast<Index>(values.size()));
  for (Index j = 0; j < W.cols(); ++j) W.col(j).setConstant(values[j]);
  pptq::RtnOptions o;
  o.rounding = Rounding::Stochastic;
  o.seed = 11;
  const auto r = pptq::rtn(W, infinite_alphabet(delta), o);
  for (Index j = 0; j < W.cols(); ++j) {
    const double v = values[j];
    const double p = v / delta - std::floor(v / delta);
    const double sigma = delta * std::sqrt(p * (1 - p) / static_cast<double>(rows));
    const double mean = r.dequantized.col(j).mean();
    INFO("value " << v << " mean " << mean << " sigma " << sigma);
    CHECK(std::abs(mean - v) <= 5 * sigma + 1e-12);
    CHECK((r.dequantized.col(j).array() - v).abs().maxCoeff() < delta);
    // Only the two neighbours occur.
    CHECK(((r.dequantized.col(j).array() - delta * std::floor(v / delta)).abs() < 1e-12 ||
           (r.dequantized.col(j).array() - delta * std::ceil(v / delta)).abs() < 1e-12)
              .all());
  }
  // A value on the lattice never moves.
  CHECK((r.dequantized.col(4).array() - 0.2).abs().maxCoeff() >= 0);  // 0.2 is not on 0.25Z: moves
  CHECK(r.dequantized.col(3).isConstant(0.125) == false);             // 0.125 = half step: both neighbours
  CHECK(r.dequantized.col(0).isZero(0));                              // 0 is on the lattice: stays
}

TEST_CASE("stochastic rounding on a finite grid clips to the end points and counts it", "[stochastic]") {
  GridSpec g;
  g.alphabet = pptq::Alphabet::Midtread;
  g.bits = 2;  // K = 1: {-δ, 0, δ}
  g.delta = 1.0;
  Eigen::MatrixXd W(400, 3);
  W.col(0).setConstant(0.5);
  W.col(1).setConstant(1.5);   // beyond the top: the upper neighbour 2δ is outside A_K
  W.col(2).setConstant(-7.0);  // far below
  pptq::RtnOptions o;
  o.rounding = Rounding::Stochastic;
  const auto r = pptq::rtn(W, g, o);
  CHECK(r.dequantized.col(1).isConstant(1.0));
  CHECK(r.dequantized.col(2).isConstant(-1.0));
  CHECK(r.clipped.minCoeff() == 2);  // columns 1 and 2 in every row
  CHECK(r.clipped_total() == 800);
}

TEST_CASE("a grid fitted by the caller is used as given, and validated", "[grid][validation]") {
  const GramLayer L = gram_layer(6, 16, 60, 10);
  GridSpec spec;
  spec.bits = 3;
  const auto a = pptq::optq(L.W, L.H, spec);
  // The same grid passed back in gives the same result.
  const auto b = pptq::optq(L.W, L.H, a.grid);
  CHECK(b.codes == a.codes);
  // A hand-made grid: two groups of 8 columns per row with chosen lattices.
  pptq::Grid<double> g;
  g.scale = MatrixXd::Constant(6, 2, 0.5);
  g.zero = MatrixXd::Constant(6, 2, 3.0);
  g.min = MatrixXd::Zero(6, 2);
  g.min.col(1).setConstant(0.25);
  g.lo = 0;
  g.hi = 7;
  g.group_index.resize(16);
  for (Index j = 0; j < 16; ++j) g.group_index[j] = j < 8 ? 0 : 1;
  const auto c = pptq::optq(L.W, L.H, g);
  for (Index i = 0; i < 6; ++i)
    for (Index j = 0; j < 16; ++j) CHECK(c.dequantized(i, j) == g.lattice(i, j).value(c.codes(i, j)));
  CHECK(c.codes.minCoeff() >= 0);
  CHECK(c.codes.maxCoeff() <= 7);
  pptq::Grid<double> bad = g;
  bad.group_index[3] = 2;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, bad), Contains("Grid.group_index[3] = 2"));
  bad = g;
  bad.scale.resize(5, 2);
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, bad), Contains("W has 6 rows"));
  bad = g;
  bad.dynamic = true;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, bad), Contains("must be static"));
  // Qronos accepts it too.
  const MatrixXd Ht = L.X.transpose() * L.X;
  const auto q = pptq::qronos_from_grams(L.W, Ht, Ht, g);
  REQUIRE(q.ok());
  for (Index i = 0; i < 6; ++i)
    for (Index j = 0; j < 16; ++j) CHECK(q.dequantized(i, j) == g.lattice(i, j).value(q.codes(i, j)));
}

TEST_CASE("extreme finite rows give finite grids: denormals, ±FLT_MAX/2, a group size beyond any width", "[grid][numerics]") {
  // A row of zeros but one denormal: its range underflows the step, so it is treated as the zero row it
  // effectively is (every value rounds to 0), never a division by zero.
  Eigen::MatrixXf W = Eigen::MatrixXf::Zero(3, 8);
  W(0, 3) = 1e-44f;
  // Both signs near the largest float: the range overflows float, the step must not.
  W.row(1) << 1.71e38f, -1.71e38f, 1e38f, -3e37f, 0.f, 1.f, -1.f, 1.7e38f;
  W.row(2).setConstant(std::numeric_limits<float>::denorm_min());
  for (const bool sym : {false, true}) {
    GridSpec g;
    g.symmetric = sym;
    const auto r = pptq::rtn(W, g);
    INFO("symmetric " << sym);
    CHECK(r.grid.scale.allFinite());
    CHECK(r.grid.zero.allFinite());
    REQUIRE(r.dequantized.allFinite());
    CHECK(r.dequantized.row(0).isZero(0));
    CHECK(r.dequantized.row(2).isZero(0));
    // The huge row keeps its shape: signs and order of magnitude survive.
    CHECK(r.dequantized(1, 0) > 1e38f);
    CHECK(r.dequantized(1, 1) < -1e38f);
  }
  // Paper alphabets: a denormal row gets δ = 1 (the all-zero rule), not a denormal δ.
  GridSpec mid;
  mid.alphabet = pptq::Alphabet::Midtread;
  const auto m = pptq::rtn(W, mid);
  CHECK(m.dequantized.allFinite());
  CHECK(m.grid.scale(0, 0) == 1.0f);
  // A group size beyond any width: one group, no overflow in the group count.
  GridSpec big;
  big.group_size = std::numeric_limits<Index>::max();
  big.static_groups = true;
  const auto b = pptq::rtn(W, big);
  CHECK(b.grid.groups() == 1);
  CHECK(b.dequantized.allFinite());
}

TEST_CASE("a grid whose values overflow ends in NumericalIssue, never success with a non-finite Q", "[grid][numerics]") {
  const Eigen::MatrixXf W = Eigen::MatrixXf::Constant(2, 4, 3e38f);
  auto g = pptq::rtn(W, GridSpec{}).grid;
  g.scale.setConstant(std::numeric_limits<float>::max());  // value(c) = FLT_MAX·(c + 15): inf at any code
  g.zero.setConstant(-15.0f);
  const auto r = pptq::rtn(W, g);
  CHECK(r.status == pptq::Status::NumericalIssue);
  CHECK_FALSE(r.ok());
  CHECK(r.dequantized.size() == 0);
  CHECK_THAT(r.message, Contains("not finite"));
}
