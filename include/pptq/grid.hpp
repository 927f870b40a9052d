// Grids: what the user asks for (GridSpec) and what the sweep rounds to (Grid: one Lattice per row and
// group of columns).
//
// The sweep engine asks one question: "which lattice does original column j of row i round to?"
// Every grid pptq knows answers it with a Lattice
//     value(code) = scale · (code − zero) − min,     code ∈ [lo, hi] ⊂ Z,
// which covers the GPTQ affine grid (min = 0, integer zero: docs/theory.md §7), the paper's midtread alphabet
// {kδ : |k| ≤ K} (scale δ, zero 0, codes −K..K: docs/theory.md §1), the infinite alphabet δZ (no clamp), and the
// two-level block formats of llama.cpp (docs/formats.md §1: zero 0 and min = dmin·m_j, or zero 8 / 4).
#pragma once

#include "common.hpp"
#include "detail/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pptq {

/// Which alphabet a grid is made of.
enum class Alphabet {
  Affine,    ///< GPTQ's grid scale·({0..2^bits−1} − zero), fitted per row or group (docs/theory.md §7)
  Midtread,  ///< the paper's A_K = {kδ : |k| ≤ K}, K = 2^(bits−1) − 1, a δ per row or group (docs/theory.md §1)
  Infinite,  ///< the paper's δZ: no clipping at all (docs/theory.md §1, §3.2); δ as for Midtread
};

/// What the user asks for. Field names and defaults follow the GPTQ reference (docs/theory.md §7) where it has one.
struct GridSpec {
  int bits = 4;                 ///< 2..8
  bool symmetric = false;       ///< reference: asymmetric unless --sym
  Index group_size = -1;        ///< −1: one grid per row; otherwise columns per group (≥ 1)
  bool static_groups = false;   ///< groups fitted before the sweep on the original W in original column order
  bool mse = false;             ///< the reference's clip search (Quantizer(mse=True))
  double mse_norm = 2.4;        ///< its p-norm
  int mse_grid = 100;           ///< its grid
  double mse_maxshrink = 0.8;   ///< its maxshrink: tries p = 1 − i/grid for i < maxshrink·grid
  Alphabet alphabet = Alphabet::Affine;
  double delta = 0;             ///< Midtread/Infinite: δ for every row if > 0; if 0, δ = max|w|/K per row (or group)

  /// Number of codes of the affine grid minus one (the reference's maxq).
  int maxq() const { return (1 << bits) - 1; }
  /// Midtread half-width K: 2K + 1 ≤ 2^bits levels.
  int K() const { return (1 << (bits - 1)) - 1; }

  /// Throws std::invalid_argument naming the bad field and its value (LBFGSpp's check_param discipline).
  void check() const {
    if (bits < 2 || bits > 8) detail::fail("GridSpec.bits must be in 2..8, got " + detail::str(bits));
    if (group_size == 0 || group_size < -1)
      detail::fail("GridSpec.group_size must be -1 (one grid per row) or >= 1, got " + detail::str(group_size));
    if (mse) {
      if (!(mse_norm > 0) || !std::isfinite(mse_norm))
        detail::fail("GridSpec.mse_norm must be > 0, got " + detail::str(mse_norm));
      if (mse_grid < 1) detail::fail("GridSpec.mse_grid must be >= 1, got " + detail::str(mse_grid));
      if (!(mse_maxshrink > 0 && mse_maxshrink <= 1))
        detail::fail("GridSpec.mse_maxshrink must be in (0, 1], got " + detail::str(mse_maxshrink));
    }
    if (!(delta >= 0) || !std::isfinite(delta)) detail::fail("GridSpec.delta must be >= 0, got " + detail::str(delta));
    if (alphabet == Alphabet::Affine && delta != 0)
      detail::fail("GridSpec.delta applies to the Midtread and Infinite alphabets only, got " + detail::str(delta) +
                   " with the Affine alphabet");
  }
};

