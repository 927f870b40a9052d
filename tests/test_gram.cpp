// gram.hpp: the streaming accumulators equal XᵀX (docs/theory.md §1, §7) and are read through their
// lower triangle; an accumulator that overflowed is refused.
#include <catch2/catch.hpp>

#include <pptq/pptq.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <limits>

using namespace test;
using Catch::Contains;
using pptq::GridSpec;
using pptq::OptqOptions;

TEST_CASE("streaming Gram equals X^T X and feeds OPTQ", "[gram]") {
  std::mt19937_64 rng(4);
  const MatrixXd X = structured_inputs(333, 40, rng);
  pptq::Gram<> gram;
  for (Index s = 0; s < 333; s += 100) gram.add(X.middleRows(s, std::min<Index>(100, 333 - s)));
  REQUIRE(gram.samples() == 333);
  const MatrixXd H = X.transpose() * X;
  REQUIRE((gram.matrix() - H).norm() <= 1e-12 * H.norm());
  REQUIRE(gram.matrix().isApprox(gram.matrix().transpose(), 0));
  const MatrixXd W = gaussian(5, 40, rng);
  GridSpec g;
  const auto a = pptq::optq(W, gram, g);
  const auto b = pptq::optq(W, H, g);
  REQUIRE(a.codes == b.codes);
  // Scale invariance (docs/theory.md §1): H and λ scaled together give the same output.
  OptqOptions o;
  const auto c = pptq::optq(W, (2.0 / 333) * H, g, o);
  REQUIRE(c.codes == b.codes);
  REQUIRE(c.lambda == Approx(b.lambda * 2.0 / 333).epsilon(1e-12));
  pptq::Gram<> empty(40);
  REQUIRE_THROWS_WITH(pptq::optq(W, empty, g), Catch::Contains("no samples"));
  REQUIRE_THROWS_WITH(gram.add(MatrixXd::Ones(3, 41)), Catch::Contains("41 columns"));
}

TEST_CASE("OPTQ from a Gram accumulator reads its lower triangle: the same factor and codes as the full H", "[gram][factor]") {
  // n = 200: several 64-wide tiles of the two-pass fill, the last one partial; act-order and a random order.
  std::mt19937_64 rng(41);
  const Index n = 200;
  const MatrixXd X = structured_inputs(500, n, rng);
  pptq::Gram<> gram(n);
  gram.add(X.topRows(250)).add(X.bottomRows(250));
  const MatrixXd W = gaussian(7, n, rng);
  std::vector<Index> order(n);
  std::iota(order.begin(), order.end(), Index(0));
  std::shuffle(order.begin(), order.end(), rng);
  for (bool custom : {false, true}) {
    OptqOptions o;
    if (custom) o.order = order;
    const auto a = pptq::optq(W, gram, GridSpec{}, o);
    const auto b = pptq::optq(W, gram.matrix(), GridSpec{}, o);
    INFO((custom ? "random order" : "act-order"));
    REQUIRE(a.factor);
    REQUIRE(b.factor);
    CHECK(*a.factor == *b.factor);
    CHECK(a.codes == b.codes);
  }
}

TEST_CASE("an accumulator that overflowed is refused with the entry named (the lower-triangle check)", "[numerics][gram]") {
  MatrixXd X = MatrixXd::Ones(4, 70);
  X(2, 65) = 1e200;  // finite, but its square is not: H(65, 65) = inf in the accumulator
  pptq::Gram<> gram(70);
  gram.add(X);
  const MatrixXd W = MatrixXd::Ones(3, 70);
  CHECK_THROWS_WITH(pptq::optq(W, gram, GridSpec{}), Contains("H has a non-finite entry inf at (65, 65)"));
}
