// The entry-point matrix: every algorithm × input form × ownership × grid kind (a GridSpec, or the
// fitted Grid that call produced) compiles and gives the same result bit for bit as the plain form.
// A wrong forwarding (a dropped option, a refitted grid, a consumed input read after its release,
// a fitted grid ignored) changes codes or values here.
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <pptq/pptq.hpp>

#include <random>

namespace {

using pptq::Index;
using Eigen::MatrixXd;
using Eigen::MatrixXf;

template <typename S>
void require_same(const pptq::QuantResult<S>& a, const pptq::QuantResult<S>& b) {
  REQUIRE(a.status == b.status);
  CHECK(a.codes == b.codes);
  CHECK(a.dequantized == b.dequantized);
  CHECK(a.perm == b.perm);
  CHECK(a.lambda == b.lambda);
  CHECK(a.grid.scale == b.grid.scale);
  CHECK(a.grid.zero == b.grid.zero);
  CHECK(a.energy.size() == b.energy.size());
  if (a.energy.size() && b.energy.size()) CHECK(a.energy == b.energy);
}

struct Layer {
  MatrixXf W;
  MatrixXd X, Xq;
};

Layer make_layer(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Layer L;
  L.X = test::structured_inputs(160, 48, rng);
  L.Xq = L.X + 0.05 * test::gaussian(160, 48, rng);
  L.W = test::gaussian(24, 48, rng).cast<float>();
  return L;
}

pptq::GridSpec grouped_static() {
  pptq::GridSpec g;
  g.bits = 3;
  g.group_size = 16;
  g.static_groups = true;
  return g;
}

}  // namespace

TEST_CASE("api: OPTQ from H, moved H, a Gram and a moved Gram, with a spec or a fitted grid", "[api]") {
  const Layer L = make_layer(11);
  const MatrixXd H = L.X.transpose() * L.X;
  for (const pptq::GridSpec& spec : {pptq::GridSpec{}, grouped_static()}) {
    pptq::OptqOptions o;
    o.rounding = pptq::Rounding::Stochastic;
    o.seed = 5;
    const auto ref = pptq::optq(L.W, H, spec, o);
    REQUIRE(ref.ok());
    const pptq::Grid<float> fitted = ref.grid;
    for (int grid_kind = 0; grid_kind < 2; ++grid_kind) {
      const pptq::GridArg<float> arg = grid_kind ? pptq::GridArg<float>(fitted) : pptq::GridArg<float>(spec);
      require_same(ref, pptq::optq(L.W, H, arg, o));
      MatrixXd Hc = H;
      require_same(ref, pptq::optq(L.W, std::move(Hc), arg, o));
      CHECK(Hc.size() == 0);
      pptq::Gram<double> g(48);
      g.add(L.X);
      // The accumulator's sum may differ from XᵀX in the last bits: compare with its own full matrix.
      const auto from_gram = pptq::optq(L.W, g.matrix(), arg, o);
      require_same(from_gram, pptq::optq(L.W, g, arg, o));
      require_same(from_gram, pptq::optq(L.W, std::move(g), arg, o));
      CHECK(g.samples() == 0);
    }
  }
}

TEST_CASE("api: Qronos from Grams, CrossGram, CorrectionGram (kept and moved) and X, Xq, with either grid", "[api]") {
  const Layer L = make_layer(12);
  const pptq::GridSpec spec = grouped_static();
  pptq::QronosOptions o;
  const auto ref = pptq::qronos(L.W, L.X, L.Xq, spec, o);
  REQUIRE(ref.ok());
  const pptq::Grid<float> fitted = ref.grid;
  for (int grid_kind = 0; grid_kind < 2; ++grid_kind) {
    const pptq::GridArg<float> arg = grid_kind ? pptq::GridArg<float>(fitted) : pptq::GridArg<float>(spec);
    require_same(ref, pptq::qronos(L.W, L.X, L.Xq, arg, o));
    pptq::CrossGram<double> cg(48);
    cg.add(L.X, L.Xq);
    require_same(ref, pptq::qronos(L.W, cg, arg, o));
    require_same(ref, pptq::qronos_from_grams(L.W, cg.htilde(), cg.cross(), arg, o));
    require_same(ref, pptq::qronos(L.W, std::move(cg), arg, o));
    CHECK(cg.samples() == 0);
    CHECK(cg.cols() == 0);
    pptq::CorrectionGram<double> cc;
    cc.add(L.W, L.X, L.Xq);
    const auto from_correction = pptq::qronos(L.W, cc, arg, o);
    REQUIRE(from_correction.ok());
    require_same(from_correction, pptq::qronos(L.W, std::move(cc), arg, o));
    CHECK(cc.samples() == 0);
  }
}

