// OPTQ written into llama.cpp's block formats Q4_0, Q4_K, Q3_K, Q2_K, Q8_0, Q5_0, Q5_K, Q6_K, IQ4_NL and
// IQ4_XS (docs/formats.md §1, §1b), as grids of the one sweep engine: no second engine.
//
// A block format is a static grouped grid (docs/theory.md §7): one Lattice per row and SUB-BLOCK (32 weights,
// or 16 for Q3_K, Q2_K and Q6_K), group_index[j] = j / sub_size for every row, whose scale and min are
// exactly what ggml decodes: scale_j = float(d)·ls_j and min_j = float(dmin)·lm_j computed in float32
// (d, dmin IEEE halves; ls, lm the sub-block integers; IQ4_XS's ls_j − 32 is held as a signed integer like
// Q3_K's and Q6_K's), zero 8 (Q4_0), 16 (Q5_0), 128 (Q8_0), 4 (Q3_K: code u = q + 4), 32 (Q6_K) or 0, and
// codes 0..qmax. IQ4_NL and IQ4_XS are NON-UNIFORM lattices: the grid's table of levels (Grid::levels) is
// iq4_levels, value = scale·iq4_levels[code]. Because the grid is fixed per ORIGINAL column, act order costs
// no extra bits.
//
//   1. fit_format_grid(W, type, importance)  fits that grid ONCE on the original W (docs/formats.md §4):
//      per sub-block a weighted search of (scale, min), weights importance_c·sqrt(σ² + w_c²) (docs/formats.md
//      §3), then the scales and mins are put on the super-block lattice (d, dmin halves, integers in range)
//      and refined by alternating "nearest codes" / "best d, dmin for those codes" / "best integer per
//      sub-block", every step accepted only if the weighted error with nearest codes goes down.
//   2. pptq::optq(W, H, grid, opt) (or stochastic rounding, or qronos_from_grams with the grid) runs the
//      sweep onto it.
//   3. refit_format_grid(W, H, result, type) refits d, dmin and the integers with the codes fixed to lower
//      the H-error (w − q)ᵀ(H + λI)(w − q) of every row (method: see refit_block below); a row whose error
//      does not go down keeps its old parameters.
//   4. to_bytes(codes, grid, type) writes ggml's bytes (rows × row_bytes) through blocks.hpp's pack; the
//      grid's values ARE ggml's float32 decode of those bytes, bit for bit.
//   5. quantize_optq / quantize_rtn do all of it (RTN: the same fit, then nearest rounding: the best
//      plain-rounding fit of the same format, the baseline OPTQ is measured against).
#pragma once

#include "../common.hpp"
#include "../detail/memory.hpp"
#include "../detail/parallel.hpp"
#include "../detail/stopwatch.hpp"
#include "../grid.hpp"
#include "../optq.hpp"
#include "../result.hpp"
#include "../rtn.hpp"
#include "blocks.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace pptq::ggml {

/// How the fit's element weights importance_c·sqrt(σ² + w_c²) take σ² (docs/formats.md §3, as ggml does).
enum class Sigma {
  RowMean,         ///< the mean w² of the whole row
  BlockMean,       ///< the mean w² of the (super-)block
  TwiceBlockMean,  ///< twice that
};

/// The shape of one block format as a grid.
struct Format {
  Type type = Type::Q4_0;
  int n = 32;              ///< weights per (super-)block
  int nsub = 1;            ///< sub-blocks per block
  int sub = 32;            ///< weights per sub-block (the grid's group size)
  int qmax = 15;           ///< codes 0..qmax
  int zero = 8;            ///< value = scale·(code − zero) − min
  int smin = 0, smax = 0;  ///< range of the scale integers (ls, or s for Q3_K)
  int mmax = 0;            ///< range 0..mmax of the min integers lm
  bool has_ints = false;   ///< false for Q4_0 (the block's scale is d itself)
  bool has_min = false;    ///< Q4_K, Q2_K
  int bits = 4;            ///< code bits
  Sigma sigma = Sigma::RowMean;
  const std::int8_t* table = nullptr;  ///< IQ4_NL, IQ4_XS: code k stands for table[k] (zero unused)
};

/// Throws UsageError (a std::invalid_argument) for F32/F16 (not block formats).
inline Format format_of(Type t) {
  Format f;
  f.type = t;
  switch (t) {
    case Type::Q4_0:  // d·(q − 8)
      f.n = 32, f.nsub = 1, f.sub = 32, f.qmax = 15, f.zero = 8, f.bits = 4;
      return f;
    case Type::Q4_K:  // (d·ls)·q − dmin·lm
      f.n = 256, f.nsub = 8, f.sub = 32, f.qmax = 15, f.zero = 0, f.smax = 63, f.mmax = 63, f.bits = 4;
      f.has_ints = f.has_min = true;
      f.sigma = Sigma::TwiceBlockMean;
      return f;
    case Type::Q3_K:  // (d·s)·(u − 4), s signed
      f.n = 256, f.nsub = 16, f.sub = 16, f.qmax = 7, f.zero = 4, f.smin = -32, f.smax = 31, f.bits = 3;
      f.has_ints = true;
      f.sigma = Sigma::TwiceBlockMean;
      return f;
    case Type::Q2_K:  // (d·ls)·q − dmin·lm
      f.n = 256, f.nsub = 16, f.sub = 16, f.qmax = 3, f.zero = 0, f.smax = 15, f.mmax = 15, f.bits = 2;
      f.has_ints = f.has_min = true;
      f.sigma = Sigma::BlockMean;
      return f;
    case Type::Q8_0:  // d·(u − 128), u = int8 + 128
      f.n = 32, f.nsub = 1, f.sub = 32, f.qmax = 255, f.zero = 128, f.bits = 8;
      return f;
    case Type::Q5_0:  // d·(u − 16)
      f.n = 32, f.nsub = 1, f.sub = 32, f.qmax = 31, f.zero = 16, f.bits = 5;
      return f;
    case Type::Q5_K:  // (d·ls)·u − dmin·lm
      f.n = 256, f.nsub = 8, f.sub = 32, f.qmax = 31, f.zero = 0, f.smax = 63, f.mmax = 63, f.bits = 5;
      f.has_ints = f.has_min = true;
      f.sigma = Sigma::TwiceBlockMean;
      return f;
    case Type::Q6_K:  // (d·s)·(u − 32), s int8
      f.n = 256, f.nsub = 16, f.sub = 16, f.qmax = 63, f.zero = 32, f.smin = -128, f.smax = 127, f.bits = 6;
      f.has_ints = true;
      f.sigma = Sigma::TwiceBlockMean;
      return f;
    case Type::IQ4_NL:  // d·T[k]
      f.n = 32, f.nsub = 1, f.sub = 32, f.qmax = 15, f.zero = 0, f.bits = 4;
      f.sigma = Sigma::TwiceBlockMean;
      f.table = iq4_levels;
      return f;
    case Type::IQ4_XS:  // (d·s)·T[k], s = ls − 32
      f.n = 256, f.nsub = 8, f.sub = 32, f.qmax = 15, f.zero = 0, f.smin = -32, f.smax = 31, f.bits = 4;
      f.has_ints = true;
      f.sigma = Sigma::TwiceBlockMean;
      f.table = iq4_levels;
      return f;
    default: break;
  }
  throw UsageError(std::string("ggml grid: type ") + type_name(t) +
                   " is not a block format (expected q4_0, q4_K, q3_K, q2_K, q8_0, q5_0, q5_K, q6_K, iq4_nl or iq4_xs)");
}

/// Options of the grid fit.
struct FitOptions {
  int refine_rounds = 4;  ///< rounds of the alternating refinement on the super-block lattice
  int threads = 0;        ///< 0: all OpenMP threads; results are identical for any count
};

/// Options of the refit after the sweep.
struct RefitOptions {
  /// The refit minimizes Σ_rows (w − q)ᵀ(H + λI)(w − q) with λ = damp·mean(diag H) when set, else the λ the
  /// sweep used (result.lambda): the same objective the sweep's energy certificate measures
  /// (docs/theory.md §3.1).
  std::optional<double> damp;
  int rounds = 3;  ///< rounds of "best d, dmin" / "best integer per sub-block" per super-block
  int threads = 0;
  /// W is this block of a layer's rows: the refit then runs on the layer's row chunks, so its products
  /// (and the result) are those of the whole-layer call (RowBlock, options.hpp). quantize_optq passes
  /// the sweep's block when this one is the default.
  RowBlock row_block;
};

/// What the refit did, on its objective (w − q)ᵀ(H + λI)(w − q) summed over rows.
struct RefitReport {
  double lambda = 0;
  double before = 0, after = 0;  ///< objective before / after (after ≤ before row by row)
  Index rows_improved = 0;       ///< rows whose parameters changed
  Eigen::VectorXd row_before, row_after;
  /// before / after (≥ 1); 1 when nothing changed.
  double gain() const { return after > 0 ? before / after : (before > 0 ? std::numeric_limits<double>::infinity() : 1.0); }
};

/// Options of quantize_optq. The sweep's damp defaults to 0.1 (not GPTQ's 0.01): docs/formats.md §4 measured
/// that 0.1 keeps the gain on NEW data for wide layers with ~2 calibration samples per column, at a cost of a
/// few per cent on the calibration data (and test_ggml_grid.cpp measures the same on synthetic layers).
struct QuantizeOptions {
  OptqOptions optq = default_optq();
  FitOptions fit;
  bool refit = true;
  RefitOptions refit_options;

  static OptqOptions default_optq() {
    OptqOptions o;
    o.damp = 0.1;
    return o;
  }
};

/// Wall-clock seconds of quantize_optq's own parts (the factor's and the sweep's are result.seconds): the
/// format fit, the refit, and packing the bytes with ggml's decode of them.
struct FormatTimings {
  double fit = 0, refit = 0, pack = 0;
};

