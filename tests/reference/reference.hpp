// Reference implementations for pptq's tests (test-only code, never shipped).
//
// Each function is a plain, unblocked transcription of docs/theory.md ("the theory"), written for
// clarity, not speed (O(N^4) is fine). Everything is double precision except the GPTQ quantizer
// (find_params / quantize), which is templated so that float semantics can be reproduced.
//
// Conventions (fixed for the whole test suite):
//   * W is rows x N (out x in); one row is w in R^N.  X, Xt (= X-tilde) are m x N (samples x features).
//   * H = X^T X WITHOUT the ridge; lambda is absolute, on the scale of X^T X.
//   * perm[k] = ORIGINAL column index processed at step k ("sweep order").  Outputs Q are always returned
//     in the ORIGINAL column order; per-step diagnostics (errors e, diag(L), traces) in sweep order.
//   * Rounding is a callback q(row, orig_col, value) so tests can plug in any grid, including stochastic
//     grids keyed by (row, ORIGINAL column).
//
// Nothing here handles GPTQ's dead-column convention (H[d,d] = 1, W[:,d] = 0, docs/theory.md §7 step 3): the
// references implement the mathematical algorithms of §2/§5/§8 only; lambda > 0 makes H + lambda I
// positive definite anyway.
#pragma once

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace ref {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

using RoundFn = std::function<double(Index row, Index orig_col, double value)>;

// ------------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------------

inline void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("ref: ") + what);
}

inline void check_perm(const std::vector<Index>& perm, Index N) {
  require(static_cast<Index>(perm.size()) == N, "perm has wrong length");
  std::vector<char> seen(static_cast<size_t>(N), 0);
  for (Index k : perm) {
    require(k >= 0 && k < N, "perm entry out of range");
    require(!seen[static_cast<size_t>(k)], "perm entry repeated");
    seen[static_cast<size_t>(k)] = 1;
  }
}

inline std::vector<Index> identity_perm(Index N) {
  std::vector<Index> p(static_cast<size_t>(N));
  for (Index k = 0; k < N; ++k) p[static_cast<size_t>(k)] = k;
  return p;
}

// Columns of A in sweep order: result.col(k) = A.col(perm[k]).
inline MatrixXd permute_cols(const MatrixXd& A, const std::vector<Index>& perm) {
  MatrixXd B(A.rows(), A.cols());
  for (Index k = 0; k < A.cols(); ++k) B.col(k) = A.col(perm[static_cast<size_t>(k)]);
  return B;
}

// Entries of a vector in sweep order: result(k) = v(perm[k]).
inline VectorXd permute_vec(const VectorXd& v, const std::vector<Index>& perm) {
  VectorXd r(v.size());
  for (Index k = 0; k < v.size(); ++k) r(k) = v(perm[static_cast<size_t>(k)]);
  return r;
}

// Symmetric permutation: result(k, l) = H(perm[k], perm[l]).
inline MatrixXd permute_sym(const MatrixXd& H, const std::vector<Index>& perm) {
  const Index N = H.rows();
  MatrixXd P(N, N);
  for (Index k = 0; k < N; ++k)
    for (Index l = 0; l < N; ++l) P(k, l) = H(perm[static_cast<size_t>(k)], perm[static_cast<size_t>(l)]);
  return P;
}

// Solve S x = b for a symmetric positive definite S (throws if S is not numerically PD).
inline MatrixXd spd_solve(const MatrixXd& S, const MatrixXd& B) {
  Eigen::LLT<MatrixXd> llt(S);
  if (llt.info() != Eigen::Success) throw std::runtime_error("ref: matrix not positive definite");
  return llt.solve(B);
}

// Explicit inverse of an SPD matrix, symmetrised.
inline MatrixXd spd_inverse(const MatrixXd& S) {
  MatrixXd Sinv = spd_solve(S, MatrixXd::Identity(S.rows(), S.cols()));
  return 0.5 * (Sinv + Sinv.transpose());
}

