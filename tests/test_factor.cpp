// The factor (detail/factor.hpp, factor.hpp): V·Vᵀ = H_π + λI across the recursive split sizes, the
// panel solve, escalation and failure, the lower triangle never touched, the in-place conversions and
// permutation, identical bits for any thread count (docs/theory.md §2).
#include <catch2/catch.hpp>

#include <pptq/pptq.hpp>

#include "reference/reference.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <numeric>

using namespace test;
using pptq::GridSpec;
using pptq::OptqOptions;

TEST_CASE("float weights with a double H: the double factor converted in place equals its cast", "[optq][factor]") {
  // detail/prepare.hpp converts V (double) into the float S inside the same bytes, column by column;
  // a wrong order would overwrite columns not read yet.
  std::mt19937_64 rng(21);
  for (Index n : {Index(7), Index(130), Index(300)}) {
    const MatrixXd X = structured_inputs(2 * n, n, rng);
    const MatrixXd H = X.transpose() * X;
    const MatrixXd Wd = gaussian(9, n, rng);
    const Eigen::MatrixXf Wf = Wd.cast<float>();
    GridSpec g;
    const auto rd = pptq::optq(Wd, H, g);
    const auto rf = pptq::optq(Wf, H, g);
    REQUIRE(rd.factor);
    REQUIRE(rf.factor);
    const Eigen::MatrixXf want = rd.factor->cast<float>();
    INFO("n = " << n);
    REQUIRE(*rf.factor == want);
    REQUIRE(rf.Ltt == rd.Ltt);
    for (Index t = 0; t < n; ++t) REQUIRE((*rf.factor)(t, t) == 1.0f);
  }
}

TEST_CASE("the factor: V·Vᵀ = H_π + λI with V upper (zeros below) across the recursive split sizes", "[optq][factor]") {
  // V = S·diag(1/Ltt) in sweep order (result.hpp). Sizes: the unblocked base (≤ 192), one and several
  // recursive splits with blocks that are not multiples of 64, and the multi-threaded factor (≥ 1024).
  std::mt19937_64 rng(31);
  for (Index n : {Index(1), Index(2), Index(191), Index(193), Index(257), Index(700), Index(1100)}) {
    const MatrixXd X = structured_inputs(n + 20, n, rng);
    const MatrixXd H = X.transpose() * X;
    const MatrixXd W = gaussian(3, n, rng);
    OptqOptions o;
    o.damp = 1e-3;
    const auto r = pptq::optq(W, H, GridSpec{}, o);
    REQUIRE(r.ok());
    REQUIRE(r.factor);
    const MatrixXd V = *r.factor * r.Ltt.cwiseInverse().asDiagonal();
    MatrixXd Hp(n, n);
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < n; ++i) Hp(i, j) = H(r.perm[i], r.perm[j]);
    Hp.diagonal().array() += r.lambda;
    INFO("n = " << n);
    REQUIRE(V.triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0.0));
    REQUIRE(((V * V.transpose()) - Hp).norm() <= 1e-12 * Hp.norm());
  }
}

TEST_CASE("escalation and failure in the recursive factor (N > 192): the trailing block decides too", "[optq][factor]") {
  std::mt19937_64 rng(32);
  const Index n = 400;
  // Rank 60 of 400: singular at λ = 0, in every block of the split.
  const MatrixXd X = structured_inputs(60, n, rng);
  const MatrixXd H = X.transpose() * X;
  const MatrixXd W = gaussian(4, n, rng);
  OptqOptions o;
  o.lambda = 0.0;
  const auto r = pptq::optq(W, H, GridSpec{}, o);
  REQUIRE(r.ok());
  CHECK(r.status == pptq::Status::DampingEscalated);
  CHECK(r.lambda_tried.size() >= 2);
  const MatrixXd D = W - r.dequantized;
  CHECK(rel_diff((X * D.transpose()).squaredNorm() + r.lambda * D.squaredNorm(), r.energy.sum()) < 1e-8);
  // Indefinite through the last sweep column (in the trailing block, factored first) or the first one
  // (factored last): a diagonal entry shrunk far below its row makes a negative eigenvalue either way.
  const MatrixXd Xf = structured_inputs(3 * n, n, rng);
  MatrixXd Hi = Xf.transpose() * Xf;
  OptqOptions no;
  no.act_order = false;
  no.lambda = 0.0;
  no.escalate_damping = false;
  REQUIRE(pptq::optq(W, Hi, GridSpec{}, no).ok());
  for (Index at : {Index(0), n - 1}) {
    MatrixXd Hb = Hi;
    Hb(at, at) *= 1e-6;
    const auto f = pptq::optq(W, Hb, GridSpec{}, no);
    INFO("shrunk diagonal at column " << at);
    CHECK(f.status == pptq::Status::NumericalIssue);
    CHECK(f.dequantized.size() == 0);
  }
}

