// The format fit's searches run their candidates side by side in vector lanes (include/pptq/ggml/grid.hpp:
// AsymLanes, SymLanes, SubLanes, table_level). The bytes depend on every comparison of the search, so each
// must give what trying one candidate after the other gives. The loops below are those references,
// written plainly; the data has exact ties (weights on the lattice, halfway between levels), zeros,
// constant sub-blocks and outliers. Bit for bit in IEEE arithmetic; but the compiler may fuse a multiply
// and an add differently in the lanes than in a scalar loop (FMA contraction, GCC's default), and where two
// candidates' errors are within rounding of each other the other one can then win. The affine fit's
// least-squares solve is such a place (its scale and min differ in the last bits in about one trial in
// eight here, though the grids of the bench's layers are the same), so it is checked as: the same scale
// and min, or a choice of the same error to rounding.
#include <catch2/catch.hpp>

#include <pptq/ggml/grid.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

namespace gg = pptq::ggml;
namespace gd = pptq::ggml::detail;

const gg::Type kTypes[] = {gg::Type::Q4_0, gg::Type::Q4_K, gg::Type::Q3_K, gg::Type::Q2_K, gg::Type::Q8_0,
                           gg::Type::Q5_0, gg::Type::Q5_K, gg::Type::Q6_K, gg::Type::IQ4_NL, gg::Type::IQ4_XS};

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

bool within_rounding(double a, double b) { return same_bits(a, b) || std::abs(a - b) <= 1e-13 * std::max(std::abs(a), std::abs(b)); }

/// A sub-block of kind k (0..5): Gaussian; on a lattice (ties); a few outliers; all zero; constant; one
/// non-zero weight.
std::vector<double> sub_block(int kind, int n, std::mt19937_64& rng) {
  std::normal_distribution<double> nd(0.0, 0.02);
  std::vector<double> x(static_cast<std::size_t>(n));
  for (double& v : x) v = nd(rng);
  if (kind == 1)
    for (double& v : x) v = 0.0025 * std::round(v / 0.0025) + (rng() % 4 == 0 ? 0.00125 : 0.0);
  if (kind == 2) x[rng() % n] *= 40;
  if (kind == 3) std::fill(x.begin(), x.end(), 0.0);
  if (kind == 4) std::fill(x.begin(), x.end(), -0.013);
  if (kind == 5) {
    std::fill(x.begin(), x.end(), 0.0);
    x[rng() % n] = 0.05;
  }
  return x;
}

std::vector<double> weights(int n, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.1, 3.0);
  std::vector<double> w(static_cast<std::size_t>(n));
  for (double& v : w) v = u(rng);
  return w;
}

// ---- the references: one candidate after the other --------------------------------------------------

/// Weighted error of x against a·c − m with c the nearest code in 0..nmax; those codes into c.
double affine_error_codes(const double* x, const double* wt, int n, int nmax, double a, double m, int* c) {
  double e = 0;
  for (int i = 0; i < n; ++i) {
    c[i] = a > 0 ? static_cast<int>(std::min(std::max(std::nearbyint((x[i] + m) / a), 0.0), static_cast<double>(nmax))) : 0;
    const double r = a * c[i] - m - x[i];
    e += wt[i] * r * r;
  }
  return e;
}

/// fit_asym's search: 27 ranges, each with a least-squares step, its error, and one Lloyd step more.
void reference_fit_asym(const double* x, const double* wt, int n, int nmax, double& a_out, double& m_out) {
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
  double best_a = (xmax - xmin) / nmax, best_m = -xmin;
  double best = affine_error_codes(x, wt, n, nmax, best_a, best_m, c);
  for (int k = -16; k <= 10; ++k) {
    const double iscale = nmax * (1.0 + 0.02 * k) / (xmax - xmin);
    for (int i = 0; i < n; ++i)
      c[i] = static_cast<int>(std::min(std::max(std::nearbyint(iscale * (x[i] - xmin)), 0.0), static_cast<double>(nmax)));
    double a, m;
    gd::ls_affine(x, wt, c, n, a, m);
    for (int it = 0; it < 2; ++it) {
      const double e = affine_error_codes(x, wt, n, nmax, a, m, c);
      if (e < best) {
        best = e;
        best_a = a;
        best_m = m;
      }
      if (it == 1 || !(a > 0)) break;
      gd::ls_affine(x, wt, c, n, a, m);
    }
  }
  a_out = best_a;
  m_out = best_m;
}

/// fit_sym's search: the largest weight at 21 positions near either end, two rounds of "least-squares
/// scale, nearest codes" each.
double reference_fit_sym(const gg::Format& f, const double* x, const double* wt, int n) {
  double xm = 0;
  for (int i = 0; i < n; ++i)
    if (std::abs(x[i]) > std::abs(xm)) xm = x[i];
  if (xm == 0) return 0;
  const int first = gd::multiplier(f, 0), last = gd::multiplier(f, f.qmax);
  const int gap_first = gd::multiplier(f, 1) - first, gap_last = last - gd::multiplier(f, f.qmax - 1);
  int k[256];
  double best_a = xm / first, best = gd::sym_error(f, x, wt, n, best_a, k);
  for (int side = 0; side < 2; ++side)
    for (int s = 0; s <= 20; ++s) {
      const double t = side == 0 ? (first - 0.5 * gap_first) + 0.1 * gap_first * s : (last + 0.5 * gap_last) - 0.1 * gap_last * s;
      double a = xm / t;
      for (int i = 0; i < n; ++i) k[i] = gd::sym_multiplier(f, x[i], a);
      for (int it = 0; it < 2; ++it) {
        a = gd::ls_scale(x, wt, k, n);
        if (a == 0) break;
        const double e = gd::sym_error(f, x, wt, n, a, k);
        if (e < best) {
          best = e;
          best_a = a;
        }
      }
    }
  return best_a;
}

}  // namespace

