// Tests for the .npy reader/writer and AtomicFile, and the kinds of error they throw (pptq/error.hpp).
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "pptq/error.hpp"
#include "pptq/io/atomic_file.hpp"
#include "pptq/io/npy.hpp"

namespace fs = std::filesystem;
using pptq::io::DType;
using pptq::io::NpyArray;
using pptq::io::NpyError;
using Bytes = std::vector<std::uint8_t>;

// A malformed .npy is a data error: callers that sort errors by kind see it as one.
static_assert(std::is_base_of<pptq::DataError, NpyError>::value, "NpyError is a pptq::DataError");

namespace {

// A .npy image with the given header text, written the way numpy lays it out: magic, version, length,
// header padded with spaces and ended by '\n' so the data is 64-byte aligned (unless pad is false).
Bytes make_npy(const std::string& dict, const Bytes& data, int major = 1, bool pad = true) {
  std::string h = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  if (pad) {
    std::size_t total = prefix + h.size() + 1;
    h.append((64 - total % 64) % 64, ' ');
    h += '\n';
  }
  Bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<std::uint8_t>(major), 0};
  const std::uint32_t len = static_cast<std::uint32_t>(h.size());
  out.push_back(static_cast<std::uint8_t>(len));
  out.push_back(static_cast<std::uint8_t>(len >> 8));
  if (major != 1) {
    out.push_back(static_cast<std::uint8_t>(len >> 16));
    out.push_back(static_cast<std::uint8_t>(len >> 24));
  }
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Element bytes in a chosen byte order, built by hand rather than with the library's own helpers.
template <typename T>
Bytes elems(std::initializer_list<T> vals, bool big_endian = false) {
  Bytes out;
  for (T v : vals) {
    unsigned char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // host order; the test machine is little-endian (checked below)
    if (big_endian) std::reverse(b, b + sizeof(T));
    for (unsigned char c : b) out.push_back(c);  // (insert(range) trips a GCC 12 -Wstringop-overflow false positive)
  }
  return out;
}

Bytes half_elems(std::initializer_list<std::uint16_t> bits, bool big_endian = false) {
  return elems<std::uint16_t>(bits, big_endian);
}

NpyArray parse(const Bytes& b) { return pptq::io::parse_npy(b.data(), b.size()); }

std::string hdr(const std::string& descr, const std::string& shape, bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape +
         ", }";
}

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// A unique scratch directory, removed with everything in it when the test ends.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    for (int i = 0; i < 100; ++i) {
      fs::path p = fs::temp_directory_path() /
                   ("pptq_npy_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
      if (fs::create_directory(p)) {
        path = p;
        return;
      }
    }
    throw std::runtime_error("cannot create a temporary directory");
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

Bytes read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace

TEST_CASE("npy: test machine is little-endian (the hand-made buffers assume it)", "[npy]") {
  const std::uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  REQUIRE(b == 1);
}

TEST_CASE("npy: numpy-style v1 header, f32, C order", "[npy]") {
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const Bytes b = make_npy(dict, elems<float>({1, 2, 3, 4, 5, 6}));
  REQUIRE((b.size() - 24) % 64 == 0);  // header padded as numpy does
  const NpyArray a = parse(b);
  CHECK(a.dtype == DType::f32);
  CHECK(a.shape == std::vector<std::int64_t>{2, 3});
  CHECK_FALSE(a.fortran_order);
  CHECK(a.size() == 6);
  CHECK(a.bytes.size() == 24);
  const Eigen::MatrixXf m = pptq::io::to_matrix<float>(a);
  REQUIRE(m.rows() == 2);
  REQUIRE(m.cols() == 3);
  CHECK(m(0, 0) == 1);
  CHECK(m(0, 2) == 3);
  CHECK(m(1, 0) == 4);
  CHECK(m(1, 2) == 6);
}

TEST_CASE("npy: version 2.0 and 3.0 headers", "[npy]") {
  const Bytes data = elems<double>({1.5, -2.5});
  for (int major : {2, 3}) {
    INFO("version " << major);
    const NpyArray a = parse(make_npy(hdr("<f8", "(2,)"), data, major));
    CHECK(a.dtype == DType::f64);
    CHECK(a.shape == std::vector<std::int64_t>{2});
    const Eigen::MatrixXd m = pptq::io::to_matrix<double>(a);
    CHECK(m(0, 0) == 1.5);
    CHECK(m(1, 0) == -2.5);
  }
  // 3.0 headers are utf8; non-ASCII text can only appear inside a string, and there it is reported
  // (escaped) rather than misparsed.
  const Bytes u = make_npy("{'descr': '<f\xc3\xa9', 'fortran_order': False, 'shape': (), }", Bytes(8), 3);
  REQUIRE_THROWS_WITH(parse(u), Catch::Contains("unsupported dtype '<f\\xc3\\xa9'"));
}

TEST_CASE("npy: every supported dtype converts to double", "[npy]") {
  struct Case {
    std::string descr;
    Bytes data;
    DType dtype;
    std::vector<double> expect;
  };
  const std::vector<Case> cases = {
      {"<f4", elems<float>({0.5f, -1e30f, 3.0f}), DType::f32, {0.5, double(-1e30f), 3.0}},
      {"<f8", elems<double>({0.1, -0.0, 1e300}), DType::f64, {0.1, -0.0, 1e300}},
      {"|i1", elems<std::int8_t>({-128, 0, 127}), DType::i8, {-128, 0, 127}},
      {"|u1", elems<std::uint8_t>({0, 1, 255}), DType::u8, {0, 1, 255}},
      {"<i2", elems<std::int16_t>({-32768, 5, 32767}), DType::i16, {-32768, 5, 32767}},
      {"<u2", elems<std::uint16_t>({0, 7, 65535}), DType::u16, {0, 7, 65535}},
      {"<i4", elems<std::int32_t>({-2147483647 - 1, 9, 2147483647}), DType::i32, {-2147483648.0, 9, 2147483647}},
      {"<u4", elems<std::uint32_t>({0, 11, 4294967295u}), DType::u32, {0, 11, 4294967295.0}},
      {"<i8", elems<std::int64_t>({-(std::int64_t(1) << 62), 13, std::int64_t(1) << 53}), DType::i64,
       {-4611686018427387904.0, 13, 9007199254740992.0}},
      {"<u8", elems<std::uint64_t>({0, 17, std::uint64_t(1) << 63}), DType::u64, {0, 17, 9223372036854775808.0}},
      // binary16: 1.0, -2.0, 65504 (max), smallest subnormal 2^-24
      {"<f2", half_elems({0x3c00, 0xc000, 0x7bff}), DType::f16, {1.0, -2.0, 65504.0}},
      {"<f2", half_elems({0x0001, 0x8000, 0x0200}), DType::f16, {std::ldexp(1.0, -24), -0.0, std::ldexp(1.0, -15)}},
  };
  for (const Case& c : cases) {
    INFO("descr " << c.descr);
    const NpyArray a = parse(make_npy(hdr(c.descr, "(3,)"), c.data));
    CHECK(a.dtype == c.dtype);
    const Eigen::MatrixXd m = pptq::io::to_matrix<double>(a);
    REQUIRE(m.rows() == 3);
    REQUIRE(m.cols() == 1);
    for (int i = 0; i < 3; ++i) CHECK(same_bits(m(i, 0), c.expect[static_cast<std::size_t>(i)]));
  }
  // f16 infinities and NaN
  const Eigen::MatrixXf h =
      pptq::io::to_matrix<float>(parse(make_npy(hdr("<f2", "(3,)"), half_elems({0x7c00, 0xfc00, 0x7e00}))));
  CHECK(std::isinf(h(0, 0)));
  CHECK(h(0, 0) > 0);
  CHECK(std::isinf(h(1, 0)));
  CHECK(h(1, 0) < 0);
  CHECK(std::isnan(h(2, 0)));
}

TEST_CASE("npy: C and Fortran order give the same matrix", "[npy]") {
  // The 2x3 matrix [[1, 2, 3], [4, 5, 6]] in both layouts.
  const NpyArray c = parse(make_npy(hdr("<i4", "(2, 3)", false), elems<std::int32_t>({1, 2, 3, 4, 5, 6})));
  const NpyArray f = parse(make_npy(hdr("<i4", "(2, 3)", true), elems<std::int32_t>({1, 4, 2, 5, 3, 6})));
  CHECK(f.fortran_order);
  const Eigen::MatrixXd mc = pptq::io::to_matrix<double>(c);
  const Eigen::MatrixXd mf = pptq::io::to_matrix<double>(f);
  Eigen::MatrixXd expect(2, 3);
  expect << 1, 2, 3, 4, 5, 6;
  CHECK(mc == expect);
  CHECK(mf == expect);
  // Also for an integer target and a tall shape.
  const NpyArray ft = parse(make_npy(hdr("<f8", "(3, 2)", true), elems<double>({1, 2, 3, 4, 5, 6})));
  Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic> e2(3, 2);
  e2 << 1, 4, 2, 5, 3, 6;
  CHECK(pptq::io::to_matrix<std::int64_t>(ft) == e2);
}

TEST_CASE("npy: big-endian data is converted to little-endian", "[npy]") {
  {
    const NpyArray a = parse(make_npy(hdr(">f4", "(2, 2)"), elems<float>({1.25f, -2, 3e-40f, 1e38f}, true)));
    CHECK(a.bytes == elems<float>({1.25f, -2, 3e-40f, 1e38f}));
    const Eigen::MatrixXf m = pptq::io::to_matrix<float>(a);
    CHECK(m(0, 0) == 1.25f);
    CHECK(m(0, 1) == -2.0f);
    CHECK(same_bits(m(1, 0), 3e-40f));
    CHECK(m(1, 1) == 1e38f);
  }
  {
    const NpyArray a = parse(make_npy(hdr(">f8", "(2,)"), elems<double>({0.1, -7e200}, true)));
    const Eigen::MatrixXd m = pptq::io::to_matrix<double>(a);
    CHECK(m(0, 0) == 0.1);
    CHECK(m(1, 0) == -7e200);
  }
  {
    const NpyArray a = parse(make_npy(hdr(">i4", "(2,)"), elems<std::int32_t>({-5, 0x01020304}, true)));
    CHECK(a.bytes == elems<std::int32_t>({-5, 0x01020304}));
  }
  {
    const NpyArray a = parse(make_npy(hdr(">i8", "(1,)"), elems<std::int64_t>({-1234567890123LL}, true)));
    CHECK(pptq::io::to_matrix<std::int64_t>(a)(0, 0) == -1234567890123LL);
  }
  {
    const NpyArray a = parse(make_npy(hdr(">u2", "(2,)"), elems<std::uint16_t>({0x1234, 0xfffe}, true)));
    CHECK(pptq::io::to_matrix<double>(a)(1, 0) == 65534.0);
  }
  {
    const NpyArray a = parse(make_npy(hdr(">f2", "()"), half_elems({0x3c00}, true)));
    CHECK(pptq::io::to_matrix<float>(a)(0, 0) == 1.0f);
  }
  {
    // One-byte types: byte order is irrelevant and any marker is accepted.
    const NpyArray a = parse(make_npy(hdr(">u1", "(2,)"), Bytes{7, 200}));
    CHECK(a.dtype == DType::u8);
    CHECK(a.bytes == Bytes{7, 200});
  }
}

TEST_CASE("npy: 1-d and 0-d arrays", "[npy]") {
  const NpyArray v = parse(make_npy(hdr("<f4", "(4,)"), elems<float>({1, 2, 3, 4})));
  CHECK(v.shape == std::vector<std::int64_t>{4});
  const Eigen::MatrixXf mv = pptq::io::to_matrix<float>(v);
  CHECK(mv.rows() == 4);
  CHECK(mv.cols() == 1);
  CHECK(mv(3, 0) == 4);

  const NpyArray s = parse(make_npy(hdr("<f8", "()"), elems<double>({42.5})));
  CHECK(s.shape.empty());
  CHECK(s.size() == 1);
  const Eigen::MatrixXd ms = pptq::io::to_matrix<double>(s);
  CHECK(ms.rows() == 1);
  CHECK(ms.cols() == 1);
  CHECK(ms(0, 0) == 42.5);

  // Empty arrays are valid: zero bytes of data.
  const NpyArray e = parse(make_npy(hdr("<f4", "(0, 5)"), Bytes{}));
  CHECK(e.size() == 0);
  const Eigen::MatrixXf me = pptq::io::to_matrix<float>(e);
  CHECK(me.rows() == 0);
  CHECK(me.cols() == 5);
  // A zero dim makes the array empty even if the others alone would overflow.
  CHECK(parse(make_npy(hdr("<f8", "(0, 9223372036854775807, 9223372036854775807)"), Bytes{})).size() == 0);

  // More than two dims parse but are not matrices.
  const NpyArray t = parse(make_npy(hdr("<f4", "(1, 2, 1)"), elems<float>({1, 2})));
  CHECK(t.size() == 2);
  REQUIRE_THROWS_WITH(pptq::io::to_matrix<float>(t), Catch::Contains("0-, 1- or 2-d") && Catch::Contains("(1, 2, 1)"));
}

TEST_CASE("npy: header syntax variants numpy and other writers produce", "[npy]") {
  const Bytes data = elems<float>({1, 2});
  const std::vector<std::string> dicts = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2)}",
      "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1, 2)}",
      "{'shape': (1, 2), 'fortran_order': False, 'descr': '<f4'}",
      "{'fortran_order':False,'shape':(1,2,),'descr':'<f4',}",
      "  {  'descr' : '<f4' ,\t'fortran_order' : False ,\n 'shape' : ( 1 , 2 ) , }  ",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 2L), }",
      "{u'descr': u'<f4', 'fortran_order': False, 'shape': (1, 2), }",
  };
  for (const std::string& d : dicts) {
    INFO(d);
    const NpyArray a = parse(make_npy(d, data));
    CHECK(a.dtype == DType::f32);
    CHECK(a.shape == std::vector<std::int64_t>{1, 2});
  }
  // No padding, no newline, odd alignment: still a valid file.
  const NpyArray a = parse(make_npy("{'descr':'<f4','fortran_order':False,'shape':(2,)}", data, 1, false));
  CHECK(a.size() == 2);
  // Native byte order marker.
  CHECK(parse(make_npy(hdr("=f4", "(2,)"), data)).bytes == data);
}

