// The factor every sweep uses and the damping policy around it (relative, absolute, escalation when
// H + λI is not positive definite).
//
// GPTQ sweeps with the upper U with (H + λI)⁻¹ = UᵀU (`cholesky(cholesky_inverse(cholesky(H)),
// upper=True)`, docs/theory.md §2 and §7 step 6). pptq needs neither H⁻¹ nor U: it factors H + λI = VVᵀ with V
// UPPER triangular (the "reversed" Cholesky: with J the reversal permutation, J(H + λI)J = L_r L_rᵀ and
// V = J L_r J; pptq computes V directly, one Cholesky's N³/3 FLOPs), so (H + λI)⁻¹ = V⁻ᵀV⁻¹ and U = V⁻¹
// (performance.md). The sweep works with V itself (detail/sweep.hpp:
// the left-looking form), which saves the N³/3 of a triangular inverse and its rounding. The inverse
// is still here (invert_upper_inplace) for the bound module, which needs U's off-diagonal entries.
#pragma once

#include "../common.hpp"
#include "kernels.hpp"
#include "memory.hpp"
#include "parallel.hpp"

#include <Eigen/Cholesky>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace pptq::detail {

/// In-place inverse of an upper triangular matrix (the strictly lower part must be zero and stays so).
/// Recursive split inv([A B; 0 C]) = [A⁻¹, −A⁻¹BC⁻¹; 0, C⁻¹]; B is formed by two triangular solves
/// BEFORE A and C are inverted, so no temporary is needed. The solves run over fixed chunks of B
/// (columns for A⁻¹B, rows for ·C⁻¹) and A, C are inverted concurrently: all threads, same bits.
template <typename Scalar>
void invert_upper_inplace(Eigen::Ref<Matrix<Scalar>> T, int threads = 1) {
  const Index n = T.rows();
  if (n <= 64) {
    // Back substitution column by column, right to left: column j of T⁻¹ needs T's columns ≤ j only.
    Vector<Scalar> x(n);
    for (Index j = n - 1; j >= 0; --j) {
      x(j) = Scalar(1) / T(j, j);
      for (Index i = j - 1; i >= 0; --i) {
        Scalar s = 0;
        for (Index k = i + 1; k <= j; ++k) s += T(i, k) * x(k);
        x(i) = -s / T(i, i);
      }
      T.col(j).head(j + 1) = x.head(j + 1);
    }
    return;
  }
  const Index h = (n / 2) / 16 * 16;  // n > 64, so 32 <= h < n; multiples of 16 keep the blocks SIMD-aligned
  auto A = T.topLeftCorner(h, h);
  auto B = T.topRightCorner(h, n - h);
  auto C = T.bottomRightCorner(n - h, n - h);
  constexpr Index chunk = 256;
  for_fixed_chunks(n - h, chunk, threads, [&](Index c0, Index c1) {
    A.template triangularView<Eigen::Upper>().solveInPlace(B.middleCols(c0, c1 - c0));
  });
  for_fixed_chunks(h, chunk, threads, [&](Index r0, Index r1) {
    C.template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(B.middleRows(r0, r1 - r0));
  });
  B = -B;
  for_fixed_chunks(2, 1, threads, [&](Index part, Index) {
    if (part == 0)
      invert_upper_inplace<Scalar>(A, 1);
    else
      invert_upper_inplace<Scalar>(C, 1);
  });
}

