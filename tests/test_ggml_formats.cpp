// The block formats of docs/formats.md §1b (Q8_0, Q5_0, Q5_K, Q6_K, IQ4_NL, IQ4_XS): hand-made blocks
// against hand-computed bytes and floats, the exactness of their float32 products, llama.cpp's own blocks
// (tests/data/ggml) on their sub-block lattices, the non-uniform lattice of the engine (Lattice with a
// table of levels), and OPTQ into each format against plain rounding into it.
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <pptq/ggml/grid.hpp>
#include <pptq/io/npy.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

namespace gg = pptq::ggml;
using pptq::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

const gg::Type kNewTypes[] = {gg::Type::Q8_0, gg::Type::Q5_0,   gg::Type::Q5_K,
                              gg::Type::Q6_K, gg::Type::IQ4_NL, gg::Type::IQ4_XS};

std::uint32_t bits(float f) { return gg::float_bits(f); }

std::vector<std::uint8_t> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

template <class B>
std::vector<std::uint8_t> packed(const B& b) {
  std::vector<std::uint8_t> out(B::bytes);
  gg::pack(b, out.data());
  B back;
  gg::unpack(out.data(), back);
  REQUIRE(back == b);  // unpack(pack(b)) == b for every hand-made block
  return out;
}

template <class B>
std::vector<float> decoded(const B& b) {
  std::vector<float> w(B::n);
  gg::dequantize(b, w.data());
  return w;
}

const int kT[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/// The table as the engine's levels (double).
std::vector<double> levels_d() { return std::vector<double>(kT, kT + 16); }

}  // namespace

TEST_CASE("ggml new formats: bits per weight are exactly 8.5, 5.5, 5.5, 6.5625, 4.5, 4.25", "[ggml]") {
  const double expect[] = {8.5, 5.5, 5.5, 6.5625, 4.5, 4.25};
  for (int t = 0; t < 6; ++t) {
    INFO(gg::type_name(kNewTypes[t]));
    CHECK(gg::bits_per_weight(kNewTypes[t]) == expect[t]);
    for (std::int64_t k = 1; k <= 64; k *= 2) {
      const std::int64_t n = 256 * k;
      CHECK(static_cast<double>(gg::row_bytes(kNewTypes[t], n)) * 8.0 / static_cast<double>(n) == expect[t]);
    }
  }
  for (int i = 0; i < 16; ++i) CHECK(gg::iq4_levels[i] == kT[i]);
}

TEST_CASE("ggml hand-made Q8_0 block", "[ggml]") {
  gg::BlockQ80 b;
  b.d = 0x3800;  // 0.5
  for (int l = 0; l < 32; ++l) b.q[l] = static_cast<std::uint8_t>(8 * l);  // int8 8l − 128
  const auto bytes = packed(b);
  CHECK(bytes[0] == 0x00);
  CHECK(bytes[1] == 0x38);
  CHECK(bytes[2] == 0x80);       // −128
  CHECK(bytes[2 + 1] == 0x88);   // −120
  CHECK(bytes[2 + 16] == 0x00);  // 0
  CHECK(bytes[2 + 31] == 0x78);  // 120
  const auto w = decoded(b);
  for (int l = 0; l < 32; ++l) REQUIRE(w[l] == 0.5f * static_cast<float>(8 * l - 128));
}

