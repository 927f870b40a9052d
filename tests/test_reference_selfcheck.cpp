// Self-checks of the test-only reference implementations in tests/reference/reference.hpp.
// The references are checked against each other (independent formulations) and against the identities and
// bounds of docs/theory.md, so that a bug in a reference is caught here rather than silently
// "confirming" a bug in the library.
#include <catch2/catch.hpp>

#include "reference/reference.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <utility>
#include <vector>

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

MatrixXd randn(Index r, Index c, std::mt19937& g, double sd = 1.0) {
  std::normal_distribution<double> nd(0.0, sd);
  MatrixXd A(r, c);
  for (Index j = 0; j < c; ++j)
    for (Index i = 0; i < r; ++i) A(i, j) = nd(g);
  return A;
}

int randint(std::mt19937& g, int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(g);
}

double randu(std::mt19937& g, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(g); }

std::vector<Index> rand_perm(Index N, std::mt19937& g) {
  std::vector<Index> p = ref::identity_perm(N);
  std::shuffle(p.begin(), p.end(), g);
  return p;
}

// Random X with unequal column scales (log-normal-ish), optionally low rank when m < N automatically.
MatrixXd rand_X(Index m, Index N, std::mt19937& g) {
  MatrixXd X = randn(m, N, g);
  for (Index j = 0; j < N; ++j) X.col(j) *= std::exp(randu(g, -1.0, 1.0));
  return X;
}

double mean_diag(const MatrixXd& X) { return X.squaredNorm() / static_cast<double>(X.cols()); }

// max |A - B| / max(|B|_max, floor)
double rel_diff(const MatrixXd& A, const MatrixXd& B, double floor = 1e-300) {
  REQUIRE(A.rows() == B.rows());
  REQUIRE(A.cols() == B.cols());
  const double scale = std::max(B.cwiseAbs().maxCoeff(), floor);
  return (A - B).cwiseAbs().maxCoeff() / scale;
}

double rel(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

// Sylvester Hadamard matrix of order N (power of 2).
MatrixXd hadamard(Index N) {
  MatrixXd H = MatrixXd::Ones(1, 1);
  while (H.rows() < N) {
    const Index n = H.rows();
    MatrixXd H2(2 * n, 2 * n);
    H2 << H, H, H, -H;
    H = H2;
  }
  return H;
}

struct Case {
  Index rows, N, m;
  double lambda;
  std::vector<Index> perm;
  MatrixXd W, X;
};

// rows 3-5, N 5-12, m in 8-30 (about a third of the cases with m < N), lambda in [1e-3, 10] * mean diag.
Case rand_case(std::mt19937& g) {
  Case c;
  c.rows = randint(g, 3, 5);
  c.N = randint(g, 5, 12);
  c.m = (randint(g, 0, 2) == 0) ? randint(g, 2, static_cast<int>(c.N) - 1) : randint(g, 8, 30);
  c.X = rand_X(c.m, c.N, g);
  c.W = randn(c.rows, c.N, g);
  c.lambda = std::pow(10.0, randu(g, -3.0, 1.0)) * mean_diag(c.X);
  c.perm = rand_perm(c.N, g);
  return c;
}

}  // namespace

// ================================================================================================
// OPTQ (docs/theory.md §2, §3.1)
// ================================================================================================

TEST_CASE("ref: optq column loop == OBS form == ridge-LS form (docs/theory.md §2)", "[reference]") {
  std::mt19937 g(1234);
  const double delta = 0.1;
  const ref::RoundFn q = ref::round_to_grid(delta);
  for (int trial = 0; trial < 60; ++trial) {
    Case c = rand_case(g);
    CAPTURE(trial, c.rows, c.N, c.m, c.lambda);
    const MatrixXd H = c.X.transpose() * c.X;

    MatrixXd e1, e2;
    VectorXd L1, L2;
    const MatrixXd Q1 = ref::optq(c.W, H, c.lambda, c.perm, q, &e1, &L1);
    const MatrixXd Q2 = ref::optq_obs(c.W, H, c.lambda, c.perm, q, &e2, &L2);
    CHECK(rel_diff(Q1, Q2, 1.0) <= 1e-9);
    CHECK(rel_diff(e1, e2, 1.0) <= 1e-9);
    CHECK(rel_diff(L1, L2) <= 1e-9);

    // Outputs lie on the grid (the recorded value is the rounded one).
    for (Index r = 0; r < c.rows; ++r)
      for (Index j = 0; j < c.N; ++j) CHECK(Q1(r, j) == delta * std::nearbyint(Q1(r, j) / delta));

    // Third, independent formulation (ridge-LS form of §2), written inline on X itself:
    //   w^(t)_{>t} = w^(t-1)_{>t} + (X_{>t}^T X_{>t} + lambda I)^{-1} X_{>t}^T X_t e_t.
    const MatrixXd Xp = ref::permute_cols(c.X, c.perm);
    MatrixXd Q3(c.rows, c.N);
    for (Index r = 0; r < c.rows; ++r) {
      VectorXd w = ref::permute_vec(c.W.row(r).transpose(), c.perm);
      for (Index t = 0; t < c.N; ++t) {
        const double qt = q(r, c.perm[t], w(t));
        const double et = w(t) - qt;
        const Index rest = c.N - t - 1;
        if (rest > 0) {
          const MatrixXd B = Xp.rightCols(rest);
          const MatrixXd A = B.transpose() * B + c.lambda * MatrixXd::Identity(rest, rest);
          w.tail(rest) += A.ldlt().solve(B.transpose() * Xp.col(t) * et);
        }
        Q3(r, c.perm[t]) = qt;
      }
    }
    CHECK(rel_diff(Q1, Q3, 1.0) <= 1e-9);
  }
}