/// Recursive upper-lower Cholesky A = V Vᵀ in place, V upper (the "reversed" Cholesky of the module
/// comment, computed directly: no reversal pass). The upper triangle is read and written; the strict
/// lower triangle is neither read nor written (a consumed H keeps its lower half for a retry). With
/// A = [A11 A12; A12ᵀ A22] and V = [V11 V12; 0 V22]: V22 = chol(A22); V12 = A12·V22⁻ᵀ;
/// A11 −= V12·V12ᵀ; V11 = chol(A11). The split makes the bulk of the work two large products (inner
/// dimension n/2 at the top) that run near the GEMM rate, through detail/kernels.hpp's fixed chunks:
/// the result is the same for any thread count. Returns false when A is not positive definite in this
/// precision (a non-positive or non-finite pivot).
template <typename Scalar>
bool cholesky_upper_lower_inplace(Eigen::Ref<Matrix<Scalar>> A, int threads) {
  const Index n = A.rows();
  if (n <= 192) {
    // Small blocks: Eigen's LLT on the reversed copy (J A J = L Lᵀ ⇒ A = (J L J)(J L J)ᵀ, J L J upper).
    Matrix<Scalar> R(n, n);
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i <= j; ++i) R(n - 1 - i, n - 1 - j) = A(i, j);
    Eigen::LLT<Eigen::Ref<Matrix<Scalar>>, Eigen::Lower> llt(R);
    if (llt.info() != Eigen::Success) return false;
    for (Index j = 0; j < n; ++j) {
      for (Index i = 0; i <= j; ++i) A(i, j) = R(n - 1 - i, n - 1 - j);
      if (!(A(j, j) > Scalar(0)) || !std::isfinite(A(j, j))) return false;
    }
    return true;
  }
  const Index h = (n / 2 + 63) / 64 * 64;  // n > 192, so 128 <= h < n; multiples of 64 keep blocks aligned
  const Index r = n - h;
  auto A12 = A.topRightCorner(h, r);
  if (!cholesky_upper_lower_inplace<Scalar>(A.bottomRightCorner(r, r), threads)) return false;
  trsm_right_upper_trans<Scalar>(A.bottomRightCorner(r, r), A12, threads);
  syrk_sub_upper<Scalar>(A.topLeftCorner(h, h), A12, threads);
  return cholesky_upper_lower_inplace<Scalar>(A.topLeftCorner(h, h), threads);
}

/// A → V in place, where A holds H + λI in its UPPER triangle (the strict lower triangle is neither read
/// nor written): V is upper with H + λI = VVᵀ. Returns false when the matrix is not positive definite in
/// this precision, or the factor is not finite (A's upper triangle is then garbage).
template <typename Scalar>
bool factor_upper_inplace(Eigen::Ref<Matrix<Scalar>> A, int threads) {
  if (!cholesky_upper_lower_inplace<Scalar>(A, threads)) return false;
  // A pivot can be finite while an off-diagonal entry overflowed: check the factor, on all threads.
  const Index n = A.rows();
  std::atomic<bool> ok{true};
  for_fixed_chunks(n, 256, threads, [&](Index j0, Index j1) {
    for (Index j = j0; j < j1; ++j)
      if (!A.col(j).head(j + 1).allFinite()) ok = false;
  });
  return ok;
}

/// One strict triangle of A ← the transpose of the other (A exactly symmetric afterwards): the upper
/// from the lower (to_upper), or the lower from the upper. By 64 × 64 tile pairs that stay in cache, on
/// all threads (pure copies: the same bits for any thread count).
template <typename Scalar>
void mirror_triangle(Eigen::Ref<Matrix<Scalar>> A, bool to_upper, int threads) {
  const Index n = A.rows();
  constexpr Index tile = 64;
  const Index tiles = (n + tile - 1) / tile;
  for_fixed_chunks(tiles, 1, threads, [&](Index t, Index) {
    const Index tc = tiles - 1 - t;  // the longest tile columns first
    const Index c0 = tc * tile, c1 = std::min(n, c0 + tile);
    for (Index r0 = 0; r0 <= c0; r0 += tile)
      for (Index c = c0; c < c1; ++c)
        for (Index r = r0; r < std::min(r0 + tile, c); ++r) {
          if (to_upper)
            A(r, c) = A(c, r);
          else
            A(c, r) = A(r, c);
        }
  });
}

/// Zeros the strict lower triangle of A, on all threads.
template <typename Scalar>
void clear_strict_lower(Eigen::Ref<Matrix<Scalar>> A, int threads) {
  const Index n = A.rows();
  for_fixed_chunks(n, 256, threads, [&](Index j0, Index j1) {
    for (Index j = j0; j < j1; ++j) A.col(j).tail(n - 1 - j).setZero();
  });
}