/// A layer quantized into a ggml format.
template <typename Scalar>
struct GgmlQuant {
  Type type = Type::Q4_0;
  std::vector<std::uint8_t> bytes;  ///< rows × row_bytes(type, cols): ggml's layout, rows one after another
  Matrix<float> dequantized;        ///< ggml's float32 decode of `bytes` (equal to result.dequantized)
  MatrixXi32 codes;                 ///< rows × cols, unsigned codes 0..qmax (as the decoded blocks hold them)
  QuantResult<Scalar> result;       ///< the sweep's result (grid refitted when refit is on)
  RefitReport refit;                ///< empty (gain 1) when no refit ran
  double bits_per_weight = 0;       ///< 8·bytes / weights (bits_per_weight(type))
  FormatTimings seconds;            ///< where the time outside the sweep went
};

// ----------------------------------------------------------------------------------------------------
// Internals: one block's parameters and its lattices
// ----------------------------------------------------------------------------------------------------
namespace detail {

/// The parameters of one (super-)block: d, dmin (half bits) and the sub-block integers (signed for Q3_K,
/// Q6_K and IQ4_XS: s, with IQ4_XS's stored ls = s + 32).
struct Params {
  std::uint16_t d = 0, dmin = 0;
  int ls[16] = {}, lm[16] = {};
};

/// ggml's float32 lattice of sub-block j (docs/formats.md §1): a_j = float(d)·ls_j, m_j = float(dmin)·lm_j.
inline SubLattice lattice(const Format& f, const Params& p, int j) {
  const float d = half_to_float(p.d);
  if (!f.has_ints) return SubLattice{d, f.zero, 0.0f, f.qmax, f.table};
  const float a = d * static_cast<float>(p.ls[j]);
  const float m = f.has_min ? half_to_float(p.dmin) * static_cast<float>(p.lm[j]) : 0.0f;
  return SubLattice{a, f.zero, m, f.qmax, f.table};
}

/// The integer the sub-block scale multiplies for `code` (its lattice value is scale·multiplier − min).
inline int multiplier(const Format& f, int code) { return f.table ? f.table[code] : code - f.zero; }

/// c clamped to the codes 0..qmax; a NaN (never produced from finite weights) becomes 0 instead of being
/// cast to an integer.
inline int clamp_to_code(double c, int qmax) {
  c = c >= 0.0 ? c : 0.0;
  return static_cast<int>(c > qmax ? static_cast<double>(qmax) : c);
}

/// The code whose multiplier is nearest z (clamped to the codes; a table's ties go to the even code).
inline int nearest_code_at(const Format& f, double z) {
  if (f.table) {
    bool clipped = false;
    return pptq::detail::nearest_level(f.table, f.qmax + 1, z, clipped);
  }
  return clamp_to_code(std::nearbyint(z) + f.zero, f.qmax);
}

/// The nearest code of x on lattice L (a lattice of scale 0, where every code gives −min: the code of
/// multiplier 0, or for a table of the level nearest 0).
inline int nearest_code(const SubLattice& L, double x) {
  if (L.table) {
    bool clipped = false;
    const double z = L.scale == 0.0f ? 0.0 : (x + static_cast<double>(L.min)) / static_cast<double>(L.scale);
    return pptq::detail::nearest_level(L.table, L.qmax + 1, z, clipped);
  }
  if (L.scale == 0.0f) return std::min(std::max(L.zero, 0), L.qmax);
  return clamp_to_code(std::nearbyint((x + static_cast<double>(L.min)) / static_cast<double>(L.scale)) + L.zero, L.qmax);
}

inline int clampi(double v, int lo, int hi) {
  if (!std::isfinite(v)) return lo <= 0 && hi >= 0 ? 0 : lo;
  return static_cast<int>(std::min(std::max(std::nearbyint(v), static_cast<double>(lo)), static_cast<double>(hi)));
}

/// Weighted error of sub-block j (x, wt point at its first weight) with nearest codes.
inline double sub_error(const Format& f, const Params& p, int j, const double* x, const double* wt) {
  const SubLattice L = lattice(f, p, j);
  double e = 0;
  for (int i = 0; i < f.sub; ++i) {
    const double r = x[i] - static_cast<double>(L.value(nearest_code(L, x[i])));
    e += wt[i] * r * r;
  }
  return e;
}

inline double block_error(const Format& f, const Params& p, const double* x, const double* wt) {
  double e = 0;
  for (int j = 0; j < f.nsub; ++j) e += sub_error(f, p, j, x + j * f.sub, wt + j * f.sub);
  return e;
}

/// The columns of the linear model q = α·u + β·v of a block for fixed integers and codes (signed
/// multipliers k): u_i = ls_j·k_i (k_i for a format without integers), v_i = −lm_j (0 without a min), so
/// that α = float(d), β = float(dmin) give the block's values (up to float rounding).
inline void design(const Format& f, const Params& p, const int* k, double* u, double* v) {
  for (int j = 0; j < f.nsub; ++j)
    for (int i = 0; i < f.sub; ++i) {
      const int idx = j * f.sub + i;
      u[idx] = f.has_ints ? static_cast<double>(p.ls[j]) * k[idx] : static_cast<double>(k[idx]);
      v[idx] = f.has_min ? -static_cast<double>(p.lm[j]) : 0.0;
    }
}

/// Solves the normal equations [A11 A12; A12 A22]·(α, β) = (r1, r2) of that model: jointly when the format
/// has a min and the system is well conditioned, else α alone with β (in/out) kept.
inline void solve_d_dmin(bool has_min, double A11, double A12, double A22, double r1, double r2, double& al, double& be) {
  const double det = A11 * A22 - A12 * A12;
  if (has_min && det > 1e-12 * std::abs(A11 * A22) && det > 0) {
    al = (A22 * r1 - A12 * r2) / det;
    be = (A11 * r2 - A12 * r1) / det;
  } else if (A11 > 0) {
    al = (r1 - be * A12) / A11;
  }
}

/// Calls fn(candidate) for the parameters p with (d, dmin) replaced by the halves around (hd, hm): d ± 2
/// without a min, d ± 1 and dmin ± 1 with one (dmin kept without).
template <class Fn>
void for_nearby_halves(const Format& f, const Params& p, std::uint16_t hd, std::uint16_t hm, Fn&& fn) {
  const int spread = f.has_min ? 1 : 2;
  for (int kd = -spread; kd <= spread; ++kd)
    for (int km = -1; km <= 1; ++km) {
      if (!f.has_min && km != 0) continue;
      Params c = p;
      c.d = half_step(hd, kd);
      c.dmin = f.has_min ? half_step(hm, km) : p.dmin;
      fn(c);
    }
}

// ----------------------------------------------------------------------------------------------------
// Internals: the continuous fit of a sub-block
// ----------------------------------------------------------------------------------------------------

/// Weighted least squares x ≈ a·c − m with m ≥ 0 (the formats' mins are non-negative multiples of dmin ≥ 0).
/// The solution of ls_affine from its weighted sums Σw, Σwc, Σwc², Σwx, Σwcx.
inline void ls_affine_solve(double sw, double sc, double scc, double sx, double scx, double& a, double& m) {
  const double det = sw * scc - sc * sc;
  double b = 0;
  if (det > 1e-12 * sw * scc && det > 0) {
    a = (sw * scx - sc * sx) / det;
    b = (scc * sx - sc * scx) / det;
  } else {
    a = 0;
    b = sw > 0 ? sx / sw : 0;
  }
  if (b > 0) {  // the offset −m must be ≤ 0
    b = 0;
    a = scc > 0 ? scx / scc : 0;
  }
  if (a < 0) a = 0;
  m = -b;
}

inline void ls_affine(const double* x, const double* wt, const int* c, int n, double& a, double& m) {
  double sw = 0, sc = 0, scc = 0, sx = 0, scx = 0;
  for (int i = 0; i < n; ++i) {
    sw += wt[i];
    sc += wt[i] * c[i];
    scc += wt[i] * c[i] * c[i];
    sx += wt[i] * x[i];
    scx += wt[i] * c[i] * x[i];
  }
  ls_affine_solve(sw, sc, scc, sx, scx, a, m);
}

/// Weighted least squares x ≈ a·k (signed codes k).
inline double ls_scale(const double* x, const double* wt, const int* k, int n) {
  double skk = 0, skx = 0;
  for (int i = 0; i < n; ++i) {
    skk += wt[i] * k[i] * k[i];
    skx += wt[i] * k[i] * x[i];
  }
  return skk > 0 ? skx / skk : 0;
}

/// Weighted squared error of x against a·c − m with c the nearest code in 0..nmax.
inline double affine_error(const double* x, const double* wt, int n, int nmax, double a, double m) {
  double e = 0;
  for (int i = 0; i < n; ++i) {
    const double ci = a > 0 ? std::min(std::max(std::nearbyint((x[i] + m) / a), 0.0), static_cast<double>(nmax)) : 0.0;
    const double r = a * ci - m - x[i];
    e += wt[i] * r * r;
  }
  return e;
}

/// The candidates of fit_asym side by side: lane l holds candidate range l, and every loop over the lanes
/// does for each lane what the scalar code does for one candidate, element by element in the same order,
/// while the lanes fill the vector units. In IEEE arithmetic each lane's sums are the scalar sums bit for
/// bit; with FMA contraction (GCC's default) the compiler may fuse the least-squares solve differently
/// here than in a scalar loop, so a scale can differ in its last bits, and of two candidates whose errors
/// are equal to rounding the other may win (tests/test_ggml_lanes.cpp).
struct AsymLanes {
  static constexpr int L = 32;  ///< 27 candidates, padded to whole vectors
  alignas(64) double a[L], m[L], e[L], sc[L], scc[L], scx[L];
  alignas(64) double c[256][L];  ///< the codes, as doubles (the scalar code's int codes, converted alike)

  /// ls_affine for every lane from the codes in c (Σw and Σwx are the same for every lane).
  void least_squares(const double* x, const double* wt, int n) {
    double sw = 0, sx = 0;
    for (int l = 0; l < L; ++l) sc[l] = scc[l] = scx[l] = 0;
    for (int i = 0; i < n; ++i) {
      sw += wt[i];
      sx += wt[i] * x[i];
      for (int l = 0; l < L; ++l) {
        sc[l] += wt[i] * c[i][l];
        scc[l] += wt[i] * c[i][l] * c[i][l];
        scx[l] += wt[i] * c[i][l] * x[i];
      }
    }
    for (int l = 0; l < L; ++l) ls_affine_solve(sw, sc[l], scc[l], sx, scx[l], a[l], m[l]);
  }