TEST_CASE("npy: write -> read round trip keeps values bit for bit and shape", "[npy]") {
  TempDir dir;
  SECTION("float") {
    Eigen::MatrixXf m(3, 4);
    m.setRandom();
    m(0, 0) = -0.0f;
    m(0, 1) = std::numeric_limits<float>::infinity();
    m(0, 2) = std::numeric_limits<float>::denorm_min();
    m(0, 3) = std::numeric_limits<float>::max();
    std::uint32_t nan_bits = 0x7fc12345u;  // a NaN with a payload must survive untouched
    std::memcpy(&m(1, 0), &nan_bits, 4);
    const std::string p = dir.file("f.npy");
    pptq::io::write_npy(p, m);
    const NpyArray a = pptq::io::read_npy(p);
    CHECK(a.dtype == DType::f32);
    CHECK(a.shape == std::vector<std::int64_t>{3, 4});
    const Eigen::MatrixXf r = pptq::io::read_npy_matrix<float>(p);
    REQUIRE(r.rows() == 3);
    REQUIRE(r.cols() == 4);
    CHECK(std::memcmp(r.data(), m.data(), sizeof(float) * 12) == 0);
  }
  SECTION("double, including an expression and a row-major source") {
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(2, 5);
    m.setRandom();
    m(1, 4) = -std::numeric_limits<double>::denorm_min();
    const std::string p = dir.file("d.npy");
    pptq::io::write_npy(p, m);
    const Eigen::MatrixXd r = pptq::io::read_npy_matrix<double>(p);
    REQUIRE(r.rows() == 2);
    REQUIRE(r.cols() == 5);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 5; ++j) CHECK(same_bits(r(i, j), m(i, j)));
    const std::string p2 = dir.file("expr.npy");
    pptq::io::write_npy(p2, (m.transpose() * 2.0).block(1, 0, 3, 2));
    const Eigen::MatrixXd r2 = pptq::io::read_npy_matrix<double>(p2);
    CHECK(r2 == (m.transpose() * 2.0).block(1, 0, 3, 2));
  }
  SECTION("int32, int64, uint8") {
    Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic> mi(2, 2);
    mi << std::numeric_limits<std::int32_t>::min(), -1, 0, std::numeric_limits<std::int32_t>::max();
    pptq::io::write_npy(dir.file("i.npy"), mi);
    CHECK(pptq::io::read_npy(dir.file("i.npy")).dtype == DType::i32);
    CHECK(pptq::io::read_npy_matrix<std::int32_t>(dir.file("i.npy")) == mi);

    Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic> ml(1, 3);
    ml << std::numeric_limits<std::int64_t>::min(), 7, std::numeric_limits<std::int64_t>::max();
    pptq::io::write_npy(dir.file("l.npy"), ml);
    CHECK(pptq::io::read_npy(dir.file("l.npy")).dtype == DType::i64);
    CHECK(pptq::io::read_npy_matrix<std::int64_t>(dir.file("l.npy")) == ml);

    Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> mu(3, 1);
    mu << 0, 128, 255;
    pptq::io::write_npy(dir.file("u.npy"), mu);
    const Bytes raw = read_all(dir.file("u.npy"));
    const std::string head(raw.begin(), raw.begin() + 64);
    CHECK(head.find("'descr': '|u1'") != std::string::npos);
    CHECK(pptq::io::read_npy_matrix<std::uint8_t>(dir.file("u.npy")) == mu);
  }
  SECTION("vectors") {
    Eigen::VectorXd v(5);
    v << 1, -2, 3.5, 1e-300, 0;
    pptq::io::write_npy_vector(dir.file("v.npy"), v);
    const NpyArray a = pptq::io::read_npy(dir.file("v.npy"));
    CHECK(a.shape == std::vector<std::int64_t>{5});
    CHECK(pptq::io::to_matrix<double>(a) == Eigen::MatrixXd(v));
    Eigen::RowVectorXf rv(3);
    rv << 1, 2, 3;
    pptq::io::write_npy_vector(dir.file("rv.npy"), rv);
    CHECK(pptq::io::read_npy(dir.file("rv.npy")).shape == std::vector<std::int64_t>{3});
    REQUIRE_THROWS_WITH(pptq::io::write_npy_vector(dir.file("bad.npy"), Eigen::MatrixXf(2, 2)),
                        Catch::Contains("expected a vector"));
    REQUIRE_THROWS_AS(pptq::io::write_npy_vector(dir.file("bad.npy"), Eigen::MatrixXf(2, 2)), pptq::UsageError);
    CHECK_FALSE(fs::exists(dir.file("bad.npy")));
  }
  SECTION("NpyArray as parsed, including Fortran order and f16") {
    const NpyArray in = parse(make_npy(hdr(">f2", "(2, 2)", true), half_elems({0x3c00, 0x4000, 0x4200, 0x4400}, true)));
    pptq::io::write_npy(dir.file("a.npy"), in);
    const NpyArray out = pptq::io::read_npy(dir.file("a.npy"));
    CHECK(out.dtype == DType::f16);
    CHECK(out.fortran_order);
    CHECK(out.shape == in.shape);
    CHECK(out.bytes == in.bytes);
  }
  // Nothing but the written files remain (no temporaries).
  for (const auto& e : fs::directory_iterator(dir.path)) CHECK(e.path().filename().string()[0] != '.');
}

