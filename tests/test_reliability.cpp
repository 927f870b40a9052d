// Reliability across the library: every bad input gets an exception naming the problem and the value; numerical
// trouble escalates damping and says so, or fails clearly; degenerate layers work; concurrent calls on
// different layers are independent.
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <pptq/pptq.hpp>

#include <limits>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace test;
using Catch::Contains;
using pptq::GridSpec;
using pptq::OptqOptions;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

}  // namespace

TEST_CASE("bad shapes and empty inputs are rejected with the shapes in the message", "[validation]") {
  const GramLayer L = gram_layer(6, 10, 40, 1);
  const GridSpec g;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H.topLeftCorner(9, 9).eval(), g), Contains("H is 9 x 9 but W has 10 columns"));
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H.topRows(9).eval(), g), Contains("must be square, got 9 x 10"));
  CHECK_THROWS_WITH(pptq::optq(MatrixXd(0, 10), L.H, g), Contains("W is empty (0 x 10)"));
  CHECK_THROWS_WITH(pptq::rtn(MatrixXd(3, 0), g), Contains("W is empty"));
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, L.X.topRows(39).eval(), g), Contains("Xq is 39 x 10 but X is 40 x 10"));
  CHECK_THROWS_WITH(pptq::gpfq(L.W, L.X.leftCols(9).eval(), L.X.leftCols(9).eval(), g), Contains("W has 10 columns"));
  CHECK_THROWS_WITH(pptq::qronos(L.W, MatrixXd(0, 10), MatrixXd(0, 10), g), Contains("X is empty"));
  pptq::Gram<double> none(10);
  CHECK_THROWS_WITH(pptq::optq(L.W, none, g), Contains("no samples"));
  pptq::CrossGram<double> cnone(10);
  CHECK_THROWS_WITH(pptq::gpfq(L.W, cnone, g), Contains("no samples"));
}

TEST_CASE("NaN or Inf anywhere is rejected with its position", "[validation]") {
  const GramLayer L = gram_layer(6, 10, 40, 2);
  const GridSpec g;
  for (double bad : {kNaN, kInf, -kInf}) {
    MatrixXd W = L.W, H = L.H, X = L.X;
    W(2, 3) = bad;
    CHECK_THROWS_WITH(pptq::optq(W, L.H, g), Contains("W has a non-finite entry") && Contains("(2, 3)"));
    CHECK_THROWS_WITH(pptq::rtn(W, g), Contains("W has a non-finite entry"));
    H(4, 4) = bad;
    CHECK_THROWS_WITH(pptq::optq(L.W, H, g), Contains("H has a non-finite entry") && Contains("(4, 4)"));
    X(7, 1) = bad;
    CHECK_THROWS_WITH(pptq::qronos(L.W, X, L.X, g), Contains("calibration batch X has a non-finite entry") && Contains("(7, 1)"));
    CHECK_THROWS_WITH(pptq::Gram<double>(10).add(X), Contains("non-finite"));
  }
}

TEST_CASE("H that is not a Gram matrix is rejected", "[validation]") {
  const GramLayer L = gram_layer(6, 10, 40, 3);
  MatrixXd H = L.H;
  H(0, 5) += 1.0;
  CHECK_THROWS_WITH(pptq::optq(L.W, H, GridSpec{}), Contains("not symmetric") && Contains("H(5, 0)"));
  H = L.H;
  H(3, 3) = -1;
  CHECK_THROWS_WITH(pptq::optq(L.W, H, GridSpec{}), Contains("negative diagonal entry -1 at 3"));
}

