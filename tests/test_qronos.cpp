// qronos.hpp (both forms) and stochastic OPTQ on the one sweep engine (docs/theory.md §4, §5), each
// against the plain transcriptions in tests/reference/reference.hpp. GPFQ, RTN and the lattices' rounding
// have their own files (test_gpfq, test_rtn, test_grid).
#include <catch2/catch.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <pptq/gpfq.hpp>
#include <pptq/qronos.hpp>

using namespace test;
using pptq::GridSpec;
using pptq::OptqOptions;
using pptq::QronosForm;
using pptq::QronosOptions;
using pptq::Rounding;

namespace {

// A layer whose inputs come from a previous layer that was quantized: X = A·P, X̃ = A·P̃ with P̃ the
// 3-bit round-to-nearest of P, the situation Qronos is built for (docs/theory.md §5.1).
struct Mismatched {
  MatrixXd W, X, Xq;
};

Mismatched mismatched_layer(Index m, Index n, Index rows, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const Index k = 96;
  const MatrixXd A = structured_inputs(m, k, rng, 8, 0.5);
  const MatrixXd P = gaussian(n, k, rng, 0.2);  // previous layer: n outputs × k inputs
  GridSpec g3;
  g3.bits = 3;
  const MatrixXd Pq = pptq::rtn(P, g3).dequantized;
  Mismatched out;
  out.X = A * P.transpose();
  out.Xq = A * Pq.transpose();
  out.W = gaussian(rows, n, rng, 0.05);
  return out;
}

double mismatch_error(const Mismatched& L, const MatrixXd& Q) {
  return (L.X * L.W.transpose() - L.Xq * Q.transpose()).norm();
}

}  // namespace

TEST_CASE("minimal use of the algorithms issue compiles and works as written", "[qronos][gpfq][optq]") {
  const Mismatched L = mismatched_layer(256, 64, 16, 3);
  const Eigen::MatrixXf W = L.W.cast<float>();
  const Eigen::MatrixXd X = L.X, Xq = L.Xq;
  const Eigen::MatrixXd H = X.transpose() * X;
  GridSpec grid;
  grid.bits = 4;
  // --- the snippet, verbatim ---
  pptq::QronosOptions qo; qo.form = pptq::QronosForm::LeastSquaresThenOptq;   // or pptq::QronosForm::Sequential
  auto rq = pptq::qronos(W, X, Xq, grid, qo);      // X, Xq: samples × cols
  pptq::OptqOptions so;  so.rounding = pptq::Rounding::Stochastic; so.seed = 7;
  auto rs = pptq::optq(W, H, grid, so);
  auto rg = pptq::gpfq(W, X, Xq, grid);
  auto rr = pptq::rtn(W, grid);
  // ---
  for (const auto* r : {&rq, &rs, &rg, &rr}) {
    REQUIRE(r->ok());
    REQUIRE(r->dequantized.rows() == W.rows());
    REQUIRE(r->dequantized.cols() == W.cols());
    REQUIRE(r->dequantized.allFinite());
  }
  CHECK(rq.method == pptq::Method::Qronos);
  CHECK(rg.method == pptq::Method::GPFQ);
  CHECK(rs.rounding == pptq::Rounding::Stochastic);
  CHECK(rq.lambda_max > 0);
  CHECK(rq.lambda == Approx(1e-6 * rq.lambda_max));
}

TEST_CASE("one seed gives identical stochastic OPTQ and Qronos for 1 and 2 threads and blocks 1, 32, 128",
          "[stochastic][determinism]") {
  const Mismatched L = mismatched_layer(300, 150, 70, 5);  // 70 rows: three row chunks, an odd tail
  const MatrixXd H = L.X.transpose() * L.X;
  GridSpec grid;
  grid.bits = 3;
  OptqOptions so;
  so.rounding = Rounding::Stochastic;
  so.seed = 42;
  QronosOptions qo;
  qo.rounding = Rounding::Stochastic;
  qo.seed = 42;
  QronosOptions qs = qo;
  qs.form = QronosForm::Sequential;
  std::vector<pptq::MatrixXi32> optq_codes, qronos_codes, seq_codes;
  for (int threads : {1, 2})
    for (Index block : {1, 32, 128}) {
      so.threads = qo.threads = qs.threads = threads;
      so.block_size = qo.block_size = qs.block_size = block;
      optq_codes.push_back(pptq::optq(L.W, H, grid, so).codes);
      qronos_codes.push_back(pptq::qronos(L.W, L.X, L.Xq, grid, qo).codes);
      seq_codes.push_back(pptq::qronos(L.W, L.X, L.Xq, grid, qs).codes);
    }
  for (std::size_t i = 1; i < optq_codes.size(); ++i) {
    CHECK(optq_codes[i] == optq_codes[0]);
    CHECK(qronos_codes[i] == qronos_codes[0]);
    CHECK(seq_codes[i] == seq_codes[0]);
  }
  // A different seed gives a different result; the deterministic run differs from the stochastic one.
  so.seed = 43;
  CHECK(pptq::optq(L.W, H, grid, so).codes != optq_codes[0]);
}