TEST_CASE("ref: optq identities of docs/theory.md §3.1", "[reference]") {
  std::mt19937 g(99);
  const double delta = 0.05;
  const ref::RoundFn q = ref::round_to_grid(delta);
  for (int trial = 0; trial < 40; ++trial) {
    Case c = rand_case(g);
    CAPTURE(trial, c.rows, c.N, c.m, c.lambda);
    const MatrixXd H = c.X.transpose() * c.X;
    MatrixXd e;
    VectorXd Ltt;
    const MatrixXd Q = ref::optq(c.W, H, c.lambda, c.perm, q, &e, &Ltt);
    const MatrixXd L = ref::chol_L(H, c.lambda, c.perm);
    CHECK(rel_diff(Ltt, L.diagonal()) <= 1e-12);

    // (iii) L^T H L = I  <=>  (XL)^T (XL) + lambda L^T L = I.
    const MatrixXd Xp = ref::permute_cols(c.X, c.perm);
    const MatrixXd XL = Xp * L;
    CHECK(rel_diff(XL.transpose() * XL + c.lambda * L.transpose() * L, MatrixXd::Identity(c.N, c.N)) <= 1e-10);

    MatrixXd Dinv = MatrixXd::Zero(c.N, c.N);
    for (Index t = 0; t < c.N; ++t) Dinv(t, t) = 1.0 / L(t, t);
    for (Index r = 0; r < c.rows; ++r) {
      const VectorXd w = ref::permute_vec(c.W.row(r).transpose(), c.perm);
      const VectorXd qv = ref::permute_vec(Q.row(r).transpose(), c.perm);
      const VectorXd er = e.row(r).transpose();
      // (i) w - q = L D^{-1} e
      CHECK(rel_diff(w - qv, L * Dinv * er, 1e-3) <= 1e-10);
      // (i) drift: w^(t-1)_t = q_t + e_t = w_t - sum_{s<t} e_s L_ts / L_ss
      for (Index t = 0; t < c.N; ++t) {
        double s = 0;
        for (Index k = 0; k < t; ++k) s += er(k) * L(t, k) / L(k, k);
        CHECK(std::abs((qv(t) + er(t)) - (w(t) - s)) <= 1e-10 * std::max(1.0, std::abs(w(t))));
      }
      // (iv) energy identity
      const double lhs = (Xp * (w - qv)).squaredNorm() + c.lambda * (w - qv).squaredNorm();
      double rhs = 0;
      for (Index t = 0; t < c.N; ++t) rhs += er(t) * er(t) / (L(t, t) * L(t, t));
      CHECK(rel(lhs, rhs) <= 1e-10);
    }
  }
}

TEST_CASE("ref: optq with lambda -> 1e12 gives RTN", "[reference]") {
  std::mt19937 g(7);
  const ref::RoundFn q = ref::round_to_grid(0.1);
  for (int trial = 0; trial < 20; ++trial) {
    Case c = rand_case(g);
    const MatrixXd H = c.X.transpose() * c.X;
    const double lam = 1e12 * mean_diag(c.X);
    CHECK(rel_diff(ref::optq(c.W, H, lam, c.perm, q), ref::rtn(c.W, q), 1.0) == 0.0);
    // ... while a moderate lambda must NOT give RTN on at least some cases (the test can see a difference).
  }
  int differ = 0;
  for (int trial = 0; trial < 20; ++trial) {
    Case c = rand_case(g);
    const MatrixXd H = c.X.transpose() * c.X;
    if (rel_diff(ref::optq(c.W, H, 1e-2 * mean_diag(c.X), c.perm, q), ref::rtn(c.W, q), 1.0) > 0) ++differ;
  }
  CHECK(differ > 10);
}

TEST_CASE("ref: optq calls the rounding callback with (row, ORIGINAL column) in sweep order", "[reference]") {
  std::mt19937 g(3);
  Case c = rand_case(g);
  const MatrixXd H = c.X.transpose() * c.X;
  std::vector<std::pair<Index, Index>> calls;
  ref::RoundFn rec = [&](Index r, Index j, double v) {
    calls.emplace_back(r, j);
    return 0.1 * std::nearbyint(v / 0.1);
  };
  for (int which = 0; which < 2; ++which) {
    calls.clear();
    if (which == 0)
      ref::optq(c.W, H, c.lambda, c.perm, rec);
    else
      ref::optq_obs(c.W, H, c.lambda, c.perm, rec);
    REQUIRE(static_cast<Index>(calls.size()) == c.rows * c.N);
    for (Index r = 0; r < c.rows; ++r)
      for (Index t = 0; t < c.N; ++t) {
        CHECK(calls[static_cast<size_t>(r * c.N + t)].first == r);
        CHECK(calls[static_cast<size_t>(r * c.N + t)].second == c.perm[t]);
      }
  }
  // Invalid permutations are rejected.
  std::vector<Index> bad = c.perm;
  bad[0] = bad[1];
  CHECK_THROWS_AS(ref::optq(c.W, H, c.lambda, bad, rec), std::invalid_argument);
}

// ================================================================================================
// Qronos (docs/theory.md §5)
// ================================================================================================