TEST_CASE("the tiled check of H finds every asymmetry and non-finite entry, with the same message for any thread count",
          "[validation][threads]") {
  // H is checked by pairs of 64 × 64 tiles on both cores; 150 columns give full, partial and diagonal tiles.
  const GramLayer L = gram_layer(6, 150, 400, 5);
  struct Case {
    Index i, j;
    double v;
    const char* says;
  };
  const std::vector<Case> cases = {
      {3, 140, 1.0, "H(140, 3) ="},    // upper triangle, far from the diagonal
      {140, 3, 1.0, "H(140, 3) ="},    // its mirror names the same pair
      {149, 147, 1.0, "H(149, 147) ="},  // inside the last, partial diagonal tile
      {63, 64, 1.0, "H(64, 63) ="},    // across a tile boundary next to the diagonal
      {2, 130, kNaN, "non-finite entry nan at (2, 130)"},  // only in the strict upper triangle
      {128, 128, kInf, "non-finite entry inf at (128, 128)"},
      {100, 20, -kInf, "non-finite entry -inf at (100, 20)"},
  };
  const double dmax = L.H.diagonal().maxCoeff();  // the tolerance is 1e-5 of it; asymmetries here are 1e-3
  for (const Case& c : cases) {
    MatrixXd H = L.H;
    H(c.i, c.j) += c.v * 1e-3 * dmax;
    INFO("entry (" << c.i << ", " << c.j << ")");
    for (int threads : {1, 2}) {
      OptqOptions o;
      o.threads = threads;
      CHECK_THROWS_WITH(pptq::optq(L.W, H, GridSpec{}, o), Contains(c.says));
    }
  }
  // Two finite mirror entries whose difference overflows: not symmetric (and not reported as non-finite).
  {
    MatrixXd H = L.H;
    H(5, 100) = 1e308;
    H(100, 5) = -1e308;
    for (int threads : {1, 2}) {
      OptqOptions o;
      o.threads = threads;
      CHECK_THROWS_WITH(pptq::optq(L.W, H, GridSpec{}, o), Contains("not symmetric") && Contains("H(100, 5) = -1e+308"));
    }
  }
  // Asymmetry within the tolerance (1e-5 of the largest diagonal entry) is accepted.
  MatrixXd H = L.H;
  H(7, 60) += 1e-7 * dmax;
  CHECK(pptq::optq(L.W, H, GridSpec{}).ok());
}

TEST_CASE("bad options name the field and the value", "[validation]") {
  const GramLayer L = gram_layer(4, 8, 30, 4);
  GridSpec g;
  for (int bits : {0, 1, 9, 16}) {
    g.bits = bits;
    CHECK_THROWS_WITH(pptq::optq(L.W, L.H, g), Contains("GridSpec.bits must be in 2..8, got " + std::to_string(bits)));
  }
  g = {};
  for (Index gs : {0, -2, -128}) {
    g.group_size = gs;
    CHECK_THROWS_WITH(pptq::rtn(L.W, g), Contains("GridSpec.group_size") && Contains(std::to_string(gs)));
  }
  g = {};
  OptqOptions o;
  o.block_size = 0;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, g, o), Contains("OptqOptions.block_size must be >= 1, got 0"));
  o = {};
  o.damp = -0.5;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, g, o), Contains("OptqOptions.damp") && Contains("-0.5"));
  o = {};
  o.lambda = -1e-3;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, g, o), Contains("OptqOptions.lambda") && Contains("-0.001"));
  o = {};
  o.lambda = kNaN;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, g, o), Contains("OptqOptions.lambda"));
  o = {};
  o.threads = -3;
  CHECK_THROWS_WITH(pptq::optq(L.W, L.H, g, o), Contains("OptqOptions.threads"));
  pptq::RtnOptions ro;
  ro.threads = -1;
  CHECK_THROWS_WITH(pptq::rtn(L.W, g, ro), Contains("RtnOptions.threads"));
  pptq::QronosOptions qo;
  qo.power_iterations = 0;
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, L.X, g, qo), Contains("QronosOptions.power_iterations must be >= 1, got 0"));
  qo = {};
  qo.damp = -1;
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, L.X, g, qo), Contains("QronosOptions.damp"));
  pptq::GpfqOptions go;
  go.block_size = 0;
  CHECK_THROWS_WITH(pptq::gpfq(L.W, L.X, L.X, g, go), Contains("GpfqOptions.block_size"));
}