TEST_CASE("stochastic OPTQ equals the plain column loop with the same random numbers", "[stochastic][optq]") {
  std::mt19937_64 rng(21);
  for (int trial = 0; trial < 4; ++trial) {
    const Index n = 40 + 13 * trial, m = 3 * n;
    const MatrixXd X = structured_inputs(m, n, rng);
    const MatrixXd W = gaussian(9, n, rng);
    const MatrixXd H = X.transpose() * X;
    GridSpec grid;
    grid.bits = 2 + trial;
    OptqOptions o;
    o.rounding = Rounding::Stochastic;
    o.seed = 1000 + trial;
    o.block_size = 16;
    const auto r = pptq::optq(W, H, grid, o);
    const MatrixXd Qref = ref::optq(W, H, r.lambda, r.perm, library_rounding(r.grid, Rounding::Stochastic, o.seed));
    CHECK((r.dequantized - Qref).cwiseAbs().maxCoeff() <= 1e-12);
  }
}

TEST_CASE("sequential Qronos equals the plain transcription of its definition (docs/theory.md §5.2)", "[qronos]") {
  std::mt19937_64 rng(8);
  for (int trial = 0; trial < 6; ++trial) {
    const Index n = 12 + 7 * trial, m = trial % 2 ? n / 2 + 3 : 3 * n;  // also fewer samples than columns
    const MatrixXd X = structured_inputs(m, n, rng);
    const MatrixXd Xq = X + 0.1 * gaussian(m, n, rng);
    const MatrixXd W = gaussian(5, n, rng);
    QronosOptions o;
    o.form = QronosForm::Sequential;
    o.block_size = 1 + trial * 5;
    if (trial >= 3) o.lambda = 0.5;  // absolute; otherwise the default α·λ_max
    const bool stochastic = trial == 5;
    if (stochastic) {
      o.rounding = Rounding::Stochastic;
      o.seed = 9;
    }
    const double delta = 0.05;
    const auto r = pptq::qronos(W, X, Xq, infinite_alphabet(delta), o);
    REQUIRE(r.ok());
    const MatrixXd Qref = ref::qronos_sequential(W, X, Xq, r.lambda, r.perm,
                                                 library_rounding(r.grid, o.rounding, o.seed));
    INFO("trial " << trial << " lambda " << r.lambda);
    CHECK((r.dequantized - Qref).cwiseAbs().maxCoeff() <= 1e-9);
  }
}

TEST_CASE("least-squares-then-OPTQ Qronos equals OPTQ on X~ started from w~ (docs/theory.md §5.4)", "[qronos]") {
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 6; ++trial) {
    const Index n = 20 + 9 * trial, m = 2 * n + 5;
    const MatrixXd X = structured_inputs(m, n, rng);
    const MatrixXd Xq = X + 0.05 * gaussian(m, n, rng) + 0.1 * X * gaussian(n, n, rng) / std::sqrt(double(n));
    const MatrixXd W = gaussian(6, n, rng);
    GridSpec grid;
    grid.bits = 3 + trial % 3;
    QronosOptions o;
    o.block_size = 8;
    if (trial % 2) o.damp = 0.01;
    const auto r = pptq::qronos(W, X, Xq, grid, o);
    REQUIRE(r.ok());
    // Reference: the ridge LS correction, then the plain OPTQ column loop on X~ with the library's grid.
    const MatrixXd Qref = ref::qronos_ls_then_optq(W, X, Xq, r.lambda, r.perm, library_rounding(r.grid));
    CHECK((r.dequantized - Qref).cwiseAbs().maxCoeff() <= 1e-9);
    // Spelled out: the plain OPTQ loop on H~ = X~^T X~ from w~, same λ, order and grid (fitted on w).
    const MatrixXd Wt = ref::ridge_ls(W, X, Xq, r.lambda);
    const MatrixXd Qoptq = ref::optq(Wt, Xq.transpose() * Xq, r.lambda, r.perm, library_rounding(r.grid));
    CHECK((r.dequantized - Qoptq).cwiseAbs().maxCoeff() <= 1e-9);
    // The two forms differ only in the first rounding argument.
    QronosOptions s = o;
    s.form = QronosForm::Sequential;
    const auto rs = pptq::qronos(W, X, Xq, grid, s);
    CHECK(rs.lambda == r.lambda);
  }
}