namespace detail {

/// The index of the level nearest z among levels[0..n) (strictly increasing, n ≥ 2), ties to the even
/// index. `clipped` is set when z lies more than half the outer gap beyond either end (the nearest point of
/// the lattice continued with its outer gaps would be outside), as for a uniform lattice.
template <typename L>
std::int32_t nearest_level(const L* levels, std::int32_t n, double z, bool& clipped) {
  const auto at = [&](std::int32_t k) { return static_cast<double>(levels[k]); };
  std::int32_t k = 0;  // the first level >= z (n if none)
  while (k < n && at(k) < z) ++k;
  clipped = false;
  if (k == 0) {
    clipped = z < at(0) - (at(1) - at(0)) / 2;
    return 0;
  }
  if (k == n) {
    clipped = z > at(n - 1) + (at(n - 1) - at(n - 2)) / 2;
    return n - 1;
  }
  const double below = z - at(k - 1), above = at(k) - z;
  if (below != above) return below < above ? k - 1 : k;
  return (k - 1) % 2 == 0 ? k - 1 : k;
}

}  // namespace detail

/// One lattice: value(code) = scale·(code − zero) − min, code ∈ [lo, hi]; or, for a NON-UNIFORM lattice
/// (llama.cpp's IQ4_NL/IQ4_XS, docs/formats.md §1b), value(code) = scale·levels[code − lo] − min with a
/// strictly increasing table of levels (zero unused). Rounding asks the same two questions of both: the
/// nearest code, and for stochastic rounding the two neighbours of v.
template <typename Scalar>
struct Lattice {
  Scalar scale = 1, zero = 0, min = 0;
  std::int32_t lo = 0, hi = 0;
  const Scalar* levels = nullptr;  ///< hi − lo + 1 levels, or nullptr for the uniform lattice

  Scalar value(std::int32_t code) const {
    if (levels) return scale * levels[code - lo] - min;
    return scale * (static_cast<Scalar>(code) - zero) - min;
  }

  /// The step δ between neighbours (what the bounds call δ). For a table, the largest gap times |scale|:
  /// every rounding error inside the range is at most what it is on the uniform lattice of that step
  /// (≤ δ/2 nearest, < δ stochastic), so the bounds hold with it, conservatively.
  Scalar step() const {
    if (!levels) return std::abs(scale);
    Scalar gap = 0;
    for (std::int32_t k = 1; k <= hi - lo; ++k) gap = std::max(gap, levels[k] - levels[k - 1]);
    return std::abs(scale) * gap;
  }

  /// Nearest code, ties to even. For min = 0 and an integer zero this is exactly the reference's
  /// clamp(round(x/scale) + zero, 0, maxq) in the same arithmetic (x/scale, not x·(1/scale)).
  /// `clipped` is set when the unclamped code lies outside [lo, hi].
  std::int32_t nearest(Scalar v, bool& clipped) const {
    if (levels) return lo + detail::nearest_level(levels, hi - lo + 1, scale == Scalar(0) ? 0.0 : position(v), clipped);
    if (scale == Scalar(0)) {  // every code has the same value (an all-zero ggml block): take the middle
      clipped = false;
      return clamp_code(static_cast<double>(zero), clipped);
    }
    const Scalar r = std::nearbyint((v + min) / scale);
    return clamp_code(static_cast<double>(r) + static_cast<double>(zero), clipped);
  }

  /// Unbiased stochastic rounding with uniform u ∈ [0, 1): the upper neighbour with probability
  /// p = z − ⌊z⌋ where z is v's position on the lattice, then clamped as a finite alphabet is (docs/theory.md §1).
  std::int32_t stochastic(Scalar v, double u, bool& clipped) const {
    if (levels) return stochastic_level(v, u, clipped);
    if (scale == Scalar(0)) {
      clipped = false;
      return clamp_code(static_cast<double>(zero), clipped);
    }
    const double z = static_cast<double>((v + min) / scale);
    const double f = std::floor(z);
    const double r = (u < z - f) ? f + 1 : f;
    // Clipping for the stochastic quantizer means a neighbour lies outside the alphabet (docs/theory.md §4.3).
    const double zc = z + static_cast<double>(zero);
    bool c1 = false;
    const std::int32_t code = clamp_code(r + static_cast<double>(zero), c1);
    clipped = c1 || zc < static_cast<double>(lo) || zc > static_cast<double>(hi);
    return code;
  }

