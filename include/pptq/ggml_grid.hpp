// OPTQ written into llama.cpp's block formats Q4_0, Q4_K, Q3_K, Q2_K (kquant.md), as grids of the one
// sweep engine: no second engine.
//
// A block format is a static grouped grid (math.md §7): one Lattice per row and SUB-BLOCK (32 weights for
// Q4_0 and Q4_K, 16 for Q3_K and Q2_K), group_index[j] = j / sub_size for every row, whose scale and min
// are exactly what ggml decodes: scale_j = float(d)·ls_j and min_j = float(dmin)·lm_j computed in float32
// (d, dmin IEEE halves; ls, lm the sub-block integers), zero 8 (Q4_0), 4 (Q3_K: code u = q + 4) or 0, and
// codes 0..qmax. Because the grid is fixed per ORIGINAL column, act order costs no extra bits.
//
//   1. fit_format_grid(W, type, importance)  fits that grid ONCE on the original W (kquant.md §4):
//      per sub-block a weighted search of (scale, min), weights importance_c·sqrt(σ² + w_c²) (kquant.md §3),
//      then the scales and mins are put on the super-block lattice (d, dmin halves, integers in range) and
//      refined by alternating "nearest codes" / "best d, dmin for those codes" / "best integer per sub-block",
//      every step accepted only if the weighted error with nearest codes goes down.
//   2. pptq::optq(W, H, grid, opt) (or stochastic rounding, or qronos_from_grams with the grid) runs the
//      sweep onto it.
//   3. refit_format_grid(W, H, result, type) refits d, dmin and the integers with the codes fixed to lower
//      the H-error (w − q)ᵀ(H + λI)(w − q) of every row (method: see refit_block below); a row whose error
//      does not go down keeps its old parameters.
//   4. to_bytes(codes, grid, type) writes ggml's bytes (rows × row_bytes) through ggml_blocks.hpp's pack;
//      the grid's values ARE ggml's float32 decode of those bytes, bit for bit.
//   5. quantize_optq / quantize_rtn do all of it (RTN: the same fit, then nearest rounding: the best
//      plain-rounding fit of the same format, the baseline OPTQ is measured against).
#pragma once

#include "common.hpp"
#include "detail/parallel.hpp"
#include "grid.hpp"
#include "io/ggml_blocks.hpp"
#include "optq.hpp"
#include "result.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace pptq::ggml {

/// The shape of one block format as a grid.
struct Format {
  Type type = Type::Q4_0;
  int n = 32;          ///< weights per (super-)block
  int nsub = 1;        ///< sub-blocks per block
  int sub = 32;        ///< weights per sub-block (the grid's group size)
  int qmax = 15;       ///< codes 0..qmax
  int zero = 8;        ///< value = scale·(code − zero) − min
  int smin = 0, smax = 0;  ///< range of the scale integers (ls, or s for Q3_K)
  int mmax = 0;        ///< range 0..mmax of the min integers lm
  bool has_ints = false;   ///< false for Q4_0 (the block's scale is d itself)
  bool has_min = false;    ///< Q4_K, Q2_K
  int bits = 4;            ///< code bits
};

/// Throws std::invalid_argument for F32/F16 (not block formats).
inline Format format_of(Type t) {
  switch (t) {
    case Type::Q4_0: return {t, 32, 1, 32, 15, 8, 0, 0, 0, false, false, 4};
    case Type::Q4_K: return {t, 256, 8, 32, 15, 0, 0, 63, 63, true, true, 4};
    case Type::Q3_K: return {t, 256, 16, 16, 7, 4, -32, 31, 0, true, false, 3};
    case Type::Q2_K: return {t, 256, 16, 16, 3, 0, 0, 15, 15, true, true, 2};
    default: break;
  }
  throw std::invalid_argument(std::string("ggml grid: type ") + type_name(t) +
                              " is not a block format (expected q4_0, q4_K, q3_K or q2_K)");
}

/// Options of the grid fit.
struct FitOptions {
  int refine_rounds = 4;  ///< rounds of the alternating refinement on the super-block lattice
  int threads = 0;        ///< 0: all OpenMP threads; results are identical for any count
};