// Spec §1: L := lower Cholesky factor of (H_p + lambda I)^{-1}, H_p = H[perm][:,perm], formed through the
// EXPLICIT inverse (this is the definition; the library may compute it differently).
inline MatrixXd chol_L(const MatrixXd& H, double lambda, const std::vector<Index>& perm) {
  require(H.rows() == H.cols(), "H must be square");
  check_perm(perm, H.rows());
  const Index N = H.rows();
  MatrixXd Hp = permute_sym(H, perm) + lambda * MatrixXd::Identity(N, N);
  MatrixXd Hinv = spd_inverse(Hp);
  Eigen::LLT<MatrixXd> llt(Hinv);
  if (llt.info() != Eigen::Success) throw std::runtime_error("ref: H^{-1} not positive definite");
  return llt.matrixL();
}

// Convenience rounding functions (deterministic).
// Nearest point of delta*Z, ties to even (torch.round / std::nearbyint semantics, docs/theory.md §1).
inline RoundFn round_to_grid(double delta) {
  return [delta](Index, Index, double v) { return delta * std::nearbyint(v / delta); };
}

// ------------------------------------------------------------------------------------------------
// 1. OPTQ column loop (docs/theory.md §2)
// ------------------------------------------------------------------------------------------------
//   permute; Hp = H[perm][:,perm] + lambda I; L = chol_lower(Hp^{-1});
//   for each row, t = 1..N:  q_t = Q(w^(t-1)_t); e_t = w^(t-1)_t - q_t; w^(t) = w^(t-1) - (e_t/L_tt) L_{:,t}.
// Q is returned in ORIGINAL column order and holds exactly the values returned by q (w^(N)_t equals q_t only
// up to rounding in floating point, so the rounded value is recorded directly, as GPTQ does).
// e_out: rows x N errors in sweep order.  Ltt_out: diag(L) in sweep order.
inline MatrixXd optq(const MatrixXd& W, const MatrixXd& H, double lambda, const std::vector<Index>& perm,
                     const RoundFn& q, MatrixXd* e_out = nullptr, VectorXd* Ltt_out = nullptr) {
  const Index R = W.rows(), N = W.cols();
  require(H.rows() == N && H.cols() == N, "H must be N x N");
  check_perm(perm, N);
  const MatrixXd L = chol_L(H, lambda, perm);

  MatrixXd Q(R, N);
  MatrixXd E(R, N);
  for (Index r = 0; r < R; ++r) {
    VectorXd w = permute_vec(W.row(r).transpose(), perm);  // w^(0) in sweep order
    for (Index t = 0; t < N; ++t) {
      const Index j = perm[static_cast<size_t>(t)];
      const double v = w(t);                 // w^(t-1)_t
      const double qt = q(r, j, v);          // q_t
      const double et = v - qt;              // e_t
      w -= (et / L(t, t)) * L.col(t);        // L_{:,t} is zero above row t
      w(t) = qt;
      Q(r, j) = qt;
      E(r, t) = et;
    }
  }
  if (e_out) *e_out = E;
  if (Ltt_out) *Ltt_out = L.diagonal();
  return Q;
}