namespace {

struct QCase {
  Index rows, N, m;
  double lambda;
  std::vector<Index> perm;
  MatrixXd W, X, Xt;
};

QCase rand_qcase(std::mt19937& g, double noise = 0.1) {
  QCase c;
  c.rows = randint(g, 3, 4);
  c.N = randint(g, 5, 10);
  c.m = (randint(g, 0, 2) == 0) ? randint(g, 2, static_cast<int>(c.N) - 1) : randint(g, 8, 30);
  c.X = rand_X(c.m, c.N, g);
  c.Xt = c.X + noise * randn(c.m, c.N, g);
  c.W = randn(c.rows, c.N, g);
  c.lambda = std::pow(10.0, randu(g, -3.0, 0.0)) * mean_diag(c.Xt);
  c.perm = rand_perm(c.N, g);
  return c;
}

// w~ = argmin_v ||X w - X~ v||^2 + lambda ||v - w||^2 computed independently of ref::ridge_ls:
// Householder QR on the stacked least-squares problem [X~; sqrt(lambda) I] v ~ [X w; sqrt(lambda) w].
VectorXd ridge_by_qr(const VectorXd& w, const MatrixXd& X, const MatrixXd& Xt, double lambda) {
  const Index m = X.rows(), N = X.cols();
  MatrixXd A(m + N, N);
  A << Xt, std::sqrt(lambda) * MatrixXd::Identity(N, N);
  VectorXd b(m + N);
  b << X * w, std::sqrt(lambda) * w;
  return A.householderQr().solve(b);
}

}  // namespace

TEST_CASE("ref: qronos_sequential correction argmin equals w^(t-1)_t for t >= 2 (Lemma-5.1-like)", "[reference]") {
  std::mt19937 g(2024);
  const ref::RoundFn q = ref::round_to_grid(0.1);
  for (int trial = 0; trial < 30; ++trial) {
    QCase c = rand_qcase(g);
    CAPTURE(trial, c.N, c.m, c.lambda);
    ref::QronosTrace tr;
    ref::qronos_sequential(c.W, c.X, c.Xt, c.lambda, c.perm, q, &tr);
    for (Index r = 0; r < c.rows; ++r) {
      for (Index t = 1; t < c.N; ++t)
        CHECK(std::abs(tr.arg(r, t) - tr.wprev(r, t)) <= 1e-9 * std::max(1.0, std::abs(tr.wprev(r, t))));
      // Step 1 is the unregularised correction c_1 (explicit formula, computed here independently).
      const Index j0 = c.perm[0];
      VectorXd res = c.X * c.W.row(r).transpose();
      for (Index k = 1; k < c.N; ++k) res -= c.Xt.col(c.perm[k]) * c.W(r, c.perm[k]);
      const double c1 = c.Xt.col(j0).dot(res) / c.Xt.col(j0).squaredNorm();
      CHECK(std::abs(tr.arg(r, 0) - c1) <= 1e-10 * std::max(1.0, std::abs(c1)));
      CHECK(tr.wprev(r, 0) == c.W(r, j0));
    }
  }
}

TEST_CASE("ref: qronos_sequential == OPTQ(X~, lambda) from w~ with first argument c_1 (docs/theory.md §5.4), and §5.5",
          "[reference]") {
  std::mt19937 g(77);
  const double delta = 0.1;
  const ref::RoundFn q = ref::round_to_grid(delta);
  int rows_5254_differ = 0;
  for (int trial = 0; trial < 30; ++trial) {
    QCase c = rand_qcase(g);
    CAPTURE(trial, c.N, c.m, c.lambda);
    const MatrixXd Ht = c.Xt.transpose() * c.Xt;

    // w~ (per row) by QR, and c_1 by its formula.
    MatrixXd Wt(c.rows, c.N);
    VectorXd c1(c.rows);
    for (Index r = 0; r < c.rows; ++r) {
      const VectorXd w = c.W.row(r).transpose();
      Wt.row(r) = ridge_by_qr(w, c.X, c.Xt, c.lambda).transpose();
      VectorXd res = c.X * w;
      for (Index k = 1; k < c.N; ++k) res -= c.Xt.col(c.perm[k]) * w(c.perm[k]);
      c1(r) = c.Xt.col(c.perm[0]).dot(res) / c.Xt.col(c.perm[0]).squaredNorm();
    }
    // The rounding argument of the first step is replaced by c_1; all others pass through.
    const Index j0 = c.perm[0];
    const ref::RoundFn q_c1 = [&](Index r, Index j, double v) { return j == j0 ? q(r, j, c1(r)) : q(r, j, v); };
    MatrixXd e;
    VectorXd Ltt;
    const MatrixXd Q_constructed = ref::optq(Wt, Ht, c.lambda, c.perm, q_c1, &e, &Ltt);
    const MatrixXd Q_seq = ref::qronos_sequential(c.W, c.X, c.Xt, c.lambda, c.perm, q);
    CHECK(rel_diff(Q_seq, Q_constructed, 1.0) <= 1e-9);

    // ridge_ls agrees with the QR solution; the §5.4 form starts from the same w~.
    MatrixXd Wt_ls, e_ls;
    VectorXd Ltt_ls;
    const MatrixXd Q_ls = ref::qronos_ls_then_optq(c.W, c.X, c.Xt, c.lambda, c.perm, q, &Wt_ls, &e_ls, &Ltt_ls);
    CHECK(rel_diff(Wt_ls, Wt) <= 1e-9);
    CHECK(rel_diff(Ltt_ls, Ltt) <= 1e-12);

    const double C2t = std::sqrt(ref::C2_sq(c.Xt, c.lambda, c.perm));
    for (Index r = 0; r < c.rows; ++r) {
      const VectorXd w = c.W.row(r).transpose();
      const VectorXd wt = Wt.row(r).transpose();
      const double R2 = ref::R_lambda_sq(w, c.X, c.Xt, c.lambda);
      CHECK(rel(R2, (c.X * w - c.Xt * wt).squaredNorm() + c.lambda * (wt - w).squaredNorm()) <= 1e-9);

      // 5.2 and 5.4 differ only through the first rounding decision.
      if (Q_seq(r, j0) == Q_ls(r, j0))
        CHECK(rel_diff(Q_seq.row(r), Q_ls.row(r), 1.0) <= 1e-9);
      else
        ++rows_5254_differ;

      // §5.5 exact decomposition and bound, for both forms (e~ from the corresponding OPTQ run on X~).
      for (int form = 0; form < 2; ++form) {
        const VectorXd qv = (form == 0 ? Q_seq : Q_ls).row(r).transpose();
        const VectorXd et = (form == 0 ? e : e_ls).row(r).transpose();
        const double lhs = (c.X * w - c.Xt * qv).squaredNorm();
        const double a = (c.X * w - c.Xt * wt).squaredNorm();
        const double b = (c.Xt * (wt - qv)).squaredNorm();
        const double cross = 2 * c.lambda * (wt - w).dot(wt - qv);
        CHECK(std::abs(lhs - (a + b + cross)) <= 1e-10 * (a + b + std::abs(cross) + 1e-300));
        double energy = 0;
        for (Index t = 0; t < c.N; ++t) energy += et(t) * et(t) / (Ltt(t) * Ltt(t));
        // 3.1(iv) on X~ around w~
        CHECK(rel(b + c.lambda * (wt - qv).squaredNorm(), energy) <= 1e-10);
        CHECK(lhs <= (R2 + energy) * (1 + 1e-12));
        // 5.4 with nearest rounding on delta Z: ||Xw - X~q|| <= R_lambda + (delta/2) C2(X~, lambda).
        if (form == 1) CHECK(std::sqrt(lhs) <= (std::sqrt(R2) + 0.5 * delta * C2t) * (1 + 1e-12));
      }
    }
  }
  INFO("rows where 5.2 and 5.4 made a different first decision: " << rows_5254_differ);
  CHECK(rows_5254_differ > 0);  // the two forms are genuinely different (docs/theory.md §5.4: they differ in general)
}