TEST_CASE("Qronos with dynamic groups fits each group on the iterate from w~, for every block size", "[qronos][groups]") {
  // The sweep forms w~ itself here (the offset enters the start point); without groups it only needs
  // (w~ - w)·S. Both must give OPTQ on X~ from w~ with the same groups.
  std::mt19937_64 rng(31);
  const Index n = 90, m = 2 * n;
  const MatrixXd X = structured_inputs(m, n, rng);
  const MatrixXd Xq = X + 0.05 * gaussian(m, n, rng);
  const MatrixXd W = gaussian(7, n, rng);
  GridSpec g;
  g.bits = 3;
  g.group_size = 20;  // does not divide n
  for (QronosForm form : {QronosForm::LeastSquaresThenOptq, QronosForm::Sequential}) {
    QronosOptions o;
    o.form = form;
    o.damp = 0.01;
    o.block_size = 128;
    const auto base = pptq::qronos(W, X, Xq, g, o);
    REQUIRE(base.ok());
    REQUIRE(base.grid.dynamic);
    for (Index B : {Index(1), Index(7), Index(20), Index(33), n}) {
      o.block_size = B;
      const auto r = pptq::qronos(W, X, Xq, g, o);
      INFO(to_string(form) << ", block " << B);
      REQUIRE(r.codes == base.codes);
      REQUIRE((r.grid.scale - base.grid.scale).cwiseAbs().maxCoeff() <= 1e-12);
    }
    if (form == QronosForm::LeastSquaresThenOptq) {
      // OPTQ on H~ started from w~ (the engine without an offset), same λ, order and group size.
      const MatrixXd Wt = ref::ridge_ls(W, X, Xq, base.lambda);
      OptqOptions oo;
      oo.lambda = base.lambda;
      oo.order = base.perm;
      const auto ro = pptq::optq(Wt, MatrixXd(Xq.transpose() * Xq), g, oo);
      REQUIRE(ro.codes == base.codes);
      REQUIRE((ro.grid.scale - base.grid.scale).cwiseAbs().maxCoeff() <= 1e-9);
      // And the plain column loop with the library's grids reproduces the values.
      const MatrixXd Qref = ref::qronos_ls_then_optq(W, X, Xq, base.lambda, base.perm, library_rounding(base.grid));
      CHECK((base.dequantized - Qref).cwiseAbs().maxCoeff() <= 1e-9);
    }
  }
}