// ------------------------------------------------------------------------------------------------
// 2. OPTQ via the OBS form (docs/theory.md §2, "Equivalent forms"): with F_t = {t..N} (sweep order),
//   w^(t)_{>t} = w^(t-1)_{>t} - e_t [H_{F_t}^{-1}]_{>t,t} / [H_{F_t}^{-1}]_{tt},  H_F = (Hp)_{F,F} (incl. lambda),
// the inverse of the remaining block recomputed from scratch at every step. Ltt_out(t) = sqrt([H_{F_t}^{-1}]_{tt}).
// ------------------------------------------------------------------------------------------------
inline MatrixXd optq_obs(const MatrixXd& W, const MatrixXd& H, double lambda, const std::vector<Index>& perm,
                         const RoundFn& q, MatrixXd* e_out = nullptr, VectorXd* Ltt_out = nullptr) {
  const Index R = W.rows(), N = W.cols();
  require(H.rows() == N && H.cols() == N, "H must be N x N");
  check_perm(perm, N);
  const MatrixXd Hp = permute_sym(H, perm) + lambda * MatrixXd::Identity(N, N);

  std::vector<MatrixXd> Finv(static_cast<size_t>(N));  // Finv[t] = (H_{F_t})^{-1}, (N-t) x (N-t)
  for (Index t = 0; t < N; ++t) Finv[static_cast<size_t>(t)] = spd_inverse(Hp.bottomRightCorner(N - t, N - t));

  MatrixXd Q(R, N), E(R, N);
  for (Index r = 0; r < R; ++r) {
    VectorXd w = permute_vec(W.row(r).transpose(), perm);
    for (Index t = 0; t < N; ++t) {
      const Index j = perm[static_cast<size_t>(t)];
      const MatrixXd& Fi = Finv[static_cast<size_t>(t)];
      const double qt = q(r, j, w(t));
      const double et = w(t) - qt;
      const Index rest = N - t - 1;
      if (rest > 0) w.tail(rest) -= et * Fi.col(0).tail(rest) / Fi(0, 0);
      w(t) = qt;
      Q(r, j) = qt;
      E(r, t) = et;
    }
  }
  if (e_out) *e_out = E;
  if (Ltt_out) {
    Ltt_out->resize(N);
    for (Index t = 0; t < N; ++t) (*Ltt_out)(t) = std::sqrt(Finv[static_cast<size_t>(t)](0, 0));
  }
  return Q;
}

// ------------------------------------------------------------------------------------------------
// 3. Round-to-nearest: every entry rounded independently (no error feedback).
// ------------------------------------------------------------------------------------------------
inline MatrixXd rtn(const MatrixXd& W, const RoundFn& q) {
  MatrixXd Q(W.rows(), W.cols());
  for (Index r = 0; r < W.rows(); ++r)
    for (Index j = 0; j < W.cols(); ++j) Q(r, j) = q(r, j, W(r, j));
  return Q;
}

// ------------------------------------------------------------------------------------------------
// Ridge least squares toward w (docs/theory.md §5.4/§5.5), per row:
//   w~ = argmin_v ||X w - X~ v||^2 + lambda ||v - w||^2 = (X~^T X~ + lambda I)^{-1} (X~^T X w + lambda w).
// Returned rows x N in ORIGINAL column order (the order does not matter for w~).
// ------------------------------------------------------------------------------------------------
inline MatrixXd ridge_ls(const MatrixXd& W, const MatrixXd& X, const MatrixXd& Xt, double lambda) {
  const Index N = W.cols();
  require(X.cols() == N && Xt.cols() == N && X.rows() == Xt.rows(), "X, Xt must be m x N");
  const MatrixXd A = Xt.transpose() * Xt + lambda * MatrixXd::Identity(N, N);
  const MatrixXd B = Xt.transpose() * X * W.transpose() + lambda * W.transpose();  // N x rows
  return spd_solve(A, B).transpose();
}