TEST_CASE("ref: Qronos without mismatch (X~ = X) equals OPTQ on X started from w", "[reference]") {
  // Derivation: with X~ = X, w~ = (X^T X + lambda I)^{-1}(X^T X w + lambda w) = w exactly, for ANY lambda, so
  // the §5.4 form is optq(W, X^T X, lambda). For §5.2, c_1 = <X_1, X w - X_{>1} w_{>1}>/||X_1||^2 = w_1, so the
  // first argument is w~_1 too and the sequential form is the same OPTQ run.
  std::mt19937 g(555);
  const ref::RoundFn q = ref::round_to_grid(0.1);
  for (int trial = 0; trial < 30; ++trial) {
    const Index N = randint(g, 5, 10);
    const bool tall = trial % 3 != 0;
    const Index m = tall ? randint(g, 20, 30) : randint(g, 2, static_cast<int>(N) - 1);
    const MatrixXd X = rand_X(m, N, g);
    const MatrixXd W = randn(randint(g, 3, 4), N, g);
    const std::vector<Index> perm = rand_perm(N, g);
    // tiny lambda only on well-conditioned tall X (else w~ = w holds only to cond * eps)
    const double c = tall ? std::pow(10.0, randu(g, -8.0, 0.0)) : std::pow(10.0, randu(g, -3.0, 0.0));
    const double lambda = c * mean_diag(X);
    CAPTURE(trial, N, m, lambda);
    CHECK(rel_diff(ref::ridge_ls(W, X, X, lambda), W) <= 1e-8);
    const MatrixXd Qo = ref::optq(W, X.transpose() * X, lambda, perm, q);
    CHECK(rel_diff(ref::qronos_ls_then_optq(W, X, X, lambda, perm, q), Qo, 1.0) <= 1e-9);
    CHECK(rel_diff(ref::qronos_sequential(W, X, X, lambda, perm, q), Qo, 1.0) <= 1e-9);
  }
}

TEST_CASE("ref: qronos_sequential with a dead first column uses c_1 = w_1", "[reference]") {
  std::mt19937 g(31);
  QCase c = rand_qcase(g);
  c.Xt.col(c.perm[0]).setZero();
  ref::QronosTrace tr;
  const ref::RoundFn q = ref::round_to_grid(0.1);
  const MatrixXd Q = ref::qronos_sequential(c.W, c.X, c.Xt, c.lambda, c.perm, q, &tr);
  for (Index r = 0; r < c.rows; ++r) {
    CHECK(tr.arg(r, 0) == c.W(r, c.perm[0]));
    CHECK(std::isfinite(Q.row(r).sum()));
  }
}

// ================================================================================================
// GPFQ (docs/theory.md §8)
// ================================================================================================