 private:
  /// v's position in units of the levels.
  double position(Scalar v) const { return static_cast<double>((v + min) / scale); }

  /// stochastic() on a table: between levels L_k ≤ z < L_{k+1} the upper one with probability
  /// (z − L_k)/(L_{k+1} − L_k), so the expected level is z; outside the table its end (clipped).
  std::int32_t stochastic_level(Scalar v, double u, bool& clipped) const {
    const std::int32_t n = hi - lo + 1;
    const double z = scale == Scalar(0) ? 0.0 : position(v);
    clipped = z < static_cast<double>(levels[0]) || z > static_cast<double>(levels[n - 1]);
    if (!(z > static_cast<double>(levels[0]))) return lo;
    if (!(z < static_cast<double>(levels[n - 1]))) return hi;
    std::int32_t k = 0;
    while (static_cast<double>(levels[k + 1]) <= z) ++k;
    const double a = static_cast<double>(levels[k]), b = static_cast<double>(levels[k + 1]);
    return lo + (u < (z - a) / (b - a) ? k + 1 : k);
  }

  /// A NaN (an argument the caller's arithmetic overflowed) counts as clipped and becomes lo: never cast
  /// to an integer (the sweep refuses such a result, detail/sweep.hpp).
  std::int32_t clamp_code(double c, bool& clipped) const {
    clipped = !(c >= static_cast<double>(lo)) || c > static_cast<double>(hi);
    c = c >= static_cast<double>(lo) ? c : static_cast<double>(lo);
    c = c > static_cast<double>(hi) ? static_cast<double>(hi) : c;
    return static_cast<std::int32_t>(c);
  }
};

namespace detail {

/// The reference's quantize(): scale·(clamp(round(x/scale) + zero, 0, maxq) − zero) (docs/theory.md §7).
template <typename Scalar>
Scalar gptq_quantize(Scalar x, Scalar scale, Scalar zero, Scalar maxq) {
  Scalar q = std::nearbyint(x / scale) + zero;
  q = std::min(std::max(q, Scalar(0)), maxq);
  return scale * (q - zero);
}

/// The reference's find_params (docs/theory.md §7, `quant.py`) from a row's range xmin = min(min(x), 0),
/// xmax = max(max(x), 0), without the MSE search; arithmetic in Scalar as the reference does in float32.
/// On return xmin, xmax are the adjusted range the MSE search shrinks.
template <typename Scalar>
void fit_affine_range(Scalar& xmin, Scalar& xmax, const GridSpec& spec, Scalar& scale, Scalar& zero) {
  const Scalar maxq = static_cast<Scalar>(spec.maxq());
  if (spec.symmetric) {
    xmax = std::max(std::abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;  // only where xmin < 0: an all-positive row keeps xmin = 0 (reference quirk)
  }
  if (xmin == 0 && xmax == 0) {
    xmin = -1;
    xmax = +1;
  }
  const Scalar sym_zero = (maxq + 1) / 2;
  scale = (xmax - xmin) / maxq;
  // Extreme finite rows, where the reference's arithmetic breaks down (docs/theory.md §7): a range
  // beyond the scalar's largest value overflows the difference, so the two ends are divided first; a
  // range so small that the step is not a normal number (a row of denormals) would divide by zero or
  // near it, so the row is treated as the all-zero row it effectively is (every value rounds to 0).
  if (!std::isfinite(scale)) scale = xmax / maxq - xmin / maxq;
  if (!(scale >= std::numeric_limits<Scalar>::min())) {
    xmin = -1;
    xmax = +1;
    scale = (xmax - xmin) / maxq;
  }
  zero = spec.symmetric ? sym_zero : std::nearbyint(-xmin / scale);
}

/// The reference's find_params for one row of values x[0..n) with stride (docs/theory.md §7, `quant.py`),
/// arithmetic in Scalar as the reference does in float32.
template <typename Scalar>
void fit_affine_row(const Scalar* x, Index n, Index stride, const GridSpec& spec, Scalar& scale, Scalar& zero) {
  const Scalar maxq = static_cast<Scalar>(spec.maxq());
  Scalar xmin = 0, xmax = 0;  // min(min(x), 0), max(max(x), 0)
  for (Index k = 0; k < n; ++k) {
    xmin = std::min(xmin, x[k * stride]);
    xmax = std::max(xmax, x[k * stride]);
  }
  fit_affine_range(xmin, xmax, spec, scale, zero);
  const Scalar sym_zero = (maxq + 1) / 2;
  if (!spec.mse) return;

  const Scalar norm = static_cast<Scalar>(spec.mse_norm);
  const int steps = static_cast<int>(spec.mse_maxshrink * spec.mse_grid);
  Scalar best = std::numeric_limits<Scalar>::infinity();
  for (int i = 0; i < steps; ++i) {
    const Scalar p = static_cast<Scalar>(1.0 - static_cast<double>(i) / spec.mse_grid);
    const Scalar xmin1 = p * xmin, xmax1 = p * xmax;
    const Scalar scale1 = (xmax1 - xmin1) / maxq;
    const Scalar zero1 = spec.symmetric ? sym_zero : std::nearbyint(-xmin1 / scale1);
    Scalar err = 0;
    for (Index k = 0; k < n; ++k) {
      const Scalar d = std::abs(gptq_quantize(x[k * stride], scale1, zero1, maxq) - x[k * stride]);
      if (d != Scalar(0)) err += std::pow(d, norm);
    }
    if (err < best) {
      best = err;
      scale = scale1;
      zero = zero1;
    }
  }
}

/// δ for the paper's alphabets: the given one, or max|w|/K over the row's values (so w itself is
/// representable without clipping); an all-zero row gets δ = 1.
template <typename Scalar>
Scalar fit_delta_row(const Scalar* x, Index n, Index stride, const GridSpec& spec) {
  if (spec.delta > 0) return static_cast<Scalar>(spec.delta);
  Scalar m = 0;
  for (Index k = 0; k < n; ++k) m = std::max(m, std::abs(x[k * stride]));
  const Scalar d = m / static_cast<Scalar>(spec.K());
  return d >= std::numeric_limits<Scalar>::min() ? d : Scalar(1);  // an all-zero (or all-denormal) row: δ = 1
}

}  // namespace detail

/// The fitted grid a sweep rounds to: a Lattice per (row, group), and the group of every original column.
template <typename Scalar_>
class Grid {
 public:
  using Scalar = Scalar_;
  using Mat = Matrix<Scalar>;
  using LatticeType = Lattice<Scalar>;  ///< what the sweep engine builds per (row, column)