  /// affine_error for every lane at its (a, m), the nearest codes into c.
  void errors(const double* x, const double* wt, int n, int nmax) {
    for (int l = 0; l < L; ++l) e[l] = 0;
    for (int i = 0; i < n; ++i)
      for (int l = 0; l < L; ++l) {
        const double ci =
            a[l] > 0 ? std::min(std::max(std::nearbyint((x[i] + m[l]) / a[l]), 0.0), static_cast<double>(nmax)) : 0.0;
        c[i][l] = ci;
        const double r = a[l] * ci - m[l] - x[i];
        e[l] += wt[i] * r * r;
      }
  }
};

/// Continuous fit of an asymmetric sub-block (codes 0..nmax, value a·c − m): a search over ranges and
/// a least-squares step per candidate, the error measured with the codes re-rounded; then one Lloyd step
/// more (re-round, refit). The candidates run side by side (AsymLanes); the best is chosen in the order of
/// the candidates and their steps, as one candidate after the other would.
inline void fit_asym(const double* x, const double* wt, int n, int nmax, double& a_out, double& m_out) {
  double xmin = 0, xmax = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) {
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  if (!(xmax > xmin)) {
    a_out = 0;
    m_out = -xmin;
    return;
  }
  double best_a = (xmax - xmin) / nmax, best_m = -xmin;
  double best = affine_error(x, wt, n, nmax, best_a, best_m);
  constexpr int K = 27;  // ranges k = −16..10: nmax·(1 + 0.02k)/(xmax − xmin)
  AsymLanes s;  // 64 KiB of lanes on the stack
  for (int i = 0; i < n; ++i)
    for (int l = 0; l < AsymLanes::L; ++l) {
      const double iscale = nmax * (1.0 + 0.02 * (l < K ? l - 16 : 0)) / (xmax - xmin);
      s.c[i][l] = std::min(std::max(std::nearbyint(iscale * (x[i] - xmin)), 0.0), static_cast<double>(nmax));
    }
  s.least_squares(x, wt, n);
  double a0[AsymLanes::L], m0[AsymLanes::L], e0[AsymLanes::L];
  s.errors(x, wt, n, nmax);
  for (int l = 0; l < AsymLanes::L; ++l) {
    a0[l] = s.a[l];
    m0[l] = s.m[l];
    e0[l] = s.e[l];
  }
  s.least_squares(x, wt, n);  // the Lloyd step from the re-rounded codes (read only where a0 > 0)
  s.errors(x, wt, n, nmax);
  for (int l = 0; l < K; ++l) {
    if (e0[l] < best) {
      best = e0[l];
      best_a = a0[l];
      best_m = m0[l];
    }
    if (!(a0[l] > 0)) continue;
    if (s.e[l] < best) {
      best = s.e[l];
      best_a = s.a[l];
      best_m = s.m[l];
    }
  }
  a_out = best_a;
  m_out = best_m;
}

/// The multiplier of the code nearest x for scale a (0 when a = 0).
inline int sym_multiplier(const Format& f, double x, double a) {
  if (a == 0) return 0;
  return multiplier(f, nearest_code_at(f, x / a));
}

/// Weighted squared error of x against a·k with k the nearest code's multiplier; those multipliers into k.
inline double sym_error(const Format& f, const double* x, const double* wt, int n, double a, int* k) {
  double e = 0;
  for (int i = 0; i < n; ++i) {
    k[i] = sym_multiplier(f, x[i], a);
    const double r = a * k[i] - x[i];
    e += wt[i] * r * r;
  }
  return e;
}

/// The level pptq::detail::nearest_level picks for z (table lv of 16 increasing levels), by selects
/// instead of its scan so that the lanes vectorize: the first level ≥ z is at k = the count of levels
/// below z (0 for a NaN, as the scan), its neighbour below is the last level below z, and a tie goes to
/// the even index, as there.
inline double table_level(const double* lv, double z) {
  constexpr int n = 16;
  double k = 0, odd = 0;  // the count of levels below z, and whether it is odd (all in double: it vectorizes)
  double below = lv[0], above = lv[n - 1];
#pragma GCC unroll 16
  for (int c = 0; c < n; ++c) {
    const bool in = lv[c] < z;
    k += in ? 1.0 : 0.0;
    odd = in ? 1.0 - odd : odd;
    below = in ? lv[c] : below;
    above = !in && lv[c] < above ? lv[c] : above;  // the first level ≥ z (the levels increase)
  }
  const double db = z - below, da = above - z;
  const double tie = odd != 0 ? below : above;  // index k − 1 even
  const double v = db != da ? (db < da ? below : above) : tie;
  return k == 0 ? lv[0] : (k == n ? lv[n - 1] : v);
}

/// The candidates of fit_sym side by side: lane l holds candidate l, and every loop over the lanes does
/// for each lane what sym_multiplier, ls_scale and sym_error do for one candidate, element by element in
/// the same order, so each lane's sums are the scalar sums bit for bit (tests/test_ggml_lanes.cpp; the
/// contraction caveat of AsymLanes applies in principle) while the lanes fill the vector units.
struct SymLanes {
  static constexpr int L = 48;    ///< 42 candidates, padded to whole vectors
  static constexpr int max_n = 32;
  alignas(64) double a[L], e[L], skk[L], skx[L];
  alignas(64) double k[max_n][L];  ///< the multipliers, as doubles (the scalar code's ints, converted alike)

  /// ls_scale for every lane from the multipliers in k.
  void scales(const double* x, const double* wt, int n) {
    for (int l = 0; l < L; ++l) skk[l] = skx[l] = 0;
    for (int i = 0; i < n; ++i)
      for (int l = 0; l < L; ++l) {
        skk[l] += wt[i] * k[i][l] * k[i][l];
        skx[l] += wt[i] * k[i][l] * x[i];
      }
    for (int l = 0; l < L; ++l) a[l] = skk[l] > 0 ? skx[l] / skk[l] : 0;
  }

  /// sym_error for every lane at its scale a, the nearest multipliers into k (0 where a = 0, as
  /// sym_multiplier: the division's inf or NaN there is selected away).
  void errors(const Format& f, const double* x, const double* wt, int n) {
    for (int l = 0; l < L; ++l) e[l] = 0;
    if (f.table) {
      double lv[16];
      for (int c = 0; c <= f.qmax; ++c) lv[c] = f.table[c];
      for (int i = 0; i < n; ++i)
        for (int l = 0; l < L; ++l) {
          const double kk = a[l] != 0 ? table_level(lv, x[i] / a[l]) : 0.0;
          k[i][l] = kk;
          const double r = a[l] * kk - x[i];
          e[l] += wt[i] * r * r;
        }
      return;
    }
    const double zero = f.zero, qmax = f.qmax;
    for (int i = 0; i < n; ++i)
      for (int l = 0; l < L; ++l) {
        double c = std::nearbyint(x[i] / a[l]) + zero;  // clamp_to_code, then multiplier
        c = c >= 0.0 ? c : 0.0;
        c = c > qmax ? qmax : c;
        const double kk = a[l] != 0 ? c - zero : 0.0;
        k[i][l] = kk;
        const double r = a[l] * kk - x[i];
        e[l] += wt[i] * r * r;
      }
  }
};

/// Continuous fit of a sub-block without a min (value a·k, k a code's multiplier; a may be negative): the
/// largest weight placed at a range of positions around either end of the codes, each followed by two
/// rounds of "nearest codes, least-squares scale". The candidates run side by side (SymLanes: every
/// format's sub-blocks have at most 32 weights and its table, if any, 16 levels); the best is chosen in
/// the order of the candidates and their rounds, as one candidate after the other would
/// (tests/test_ggml_lanes.cpp checks it against that loop).
inline double fit_sym(const Format& f, const double* x, const double* wt, int n) {
  double xm = 0;
  for (int i = 0; i < n; ++i)
    if (std::abs(x[i]) > std::abs(xm)) xm = x[i];
  if (xm == 0) return 0;
  const int first = multiplier(f, 0), last = multiplier(f, f.qmax);
  const int gap_first = multiplier(f, 1) - first, gap_last = last - multiplier(f, f.qmax - 1);
  // the largest weight at multiplier t, from half a gap beyond the end inwards over two gaps
  auto position = [&](int side, int s) {
    return side == 0 ? (first - 0.5 * gap_first) + 0.1 * gap_first * s : (last + 0.5 * gap_last) - 0.1 * gap_last * s;
  };
  int k[256];
  double best_a = xm / first, best = sym_error(f, x, wt, n, best_a, k);
  constexpr int K = 42;  // 2 sides × 21 positions, lane = 21·side + s
  SymLanes sl;           // 30 KiB of lanes on the stack
  for (int l = 0; l < SymLanes::L; ++l) sl.a[l] = l < K ? xm / position(l / 21, l % 21) : 1.0;
  sl.errors(f, x, wt, n);  // the starting multipliers
  double a0[SymLanes::L], e0[SymLanes::L];
  sl.scales(x, wt, n);     // round 1
  sl.errors(f, x, wt, n);
  std::copy(sl.a, sl.a + SymLanes::L, a0);
  std::copy(sl.e, sl.e + SymLanes::L, e0);
  sl.scales(x, wt, n);     // round 2 (read only where round 1's scale is not 0)
  sl.errors(f, x, wt, n);
  for (int l = 0; l < K; ++l) {
    if (a0[l] == 0) continue;  // a candidate stops at a scale of 0
    if (e0[l] < best) {
      best = e0[l];
      best_a = a0[l];
    }
    if (sl.a[l] == 0) continue;
    if (sl.e[l] < best) {
      best = sl.e[l];
      best_a = sl.a[l];
    }
  }
  return best_a;
}

// ----------------------------------------------------------------------------------------------------
// Internals: the fit of one block on the format's lattice
// ----------------------------------------------------------------------------------------------------

/// Per sub-block the continuous fit: scale a_j and (with a min) min m_j.
inline void continuous_fits(const Format& f, const double* x, const double* wt, double* a, double* m) {
  for (int j = 0; j < f.nsub; ++j) {
    if (f.has_min)
      fit_asym(x + j * f.sub, wt + j * f.sub, f.sub, f.qmax, a[j], m[j]);
    else
      a[j] = fit_sym(f, x + j * f.sub, wt + j * f.sub, f.sub);
  }
}

/// Scales and mins a_j, m_j ≥ 0 onto the super-block lattice: d = max a / smax, dmin = max m / mmax, then
/// the nearest integers.
inline Params params_with_min(const Format& f, const double* a, const double* m) {
  Params p;
  double amax = 0, mmax = 0;
  for (int j = 0; j < f.nsub; ++j) {
    amax = std::max(amax, a[j]);
    mmax = std::max(mmax, m[j]);
  }
  p.d = nearest_finite_half(amax / f.smax);
  p.dmin = nearest_finite_half(mmax / f.mmax);
  const double d = half_to_float(p.d), dm = half_to_float(p.dmin);
  for (int j = 0; j < f.nsub; ++j) {
    p.ls[j] = d > 0 ? clampi(a[j] / d, 0, f.smax) : 0;
    p.lm[j] = dm > 0 ? clampi(m[j] / dm, 0, f.mmax) : 0;
  }
  return p;
}

/// Signed scales a_j onto the super-block lattice: the largest |a_j| at s = smin (one more level) or at
/// s = smax, whichever gives the smaller block error.
inline Params params_signed(const Format& f, const double* a, const double* x, const double* wt) {
  int js = 0;
  for (int j = 1; j < f.nsub; ++j)
    if (std::abs(a[j]) > std::abs(a[js])) js = j;
  Params p;
  double best = std::numeric_limits<double>::infinity();
  for (int t : {f.smin, f.smax}) {
    Params c;
    c.d = nearest_finite_half(a[js] / t);
    const double d = half_to_float(c.d);
    for (int j = 0; j < f.nsub; ++j) c.ls[j] = d != 0 ? clampi(a[j] / d, f.smin, f.smax) : 0;
    const double e = block_error(f, c, x, wt);
    if (e < best) {
      best = e;
      p = c;
    }
  }
  return p;
}

/// The starting point of fit_block: the continuous fits put on the format's lattice.
inline Params initial_params(const Format& f, const double* x, const double* wt) {
  double a[16] = {}, m[16] = {};
  continuous_fits(f, x, wt, a, m);
  if (!f.has_ints) {
    Params p;
    p.d = nearest_finite_half(a[0]);
    return p;
  }
  return f.has_min ? params_with_min(f, a, m) : params_signed(f, a, x, wt);
}

/// sub_error for up to 16 lattices of one sub-block of a uniform format side by side (the refinement's
/// candidates): lane l does what nearest_code, SubLattice::value and sub_error do for lattice l, element by
/// element in the same order, so its error is sub_error's bit for bit while the lanes fill the vector units.
/// (For a table of levels the nearest level by selects costs more than the scalar search over the few
/// candidates of the refinement: those formats stay scalar there.)
struct SubLanes {
  static constexpr int L = 16;
  alignas(64) float scale[L], min[L];
  alignas(64) double e[L];