TEST_CASE("ggml hand-made Q5_0 block", "[ggml]") {
  gg::BlockQ50 b;
  b.d = 0x3c00;  // 1.0
  for (int i = 0; i < 32; ++i) b.q[i] = static_cast<std::uint8_t>(i);
  auto bytes = packed(b);
  // qh (little-endian u32): bit 4 of u_i at bit i: set for i = 16..31
  CHECK(bytes[2] == 0x00);
  CHECK(bytes[3] == 0x00);
  CHECK(bytes[4] == 0xff);
  CHECK(bytes[5] == 0xff);
  for (int l = 0; l < 16; ++l) CHECK(bytes[6 + l] == 0x11 * l);  // low nibbles of u_l and u_{l+16} are both l
  auto w = decoded(b);
  for (int i = 0; i < 32; ++i) REQUIRE(w[i] == static_cast<float>(i - 16));
  for (int i = 0; i < 32; ++i) b.q[i] = static_cast<std::uint8_t>(i == 5 ? 16 : i == 20 ? 15 : 0);
  bytes = packed(b);
  CHECK(bytes[2] == 0x20);  // bit 5
  CHECK(bytes[3] == 0x00);
  CHECK(bytes[4] == 0x00);
  CHECK(bytes[5] == 0x00);
  CHECK(bytes[6 + 4] == 0xf0);  // u_20 = 15 in the high nibble of qs[4]
  CHECK(bytes[6 + 5] == 0x00);  // u_5 = 16: low nibble 0
  w = decoded(b);
  CHECK(w[5] == 0.0f);
  CHECK(w[20] == -1.0f);
  CHECK(w[0] == -16.0f);
}

TEST_CASE("ggml hand-made Q5_K block", "[ggml]") {
  gg::BlockQ5K b;
  b.d = 0x3c00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  for (int j = 0; j < 8; ++j) {
    b.ls[j] = static_cast<std::uint8_t>(j + 1);
    b.lm[j] = static_cast<std::uint8_t>(2 * j);
  }
  for (int i = 0; i < 256; ++i) b.q[i] = static_cast<std::uint8_t>(i % 32);
  auto bytes = packed(b);
  const std::uint8_t head[16] = {0x00, 0x3c, 0x00, 0x38, 1, 2, 3, 4, 0, 2, 4, 6, 0x85, 0xa6, 0xc7, 0xe8};  // as Q4_K
  for (int k = 0; k < 16; ++k) CHECK(bytes[k] == head[k]);
  for (int l = 0; l < 32; ++l) {
    INFO("l " << l);
    CHECK(bytes[16 + l] == (l >= 16 ? 0xff : 0x00));  // bit 4 of u = l in all eight chunk halves
    CHECK(bytes[48 + l] == (0x11 * (l & 15)));
  }
  auto w = decoded(b);
  for (int i = 0; i < 256; ++i) REQUIRE(w[i] == static_cast<float>((i / 32 + 1) * (i % 32) - i / 32));

  // single bits: u[64·1 + 3] = 16 (bit 2c of qh[3] with c = 1), u[64·2 + 32 + 5] = 31 (bit 2c + 1 of qh[5], c = 2)
  for (auto& u : b.q) u = 0;
  b.q[64 + 3] = 16;
  b.q[128 + 32 + 5] = 31;
  bytes = packed(b);
  for (int l = 0; l < 32; ++l) CHECK(bytes[16 + l] == (l == 3 ? 0x04 : l == 5 ? 0x20 : 0x00));
  for (int k = 0; k < 128; ++k) CHECK(bytes[48 + k] == (k == 64 + 5 ? 0xf0 : 0x00));
  w = decoded(b);
  CHECK(w[64 + 3] == 16.0f * 3.0f - 0.5f * 4.0f);     // sub-block 2: ls 3, lm 4
  CHECK(w[128 + 32 + 5] == 31.0f * 6.0f - 0.5f * 10.0f);  // sub-block 5: ls 6, lm 10
}