// ------------------------------------------------------------------------------------------------
// 4. Qronos "by definition" (docs/theory.md §5.2), all in sweep order given by perm.
//   y = X w; w^(0) = w.
//   t = 1:  q_1 = Q(c_1),  c_1 = <X~_1, y - X~_{>1} w_{>1}> / ||X~_1||^2   (no ridge).
//           If ||X~_1|| = 0 the quotient is undefined; we then use c_1 = w_1 (RESOLUTION OF AN AMBIGUITY:
//           any value gives the same residual since X~_1 = 0; w_1 keeps the weight unchanged up to rounding).
//   t >= 2: q_t = Q(p_t),  p_t = argmin_p ||r_t - X~_t p||^2 + lambda (p - w_t)^2, with
//           r_t = y - X~_{<t} q_{<t} - X~_{>t} w^(t-1)_{>t} and w_t the ORIGINAL weight, i.e.
//           p_t = (<X~_t, r_t> + lambda w_t) / (||X~_t||^2 + lambda)   (solved explicitly; the Lemma-5.1-like
//           shortcut p_t = w^(t-1)_t is deliberately NOT used -- the self-check verifies it instead).
//           If ||X~_t||^2 + lambda == 0 (only possible with lambda = 0), p_t = w^(t-1)_t.
//   diffusion, every t < N:
//           w^(t)_{>t} = argmin_v ||y - X~_{<=t} q_{<=t} - X~_{>t} v||^2 + lambda ||v - w_{>t}||^2  (ridge toward
//           the ORIGINAL w), solved through its normal equations
//           (X~_{>t}^T X~_{>t} + lambda I) v = X~_{>t}^T (y - X~_{<=t} q_{<=t}) + lambda w_{>t}.
// Optional trace (rows x N, sweep order): arg(r,t) = value passed to Q at step t (c_1, then p_t);
// wprev(r,t) = w^(t-1)_t (wprev(r,0) = w_1).
// ------------------------------------------------------------------------------------------------
struct QronosTrace {
  MatrixXd arg;
  MatrixXd wprev;
};

inline MatrixXd qronos_sequential(const MatrixXd& W, const MatrixXd& X, const MatrixXd& Xt, double lambda,
                                  const std::vector<Index>& perm, const RoundFn& q,
                                  QronosTrace* trace = nullptr) {
  const Index R = W.rows(), N = W.cols(), m = X.rows();
  require(X.cols() == N && Xt.cols() == N && Xt.rows() == m, "X, Xt must be m x N");
  require(lambda >= 0, "lambda must be >= 0");
  check_perm(perm, N);
  const MatrixXd Xp = permute_cols(X, perm);
  const MatrixXd Xtp = permute_cols(Xt, perm);

  MatrixXd Q(R, N);
  if (trace) {
    trace->arg.resize(R, N);
    trace->wprev.resize(R, N);
  }
  for (Index r = 0; r < R; ++r) {
    const VectorXd w0 = permute_vec(W.row(r).transpose(), perm);  // original w, sweep order
    const VectorXd y = Xp * w0;                                    // = X w
    VectorXd w = w0;                                               // current iterate w^(t-1)
    VectorXd qv = VectorXd::Zero(N);                               // q_{<t}, sweep order
    for (Index t = 0; t < N; ++t) {
      const auto xt = Xtp.col(t);
      const Index rest = N - t - 1;
      double arg;
      if (t == 0) {
        const double nrm2 = xt.squaredNorm();
        if (nrm2 > 0) {
          const VectorXd res = y - Xtp.rightCols(rest) * w0.tail(rest);
          arg = xt.dot(res) / nrm2;
        } else {
          arg = w0(0);  // documented choice for a dead first column
        }
      } else {
        // r_t = y - X~_{<t} q_{<t} - X~_{>t} w^(t-1)_{>t}
        const VectorXd rt = y - Xtp.leftCols(t) * qv.head(t) - Xtp.rightCols(rest) * w.tail(rest);
        const double den = xt.squaredNorm() + lambda;
        arg = den > 0 ? (xt.dot(rt) + lambda * w0(t)) / den : w(t);
      }
      if (trace) {
        trace->arg(r, t) = arg;
        trace->wprev(r, t) = w(t);
      }
      const double qt = q(r, perm[static_cast<size_t>(t)], arg);
      qv(t) = qt;
      w(t) = qt;
      Q(r, perm[static_cast<size_t>(t)]) = qt;
      if (rest > 0) {
        // diffusion: ridge LS of the remaining weights toward the ORIGINAL w_{>t}
        const MatrixXd B = Xtp.rightCols(rest);
        const VectorXd target = y - Xtp.leftCols(t + 1) * qv.head(t + 1);
        const MatrixXd A = B.transpose() * B + lambda * MatrixXd::Identity(rest, rest);
        const VectorXd rhs = B.transpose() * target + lambda * w0.tail(rest);
        w.tail(rest) = spd_solve(A, rhs);
      }
    }
  }
  return Q;
}