  static bool apply(const Format& f) { return !f.table; }

  /// Lane l takes lattice_of(l) for the nc ≥ 1 candidates, the last candidate's lattice past them (their
  /// errors are not read).
  template <class LatticeOf>
  void set(int nc, LatticeOf&& lattice_of) {
    for (int l = 0; l < L; ++l) {
      const SubLattice lat = lattice_of(std::min(l, nc - 1));
      scale[l] = lat.scale;
      min[l] = lat.min;
    }
  }

  /// e[l] = sub_error of lattice l on the sub-block (x, wt: its first weight; f.sub weights) for the lanes
  /// of the nc candidates, rounded up to whole vectors.
  void errors(const Format& f, const double* x, const double* wt, int nc) {
    const int nl = std::min(L, (nc + 7) / 8 * 8);
    const double zero = f.zero, qmax = f.qmax;
    const double code0 = std::min(std::max(zero, 0.0), qmax);  // the code of a lattice of scale 0
    for (int l = 0; l < nl; ++l) e[l] = 0;
    for (int i = 0; i < f.sub; ++i)
      for (int l = 0; l < nl; ++l) {
        double c = std::nearbyint((x[i] + static_cast<double>(min[l])) / static_cast<double>(scale[l])) + zero;
        c = c >= 0.0 ? c : 0.0;  // clamp_to_code
        c = c > qmax ? qmax : c;
        c = scale[l] == 0.0f ? code0 : c;
        const float v = scale[l] * static_cast<float>(c - zero) - min[l];
        const double r = x[i] - static_cast<double>(v);
        e[l] += wt[i] * r * r;
      }
  }
};

/// Refinement step (1) for sub-block j: its integers' neighbours and the least-squares target for its
/// nearest codes; the best is kept. Returns true (with err_j updated) if its error went down.
inline bool refine_sub_integers(const Format& f, const double* xs, const double* ws, Params& p, int j, double& err_j) {
  const double d = half_to_float(p.d), dm = half_to_float(p.dmin);
  const SubLattice L = lattice(f, p, j);
  int k[256];
  for (int i = 0; i < f.sub; ++i) k[i] = multiplier(f, nearest_code(L, xs[i]));
  int cl[4] = {p.ls[j] - 1, p.ls[j], p.ls[j] + 1, p.ls[j]};
  int cm[4] = {p.lm[j] - 1, p.lm[j], p.lm[j] + 1, p.lm[j]};
  if (f.has_min) {
    double aa, mm;
    ls_affine(xs, ws, k, f.sub, aa, mm);
    if (d != 0) cl[3] = clampi(aa / d, f.smin, f.smax);
    if (dm != 0) cm[3] = clampi(mm / dm, 0, f.mmax);
  } else {
    const double aa = ls_scale(xs, ws, k, f.sub);
    if (d != 0) cl[3] = clampi(aa / d, f.smin, f.smax);
  }
  const int nm = f.has_min ? 4 : 1;
  const int ls0 = p.ls[j], lm0 = p.lm[j];
  int bl = ls0, bm = lm0;
  double be = err_j;
  int cand_l[16], cand_m[16], nc = 0;  // the candidates in order, the current integers left out
  for (int il = 0; il < 4; ++il)
    for (int im = 0; im < nm; ++im) {
      const int l = std::min(std::max(cl[il], f.smin), f.smax);
      const int mm = f.has_min ? std::min(std::max(cm[im], 0), f.mmax) : 0;
      if (l == ls0 && mm == lm0) continue;
      cand_l[nc] = l;
      cand_m[nc++] = mm;
    }
  double ce[16];
  if (SubLanes::apply(f) && nc > 0) {  // (nc is never 0 for ggml's ranges; the guard keeps the indices valid)
    SubLanes lanes;
    lanes.set(nc, [&](int c) {
      p.ls[j] = cand_l[c];
      p.lm[j] = cand_m[c];
      return lattice(f, p, j);
    });
    lanes.errors(f, xs, ws, nc);
    std::copy(lanes.e, lanes.e + nc, ce);
  } else {
    for (int c = 0; c < nc; ++c) {
      p.ls[j] = cand_l[c];
      p.lm[j] = cand_m[c];
      ce[c] = sub_error(f, p, j, xs, ws);
    }
  }
  for (int c = 0; c < nc; ++c)
    if (ce[c] < be) {
      be = ce[c];
      bl = cand_l[c];
      bm = cand_m[c];
    }
  p.ls[j] = bl;
  p.lm[j] = bm;
  if (!(be < err_j)) return false;
  err_j = be;
  return true;
}

/// block_error of candidates c[0..nc) (nc ≤ 16), each sub-block's lattices side by side (SubLanes), every
/// candidate's sum over the sub-blocks in block_error's order.
inline void block_errors(const Format& f, const Params* c, int nc, const double* x, const double* wt, double* e) {
  if (!SubLanes::apply(f)) {
    for (int k = 0; k < nc; ++k) e[k] = block_error(f, c[k], x, wt);
    return;
  }
  for (int k = 0; k < nc; ++k) e[k] = 0;
  if (nc == 0) return;
  SubLanes lanes;
  for (int j = 0; j < f.nsub; ++j) {
    lanes.set(nc, [&](int k) { return lattice(f, c[k], j); });
    lanes.errors(f, x + j * f.sub, wt + j * f.sub, nc);
    for (int k = 0; k < nc; ++k) e[k] += lanes.e[k];
  }
}

/// Refinement step (2): d (and dmin) by weighted least squares for the current nearest codes, then the
/// best of the nearby halves. Returns true (with err recomputed) if the block error went down.
/// The candidates are compared with block_error of the current parameters, computed the same way, not
/// with a running sum of sub-block errors: that sum drifts by rounding (and with the compiler's FMA
/// contraction), and a candidate of the same exact error (another d where every ls_j is 0) then won or
/// lost by an ulp.
inline bool refine_d_dmin(const Format& f, const double* x, const double* wt, Params& p, double* err) {
  int k[256];
  double u[256], v[256];
  double current = 0;  // block_error(f, p, x, wt), in its order, from the same nearest codes
  for (int j = 0; j < f.nsub; ++j) {
    const SubLattice L = lattice(f, p, j);
    double ej = 0;
    for (int i = 0; i < f.sub; ++i) {
      const int code = nearest_code(L, x[j * f.sub + i]);
      k[j * f.sub + i] = multiplier(f, code);
      const double r = x[j * f.sub + i] - static_cast<double>(L.value(code));
      ej += wt[j * f.sub + i] * r * r;
    }
    current += ej;
  }
  design(f, p, k, u, v);
  double suu = 0, suv = 0, svv = 0, sux = 0, svx = 0;
  for (int i = 0; i < f.n; ++i) {
    suu += wt[i] * u[i] * u[i];
    suv += wt[i] * u[i] * v[i];
    svv += wt[i] * v[i] * v[i];
    sux += wt[i] * u[i] * x[i];
    svx += wt[i] * v[i] * x[i];
  }
  double al = half_to_float(p.d), be = half_to_float(p.dmin);
  solve_d_dmin(f.has_min, suu, suv, svv, sux, svx, al, be);
  const std::uint16_t hd = nearest_finite_half(al), hm = f.has_min ? nearest_finite_half(be) : p.dmin;
  Params cand[9];  // the nearby halves in order (at most 3 × 3), p itself and negative dmins left out
  int nc = 0;
  for_nearby_halves(f, p, hd, hm, [&](const Params& c) {
    if (f.has_min && half_to_float(c.dmin) < 0) return;
    if (c.d == p.d && c.dmin == p.dmin) return;
    cand[nc++] = c;
  });
  double ce[9];
  block_errors(f, cand, nc, x, wt, ce);
  Params bestp = p;
  double beste = current;
  for (int c = 0; c < nc; ++c)
    if (ce[c] < beste) {
      beste = ce[c];
      bestp = cand[c];
    }
  if (!(beste < current)) return false;
  p = bestp;
  for (int j = 0; j < f.nsub; ++j) err[j] = sub_error(f, p, j, x + j * f.sub, wt + j * f.sub);
  return true;
}

/// Fit one block of the format on target x (n weights) with element weights wt: the continuous fit on the
/// format's lattice, then alternating refinement on that lattice; every accepted step lowers the error.
inline void fit_block(const Format& f, const double* x, const double* wt, Params& p, int rounds) {
  p = initial_params(f, x, wt);
  double err[16];
  for (int j = 0; j < f.nsub; ++j) err[j] = sub_error(f, p, j, x + j * f.sub, wt + j * f.sub);
  for (int round = 0; round < rounds; ++round) {
    bool improved = false;
    if (f.has_ints)
      for (int j = 0; j < f.nsub; ++j)
        if (refine_sub_integers(f, x + j * f.sub, wt + j * f.sub, p, j, err[j])) improved = true;
    if (refine_d_dmin(f, x, wt, p, err)) improved = true;
    if (!improved) break;
  }
}

// ----------------------------------------------------------------------------------------------------
// Internals: the refit of one block with its codes fixed
// ----------------------------------------------------------------------------------------------------

/// One block's refit: minimize eᵀHb e + 2eᵀg over the format's parameters, where e = x − q(params), Hb the
/// block's diagonal block of H + λI and g = the coupling to the rest of the row (H_{b,rest} e_rest).
/// Holds the current values q, error e, r = Hb·e + g and objective fval = eᵀ(r + g).
struct BlockRefit {
  const Format& f;
  const int* codes;
  const Eigen::Ref<const Eigen::MatrixXd>& Hb;
  const Eigen::VectorXd& g;
  Eigen::VectorXd xv, b, q, e, r;
  double fval = 0;