TEST_CASE("the reference example of docs/theory.md §5.5: Qronos beats OPTQ on X, OPTQ on X~ and RTN", "[qronos]") {
  // m = 200, N = 48, δ = 0.05, λ = 0.5, X~ = X + 0.1·noise (docs/theory.md §5.5; the published example's random draws are not
  // known, so the ordering and the ratios are reproduced on our own draws, averaged over 10 seeds).
  double s_ls = 0, s_q = 0, s_qs = 0, s_optq_x = 0, s_optq_xt = 0, s_rtn = 0;
  for (int seed = 0; seed < 10; ++seed) {
    std::mt19937_64 rng(500 + seed);
    const Index m = 200, n = 48;
    const MatrixXd X = gaussian(m, n, rng);
    const MatrixXd Xq = X + 0.1 * gaussian(m, n, rng);
    const MatrixXd W = gaussian(1, n, rng);
    const GridSpec grid = infinite_alphabet(0.05);
    QronosOptions o;
    o.lambda = 0.5;
    o.act_order = false;
    const auto rq = pptq::qronos(W, X, Xq, grid, o);
    o.form = QronosForm::Sequential;
    const auto rqs = pptq::qronos(W, X, Xq, grid, o);
    OptqOptions oo;
    oo.lambda = 0.5;
    oo.act_order = false;
    const auto rx = pptq::optq(W, X.transpose() * X, grid, oo);
    const auto rxt = pptq::optq(W, Xq.transpose() * Xq, grid, oo);
    const auto rr = pptq::rtn(W, grid);
    const VectorXd y = X * W.row(0).transpose();
    auto err = [&](const MatrixXd& Q) { return (y - Xq * Q.row(0).transpose()).norm(); };
    s_ls += err(ref::ridge_ls(W, X, Xq, 0.5));
    s_q += err(rq.dequantized);
    s_qs += err(rqs.dequantized);
    s_optq_x += err(rx.dequantized);
    s_optq_xt += err(rxt.dequantized);
    s_rtn += err(rr.dequantized);
  }
  WARN("docs/theory.md §5.5 example, mean over 10 draws: LS residual " << s_ls / 10 << ", Qronos LS-then-OPTQ " << s_q / 10
       << ", Qronos sequential " << s_qs / 10 << ", OPTQ on X " << s_optq_x / 10 << ", OPTQ on X~ " << s_optq_xt / 10
       << ", RTN " << s_rtn / 10 << "  (docs/theory.md §5.5: 8.1649, 8.2716, 8.2716, 9.2312, 9.0819, 9.3196)");
  CHECK(s_ls < s_q);
  CHECK(s_q < 1.03 * s_ls);  // docs/theory.md §5.5: 8.2716 / 8.1649 = 1.013
  CHECK(s_qs < 1.03 * s_ls);
  // Against Qronos, the documented ratios are 1.098 (OPTQ on X~), 1.116 (OPTQ on X), 1.127 (RTN). The three
  // baselines lie within a few per cent of each other (the mismatch noise dominates), so their mutual
  // order is not asserted; each must lose to Qronos by a margin of the documented size.
  for (double baseline : {s_optq_xt, s_optq_x, s_rtn}) {
    CHECK(baseline / s_q > 1.05);
    CHECK(baseline / s_q < 1.25);
  }
}

TEST_CASE("on mismatched inputs Qronos leaves less output error than OPTQ on X (20 seeds)", "[qronos]") {
  double sum_qronos = 0, sum_seq = 0, sum_optq = 0, sum_gpfq = 0, sum_rtn = 0;
  int qronos_wins = 0;
  const int seeds = 20;
  for (int seed = 0; seed < seeds; ++seed) {
    const Mismatched L = mismatched_layer(512, 128, 32, 100 + seed);
    GridSpec grid;
    grid.bits = 4;
    const auto rq = pptq::qronos(L.W, L.X, L.Xq, grid);
    QronosOptions s;
    s.form = QronosForm::Sequential;
    const auto rqs = pptq::qronos(L.W, L.X, L.Xq, grid, s);
    const auto ro = pptq::optq(L.W, L.X.transpose() * L.X, grid);  // the usual GPTQ: damp 0.01, act-order
    const auto rg = pptq::gpfq(L.W, L.X, L.Xq, grid);
    const auto rr = pptq::rtn(L.W, grid);
    const double eq = mismatch_error(L, rq.dequantized), eo = mismatch_error(L, ro.dequantized);
    sum_qronos += eq;
    sum_seq += mismatch_error(L, rqs.dequantized);
    sum_optq += eo;
    sum_gpfq += mismatch_error(L, rg.dequantized);
    sum_rtn += mismatch_error(L, rr.dequantized);
    qronos_wins += eq < eo ? 1 : 0;
  }
  WARN("||XW^T - X~Q^T|| mean over 20 seeds: Qronos " << sum_qronos / seeds << ", Qronos sequential " << sum_seq / seeds
       << ", OPTQ on X " << sum_optq / seeds << ", GPFQ " << sum_gpfq / seeds << ", RTN " << sum_rtn / seeds
       << "; Qronos wins " << qronos_wins << "/20");
  CHECK(sum_qronos < sum_optq);
  CHECK(sum_seq < sum_optq);
  CHECK(sum_optq < sum_rtn);
  CHECK(qronos_wins >= 15);
}