/// Options of the refit after the sweep.
struct RefitOptions {
  /// The refit minimizes Σ_rows (w − q)ᵀ(H + λI)(w − q) with λ = damp·mean(diag H) when set, else the λ the
  /// sweep used (result.lambda): the same objective the sweep's energy certificate measures (math.md §3.1).
  std::optional<double> damp;
  int rounds = 3;   ///< rounds of "best d, dmin" / "best integer per sub-block" per super-block
  int threads = 0;
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

/// Options of quantize_optq. The sweep's damp defaults to 0.1 (not GPTQ's 0.01): kquant.md §4 measured that
/// 0.1 keeps the gain on NEW data for wide layers with ~2 calibration samples per column, at a cost of a few
/// per cent on the calibration data (and test_ggml_grid.cpp measures the same on synthetic layers).
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

/// A layer quantized into a ggml format.
template <typename Scalar>
struct GgmlQuant {
  Type type = Type::Q4_0;
  std::vector<std::uint8_t> bytes;  ///< rows × row_bytes(type, cols): ggml's layout, rows one after another
  Matrix<float> dequantized;        ///< ggml's float32 decode of `bytes` (equal to result.dequantized)
  MatrixXi32 codes;                 ///< rows × cols, unsigned codes 0..qmax (u = q + 4 for Q3_K)
  QuantResult<Scalar> result;       ///< the sweep's result (grid refitted when refit is on)
  RefitReport refit;                ///< empty (gain 1) when no refit ran
  double bits_per_weight = 0;       ///< 8·bytes / weights: 4.5, 4.5, 3.4375, 2.625
};

// ----------------------------------------------------------------------------------------------------
// Internals
// ----------------------------------------------------------------------------------------------------
namespace fitdetail {

/// The parameters of one (super-)block: d, dmin (half bits) and the sub-block integers.
struct Params {
  std::uint16_t d = 0, dmin = 0;
  int ls[16] = {}, lm[16] = {};
};

/// ggml's float32 lattice of sub-block j (kquant.md §1): a_j = float(d)·ls_j, m_j = float(dmin)·lm_j.
inline SubLattice lattice(const Format& f, const Params& p, int j) {
  const float d = half_to_float(p.d);
  if (!f.has_ints) return SubLattice{d, f.zero, 0.0f, f.qmax};
  const float a = d * static_cast<float>(p.ls[j]);
  const float m = f.has_min ? half_to_float(p.dmin) * static_cast<float>(p.lm[j]) : 0.0f;
  return SubLattice{a, f.zero, m, f.qmax};
}

inline int nearest_code(const SubLattice& L, double x) {
  if (L.scale == 0.0f) return std::min(std::max(L.zero, 0), L.qmax);
  double c = std::nearbyint((x + static_cast<double>(L.min)) / static_cast<double>(L.scale)) + L.zero;
  c = std::min(std::max(c, 0.0), static_cast<double>(L.qmax));
  return static_cast<int>(c);
}

/// Nearest finite half (overflow clamps to ±65504).
inline std::uint16_t to_half(double v) {
  if (!std::isfinite(v)) v = 0;
  std::uint16_t h = float_to_half(static_cast<float>(v));
  if ((h & 0x7c00u) == 0x7c00u) h = static_cast<std::uint16_t>((h & 0x8000u) | 0x7bffu);
  return h;
}

/// The neighbouring finite half, k steps up (k > 0) or down (k < 0) the real line.
inline std::uint16_t half_step(std::uint16_t h, int k) {
  int key = (h & 0x8000u) ? -static_cast<int>(h & 0x7fffu) : static_cast<int>(h);
  key = std::min(std::max(key + k, -0x7bff), 0x7bff);
  return key < 0 ? static_cast<std::uint16_t>(0x8000u | static_cast<unsigned>(-key)) : static_cast<std::uint16_t>(key);
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

/// Weighted least squares x ≈ a·c − m with m ≥ 0 (the formats' mins are non-negative multiples of dmin ≥ 0).
inline void ls_affine(const double* x, const double* wt, const int* c, int n, double& a, double& m) {
  double sw = 0, sc = 0, scc = 0, sx = 0, scx = 0;
  for (int i = 0; i < n; ++i) {
    sw += wt[i];
    sc += wt[i] * c[i];
    scc += wt[i] * c[i] * c[i];
    sx += wt[i] * x[i];
    scx += wt[i] * c[i] * x[i];
  }
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

/// Weighted least squares x ≈ a·k (signed codes k).
inline double ls_scale(const double* x, const double* wt, const int* k, int n) {
  double skk = 0, skx = 0;
  for (int i = 0; i < n; ++i) {
    skk += wt[i] * k[i] * k[i];
    skx += wt[i] * k[i] * x[i];
  }
  return skk > 0 ? skx / skk : 0;
}

/// Continuous fit of an asymmetric sub-block (codes 0..nmax, value a·c − m): a search over ranges and
/// a least-squares step per candidate, the error measured with the codes re-rounded.
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
  int c[256];
  auto err_of = [&](double a, double m) {
    double e = 0;
    for (int i = 0; i < n; ++i) {
      const double ci = a > 0 ? std::min(std::max(std::nearbyint((x[i] + m) / a), 0.0), static_cast<double>(nmax)) : 0.0;
      const double r = a * ci - m - x[i];
      e += wt[i] * r * r;
    }
    return e;
  };
  double best_a = (xmax - xmin) / nmax, best_m = -xmin;
  double best = err_of(best_a, best_m);
  for (int k = -16; k <= 10; ++k) {
    const double iscale = nmax * (1.0 + 0.02 * k) / (xmax - xmin);
    for (int i = 0; i < n; ++i)
      c[i] = static_cast<int>(std::min(std::max(std::nearbyint(iscale * (x[i] - xmin)), 0.0), static_cast<double>(nmax)));
    double a, m;
    ls_affine(x, wt, c, n, a, m);
    for (int it = 0; it < 2; ++it) {  // one Lloyd step more: re-round, refit
      const double e = err_of(a, m);
      if (e < best) {
        best = e;
        best_a = a;
        best_m = m;
      }
      if (!(a > 0)) break;
      for (int i = 0; i < n; ++i)
        c[i] = static_cast<int>(std::min(std::max(std::nearbyint((x[i] + m) / a), 0.0), static_cast<double>(nmax)));
      ls_affine(x, wt, c, n, a, m);
    }
  }
  a_out = best_a;
  m_out = best_m;
}

/// Continuous fit of a symmetric sub-block (value a·k, k ∈ −kneg..kpos; a may be negative).
inline double fit_sym(const double* x, const double* wt, int n, int kneg, int kpos) {
  double xm = 0;
  for (int i = 0; i < n; ++i)
    if (std::abs(x[i]) > std::abs(xm)) xm = x[i];
  if (xm == 0) return 0;
  int k[256];
  auto round_k = [&](double a) {
    for (int i = 0; i < n; ++i)
      k[i] = static_cast<int>(std::min(std::max(std::nearbyint(x[i] / a), static_cast<double>(-kneg)), static_cast<double>(kpos)));
  };
  auto err_of = [&](double a) {
    double e = 0;
    for (int i = 0; i < n; ++i) {
      const double ki = a != 0 ? std::min(std::max(std::nearbyint(x[i] / a), static_cast<double>(-kneg)), static_cast<double>(kpos)) : 0.0;
      const double r = a * ki - x[i];
      e += wt[i] * r * r;
    }
    return e;
  };
  double best_a = xm / -kneg, best = err_of(best_a);
  for (int side = 0; side < 2; ++side) {
    for (int s = 0; s <= 20; ++s) {  // the largest weight at code t, from half a code beyond the end inwards
      const double t = side == 0 ? -(kneg + 0.5) + 0.1 * s : (kpos + 0.5) - 0.1 * s;
      double a = xm / t;
      for (int it = 0; it < 2; ++it) {
        round_k(a);
        a = ls_scale(x, wt, k, n);
        if (a == 0) break;
        const double e = err_of(a);
        if (e < best) {
          best = e;
          best_a = a;
        }
      }
    }
  }
  return best_a;
}

/// Fit one block of the format on target x (n weights) with element weights wt.
inline void fit_block(const Format& f, const double* x, const double* wt, Params& p, int rounds) {
  double a[16] = {}, m[16] = {};
  for (int j = 0; j < f.nsub; ++j) {
    if (f.has_min)
      fit_asym(x + j * f.sub, wt + j * f.sub, f.sub, f.qmax, a[j], m[j]);
    else
      a[j] = fit_sym(x + j * f.sub, wt + j * f.sub, f.sub, f.zero, f.qmax - f.zero);
  }
  p = Params{};
  if (!f.has_ints) {
    p.d = to_half(a[0]);
  } else if (f.has_min) {
    double amax = 0, mmax = 0;
    for (int j = 0; j < f.nsub; ++j) {
      amax = std::max(amax, a[j]);
      mmax = std::max(mmax, m[j]);
    }
    p.d = to_half(amax / f.smax);
    p.dmin = to_half(mmax / f.mmax);
    const double d = half_to_float(p.d), dm = half_to_float(p.dmin);
    for (int j = 0; j < f.nsub; ++j) {
      p.ls[j] = d > 0 ? clampi(a[j] / d, 0, f.smax) : 0;
      p.lm[j] = dm > 0 ? clampi(m[j] / dm, 0, f.mmax) : 0;
    }
  } else {  // Q3_K: signed integers; try the largest scale at s = −32 (one more level) and at s = 31
    int js = 0;
    for (int j = 1; j < f.nsub; ++j)
      if (std::abs(a[j]) > std::abs(a[js])) js = j;
    double best = std::numeric_limits<double>::infinity();
    for (int t : {f.smin, f.smax}) {
      Params c;
      c.d = to_half(a[js] / t);
      const double d = half_to_float(c.d);
      for (int j = 0; j < f.nsub; ++j) c.ls[j] = d != 0 ? clampi(a[j] / d, f.smin, f.smax) : 0;
      const double e = block_error(f, c, x, wt);
      if (e < best) {
        best = e;
        p = c;
      }
    }
  }

  // Alternating refinement on the format's own lattice; every accepted step lowers the error.
  double err[16];
  double total = 0;
  for (int j = 0; j < f.nsub; ++j) total += (err[j] = sub_error(f, p, j, x + j * f.sub, wt + j * f.sub));
  int codes[256];
  double u[256], v[256];
  for (int round = 0; round < rounds; ++round) {
    bool improved = false;
    // (1) the integers of each sub-block: neighbours and the least-squares target for its nearest codes
    if (f.has_ints) {
      const double d = half_to_float(p.d), dm = half_to_float(p.dmin);
      for (int j = 0; j < f.nsub; ++j) {
        const double* xs = x + j * f.sub;
        const double* ws = wt + j * f.sub;
        const SubLattice L = lattice(f, p, j);
        for (int i = 0; i < f.sub; ++i) codes[i] = nearest_code(L, xs[i]) - f.zero;
        int cl[4] = {p.ls[j] - 1, p.ls[j], p.ls[j] + 1, p.ls[j]};
        int cm[4] = {p.lm[j] - 1, p.lm[j], p.lm[j] + 1, p.lm[j]};
        if (f.has_min) {
          double aa, mm;
          ls_affine(xs, ws, codes, f.sub, aa, mm);
          if (d != 0) cl[3] = clampi(aa / d, f.smin, f.smax);
          if (dm != 0) cm[3] = clampi(mm / dm, 0, f.mmax);
        } else {
          const double aa = ls_scale(xs, ws, codes, f.sub);
          if (d != 0) cl[3] = clampi(aa / d, f.smin, f.smax);
        }
        const int nm = f.has_min ? 4 : 1;
        const int ls0 = p.ls[j], lm0 = p.lm[j];
        int bl = ls0, bm = lm0;
        double be = err[j];
        for (int il = 0; il < 4; ++il)
          for (int im = 0; im < nm; ++im) {
            const int l = std::min(std::max(cl[il], f.smin), f.smax);
            const int mm = f.has_min ? std::min(std::max(cm[im], 0), f.mmax) : 0;
            if (l == ls0 && mm == lm0) continue;
            p.ls[j] = l;
            p.lm[j] = mm;
            const double e = sub_error(f, p, j, xs, ws);
            if (e < be) {
              be = e;
              bl = l;
              bm = mm;
            }
          }
        p.ls[j] = bl;
        p.lm[j] = bm;
        if (be < err[j]) {
          total += be - err[j];
          err[j] = be;
          improved = true;
        }
      }
    }
    // (2) d (and dmin) by weighted least squares for the current nearest codes, then the nearby halves
    {
      for (int j = 0; j < f.nsub; ++j) {
        const SubLattice L = lattice(f, p, j);
        for (int i = 0; i < f.sub; ++i) {
          const int idx = j * f.sub + i;
          const int c = nearest_code(L, x[idx]) - f.zero;
          u[idx] = f.has_ints ? static_cast<double>(p.ls[j]) * c : static_cast<double>(c);
          v[idx] = f.has_min ? -static_cast<double>(p.lm[j]) : 0.0;
        }
      }
      double suu = 0, suv = 0, svv = 0, sux = 0, svx = 0;
      for (int i = 0; i < f.n; ++i) {
        suu += wt[i] * u[i] * u[i];
        suv += wt[i] * u[i] * v[i];
        svv += wt[i] * v[i] * v[i];
        sux += wt[i] * u[i] * x[i];
        svx += wt[i] * v[i] * x[i];
      }
      double al = half_to_float(p.d), be = half_to_float(p.dmin);
      const double det = suu * svv - suv * suv;
      if (f.has_min && det > 1e-12 * suu * svv && det > 0) {
        al = (svv * sux - suv * svx) / det;
        be = (suu * svx - suv * sux) / det;
      } else if (suu > 0) {
        al = (sux - be * suv) / suu;
      }
      const std::uint16_t hd = to_half(al), hm = f.has_min ? to_half(be) : p.dmin;
      Params bestp = p;
      double beste = total;
      const int spread = f.has_min ? 1 : 2;
      for (int kd = -spread; kd <= spread; ++kd)
        for (int km = -1; km <= 1; ++km) {
          if (!f.has_min && km != 0) continue;
          Params c = p;
          c.d = half_step(hd, kd);
          c.dmin = f.has_min ? half_step(hm, km) : p.dmin;
          if (f.has_min && half_to_float(c.dmin) < 0) continue;
          if (c.d == p.d && c.dmin == p.dmin) continue;
          const double e = block_error(f, c, x, wt);
          if (e < beste) {
            beste = e;
            bestp = c;
          }
        }
      if (beste < total) {
        p = bestp;
        total = 0;
        for (int j = 0; j < f.nsub; ++j) total += (err[j] = sub_error(f, p, j, x + j * f.sub, wt + j * f.sub));
        improved = true;
      }
    }
    if (!improved) break;
  }
}

/// Refit of one block with the codes fixed: minimize eᵀHb e + 2eᵀg over the format's parameters, where
/// e = x − q(params), Hb the block's diagonal block of H + λI and g = the coupling to the rest of the row
/// (H_{b,rest} e_rest). Method: coordinate descent, every step exact on ggml's float32 values:
///   (a) d (and dmin) jointly by least squares (q is linear in them for fixed integers and codes: a 2×2
///       system), rounded to the nearest halves; the best of the 3×3 (or 5) neighbouring halves by the
///       quadratic model, accepted if the exact objective goes down;
///   (b) each sub-block's integer ls_j (then lm_j): the 1-D quadratic's minimizer rounded, and its two
///       neighbours, accepted if the exact objective change is negative.
inline void refit_block(const Format& f, const double* x, const int* codes, const Eigen::Ref<const Eigen::MatrixXd>& Hb,
                        const Eigen::VectorXd& g, Params& p, int rounds) {
  const int n = f.n;
  Eigen::VectorXd q(n), e(n), r(n), u(n), v(n), tmp(n), xv(n);
  for (int i = 0; i < n; ++i) xv[i] = x[i];
  auto values = [&](const Params& pp, Eigen::VectorXd& out) {
    for (int j = 0; j < f.nsub; ++j) {
      const SubLattice L = lattice(f, pp, j);
      for (int i = 0; i < f.sub; ++i) out[j * f.sub + i] = static_cast<double>(L.value(codes[j * f.sub + i]));
    }
  };
  values(p, q);
  e = xv - q;
  r.noalias() = Hb * e;
  r += g;
  double fval = e.dot(r) + e.dot(g);
  const Eigen::VectorXd b = Hb * xv + g;
  for (int round = 0; round < rounds; ++round) {
    bool improved = false;
    // (a) d, dmin
    for (int j = 0; j < f.nsub; ++j)
      for (int i = 0; i < f.sub; ++i) {
        const int idx = j * f.sub + i;
        const int c = codes[idx] - f.zero;
        u[idx] = f.has_ints ? static_cast<double>(p.ls[j]) * c : static_cast<double>(c);
        v[idx] = f.has_min ? -static_cast<double>(p.lm[j]) : 0.0;
      }
    tmp.noalias() = Hb * u;
    const double A11 = u.dot(tmp), A12 = v.dot(tmp), r1 = u.dot(b), r2 = v.dot(b);
    double A22 = 0;
    if (f.has_min) {
      tmp.noalias() = Hb * v;
      A22 = v.dot(tmp);
    }
    double al = half_to_float(p.d), be = half_to_float(p.dmin);
    const double det = A11 * A22 - A12 * A12;
    if (f.has_min && det > 1e-12 * std::abs(A11 * A22) && det > 0) {
      al = (A22 * r1 - A12 * r2) / det;
      be = (A11 * r2 - A12 * r1) / det;
    } else if (A11 > 0) {
      al = (r1 - be * A12) / A11;
    }
    auto model = [&](double a, double m) { return a * a * A11 + 2 * a * m * A12 + m * m * A22 - 2 * (a * r1 + m * r2); };
    const std::uint16_t hd = to_half(al), hm = f.has_min ? to_half(be) : p.dmin;
    Params bestp = p;
    double bestm = model(half_to_float(p.d), half_to_float(p.dmin));
    const int spread = f.has_min ? 1 : 2;
    for (int kd = -spread; kd <= spread; ++kd)
      for (int km = -1; km <= 1; ++km) {
        if (!f.has_min && km != 0) continue;
        Params c = p;
        c.d = half_step(hd, kd);
        c.dmin = f.has_min ? half_step(hm, km) : p.dmin;
        const double mv = model(half_to_float(c.d), half_to_float(c.dmin));
        if (mv < bestm) {
          bestm = mv;
          bestp = c;
        }
      }
    if (bestp.d != p.d || bestp.dmin != p.dmin) {
      Eigen::VectorXd q2(n), e2(n), r2v(n);
      values(bestp, q2);
      e2 = xv - q2;
      r2v.noalias() = Hb * e2;
      r2v += g;
      const double f2 = e2.dot(r2v) + e2.dot(g);
      if (f2 < fval) {
        p = bestp;
        q = q2;
        e = e2;
        r = r2v;
        fval = f2;
        improved = true;
      }
    }
    // (b) the integers, one at a time
    if (f.has_ints) {
      const double d = half_to_float(p.d), dm = half_to_float(p.dmin);
      Eigen::VectorXd pv(f.sub), dq(f.sub), de(f.sub);
      for (int j = 0; j < f.nsub; ++j) {
        const int s0 = j * f.sub;
        const auto HSS = Hb.block(s0, s0, f.sub, f.sub);
        for (int which = 0; which < (f.has_min ? 2 : 1); ++which) {
          int* slot = which == 0 ? &p.ls[j] : &p.lm[j];
          const int lo = which == 0 ? f.smin : 0, hi = which == 0 ? f.smax : f.mmax;
          for (int i = 0; i < f.sub; ++i) pv[i] = which == 0 ? d * (codes[s0 + i] - f.zero) : -dm;
          const double den = pv.dot(HSS * pv);
          if (!(den > 0)) continue;
          const double num = pv.dot(r.segment(s0, f.sub));
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
          if (best == cur) continue;
          *slot = best;
          const SubLattice L = lattice(f, p, j);
          for (int i = 0; i < f.sub; ++i) dq[i] = static_cast<double>(L.value(codes[s0 + i])) - q[s0 + i];
          de = -dq;
          const double df = 2 * de.dot(r.segment(s0, f.sub)) + de.dot(HSS * de);
          if (df < 0) {
            q.segment(s0, f.sub) += dq;
            e.segment(s0, f.sub) += de;
            r.noalias() += Hb.middleCols(s0, f.sub) * de;
            fval += df;
            improved = true;
          } else {
            *slot = cur;
          }
        }
      }
    }
    if (!improved) break;
  }
}

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
      pptq::detail::fail(std::string("ggml grid: row ") + pptq::detail::str(row) + ", sub-block " + pptq::detail::str(gi) +
                         " is not a lattice of " + type_name(f.type) + " (scale " + pptq::detail::str(grid.scale(row, gi)) +
                         ", zero " + pptq::detail::str(grid.zero(row, gi)) + ", min " + pptq::detail::str(grid.min(row, gi)) + ")");
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
}

inline void check_cols(const Format& f, Index cols) {
  if (cols < f.n || cols % f.n != 0)
    throw std::invalid_argument("pptq: ggml " + std::string(type_name(f.type)) + " needs cols to be a positive multiple of " +
                                std::to_string(f.n) + " (its block size), got cols = " + std::to_string(cols));
}

}  // namespace fitdetail

// ----------------------------------------------------------------------------------------------------
// 1. The fit
// ----------------------------------------------------------------------------------------------------

/// Fits `type`'s grid for W (rows × cols, original column order) once, importance-weighted (importance:
/// cols non-negative values, e.g. diag(XᵀX); empty: all ones). Throws std::invalid_argument if cols is not
/// a multiple of the format's block size, or on a bad importance vector.
template <typename DerivedW>
Grid<typename DerivedW::Scalar> fit_format_grid(const Eigen::MatrixBase<DerivedW>& W, Type type,
                                                const Eigen::Ref<const Eigen::VectorXd>& importance,
                                                const FitOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  const Format f = format_of(type);
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Index rows = W0.rows(), cols = W0.cols();
  fitdetail::check_cols(f, cols);
  pptq::detail::require_finite(W0, "W");
  if (importance.size() != 0 && importance.size() != cols)
    pptq::detail::fail("ggml grid: importance has " + pptq::detail::str(importance.size()) + " entries but W has " +
                       pptq::detail::str(cols) + " columns");
  for (Index j = 0; j < importance.size(); ++j)
    if (!(importance[j] >= 0) || !std::isfinite(importance[j]))
      pptq::detail::fail("ggml grid: importance[" + pptq::detail::str(j) + "] = " + pptq::detail::str(importance[j]) +
                         " must be finite and >= 0");
  if (opt.refine_rounds < 0) pptq::detail::fail("FitOptions.refine_rounds must be >= 0");

  Grid<Scalar> g;
  g.spec.bits = f.bits;
  g.spec.group_size = f.sub;
  g.spec.static_groups = true;
  g.lo = 0;
  g.hi = f.qmax;
  g.group_size = f.sub;
  g.dynamic = false;
  const Index groups = cols / f.sub, blocks = cols / f.n;
  g.scale.resize(rows, groups);
  g.zero.resize(rows, groups);
  g.min.resize(rows, groups);
  g.group_index.resize(cols);
  for (Index j = 0; j < cols; ++j) g.group_index[j] = static_cast<std::int32_t>(j / f.sub);

  pptq::detail::for_row_chunks(rows, pptq::detail::resolve_threads(opt.threads), [&](Index r0, Index r1) {
    std::vector<double> x(static_cast<std::size_t>(cols)), wt(static_cast<std::size_t>(f.n));
    for (Index r = r0; r < r1; ++r) {
      double row_ms = 0;
      for (Index j = 0; j < cols; ++j) {
        x[j] = static_cast<double>(W0(r, j));
        row_ms += x[j] * x[j];
      }
      row_ms /= static_cast<double>(cols);
      for (Index b = 0; b < blocks; ++b) {
        const double* xb = x.data() + b * f.n;
        double s2 = 0;
        if (f.type == Type::Q4_0) {
          s2 = row_ms;
        } else {
          for (int i = 0; i < f.n; ++i) s2 += xb[i] * xb[i];
          s2 /= f.n;
          if (f.type == Type::Q4_K || f.type == Type::Q3_K) s2 *= 2;
        }
        double sum = 0;
        for (int i = 0; i < f.n; ++i) {
          const double imp = importance.size() ? importance[b * f.n + i] : 1.0;
          wt[i] = imp * std::sqrt(s2 + xb[i] * xb[i]);
          sum += wt[i];
        }
        if (!(sum > 0))  // no importance anywhere in the block: any fit is as good; use the plain weighting
          for (int i = 0; i < f.n; ++i) wt[i] = std::sqrt(s2 + xb[i] * xb[i]) + 1e-30;
        fitdetail::Params p;
        fitdetail::fit_block(f, xb, wt.data(), p, opt.refine_rounds);
        fitdetail::params_to_grid(f, p, g, r, b);
      }
    }
  });
  return g;
}

/// Unweighted fit (importance all ones).
template <typename DerivedW>
Grid<typename DerivedW::Scalar> fit_format_grid(const Eigen::MatrixBase<DerivedW>& W, Type type, const FitOptions& opt = {}) {
  return fit_format_grid(W, type, Eigen::VectorXd(), opt);
}

// ----------------------------------------------------------------------------------------------------
// 3. The refit after the sweep
// ----------------------------------------------------------------------------------------------------

/// With the codes of `r` fixed, refits every row's d, dmin and sub-block integers to lower
/// (w − q)ᵀ(H + λI)(w − q) (w the ORIGINAL row of W; λ: RefitOptions.damp). Super-blocks are visited in
/// order, each solved with the exact coupling to the rest of the row (refit_block); a row keeps its old
/// parameters unless its objective went down. Updates r.grid, r.dequantized, r.energy (per row the refit
/// objective, which for H = XᵀX and λ = r.lambda is ‖X(w − q)‖² + λ‖w − q‖², as before) and r.proxy_loss.
template <typename DerivedW, typename DerivedH, typename Scalar>
RefitReport refit_format_grid(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                              QuantResult<Scalar>& r, Type type, const RefitOptions& opt = {}) {
  const Format f = format_of(type);
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Index rows = W0.rows(), cols = W0.cols();
  fitdetail::check_cols(f, cols);
  fitdetail::check_format_grid(f, r.grid, rows, cols);
  if (r.codes.rows() != rows || r.codes.cols() != cols) pptq::detail::fail("ggml refit: the result's codes do not match W");
  if (H.rows() != cols || H.cols() != cols) pptq::detail::fail("ggml refit: H must be cols × cols");
  if (opt.damp && (!(*opt.damp >= 0) || !std::isfinite(*opt.damp))) pptq::detail::fail("RefitOptions.damp must be >= 0");
  if (opt.rounds < 0) pptq::detail::fail("RefitOptions.rounds must be >= 0");
  Eigen::MatrixXd Hl = H.derived().template cast<double>();
  pptq::detail::require_finite(Hl, "H");
  RefitReport rep;
  rep.lambda = opt.damp ? *opt.damp * Hl.diagonal().mean() : r.lambda;
  Hl.diagonal().array() += rep.lambda;
  rep.row_before.resize(rows);
  rep.row_after.resize(rows);
  std::vector<char> changed(static_cast<std::size_t>(rows), 0);
  const Index blocks = cols / f.n;

  // Rows are refitted a chunk at a time so that every product with H is a GEMM over the chunk's rows
  // (R = E·H once, then one rank-f.n update per super-block), not a matrix-vector product per row: the
  // per-row form streamed all of H from memory several times per row.
  pptq::detail::for_row_chunks(rows, pptq::detail::resolve_threads(opt.threads), [&](Index r0, Index r1) {
    const Index nr = r1 - r0;
    Eigen::MatrixXd Wc(nr, cols), E(nr, cols), R(nr, cols), Dlt(nr, f.n), Eold(nr, f.n), Gb(nr, f.n), DH(nr, f.n);
    Eigen::VectorXd g(f.n), wb(f.n);
    std::vector<std::vector<fitdetail::Params>> ps(static_cast<std::size_t>(nr));
    std::vector<int> codes(static_cast<std::size_t>(nr * cols));
    auto value = [&](Index ii, Index c) {
      const Index b = c / f.n, j = (c % f.n) / f.sub;
      return static_cast<double>(fitdetail::lattice(f, ps[ii][b], static_cast<int>(j)).value(codes[ii * cols + c]));
    };
    for (Index ii = 0; ii < nr; ++ii) {
      const Index i = r0 + ii;
      ps[ii].resize(static_cast<std::size_t>(blocks));
      for (Index b = 0; b < blocks; ++b) ps[ii][b] = fitdetail::params_from_grid(f, r.grid, i, b);
      for (Index c = 0; c < cols; ++c) {
        Wc(ii, c) = static_cast<double>(W0(i, c));
        codes[ii * cols + c] = r.codes(i, c);
        E(ii, c) = Wc(ii, c) - value(ii, c);
      }
    }
    R.noalias() = E * Hl;
    Eigen::VectorXd before(nr), after(nr);
    for (Index ii = 0; ii < nr; ++ii) before[ii] = E.row(ii).dot(R.row(ii));
    after = before;
    for (Index b = 0; b < blocks; ++b) {
      const Index s0 = b * f.n, s1 = s0 + f.n;
      const auto Hb = Hl.block(s0, s0, f.n, f.n);
      // R's segment b is (H·e)_b for the current e (every earlier block's change is in it), so the pull of
      // the rest of the row on block b is R_b − H_bb·e_b: one GEMM for the chunk's rows.
      Eold = E.middleCols(s0, f.n);
      Gb = R.middleCols(s0, f.n);
      Gb.noalias() -= Eold * Hb;
      for (Index ii = 0; ii < nr; ++ii) {
        g = Gb.row(ii).transpose();
        wb = Wc.row(ii).segment(s0, f.n).transpose();
        fitdetail::refit_block(f, wb.data(), codes.data() + ii * cols + s0, Hb, g, ps[ii][b], opt.rounds);
        for (Index c = s0; c < s1; ++c) E(ii, c) = Wc(ii, c) - value(ii, c);
      }
      Dlt = E.middleCols(s0, f.n) - Eold;
      // The objective's change, exactly: e'ᵀHe' − eᵀHe = 2·Δᵀ(He)_b + ΔᵀH_bbΔ (Δ lives in block b).
      DH.noalias() = Dlt * Hb;
      for (Index ii = 0; ii < nr; ++ii)
        after[ii] += 2 * Dlt.row(ii).dot(R.row(ii).segment(s0, f.n)) + Dlt.row(ii).dot(DH.row(ii));
      // Only the blocks still to come read R again: update their columns (H symmetric: rows s0.. of H are
      // its columns s0..). Half the FLOPs of updating all of R.
      if (s1 < cols) R.rightCols(cols - s1).noalias() += Dlt * Hl.block(s0, s1, f.n, cols - s1);
    }
    for (Index ii = 0; ii < nr; ++ii) {
      const Index i = r0 + ii;
      rep.row_before[i] = before[ii];
      // A margin far above the rounding of the running update: a row is only changed when it improves.
      if (after[ii] < before[ii] * (1 - 1e-12)) {
        rep.row_after[i] = after[ii];
        changed[i] = 1;
        for (Index b = 0; b < blocks; ++b) fitdetail::params_to_grid(f, ps[ii][b], r.grid, i, b);
        for (Index c = 0; c < cols; ++c) r.dequantized(i, c) = static_cast<Scalar>(value(ii, c));
      } else {
        rep.row_after[i] = before[ii];
      }
    }
  });
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

/// ggml's bytes of (codes, grid): rows × row_bytes(type, cols), rows one after another. The grid must be a
/// format grid of `type` (from fit_format_grid, possibly refitted); codes in 0..qmax. Throws
/// std::invalid_argument otherwise.
template <typename Scalar>
std::vector<std::uint8_t> to_bytes(const MatrixXi32& codes, const Grid<Scalar>& grid, Type type) {
  const Format f = format_of(type);
  const Index rows = codes.rows(), cols = codes.cols();
  fitdetail::check_cols(f, cols);
  fitdetail::check_format_grid(f, grid, rows, cols);
  const std::size_t rb = row_bytes(type, cols);
  std::vector<std::uint8_t> out(rb * static_cast<std::size_t>(rows));
  const Index blocks = cols / f.n;
  for (Index i = 0; i < rows; ++i)
    for (Index b = 0; b < blocks; ++b) {
      const fitdetail::Params p = fitdetail::params_from_grid(f, grid, i, b);
      std::uint8_t* dst = out.data() + static_cast<std::size_t>(i) * rb + static_cast<std::size_t>(b) * block_bytes(type);
      auto code = [&](int t) {
        const std::int32_t c = codes(i, b * f.n + t);
        if (c < 0 || c > f.qmax)
          pptq::detail::fail("ggml to_bytes: code (" + pptq::detail::str(i) + ", " + pptq::detail::str(b * f.n + t) + ") = " +
                             pptq::detail::str(c) + " is outside 0.." + pptq::detail::str(f.qmax));
        return static_cast<std::uint8_t>(c);
      };
      // One block of any of the four formats: d (and dmin), the sub-block integers, the codes, packed.
      auto emit = [&](auto blk) {
        using B = decltype(blk);
        blk.d = p.d;
        if constexpr (std::is_same_v<B, BlockQ4K> || std::is_same_v<B, BlockQ2K>) {
          blk.dmin = p.dmin;
          for (int j = 0; j < B::n_sub; ++j) {
            blk.ls[j] = static_cast<std::uint8_t>(p.ls[j]);
            blk.lm[j] = static_cast<std::uint8_t>(p.lm[j]);
          }
        } else if constexpr (std::is_same_v<B, BlockQ3K>) {
          for (int j = 0; j < B::n_sub; ++j) blk.s[j] = static_cast<std::int8_t>(p.ls[j]);
        }
        for (int t = 0; t < B::n; ++t) blk.q[t] = code(t);
        pack(blk, dst);
      };
      switch (type) {
        case Type::Q4_0: emit(BlockQ40{}); break;
        case Type::Q4_K: emit(BlockQ4K{}); break;
        case Type::Q3_K: emit(BlockQ3K{}); break;
        case Type::Q2_K: emit(BlockQ2K{}); break;
        default: break;
      }
    }
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
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (Index i = 0; i < rows; ++i) {
    dequantize_row(type, bytes.data() + static_cast<std::size_t>(i) * rb, cols, row.data());
    for (Index j = 0; j < cols; ++j) out(i, j) = row[j];
  }
  return out;
}

// ----------------------------------------------------------------------------------------------------
// 5. Convenience
// ----------------------------------------------------------------------------------------------------

namespace fitdetail {
template <typename Scalar>
void finish(GgmlQuant<Scalar>& out, Type type) {
  out.type = type;
  out.codes = out.result.codes;
  out.bytes = to_bytes(out.result, type);
  out.dequantized = dequantize_bytes(out.bytes, out.result.rows(), out.result.cols(), type);
  // The engine evaluates value(code) in Scalar; for double and a non-zero min that is the exact difference,
  // which ggml rounds to float: store ggml's values so that the result matches the bytes bit for bit.
  out.result.dequantized = out.dequantized.template cast<Scalar>();
  out.bits_per_weight =
      8.0 * static_cast<double>(out.bytes.size()) / static_cast<double>(out.result.rows() * out.result.cols());
}
}  // namespace fitdetail

/// fit (importance diag(H)) → OPTQ onto the fitted grid → refit → bytes. W rows × cols, H cols × cols
/// (any positive multiple of XᵀX). If the sweep fails (Status::NumericalIssue) the result holds no bytes.
template <typename DerivedW, typename DerivedH>
GgmlQuant<typename DerivedW::Scalar> quantize_optq(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                                   Type type, const QuantizeOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  const Format f = format_of(type);
  fitdetail::check_cols(f, W.cols());
  if (H.rows() != W.cols() || H.cols() != W.cols())
    pptq::detail::fail("ggml quantize: H is " + pptq::detail::str(H.rows()) + " × " + pptq::detail::str(H.cols()) +
                       " but W has " + pptq::detail::str(W.cols()) + " columns");
  const Eigen::VectorXd imp = H.diagonal().template cast<double>().cwiseMax(0.0);
  GgmlQuant<Scalar> out;
  out.type = type;
  const Grid<Scalar> grid = fit_format_grid(W, type, imp, opt.fit);
  out.result = optq(W, H, grid, opt.optq);
  if (!out.result.ok()) return out;
  if (opt.refit) {
    RefitOptions ro = opt.refit_options;
    if (ro.threads == 0) ro.threads = opt.optq.threads;
    out.refit = refit_format_grid(W, H, out.result, type, ro);
  }
  fitdetail::finish(out, type);
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
  QuantResult<Scalar>& r = out.result;
  r.method = Method::RTN;
  r.grid = fit_format_grid(W0, type, importance, opt);
  const Index rows = W0.rows(), cols = W0.cols();
  r.codes.resize(rows, cols);
  r.dequantized.resize(rows, cols);
  r.clipped = Eigen::VectorXi::Zero(rows);
  r.perm.resize(static_cast<std::size_t>(cols));
  for (Index j = 0; j < cols; ++j) r.perm[j] = j;
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) {
      const Lattice<Scalar> L = r.grid.lattice(i, j);
      bool clip = false;
      const std::int32_t c = L.nearest(W0(i, j), clip);
      r.codes(i, j) = c;
      r.dequantized(i, j) = L.value(c);
      r.clipped[i] += clip ? 1 : 0;
    }
  fitdetail::finish(out, type);
  return out;
}

}  // namespace pptq::ggml