  /// hx, he: Hb·x and Hb·e for the starting parameters when the caller has them (a refit of many rows
  /// computes them as one product for all its rows), else nullptr.
  BlockRefit(const Format& f_, const double* x, const int* codes_, const Eigen::Ref<const Eigen::MatrixXd>& Hb_,
             const Eigen::VectorXd& g_, const Params& p, const double* hx = nullptr, const double* he = nullptr)
      : f(f_), codes(codes_), Hb(Hb_), g(g_), xv(f_.n), q(f_.n), e(f_.n), r(f_.n) {
    for (int i = 0; i < f.n; ++i) xv[i] = x[i];
    values(p, q);
    e = xv - q;
    if (he) {
      r = Eigen::Map<const Eigen::VectorXd>(he, f.n) + g;
      fval = e.dot(r) + e.dot(g);
    } else {
      fval = objective(e, r);
    }
    if (hx)
      b = Eigen::Map<const Eigen::VectorXd>(hx, f.n) + g;
    else
      b = Hb * xv + g;
  }

  /// The block's float32 values for parameters pp and the fixed codes.
  void values(const Params& pp, Eigen::VectorXd& out) const {
    for (int j = 0; j < f.nsub; ++j) {
      const SubLattice L = lattice(f, pp, j);
      for (int i = 0; i < f.sub; ++i) out[j * f.sub + i] = static_cast<double>(L.value(codes[j * f.sub + i]));
    }
  }