  Mat scale, zero, min;           ///< rows × groups
  std::int32_t lo = 0, hi = 0;    ///< code range, common to all lattices of the grid
  Index group_size = -1;          ///< columns per group, −1 for one group per row
  bool dynamic = false;           ///< groups fitted during the sweep, contiguous in sweep order (docs/theory.md §7 step 7)
  VectorXi32 group_index;         ///< original column → group (the g_idx of GPTQ checkpoints)
  GridSpec spec;                  ///< what it was fitted from (used to fit dynamic groups)
  /// Empty: uniform lattices. Otherwise hi − lo + 1 strictly increasing levels shared by every lattice of
  /// the grid, value(code) = scale·levels[code − lo] − min (see Lattice).
  std::vector<Scalar> levels;

  Index rows() const { return scale.rows(); }
  Index groups() const { return scale.cols(); }

  /// Validates a grid given by the caller for a rows × cols W: shapes, group indices, finite lattices,
  /// a static grid (dynamic groups are fitted by the sweep from a GridSpec instead).
  void check(Index rows_, Index cols) const {
    if (dynamic) detail::fail("Grid: a fitted grid must be static (dynamic groups are fitted by the sweep; pass a GridSpec)");
    if (scale.rows() != rows_ || zero.rows() != rows_ || min.rows() != rows_)
      detail::fail("Grid has " + detail::str(scale.rows()) + " rows of lattices but W has " + detail::str(rows_) + " rows");
    if (zero.cols() != scale.cols() || min.cols() != scale.cols() || scale.cols() < 1)
      detail::fail("Grid: scale, zero and min must have the same number (>= 1) of groups");
    if (group_index.size() != cols)
      detail::fail("Grid.group_index has " + detail::str(group_index.size()) + " entries but W has " + detail::str(cols) + " columns");
    for (Index j = 0; j < cols; ++j)
      if (group_index[j] < 0 || group_index[j] >= scale.cols())
        detail::fail("Grid.group_index[" + detail::str(j) + "] = " + detail::str(group_index[j]) + " is not a group in [0, " +
                     detail::str(scale.cols()) + ")");
    if (lo > hi) detail::fail("Grid code range is empty: lo = " + detail::str(lo) + " > hi = " + detail::str(hi));
    detail::require_finite(scale, "Grid.scale");
    detail::require_finite(zero, "Grid.zero");
    detail::require_finite(min, "Grid.min");
    if (levels.empty()) return;
    if (static_cast<Index>(levels.size()) != Index(hi) - lo + 1 || levels.size() < 2)
      detail::fail("Grid.levels has " + detail::str(levels.size()) + " entries for codes " + detail::str(lo) + ".." +
                   detail::str(hi));
    for (std::size_t k = 0; k < levels.size(); ++k)
      if (!std::isfinite(static_cast<double>(levels[k])) || (k > 0 && !(levels[k] > levels[k - 1])))
        detail::fail("Grid.levels must be finite and strictly increasing (entry " + detail::str(k) + ")");
  }