/// A ← A[perm][:, perm] in place, for A symmetric with both triangles complete: every column's entries
/// are permuted through a buffer (on all threads), then whole columns move along the permutation's cycles
/// (new column k = old column perm[k]). Pure data movement: the values are those a copying fill gives.
template <typename Scalar>
void permute_symmetric_inplace(Eigen::Ref<Matrix<Scalar>> A, const std::vector<Index>& perm, int threads) {
  const Index n = A.rows();
  bool identity = true;
  for (Index i = 0; i < n && identity; ++i) identity = perm[i] == i;
  if (identity) return;
  for_fixed_chunks(n, 256, threads, [&](Index j0, Index j1) {
    Vector<Scalar> tmp(n);
    for (Index j = j0; j < j1; ++j) {
      Scalar* c = A.col(j).data();
      for (Index i = 0; i < n; ++i) tmp[i] = c[perm[i]];
      std::copy(tmp.data(), tmp.data() + n, c);
    }
  });
  std::vector<bool> placed(static_cast<std::size_t>(n), false);
  Vector<Scalar> first(n);
  for (Index k0 = 0; k0 < n; ++k0) {
    if (placed[k0]) continue;
    placed[k0] = true;
    if (perm[k0] == k0) continue;
    first = A.col(k0);  // old column k0, overwritten first; the cycle's last column takes it
    Index k = k0;
    while (perm[k] != k0) {
      A.col(k) = A.col(perm[k]);
      k = perm[k];
      placed[k] = true;
    }
    A.col(k) = first;
  }
}

/// How λ is chosen and raised when H + λI is not positive definite (docs/theory.md §3.5, §7): the
/// reference GPTQ fails outright on such a layer; pptq raises λ and records every value tried.
struct Damping {
  double lambda = 0;             ///< the requested λ on the scale of H
  bool escalate = true;          ///< raise λ on failure instead of failing at once
  double factor = 10;            ///< each step multiplies λ by this
  double floor = 0;              ///< a λ of 0 escalates to this first (a tiny fraction of mean(diag H))
  double cap = 0;                ///< never go beyond this λ
};

/// Raw bytes of a factor. The same bytes hold V (in the factor's scalar) and then, converted in place,
/// the sweep's S (in W's scalar; detail/prepare.hpp), so that a float sweep after a double factor needs
/// no second N × N buffer: the peak stays at H + one N × N factor (within the memory goal W + Q + 2N²,
/// docs/performance.md).
class FactorStorage {
 public:
  /// Cache-line (64-byte) aligned: the blocked kernels run measurably slower on malloc's 16-byte
  /// alignment (docs/performance.md).
  static constexpr std::size_t alignment = 64;

  explicit FactorStorage(std::size_t bytes) : raw_(std::malloc(bytes + alignment)), bytes_(bytes) {
    if (!raw_) throw std::bad_alloc();
    p_ = align(raw_);
    advise_huge_pages(p_, bytes);  // before the first touch (detail/memory.hpp)
  }
  /// Adopts a matrix's storage (a consumed H becomes the factor, optq.hpp): the bytes stay the matrix's.
  template <typename Scalar>
  explicit FactorStorage(Matrix<Scalar>&& m)
      : raw_(nullptr), bytes_(sizeof(Scalar) * static_cast<std::size_t>(m.size())) {
    auto owner = std::make_shared<Matrix<Scalar>>(std::move(m));
    p_ = owner->data();
    owner_ = std::move(owner);
  }
  ~FactorStorage() { std::free(raw_); }
  FactorStorage(const FactorStorage&) = delete;
  FactorStorage& operator=(const FactorStorage&) = delete;
  void* data() const { return p_; }
  /// Gives back the bytes past `bytes` (the contents up to there are kept; the address may change). An
  /// adopted matrix keeps its allocation; on Linux its whole pages past `bytes` are handed back to the
  /// system (madvise), so the resident memory shrinks just the same.
  void shrink(std::size_t bytes) {
    if (!raw_) {
#if defined(__linux__)
      const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
      const auto base = reinterpret_cast<std::uintptr_t>(p_);
      const std::uintptr_t b = (base + bytes + page - 1) / page * page, e = (base + bytes_) / page * page;
      if (page > 0 && e > b && e - b >= (std::uintptr_t(1) << 20)) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
#endif
      return;
    }
    const std::size_t offset = static_cast<unsigned char*>(p_) - static_cast<unsigned char*>(raw_);
    void* q = std::realloc(raw_, bytes + alignment);
    if (!q) return;  // the old block stays valid
    raw_ = q;
    p_ = align(raw_);
    const std::size_t now = static_cast<unsigned char*>(p_) - static_cast<unsigned char*>(raw_);
    if (now != offset) std::memmove(p_, static_cast<unsigned char*>(raw_) + offset, bytes);
    bytes_ = bytes;
  }

