// The backend of the level-3 products (include/pptq/detail/blas.hpp): OpenBLAS's kernels when the build
// has them, Eigen's otherwise. CI runs this suite both ways (.ci/run). Every wrapper is checked against a
// plain triple loop on blocks inside larger matrices (leading dimension ≠ rows), with the entries it must
// not touch checked too, and the whole factor and OPTQ call at a size whose factor runs on two threads
// must give the same bits for any thread count.
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <pptq/detail/blas.hpp>
#include <pptq/pptq.hpp>

#include <limits>

using namespace test;
using pptq::Index;

TEST_CASE("the products run on the backend the build asked for", "[backend]") {
  INFO("backend: " << pptq::detail::blas_backend());
#ifdef PPTQ_USE_BLAS
  // Built against OpenBLAS (CMake's pptq::blas): it must be its OpenMP build, and it must be used.
  // A build that links another OpenBLAS (or whose loader picks another) falls back to Eigen and fails here.
  REQUIRE(pptq::detail::blas_active());
  CHECK(pptq::detail::blas_backend().rfind("OpenBLAS", 0) == 0);
#ifdef PPTQ_BLAS_ENABLED
  // Which products go to OpenBLAS: from 32³ multiply-adds on, and never one whose dimension or leading
  // dimension exceeds BLAS's int (Eigen's kernels take those: an exception there would be thrown inside
  // a parallel region and end the process).
  using pptq::detail::blas_worth;
  const Index big = Index(std::numeric_limits<int>::max()) + 1;
  CHECK(blas_worth(32, 32, 32, {32, 32, 32}));
  CHECK_FALSE(blas_worth(31, 32, 32, {31, 32, 32}));
  CHECK(blas_worth(Index(std::numeric_limits<int>::max()), 1, 1 << 15, {Index(std::numeric_limits<int>::max())}));
  CHECK_FALSE(blas_worth(big, 64, 64, {big, 64, big}));
  CHECK_FALSE(blas_worth(64, big, 64, {64, 64, 64}));
  CHECK_FALSE(blas_worth(64, 64, big, {64, 64, 64}));
  CHECK_FALSE(blas_worth(64, 64, 64, {64, big, 64}));
  CHECK_FALSE(blas_worth(64, 64, 64, {64, 64, big}));
#endif
#else
  CHECK_FALSE(pptq::detail::blas_active());
  CHECK(pptq::detail::blas_backend() == "Eigen");
#endif
}