TEST_CASE("ggml hand-made Q6_K block", "[ggml]") {
  gg::BlockQ6K b;
  b.d = 0x3c00;  // 1.0
  for (int j = 0; j < 16; ++j) b.s[j] = static_cast<std::int8_t>(j - 9);
  for (auto& u : b.q) u = 32;  // q = 0: low nibble 0, top bits 2
  b.q[0] = 63;                 // ql[0] low 15, qh[0] bits 0–1: 3
  b.q[33] = 0x1a;              // ql[33] low 0xa, qh[1] bits 2–3: 1
  b.q[66] = 0x15;              // ql[2] high 5, qh[2] bits 4–5: 1
  b.q[99] = 0x3c;              // ql[35] high 0xc, qh[3] bits 6–7: 3
  b.q[132] = 0x11;             // half 1: ql[64 + 4] low 1, qh[32 + 4] bits 0–1: 1
  const auto bytes = packed(b);
  for (int k = 0; k < 128; ++k) {
    INFO("ql[" << k << "]");
    const int want = k == 0 ? 0x0f : k == 33 ? 0x0a : k == 2 ? 0x50 : k == 35 ? 0xc0 : k == 68 ? 0x01 : 0x00;
    CHECK(bytes[k] == want);
  }
  for (int k = 0; k < 64; ++k) {
    INFO("qh[" << k << "]");
    const int want = k == 0 ? 0xab : k == 1 ? 0xa6 : k == 2 ? 0x9a : k == 3 ? 0xea : k == 36 ? 0xa9 : 0xaa;
    CHECK(bytes[128 + k] == want);
  }
  for (int j = 0; j < 16; ++j) CHECK(bytes[192 + j] == static_cast<std::uint8_t>(j - 9));
  CHECK(bytes[208] == 0x00);
  CHECK(bytes[209] == 0x3c);
  const auto w = decoded(b);
  CHECK(w[0] == -279.0f);  // s −9, q 31
  CHECK(w[33] == 42.0f);   // s −7, q −6
  CHECK(w[66] == 55.0f);   // s −5, q −11
  CHECK(w[99] == -84.0f);  // s −3, q 28
  CHECK(w[132] == 15.0f);  // s −1, q −15
  for (int i = 0; i < 256; ++i)
    if (i != 0 && i != 33 && i != 66 && i != 99 && i != 132) REQUIRE(w[i] == 0.0f);
}

TEST_CASE("ggml hand-made IQ4_NL block", "[ggml]") {
  gg::BlockIQ4NL b;
  b.d = 0x3800;  // 0.5
  for (int i = 0; i < 32; ++i) b.q[i] = static_cast<std::uint8_t>(i % 16);
  const auto bytes = packed(b);
  CHECK(bytes[0] == 0x00);
  CHECK(bytes[1] == 0x38);
  for (int l = 0; l < 16; ++l) CHECK(bytes[2 + l] == 0x11 * l);
  const auto w = decoded(b);
  for (int i = 0; i < 32; ++i) REQUIRE(w[i] == 0.5f * static_cast<float>(kT[i % 16]));
  gg::SubLattice L[1];
  gg::sub_lattices(b, L);
  CHECK(L[0].scale == 0.5f);
  CHECK(L[0].table == gg::iq4_levels);
  CHECK(L[0].multiplier(3) == -65);
}

TEST_CASE("ggml hand-made IQ4_XS block", "[ggml]") {
  gg::BlockIQ4XS b;
  b.d = 0x3800;  // 0.5
  const std::uint8_t ls[8] = {0, 63, 32, 31, 1, 62, 16, 48};
  for (int j = 0; j < 8; ++j) b.ls[j] = ls[j];
  for (int i = 0; i < 256; ++i) b.q[i] = static_cast<std::uint8_t>((i / 2) % 16);
  const auto bytes = packed(b);
  CHECK(bytes[0] == 0x00);
  CHECK(bytes[1] == 0x38);
  CHECK(bytes[2] == 0x6c);  // scales_h: top two bits of ls_j at bits 2j, 2j + 1: 0xdc6c
  CHECK(bytes[3] == 0xdc);
  CHECK(bytes[4] == 0xf0);  // scales_l: low nibbles, even j low, odd j high
  CHECK(bytes[5] == 0xf0);
  CHECK(bytes[6] == 0xe1);
  CHECK(bytes[7] == 0x00);
  for (int j = 0; j < 8; ++j)
    for (int l = 0; l < 16; ++l) {
      INFO("sub-block " << j << ", l " << l);
      CHECK(bytes[8 + 16 * j + l] == ((l / 2) | (8 + l / 2) << 4));  // k[32j + l] = l/2, k[32j + 16 + l] = 8 + l/2
    }
  const auto w = decoded(b);
  for (int i = 0; i < 256; ++i) {
    const float dl = 0.5f * static_cast<float>(ls[i / 32] - 32);
    REQUIRE(w[i] == dl * static_cast<float>(kT[(i / 2) % 16]));
  }
  CHECK(w[0] == 2032.0f);       // −16 · −127
  CHECK(w[63] == 1751.5f);      // 15.5 · 113
  CHECK(w[112] == -0.5f);       // −0.5 · 1
  CHECK(w[224 + 20] == 200.0f); // 8 · 25
}

