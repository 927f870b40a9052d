// optq.hpp: the blocked engine against the plain column loop (docs/theory.md §2), parity with the
// reference GPTQ (tests/data/gptq), the identities of §3.1, λ → ∞, dead columns, orders, consumed inputs,
// thread counts. Grids, the Gram and the factor have their own files (test_grid, test_gram, test_factor).
#include <catch2/catch.hpp>

#include <pptq/io/npy.hpp>
#include <pptq/pptq.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <limits>
#include <numeric>
#include <sstream>

using namespace test;
using pptq::GridSpec;
using pptq::OptqOptions;

namespace {

}  // namespace

TEST_CASE("minimal use from the README compiles and works as written", "[optq]") {
  std::mt19937_64 rng(1);
  const MatrixXd X = structured_inputs(256, 64, rng);
  // --- the snippet, verbatim apart from the two initialisations ---
  Eigen::MatrixXf W = gaussian(32, 64, rng).cast<float>();
  Eigen::MatrixXd H = X.transpose() * X;
  pptq::GridSpec grid;  grid.bits = 4; grid.group_size = 128;   // GPTQ's affine grid, per row or group
  pptq::OptqOptions opt; opt.damp = 0.01;                       // act-order on by default
  auto r = pptq::optq(W, H, grid, opt);
  if (!r.ok()) std::cerr << r.message;                          // status: Success | DampingEscalated | NumericalIssue
  Eigen::MatrixXf Q = r.dequantized;   // and r.codes, r.scales(), r.zeros(), r.perm, r.lambda, r.energy
  // ---
  REQUIRE(r.status == pptq::Status::Success);
  REQUIRE(Q.rows() == 32);
  REQUIRE(Q.cols() == 64);
  REQUIRE(r.codes.minCoeff() >= 0);
  REQUIRE(r.codes.maxCoeff() <= 15);
  REQUIRE(r.lambda == Approx(0.01 * H.diagonal().mean()).epsilon(1e-12));
  // Every value is its code on its row's lattice.
  for (Index j = 0; j < 64; ++j)
    for (Index i = 0; i < 32; ++i) REQUIRE(Q(i, j) == r.grid.lattice(i, j).value(r.codes(i, j)));
  // OPTQ beats round-to-nearest on the layer output.
  const auto rr = pptq::rtn(W, grid);
  const double e_optq = (X * (W - Q).cast<double>().transpose()).norm();
  const double e_rtn = (X * (W - rr.dequantized).cast<double>().transpose()).norm();
  REQUIRE(e_optq < 0.8 * e_rtn);
}

TEST_CASE("blocked engine == plain column loop, identical codes for every block size", "[optq][engine]") {
  std::mt19937_64 rng(42);
  int cases = 0;
  for (int trial = 0; trial < 12; ++trial) {
    const Index rows = 3 + trial % 5;
    const Index N = 20 + 9 * trial;                       // 20 .. 119: block sizes 7 and 128 do not divide it
    const Index m = (trial % 3 == 0) ? N / 2 : 2 * N;     // m < N (rank-deficient) and m > N
    const MatrixXd X = structured_inputs(m, N, rng, 4 + trial % 5, 0.5 + 0.2 * trial);
    const MatrixXd H = X.transpose() * X;
    const MatrixXd W = gaussian(rows, N, rng);
    GridSpec g;
    g.bits = 2 + trial % 7;
    g.symmetric = trial % 2 == 1;
    if (trial % 4 == 2) {
      g.group_size = 16;
      g.static_groups = true;
    }
    OptqOptions o;
    o.damp = std::pow(10.0, -1.0 - trial % 4);
    if (trial % 3 == 1) o.act_order = false;
    if (trial % 3 == 2) o.order = random_perm(N, rng);
    const auto base = pptq::optq(W, H, g, o);
    REQUIRE(base.status == pptq::Status::Success);
    const MatrixXd Qref = ref::optq(W, H, base.lambda, base.perm, test::library_rounding(base.grid));
    for (Index B : {Index(1), Index(7), Index(128), N}) {
      o.block_size = B;
      const auto r = pptq::optq(W, H, g, o);
      INFO("trial " << trial << " N " << N << " block " << B);
      REQUIRE(r.codes == base.codes);
      REQUIRE((r.dequantized - Qref).cwiseAbs().maxCoeff() == 0.0);
      ++cases;
    }
  }
  REQUIRE(cases == 48);
}