TEST_CASE("ref: gpfq final residual, greedy optimality, orthogonal case, dead column", "[reference]") {
  std::mt19937 g(8);
  const double delta = 0.1;
  const ref::RoundFn q = ref::round_to_grid(delta);
  for (int trial = 0; trial < 30; ++trial) {
    QCase c = rand_qcase(g);
    CAPTURE(trial, c.N, c.m);
    MatrixXd U;
    const MatrixXd Q = ref::gpfq(c.W, c.X, c.Xt, c.perm, q, &U);
    for (Index r = 0; r < c.rows; ++r) {
      const VectorXd target = c.X * c.W.row(r).transpose() - c.Xt * Q.row(r).transpose();
      CHECK(rel_diff(U.col(r), target, 1e-3) <= 1e-10);
      // Greedy optimality, rebuilt from Q alone: q_t minimises ||u_{t-1} + w_t X_t - p X~_t|| over p in delta Z,
      // so it is at least as good as its two grid neighbours.
      VectorXd u = VectorXd::Zero(c.m);
      for (Index t = 0; t < c.N; ++t) {
        const Index j = c.perm[t];
        const VectorXd v = u + c.W(r, j) * c.X.col(j);
        const double best = (v - Q(r, j) * c.Xt.col(j)).norm();
        CHECK(best <= (v - (Q(r, j) + delta) * c.Xt.col(j)).norm() * (1 + 1e-12));
        CHECK(best <= (v - (Q(r, j) - delta) * c.Xt.col(j)).norm() * (1 + 1e-12));
        u = v - Q(r, j) * c.Xt.col(j);
      }
    }
  }
  // Orthogonal columns, no mismatch: u_{t-1} is orthogonal to X_t, so GPFQ == RTN.
  const Index N = 16;
  const MatrixXd Xh = hadamard(N) / 4.0;
  const MatrixXd Wh = randn(3, N, g);
  CHECK(rel_diff(ref::gpfq(Wh, Xh, Xh, rand_perm(N, g), q), ref::rtn(Wh, q), 1.0) <= 1e-12);

  // Dead column of X~: q is called with value 0 for it.
  QCase c = rand_qcase(g);
  const Index dead = c.perm[2];
  c.Xt.col(dead).setZero();
  std::vector<double> seen;
  ref::RoundFn rec = [&](Index, Index j, double v) {
    if (j == dead) seen.push_back(v);
    return q(0, j, v);
  };
  ref::gpfq(c.W, c.X, c.Xt, c.perm, rec);
  REQUIRE(static_cast<Index>(seen.size()) == c.rows);
  for (double v : seen) CHECK(v == 0.0);
}

// ================================================================================================
// Bound constants (docs/theory.md §3.1(v), §3.2, §3.4, §4.2, §5.5)
// ================================================================================================

TEST_CASE("ref: 1/L_tt^2 by Schur complement == push-through == Cholesky route", "[reference]") {
  std::mt19937 g(4242);
  for (int trial = 0; trial < 40; ++trial) {
    Case c = rand_case(g);
    CAPTURE(trial, c.N, c.m, c.lambda);
    const VectorXd s = ref::inv_Ltt_sq_schur(c.X, c.lambda, c.perm);
    const VectorXd p = ref::inv_Ltt_sq_pushthrough(c.X, c.lambda, c.perm);
    const MatrixXd L = ref::chol_L(c.X.transpose() * c.X, c.lambda, c.perm);
    VectorXd chol(c.N);
    for (Index t = 0; t < c.N; ++t) chol(t) = 1.0 / (L(t, t) * L(t, t));
    for (Index t = 0; t < c.N; ++t) {
      CHECK(rel(s(t), chol(t)) <= 1e-10);
      CHECK(rel(p(t), chol(t)) <= 1e-10);
    }
    // The OBS form's diag(L) (inverse of each remaining block) agrees too.
    VectorXd Lobs;
    ref::optq_obs(c.W, c.X.transpose() * c.X, c.lambda, c.perm, ref::round_to_grid(0.1), nullptr, &Lobs);
    CHECK(rel_diff(Lobs, L.diagonal()) <= 1e-10);
    CHECK(rel(ref::C2_sq(c.X, c.lambda, c.perm), chol.sum()) <= 1e-10);
    // Order matters (the constants are not permutation invariant in general) -- reversed order differs.
    std::vector<Index> rev(c.perm.rbegin(), c.perm.rend());
    CHECK(rel_diff(ref::inv_Ltt_sq_schur(c.X, c.lambda, rev).reverse(), s) > 1e-6);
  }
}