// ------------------------------------------------------------------------------------------------
// 5. Qronos "Remark 5.2" form (docs/theory.md §5.4): w~ = ridge_ls(w) per row, then OPTQ on H~ = X~^T X~ with the same
// lambda and order, started from w~. Wtilde_out: rows x N, original order. e_out / Ltt_out as in optq
// (these are the e~_t, L~_tt of §5.5).
// ------------------------------------------------------------------------------------------------
inline MatrixXd qronos_ls_then_optq(const MatrixXd& W, const MatrixXd& X, const MatrixXd& Xt, double lambda,
                                    const std::vector<Index>& perm, const RoundFn& q,
                                    MatrixXd* Wtilde_out = nullptr, MatrixXd* e_out = nullptr,
                                    VectorXd* Ltt_out = nullptr) {
  const MatrixXd Wt = ridge_ls(W, X, Xt, lambda);
  if (Wtilde_out) *Wtilde_out = Wt;
  return optq(Wt, Xt.transpose() * Xt, lambda, perm, q, e_out, Ltt_out);
}

// ------------------------------------------------------------------------------------------------
// 6. GPFQ (docs/theory.md §8), mismatched form, in the given order:
//   u_0 = 0;  q_t = Q(<X~_t, u_{t-1} + w_t X_t> / ||X~_t||^2);  u_t = u_{t-1} + w_t X_t - q_t X~_t.
// If X~_t = 0 the theory says "0": we call q with value 0 (so the grid decides, e.g. a stochastic grid or
// an affine grid whose nearest point to 0 is not 0). U_out: m x rows, column r = u_N of row r (= X w - X~ q).
// ------------------------------------------------------------------------------------------------
inline MatrixXd gpfq(const MatrixXd& W, const MatrixXd& X, const MatrixXd& Xt, const std::vector<Index>& perm,
                     const RoundFn& q, MatrixXd* U_out = nullptr) {
  const Index R = W.rows(), N = W.cols(), m = X.rows();
  require(X.cols() == N && Xt.cols() == N && Xt.rows() == m, "X, Xt must be m x N");
  check_perm(perm, N);
  MatrixXd Q(R, N);
  MatrixXd U(m, R);
  for (Index r = 0; r < R; ++r) {
    VectorXd u = VectorXd::Zero(m);
    for (Index t = 0; t < N; ++t) {
      const Index j = perm[static_cast<size_t>(t)];
      const double wt = W(r, j);
      const double nrm2 = Xt.col(j).squaredNorm();
      const double arg = nrm2 > 0 ? Xt.col(j).dot(u + wt * X.col(j)) / nrm2 : 0.0;
      const double qt = q(r, j, arg);
      u += wt * X.col(j) - qt * Xt.col(j);
      Q(r, j) = qt;
    }
    U.col(r) = u;
  }
  if (U_out) *U_out = U;
  return Q;
}

// ------------------------------------------------------------------------------------------------
// 7. Bound constants by their definitions (docs/theory.md §3.1(v), §3.2, §3.4, §4.2, §5.5), in sweep order.
// ------------------------------------------------------------------------------------------------