TEST_CASE("dynamic groups: fitted on fully updated weights, identical for every block size", "[optq][engine][groups]") {
  std::mt19937_64 rng(7);
  const Index N = 100;
  const MatrixXd X = structured_inputs(300, N, rng);
  const MatrixXd H = X.transpose() * X;
  const MatrixXd W = gaussian(9, N, rng);
  GridSpec g;
  g.bits = 3;
  g.group_size = 24;  // does not divide N, smaller and larger than blocks
  OptqOptions o;
  o.block_size = 128;
  const auto base = pptq::optq(W, H, g, o);
  REQUIRE(base.grid.dynamic);
  REQUIRE(base.grid.groups() == 5);
  // Groups are contiguous in sweep order.
  for (Index k = 0; k < N; ++k) REQUIRE(base.grid.group_index[base.perm[k]] == k / 24);
  for (Index B : {Index(1), Index(7), Index(24), Index(50), N}) {
    o.block_size = B;
    const auto r = pptq::optq(W, H, g, o);
    INFO("block " << B);
    REQUIRE(r.codes == base.codes);
    REQUIRE((r.grid.scale - base.grid.scale).cwiseAbs().maxCoeff() <= 1e-12);
  }
  // Each group's grid is what fit_grid gives on the weights w^(k) at the group start: the plain loop
  // run with these grids reproduces the codes.
  const MatrixXd Qref = ref::optq(W, H, base.lambda, base.perm, test::library_rounding(base.grid));
  REQUIRE((base.dequantized - Qref).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("parity with the reference GPTQ vectors (tests/data/gptq), float32 and double", "[optq][golden]") {
  struct Case {
    const char* name;
    int bits;
    bool sym;
    int group;
    bool act, stat;
    int block;
    double damp;
    bool mse;
    bool quality_only;
  };
  const Case cases[] = {
      {"c01-asym4-perrow", 4, false, -1, false, false, 128, 0.01, false, false},
      {"c02-sym3-g32-act-b50", 3, true, 32, true, false, 50, 0.01, false, true},
      {"c03-asym4-g32-static-act", 4, false, 32, true, true, 64, 0.01, false, false},
      {"c04-asym2-dead", 2, false, -1, true, false, 128, 0.05, false, false},
      {"c05-sym8-mse", 8, true, -1, false, false, 128, 0.01, true, false},
      {"c06-asym4-g128-act-rank-deficient", 4, false, 128, true, false, 128, 0.01, false, false},
  };
  for (const auto& c : cases) {
    const std::string dir = data_path(std::string("gptq/") + c.name + "/");
    const Eigen::MatrixXf W = pptq::io::read_npy_matrix<float>(dir + "W.npy");
    const Eigen::MatrixXf X = pptq::io::read_npy_matrix<float>(dir + "X.npy");
    const Eigen::MatrixXf H = pptq::io::read_npy_matrix<float>(dir + "H.npy");
    const Eigen::MatrixXf Qr = pptq::io::read_npy_matrix<float>(dir + "Q.npy");
    const MatrixXd Xd = X.cast<double>();
    const double err_ref = (Xd * (W - Qr).cast<double>().transpose()).squaredNorm();
    GridSpec g;
    g.bits = c.bits;
    g.symmetric = c.sym;
    g.group_size = c.group;
    g.static_groups = c.stat;
    g.mse = c.mse;
    OptqOptions o;
    o.damp = c.damp;
    o.act_order = c.act;
    o.block_size = c.block;
    for (int precision = 0; precision < 2; ++precision) {
      Eigen::MatrixXd Q;
      if (precision == 0) {
        const auto r = pptq::optq(W, H, g, o);  // float32 throughout, as the reference
        REQUIRE(r.status == pptq::Status::Success);
        Q = r.dequantized.cast<double>();
      } else {
        const auto r = pptq::optq(W.cast<double>().eval(), H.cast<double>().eval(), g, o);
        REQUIRE(r.status == pptq::Status::Success);
        Q = r.dequantized;
      }
      const double err = (Xd * (W.cast<double>() - Q).transpose()).squaredNorm();
      // "Same code": the values agree to far less than a grid step.
      const double same =
          ((Q - Qr.cast<double>()).array().abs() <= 1e-4 * (1.0 + Qr.cast<double>().array().abs())).cast<double>().mean();
      INFO(c.name << (precision ? " double" : " float32") << ": same " << same << ", error " << err << " vs reference " << err_ref);
      if (c.quality_only) {
        REQUIRE(err <= 1.02 * err_ref);
      } else {
        REQUIRE(same >= 0.97);
        REQUIRE(std::abs(err - err_ref) <= 0.01 * err_ref);
      }
      if (std::string(c.name) == "c04-asym2-dead") {
        for (int d : {5, 17, 60}) {
          REQUIRE(X.col(d).cwiseAbs().maxCoeff() == 0.0f);
          REQUIRE(Q.col(d).cwiseAbs().maxCoeff() == 0.0);
        }
      }
    }
  }
}

TEST_CASE("identities of docs/theory.md §3.1 hold to 1e-10 relative in double", "[optq][identities]") {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 8; ++trial) {
    const Index N = 30 + 10 * trial, m = (trial % 2) ? N / 3 : 3 * N, rows = 6;
    const MatrixXd X = structured_inputs(m, N, rng, 5, 1.0);
    const MatrixXd H = X.transpose() * X;
    const MatrixXd W = gaussian(rows, N, rng);
    GridSpec g;
    g.bits = 3;
    OptqOptions o;
    o.damp = trial % 2 ? 1e-3 : 0.05;
    o.block_size = 16;
    const auto r = pptq::optq(W, H, g, o);
    REQUIRE(r.factor);
    const MatrixXd L = inverse_factor(r).transpose();  // (H + λI)⁻¹ = L Lᵀ in sweep order
    MatrixXd E;
    ref::optq(W, H, r.lambda, r.perm, test::library_rounding(r.grid), &E);
    for (Index i = 0; i < rows; ++i) {
      VectorXd diff(N);  // (w − q) in sweep order
      for (Index k = 0; k < N; ++k) diff(k) = W(i, r.perm[k]) - r.dequantized(i, r.perm[k]);
      // (i) w − q = L D⁻¹ e
      const VectorXd rhs = L * (E.row(i).transpose().array() / L.diagonal().array()).matrix();
      REQUIRE((diff - rhs).norm() <= 1e-10 * diff.norm());
      // (iv) energy identity: ‖X(w − q)‖² + λ‖w − q‖² = Σ e_t²/L_tt², with the engine's own e_t
      const VectorXd wq = W.row(i).transpose() - r.dequantized.row(i).transpose();
      const double lhs = (X * wq).squaredNorm() + r.lambda * wq.squaredNorm();
      REQUIRE(rel_diff(lhs, r.energy(i)) <= 1e-10);
    }
    REQUIRE(r.proxy_loss == Approx(0.5 * r.energy.sum()).epsilon(1e-14));
  }
}

TEST_CASE("lambda -> infinity reproduces round-to-nearest", "[optq][rtn]") {
  std::mt19937_64 rng(11);
  const MatrixXd X = structured_inputs(200, 48, rng);
  const MatrixXd W = gaussian(10, 48, rng);
  for (bool sym : {false, true}) {
    GridSpec g;
    g.bits = 3;
    g.symmetric = sym;
    g.group_size = 16;
    g.static_groups = true;
    OptqOptions o;
    o.lambda = 1e14 * X.squaredNorm();
    const auto r = pptq::optq(W, X.transpose() * X, g, o);
    const auto rr = pptq::rtn(W, g);
    REQUIRE(r.codes == rr.codes);
    REQUIRE(r.dequantized == rr.dequantized);
  }
}

TEST_CASE("dead columns quantize to zero and do not disturb the others", "[optq][dead]") {
  std::mt19937_64 rng(5);
  MatrixXd X = structured_inputs(150, 40, rng);
  for (Index d : {0, 13, 39}) X.col(d).setZero();
  const MatrixXd W = gaussian(7, 40, rng);
  GridSpec g;
  g.bits = 4;
  for (bool act : {false, true}) {
    OptqOptions o;
    o.act_order = act;
    const auto r = pptq::optq(W, X.transpose() * X, g, o);
    REQUIRE(r.status == pptq::Status::Success);
    for (Index d : {0, 13, 39}) REQUIRE(r.dequantized.col(d).cwiseAbs().maxCoeff() == 0.0);
    // With act-order, dead columns (diag set to 1, below every live column here) are swept last.
    if (act)
      for (Index k = 37; k < 40; ++k) REQUIRE(X.col(r.perm[k]).norm() == 0.0);
  }
}

TEST_CASE("act-order is decreasing diag(H) with stable ties, and custom orders are validated", "[optq][order]") {
  MatrixXd H = MatrixXd::Identity(6, 6);
  H.diagonal() << 1, 5, 3, 5, 0.5, 3;
  const MatrixXd W = MatrixXd::Ones(2, 6) * 0.3;
  GridSpec g;
  OptqOptions o;
  const auto r = pptq::optq(W, H, g, o);
  REQUIRE(r.perm == std::vector<Index>{1, 3, 2, 5, 0, 4});
  o.order = {0, 1, 2};
  REQUIRE_THROWS_WITH(pptq::optq(W, H, g, o), Catch::Contains("order has 3 entries"));
  o.order = {0, 1, 2, 3, 4, 4};
  REQUIRE_THROWS_WITH(pptq::optq(W, H, g, o), Catch::Contains("twice"));
  o.order = {5, 4, 3, 2, 1, 0};
  REQUIRE(pptq::optq(W, H, g, o).perm == o.order);
}

TEMPLATE_TEST_CASE("the sweep's vectorized rounding equals Lattice::nearest, stochastic and value, element by element", "[grid][engine]",
                   float, double) {
  // The sweep rounds a column of a row chunk with detail::nearest_column (no branch, so it vectorizes);
  // the element loop and the reference use Lattice. Any difference in the order or type of an operation
  // shows up at ties, at the clamp, or with non-integer zeros and nonzero mins.
  using S = TestType;
  std::mt19937_64 rng(23);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const Index n = 1001;  // not a multiple of any vector width: the loop's tail runs too
  std::vector<S> arg(n), scale(n), zero(n), mn(n), q(n);
  std::vector<std::int32_t> codes(n);
  std::vector<int> clipped(n, 0);
  const std::int32_t lo = -8, hi = 7;
  for (Index r = 0; r < n; ++r) {
    scale[r] = static_cast<S>((r % 7 == 3 ? -1 : 1) * std::ldexp(1.0 + 0.5 * std::abs(u(rng)), static_cast<int>(r % 5) - 3));
    zero[r] = static_cast<S>(r % 3 == 0 ? std::round(4 * u(rng)) : 3 * u(rng));  // integer and fractional zeros
    mn[r] = static_cast<S>(r % 4 == 0 ? 0.0 : 0.25 * u(rng));
    const double k = std::round(12 * u(rng));
    switch (r % 4) {
      case 0: arg[r] = static_cast<S>((k + 0.5) * static_cast<double>(scale[r])) - mn[r]; break;  // near ties
      case 1: arg[r] = static_cast<S>(20 * u(rng) * static_cast<double>(scale[r])); break;        // clipped often
      case 2: arg[r] = static_cast<S>(k * static_cast<double>(scale[r])); break;
      default: arg[r] = static_cast<S>(1e-3 * u(rng));
    }
  }
  arg[5] = static_cast<S>(2.5);  // exact ties: 2.5/1 → 2 (to even), 3.5/1 → 4
  scale[5] = 1; mn[5] = 0; zero[5] = 0;
  arg[6] = static_cast<S>(3.5);
  scale[6] = 1; mn[6] = 0; zero[6] = 0;
  // A NaN argument (an overflowed feedback): code lo, clipped, counted, never cast to an integer.
  arg[7] = std::numeric_limits<S>::quiet_NaN();
  std::vector<int> nan(n, 0);
  pptq::detail::nearest_column<S>(n, arg.data(), scale.data(), zero.data(), mn.data(), lo, hi, codes.data(), q.data(),
                                  clipped.data(), nan.data());
  Index bad = 0, clips = 0;
  for (Index r = 0; r < n; ++r) {
    const pptq::Lattice<S> lat{scale[r], zero[r], mn[r], lo, hi};
    bool c = false;
    const std::int32_t code = lat.nearest(arg[r], c);
    const S value = lat.value(code);
    if (code != codes[r] || !(value == q[r]) || clipped[r] != (c ? 1 : 0)) ++bad;
    clips += c ? 1 : 0;
  }
  CHECK(bad == 0);
  CHECK(codes[5] == 2);
  CHECK(codes[6] == 4);
  CHECK(codes[7] == lo);
  CHECK(std::accumulate(nan.begin(), nan.end(), 0) == 1);
  CHECK(nan[7] == 1);
  CHECK(clips > 50);  // the clamp was exercised
  CHECK(clips < n - 50);

  // Stochastic rounding: the same against Lattice::stochastic, with uniforms that include 0 and the
  // fractional position itself (the comparison u < z − ⌊z⌋ is strict), and arguments on lattice points
  // (where ⌊z⌋ is z, negative ones included: the kernel's floor is built from nearbyint).
  std::vector<double> uu(n);
  for (Index r = 0; r < n; ++r) {
    uu[r] = r % 9 == 0 ? 0.0 : 0.5 * (u(rng) + 1.0);
    if (r % 4 == 2) arg[r] = static_cast<S>(std::round(6 * u(rng)) * static_cast<double>(scale[r])) - mn[r];
  }
  for (Index r = 3; r < n; r += 11) {  // u equal to the fractional position: rounds down
    const double z = static_cast<double>((arg[r] + mn[r]) / scale[r]);
    uu[r] = z - std::floor(z);
  }
  std::fill(clipped.begin(), clipped.end(), 0);
  std::fill(nan.begin(), nan.end(), 0);
  pptq::detail::stochastic_column<S>(n, arg.data(), uu.data(), scale.data(), zero.data(), mn.data(), lo, hi, codes.data(),
                                     q.data(), clipped.data(), nan.data());
  bad = 0;
  Index clips_s = 0, ups = 0;
  for (Index r = 0; r < n; ++r) {
    const pptq::Lattice<S> lat{scale[r], zero[r], mn[r], lo, hi};
    bool c = false;
    const std::int32_t code = lat.stochastic(arg[r], uu[r], c);
    if (code != codes[r] || !(lat.value(code) == q[r]) || clipped[r] != (c ? 1 : 0)) ++bad;
    clips_s += c ? 1 : 0;
    const double z = static_cast<double>((arg[r] + mn[r]) / scale[r]);
    ups += static_cast<double>(code) > std::floor(z) + static_cast<double>(zero[r]) ? 1 : 0;
  }
  CHECK(bad == 0);
  CHECK(codes[7] == lo);
  CHECK(std::accumulate(nan.begin(), nan.end(), 0) == 1);
  CHECK(clips_s > 50);
  CHECK(ups > 50);  // both neighbours were chosen
  CHECK(ups < n - 50);
}

TEST_CASE("OPTQ consuming H or a Gram is bit-identical to OPTQ reading them, with escalation and failure", "[optq][factor][memory]") {
  // optq(W, std::move(H)) factors in H's own storage (one N × N matrix instead of two). n = 300 (one
  // thread) and 1100 (the threaded factor); a dead column; rank-deficient so λ = 0 escalates; float and
  // double W (the double path keeps the factor in H's bytes, the float one converts it in place).
  std::mt19937_64 rng(35);
  for (Index n : {Index(300), Index(1100)}) {
    MatrixXd X = structured_inputs(n / 2 + 40, n, rng);
    X.col(11).setZero();
    // A computed XᵀX is symmetric to rounding, not always to the bit: the upper triangle one ulp off here,
    // so a retry must take H(π_i, π_j) for i ≤ j, as the copying path does, not the mirror entry.
    MatrixXd H = X.transpose() * X;
    for (Index j = 1; j < n; ++j)
      for (Index i = 0; i < j; ++i) H(i, j) = std::nextafter(H(i, j), std::numeric_limits<double>::infinity());
    const MatrixXd Wd = gaussian(12, n, rng);
    const Eigen::MatrixXf Wf = Wd.cast<float>();
    GridSpec g;
    g.bits = 3;
    for (int mode = 0; mode < 4; ++mode) {
      if (n > 1000 && mode > 1) break;  // the threaded factor: plain and escalation (the suite also runs under sanitizers)
      OptqOptions o;
      if (mode == 1) o.lambda = 0.0;  // escalates from 0
      if (mode == 2) {
        o.lambda = 0.0;
        o.escalate_damping = false;  // fails
      }
      if (mode == 3) o.order = random_perm(n, rng);
      INFO("n = " << n << ", mode " << mode);
      const auto a = pptq::optq(Wf, H, g, o);
      MatrixXd Hc = H;
      const auto b = pptq::optq(Wf, std::move(Hc), g, o);
      CHECK(Hc.size() == 0);
      REQUIRE(a.status == b.status);
      CHECK(a.lambda_tried == b.lambda_tried);
      CHECK(a.message == b.message);
      if (mode == 1) CHECK(a.status == pptq::Status::DampingEscalated);
      if (mode == 2) {
        CHECK(a.status == pptq::Status::NumericalIssue);
        continue;
      }
      REQUIRE(b.factor);
      CHECK(*a.factor == *b.factor);
      CHECK(a.codes == b.codes);
      CHECK(a.dequantized == b.dequantized);
      CHECK(a.energy == b.energy);
      const auto ad = pptq::optq(Wd, H, g, o);
      const auto bd = pptq::optq(Wd, MatrixXd(H), g, o);  // a temporary is consumed too
      REQUIRE(bd.factor);
      CHECK(*ad.factor == *bd.factor);
      CHECK(ad.codes == bd.codes);
      // Onto a fitted grid (the llama.cpp path).
      const auto af = pptq::optq(Wf, H, a.grid, o);
      const auto bf = pptq::optq(Wf, MatrixXd(H), a.grid, o);
      CHECK(af.codes == bf.codes);
    }
    pptq::Gram<> gram(n);
    gram.add(X);
    OptqOptions o;
    o.lambda = 0.0;
    const auto a = pptq::optq(Wf, gram, g, o);
    const auto b = pptq::optq(Wf, std::move(gram), g, o);
    INFO("Gram, n = " << n);
    CHECK(a.status == pptq::Status::DampingEscalated);
    CHECK(a.lambda_tried == b.lambda_tried);
    REQUIRE(b.factor);
    CHECK(*a.factor == *b.factor);
    CHECK(a.codes == b.codes);
    CHECK(gram.samples() == 0);
    CHECK(gram.cols() == 0);
    CHECK_THROWS_WITH(pptq::optq(Wf, std::move(gram), g, o), Catch::Contains("holds no samples"));
    gram.add(X);  // an emptied accumulator starts again
    CHECK(pptq::optq(Wf, std::move(gram), g, o).codes == a.codes);
  }
}

TEST_CASE("results are identical for 1 and 2 threads", "[optq][threads]") {
  std::mt19937_64 rng(8);
  const MatrixXd X = structured_inputs(400, 96, rng);
  const Eigen::MatrixXf W = gaussian(300, 96, rng).cast<float>();
  GridSpec g;
  g.group_size = 32;
  for (auto rounding : {pptq::Rounding::Nearest, pptq::Rounding::Stochastic}) {
    OptqOptions o;
    o.rounding = rounding;
    o.seed = 17;
    o.threads = 1;
    const auto a = pptq::optq(W, X.transpose() * X, g, o);
    o.threads = 2;
    const auto b = pptq::optq(W, X.transpose() * X, g, o);
    REQUIRE(a.dequantized == b.dequantized);
    REQUIRE(a.codes == b.codes);
  }
}

namespace {
/// OPTQ of every row block of row_block_bounds(rows, parts), each quantized on its own with its RowBlock,
/// stacked back into a layer.
template <typename Scalar>
void expect_blocks_match_layer(const pptq::Matrix<Scalar>& W, const MatrixXd& H, const pptq::GridArg<Scalar>& grid,
                               const OptqOptions& opt, int parts) {
  const auto whole = pptq::optq(W, H, grid, opt);
  REQUIRE(whole.ok());
  const std::vector<Index> b = pptq::row_block_bounds(W.rows(), parts);
  REQUIRE(b.front() == 0);
  REQUIRE(b.back() == W.rows());
  for (int p = 0; p < parts; ++p) {
    const Index r0 = b[p], n = b[p + 1] - b[p];
    if (n == 0) continue;
    OptqOptions o = opt;
    o.row_block = {r0, W.rows()};
    pptq::GridArg<Scalar> g = grid;
    pptq::Grid<Scalar> sub;
    if (grid.fitted()) {  // a fitted grid: the block's rows of its lattices
      sub = *grid.fitted();
      sub.scale = sub.scale.middleRows(r0, n).eval();
      sub.zero = sub.zero.middleRows(r0, n).eval();
      sub.min = sub.min.middleRows(r0, n).eval();
      g = sub;
    }
    const auto part = pptq::optq(pptq::Matrix<Scalar>(W.middleRows(r0, n)), H, g, o);
    REQUIRE(part.ok());
    REQUIRE(part.codes == whole.codes.middleRows(r0, n));
    REQUIRE(part.dequantized == whole.dequantized.middleRows(r0, n));
    REQUIRE(part.grid.scale == whole.grid.scale.middleRows(r0, n));
    REQUIRE(part.energy == whole.energy.segment(r0, n));
    REQUIRE(part.perm == whole.perm);
    REQUIRE(part.lambda == whole.lambda);
  }
}
}  // namespace

TEST_CASE("row blocks on the layer's row chunks are bit-identical to the whole layer", "[optq][row_block]") {
  std::mt19937_64 rng(2024);
  const Index rows = 300, cols = 96;  // row chunks of 40: 8 chunks, the last of 20 rows
  REQUIRE(pptq::detail::row_chunk(rows) == 40);
  const MatrixXd X = structured_inputs(400, cols, rng);
  const MatrixXd H = X.transpose() * X;
  const Eigen::MatrixXf W = gaussian(rows, cols, rng).cast<float>();
  for (const bool stochastic : {false, true})
    for (const Index gs : {Index(-1), Index(32)}) {
      OptqOptions opt;
      opt.block_size = 40;  // the lazy-batch GEMMs, and pieces of 16 inside a block
      opt.rounding = stochastic ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
      opt.seed = 77;
      GridSpec spec;
      spec.bits = 3;
      spec.group_size = gs;
      for (int parts : {2, 3, 4, 16}) {
        INFO("stochastic " << stochastic << ", group size " << gs << ", parts " << parts);
        expect_blocks_match_layer<float>(W, H, spec, opt, parts);
      }
    }
  // A fitted (static) grid: each block takes its rows' lattices.
  GridSpec spec;
  spec.bits = 4;
  const pptq::Grid<double> fitted = pptq::fit_grid(W.cast<double>().eval(), spec, {});
  OptqOptions opt;
  opt.rounding = pptq::Rounding::Stochastic;
  opt.seed = 5;
  expect_blocks_match_layer<double>(W.cast<double>(), H, fitted, opt, 3);
}

TEST_CASE("a row block keys stochastic rounding by the global row", "[optq][row_block]") {
  std::mt19937_64 rng(7);
  const Index rows = 128, cols = 48;
  const MatrixXd X = structured_inputs(200, cols, rng);
  const MatrixXd H = X.transpose() * X;
  const MatrixXd W = gaussian(rows, cols, rng);
  OptqOptions opt;
  opt.rounding = pptq::Rounding::Stochastic;
  opt.seed = 11;
  GridSpec spec;
  spec.bits = 2;
  const auto whole = pptq::optq(W, H, spec, opt);
  // Rows 64..127 quantized as a layer of their own draw the uniforms of rows 0..63: other codes.
  const MatrixXd tail = W.bottomRows(64);
  const auto alone = pptq::optq(tail, H, spec, opt);
  REQUIRE(alone.codes != whole.codes.bottomRows(64));
  opt.row_block = {64, rows};
  const auto block = pptq::optq(tail, H, spec, opt);
  REQUIRE(block.codes == whole.codes.bottomRows(64));
}

TEST_CASE("row blocks off the layer's chunks are refused", "[optq][row_block]") {
  std::mt19937_64 rng(8);
  const MatrixXd H = MatrixXd::Identity(16, 16);
  const MatrixXd W = gaussian(50, 16, rng);
  GridSpec spec;
  OptqOptions opt;
  REQUIRE(pptq::detail::row_chunk(200) == 32);
  opt.row_block = {16, 200};  // not a chunk boundary
  REQUIRE_THROWS_WITH(pptq::optq(W, H, spec, opt), Catch::Contains("row chunks of 32"));
  opt.row_block = {32, 200};  // ends at row 82: inside a chunk, not the layer's end
  REQUIRE_THROWS_AS(pptq::optq(W, H, spec, opt), pptq::UsageError);
  opt.row_block = {160, 200};  // runs past the layer
  REQUIRE_THROWS_WITH(pptq::optq(W, H, spec, opt), Catch::Contains("not inside a layer of 200 rows"));
  opt.row_block = {150, 200};
  REQUIRE_THROWS_AS(pptq::optq(W, H, spec, opt), pptq::UsageError);  // 150 is not a boundary either
  opt.row_block = {0, 0};
  opt.row_block.offset = 4;  // an offset without a layer
  REQUIRE_THROWS_AS(pptq::optq(W, H, spec, opt), pptq::UsageError);
  // Bounds: chunks dealt contiguously, the first blocks take the extra ones, the last may be empty.
  REQUIRE(pptq::row_block_bounds(200, 3) == std::vector<Index>{0, 96, 160, 200});
  REQUIRE(pptq::row_block_bounds(64, 4) == std::vector<Index>{0, 32, 64, 64, 64});
  REQUIRE(pptq::row_block_bounds(0, 2) == std::vector<Index>{0, 0, 0});
}