TEST_CASE("rank-deficient H with lambda 0 escalates damping, records every step, and still quantizes", "[numerics]") {
  // 5 samples, 30 columns: XᵀX has rank 5, so H + 0·I is singular.
  const GramLayer L = gram_layer(8, 30, 5, 5);
  GridSpec g;
  OptqOptions o;
  o.lambda = 0.0;
  const auto r = pptq::optq(L.W, L.H, g, o);
  REQUIRE(r.ok());
  CHECK(r.status == pptq::Status::DampingEscalated);
  REQUIRE(r.lambda_tried.size() >= 2);
  CHECK(r.lambda_tried.front() == 0.0);
  CHECK(r.lambda == r.lambda_tried.back());
  CHECK(r.lambda > 0);
  for (std::size_t i = 2; i < r.lambda_tried.size(); ++i) CHECK(r.lambda_tried[i] == Approx(10 * r.lambda_tried[i - 1]));
  CHECK_THAT(r.message, Contains("escalated to lambda"));
  CHECK(r.dequantized.allFinite());
  // The certificate holds with the λ actually used (docs/theory.md §3.1(iv)).
  const MatrixXd D = L.W - r.dequantized;
  const double lhs = (L.X * D.transpose()).squaredNorm() + r.lambda * D.squaredNorm();
  CHECK(rel_diff(lhs, r.energy.sum()) < 1e-8);
  // Fewer samples than columns with the default damping needs no escalation at all.
  const auto d = pptq::optq(L.W, L.H, g);
  CHECK(d.status == pptq::Status::Success);
  CHECK(d.lambda_tried.size() == 1);
}

TEST_CASE("escalation off, or capped, fails with a message and no weights", "[numerics]") {
  const GramLayer L = gram_layer(4, 20, 3, 6);
  MatrixXd H = L.H;
  H(0, 0) *= 1e-3;  // make it indefinite: a Gram matrix with a diagonal entry shrunk below its row
  H(0, 0) += 1e-300;
  OptqOptions o;
  o.lambda = 0.0;
  o.escalate_damping = false;
  const auto r = pptq::optq(L.W, H, GridSpec{}, o);
  CHECK_FALSE(r.ok());
  CHECK(r.status == pptq::Status::NumericalIssue);
  CHECK(r.dequantized.size() == 0);
  CHECK_THAT(r.message, Contains("not positive definite") && Contains("escalation is off"));
  o.escalate_damping = true;
  o.max_damp = 1e-9;  // cap far below what the matrix needs
  const auto c = pptq::optq(L.W, H, GridSpec{}, o);
  CHECK_FALSE(c.ok());
  CHECK_THAT(c.message, Contains("escalation cap"));
  CHECK(c.lambda_tried.size() >= 2);
}

TEST_CASE("a finite H too large for double ends with a message, never in an endless escalation", "[numerics]") {
  // The mean of a diagonal of 1e308's overflows: λ = damp·mean is Inf. Escalating an infinite λ never
  // passed the (infinite) cap: the loop ran forever, recording λ's, until memory ran out.
  const GramLayer L = gram_layer(3, 4, 10, 7);
  const MatrixXd H = 1e308 * MatrixXd::Identity(4, 4);
  const auto r = pptq::optq(L.W, H, GridSpec{});
  CHECK(r.status == pptq::Status::NumericalIssue);
  CHECK(r.dequantized.size() == 0);
  CHECK(r.lambda_tried.size() == 1);
  CHECK_THAT(r.message, Contains("not finite") && Contains("scale H down"));
  // Escalation that reaches λ = 1e308 without a factor stops because the next step overflows, and says
  // so: two dead columns (diag 0 → 1) coupled by 1e308 need λ > 1e308.
  std::mt19937_64 rng(8);
  const MatrixXd W2 = gaussian(3, 2, rng);
  MatrixXd H2 = MatrixXd::Zero(2, 2);
  H2(0, 1) = H2(1, 0) = 1e308;
  OptqOptions o;
  o.max_damp = 1e308;
  const auto s = pptq::optq(W2, H2, GridSpec{}, o);
  CHECK(s.status == pptq::Status::NumericalIssue);
  CHECK_THAT(s.message, Contains("a larger lambda overflows"));
  CHECK(s.lambda_tried.back() >= 1e307);
}