// §3.1(v), Schur-complement form:
//   1/L_tt^2 = ||X_t||^2 + lambda - X_t^T X_{>t} (X_{>t}^T X_{>t} + lambda I)^{-1} X_{>t}^T X_t.
inline VectorXd inv_Ltt_sq_schur(const MatrixXd& X, double lambda, const std::vector<Index>& perm) {
  const Index N = X.cols();
  check_perm(perm, N);
  const MatrixXd Xp = permute_cols(X, perm);
  VectorXd out(N);
  for (Index t = 0; t < N; ++t) {
    const VectorXd xt = Xp.col(t);
    const Index rest = N - t - 1;
    double v = xt.squaredNorm() + lambda;
    if (rest > 0) {
      const MatrixXd B = Xp.rightCols(rest);
      const VectorXd b = B.transpose() * xt;
      const VectorXd sol = spd_solve(B.transpose() * B + lambda * MatrixXd::Identity(rest, rest), b);
      v -= b.dot(sol);
    }
    out(t) = v;
  }
  return out;
}

// §3.1(v), push-through form: 1/L_tt^2 = lambda + lambda X_t^T (X_{>t} X_{>t}^T + lambda I_m)^{-1} X_t (lambda > 0).
inline VectorXd inv_Ltt_sq_pushthrough(const MatrixXd& X, double lambda, const std::vector<Index>& perm) {
  require(lambda > 0, "push-through form needs lambda > 0");
  const Index N = X.cols(), m = X.rows();
  check_perm(perm, N);
  const MatrixXd Xp = permute_cols(X, perm);
  VectorXd out(N);
  for (Index t = 0; t < N; ++t) {
    const VectorXd xt = Xp.col(t);
    const MatrixXd B = Xp.rightCols(N - t - 1);  // may have 0 columns: then B B^T = 0
    const MatrixXd S = B * B.transpose() + lambda * MatrixXd::Identity(m, m);
    const VectorXd sol = spd_solve(S, xt);
    out(t) = lambda + lambda * xt.dot(sol);
  }
  return out;
}

// §3.2: C2(X,lambda)^2 = sum_t 1/L_tt^2 (Schur form, no Cholesky needed).
inline double C2_sq(const MatrixXd& X, double lambda, const std::vector<Index>& perm) {
  return inv_Ltt_sq_schur(X, lambda, perm).sum();
}

// §3.4: Cw(X,lambda) = max_t ( sum_{s<t} L_ts^2 / L_ss^2 )^{1/2}  (empty sum = 0 for t = 1).
inline double Cw(const MatrixXd& X, double lambda, const std::vector<Index>& perm) {
  const MatrixXd L = chol_L(X.transpose() * X, lambda, perm);
  double best = 0;
  for (Index t = 0; t < L.rows(); ++t) {
    double s = 0;
    for (Index k = 0; k < t; ++k) s += (L(t, k) / L(k, k)) * (L(t, k) / L(k, k));
    best = std::max(best, std::sqrt(s));
  }
  return best;
}

// §4.2: Cinf(X,lambda) = max_i || (X_p L D^{-1})_{i,:} ||_2, X_p = X[:,perm], D = diag(L).
inline double Cinf(const MatrixXd& X, double lambda, const std::vector<Index>& perm) {
  const MatrixXd L = chol_L(X.transpose() * X, lambda, perm);
  const MatrixXd Xp = permute_cols(X, perm);
  MatrixXd A = Xp * L;  // m x N
  for (Index t = 0; t < A.cols(); ++t) A.col(t) /= L(t, t);
  double best = 0;
  for (Index i = 0; i < A.rows(); ++i) best = std::max(best, A.row(i).norm());
  return best;
}

// §5.5: R_lambda^2 = min_v ||X w - X~ v||^2 + lambda ||v - w||^2, evaluated at the minimiser w~.
inline double R_lambda_sq(const VectorXd& w, const MatrixXd& X, const MatrixXd& Xt, double lambda) {
  const MatrixXd wt = ridge_ls(w.transpose(), X, Xt, lambda);  // 1 x N
  const VectorXd v = wt.row(0).transpose();
  return (X * w - Xt * v).squaredNorm() + lambda * (v - w).squaredNorm();
}