  /// eᵀHb e + 2eᵀg for error ee; leaves Hb·ee + g in rr.
  double objective(const Eigen::VectorXd& ee, Eigen::VectorXd& rr) const {
    rr.noalias() = Hb * ee;
    rr += g;
    return ee.dot(rr) + ee.dot(g);
  }
};

/// Refit step (a): d (and dmin) jointly by least squares (q is linear in them for fixed integers and codes:
/// a 2×2 system), rounded to the nearest halves; the best of the neighbouring halves by the quadratic model,
/// accepted if the exact objective goes down. Returns true if p changed.
inline bool refit_d_dmin(BlockRefit& s, Params& p) {
  const Format& f = s.f;
  const int n = f.n;
  int k[256];
  for (int i = 0; i < n; ++i) k[i] = multiplier(f, s.codes[i]);
  Eigen::VectorXd u(n), v(n), tmp(n);
  design(f, p, k, u.data(), v.data());
  tmp.noalias() = s.Hb * u;
  const double A11 = u.dot(tmp), A12 = v.dot(tmp), r1 = u.dot(s.b), r2 = v.dot(s.b);
  double A22 = 0;
  if (f.has_min) {
    tmp.noalias() = s.Hb * v;
    A22 = v.dot(tmp);
  }
  double al = half_to_float(p.d), be = half_to_float(p.dmin);
  solve_d_dmin(f.has_min, A11, A12, A22, r1, r2, al, be);
  auto model = [&](double a, double m) { return a * a * A11 + 2 * a * m * A12 + m * m * A22 - 2 * (a * r1 + m * r2); };
  const std::uint16_t hd = nearest_finite_half(al), hm = f.has_min ? nearest_finite_half(be) : p.dmin;
  Params bestp = p;
  double bestm = model(half_to_float(p.d), half_to_float(p.dmin));
  for_nearby_halves(f, p, hd, hm, [&](const Params& c) {
    const double mv = model(half_to_float(c.d), half_to_float(c.dmin));
    if (mv < bestm) {
      bestm = mv;
      bestp = c;
    }
  });
  if (bestp.d == p.d && bestp.dmin == p.dmin) return false;
  Eigen::VectorXd q2(n), e2(n), r2v(n);
  s.values(bestp, q2);
  e2 = s.xv - q2;
  const double f2 = s.objective(e2, r2v);
  if (!(f2 < s.fval)) return false;
  p = bestp;
  s.q = q2;
  s.e = e2;
  s.r = r2v;
  s.fval = f2;
  return true;
}

/// Refit step (b) for one integer of sub-block j (which = 0: ls_j, 1: lm_j): the 1-D quadratic's minimizer
/// rounded, and its two neighbours, accepted if the exact objective change is negative. d, dm: the block's
/// float(d), float(dmin). Returns true if the integer changed.
inline bool refit_integer(BlockRefit& s, Params& p, int j, int which, double d, double dm) {
  const Format& f = s.f;
  const int s0 = j * f.sub;
  const auto HSS = s.Hb.block(s0, s0, f.sub, f.sub);
  int* slot = which == 0 ? &p.ls[j] : &p.lm[j];
  const int lo = which == 0 ? f.smin : 0, hi = which == 0 ? f.smax : f.mmax;
  Eigen::VectorXd pv(f.sub), dq(f.sub), de(f.sub);
  for (int i = 0; i < f.sub; ++i) pv[i] = which == 0 ? d * multiplier(f, s.codes[s0 + i]) : -dm;
  const double den = pv.dot(HSS * pv);
  if (!(den > 0)) return false;
  const double num = pv.dot(s.r.segment(s0, f.sub));
  const int cur = *slot;
  const int c0 = clampi(cur + num / den, lo, hi);
  int best = cur;
  double bestd = 0;
  for (int c : {c0 - 1, c0, c0 + 1}) {
    if (c < lo || c > hi || c == cur) continue;
    const double t = c - cur;
    const double md = -2 * t * num + t * t * den;
    if (md < bestd) {
      bestd = md;
      best = c;
    }
  }
  if (best == cur) return false;
  *slot = best;
  const SubLattice L = lattice(f, p, j);
  for (int i = 0; i < f.sub; ++i) dq[i] = static_cast<double>(L.value(s.codes[s0 + i])) - s.q[s0 + i];
  de = -dq;
  const double df = 2 * de.dot(s.r.segment(s0, f.sub)) + de.dot(HSS * de);
  if (!(df < 0)) {
    *slot = cur;
    return false;
  }
  s.q.segment(s0, f.sub) += dq;
  s.e.segment(s0, f.sub) += de;
  s.r.noalias() += s.Hb.middleCols(s0, f.sub) * de;
  s.fval += df;
  return true;
}

/// Refit of one block with the codes fixed (see BlockRefit): coordinate descent, every step exact on
/// ggml's float32 values: (a) d and dmin (refit_d_dmin), (b) each sub-block's integer ls_j, then lm_j
/// (refit_integer).
inline void refit_block(const Format& f, const double* x, const int* codes, const Eigen::Ref<const Eigen::MatrixXd>& Hb,
                        const Eigen::VectorXd& g, Params& p, int rounds, const double* hx = nullptr,
                        const double* he = nullptr) {
  BlockRefit s(f, x, codes, Hb, g, p, hx, he);
  for (int round = 0; round < rounds; ++round) {
    bool improved = refit_d_dmin(s, p);
    if (f.has_ints) {
      const double d = half_to_float(p.d), dm = half_to_float(p.dmin);
      for (int j = 0; j < f.nsub; ++j)
        for (int which = 0; which < (f.has_min ? 2 : 1); ++which)
          if (refit_integer(s, p, j, which, d, dm)) improved = true;
    }
    if (!improved) break;
  }
}

// ----------------------------------------------------------------------------------------------------
// Internals: between a grid and the blocks' parameters
// ----------------------------------------------------------------------------------------------------

/// Finds a half d and integers k_j ∈ [lo, hi] with float(d)·k_j == vals[j] bit for bit (float32; the sign of a
/// zero decides the sign of a decoded zero weight, so it must survive), preferring
/// the largest |k| for the largest |vals|. Returns false if there is none.
inline bool decompose(const float* vals, int count, int lo, int hi, std::uint16_t& d, int* k) {
  int js = 0;
  for (int j = 1; j < count; ++j)
    if (std::abs(vals[j]) > std::abs(vals[js])) js = j;
  if (vals[js] == 0.0f) {  // all zero: d = ±0 with the zeros' sign (float(d)·0 keeps d's sign)
    const bool neg = std::signbit(vals[0]);
    for (int j = 0; j < count; ++j) {
      if (std::signbit(vals[j]) != neg) return false;
      k[j] = 0;
    }
    d = neg ? 0x8000u : 0u;
    return true;
  }
  auto attempt = [&](int L) {
    const std::uint16_t h = float_to_half(vals[js] / static_cast<float>(L));
    const float df = half_to_float(h);
    if (!std::isfinite(df) || df == 0.0f) return false;
    for (int j = 0; j < count; ++j) {
      const double t = std::nearbyint(static_cast<double>(vals[j]) / static_cast<double>(df));
      if (t < lo || t > hi) return false;
      if (float_bits(df * static_cast<float>(t)) != float_bits(vals[j])) return false;  // bits: ±0 matter
      k[j] = static_cast<int>(t);
    }
    d = h;
    return true;
  };
  for (int L = std::max(hi, -lo); L >= 1; --L) {
    if (L <= hi && attempt(L)) return true;
    if (-L >= lo && attempt(-L)) return true;
  }
  return false;
}

template <typename Scalar>
[[noreturn]] void not_a_lattice(const Format& f, const Grid<Scalar>& grid, Index row, Index gi) {
  pptq::detail::fail(std::string("ggml grid: row ") + pptq::detail::str(row) + ", sub-block " + pptq::detail::str(gi) +
                     " is not a lattice of " + type_name(f.type) + " (scale " + pptq::detail::str(grid.scale(row, gi)) +
                     ", zero " + pptq::detail::str(grid.zero(row, gi)) + ", min " + pptq::detail::str(grid.min(row, gi)) + ")");
}

/// The parameters of block b of row `row` of a format grid (throws if the grid is not on the format's lattice).
template <typename Scalar>
Params params_from_grid(const Format& f, const Grid<Scalar>& grid, Index row, Index block) {
  Params p;
  float a[16], m[16];
  for (int j = 0; j < f.nsub; ++j) {
    const Index gi = block * f.nsub + j;
    a[j] = static_cast<float>(grid.scale(row, gi));
    m[j] = static_cast<float>(grid.min(row, gi));
    if (static_cast<Scalar>(a[j]) != grid.scale(row, gi) || static_cast<Scalar>(m[j]) != grid.min(row, gi) ||
        grid.zero(row, gi) != static_cast<Scalar>(f.zero) || (!f.has_min && m[j] != 0.0f))
      not_a_lattice(f, grid, row, gi);
  }
  bool ok = true;
  if (!f.has_ints) {
    p.d = float_to_half(a[0]);
    ok = float_bits(half_to_float(p.d)) == float_bits(a[0]);
  } else {
    ok = decompose(a, f.nsub, f.smin, f.smax, p.d, p.ls);
    if (ok && f.has_min) ok = decompose(m, f.nsub, 0, f.mmax, p.dmin, p.lm);
  }
  if (!ok)
    pptq::detail::fail(std::string("ggml grid: row ") + pptq::detail::str(row) + ", block " + pptq::detail::str(block) +
                       ": the sub-block scales/mins are not float(d)·integer for a half d: not a " + type_name(f.type) + " grid");
  return p;
}

template <typename Scalar>
void params_to_grid(const Format& f, const Params& p, Grid<Scalar>& grid, Index row, Index block) {
  for (int j = 0; j < f.nsub; ++j) {
    const SubLattice L = lattice(f, p, j);
    const Index gi = block * f.nsub + j;
    grid.scale(row, gi) = static_cast<Scalar>(L.scale);
    grid.zero(row, gi) = static_cast<Scalar>(L.zero);
    grid.min(row, gi) = static_cast<Scalar>(L.min);
  }
}

template <typename Scalar>
void check_format_grid(const Format& f, const Grid<Scalar>& grid, Index rows, Index cols) {
  grid.check(rows, cols);
  if (grid.lo != 0 || grid.hi != f.qmax || grid.groups() * f.sub != cols)
    pptq::detail::fail(std::string("ggml grid: not a ") + type_name(f.type) + " grid (codes " + pptq::detail::str(grid.lo) + ".." +
                       pptq::detail::str(grid.hi) + ", " + pptq::detail::str(grid.groups()) + " groups for " +
                       pptq::detail::str(cols) + " columns)");
  for (Index j = 0; j < cols; ++j)
    if (grid.group_index[j] != j / f.sub)
      pptq::detail::fail(std::string("ggml grid: group_index[") + pptq::detail::str(j) + "] must be " +
                         pptq::detail::str(j / f.sub) + " for " + type_name(f.type));
  const bool same_levels = f.table ? std::equal(grid.levels.begin(), grid.levels.end(), f.table, f.table + f.qmax + 1,
                                                [](Scalar a, std::int8_t b) { return a == static_cast<Scalar>(b); })
                                   : grid.levels.empty();
  if (!same_levels)
    pptq::detail::fail(std::string("ggml grid: not a ") + type_name(f.type) + " grid (its table of levels" +
                       (f.table ? " is not the format's)" : " must be empty: the format's lattices are uniform)"));
}

inline void check_cols(const Format& f, Index cols) {
  if (cols < f.n || cols % f.n != 0)
    throw UsageError("pptq: ggml " + std::string(type_name(f.type)) + " needs cols to be a positive multiple of " +
                     std::to_string(f.n) + " (its block size), got cols = " + std::to_string(cols));
}

// ----------------------------------------------------------------------------------------------------
// Internals: the fit of a whole W
// ----------------------------------------------------------------------------------------------------

template <typename Scalar>
void check_fit_args(const Format& f, const Eigen::Ref<const Matrix<Scalar>>& W0, const Eigen::Ref<const Eigen::VectorXd>& importance,
                    const FitOptions& opt) {
  check_cols(f, W0.cols());
  pptq::detail::require_finite(W0, "W");
  if (importance.size() != 0 && importance.size() != W0.cols())
    pptq::detail::fail("ggml grid: importance has " + pptq::detail::str(importance.size()) + " entries but W has " +
                       pptq::detail::str(W0.cols()) + " columns");
  for (Index j = 0; j < importance.size(); ++j)
    if (!(importance[j] >= 0) || !std::isfinite(importance[j]))
      pptq::detail::fail("ggml grid: importance[" + pptq::detail::str(j) + "] = " + pptq::detail::str(importance[j]) +
                         " must be finite and >= 0");
  if (opt.refine_rounds < 0) pptq::detail::fail("FitOptions.refine_rounds must be >= 0");
}

/// A static grid of the format's shape for rows × cols, lattices not yet set.
template <typename Scalar>
Grid<Scalar> empty_format_grid(const Format& f, Index rows, Index cols) {
  Grid<Scalar> g;
  g.spec.bits = f.bits;
  g.spec.group_size = f.sub;
  g.spec.static_groups = true;
  g.lo = 0;
  g.hi = f.qmax;
  g.group_size = f.sub;
  g.dynamic = false;
  const Index groups = cols / f.sub;
  g.scale.resize(rows, groups);
  g.zero.resize(rows, groups);
  g.min.resize(rows, groups);
  g.group_index.resize(cols);
  for (Index j = 0; j < cols; ++j) g.group_index[j] = static_cast<std::int32_t>(j / f.sub);
  if (f.table) g.levels.assign(f.table, f.table + f.qmax + 1);
  return g;
}

/// The fit's element weights of block b (xb its f.n weights): importance_c·sqrt(σ² + w_c²) with σ² as the
/// format takes it (row_ms: the mean w² of the row); a block with no importance anywhere (any fit is as
/// good) takes the plain weighting.
inline void element_weights(const Format& f, const double* xb, double row_ms, const Eigen::Ref<const Eigen::VectorXd>& importance,
                            Index b, double* wt) {
  double s2 = 0;
  if (f.sigma == Sigma::RowMean) {
    s2 = row_ms;
  } else {
    for (int i = 0; i < f.n; ++i) s2 += xb[i] * xb[i];
    s2 /= f.n;
    if (f.sigma == Sigma::TwiceBlockMean) s2 *= 2;
  }
  double sum = 0;
  for (int i = 0; i < f.n; ++i) {
    const double imp = importance.size() ? importance[b * f.n + i] : 1.0;
    wt[i] = imp * std::sqrt(s2 + xb[i] * xb[i]);
    sum += wt[i];
  }
  if (!(sum > 0))
    for (int i = 0; i < f.n; ++i) wt[i] = std::sqrt(s2 + xb[i] * xb[i]) + 1e-30;
}

/// Fits every block of row r of W0 into g.
template <typename Scalar>
void fit_row(const Format& f, const Eigen::Ref<const Matrix<Scalar>>& W0, const Eigen::Ref<const Eigen::VectorXd>& importance,
             int rounds, Index r, std::vector<double>& x, std::vector<double>& wt, Grid<Scalar>& g) {
  const Index cols = W0.cols();
  double row_ms = 0;
  for (Index j = 0; j < cols; ++j) {
    x[j] = static_cast<double>(W0(r, j));
    row_ms += x[j] * x[j];
  }
  row_ms /= static_cast<double>(cols);
  for (Index b = 0; b < cols / f.n; ++b) {
    const double* xb = x.data() + b * f.n;
    element_weights(f, xb, row_ms, importance, b, wt.data());
    Params p;
    fit_block(f, xb, wt.data(), p, rounds);
    params_to_grid(f, p, g, r, b);
  }
}

}  // namespace detail

// ----------------------------------------------------------------------------------------------------
// 1. The fit
// ----------------------------------------------------------------------------------------------------

/// Fits `type`'s grid for W (rows × cols, original column order) once, importance-weighted (importance:
/// cols non-negative values, e.g. diag(XᵀX); empty: all ones). Throws UsageError (a std::invalid_argument)
/// if cols is not a multiple of the format's block size, or on a bad importance vector.
template <typename DerivedW>
Grid<typename DerivedW::Scalar> fit_format_grid(const Eigen::MatrixBase<DerivedW>& W, Type type,
                                                const Eigen::Ref<const Eigen::VectorXd>& importance,
                                                const FitOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  const Format f = format_of(type);
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  detail::check_fit_args<Scalar>(f, W0, importance, opt);
  const Index rows = W0.rows(), cols = W0.cols();
  Grid<Scalar> g = detail::empty_format_grid<Scalar>(f, rows, cols);
  pptq::detail::for_row_chunks(rows, pptq::detail::resolve_threads(opt.threads), [&](Index r0, Index r1) {
    std::vector<double> x(static_cast<std::size_t>(cols)), wt(static_cast<std::size_t>(f.n));
    for (Index r = r0; r < r1; ++r) detail::fit_row<Scalar>(f, W0, importance, opt.refine_rounds, r, x, wt, g);
  });
  return g;
}