 private:
  static void* align(void* raw) {
    const auto a = reinterpret_cast<std::uintptr_t>(raw);
    return reinterpret_cast<void*>((a + alignment - 1) / alignment * alignment);
  }
  void* raw_;
  void* p_;
  std::size_t bytes_;
  std::shared_ptr<void> owner_;  // an adopted matrix
};

template <typename Scalar>
using MatrixMap = Eigen::Map<Matrix<Scalar>>;

/// Points `m` at n × n scalars at `p` (a Map is re-seated by placement new, as Eigen documents).
template <typename Scalar>
void seat(MatrixMap<Scalar>& m, void* p, Index n) {
  new (&m) MatrixMap<Scalar>(static_cast<Scalar*>(p), n, n);
}

template <typename Scalar>
struct FactorResult {
  std::shared_ptr<FactorStorage> storage;
  MatrixMap<Scalar> V{nullptr, 0, 0};  ///< upper, H_π + λI = VVᵀ, sweep order (U = V⁻¹: (H_π + λI)⁻¹ = UᵀU)
  double lambda = 0;                 ///< the λ actually used
  std::vector<double> lambda_tried;  ///< every λ tried, in order (the last one is `lambda` on success)
  Status status = Status::Success;
  std::string message;
};

/// V ← the upper triangle of H_π = H[perm][:, perm], zeros below. A whole symmetric H is read column by
/// column (H(π[i], π[j]), i ≤ j: gathers within one column, which stays in cache). With lower_only, only
/// the LOWER triangle of H is read (an accumulator's lower half serves as is, without the N × N copy of
/// its symmetric matrix: gram.hpp), in two passes. Pass 1, by sweep columns: column c takes
/// H's column p = π[c] below its diagonal, H(a, p) for a ≥ p, and writes it to V(r, c) for every r with
/// π[r] ≥ p, in either triangle of V: contiguous reads and writes. Every pair r ≠ c then has exactly one
/// of V(r, c), V(c, r) written. Pass 2, by 64 × 64 tile pairs that stay in cache: the upper entry takes
/// the lower one where the lower one was written (π[r] < π[c]), and the lower triangle is cleared.
template <typename FScalar, typename DerivedH>
void fill_permuted_upper(MatrixMap<FScalar>& V, const Eigen::MatrixBase<DerivedH>& H, const std::vector<Index>& perm,
                         bool lower_only, int threads) {
  const Index n = V.rows();
  if (!lower_only) {
    for_fixed_chunks(n, 256, threads, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const Index pj = perm[j];
        FScalar* v = V.col(j).data();
        for (Index i = 0; i <= j; ++i) v[i] = static_cast<FScalar>(H(perm[i], pj));
        std::fill(v + j + 1, v + n, FScalar(0));
      }
    });
    return;
  }
  for_fixed_chunks(n, 64, threads, [&](Index c0, Index c1) {
    for (Index c = c0; c < c1; ++c) {
      const Index p = perm[c];
      FScalar* v = V.col(c).data();
      for (Index r = 0; r < n; ++r) {
        const Index a = perm[r];
        if (a >= p) v[r] = static_cast<FScalar>(H(a, p));
      }
    }
  });
  constexpr Index tile = 64;
  const Index tiles = (n + tile - 1) / tile;
  for_fixed_chunks(tiles, 1, threads, [&](Index t, Index) {
    const Index tc = tiles - 1 - t;  // the longest tile columns first
    const Index c0 = tc * tile, c1 = std::min(n, c0 + tile);
    for (Index r0 = 0; r0 <= c0; r0 += tile) {
      const Index r1 = std::min(n, r0 + tile);
      for (Index c = c0; c < c1; ++c)
        for (Index r = r0; r < std::min(r1, c); ++r)
          if (perm[r] < perm[c]) V(r, c) = V(c, r);
      for (Index r = r0; r < std::min(r1, c1); ++r)
        for (Index c = std::max(c0, r + 1); c < c1; ++c) V(c, r) = FScalar(0);
    }
  });
}