TEST_CASE("ggml pack rejects out-of-range fields of the new formats", "[ggml]") {
  std::uint8_t buf[256];
  gg::BlockQ50 a;
  a.q[7] = 32;
  CHECK_THROWS_WITH(gg::pack(a, buf), Catch::Contains("q5_0") && Catch::Contains("q[7] = 32"));
  gg::BlockQ5K k;
  k.lm[3] = 64;
  CHECK_THROWS_WITH(gg::pack(k, buf), Catch::Contains("lm[3] = 64"));
  k.lm[3] = 0;
  k.q[200] = 32;
  CHECK_THROWS_WITH(gg::pack(k, buf), Catch::Contains("q[200] = 32"));
  gg::BlockQ6K s;
  s.q[9] = 64;
  CHECK_THROWS_WITH(gg::pack(s, buf), Catch::Contains("q[9] = 64"));
  gg::BlockIQ4NL n;
  n.q[31] = 16;
  CHECK_THROWS_WITH(gg::pack(n, buf), Catch::Contains("q[31] = 16"));
  gg::BlockIQ4XS x;
  x.ls[7] = 64;
  CHECK_THROWS_WITH(gg::pack(x, buf), Catch::Contains("ls[7] = 64"));
  x.ls[7] = 0;
  x.q[0] = 200;
  CHECK_THROWS_AS(gg::pack(x, buf), std::invalid_argument);
}

TEST_CASE("the new formats' products are exact in float32, so FMA contraction cannot matter", "[ggml]") {
  // multiplier first (d·k1 for the sub-block integer k1), then times the code's multiplier k2: both exact
  // in float for every half d of a full binade (every significand), the subnormals and the top binade.
  std::vector<float> ds;
  for (std::uint32_t h = 1; h < 0x0400u; ++h) ds.push_back(gg::half_to_float(static_cast<std::uint16_t>(h)));
  for (std::uint32_t h = 0x3c00u; h < 0x4000u; ++h) ds.push_back(gg::half_to_float(static_cast<std::uint16_t>(h)));
  for (std::uint32_t h = 0x7800u; h < 0x7c00u; ++h) ds.push_back(gg::half_to_float(static_cast<std::uint16_t>(h)));
  auto count_inexact = [&](const std::vector<int>& k1s, const std::vector<int>& k2s) {
    long bad = 0;
    for (float d : ds)
      for (int k1 : k1s) {
        const float a = d * static_cast<float>(k1);
        bad += static_cast<double>(a) != static_cast<double>(d) * k1;
        for (int k2 : k2s) bad += static_cast<double>(a * static_cast<float>(k2)) != static_cast<double>(a) * k2;
      }
    return bad;
  };
  auto range = [](int lo, int hi) {
    std::vector<int> v;
    for (int k = lo; k <= hi; ++k) v.push_back(k);
    return v;
  };
  const std::vector<int> table(kT, kT + 16);
  CHECK(count_inexact({1}, range(-128, 127)) == 0);     // Q8_0
  CHECK(count_inexact({1}, range(-16, 15)) == 0);       // Q5_0
  CHECK(count_inexact(range(0, 63), range(0, 31)) == 0);  // Q5_K (and dmin·lm)
  CHECK(count_inexact(range(-128, 127), range(-32, 31)) == 0);  // Q6_K
  CHECK(count_inexact({1}, table) == 0);                 // IQ4_NL
  CHECK(count_inexact(range(-32, 31), table) == 0);      // IQ4_XS
}