  Lattice<Scalar> lattice(Index row, Index orig_col) const {
    const Index g = group_index[orig_col];
    return {scale(row, g), zero(row, g), min(row, g), lo, hi, levels.empty() ? nullptr : levels.data()};
  }

  /// Fit group g for rows [r0, r0 + values.rows()) from the given values of its columns (dynamic groups:
  /// the sweep passes the fully updated current weights). Rows are independent, so threads working on
  /// disjoint row ranges may call this concurrently.
  void fit_group(Index g, Index r0, const Eigen::Ref<const Mat>& values) {
    if (spec.alphabet == Alphabet::Affine && !spec.mse && values.cols() > 0) {
      // The plain min/max fit, by columns: a row of column-major values is a strided read (one cache
      // line and one page per value), while running minima and maxima down the columns vectorize, and
      // one pass reads each value once (two rowwise() reductions read a 512-row chunk of a 4096-column
      // W twice from memory).
      Vector<Scalar> mn = values.col(0), mx = values.col(0);
      for (Index c = 1; c < values.cols(); ++c) {
        mn = mn.cwiseMin(values.col(c));
        mx = mx.cwiseMax(values.col(c));
      }
      for (Index r = 0; r < values.rows(); ++r) {
        Scalar lo_r = std::min(Scalar(0), mn[r]), hi_r = std::max(Scalar(0), mx[r]);
        detail::fit_affine_range(lo_r, hi_r, spec, scale(r0 + r, g), zero(r0 + r, g));
        min(r0 + r, g) = 0;
      }
      return;
    }
    for (Index r = 0; r < values.rows(); ++r) {
      const Scalar* x = values.data() + r;
      fit_row_values(x, values.cols(), values.outerStride(), scale(r0 + r, g), zero(r0 + r, g), min(r0 + r, g));
    }
  }

  void fit_row_values(const Scalar* x, Index n, Index stride, Scalar& s, Scalar& z, Scalar& m) const {
    m = 0;
    if (spec.alphabet == Alphabet::Affine) {
      detail::fit_affine_row(x, n, stride, spec, s, z);
    } else {
      s = detail::fit_delta_row(x, n, stride, spec);
      z = 0;
    }
  }
};

/// The grid argument of every algorithm: what the user asks for (a GridSpec, fitted by the call on W)
/// or a grid fitted beforehand (a llama.cpp block format, a grid reused across runs), through which
/// every weight (i, j) rounds to fitted.lattice(i, j). Built implicitly from either, so each algorithm
/// has one entry point per input form for both. A fitted grid must be static (dynamic groups are
/// fitted by the sweep itself from a GridSpec). Holds a pointer: the argument must outlive the call.
template <typename Scalar>
class GridArg {
 public:
  GridArg(const GridSpec& spec) : spec_(&spec) {}           // NOLINT: implicit by design
  GridArg(const Grid<Scalar>& fitted) : fitted_(&fitted) {}  // NOLINT: implicit by design