TEST_CASE("ref: bounds of docs/theory.md §3.2, §3.4, §4.2 hold on random cases", "[reference]") {
  std::mt19937 g(606);
  const double delta = 0.1;
  const ref::RoundFn q = ref::round_to_grid(delta);
  for (int trial = 0; trial < 40; ++trial) {
    Case c = rand_case(g);
    CAPTURE(trial, c.N, c.m, c.lambda);
    const double lam = c.lambda;
    const Index N = c.N, m = c.m;
    const MatrixXd Xp = ref::permute_cols(c.X, c.perm);
    const VectorXd inv = ref::inv_Ltt_sq_schur(c.X, lam, c.perm);
    const double C2sq = inv.sum();
    const double tol = 1 + 1e-10;

    double maxcol2 = 0;
    for (Index t = 0; t < N; ++t) maxcol2 = std::max(maxcol2, Xp.col(t).squaredNorm());

    // §3.1(v) range, last term, and the §3.2 relaxation chain for every t.
    double finer = 0;
    for (Index t = 0; t < N; ++t) {
      const VectorXd xt = Xp.col(t);
      CHECK(inv(t) >= lam / tol);
      CHECK(inv(t) <= (lam + xt.squaredNorm()) * tol);
      const Index rest = N - t - 1;
      double t1, t2;
      if (rest == 0) {
        CHECK(rel(inv(t), lam + xt.squaredNorm()) <= 1e-12);
        t1 = t2 = lam + xt.squaredNorm();
      } else {
        Eigen::JacobiSVD<MatrixXd> svd(Xp.rightCols(rest), Eigen::ComputeThinU);
        const VectorXd sv = svd.singularValues();
        Index rank = 0;
        while (rank < sv.size() && sv(rank) > 1e-10 * sv(0)) ++rank;
        const VectorXd coef = svd.matrixU().leftCols(rank).transpose() * xt;  // P_{>t} x_t in the U basis
        const double inP = coef.squaredNorm();
        const double perp = std::max(0.0, xt.squaredNorm() - inP);
        const double smin = sv(rank - 1);
        t1 = lam + perp + lam * inP / (smin * smin + lam);
        const double sm = (rest >= m) ? sv(m - 1) : 0.0;  // m-th singular value, 0 if N - t < m
        t2 = lam + xt.squaredNorm() * lam / (sm * sm + lam);
      }
      CHECK(inv(t) <= t1 * tol);
      CHECK(t1 <= t2 * tol);
      CHECK(t2 <= (lam + xt.squaredNorm()) * tol);
      finer += t1;
    }
    CHECK(C2sq <= finer * tol);
    CHECK(C2sq <= (N * lam + c.X.squaredNorm()) * tol);

    // §3.4 Cw and its bounds; §4.2 Cinf and its bounds.
    const MatrixXd L = ref::chol_L(c.X.transpose() * c.X, lam, c.perm);
    const MatrixXd Hinv = L * L.transpose();  // = (H_p + lambda I)^{-1}
    const double cw = ref::Cw(c.X, lam, c.perm);
    for (Index t = 0; t < N; ++t) {
      double s = 0;
      for (Index k = 0; k < t; ++k) s += std::pow(L(t, k) / L(k, k), 2);
      CHECK(s <= cw * cw * tol);
      CHECK(s <= inv.maxCoeff() * Hinv(t, t) * tol);
    }
    CHECK(cw * cw <= (lam + maxcol2) / lam * tol);
    const double ci = ref::Cinf(c.X, lam, c.perm);
    double maxlev = 0;
    for (Index i = 0; i < m; ++i) maxlev = std::max(maxlev, Xp.row(i).dot(Hinv * Xp.row(i).transpose()));
    CHECK(ci <= std::sqrt(inv.maxCoeff() * maxlev) * tol);
    CHECK(ci <= std::sqrt(lam + maxcol2) * tol);
    // Cinf attained by some row: recompute from a_t = X L_{:,t} / L_tt directly.
    double ci2 = 0;
    for (Index i = 0; i < m; ++i) {
      double s = 0;
      for (Index t = 0; t < N; ++t) s += std::pow((Xp.row(i) * L.col(t))(0) / L(t, t), 2);
      ci2 = std::max(ci2, std::sqrt(s));
    }
    CHECK(rel(ci, ci2) <= 1e-10);

    // Error bounds along actual OPTQ runs with nearest rounding on delta Z.
    MatrixXd e;
    const MatrixXd Q = ref::optq(c.W, c.X.transpose() * c.X, lam, c.perm, q, &e);
    for (Index r = 0; r < c.rows; ++r) {
      const VectorXd d = ref::permute_vec((c.W.row(r) - Q.row(r)).transpose(), c.perm);
      CHECK(e.row(r).cwiseAbs().maxCoeff() <= 0.5 * delta * tol);
      CHECK((Xp * d).norm() <= 0.5 * delta * std::sqrt(C2sq) * tol);
      CHECK(d.norm() <= 0.5 * delta * std::sqrt(C2sq / lam) * tol);
      CHECK((Xp * d).cwiseAbs().maxCoeff() <= 0.5 * delta * std::sqrt(double(N)) * ci * tol);
      const VectorXd w = ref::permute_vec(c.W.row(r).transpose(), c.perm);
      const VectorXd qv = ref::permute_vec(Q.row(r).transpose(), c.perm);
      for (Index t = 0; t < N; ++t)  // drift |w^(t-1)_t - w_t| <= (delta/2) sqrt(N) Cw
        CHECK(std::abs(qv(t) + e(r, t) - w(t)) <= 0.5 * delta * std::sqrt(double(N)) * cw * tol + 1e-12);
    }
  }
}

TEST_CASE("ref: Hadamard example of docs/theory.md §4.4", "[reference]") {
  for (Index N : {Index(16), Index(64)}) {
    CAPTURE(N);
    const MatrixXd X = hadamard(N) / std::sqrt(double(N));  // m = N, X^T X = I
    const double lam = 0.01 * X.squaredNorm() / double(N);    // = 0.01
    std::mt19937 g(static_cast<unsigned>(N));
    for (const std::vector<Index>& perm : {ref::identity_perm(N), rand_perm(N, g)}) {
      const MatrixXd L = ref::chol_L(X.transpose() * X, lam, perm);
      CHECK(rel_diff(L, MatrixXd::Identity(N, N) / std::sqrt(1 + lam)) <= 1e-12);
      const VectorXd s = ref::inv_Ltt_sq_schur(X, lam, perm);
      const VectorXd p = ref::inv_Ltt_sq_pushthrough(X, lam, perm);
      for (Index t = 0; t < N; ++t) {
        CHECK(rel(s(t), 1 + lam) <= 1e-12);
        CHECK(rel(p(t), 1 + lam) <= 1e-12);
      }
      CHECK(rel(ref::C2_sq(X, lam, perm), N * (1 + lam)) <= 1e-12);
      CHECK(ref::Cw(X, lam, perm) <= 1e-12);
      CHECK(rel(ref::Cinf(X, lam, perm), 1.0) <= 1e-12);

      // w = (1/2 - eps) delta 1: deterministic OPTQ == RTN == 0, ||X(w-q)||_inf = ||X(w-q)||_2 = (1/2-eps) delta sqrt(N).
      const double delta = 1.0, eps = 0.05;
      const MatrixXd W = MatrixXd::Constant(1, N, (0.5 - eps) * delta);
      const ref::RoundFn q = ref::round_to_grid(delta);
      const MatrixXd Q = ref::optq(W, X.transpose() * X, lam, perm, q);
      CHECK(Q.cwiseAbs().maxCoeff() == 0.0);
      const VectorXd res = X * (W - Q).transpose();
      CHECK(rel(res.cwiseAbs().maxCoeff(), (0.5 - eps) * delta * std::sqrt(double(N))) <= 1e-12);
      CHECK(rel(res.norm(), (0.5 - eps) * delta * std::sqrt(double(N))) <= 1e-12);
      CHECK(res.norm() <= 0.5 * delta * std::sqrt(N * (1 + lam)));
    }
  }
}