/// The damping loop of both factor paths: prepare(attempt, λ) puts H_π + λI into the upper triangle of
/// out.V (attempt 0 first), then V is factored; λ is escalated as `damping` says until the factor exists
/// or the cap is passed (NumericalIssue). done() runs once on success.
template <typename FScalar, typename Prepare, typename Done>
void factor_with_damping(FactorResult<FScalar>& out, const Damping& damping, int threads, Prepare&& prepare, Done&& done) {
  double lambda = damping.lambda;
  for (int attempt = 0;; ++attempt) {
    out.lambda_tried.push_back(lambda);
    // A λ that is not finite (a finite H whose diagonal mean overflows double) cannot be tried, and
    // escalating it would never pass the cap (itself not finite): stop at once, below.
    const bool finite = std::isfinite(lambda);
    if (finite) prepare(attempt, lambda);
    if (finite && factor_upper_inplace<FScalar>(out.V, threads)) {
      done();
      out.lambda = lambda;
      if (out.lambda_tried.size() > 1) {
        out.status = Status::DampingEscalated;
        out.message = "H + lambda*I was not positive definite at lambda = " + str(out.lambda_tried.front()) +
                      "; escalated to lambda = " + str(lambda) + " after " + str(out.lambda_tried.size() - 1) +
                      " step(s)";
      }
      return;
    }
    double next = lambda > 0 ? lambda * damping.factor : damping.floor;
    if (!(next > lambda)) next = damping.floor > 0 ? damping.floor : 1e-12;
    if (!finite || !std::isfinite(next) || !damping.escalate || next > damping.cap * (1 + 1e-12)) {
      out.storage.reset();
      seat<FScalar>(out.V, nullptr, 0);
      out.status = Status::NumericalIssue;
      std::string tried;
      for (std::size_t i = 0; i < out.lambda_tried.size(); ++i) tried += (i ? ", " : "") + str(out.lambda_tried[i]);
      if (!finite) {
        out.message = "lambda = " + str(lambda) +
                      " is not finite: H's entries are too large for double (the mean of its diagonal overflows); "
                      "scale H down (any positive multiple of X^T X gives the same result). Tried lambda = " + tried;
      } else {
        out.message = "H + lambda*I is not positive definite in this precision at lambda = " + str(lambda) +
                      (!damping.escalate        ? " (damping escalation is off)"
                       : !std::isfinite(next)   ? " (a larger lambda overflows)"
                                                : " (the escalation cap, " + str(damping.cap) + ", was reached)") +
                      "; tried lambda = " + tried + ". Raise damp/lambda, add calibration samples, or use a double-precision H.";
      }
      return;
    }
    lambda = next;
  }
}

