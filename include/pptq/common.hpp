// pptq — provable post-training quantization. Types shared by every header.
//
// Conventions (docs/theory.md §1): W is rows × cols = out_features × in_features; one row of W is the
// paper's w ∈ R^N; X is samples × cols; the Gram/Hessian is cols × cols. λ is always on the scale of
// the matrix H given (H = XᵀX with X as given, or any positive multiple of it together with λ scaled
// the same way: docs/theory.md §1, scale invariance).
#pragma once

#include "error.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pptq {

using Index = Eigen::Index;

template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
using MatrixXi32 = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic>;
using VectorXi32 = Eigen::Matrix<std::int32_t, Eigen::Dynamic, 1>;

/// Outcome of a quantization call, in the spirit of Eigen's ComputationInfo. Misuse (bad shapes,
/// NaN, bad options) throws pptq::UsageError instead (error.hpp): the caller cannot act on it at run time.
enum class Status {
  Success = 0,           ///< done with the requested damping
  DampingEscalated = 1,  ///< done, but H + λI was not positive definite at the requested λ: λ was raised (see lambda_tried)
  NumericalIssue = 2,    ///< failed: no λ up to the cap gave a positive definite matrix; the result holds no weights
};

inline const char* to_string(Status s) {
  switch (s) {
    case Status::Success: return "success";
    case Status::DampingEscalated: return "damping escalated";
    case Status::NumericalIssue: return "numerical issue";
  }
  return "unknown";
}

/// How one value is rounded to its lattice (docs/theory.md §1).
enum class Rounding {
  Nearest,     ///< nearest lattice point, ties to even (std::nearbyint, as torch.round in the reference)
  Stochastic,  ///< unbiased: the upper neighbour with probability equal to the fractional position (docs/theory.md §1, §4.1)
};