TEST_CASE("Qronos from a streaming CrossGram equals Qronos from the activations", "[qronos][gram]") {
  const Mismatched L = mismatched_layer(240, 60, 12, 17);
  pptq::CrossGram<double> cg(60);
  for (Index b = 0; b < 240; b += 80) cg.add(L.X.middleRows(b, 80), L.Xq.middleRows(b, 80));
  CHECK(cg.samples() == 240);
  CHECK((cg.htilde() - L.Xq.transpose() * L.Xq).cwiseAbs().maxCoeff() <= 1e-9 * L.Xq.squaredNorm());
  CHECK((cg.cross() - L.Xq.transpose() * L.X).cwiseAbs().maxCoeff() <= 1e-9 * L.Xq.squaredNorm());
  GridSpec grid;
  const auto a = pptq::qronos(L.W, cg, grid);
  const auto b = pptq::qronos(L.W, L.X, L.Xq, grid);
  CHECK(a.codes == b.codes);
  CHECK_THROWS_WITH(pptq::qronos(L.W, pptq::CrossGram<double>(60), grid), Catch::Contains("no samples"));
  CHECK_THROWS_WITH(cg.add(L.X, L.Xq.leftCols(59)), Catch::Contains("Xq is 240 x 59"));
}

TEST_CASE("Qronos consuming its accumulator is bit-identical to Qronos reading it, and empties it", "[qronos][gram][memory]") {
  // qronos(W, std::move(grams)) factors in H̃'s own storage after its last read (the correction b_π comes
  // first). n = 300 (one thread): both forms, dynamic groups, and λ = 0 on a rank-deficient H̃ (escalation:
  // the retry needs H̃ again); n = 1100 in the first mode (the threaded factor, two 1024-column panels).
  std::mt19937_64 rng(61);
  for (Index n : {Index(300), Index(1100)}) {
    const MatrixXd X = structured_inputs(n / 2 + 40, n, rng);
    const MatrixXd Xq = X + 0.05 * gaussian(n / 2 + 40, n, rng);
    const Eigen::MatrixXf W = gaussian(24, n, rng).cast<float>();
    for (int mode = 0; mode < 3; ++mode) {
      if (n > 1000 && mode > 0) break;  // the threaded factor and two panels: once (the suite also runs under sanitizers)
      GridSpec g;
      g.bits = 3;
      pptq::QronosOptions o;
      if (mode == 1) o.lambda = 0.0;
      if (mode == 2) {
        o.form = pptq::QronosForm::Sequential;
        g.group_size = 64;
      }
      INFO("n = " << n << ", mode " << mode);
      pptq::CrossGram<double> cg(n);
      cg.add(X, Xq);
      const auto a = pptq::qronos(W, cg, g, o);
      const auto b = pptq::qronos(W, std::move(cg), g, o);
      if (mode == 1) CHECK(a.status == pptq::Status::DampingEscalated);
      CHECK(a.lambda_tried == b.lambda_tried);
      REQUIRE(a.factor);
      REQUIRE(b.factor);
      CHECK(*a.factor == *b.factor);
      CHECK(a.codes == b.codes);
      CHECK(a.dequantized == b.dequantized);
      CHECK(cg.samples() == 0);
      CHECK(cg.cols() == 0);
      // The activations' entry point hands its own accumulator over: the same result again.
      CHECK(pptq::qronos(W, X, Xq, g, o).codes == a.codes);
      pptq::CorrectionGram<double> cc;
      cc.add(W, X, Xq);
      const auto c = pptq::qronos(W, cc, g, o);
      const auto d = pptq::qronos(W, std::move(cc), g, o);
      REQUIRE(d.factor);
      CHECK(*c.factor == *d.factor);
      CHECK(c.codes == d.codes);
      CHECK(cc.samples() == 0);
      CHECK_THROWS_WITH(pptq::qronos(W, std::move(cc), g, o), Catch::Contains("holds no samples"));
      cc.add(W, X, Xq);  // an emptied accumulator starts again
      if (mode == 0) CHECK(pptq::qronos(W, std::move(cc), c.grid, o).codes == c.codes);
    }
  }
}