/// H_π + λI on the diagonal of V: dead columns' entries set to 1 first (docs/theory.md §7 step 3), then λ added,
/// the same operations in both factor paths. diag(j) is H_π(j, j).
template <typename FScalar, typename DiagAt>
void set_damped_diagonal(MatrixMap<FScalar>& V, const std::vector<Index>& perm, const std::vector<bool>& dead, double lambda,
                         DiagAt&& diag) {
  for (Index j = 0; j < V.rows(); ++j) {
    V(j, j) = diag(j);
    if (!dead.empty() && dead[perm[j]]) V(j, j) = FScalar(1);
    V(j, j) += static_cast<FScalar>(lambda);
  }
}

/// Factor (H_π + λI) with H_π = H[perm][:, perm], diagonal entries of dead columns set to 1 first
/// (docs/theory.md §7 step 3); with lower_only, only H's lower triangle is read. Escalates λ as `damping` says;
/// fails with NumericalIssue past the cap. H is copied into the factor's own storage (N × N).
template <typename FScalar, typename DerivedH>
FactorResult<FScalar> factor_permuted(const Eigen::MatrixBase<DerivedH>& H, const std::vector<Index>& perm,
                                      const std::vector<bool>& dead, const Damping& damping, int threads = 0,
                                      bool lower_only = false) {
  const Index n = H.rows();
  // Before the scope below, which sets this thread's OpenMP count to 1. Small factors stay on one thread:
  // their chunks are too few to pay for the synchronization (the arithmetic is the same either way).
  threads = n < 1024 ? 1 : resolve_threads(threads);
  SerialEigenScope serial;  // Eigen's own threading off: pptq's fixed chunks give the same bits for any count
  FactorResult<FScalar> out;
  out.storage = std::make_shared<FactorStorage>(sizeof(FScalar) * static_cast<std::size_t>(n * n));
  seat(out.V, out.storage->data(), n);
  factor_with_damping(
      out, damping, threads,
      [&](int, double lambda) {
        fill_permuted_upper(out.V, H, perm, lower_only, threads);  // zeros below the diagonal
        set_damped_diagonal(out.V, perm, dead, lambda,
                            [&](Index j) { return static_cast<FScalar>(H(perm[j], perm[j])); });
      },
      [] {});
  return out;
}

/// The same factor with H CONSUMED: H's own storage becomes the factor, so no second N × N buffer exists
/// (peak memory W + Q + one N × N instead of two). H must be symmetric with both triangles complete, or,
/// with lower_only, hold its lower triangle (an accumulator's: the upper half is rebuilt from it first).
/// H is permuted in place and its lower triangle set to the transpose of its upper one: the copying path
/// reads H(π_i, π_j) for i ≤ j, and a computed XᵀX need not be symmetric to the last bit. The factor only
/// writes the upper triangle, so the lower one still holds H_π for a retry with a larger λ; it is cleared
/// on success. Same values, same factor code: the result is bit-identical to factor_permuted's.
template <typename FScalar>
FactorResult<FScalar> factor_permuted_consuming(Matrix<FScalar>&& H, const std::vector<Index>& perm,
                                                const std::vector<bool>& dead, const Damping& damping, int threads = 0,
                                                bool lower_only = false) {
  const Index n = H.rows();
  threads = n < 1024 ? 1 : resolve_threads(threads);
  SerialEigenScope serial;
  FactorResult<FScalar> out;
  out.storage = std::make_shared<FactorStorage>(std::move(H));
  seat(out.V, out.storage->data(), n);
  if (lower_only) mirror_triangle<FScalar>(out.V, true, threads);
  permute_symmetric_inplace<FScalar>(out.V, perm, threads);
  if (!lower_only) mirror_triangle<FScalar>(out.V, false, threads);
  const Vector<FScalar> d0 = out.V.diagonal();  // H_π's diagonal, before λ
  factor_with_damping(
      out, damping, threads,
      [&](int attempt, double lambda) {
        if (attempt > 0) mirror_triangle<FScalar>(out.V, true, threads);  // the failed attempt's upper half
        set_damped_diagonal(out.V, perm, dead, lambda, [&](Index j) { return d0(j); });
      },
      [&] { clear_strict_lower<FScalar>(out.V, threads); });
  return out;
}

}  // namespace pptq::detail