TEST_CASE("ref: R_lambda^2 is the minimum of the ridge objective", "[reference]") {
  std::mt19937 g(11);
  for (int trial = 0; trial < 30; ++trial) {
    QCase c = rand_qcase(g, 0.3);
    const VectorXd w = c.W.row(0).transpose();
    const double R2 = ref::R_lambda_sq(w, c.X, c.Xt, c.lambda);
    auto obj = [&](const VectorXd& v) {
      return (c.X * w - c.Xt * v).squaredNorm() + c.lambda * (v - w).squaredNorm();
    };
    const VectorXd vq = ridge_by_qr(w, c.X, c.Xt, c.lambda);
    CHECK(rel(R2, obj(vq)) <= 1e-9);
    CHECK(R2 <= obj(w) * (1 + 1e-12));
    for (int k = 0; k < 5; ++k) CHECK(R2 <= obj(vq + 1e-3 * randn(c.N, 1, g)) * (1 + 1e-12));
    CHECK(R2 > 0);  // there is a mismatch, so the LS residual is positive
    CHECK(ref::R_lambda_sq(w, c.X, c.X, c.lambda) <= 1e-20 * (1 + (c.X * w).squaredNorm()));
  }
}

// ================================================================================================
// GPTQ quantizer (docs/theory.md §7)
// ================================================================================================

namespace {
template <typename T>
Eigen::Matrix<T, -1, 1> vec(std::initializer_list<T> v) {
  Eigen::Matrix<T, -1, 1> x(static_cast<Index>(v.size()));
  Index i = 0;
  for (T a : v) x(i++) = a;
  return x;
}
}  // namespace

TEST_CASE("ref: quantize rounds half to even, clamps, divides", "[reference]") {
  // scale 0.5, zero 0, maxq 3 (2-bit): 0.25/0.5 = 0.5 -> 0 (std::round would give 1); 0.75/0.5 = 1.5 -> 2.
  CHECK(ref::quantize<double>(0.25, 0.5, 0.0, 3) == 0.0);
  CHECK(ref::quantize<double>(0.75, 0.5, 0.0, 3) == 1.0);
  // clamping: 10/0.5 = 20 -> 3 -> 1.5; -1/0.5 = -2 -> +1 zero -> -1 -> clamp 0 -> (0 - 1) * 0.5 = -0.5
  CHECK(ref::quantize<double>(10.0, 0.5, 0.0, 3) == 1.5);
  CHECK(ref::quantize<double>(-1.0, 0.5, 1.0, 3) == -0.5);
  CHECK(ref::quantize<float>(0.25f, 0.5f, 0.0f, 3) == 0.0f);
  // Division, not multiplication by the reciprocal: 0.3/0.1 = 2.9999999999999996 in double while
  // 0.3 * (1/0.1) = 3.0000000000000004; both round to 3, so take a case where the difference matters:
  // x/scale with x = 0.35, scale = 0.1: 0.35/0.1 = 3.4999999999999996 -> 3 ; 0.35*(1/0.1) = 3.5 -> 4 (even).
  CHECK(0.35 / 0.1 < 3.5);
  CHECK(ref::quantize<double>(0.35, 0.1, 0.0, 15) == 0.1 * 3);
}