TEST_CASE("ggml lanes: the affine fit's candidates side by side equal the one-by-one search", "[ggml_lanes]") {
  std::mt19937_64 rng(11);
  for (const int sub : {16, 32})
    for (const int nmax : {3, 15, 31})
      for (int trial = 0; trial < 300; ++trial) {
        const auto x = sub_block(trial % 6, sub, rng);
        const auto w = weights(sub, rng);
        double a = 0, m = 0, ra = 0, rm = 0;
        gd::fit_asym(x.data(), w.data(), sub, nmax, a, m);
        reference_fit_asym(x.data(), w.data(), sub, nmax, ra, rm);
        if (same_bits(a, ra) && same_bits(m, rm)) continue;
        INFO("sub " << sub << " nmax " << nmax << " trial " << trial << ": a " << a << " / " << ra << ", m " << m << " / " << rm);
        REQUIRE(within_rounding(gd::affine_error(x.data(), w.data(), sub, nmax, a, m),
                                gd::affine_error(x.data(), w.data(), sub, nmax, ra, rm)));
      }
}

TEST_CASE("ggml lanes: the symmetric fit's candidates side by side equal the one-by-one search", "[ggml_lanes]") {
  std::mt19937_64 rng(12);
  for (const gg::Type t : kTypes) {
    const gg::Format f = gg::format_of(t);
    if (f.has_min) continue;
    for (int trial = 0; trial < 300; ++trial) {
      const auto x = sub_block(trial % 6, f.sub, rng);
      const auto w = weights(f.sub, rng);
      INFO(gg::type_name(t) << " trial " << trial);
      REQUIRE(same_bits(gd::fit_sym(f, x.data(), w.data(), f.sub), reference_fit_sym(f, x.data(), w.data(), f.sub)));
    }
  }
}

TEST_CASE("ggml lanes: a table's nearest level by selects is the scan's, ties and NaN included", "[ggml_lanes]") {
  double lv[16];
  for (int c = 0; c < 16; ++c) lv[c] = gg::iq4_levels[c];
  std::vector<double> zs = {-1e9, -200, 1e9, 200, std::numeric_limits<double>::quiet_NaN(), 0.0, -0.0};
  for (int c = 0; c < 16; ++c) {
    zs.push_back(lv[c]);
    zs.push_back(std::nextafter(lv[c], 1e9));
    zs.push_back(std::nextafter(lv[c], -1e9));
    if (c + 1 < 16) zs.push_back((lv[c] + lv[c + 1]) / 2);  // exact ties: the even index wins
  }
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<double> u(-140, 130);
  for (int i = 0; i < 2000; ++i) zs.push_back(u(rng));
  for (const double z : zs) {
    bool clipped = false;
    const int code = pptq::detail::nearest_level(gg::iq4_levels, 16, z, clipped);
    INFO("z = " << z);
    REQUIRE(gd::table_level(lv, z) == lv[code]);
  }
}

TEST_CASE("ggml lanes: sub-block errors of several lattices side by side equal sub_error", "[ggml_lanes]") {
  std::mt19937_64 rng(14);
  for (const gg::Type t : kTypes) {
    const gg::Format f = gg::format_of(t);
    if (!gd::SubLanes::apply(f)) continue;
    for (int trial = 0; trial < 200; ++trial) {
      const auto x = sub_block(trial % 6, f.sub, rng);
      const auto w = weights(f.sub, rng);
      gd::Params p[gd::SubLanes::L];
      gd::SubLanes lanes;
      const int nc = 1 + static_cast<int>(rng() % gd::SubLanes::L);
      for (int l = 0; l < gd::SubLanes::L; ++l) {
        // halves around 0.002 (some 0: a lattice of scale 0), integers over their whole range
        p[l].d = gg::float_to_half(static_cast<float>(rng() % 5 == 0 ? 0.0 : 0.0005 * (1 + rng() % 8)));
        p[l].dmin = gg::float_to_half(static_cast<float>(0.0004 * (rng() % 6)));
        p[l].ls[0] = f.has_ints ? f.smin + static_cast<int>(rng() % (f.smax - f.smin + 1)) : 0;
        p[l].lm[0] = f.has_min ? static_cast<int>(rng() % (f.mmax + 1)) : 0;
      }
      lanes.set(nc, [&](int l) { return gd::lattice(f, p[l], 0); });
      lanes.errors(f, x.data(), w.data(), nc);
      for (int l = 0; l < nc; ++l) {
        INFO(gg::type_name(t) << " trial " << trial << " lane " << l);
        REQUIRE(same_bits(lanes.e[l], gd::sub_error(f, p[l], 0, x.data(), w.data())));
      }
    }
  }
}