  const GridSpec* spec() const { return spec_; }
  const Grid<Scalar>* fitted() const { return fitted_; }

 private:
  const GridSpec* spec_ = nullptr;
  const Grid<Scalar>* fitted_ = nullptr;
};

/// Fit the grid of docs/theory.md §7 for W (rows × cols, original column order).
///  - one grid per row: fitted on the FULL W, dead columns included (reference step 2);
///  - static groups: groups of original columns [i, i+g), fitted on W with dead columns zeroed (step 4);
///  - dynamic groups: only shaped here; the sweep fits them on the current weights (step 7), contiguous
///    in sweep order `perm` (perm[k] = original column processed at step k).
/// threads: as in the methods' options (0 = all OpenMP threads); the grid is the same for any count.
template <typename Derived>
Grid<typename Derived::Scalar> fit_grid(const Eigen::MatrixBase<Derived>& W, const GridSpec& spec,
                                        const std::vector<Index>& perm, const std::vector<bool>& dead = {},
                                        int threads = 0) {
  using Scalar = typename Derived::Scalar;
  spec.check();
  const Index rows = W.rows(), cols = W.cols();
  Grid<Scalar> g;
  g.spec = spec;
  switch (spec.alphabet) {
    case Alphabet::Affine: g.lo = 0; g.hi = spec.maxq(); break;
    case Alphabet::Midtread: g.lo = -spec.K(); g.hi = spec.K(); break;
    case Alphabet::Infinite:  // far beyond any weight, yet exact in float: codes stay well inside int32
      g.lo = -(1 << 24); g.hi = (1 << 24); break;
  }
  g.group_index.resize(cols);
  const Index gs = spec.group_size;
  const Index ngroups = gs < 0 ? 1 : cols / gs + (cols % gs != 0);  // no overflow for any gs ≥ 1
  g.group_size = gs;
  g.dynamic = gs > 0 && !spec.static_groups;
  g.scale.resize(rows, ngroups);
  g.zero.resize(rows, ngroups);
  g.min.setZero(rows, ngroups);
  if (gs < 0) {
    g.group_index.setZero();
  } else if (!g.dynamic) {
    for (Index j = 0; j < cols; ++j) g.group_index[j] = static_cast<std::int32_t>(j / gs);
  } else {
    for (Index k = 0; k < cols; ++k) g.group_index[perm[k]] = static_cast<std::int32_t>(k / gs);
    // Filled by the sweep; set to something harmless so that a grid is never left uninitialised.
    g.scale.setOnes();
    g.zero.setZero();
    return g;
  }
  const Eigen::Ref<const Matrix<Scalar>> Wc(W.derived());  // evaluates an expression once, binds a matrix
  if (gs < 0) {
    // Rows are independent: fixed row chunks on all threads (the same values for any thread count).
    detail::for_row_chunks(rows, detail::resolve_threads(threads), [&](Index r0, Index r1) {
      g.fit_group(0, r0, Wc.middleRows(r0, r1 - r0));
    });
    return g;
  }
  Matrix<Scalar> block;
  for (Index q = 0; q < ngroups; ++q) {
    const Index c0 = q * gs, n = std::min(gs, cols - c0);
    block = Wc.middleCols(c0, n);
    for (Index j = 0; j < n; ++j)
      if (!dead.empty() && dead[c0 + j]) block.col(j).setZero();
    g.fit_group(q, 0, block);
  }
  return g;
}

namespace detail {
/// The grid of a call: the fitted one (checked against W's shape) or one fitted from the spec on W.
template <typename Scalar, typename DerivedW>
Grid<Scalar> grid_for(const GridArg<Scalar>& arg, const Eigen::MatrixBase<DerivedW>& W, const std::vector<Index>& perm,
                      const std::vector<bool>& dead, int threads) {
  if (arg.fitted()) {
    arg.fitted()->check(W.rows(), W.cols());
    return *arg.fitted();
  }
  return fit_grid(W, *arg.spec(), perm, dead, threads);
}
}  // namespace detail

}  // namespace pptq