TEST_CASE("ggml golden data of the new formats: every weight lies on its sub-block's lattice", "[ggml][golden]") {
  // Independent of the codes our decoder reads: search the sub-block's lattice (its scale, min and table
  // from the block's parameters) for ggml's float; every one must be a lattice point, bit for bit.
  const std::string dir = test::data_path("ggml/");
  for (gg::Type t : kNewTypes)
    for (const std::string suffix : {"", "+imat"}) {
      const std::string name = std::string(gg::type_name(t)) + suffix;
      INFO(name);
      const std::vector<std::uint8_t> bin = slurp(dir + name + ".bin");
      const Eigen::MatrixXf want = pptq::io::read_npy_matrix<float>(dir + name + ".dequant.npy");
      REQUIRE(want.rows() == 6);
      REQUIRE(want.cols() == 512);
      const std::size_t rb = gg::row_bytes(t, 512);
      long off_lattice = 0, checked = 0;
      gg::visit_block(t, [&](auto blk) {
        using B = decltype(blk);
        for (Index r = 0; r < 6; ++r)
          for (Index k = 0; k < 512 / B::n; ++k) {
            gg::unpack(bin.data() + static_cast<std::size_t>(r) * rb + static_cast<std::size_t>(k) * B::bytes, blk);
            gg::SubLattice lat[B::n_sub];
            gg::sub_lattices(blk, lat);
            for (int i = 0; i < B::n; ++i) {
              const gg::SubLattice& L = lat[i / B::sub_size];
              bool on = false;
              for (int c = 0; c <= L.qmax && !on; ++c) on = bits(L.value(c)) == bits(want(r, k * B::n + i));
              off_lattice += !on;
              ++checked;
            }
          }
      });
      CHECK(checked == 6 * 512);
      CHECK(off_lattice == 0);
    }
}

