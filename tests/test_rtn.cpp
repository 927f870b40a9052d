// rtn.hpp: round-to-nearest through the one sweep engine, the limit of OPTQ as λ → ∞
// (docs/theory.md §3.2).
#include <catch2/catch.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <pptq/optq.hpp>
#include <pptq/rtn.hpp>

using namespace test;
using pptq::GridSpec;
using pptq::OptqOptions;
using pptq::Rounding;

TEST_CASE("RTN equals OPTQ with lambda -> infinity, nearest and stochastic", "[rtn][optq]") {
  std::mt19937_64 rng(41);
  const MatrixXd X = structured_inputs(120, 40, rng);
  const MatrixXd W = gaussian(10, 40, rng);
  GridSpec grid;
  grid.bits = 3;
  for (Rounding rounding : {Rounding::Nearest, Rounding::Stochastic}) {
    OptqOptions o;
    o.lambda = 1e14;
    o.rounding = rounding;
    o.seed = 5;
    pptq::RtnOptions ro;
    ro.rounding = rounding;
    ro.seed = 5;
    CHECK(pptq::optq(W, X.transpose() * X, grid, o).codes == pptq::rtn(W, grid, ro).codes);
  }
}