TEST_CASE("npy: serialized layout is what numpy writes", "[npy]") {
  Eigen::MatrixXf m(2, 3);
  m << 1, 2, 3, 4, 5, 6;
  const Bytes b = pptq::io::serialize_npy(m);
  // 10 bytes of preamble + 59 of dict + '\n' = 70, padded to the next multiple of 64.
  REQUIRE(b.size() == 128 + 24);
  CHECK(b[6] == 1);  // version 1.0
  CHECK(b[7] == 0);
  CHECK(b[8] + 256 * b[9] == 118);
  const std::string head(b.begin() + 10, b.begin() + 128);
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  CHECK(head == dict + std::string(128 - 10 - dict.size() - 1, ' ') + "\n");
  CHECK(b == make_npy(dict, elems<float>({1, 2, 3, 4, 5, 6})));

  Eigen::VectorXd v(7);
  v.setZero();
  const Bytes bv = pptq::io::serialize_npy_vector(v);
  CHECK(std::string(bv.begin() + 10, bv.end()).find("'shape': (7,), }") != std::string::npos);
  CHECK((bv.size() - 56) % 64 == 0);

  // A header longer than 65535 bytes switches to version 2.0 (only reachable with absurd shapes).
  NpyArray huge;
  huge.dtype = DType::u8;
  huge.shape.assign(30000, 0);
  const Bytes bh = pptq::io::serialize_npy(huge);
  CHECK(bh[6] == 2);
  CHECK(bh.size() % 64 == 0);
  REQUIRE_THROWS_WITH(parse(bh), Catch::Contains("30000 dimensions"));
}