TEST_CASE("Qronos from a CorrectionGram (no cross Gram) equals Qronos from the activations", "[qronos][gram]") {
  const Mismatched L = mismatched_layer(240, 60, 12, 18);
  pptq::CorrectionGram<double> cg;
  for (Index b = 0; b < 240; b += 80) cg.add(L.W, L.X.middleRows(b, 80), L.Xq.middleRows(b, 80));
  CHECK(cg.samples() == 240);
  CHECK(cg.rows() == 12);
  CHECK(cg.cols() == 60);
  const MatrixXd want = L.Xq.transpose() * (L.X - L.Xq) * L.W.transpose();
  CHECK((cg.correction() - want).cwiseAbs().maxCoeff() <= 1e-9 * (1 + want.cwiseAbs().maxCoeff()));
  GridSpec grid;
  GridSpec grouped;
  grouped.group_size = 16;  // dynamic groups: the sweep forms w~ from the correction
  for (QronosForm form : {QronosForm::LeastSquaresThenOptq, QronosForm::Sequential}) {
    QronosOptions o;
    o.form = form;
    for (const GridSpec* g : {&grid, &grouped}) {
      const auto a = pptq::qronos(L.W, cg, *g, o);
      const auto b = pptq::qronos(L.W, L.X, L.Xq, *g, o);
      INFO(to_string(form) << (g == &grid ? ", per-row grid" : ", dynamic groups"));
      CHECK(a.lambda == Approx(b.lambda).epsilon(1e-12));
      CHECK(a.codes == b.codes);
      CHECK(rel_diff(a.energy.sum(), b.energy.sum()) <= 1e-9);
    }
  }
  // A different W, or none of the batches: refused with a message.
  MatrixXd W2 = L.W;
  W2(3, 4) += 0.5;
  CHECK_THROWS_WITH(pptq::qronos(W2, cg, grid), Catch::Contains("differs from the W"));
  CHECK_THROWS_WITH(cg.add(W2, L.X.topRows(10), L.Xq.topRows(10)), Catch::Contains("differs from the W"));
  CHECK_THROWS_WITH(pptq::qronos(MatrixXd(L.W.topRows(5)), cg, grid), Catch::Contains("built for a 12 x 60 W"));
  CHECK_THROWS_WITH(pptq::qronos(L.W, pptq::CorrectionGram<double>(), grid), Catch::Contains("no samples"));
  CHECK_THROWS_WITH(cg.add(L.W, L.X, L.Xq.leftCols(59)), Catch::Contains("Xq is 240 x 59"));
}

TEST_CASE("accumulators are read through their lower triangle: the same as the full symmetric matrices", "[qronos][gram]") {
  // CrossGram and CorrectionGram hand Qronos their lower triangle (no N × N copy); the factor's fill,
  // the power iteration and the corrections read it through the symmetric view. n spans several 64-wide
  // tiles and 256-wide panels, none of them full at the end.
  const Mismatched L = mismatched_layer(900, 600, 6, 41);
  pptq::CrossGram<double> cg(600);
  cg.add(L.X, L.Xq);
  GridSpec grid;
  GridSpec grouped;
  grouped.group_size = 64;
  for (QronosForm form : {QronosForm::LeastSquaresThenOptq, QronosForm::Sequential}) {
    for (const GridSpec* g : {&grid, &grouped}) {
      QronosOptions o;
      o.form = form;
      const auto a = pptq::qronos(L.W, cg, *g, o);
      const auto b = pptq::qronos_from_grams(L.W, cg.htilde(), cg.cross(), *g, o);
      INFO(to_string(form) << (g == &grid ? ", per-row grid" : ", dynamic groups"));
      REQUIRE(a.factor);
      REQUIRE(b.factor);
      CHECK(a.lambda_max == b.lambda_max);
      CHECK(*a.factor == *b.factor);
      CHECK(a.codes == b.codes);
    }
  }
  pptq::CorrectionGram<double> rg;
  rg.add(L.W, L.X, L.Xq);
  const auto c = pptq::qronos(L.W, rg, grid);
  const auto d = pptq::qronos(L.W, cg, grid);
  CHECK(c.lambda_max == d.lambda_max);
  CHECK(*c.factor == *d.factor);
  // λ_max by the panelled power iteration against the eigensolver, for double and float H̃.
  const MatrixXd Ht = cg.htilde();
  const double lmax = Eigen::SelfAdjointEigenSolver<MatrixXd>(Ht).eigenvalues().maxCoeff();
  CHECK(c.lambda_max == Approx(lmax).epsilon(1e-6));
  const auto f = pptq::qronos_from_grams(L.W, Ht.cast<float>(), cg.cross().cast<float>(), grid);
  CHECK(f.lambda_max == Approx(lmax).epsilon(1e-5));
}