TEST_CASE("api: GPFQ from Grams, a CrossGram and X, Xq, with either grid", "[api]") {
  const Layer L = make_layer(13);
  const pptq::GridSpec spec = grouped_static();
  const auto ref = pptq::gpfq(L.W, L.X, L.Xq, spec);
  const pptq::Grid<float> fitted = ref.grid;
  for (int grid_kind = 0; grid_kind < 2; ++grid_kind) {
    const pptq::GridArg<float> arg = grid_kind ? pptq::GridArg<float>(fitted) : pptq::GridArg<float>(spec);
    require_same(ref, pptq::gpfq(L.W, L.X, L.Xq, arg));
    pptq::CrossGram<double> cg(48);
    cg.add(L.X, L.Xq);
    require_same(ref, pptq::gpfq(L.W, cg, arg));
    require_same(ref, pptq::gpfq_from_grams(L.W, cg.htilde(), cg.cross(), arg));
  }
}

TEST_CASE("api: RTN with a spec or a fitted grid, and a fitted grid is used as given", "[api]") {
  const Layer L = make_layer(14);
  for (const pptq::GridSpec& spec : {pptq::GridSpec{}, grouped_static()}) {
    const auto ref = pptq::rtn(L.W, spec);
    require_same(ref, pptq::rtn(L.W, ref.grid));
    // A fitted grid is not refitted: halving every scale changes the codes.
    pptq::Grid<float> half = ref.grid;
    half.scale *= 0.5f;
    const auto r = pptq::rtn(L.W, half);
    CHECK(r.grid.scale == half.scale);
    CHECK(r.codes != ref.codes);
    for (Index i = 0; i < r.rows(); ++i)
      for (Index j = 0; j < r.cols(); ++j) CHECK(r.dequantized(i, j) == r.grid.lattice(i, j).value(r.codes(i, j)));
  }
}

TEST_CASE("api: a fitted grid of the wrong shape is a usage error naming the mismatch", "[api]") {
  const Layer L = make_layer(15);
  const MatrixXd H = L.X.transpose() * L.X;
  const auto ref = pptq::rtn(L.W, pptq::GridSpec{});
  const MatrixXf Wshort = L.W.topRows(10);
  CHECK_THROWS_AS(pptq::rtn(Wshort, ref.grid), pptq::UsageError);
  CHECK_THROWS_WITH(pptq::optq(Wshort, H, ref.grid), Catch::Contains("rows of lattices"));
  try {
    pptq::rtn(Wshort, ref.grid);
  } catch (const pptq::Error& e) {
    CHECK(e.kind() == pptq::ErrorKind::Usage);
  }
}

TEST_CASE("api: the accumulators' reset keeps the width, clear frees it", "[api]") {
  std::mt19937_64 rng(16);
  const MatrixXd X = test::gaussian(30, 12, rng), Xq = X + 0.1 * test::gaussian(30, 12, rng);
  const MatrixXd W = test::gaussian(5, 12, rng);
  pptq::Gram<double> g(12);
  g.add(X);
  g.reset();
  CHECK(g.samples() == 0);
  CHECK(g.cols() == 12);
  CHECK(g.lower().isZero(0));
  CHECK_THROWS_WITH(g.require_samples("optq"), Catch::Contains("holds no samples"));
  g.clear();
  CHECK(g.cols() == 0);
  g.add(test::gaussian(4, 7, rng));  // any width after clear
  CHECK(g.cols() == 7);

  pptq::CrossGram<double> cg(12);
  cg.add(X, Xq);
  cg.reset();
  CHECK((cg.samples() == 0 && cg.cols() == 12 && cg.cross().isZero(0)));
  cg.clear();
  CHECK(cg.cols() == 0);

  pptq::CorrectionGram<double> cc;
  cc.add(W, X, Xq);
  cc.reset();
  CHECK((cc.samples() == 0 && cc.cols() == 12 && cc.rows() == 5));
  const MatrixXd W2 = 2 * W;  // after reset the next batch sets W again
  cc.add(W2, X, Xq);
  CHECK_NOTHROW(cc.require_matches(W2));
  cc.clear();
  CHECK((cc.cols() == 0 && cc.rows() == 0 && cc.samples() == 0));
}

TEST_CASE("api: the options' shared checks name the struct, the field and the value", "[api]") {
  pptq::OptqOptions o;
  o.threads = -2;
  CHECK_THROWS_WITH(o.check(), Catch::Contains("OptqOptions.threads") && Catch::Contains("-2"));
  pptq::QronosOptions q;
  q.block_size = 0;
  CHECK_THROWS_WITH(q.check(), Catch::Contains("QronosOptions.block_size"));
  q.block_size = 8;
  q.escalation_factor = 1;
  CHECK_THROWS_WITH(q.check(), Catch::Contains("QronosOptions.escalation_factor"));
  pptq::GpfqOptions gp;
  gp.threads = -1;
  CHECK_THROWS_WITH(gp.check(), Catch::Contains("GpfqOptions.threads"));
  pptq::RtnOptions rt;
  rt.threads = -1;
  CHECK_THROWS_AS(rt.check(), pptq::UsageError);
  pptq::OptqOptions d;
  d.damp = -1;
  CHECK_THROWS_WITH(d.check(), Catch::Contains("OptqOptions.damp"));
}