namespace {

// The plain products, accumulated in long double.
template <typename Scalar>
pptq::Matrix<Scalar> plain_product(const pptq::Matrix<Scalar>& A, const pptq::Matrix<Scalar>& B) {
  pptq::Matrix<Scalar> C(A.rows(), B.cols());
  for (Index i = 0; i < A.rows(); ++i)
    for (Index j = 0; j < B.cols(); ++j) {
      long double s = 0;
      for (Index k = 0; k < A.cols(); ++k) s += static_cast<long double>(A(i, k)) * B(k, j);
      C(i, j) = static_cast<Scalar>(s);
    }
  return C;
}

template <typename Scalar>
pptq::Matrix<Scalar> random_matrix(Index r, Index c, std::mt19937_64& rng) {
  return gaussian(r, c, rng).cast<Scalar>();
}

template <typename Scalar>
double tolerance() {
  return std::is_same_v<Scalar, float> ? 2e-4 : 1e-11;
}

// Max |a − b| relative to max |b|.
template <typename DA, typename DB>
double rel_err(const Eigen::MatrixBase<DA>& a, const Eigen::MatrixBase<DB>& b) {
  const double scale = std::max(1.0, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

// True when `after` equals `before` everywhere outside the block at (3, 2) of size r × c.
template <typename M>
bool same_outside_block(const M& after, const M& before, Index r, Index c) {
  M t = after;
  t.block(3, 2, r, c) = before.block(3, 2, r, c);
  return t == before;
}

template <typename Scalar>
void check_wrappers(Index m, Index n, Index k, std::mt19937_64& rng) {
  using M = pptq::Matrix<Scalar>;
  CAPTURE(m, n, k);
  // Every operand is a block at offset (3, 2) of a larger matrix: leading dimension ≠ rows.
  const Index pad = 5;
  M Abig = random_matrix<Scalar>(m + pad, k + pad, rng), Bbig = random_matrix<Scalar>(k + pad, n + pad, rng);
  M Btbig = random_matrix<Scalar>(n + pad, k + pad, rng), Cbig = random_matrix<Scalar>(m + pad, n + pad, rng);
  const M A = Abig.block(3, 2, m, k), B = Bbig.block(3, 2, k, n), Bt = Btbig.block(3, 2, n, k);

  {
    INFO("C += A·B and C −= A·B");
    for (int sign : {1, -1}) {
      M Cw = Cbig;
      pptq::detail::gemm_acc<Scalar>(Cw.block(3, 2, m, n), Abig.block(3, 2, m, k), Bbig.block(3, 2, k, n), sign);
      const M expect = Cbig.block(3, 2, m, n) + static_cast<Scalar>(sign) * plain_product<Scalar>(A, B);
      CHECK(rel_err(Cw.block(3, 2, m, n), expect) < tolerance<Scalar>());
      CHECK(same_outside_block(Cw, Cbig, m, n));  // nothing outside the block written
    }
  }
  {
    INFO("C −= A·Bᵀ");
    M Cw = Cbig;
    pptq::detail::gemm_sub_abt<Scalar>(Cw.block(3, 2, m, n), Abig.block(3, 2, m, k), Btbig.block(3, 2, n, k));
    const M expect = Cbig.block(3, 2, m, n) - plain_product<Scalar>(A, M(Bt.transpose()));
    CHECK(rel_err(Cw.block(3, 2, m, n), expect) < tolerance<Scalar>());
    CHECK(same_outside_block(Cw, Cbig, m, n));
  }
  {
    INFO("C = Aᵀ·B (the Gram's panels), C overwritten");
    M Obig = random_matrix<Scalar>(k + pad, n + pad, rng);
    M Ow = Obig;
    pptq::detail::gemm_atb<Scalar>(Ow.block(3, 2, k, n), Abig.block(3, 2, m, k), Cbig.block(3, 2, m, n));
    const M expect = plain_product<Scalar>(M(A.transpose()), M(Cbig.block(3, 2, m, n)));
    CHECK(rel_err(Ow.block(3, 2, k, n), expect) < tolerance<Scalar>());
    CHECK(same_outside_block(Ow, Obig, k, n));
  }
  {
    INFO("upper triangle of C −= A·Aᵀ; the strict lower triangle untouched");
    M Csq = random_matrix<Scalar>(m + pad, m + pad, rng);
    M Cw = Csq;
    pptq::detail::syrk_sub_upper_block<Scalar>(Cw.block(3, 2, m, m), Abig.block(3, 2, m, k));
    const M full = Csq.block(3, 2, m, m) - plain_product<Scalar>(A, M(A.transpose()));
    const M got = Cw.block(3, 2, m, m);
    CHECK(rel_err(M(got.template triangularView<Eigen::Upper>()), M(full.template triangularView<Eigen::Upper>())) <
          tolerance<Scalar>());
    M rest = Cw;
    rest.block(3, 2, m, m).template triangularView<Eigen::Upper>() =
        Csq.block(3, 2, m, m).template triangularView<Eigen::Upper>();
    CHECK(rest == Csq);  // strict lower triangle and everything outside the block as they were
  }
  {
    INFO("B·T⁻ᵀ and B·T⁻¹, unit and not; T's strict lower triangle (and a unit T's diagonal) not read");
    // A well-conditioned upper T inside a larger matrix whose other entries are NaN: reading one shows.
    M Tbig = M::Constant(n + pad, n + pad, std::numeric_limits<Scalar>::quiet_NaN());
    M T = random_matrix<Scalar>(n, n, rng) * static_cast<Scalar>(0.3 / std::sqrt(double(n)));
    T.diagonal().array() = T.diagonal().array().abs() + Scalar(1);
    T.template triangularView<Eigen::StrictlyLower>().setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    for (bool unit : {false, true})
      for (bool transposed : {false, true}) {
        CAPTURE(unit, transposed);
        M Tu = T;
        if (unit) Tu.diagonal().setConstant(std::numeric_limits<Scalar>::quiet_NaN());
        Tbig.block(3, 2, n, n) = Tu;
        M Cw = Cbig;
        pptq::detail::trsm_right_upper<Scalar>(Tbig.block(3, 2, n, n), Cw.block(3, 2, m, n), transposed, unit);
        // X·op(T) must give back the right-hand side.
        M Tclean = T.template triangularView<Eigen::Upper>();
        if (unit) Tclean.diagonal().setOnes();
        const M op = transposed ? M(Tclean.transpose()) : Tclean;
        const M X = Cw.block(3, 2, m, n);
        CHECK(rel_err(plain_product<Scalar>(X, op), M(Cbig.block(3, 2, m, n))) < 10 * tolerance<Scalar>());
        CHECK(same_outside_block(Cw, Cbig, m, n));
      }
  }
}

}  // namespace

TEST_CASE("the products' wrappers agree with plain products, above and below the backend's threshold", "[backend]") {
  std::mt19937_64 rng(31);
  // 70 × 50 × 40 and 130 × 33 × 65 run on OpenBLAS when it is active; 9 × 7 × 5 stays on Eigen. With n =
  // 300 the triangular solves split their triangle (trsm_leaf = 128) into kernel solves and GEMMs.
  for (auto [m, n, k] : {std::array<Index, 3>{70, 50, 40}, std::array<Index, 3>{130, 33, 65}, std::array<Index, 3>{9, 7, 5},
                         std::array<Index, 3>{40, 300, 20}}) {
    check_wrappers<float>(m, n, k, rng);
    check_wrappers<double>(m, n, k, rng);
  }
}

TEST_CASE("a factor and an OPTQ call large enough for two threads give the same bits at 1, 2 and 3 threads",
          "[backend][threads]") {
  // At 1100 columns the factor runs on pptq's threads (from 1024 up), so several of the backend's calls
  // run at once: with a BLAS that is not safe for that, or that threads on its own, the bits would differ.
  std::mt19937_64 rng(37);
  const Index n = 1100;
  const MatrixXd X = structured_inputs(1200, n, rng, 64);
  MatrixXd H = X.transpose() * X;
  const Eigen::MatrixXf W = gaussian(260, n, rng).cast<float>();
  pptq::GridSpec g;
  g.bits = 3;
  pptq::OptqOptions o;
  o.threads = 1;
  const auto a = pptq::optq(W, H, g, o);
  REQUIRE(a.ok());
  for (int t : {2, 3}) {
    CAPTURE(t);
    o.threads = t;
    const auto b = pptq::optq(W, H, g, o);
    CHECK(b.codes == a.codes);
    CHECK(b.dequantized == a.dequantized);
    CHECK(b.lambda == a.lambda);
  }
  // And the result is OPTQ's: the energy identity (docs/theory.md §3.1(iv)), ‖X(w − q)‖² + λ‖w − q‖² = Σ e_t²/L_tt²
  // with the engine's own e_t, holds on this call's own output; a wrong product in the factor or the
  // sweep breaks it. (Float sweep: to ~1e-4.)
  const MatrixXd D = (W - a.dequantized).cast<double>();
  const double direct = (X * D.transpose()).squaredNorm() + a.lambda * D.squaredNorm();
  CHECK(rel_diff(direct, a.energy.sum()) < 1e-3);
}