TEST_CASE("the recursive factor never reads or writes the strict lower triangle", "[optq][factor]") {
  // What lets a consumed H keep H_π in its lower half for a retry (detail/factor.hpp).
  std::mt19937_64 rng(33);
  for (Index n : {Index(150), Index(300), Index(1100)}) {
    const MatrixXd X = structured_inputs(n + 30, n, rng);
    MatrixXd A = X.transpose() * X;
    A.diagonal().array() += 1e-3 * A.diagonal().mean();
    MatrixXd B = A;
    B.triangularView<Eigen::StrictlyLower>().setConstant(std::numeric_limits<double>::quiet_NaN());
    MatrixXd C = A;
    REQUIRE(pptq::detail::cholesky_upper_lower_inplace<double>(B, 2));
    REQUIRE(pptq::detail::cholesky_upper_lower_inplace<double>(C, 2));
    INFO("n = " << n);
    Index untouched = 0;  // the strict lower triangle still holds its NaNs (and was never read: see below)
    for (Index j = 0; j < n; ++j)
      for (Index i = j + 1; i < n; ++i) untouched += std::isnan(B(i, j)) ? 1 : 0;
    CHECK(untouched == n * (n - 1) / 2);
    CHECK(B.triangularView<Eigen::Upper>().toDenseMatrix() == C.triangularView<Eigen::Upper>().toDenseMatrix());
  }
}

TEST_CASE("the recursive factor is a Cholesky factor, and its panel solve is A·V⁻ᵀ at any size and thread count",
          "[optq][factor]") {
  // Sizes around the small-block path (192), the solve's leaf (128 columns) and its row chunks (128-512).
  std::mt19937_64 rng(35);
  for (Index n : {Index(150), Index(300), Index(700), Index(1100)}) {
    const MatrixXd X = structured_inputs(n + 30, n, rng);
    MatrixXd A = X.transpose() * X;
    A.diagonal().array() += 1e-3 * A.diagonal().mean();
    MatrixXd V = A;
    REQUIRE(pptq::detail::cholesky_upper_lower_inplace<double>(V, 2));
    const MatrixXd Vu = V.triangularView<Eigen::Upper>();
    INFO("n = " << n);
    CHECK((Vu * Vu.transpose() - A).norm() <= 1e-13 * A.norm());
    // The same factor as Eigen's LLT of the reversed matrix (unique with a positive diagonal).
    const MatrixXd Ar = A.reverse();
    const MatrixXd Lr = Eigen::LLT<MatrixXd>(Ar).matrixL();
    CHECK((Vu - MatrixXd(Lr.reverse())).norm() <= 1e-10 * Vu.norm());
  }
  for (Index n : {Index(100), Index(129), Index(300), Index(700)}) {
    MatrixXd T = gaussian(n, n, rng, 0.1);
    T.diagonal().array() += 3.0;
    T.triangularView<Eigen::StrictlyLower>().setZero();
    for (Index m : {Index(1), Index(130), Index(1100)}) {
      const MatrixXd B = gaussian(m, n, rng);
      MatrixXd X1 = B, X2 = B;
      pptq::detail::trsm_right_upper_trans<double>(T, X1, 1);
      pptq::detail::trsm_right_upper_trans<double>(T, X2, 2);
      INFO("n = " << n << ", rows = " << m);
      CHECK(X1 == X2);  // fixed chunks: the same bits at any thread count
      CHECK((X1 * T.transpose() - B).norm() <= 1e-12 * B.norm());
    }
  }
}

TEST_CASE("a double factor becomes the float sweep's factor in place, the same at any thread count", "[optq][factor][memory]") {
  // make_sweep_factor narrows V (double) to S = V·diag(V)⁻¹ (float) in V's own bytes, in parallel steps
  // that must never overwrite a double column before it is read (detail/prepare.hpp).
  std::mt19937_64 rng(36);
  for (Index n : {Index(1), Index(2), Index(5), Index(300), Index(1100)}) {
    MatrixXd V = gaussian(n, n, rng);
    V.diagonal() = V.diagonal().cwiseAbs().array() + 0.5;
    V.triangularView<Eigen::StrictlyLower>().setZero();
    Eigen::MatrixXf want = Eigen::MatrixXf::Zero(n, n);
    for (Index j = 0; j < n; ++j) {
      for (Index i = 0; i < j; ++i) want(i, j) = static_cast<float>(V(i, j) / V(j, j));
      want(j, j) = 1.0f;
    }
    for (int threads : {1, 2, 3}) {
      pptq::detail::FactorResult<double> f;
      f.storage = std::make_shared<pptq::detail::FactorStorage>(sizeof(double) * static_cast<std::size_t>(n * n));
      pptq::detail::seat(f.V, f.storage->data(), n);
      f.V = V;
      const auto S = pptq::detail::make_sweep_factor<float>(std::move(f), threads);
      INFO("n = " << n << ", threads = " << threads);
      CHECK(Eigen::MatrixXf(S->S) == want);
      CHECK(S->d == V.diagonal());
    }
  }
}

TEST_CASE("the in-place symmetric permutation equals H[perm][:, perm]", "[optq][factor]") {
  std::mt19937_64 rng(34);
  for (Index n : {Index(1), Index(5), Index(300)}) {
    const MatrixXd H = gaussian(n, n, rng);
    std::vector<std::vector<Index>> perms;
    perms.emplace_back(n);
    std::iota(perms.back().begin(), perms.back().end(), Index(0));  // identity
    perms.push_back(random_perm(n, rng));
    std::vector<Index> rev(perms.front().rbegin(), perms.front().rend());  // 2-cycles and a fixed point
    perms.push_back(rev);
    for (const auto& p : perms) {
      MatrixXd A = H;
      pptq::detail::permute_symmetric_inplace<double>(A, p, 2);
      MatrixXd want(n, n);
      for (Index j = 0; j < n; ++j)
        for (Index i = 0; i < n; ++i) want(i, j) = H(p[i], p[j]);
      CHECK(A == want);
    }
  }
}