TEST_CASE("npy: golden W.npy from the reference loads", "[npy]") {
  const std::string p = std::string(test::data_dir()) + "/gptq/c01-asym4-perrow/W.npy";
  const NpyArray a = pptq::io::read_npy(p);
  CHECK(a.dtype == DType::f32);
  CHECK_FALSE(a.fortran_order);
  const Eigen::MatrixXf w = pptq::io::read_npy_matrix<float>(p);
  CHECK(w.rows() == 32);
  CHECK(w.cols() == 64);
  CHECK(w.allFinite());
  CHECK(w.cwiseAbs().maxCoeff() > 0);
  // Re-serialising keeps the data bytes exactly.
  const Bytes again = pptq::io::serialize_npy(w);
  const NpyArray b = parse(again);
  CHECK(b.bytes == a.bytes);
}

TEST_CASE("npy: malformed input is rejected with a clear message", "[npy]") {
  struct Bad {
    const char* name;
    Bytes bytes;
    std::string expect;
  };
  const Bytes f6 = elems<float>({1, 2, 3, 4, 5, 6});
  auto with_version = [](Bytes b, std::uint8_t major, std::uint8_t minor) {
    b[6] = major;
    b[7] = minor;
    return b;
  };
  Bytes v1_long = make_npy(hdr("<f4", "(2, 3)"), f6);
  v1_long[8] = 0xff;
  v1_long[9] = 0xff;
  Bytes v2_long = make_npy(hdr("<f4", "(2, 3)"), f6, 2);
  v2_long[8] = v2_long[9] = v2_long[10] = v2_long[11] = 0xff;
  Bytes bad_magic = make_npy(hdr("<f4", "(2, 3)"), f6);
  bad_magic[0] = 'X';
  std::string deep = "{'descr': '<f4', 'fortran_order': False, 'shape': ";
  deep += std::string(100, '(') + std::string(100, ')') + "}";

  const std::vector<Bad> cases = {
      {"empty", Bytes{}, "bad magic"},
      {"wrong magic", bad_magic, "bad magic (not a .npy file): starts with 'X"},
      {"magic only", Bytes{0x93, 'N', 'U', 'M', 'P', 'Y'}, "truncated preamble"},
      {"no header length", Bytes{0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 1}, "truncated preamble: 9 bytes"},
      {"version 4.0", with_version(make_npy(hdr("<f4", "(2, 3)"), f6), 4, 0), "unsupported .npy format version 4.0"},
      {"version 1.1", with_version(make_npy(hdr("<f4", "(2, 3)"), f6), 1, 1), "unsupported .npy format version 1.1"},
      {"v1 header length beyond file", v1_long, "header length 65535 exceeds the file"},
      {"v2 header length beyond file", v2_long, "header length 4294967295 exceeds the file"},
      {"header is a list", make_npy("[1, 2]", f6), "header is not a Python dict literal: [1, 2]"},
      {"header is a string", make_npy("'hello'", f6), "header is not a Python dict literal: 'hello'"},
      {"header empty", make_npy("", f6, 1, false), "unexpected end of header"},
      {"missing shape", make_npy("{'descr': '<f4', 'fortran_order': False}", f6), "header is missing key 'shape'"},
      {"missing descr", make_npy("{'shape': (6,), 'fortran_order': False}", f6), "header is missing key 'descr'"},
      {"extra key", make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'foo': 1}", f6),
       "unexpected key 'foo'"},
      {"duplicate key", make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'shape': (2, 3)}", f6),
       "duplicate key 'shape'"},
      {"non-string key", make_npy("{1: 2}", f6), "header dict key is not a string: 1"},
      {"shape is a list", make_npy(hdr("<f4", "[2, 3]"), f6), "malformed shape: expected a tuple of integers, got [2, 3]"},
      {"shape is an int", make_npy(hdr("<f4", "(6)"), f6), "malformed shape: expected a tuple of integers, got 6"},
      {"shape has a string", make_npy(hdr("<f4", "(2, '3')"), f6), "dimension '3' is not an integer"},
      {"shape has a float", make_npy(hdr("<f4", "(2.5,)"), f6), "unsupported number literal"},
      {"negative dim", make_npy(hdr("<f4", "(2, -3)"), f6), "negative dimension -3 in shape (2, -3)"},
      {"dim beyond int64", make_npy(hdr("<f4", "(99999999999999999999,)"), f6),
       "dimension 99999999999999999999 overflows int64"},
      {"element count overflows", make_npy(hdr("<f4", "(4294967296, 4294967296)"), f6),
       "shape (4294967296, 4294967296): element count overflows int64"},
      {"byte size overflows", make_npy(hdr("<f8", "(4611686018427387904,)"), f6),
       "shape (4611686018427387904,) of <f8: byte size overflows"},
      {"complex dtype", make_npy(hdr("<c8", "(3,)"), f6), "unsupported dtype '<c8'"},
      {"object dtype", make_npy(hdr("|O", "(3,)"), f6), "unsupported dtype '|O'"},
      {"unicode dtype", make_npy(hdr("<U4", "(3,)"), f6), "unsupported dtype '<U4'"},
      {"bool dtype", make_npy(hdr("|b1", "(6,)"), f6), "unsupported dtype '|b1'"},
      {"no byte order on multi-byte", make_npy(hdr("|f4", "(6,)"), f6), "unsupported dtype '|f4'"},
      {"structured dtype",
       make_npy("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (3,), }", f6),
       "unsupported dtype: structured dtype [('a', '<f4'), ('b', '<i4')]"},
      {"descr not a string", make_npy("{'descr': 4, 'fortran_order': False, 'shape': (6,), }", f6),
       "descr is not a string: 4"},
      {"fortran_order not a bool", make_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (6,), }", f6),
       "fortran_order must be True or False, got 0"},
      {"truncated data", make_npy(hdr("<f4", "(2, 3)"), Bytes(f6.begin(), f6.end() - 4)),
       "truncated data: file holds 20 bytes of data, shape (2, 3) of <f4 needs 24"},
      {"trailing data", make_npy(hdr("<f4", "(2, 3)"), elems<float>({1, 2, 3, 4, 5, 6, 7})),
       "trailing data: file holds 28 bytes of data, shape (2, 3) of <f4 needs 24"},
      {"unterminated string", make_npy("{'descr': '<f4", f6, 1, false),
       "unterminated string"},
      {"deep nesting", make_npy(deep, f6), "nesting deeper than"},
      {"junk after dict", make_npy(hdr("<f4", "(2, 3)") + " x", f6), "unexpected characters after the header dict"},
      {"unknown identifier", make_npy("{'descr': '<f4', 'fortran_order': false, 'shape': (6,)}", f6),
       "unsupported token 'false'"},
      {"missing colon", make_npy("{'descr' '<f4', 'fortran_order': False, 'shape': (6,)}", f6),
       "expected ':' after a dict key"},
      {"unclosed tuple", make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6,", f6, 1, false),
       "unexpected end of header"},
      {"NUL in header", make_npy(std::string("{'descr': '<f4'\0, 'fortran_order': False, 'shape': (6,)}", 56), f6),
       "expected ',' or '}' at offset 15 near '{'descr': '<f4'\\x00, "},
  };
  for (const Bad& c : cases) {
    INFO(c.name);
    REQUIRE_THROWS_AS(parse(c.bytes), NpyError);
    REQUIRE_THROWS_WITH(parse(c.bytes), Catch::Contains(c.expect));
    // Messages name the source.
    REQUIRE_THROWS_WITH(pptq::io::parse_npy(c.bytes.data(), c.bytes.size(), "src.npy"), Catch::StartsWith("npy: src.npy: "));
  }
}