TEST_CASE("Qronos: a column X~ never touches ends as RTN of the original weight", "[qronos][dead]") {
  const Mismatched L0 = mismatched_layer(200, 40, 8, 23);
  Mismatched L = L0;
  for (Index j : {0, 7, 39}) L.Xq.col(j).setZero();
  GridSpec grid;
  grid.bits = 3;
  const auto rr = pptq::rtn(L.W, grid);
  for (QronosForm form : {QronosForm::LeastSquaresThenOptq, QronosForm::Sequential}) {
    QronosOptions o;
    o.form = form;
    o.act_order = false;  // column 0 is then the first one swept
    const auto r = pptq::qronos(L.W, L.X, L.Xq, grid, o);
    REQUIRE(r.ok());
    for (Index j : {0, 7, 39}) CHECK(r.codes.col(j) == rr.codes.col(j));
  }
}

TEST_CASE("Qronos damping: α·λ_max by power iteration, relative, absolute", "[qronos]") {
  const Mismatched L = mismatched_layer(300, 50, 4, 29);
  const MatrixXd Ht = L.Xq.transpose() * L.Xq;
  const double lmax = Eigen::SelfAdjointEigenSolver<MatrixXd>(Ht).eigenvalues().maxCoeff();
  GridSpec grid;
  QronosOptions o;
  o.alpha = 1e-3;
  auto r = pptq::qronos(L.W, L.X, L.Xq, grid, o);
  CHECK(r.lambda_max == Approx(lmax).epsilon(1e-6));
  CHECK(r.lambda == Approx(1e-3 * lmax).epsilon(1e-6));
  o.damp = 0.02;
  r = pptq::qronos(L.W, L.X, L.Xq, grid, o);
  CHECK(r.lambda == Approx(0.02 * Ht.diagonal().mean()));
  o.lambda = 3.5;
  r = pptq::qronos(L.W, L.X, L.Xq, grid, o);
  CHECK(r.lambda == 3.5);
  // All-zero X~: λ_max = 0, so λ escalates to a tiny positive value and every weight is RTN.
  Mismatched Z = L;
  Z.Xq.setZero();
  const auto rz = pptq::qronos(Z.W, Z.X, Z.Xq, grid);
  REQUIRE(rz.ok());
  CHECK(rz.status == pptq::Status::DampingEscalated);
  CHECK(rz.codes == pptq::rtn(Z.W, grid).codes);
}

TEST_CASE("Qronos and GPFQ reject bad input with a message naming it", "[qronos][gpfq][validation]") {
  const Mismatched L = mismatched_layer(100, 30, 4, 2);
  GridSpec grid;
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, L.Xq.topRows(99), grid), Catch::Contains("Xq is 99 x 30"));
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X.leftCols(29), L.Xq.leftCols(29), grid), Catch::Contains("W has 30 columns"));
  MatrixXd bad = L.Xq;
  bad(3, 4) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, bad, grid), Catch::Contains("non-finite") && Catch::Contains("(3, 4)"));
  CHECK_THROWS_WITH(pptq::gpfq(L.W, L.X, bad, grid), Catch::Contains("Xq"));
  QronosOptions o;
  o.alpha = -1;
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, L.Xq, grid, o), Catch::Contains("QronosOptions.alpha") && Catch::Contains("-1"));
  o = {};
  o.lambda = -2;
  CHECK_THROWS_WITH(pptq::qronos(L.W, L.X, L.Xq, grid, o), Catch::Contains("QronosOptions.lambda"));
  o = {};
  o.block_size = 0;
  CHECK_THROWS_AS(pptq::qronos(L.W, L.X, L.Xq, grid, o), std::invalid_argument);
  pptq::GpfqOptions g;
  g.threads = -1;
  CHECK_THROWS_WITH(pptq::gpfq(L.W, L.X, L.Xq, grid, g), Catch::Contains("GpfqOptions.threads"));
  MatrixXd G = L.Xq.transpose() * L.X;
  CHECK_THROWS_WITH(pptq::qronos_from_grams(L.W, MatrixXd(L.Xq.transpose() * L.Xq), G.topRows(29).eval(), grid),
                    Catch::Contains("G (Xq^T X) is 29 x 30"));
}