/// Unweighted fit (importance all ones).
template <typename DerivedW>
Grid<typename DerivedW::Scalar> fit_format_grid(const Eigen::MatrixBase<DerivedW>& W, Type type, const FitOptions& opt = {}) {
  return fit_format_grid(W, type, Eigen::VectorXd(), opt);
}

// ----------------------------------------------------------------------------------------------------
// Internals: the refit of a whole W
// ----------------------------------------------------------------------------------------------------
namespace detail {

template <typename Scalar>
void check_refit_args(const Format& f, Index rows, Index cols, const QuantResult<Scalar>& r, Index hrows, Index hcols,
                      const RefitOptions& opt) {
  check_cols(f, cols);
  check_format_grid(f, r.grid, rows, cols);
  if (r.codes.rows() != rows || r.codes.cols() != cols) pptq::detail::fail("ggml refit: the result's codes do not match W");
  if (hrows != cols || hcols != cols) pptq::detail::fail("ggml refit: H must be cols × cols");
  if (opt.damp && (!(*opt.damp >= 0) || !std::isfinite(*opt.damp))) pptq::detail::fail("RefitOptions.damp must be >= 0");
  if (opt.rounds < 0) pptq::detail::fail("RefitOptions.rounds must be >= 0");
}

/// The refit of a chunk of rows [r0, r0 + nr): their parameters, codes and errors E = W − Q. Rows are
/// refitted a chunk at a time so that every product with H is a GEMM over the chunk's rows, not a
/// matrix-vector product per row (the per-row form streamed all of H from memory several times per row).
/// Super-block b's coupling to the rest of its row is computed when b is refitted, left-looking: from the
/// blocks before it (already refitted) and after it (not yet), products with H's columns of b (refit_panel).
/// Over the row that is about 2·N² multiply-adds per row, the cost of E·(H + λI) alone: a product kept up
/// to date after every block would add N² more.
struct ChunkRefit {
  const Format& f;
  const Eigen::MatrixXd& Hl;  ///< H + λI
  Index r0, nr, cols, blocks;
  Eigen::MatrixXd Wc, E;
  std::vector<std::vector<Params>> ps;
  std::vector<int> codes;
  Eigen::VectorXd before, after;

  template <typename Scalar>
  ChunkRefit(const Format& f_, const Eigen::MatrixXd& Hl_, const Eigen::Ref<const Matrix<Scalar>>& W0,
             const QuantResult<Scalar>& r, Index r0_, Index r1_)
      : f(f_), Hl(Hl_), r0(r0_), nr(r1_ - r0_), cols(W0.cols()), blocks(W0.cols() / f_.n), Wc(pptq::detail::on_huge_pages<double>(nr, cols)),
        E(pptq::detail::on_huge_pages<double>(nr, cols)), ps(static_cast<std::size_t>(nr)), codes(static_cast<std::size_t>(nr * cols)),
        before(Eigen::VectorXd::Zero(nr)), after(Eigen::VectorXd::Zero(nr)) {
    for (Index ii = 0; ii < nr; ++ii) {
      const Index i = r0 + ii;
      ps[ii].resize(static_cast<std::size_t>(blocks));
      for (Index b = 0; b < blocks; ++b) ps[ii][b] = params_from_grid(f, r.grid, i, b);
      for (Index c = 0; c < cols; ++c) {
        Wc(ii, c) = static_cast<double>(W0(i, c));
        codes[ii * cols + c] = r.codes(i, c);
      }
      for (Index b = 0; b < blocks; ++b) update_errors(ii, b);
    }
  }

  /// The value of weight (row ii of the chunk, column c) for the current parameters.
  double value(Index ii, Index c) const {
    const Index b = c / f.n, j = (c % f.n) / f.sub;
    return static_cast<double>(lattice(f, ps[ii][b], static_cast<int>(j)).value(codes[ii * cols + c]));
  }

  /// E's super-block b of row ii from the current parameters (one lattice per sub-block, not per weight).
  void update_errors(Index ii, Index b) {
    for (int j = 0; j < f.nsub; ++j) {
      const SubLattice L = lattice(f, ps[ii][b], j);
      const Index c0 = b * f.n + j * f.sub;
      const int* cd = codes.data() + ii * cols + c0;
      for (int t = 0; t < f.sub; ++t) E(ii, c0 + t) = Wc(ii, c0 + t) - static_cast<double>(L.value(cd[t]));
    }
  }

  /// Refits the super-blocks in columns [p0, p1) of every row of the chunk, in order, updating E and both
  /// objectives. The coupling to the columns outside the panel is one product per side for the whole panel
  /// (formats of 32-weight blocks take 8 blocks per panel, so that these products are not 32 columns wide);
  /// inside it, each block adds the coupling to the panel's other blocks.
  void refit_panel(Index p0, Index p1, int rounds) {
    const Index w = p1 - p0;
    Eigen::MatrixXd Lo(nr, w), Ro(nr, w);
    if (p0 > 0)
      Lo.noalias() = E.leftCols(p0) * Hl.block(0, p0, p0, w);
    else
      Lo.setZero();
    if (p1 < cols)
      Ro.noalias() = E.rightCols(cols - p1) * Hl.block(p1, p0, cols - p1, w);
    else
      Ro.setZero();
    for (Index s0 = p0; s0 < p1; s0 += f.n) {
      const Index s1 = s0 + f.n;
      Eigen::MatrixXd Lp = Lo.middleCols(s0 - p0, f.n), Rp = Ro.middleCols(s0 - p0, f.n);
      if (s0 > p0) Lp.noalias() += E.middleCols(p0, s0 - p0) * Hl.block(p0, s0, s0 - p0, f.n);
      if (s1 < p1) Rp.noalias() += E.middleCols(s1, p1 - s1) * Hl.block(s1, s0, p1 - s1, f.n);
      refit_superblock(s0 / f.n, Lp, Rp, rounds);
    }
  }

  /// Refits super-block b of every row of the chunk given its coupling to the refitted blocks before it
  /// (Lp = E_<b·H_<b,b) and to the blocks after it (Rp = E_>b·H_>b,b). With e = (e_<b, e_b, e_>b),
  /// eᵀHe = Σ_b [e_bᵀH_bb e_b + 2·e_bᵀH_b,<b e_<b] = Σ_b [e_bᵀH_bb e_b + 2·e_bᵀH_b,>b e_>b]: `after` sums the
  /// first form over the refitted blocks (final left of b), `before` the second over the original errors
  /// (not refitted right of b), so both are the row's objective exactly, summed block by block.
  void refit_superblock(Index b, const Eigen::MatrixXd& Lp, const Eigen::MatrixXd& Rp, int rounds) {
    const Index s0 = b * f.n;
    const auto Hb = Hl.block(s0, s0, f.n, f.n);
    const Eigen::MatrixXd Eold = E.middleCols(s0, f.n);
    // Every row's refit starts from Hb·e and Hb·x: two products for the chunk (rows × n, transposed).
    Eigen::MatrixXd EH(nr, f.n), XH(nr, f.n);
    EH.noalias() = Eold * Hb;
    XH.noalias() = Wc.middleCols(s0, f.n) * Hb;
    const Eigen::MatrixXd EHt = EH.transpose(), XHt = XH.transpose();
    for (Index ii = 0; ii < nr; ++ii) before[ii] += Eold.row(ii).dot(EH.row(ii) + 2 * Rp.row(ii));
    Eigen::VectorXd g(f.n), wb(f.n);
    for (Index ii = 0; ii < nr; ++ii) {
      g = Lp.row(ii).transpose() + Rp.row(ii).transpose();
      wb = Wc.row(ii).segment(s0, f.n).transpose();
      refit_block(f, wb.data(), codes.data() + ii * cols + s0, Hb, g, ps[ii][b], rounds, XHt.col(ii).data(), EHt.col(ii).data());
      update_errors(ii, b);
    }
    const auto Enew = E.middleCols(s0, f.n);
    EH.noalias() = Enew * Hb;
    for (Index ii = 0; ii < nr; ++ii) after[ii] += Enew.row(ii).dot(EH.row(ii) + 2 * Lp.row(ii));
  }

  /// Writes the rows that improved into r (grid and dequantized values) and the objectives into rep.
  template <typename Scalar>
  void store(QuantResult<Scalar>& r, RefitReport& rep, std::vector<char>& changed) const {
    for (Index ii = 0; ii < nr; ++ii) {
      const Index i = r0 + ii;
      rep.row_before[i] = before[ii];
      // A margin far above the rounding of the running update: a row is only changed when it improves.
      if (after[ii] < before[ii] * (1 - 1e-12)) {
        rep.row_after[i] = after[ii];
        changed[i] = 1;
        for (Index b = 0; b < blocks; ++b) params_to_grid(f, ps[ii][b], r.grid, i, b);
        for (Index c = 0; c < cols; ++c) r.dequantized(i, c) = static_cast<Scalar>(value(ii, c));
      } else {
        rep.row_after[i] = before[ii];
      }
    }
  }
};

}  // namespace detail

// ----------------------------------------------------------------------------------------------------
// 3. The refit after the sweep
// ----------------------------------------------------------------------------------------------------