TEST_CASE("npy: conversions to the requested scalar are checked", "[npy]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const NpyArray d = parse(make_npy(hdr("<f8", "(4,)"), elems<double>({1.9, -1.9, 1e10, nan})));
  // Truncation toward zero in range, errors instead of undefined behaviour out of range.
  const NpyArray ok = parse(make_npy(hdr("<f8", "(2,)"), elems<double>({1.9, -1.9})));
  const auto mi = pptq::io::to_matrix<std::int32_t>(ok);
  CHECK(mi(0, 0) == 1);
  CHECK(mi(1, 0) == -1);
  REQUIRE_THROWS_WITH(pptq::io::to_matrix<std::int32_t>(d), Catch::Contains("element 2 of the <f8 array is not representable"));
  const NpyArray n = parse(make_npy(hdr("<f8", "(1,)"), elems<double>({nan})));
  REQUIRE_THROWS_AS(pptq::io::to_matrix<std::int64_t>(n), NpyError);
  const NpyArray neg = parse(make_npy(hdr("|i1", "(1,)"), elems<std::int8_t>({-1})));
  REQUIRE_THROWS_AS(pptq::io::to_matrix<std::uint8_t>(neg), NpyError);
  const NpyArray big = parse(make_npy(hdr("<u8", "(1,)"), elems<std::uint64_t>({std::uint64_t(1) << 63})));
  REQUIRE_THROWS_AS(pptq::io::to_matrix<std::int64_t>(big), NpyError);
  CHECK(pptq::io::to_matrix<std::uint64_t>(big)(0, 0) == (std::uint64_t(1) << 63));
  // -2^63 exactly fits int64 from double; 2^63 does not.
  const NpyArray edge = parse(make_npy(hdr("<f8", "(1,)"), elems<double>({-9223372036854775808.0})));
  CHECK(pptq::io::to_matrix<std::int64_t>(edge)(0, 0) == std::numeric_limits<std::int64_t>::min());
  const NpyArray edge2 = parse(make_npy(hdr("<f8", "(1,)"), elems<double>({9223372036854775808.0})));
  REQUIRE_THROWS_AS(pptq::io::to_matrix<std::int64_t>(edge2), NpyError);
  // double -> float overflow saturates to infinity as IEEE rounding does.
  const NpyArray huge = parse(make_npy(hdr("<f8", "(2,)"), elems<double>({1e300, -1e300})));
  const Eigen::MatrixXf hf = pptq::io::to_matrix<float>(huge);
  CHECK(hf(0, 0) == std::numeric_limits<float>::infinity());
  CHECK(hf(1, 0) == -std::numeric_limits<float>::infinity());
  // A hand-built NpyArray whose bytes do not match its shape is refused rather than read out of bounds.
  NpyArray lie;
  lie.dtype = DType::f64;
  lie.shape = {3};
  lie.bytes.resize(16);
  REQUIRE_THROWS_WITH(pptq::io::to_matrix<double>(lie), Catch::Contains("do not match shape (3,)"));
  REQUIRE_THROWS_AS(pptq::io::serialize_npy(lie), NpyError);
  lie.shape = {-1};
  REQUIRE_THROWS_AS(lie.size(), NpyError);
}