TEST_CASE("ref: find_params hand-checked rows (docs/theory.md §7)", "[reference]") {
  double scale = 0, zero = 0;
  const double inf_norm = 2.4;
  // sym 4-bit on [-1, 0.5, 0.25]: xmin = -1, xmax = 0.5 -> xmax = max(1, 0.5) = 1, xmin = -1;
  // maxq = 15, scale = 2/15, zero = (15+1)/2 = 8.
  ref::find_params<double>(vec<double>({-1, 0.5, 0.25}), 4, true, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(2.0 / 15).epsilon(1e-15));
  CHECK(zero == 8.0);

  // asym 4-bit on [0.1, 0.7]: xmin = min(0.1, 0) = 0, xmax = 0.7 -> scale = 0.7/15, zero = round(-0/scale) = 0.
  ref::find_params<double>(vec<double>({0.1, 0.7}), 4, false, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(0.7 / 15).epsilon(1e-15));
  CHECK(zero == 0.0);
  CHECK(ref::quantize(0.7, scale, zero, 15) == Approx(0.7).epsilon(1e-15));

  // all-zero row: xmin = xmax = 0 -> (-1, +1). asym 4-bit: scale = 2/15, zero = round(1/(2/15)) = round(7.5) = 8
  // (1/(2/15) is exactly 7.5 in double; half to even gives 8). sym: zero = 8 as well.
  ref::find_params<double>(vec<double>({0, 0, 0}), 4, false, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(2.0 / 15).epsilon(1e-15));
  CHECK(zero == 8.0);
  // 3-bit asym: scale = 2/7, -xmin/scale = 3.5 exactly -> 4 (even).
  ref::find_params<double>(vec<double>({0, 0}), 3, false, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(2.0 / 7).epsilon(1e-15));
  CHECK(zero == 4.0);

  // all-positive row, sym 4-bit on [0.3, 0.6, 0.9]: xmin = 0 (NOT < 0, so it stays 0), xmax = 0.9;
  // scale = 0.9/15 = 0.06, zero = 8; grid = {-8..7} * 0.06 = [-0.48, 0.42], so 0.9 clips to 0.42.
  ref::find_params<double>(vec<double>({0.3, 0.6, 0.9}), 4, true, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(0.06).epsilon(1e-15));
  CHECK(zero == 8.0);
  CHECK(ref::quantize(0.9, scale, zero, 15) == Approx(0.42).epsilon(1e-14));
  // all-negative row, sym: xmin = -0.9 < 0 -> xmax = 0.9, xmin = -0.9, scale = 1.8/15 = 0.12.
  ref::find_params<double>(vec<double>({-0.3, -0.9}), 4, true, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(0.12).epsilon(1e-15));
  CHECK(zero == 8.0);

  // 2-bit asym (maxq = 3) on [-0.25, 1.25]: scale = 1.5/3 = 0.5, -xmin/scale = 0.5 -> round half EVEN -> 0.
  ref::find_params<double>(vec<double>({-0.25, 1.25}), 2, false, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == 0.5);
  CHECK(zero == 0.0);
  // 2-bit asym on [-0.75, 0.75, 0.1]: scale = 0.5, -xmin/scale = 1.5 -> 2.
  ref::find_params<double>(vec<double>({-0.75, 0.75, 0.1}), 2, false, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == 0.5);
  CHECK(zero == 2.0);
  // 2-bit asym on [-0.3, 0.9]: scale = 1.2/3 = 0.4, zero = round(0.75) = 1.
  ref::find_params<double>(vec<double>({-0.3, 0.9}), 2, false, false, inf_norm, 100, 0.8, scale, zero);
  CHECK(scale == Approx(0.4).epsilon(1e-15));
  CHECK(zero == 1.0);

  // float instantiation, same sym case.
  float fs = 0, fz = 0;
  ref::find_params<float>(vec<float>({-1.f, 0.5f, 0.25f}), 4, true, false, 2.4f, 100, 0.8f, fs, fz);
  CHECK(fs == 2.0f / 15.0f);
  CHECK(fz == 8.0f);
}

TEST_CASE("ref: find_params MSE search vs independent brute force (docs/theory.md §7)", "[reference]") {
  for (bool sym : {false, true}) {
    for (int bits : {3, 4}) {
      CAPTURE(sym, bits);
      // an outlier row: 255 values ~ N(0, 0.1^2) and one at 0.6 (6 sigma). The search trades clipping the
      // outlier for resolution on the bulk (with norm 2.4 a single far outlier, e.g. 2.0 among 63, makes
      // p = 1 win instead -- checked while writing this test).
      std::mt19937 g(19);
      std::normal_distribution<double> nd(0.0, 0.1);
      Eigen::VectorXd x(256);
      for (Index i = 0; i < 255; ++i) x(i) = nd(g);
      x(255) = 0.6;
      double s0, z0, s1, z1;
      ref::find_params<double>(x, bits, sym, false, 2.4, 100, 0.8, s0, z0);
      ref::find_params<double>(x, bits, sym, true, 2.4, 100, 0.8, s1, z1);

      // Brute force written independently: list all 80 candidates, take the FIRST minimal error.
      const int maxq = (1 << bits) - 1;
      double lo = std::min(0.0, x.minCoeff()), hi = std::max(0.0, x.maxCoeff());
      if (sym) {
        hi = std::max(hi, -lo);
        lo = lo < 0 ? -hi : lo;
      }
      std::vector<double> errs, scales, zeros;
      for (int i = 0; i < 80; ++i) {
        const double shrink = 1.0 - i / 100.0;
        const double s = (shrink * hi - shrink * lo) / maxq;
        const double z = sym ? (maxq + 1) / 2 : std::nearbyint(-(shrink * lo) / s);
        double err = 0;
        for (Index k = 0; k < x.size(); ++k) {
          double code = std::nearbyint(x(k) / s) + z;
          code = code < 0 ? 0 : (code > maxq ? maxq : code);
          err += std::pow(std::abs(s * (code - z) - x(k)), 2.4);
        }
        errs.push_back(err);
        scales.push_back(s);
        zeros.push_back(z);
      }
      const size_t best = static_cast<size_t>(std::min_element(errs.begin(), errs.end()) - errs.begin());
      INFO("best candidate index " << best);
      CHECK(best > 0);  // the search really shrinks the range on an outlier row
      CHECK(s1 == Approx(scales[best]).epsilon(1e-15));
      CHECK(z1 == zeros[best]);
      CHECK(s1 < s0);
      if (sym) CHECK(z1 == (maxq + 1) / 2);
    }
  }
  // MSE on a row without an outlier where p = 1 may win: at least it never does worse than the plain grid.
  Eigen::VectorXd y(4);
  y << -1.0, -1.0 / 3, 1.0 / 3, 1.0;
  double s, z;
  ref::find_params<double>(y, 2, true, true, 2.4, 100, 0.8, s, z);
  double e_mse = 0, e_plain = 0;
  double sp, zp;
  ref::find_params<double>(y, 2, true, false, 2.4, 100, 0.8, sp, zp);
  for (Index k = 0; k < 4; ++k) {
    e_mse += std::pow(std::abs(ref::quantize(y(k), s, z, 3) - y(k)), 2.4);
    e_plain += std::pow(std::abs(ref::quantize(y(k), sp, zp, 3) - y(k)), 2.4);
  }
  CHECK(e_mse <= e_plain);
}