namespace detail {

template <typename T>
std::string str(const T& v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

/// The thread count of a pptq call: `requested`, or all OpenMP threads for 0 (1 without OpenMP).
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : std::max(1, omp_get_max_threads());
#else
  (void)requested;
  return 1;
#endif
}

/// Misuse of a call: a UsageError with pptq's message prefix.
[[noreturn]] inline void fail(const std::string& what) { throw UsageError("pptq: " + what); }

/// Throws naming the matrix and the first non-finite entry: a NaN must never flow silently into a result.
/// m may be a block of a larger matrix starting at (row0, col0): the entry is named in its coordinates.
/// threads: as everywhere in pptq (0 = all OpenMP threads); a large m is scanned by fixed column chunks
/// on them. The outcome and the message do not depend on it.
template <typename Derived>
void require_finite(const Eigen::MatrixBase<Derived>& m, const char* name, Index row0 = 0, Index col0 = 0,
                    int threads = 0) {
  bool finite = true;
  const Index chunk = std::max<Index>(1, (Index(1) << 18) / std::max<Index>(1, m.rows()));  // ~2^18 entries
  const int t = static_cast<int>(std::min<Index>(resolve_threads(threads), (m.cols() + chunk - 1) / chunk));
  if (t > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(t) schedule(dynamic, 1) reduction(&& : finite)
#endif
    for (Index c = 0; c < m.cols(); c += chunk) finite = m.middleCols(c, std::min(chunk, m.cols() - c)).allFinite() && finite;
  } else {
    finite = m.allFinite();
  }
  if (finite) return;  // vectorized; the loop below only locates the entry to name
  for (Index j = 0; j < m.cols(); ++j)
    for (Index i = 0; i < m.rows(); ++i) {
      const auto v = m(i, j);
      if (!std::isfinite(static_cast<double>(v)))
        fail(std::string(name) + " has a non-finite entry " + str(static_cast<double>(v)) + " at (" + str(row0 + i) +
             ", " + str(col0 + j) + ")");
    }
}

template <typename Derived>
void require_nonempty(const Eigen::MatrixBase<Derived>& m, const char* name) {
  if (m.rows() == 0 || m.cols() == 0)
    fail(std::string(name) + " is empty (" + str(m.rows()) + " x " + str(m.cols()) + ")");
}

/// H must be square, match W's columns, be finite and symmetric (to a relative tolerance: accumulated
/// Grams are symmetric up to rounding only when each half was computed separately). With lower_only, H
/// is an accumulator's lower triangle (symmetric by construction; the strict upper part is not read).
/// threads: as everywhere in pptq (0 = all OpenMP threads); the outcome and the message do not depend on it.
template <typename Derived>
void require_gram(const Eigen::MatrixBase<Derived>& H, Index cols, const char* name, bool lower_only = false,
                  int threads = 0) {
  require_nonempty(H, name);
  if (H.rows() != H.cols())
    fail(std::string(name) + " must be square, got " + str(H.rows()) + " x " + str(H.cols()));
  if (H.rows() != cols)
    fail(std::string(name) + " is " + str(H.rows()) + " x " + str(H.cols()) + " but W has " + str(cols) +
         " columns (H must be cols x cols)");
  const Index n = H.rows();
  if (lower_only)
    for (Index j = 0; j < n; ++j) require_finite(H.col(j).tail(n - j), name, j, j);
  double scale = 0;  // a NaN on the diagonal is skipped here and named by the finite check
  for (Index i = 0; i < n; ++i) scale = std::max(scale, std::abs(static_cast<double>(H(i, i))));
  const double tol = 1e-5 * (scale > 0 ? scale : 1.0);
  int bad = 0;  // bit 0: a non-finite entry, bit 1: an asymmetry above tol
  if (!lower_only) {
    // One pass over H by pairs of 64 × 64 tiles, on all threads: a tile below the diagonal against the
    // transpose of its mirror, copied into a small buffer so that both are read contiguously. The
    // difference of the two says everything: its largest magnitude is the asymmetry, and it is not
    // finite exactly where an entry is not (or where two huge entries of opposite signs overflow).
    // Only when the pass fails does the serial code below find the entry to name, so the message does
    // not depend on the thread count. These plain loops vectorize: the check costs about the time of
    // reading H twice (docs/performance.md).
    constexpr Index tile = 64;
    const Index tiles = (n + tile - 1) / tile;
    const int t = resolve_threads(threads);
    const auto& Hd = H.derived();
#ifdef _OPENMP
#pragma omp parallel for num_threads(t) schedule(dynamic, 1) reduction(| : bad) if (t > 1)
#endif
    for (Index c = 0; c < tiles; ++c) {
      std::vector<double> T(static_cast<std::size_t>(tile * tile));
      const Index j0 = c * tile, tj = std::min(tile, n - j0);
      for (Index i0 = j0; i0 < n; i0 += tile) {
        const Index ti = std::min(tile, n - i0);
        for (Index i = 0; i < ti; ++i)  // T(i, j) = H(j0 + j, i0 + i): reads down H's column i0 + i
          for (Index j = 0; j < tj; ++j) T[static_cast<std::size_t>(j * tile + i)] = static_cast<double>(Hd(j0 + j, i0 + i));
        double worst = 0, poison = 0;  // poison: 0, or NaN once a difference is not finite (Inf·0 = NaN)
        for (Index j = 0; j < tj; ++j) {
          const double* u = T.data() + j * tile;
          for (Index i = 0; i < ti; ++i) {
            const double e = static_cast<double>(Hd(i0 + i, j0 + j)) - u[i];
            const double a = std::abs(e);
            worst = a > worst ? a : worst;
            poison += e * 0.0;
          }
        }
        if (!(poison == 0)) bad |= 3;  // a non-finite entry, or an overflowing difference: both named below
        else if (worst > tol) bad |= 2;
      }
    }
    (void)t;
    if (bad & 1) require_finite(H, name);
  }
  for (Index j = 0; j < n; ++j)
    if (static_cast<double>(H(j, j)) < 0)
      fail(std::string(name) + " has a negative diagonal entry " + str(static_cast<double>(H(j, j))) + " at " +
           str(j) + ": it is not a Gram matrix");
  if (bad & 2)
    for (Index j = 0; j < n; ++j)
      for (Index i = j + 1; i < n; ++i)
        if (std::abs(static_cast<double>(H(i, j)) - static_cast<double>(H(j, i))) > tol)
          fail(std::string(name) + " is not symmetric: H(" + str(i) + ", " + str(j) + ") = " +
               str(static_cast<double>(H(i, j))) + " but H(" + str(j) + ", " + str(i) + ") = " +
               str(static_cast<double>(H(j, i))));
}

}  // namespace detail
}  // namespace pptq