// ------------------------------------------------------------------------------------------------
// 8. GPTQ affine grid (docs/theory.md §7 "Quantizer", IST-DASLab/gptq quant.py semantics), ONE row of values.
// ------------------------------------------------------------------------------------------------
// quantize(x) = scale * (clamp(round(x / scale) + zero, 0, maxq) - zero), round = half to even (nearbyint),
// a true division by scale (not a multiplication by its reciprocal), everything in T.
template <typename T>
T quantize(T x, T scale, T zero, int maxq) {
  T qv = static_cast<T>(std::nearbyint(x / scale)) + zero;
  qv = std::min(std::max(qv, T(0)), static_cast<T>(maxq));
  return scale * (qv - zero);
}

// find_params for one row x (perchannel = True, trits = False):
//   maxq = 2^bits - 1; xmin = min(min x, 0); xmax = max(max x, 0);
//   sym: xmax = max(|xmin|, xmax); if xmin < 0: xmin = -xmax   (an all-positive row keeps xmin = 0!)
//   xmin == xmax == 0  ->  xmin = -1, xmax = +1
//   scale = (xmax - xmin) / maxq; zero = (maxq + 1) / 2 if sym else round(-xmin / scale)
//   mse: for i = 0 .. int(maxshrink * grid) - 1: p = T(1 - i/grid) (double arithmetic, then cast, as a
//        Python float multiplied into a float tensor), xmin1 = p xmin, xmax1 = p xmax,
//        scale1 = (xmax1 - xmin1)/maxq, zero1 = round(-xmin1/scale1) or the sym zero,
//        err = sum_j |quantize(x_j; scale1, zero1) - x_j|^norm, keep (scale1, zero1) if err < best (strict).
// Notes: int(maxshrink*grid) is evaluated in double (Python float semantics). The err sum is accumulated
// sequentially in T; torch's reduction order differs, so near-equal errors may in principle pick a different
// candidate than torch in float (never in double on the test cases).
template <typename T>
void find_params(const Eigen::Matrix<T, -1, 1>& x, int bits, bool sym, bool mse, T norm, int grid, T maxshrink,
                 T& scale, T& zero) {
  require(bits >= 1 && bits <= 30, "bits out of range");
  require(x.size() > 0, "empty row");
  const int maxq = (1 << bits) - 1;
  T xmin = std::min(x.minCoeff(), T(0));
  T xmax = std::max(x.maxCoeff(), T(0));
  if (sym) {
    xmax = std::max(std::abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0 && xmax == 0) {
    xmin = T(-1);
    xmax = T(1);
  }
  const T symzero = static_cast<T>((maxq + 1) / 2.0);
  scale = (xmax - xmin) / static_cast<T>(maxq);
  zero = sym ? symzero : static_cast<T>(std::nearbyint(-xmin / scale));

  if (mse) {
    T best = std::numeric_limits<T>::infinity();
    const int steps = static_cast<int>(static_cast<double>(maxshrink) * grid);
    for (int i = 0; i < steps; ++i) {
      const T p = static_cast<T>(1.0 - static_cast<double>(i) / grid);
      const T xmin1 = p * xmin;
      const T xmax1 = p * xmax;
      const T scale1 = (xmax1 - xmin1) / static_cast<T>(maxq);
      const T zero1 = sym ? symzero : static_cast<T>(std::nearbyint(-xmin1 / scale1));
      T err = 0;
      for (Index j = 0; j < x.size(); ++j)
        err += std::pow(std::abs(quantize<T>(x(j), scale1, zero1, maxq) - x(j)), norm);
      if (err < best) {
        best = err;
        scale = scale1;
        zero = zero1;
      }
    }
  }
}

// RoundFn for a per-row affine grid (scales/zeros indexed by row; column ignored).
inline RoundFn affine_grid(const VectorXd& scales, const VectorXd& zeros, int maxq) {
  return [scales, zeros, maxq](Index r, Index, double v) { return quantize<double>(v, scales(r), zeros(r), maxq); };
}

}  // namespace ref