TEST_CASE("npy: read_npy errors name the path, unreadable is an i/o error, malformed a data error", "[npy]") {
  TempDir dir;
  const std::string missing = dir.file("missing.npy");
  REQUIRE_THROWS_WITH(pptq::io::read_npy(missing), Catch::StartsWith("npy: " + missing + ": cannot open"));
  REQUIRE_THROWS_AS(pptq::io::read_npy(missing), pptq::IoError);
  const std::string bad = dir.file("bad.npy");
  write_all(bad, make_npy(hdr("<f4", "(2, 3)"), Bytes(8)));
  REQUIRE_THROWS_WITH(pptq::io::read_npy(bad), Catch::StartsWith("npy: " + bad + ": truncated data"));
  REQUIRE_THROWS_AS(pptq::io::read_npy(bad), NpyError);
  const std::string three = dir.file("three.npy");
  write_all(three, make_npy(hdr("<f4", "(1, 1, 1)"), Bytes(4)));
  REQUIRE_THROWS_WITH(pptq::io::read_npy_matrix<float>(three),
                      Catch::StartsWith("npy: " + three + ": expected a 0-, 1- or 2-d array"));
  REQUIRE_THROWS_AS(pptq::io::read_npy_matrix<float>(three), NpyError);
  // a directory is refused before it is opened: inputs are regular files only (a data error, naming it)
  REQUIRE_THROWS_WITH(pptq::io::read_npy(dir.path.string()),
                      Catch::StartsWith("npy: " + dir.path.string() + " is a directory, not a regular file"));
  REQUIRE_THROWS_AS(pptq::io::read_npy(dir.path.string()), pptq::DataError);
  // a path that does not exist cannot be opened: an i/o error
  REQUIRE_THROWS_WITH(pptq::io::read_npy(dir.file("none.npy")), Catch::StartsWith("npy: " + dir.file("none.npy") + ": cannot open"));
  REQUIRE_THROWS_AS(pptq::io::read_npy(dir.file("none.npy")), pptq::IoError);
}