/// With the codes of `r` fixed, refits every row's d, dmin and sub-block integers to lower
/// (w − q)ᵀ(H + λI)(w − q) (w the ORIGINAL row of W; λ: RefitOptions.damp). Super-blocks are visited in
/// order, each solved with the exact coupling to the rest of the row (detail::refit_block); a row keeps its
/// old parameters unless its objective went down. Updates r.grid, r.dequantized, r.energy (per row the refit
/// objective, which for H = XᵀX and λ = r.lambda is ‖X(w − q)‖² + λ‖w − q‖², as before) and r.proxy_loss.
template <typename DerivedW, typename DerivedH, typename Scalar>
RefitReport refit_format_grid(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                              QuantResult<Scalar>& r, Type type, const RefitOptions& opt = {}) {
  const Format f = format_of(type);
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Index rows = W0.rows(), cols = W0.cols();
  detail::check_refit_args(f, rows, cols, r, H.rows(), H.cols(), opt);
  opt.row_block.check("RefitOptions", rows);
  Eigen::MatrixXd Hl = H.derived().template cast<double>();
  pptq::detail::require_finite(Hl, "H");
  RefitReport rep;
  rep.lambda = opt.damp ? *opt.damp * Hl.diagonal().mean() : r.lambda;
  Hl.diagonal().array() += rep.lambda;
  rep.row_before.resize(rows);
  rep.row_after.resize(rows);
  std::vector<char> changed(static_cast<std::size_t>(rows), 0);
  pptq::detail::for_row_chunks(
      rows, pptq::detail::resolve_threads(opt.threads),
      [&](Index r0, Index r1) {
        detail::ChunkRefit c(f, Hl, W0, r, r0, r1);
        const Index panel = std::max<Index>(f.n, 256);
        for (Index p0 = 0; p0 < cols; p0 += panel) c.refit_panel(p0, std::min(cols, p0 + panel), opt.rounds);
        c.store(r, rep, changed);
      },
      opt.row_block.chunk(rows));
  rep.before = rep.row_before.sum();
  rep.after = rep.row_after.sum();
  for (char c : changed) rep.rows_improved += c;
  r.energy = rep.row_after;
  r.proxy_loss = 0.5 * rep.after;
  return rep;
}

// ----------------------------------------------------------------------------------------------------
// 4. Bytes
// ----------------------------------------------------------------------------------------------------
namespace detail {

/// Fills the decoded block blk (any format's struct) from parameters p and the codes of weights
/// [first, first + B::n) of row i, and packs it to dst.
template <class B>
void emit_block(B blk, const Params& p, const MatrixXi32& codes, Index i, Index first, int qmax, std::uint8_t* dst) {
  blk.d = p.d;
  if constexpr (std::is_same_v<B, BlockQ4K> || std::is_same_v<B, BlockQ2K> || std::is_same_v<B, BlockQ5K>) {
    blk.dmin = p.dmin;
    for (int j = 0; j < B::n_sub; ++j) {
      blk.ls[j] = static_cast<std::uint8_t>(p.ls[j]);
      blk.lm[j] = static_cast<std::uint8_t>(p.lm[j]);
    }
  } else if constexpr (std::is_same_v<B, BlockQ3K> || std::is_same_v<B, BlockQ6K>) {
    for (int j = 0; j < B::n_sub; ++j) blk.s[j] = static_cast<std::int8_t>(p.ls[j]);
  } else if constexpr (std::is_same_v<B, BlockIQ4XS>) {
    for (int j = 0; j < B::n_sub; ++j) blk.ls[j] = static_cast<std::uint8_t>(p.ls[j] + 32);
  }
  for (int t = 0; t < B::n; ++t) {
    const std::int32_t c = codes(i, first + t);
    if (c < 0 || c > qmax)
      pptq::detail::fail("ggml to_bytes: code (" + pptq::detail::str(i) + ", " + pptq::detail::str(first + t) + ") = " +
                         pptq::detail::str(c) + " is outside 0.." + pptq::detail::str(qmax));
    blk.q[t] = static_cast<std::uint8_t>(c);
  }
  pack(blk, dst);
}

}  // namespace detail

/// ggml's bytes of (codes, grid): rows × row_bytes(type, cols), rows one after another. The grid must be a
/// format grid of `type` (from fit_format_grid, possibly refitted); codes in 0..qmax. Throws
/// UsageError (a std::invalid_argument) otherwise.
template <typename Scalar>
std::vector<std::uint8_t> to_bytes(const MatrixXi32& codes, const Grid<Scalar>& grid, Type type) {
  const Format f = format_of(type);
  const Index rows = codes.rows(), cols = codes.cols();
  detail::check_cols(f, cols);
  detail::check_format_grid(f, grid, rows, cols);
  const std::size_t rb = row_bytes(type, cols);
  std::vector<std::uint8_t> out(rb * static_cast<std::size_t>(rows));
  const Index blocks = cols / f.n;
  // Rows are independent (each writes its own bytes): chunks of rows on all threads.
  pptq::detail::for_row_chunks(rows, pptq::detail::resolve_threads(0), [&](Index r0, Index r1) {
    for (Index i = r0; i < r1; ++i)
      for (Index b = 0; b < blocks; ++b) {
        const detail::Params p = detail::params_from_grid(f, grid, i, b);
        std::uint8_t* dst = out.data() + static_cast<std::size_t>(i) * rb + static_cast<std::size_t>(b) * block_bytes(type);
        visit_block(type, [&](auto blk) { detail::emit_block(blk, p, codes, i, b * f.n, f.qmax, dst); });
      }
  });
  return out;
}

template <typename Scalar>
std::vector<std::uint8_t> to_bytes(const QuantResult<Scalar>& r, Type type) {
  return to_bytes(r.codes, r.grid, type);
}

/// ggml's float32 decode of rows × cols weights stored as `type` (rows one after another).
inline Matrix<float> dequantize_bytes(const std::vector<std::uint8_t>& bytes, Index rows, Index cols, Type type) {
  const std::size_t rb = row_bytes(type, cols);
  if (bytes.size() != rb * static_cast<std::size_t>(rows))
    pptq::detail::fail("ggml dequantize: " + pptq::detail::str(bytes.size()) + " bytes, expected " +
                       pptq::detail::str(rb * static_cast<std::size_t>(rows)));
  Matrix<float> out(rows, cols);
  pptq::detail::advise_huge_pages(out.data(), sizeof(float) * static_cast<std::size_t>(out.size()));
  pptq::detail::for_row_chunks(rows, pptq::detail::resolve_threads(0), [&](Index r0, Index r1) {
    std::vector<float> row(static_cast<std::size_t>(cols));
    for (Index i = r0; i < r1; ++i) {
      dequantize_row(type, bytes.data() + static_cast<std::size_t>(i) * rb, cols, row.data());
      for (Index j = 0; j < cols; ++j) out(i, j) = row[j];
    }
  });
  return out;
}

// ----------------------------------------------------------------------------------------------------
// 5. Convenience
// ----------------------------------------------------------------------------------------------------

namespace detail {
template <typename Scalar>
void finish(GgmlQuant<Scalar>& out, Type type) {
  out.type = type;
  // A layer's codes are tens of MB: advised onto huge pages before the copy touches them.
  out.codes.resize(out.result.codes.rows(), out.result.codes.cols());
  pptq::detail::advise_huge_pages(out.codes.data(), sizeof(std::int32_t) * static_cast<std::size_t>(out.codes.size()));
  out.codes = out.result.codes;
  out.bytes = to_bytes(out.result, type);
  out.dequantized = dequantize_bytes(out.bytes, out.result.rows(), out.result.cols(), type);
  // The engine evaluates value(code) in Scalar; for double and a non-zero min that is the exact difference,
  // which ggml rounds to float: store ggml's values so that the result matches the bytes bit for bit.
  out.result.dequantized = out.dequantized.template cast<Scalar>();
  out.bits_per_weight =
      8.0 * static_cast<double>(out.bytes.size()) / static_cast<double>(out.result.rows() * out.result.cols());
}
}  // namespace detail

/// fit (importance diag(H)) → OPTQ onto the fitted grid → refit → bytes. W rows × cols, H cols × cols
/// (any positive multiple of XᵀX). If the sweep fails (Status::NumericalIssue) the result holds no bytes.
template <typename DerivedW, typename DerivedH>
GgmlQuant<typename DerivedW::Scalar> quantize_optq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                                   Type type, const QuantizeOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  const Format f = format_of(type);
  detail::check_cols(f, W.cols());
  if (H.rows() != W.cols() || H.cols() != W.cols())
    pptq::detail::fail("ggml quantize: H is " + pptq::detail::str(H.rows()) + " × " + pptq::detail::str(H.cols()) +
                       " but W has " + pptq::detail::str(W.cols()) + " columns");
  const Eigen::VectorXd imp = H.diagonal().template cast<double>().cwiseMax(0.0);
  GgmlQuant<Scalar> out;
  out.type = type;
  const pptq::detail::Stopwatch fit_time;
  const Grid<Scalar> grid = fit_format_grid(W, type, imp, opt.fit);
  out.seconds.fit = fit_time.seconds();
  out.result = optq(W, H, grid, opt.optq);
  if (!out.result.ok()) return out;
  if (opt.refit) {
    RefitOptions ro = opt.refit_options;
    if (ro.threads == 0) ro.threads = opt.optq.threads;
    if (ro.row_block.whole()) ro.row_block = opt.optq.row_block;
    const pptq::detail::Stopwatch refit_time;
    out.refit = refit_format_grid(W, H, out.result, type, ro);
    out.seconds.refit = refit_time.seconds();
  }
  const pptq::detail::Stopwatch pack_time;
  detail::finish(out, type);
  out.seconds.pack = pack_time.seconds();
  return out;
}

/// The baseline: the same importance-weighted fit, then nearest rounding of every weight with no error
/// feedback (the best plain-rounding fit of the same format).
template <typename DerivedW>
GgmlQuant<typename DerivedW::Scalar> quantize_rtn(const Eigen::MatrixBase<DerivedW>& W,
                                                  const Eigen::Ref<const Eigen::VectorXd>& importance, Type type,
                                                  const FitOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  GgmlQuant<Scalar> out;
  const pptq::detail::Stopwatch fit_time;
  const Grid<Scalar> grid = fit_format_grid(W0, type, importance, opt);
  out.seconds.fit = fit_time.seconds();
  // The library's RTN onto the fitted format grid: the one sweep engine, no second rounding loop.
  out.result = pptq::rtn(W0, grid);
  const pptq::detail::Stopwatch pack_time;
  detail::finish(out, type);
  out.seconds.pack = pack_time.seconds();
  return out;
}

}  // namespace pptq::ggml