TEST_CASE("degenerate layers: all-zero rows, all-zero X, dead columns, a single column", "[numerics]") {
  GramLayer L = gram_layer(6, 12, 50, 7);
  L.W.row(2).setZero();
  const auto r = pptq::optq(L.W, L.H, GridSpec{});
  REQUIRE(r.ok());
  CHECK(r.dequantized.row(2).isZero(0));
  // X all zero: every column dead → every weight quantizes to 0 (GPTQ's dead-column rule).
  const auto z = pptq::optq(L.W, MatrixXd::Zero(12, 12), GridSpec{});
  REQUIRE(z.ok());
  CHECK(z.dequantized.isZero(0));
  // One column.
  const auto one = pptq::optq(L.W.leftCols(1).eval(), L.H.topLeftCorner(1, 1).eval(), GridSpec{});
  REQUIRE(one.ok());
  CHECK(one.codes == pptq::rtn(L.W.leftCols(1).eval(), GridSpec{}).codes);
}

TEST_CASE("two threads quantizing two different layers at once give the results of one after the other",
          "[threads]") {
  const GramLayer A = gram_layer(70, 90, 300, 8), B = gram_layer(50, 120, 200, 9);
  GridSpec g;
  g.bits = 3;
  OptqOptions so;
  so.rounding = pptq::Rounding::Stochastic;
  so.seed = 3;
  const auto a1 = pptq::optq(A.W, A.H, g);
  const auto b1 = pptq::qronos(B.W, B.X, B.X + 0.1 * B.X.reverse(), g);
  const auto c1 = pptq::optq(B.W, B.H, g, so);
  for (int rep = 0; rep < 3; ++rep) {
    pptq::QuantResult<double> a2, b2, c2;
    std::thread t1([&] { a2 = pptq::optq(A.W, A.H, g); });
    std::thread t2([&] {
      b2 = pptq::qronos(B.W, B.X, B.X + 0.1 * B.X.reverse(), g);
      c2 = pptq::optq(B.W, B.H, g, so);
    });
    t1.join();
    t2.join();
    CHECK(a2.codes == a1.codes);
    CHECK(a2.dequantized == a1.dequantized);
    CHECK(b2.codes == b1.codes);
    CHECK(c2.codes == c1.codes);
  }
}

TEST_CASE("the parallel factor (N >= 1024), the Gram panels and Qronos are bitwise identical for 1 and 2 threads",
          "[threads]") {
  std::mt19937_64 rng(12);
  const Index n = 1100;  // above the size from which the factor runs on several threads
  const MatrixXd X = structured_inputs(400, n, rng);
  const MatrixXd W = gaussian(40, n, rng);
  const MatrixXd H = X.transpose() * X;
  GridSpec g;
  g.bits = 3;
  OptqOptions o1, o2;
  o1.threads = 1;
  o2.threads = 2;
  const auto a = pptq::optq(W, H, g, o1), b = pptq::optq(W, H, g, o2);
  REQUIRE(a.factor);
  REQUIRE(b.factor);
  CHECK(*a.factor == *b.factor);
  CHECK(a.codes == b.codes);
  pptq::QronosOptions q1, q2;
  q1.threads = 1;
  q2.threads = 2;
  const MatrixXd Xq = X + 0.05 * gaussian(400, n, rng);
  CHECK(pptq::qronos(W, X, Xq, g, q1).dequantized == pptq::qronos(W, X, Xq, g, q2).dequantized);
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  pptq::Gram<double> g1(n), g2(n);
  omp_set_num_threads(1);
  g1.add(X.cast<float>());
  omp_set_num_threads(2);
  g2.add(X.cast<float>());
  omp_set_num_threads(saved);
  CHECK(g1.matrix() == g2.matrix());
#endif
}

TEST_CASE("Philox4x32-10 reproduces the published known-answer vectors", "[stochastic]") {
  using pptq::detail::philox4x32_10;
  // Known-answer vectors of Philox4x32-10 (counter, key -> output) as published with Random123 and
  // checked against Debian's librandom123-dev.
  CHECK(philox4x32_10({0u, 0u, 0u, 0u}, {0u, 0u}) == pptq::detail::Philox4x32Ctr{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(philox4x32_10({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}) ==
        pptq::detail::Philox4x32Ctr{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}) ==
        pptq::detail::Philox4x32Ctr{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}