TEST_CASE("a lattice with a table of levels: nearest, neighbours, clipping, step", "[ggml][grid]") {
  const std::vector<double> T = levels_d();
  const pptq::Lattice<double> L{0.5, 0, 0, 0, 15, T.data()};
  CHECK(L.value(0) == -63.5);
  CHECK(L.value(8) == 0.5);
  CHECK(L.value(15) == 56.5);
  // largest gap of the table (113 − 89 = 24) times the scale: what the bounds use as δ
  CHECK(L.step() == 12.0);
  bool clip = false;
  // the midpoint of levels 7 (−10) and 8 (1) is −4.5: a tie goes to the even code 8
  CHECK(L.nearest(0.5 * -4.5, clip) == 8);
  CHECK_FALSE(clip);
  CHECK(L.nearest(0.5 * -4.5 - 1e-9, clip) == 7);
  CHECK(L.nearest(0.5 * 20.0, clip) == 10);  // nearest of 13 and 25 is 25 (|20 − 25| < |20 − 13|)
  CHECK(L.nearest(0.5 * 18.0, clip) == 9);
  // clipping: more than half the outer gap beyond the ends (23 below, 24 above)
  CHECK(L.nearest(0.5 * (-127 - 11.4), clip) == 0);
  CHECK_FALSE(clip);
  CHECK(L.nearest(0.5 * (-127 - 11.6), clip) == 0);
  CHECK(clip);
  CHECK(L.nearest(0.5 * (113 + 11.9), clip) == 15);
  CHECK_FALSE(clip);
  CHECK(L.nearest(0.5 * (113 + 12.1), clip) == 15);
  CHECK(clip);
  // a negative scale mirrors the table
  const pptq::Lattice<double> N{-0.5, 0, 0, 0, 15, T.data()};
  CHECK(N.nearest(63.5, clip) == 0);
  CHECK(N.nearest(-56.0, clip) == 15);
  // scale 0: every code is worth −min; the level nearest 0 is taken
  const pptq::Lattice<double> Z{0.0, 0, 0.25, 0, 15, T.data()};
  CHECK(Z.nearest(3.0, clip) == 8);
  CHECK_FALSE(clip);
  CHECK(Z.value(8) == -0.25);

  // stochastic: only the two neighbours, the upper one with probability (z − L_k)/(L_{k+1} − L_k), so the
  // expected level is z; outside the table its end, clipped
  const double z = 30.0;  // between 25 (code 10) and 38 (code 11): p = 5/13
  double mean = 0;
  const int n = 13000;
  for (int i = 0; i < n; ++i) {
    const double u = (i + 0.5) / n;  // a uniform grid of u: the mean is exact up to 1/n
    const std::int32_t c = L.stochastic(0.5 * z, u, clip);
    REQUIRE((c == 10 || c == 11));
    REQUIRE_FALSE(clip);
    mean += T[static_cast<std::size_t>(c)];
  }
  CHECK(mean / n == Approx(z).margin(13.0 / n));
  CHECK(L.stochastic(0.5 * 25.0, 0.999, clip) == 10);  // on a level: that level
  CHECK(L.stochastic(0.5 * 200.0, 0.0, clip) == 15);
  CHECK(clip);
  CHECK(L.stochastic(0.5 * -130.0, 0.999, clip) == 0);
  CHECK(clip);
  CHECK(L.stochastic(0.5 * -127.0, 0.5, clip) == 0);
  CHECK_FALSE(clip);

  // a grid checks its levels
  pptq::Grid<double> g;
  g.scale = MatrixXd::Ones(1, 1);
  g.zero = MatrixXd::Zero(1, 1);
  g.min = MatrixXd::Zero(1, 1);
  g.lo = 0;
  g.hi = 15;
  g.group_index = pptq::VectorXi32::Zero(4);
  g.levels = T;
  CHECK_NOTHROW(g.check(1, 4));
  CHECK(g.lattice(0, 2).levels == g.levels.data());
  g.levels.pop_back();
  CHECK_THROWS_AS(g.check(1, 4), std::invalid_argument);
  g.levels = T;
  std::swap(g.levels[3], g.levels[4]);
  CHECK_THROWS_WITH(g.check(1, 4), Catch::Contains("strictly increasing"));
}

TEST_CASE("a table that is uniform gives the uniform lattice's codes in every algorithm", "[ggml][grid]") {
  // The engine rounds a grid with levels element by element and a uniform grid vectorized: with levels
  // code − zero they must agree exactly (codes, values, clipping, energy), nearest and stochastic.
  std::mt19937_64 rng(21);
  const Index rows = 24, cols = 96;
  const MatrixXd W = test::gaussian(rows, cols, rng, 0.05);
  const MatrixXd X = test::structured_inputs(256, cols, rng);
  const MatrixXd H = X.transpose() * X;
  pptq::GridSpec spec;
  spec.bits = 4;
  spec.group_size = 32;
  spec.static_groups = true;
  std::vector<Index> perm(static_cast<std::size_t>(cols));
  for (Index j = 0; j < cols; ++j) perm[j] = j;
  const pptq::Grid<double> uni = pptq::fit_grid(W, spec, perm);
  pptq::Grid<double> tab = uni;
  for (int c = uni.lo; c <= uni.hi; ++c) tab.levels.push_back(c - 8.0);
  tab.zero.setConstant(8.0);  // fit_grid's asymmetric zeros vary; give both the same zero 8
  pptq::Grid<double> uni8 = uni;
  uni8.zero.setConstant(8.0);
  for (const pptq::Rounding rounding : {pptq::Rounding::Nearest, pptq::Rounding::Stochastic}) {
    pptq::OptqOptions o;
    o.rounding = rounding;
    o.seed = 3;
    o.act_order = true;
    const auto a = pptq::optq(W, H, uni8, o);
    const auto b = pptq::optq(W, H, tab, o);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a.codes == b.codes);
    CHECK(a.dequantized == b.dequantized);
    CHECK(a.clipped == b.clipped);
    CHECK((a.energy - b.energy).cwiseAbs().maxCoeff() == 0.0);
    CHECK(a.clipped.sum() > 0);  // the comparison covers clipping too
  }
}