TEST_CASE("AtomicFile: uncommitted leaves nothing behind and keeps an existing file", "[npy][atomic]") {
  TempDir dir;
  const std::string p = dir.file("out.bin");
  std::string temp;
  {
    pptq::io::AtomicFile f(p);
    temp = f.temp_path();
    CHECK(fs::path(temp).parent_path() == dir.path);
    CHECK(fs::exists(temp));
    f.write("abc", 3);
  }
  CHECK_FALSE(fs::exists(p));
  CHECK_FALSE(fs::exists(temp));

  write_all(p, Bytes{'o', 'l', 'd'});
  {
    pptq::io::AtomicFile f(p);
    f.write("new contents", 12);
    temp = f.temp_path();
  }
  CHECK(read_all(p) == Bytes{'o', 'l', 'd'});
  CHECK_FALSE(fs::exists(temp));
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("AtomicFile: commit replaces the file", "[npy][atomic]") {
  TempDir dir;
  const std::string p = dir.file("out.bin");
  write_all(p, Bytes{'o', 'l', 'd'});
  {
    pptq::io::AtomicFile f(p);
    f.write("new ", 4);
    f.write("contents", 8);
    f.write(nullptr, 0);
    CHECK(read_all(p) == Bytes{'o', 'l', 'd'});  // not visible before commit
    f.commit();
    CHECK_FALSE(fs::exists(f.temp_path()));
    REQUIRE_THROWS_AS(f.write("x", 1), pptq::IoError);
    REQUIRE_THROWS_AS(f.commit(), pptq::IoError);
  }
  const Bytes got = read_all(p);
  CHECK(std::string(got.begin(), got.end()) == "new contents");
  pptq::io::write_file_atomic(p, "xyz", 3);
  CHECK(read_all(p) == Bytes{'x', 'y', 'z'});
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  // A relative path (temp goes into ".") works too.
  const fs::path old_cwd = fs::current_path();
  fs::current_path(dir.path);
  pptq::io::write_file_atomic("rel.bin", "r", 1);
  fs::current_path(old_cwd);
  CHECK(read_all(dir.file("rel.bin")) == Bytes{'r'});
}

TEST_CASE("AtomicFile: failures name the path", "[npy][atomic]") {
  TempDir dir;
  const std::string p = dir.file("no/such/dir/out.npy");
  REQUIRE_THROWS_WITH(pptq::io::AtomicFile(p), Catch::Contains(p) && Catch::Contains("No such file or directory"));
  REQUIRE_THROWS_WITH(pptq::io::AtomicFile(p), Catch::StartsWith("AtomicFile: "));
  REQUIRE_THROWS_AS(pptq::io::AtomicFile(p), pptq::IoError);
  Eigen::MatrixXf m(1, 1);
  m(0, 0) = 1;
  REQUIRE_THROWS_WITH(pptq::io::write_npy(p, m), Catch::Contains(p));
  REQUIRE_THROWS_AS(pptq::io::write_npy(p, m), pptq::IoError);
  REQUIRE_THROWS_WITH(pptq::io::AtomicFile(dir.path.string() + "/"), Catch::Contains("does not name a file"));
  REQUIRE_THROWS_AS(pptq::io::AtomicFile(dir.path.string() + "/"), pptq::IoError);
  // A directory is never replaced: refused before a temporary is made.
  fs::create_directory(dir.path / "dir");
  REQUIRE_THROWS_WITH(pptq::io::AtomicFile((dir.path / "dir").string()), Catch::Contains("refusing to replace"));
  CHECK(fs::is_empty(dir.path / "dir"));
  // A directory that appears after the temporary was made: the rename fails at commit and the temporary
  // is removed.
  std::string temp;
  {
    pptq::io::AtomicFile f((dir.path / "sub").string());
    fs::create_directory(dir.path / "sub");
    fs::create_directory(dir.path / "sub" / "x");
    temp = f.temp_path();
    f.write("a", 1);
    REQUIRE_THROWS_WITH(f.commit(), Catch::Contains("rename failed") && Catch::Contains((dir.path / "sub").string()));
    REQUIRE_THROWS_AS(f.commit(), pptq::IoError);  // after the failure: nothing left to commit
  }
  CHECK_FALSE(fs::exists(temp));
  CHECK(fs::is_directory(dir.path / "sub" / "x"));
}

TEST_CASE("npy: every corpus file parses or throws NpyError", "[npy][fuzz]") {
  const fs::path corpus = fs::path(test::data_dir()) / "npy_corpus";
  REQUIRE(fs::is_directory(corpus));
  int files = 0, parsed = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    if (!e.is_regular_file()) continue;
    ++files;
    const Bytes b = read_all(e.path().string());
    INFO(e.path().filename().string());
    try {
      const NpyArray a = pptq::io::parse_npy(b.data(), b.size(), e.path().string());
      ++parsed;
      try {
        (void)pptq::io::to_matrix<double>(a);
      } catch (const NpyError&) {
      }
      // Whatever parses re-serialises to a file that parses to the same array.
      const Bytes again = pptq::io::serialize_npy(a);
      const NpyArray b2 = parse(again);
      CHECK(b2.dtype == a.dtype);
      CHECK(b2.shape == a.shape);
      CHECK(b2.fortran_order == a.fortran_order);
      CHECK(b2.bytes == a.bytes);
    } catch (const NpyError&) {
      // expected for the malformed ones
    }
  }
  CHECK(files >= 10);
  CHECK(parsed >= 5);
}