TEST_CASE("the bounds take a non-uniform lattice's largest gap as its step", "[ggml][bounds]") {
  // An IQ4_NL grid widened so that nothing clips: the l2 bound (δ/2·C2 per row with δ the largest gap times
  // the scale) holds for OPTQ on it.
  std::mt19937_64 rng(5);
  const Index rows = 16, cols = 128;
  const MatrixXd W = test::gaussian(rows, cols, rng, 0.05);
  const MatrixXd X = test::structured_inputs(512, cols, rng);
  pptq::Grid<double> g = gg::fit_format_grid(W, gg::Type::IQ4_NL);
  g.scale *= 3.0;
  pptq::OptqOptions o;
  o.damp = 0.1;
  const auto r = pptq::optq(W, MatrixXd(X.transpose() * X), g, o);
  REQUIRE(r.ok());
  REQUIRE(r.clipped.sum() == 0);
  const pptq::LayerReport rep = pptq::layer_report(r, W, X);
  REQUIRE(rep.l2.holds.has_value());
  CHECK(*rep.l2.holds);
  CHECK(rep.holds);
  // every rounding error is within half the largest gap
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) CHECK(r.grid.lattice(i, j).step() == std::abs(g.scale(i, j / 32)) * 24.0);
}

TEST_CASE("OPTQ into each new format beats plain rounding into it on a correlated layer", "[ggml_grid]") {
  std::mt19937_64 rng(7);
  const Index rows = 32, cols = 512;
  std::student_t_distribution<double> t(4.0);
  MatrixXd W(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) W(i, j) = 0.02 * t(rng);
  // rank 16 carries most of the energy of the inputs
  const MatrixXd X = test::gaussian(2048, 16, rng) * test::gaussian(16, cols, rng) * (2.5 / 4.0) + test::gaussian(2048, cols, rng);
  const MatrixXd H = X.transpose() * X;
  std::string table = "format   rtn/optq (calibration error)   refit gain\n";
  for (gg::Type type : kNewTypes) {
    INFO(gg::type_name(type));
    const auto q = gg::quantize_optq(W, H, type);
    REQUIRE(q.result.ok());
    const auto r = gg::quantize_rtn(W, VectorXd(H.diagonal()), type);
    // the bytes are ggml's, and decode to the result's weights
    CHECK(q.bits_per_weight == gg::bits_per_weight(type));
    CHECK(gg::dequantize_bytes(q.bytes, rows, cols, type) == q.dequantized);
    CHECK(q.result.dequantized == q.dequantized.cast<double>());
    const double eo = (X * (W - q.dequantized.cast<double>()).transpose()).squaredNorm();
    const double er = (X * (W - r.dequantized.cast<double>()).transpose()).squaredNorm();
    char line[120];
    std::snprintf(line, sizeof line, "%-7s  %8.3f                       %8.4f\n", gg::type_name(type), er / eo, q.refit.gain());
    table += line;
    CHECK(er / eo > 3.0);  // measured 5.6 (q5_K) .. 6.9 (q8_0)
    CHECK(q.refit.after <= q.refit.before);
  }
  WARN(table);
}
