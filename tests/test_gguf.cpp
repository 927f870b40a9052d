// GGUF v3 reader/writer (include/pptq/io/gguf.hpp, docs/formats.md §2) against a file written by llama.cpp's
// own writer (tests/data/ggml/llama-written.gguf, described in tests/data/ggml/README.md), round trips of
// files with every value and tensor type, and malformed input.
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include <pptq/error.hpp>
#include <pptq/io/gguf.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace gg = pptq::ggml;
namespace gf = pptq::gguf;
namespace fs = std::filesystem;
using gf::ValueType;

namespace {

const std::string kDir = std::string(test::data_dir()) + "/ggml/";
const std::string kGolden = kDir + "llama-written.gguf";

std::vector<std::uint8_t> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A fresh empty directory per test, removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    for (int i = 0;; ++i) {
      path = fs::temp_directory_path() / ("pptq_gguf_test_" + std::to_string(rd()) + "_" + std::to_string(i));
      if (fs::create_directory(path)) break;
    }
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::size_t entries() const { return static_cast<std::size_t>(std::distance(fs::directory_iterator(path), fs::directory_iterator())); }
};

std::size_t find_bytes(const std::vector<std::uint8_t>& hay, const std::string& needle) {
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i)
    if (std::memcmp(hay.data() + i, needle.data(), needle.size()) == 0) return i;
  FAIL("byte string not found: " << needle);
  return 0;
}
void put_le(std::vector<std::uint8_t>& b, std::size_t at, std::uint64_t v, int k) {
  for (int i = 0; i < k; ++i) b.at(at + static_cast<std::size_t>(i)) = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t get_le(const std::vector<std::uint8_t>& b, std::size_t at, int k) {
  std::uint64_t v = 0;
  for (int i = 0; i < k; ++i) v |= static_cast<std::uint64_t>(b.at(at + static_cast<std::size_t>(i))) << (8 * i);
  return v;
}

gf::File parse(const std::vector<std::uint8_t>& b) { return gf::parse(b.data(), b.size(), "test"); }

// Position of a key's u32 value type in a serialized file (key stored as u64 length + bytes).
std::size_t type_pos_of_key(const std::vector<std::uint8_t>& b, const std::string& key) {
  return find_bytes(b, key) + key.size();
}
// Position of a tensor info's u32 n_dims (right after its name).
std::size_t info_pos_of_tensor(const std::vector<std::uint8_t>& b, const std::string& name) {
  return find_bytes(b, name) + name.size();
}

std::vector<std::uint8_t> random_bytes(std::size_t n, std::mt19937& rng) {
  std::vector<std::uint8_t> v(n);
  for (auto& x : v) x = static_cast<std::uint8_t>(rng() & 0xffu);
  return v;
}

// A File with metadata of every value type (edge values included) and tensors of every supported type.
gf::File every_type_file(std::uint32_t alignment) {
  gf::File f;
  f.set("general.architecture", "pptq-test");
  if (alignment != 32) f.set("general.alignment", alignment);
  f.set("v.u8", std::uint8_t{255});
  f.set("v.i8", std::int8_t{-128});
  f.set("v.u16", std::uint16_t{65535});
  f.set("v.i16", std::int16_t{-32768});
  f.set("v.u32", std::numeric_limits<std::uint32_t>::max());
  f.set("v.i32", std::numeric_limits<std::int32_t>::min());
  f.set("v.f32", -0.0f);
  f.set("v.f32.nan", gg::bits_float(0x7fc00123u));
  f.set("v.bool.false", false);
  f.set("v.bool.true", true);
  f.set("v.str", std::string("with\0nul and \xc3\xa9", 15));
  f.set("v.str.empty", "");
  f.set("v.u64", std::numeric_limits<std::uint64_t>::max());
  f.set("v.i64", std::numeric_limits<std::int64_t>::min());
  f.set("v.f64", 1e300);
  f.set("a.u8", gf::Value::array_of(std::vector<std::uint8_t>{0, 1, 255}));
  f.set("a.i8", gf::Value::array_of(std::vector<std::int8_t>{-1, 2}));
  f.set("a.u16", gf::Value::array_of(std::vector<std::uint16_t>{7}));
  f.set("a.i16", gf::Value::array_of(std::vector<std::int16_t>{-7, 8}));
  f.set("a.u32", gf::Value::array_of(std::vector<std::uint32_t>{1u << 31}));
  f.set("a.i32", gf::Value::array_of(std::vector<std::int32_t>{}));
  f.set("a.f32", gf::Value::array_of(std::vector<float>{1.5f, -2.25f, std::numeric_limits<float>::infinity()}));
  f.set("a.bool", gf::Value::array(ValueType::BOOL, {gf::Value(true), gf::Value(false), gf::Value(true)}));
  f.set("a.str", gf::Value::array_of(std::vector<std::string>{"a", "", "\xce\xb3"}));
  f.set("a.u64", gf::Value::array_of(std::vector<std::uint64_t>{1, 2, 3}));
  f.set("a.i64", gf::Value::array_of(std::vector<std::int64_t>{-1}));
  f.set("a.f64", gf::Value::array_of(std::vector<double>{0.1, -0.0}));
  f.set("a.str.empty", gf::Value::array(ValueType::STRING, {}));

  std::mt19937 rng(42);
  const gg::Type ts[] = {gg::Type::F32, gg::Type::F16, gg::Type::Q4_0, gg::Type::Q4_K, gg::Type::Q3_K, gg::Type::Q2_K};
  for (gg::Type t : ts) {
    const std::uint64_t n0 = static_cast<std::uint64_t>(gg::block_size(t)) * (t == gg::Type::F32 ? 7 : 2);
    const std::vector<std::uint64_t> ne = {n0, 3};
    // every byte string is a valid block of every format, so random bytes are valid tensor data
    f.add_tensor(std::string("t.") + gg::type_name(t), ne, t, random_bytes(gf::tensor_nbytes(ne, t), rng));
  }
  f.add_tensor("t.4d", {4, 3, 2, 1}, gg::Type::F16, random_bytes(48, rng));
  f.add_tensor("t.empty", {32, 0}, gg::Type::Q4_0, {});
  return f;
}

}  // namespace

TEST_CASE("gguf: llama.cpp-written file reads back with exactly the documented content", "[gguf][golden]") {
  const gf::File f = gf::read(kGolden);
  CHECK(f.alignment() == 32);

  const char* keys[] = {"general.architecture", "general.name", "t.u8", "t.i8", "t.u16", "t.i16", "t.u32", "t.i32",
                        "t.f32", "t.u64", "t.i64", "t.f64", "t.bool", "t.arr_i32", "t.arr_f32", "t.arr_str"};
  const ValueType types[] = {ValueType::STRING, ValueType::STRING, ValueType::U8, ValueType::I8, ValueType::U16,
                             ValueType::I16, ValueType::U32, ValueType::I32, ValueType::F32, ValueType::U64,
                             ValueType::I64, ValueType::F64, ValueType::BOOL, ValueType::ARRAY, ValueType::ARRAY,
                             ValueType::ARRAY};
  REQUIRE(f.metadata.size() == 16);
  for (std::size_t i = 0; i < 16; ++i) {
    INFO("key " << i);
    CHECK(f.metadata[i].first == keys[i]);
    CHECK(f.metadata[i].second.type() == types[i]);
  }
  CHECK(f.at("general.architecture").str() == "pptq-golden");
  CHECK(f.at("general.name").str() == "small GGUF written by llama.cpp's writer");
  CHECK(f.at("t.u8").get<std::uint8_t>() == 200);
  CHECK(f.at("t.i8").get<std::int8_t>() == -100);
  CHECK(f.at("t.u16").get<std::uint16_t>() == 60000);
  CHECK(f.at("t.i16").get<std::int16_t>() == -30000);
  CHECK(f.at("t.u32").get<std::uint32_t>() == 4000000000u);
  CHECK(f.at("t.i32").get<std::int32_t>() == -2000000000);
  CHECK(f.at("t.f32").get<float>() == 0.1f);
  CHECK(f.at("t.u64").get<std::uint64_t>() == (std::uint64_t{1} << 40));
  CHECK(f.at("t.i64").get<std::int64_t>() == -(std::int64_t{1} << 40));
  CHECK(f.at("t.f64").get<double>() == 1.0 / 3.0);
  CHECK(f.at("t.bool").get<bool>() == true);
  CHECK(f.at("t.arr_i32").elem_type() == ValueType::I32);
  CHECK(f.at("t.arr_i32").to_vector<std::int32_t>() == std::vector<std::int32_t>{1, -2, 3});
  CHECK(f.at("t.arr_f32").elem_type() == ValueType::F32);
  CHECK(f.at("t.arr_f32").to_vector<float>() == std::vector<float>{0.5f, -1.25f});
  CHECK(f.at("t.arr_str").elem_type() == ValueType::STRING);
  const std::vector<std::string> strs = f.at("t.arr_str").to_vector<std::string>();
  REQUIRE(strs.size() == 3);
  CHECK(strs[0] == "alpha");
  CHECK(strs[1].empty());
  CHECK(strs[2] == "\xce\xb3\xce\xac\xce\xbc\xce\xbc\xce\xb1");  // "γάμμα" in UTF-8, 10 bytes
  // exact types: no silent conversions
  // (a type other than the file's is a data error; asking at() for a key that is not there, a usage error)
  CHECK_THROWS_WITH(f.at("t.u32").get<std::int32_t>(), Catch::Contains("u32") && Catch::Contains("i32"));
  CHECK_THROWS_AS(f.at("t.u32").get<std::int32_t>(), pptq::DataError);
  CHECK_THROWS_AS(f.at("t.arr_i32").to_vector<std::uint32_t>(), pptq::DataError);
  CHECK_THROWS_AS(f.at("no.such.key"), pptq::UsageError);
  CHECK_THROWS_WITH(f.at("no.such.key"), Catch::StartsWith("gguf: no metadata key 'no.such.key'"));
  CHECK(f.find("no.such.key") == nullptr);

  REQUIRE(f.tensors.size() == 4);
  const gf::TensorInfo& a = f.tensors[0];
  CHECK(a.name == "blk.0.f32.weight");
  CHECK(a.type == gg::Type::F32);
  CHECK(a.ne == std::vector<std::uint64_t>{8, 3});
  CHECK(a.offset == 0);
  REQUIRE(a.data.size() == 96);
  std::vector<float> v(24);
  gg::dequantize_row(gg::Type::F32, a.data.data(), 24, v.data());
  for (int i = 0; i < 24; ++i) CHECK(v[static_cast<std::size_t>(i)] == static_cast<float>(i) - 11.5f);

  const gf::TensorInfo& h = f.tensors[1];
  CHECK(h.name == "blk.0.f16.weight");
  CHECK(h.type == gg::Type::F16);
  CHECK(h.ne == std::vector<std::uint64_t>{5, 2});
  CHECK(h.offset == 96);
  REQUIRE(h.data.size() == 20);
  gg::dequantize_row(gg::Type::F16, h.data.data(), 10, v.data());
  for (int i = 0; i < 10; ++i) CHECK(v[static_cast<std::size_t>(i)] == 0.25f * static_cast<float>(i));

  const gf::TensorInfo& q = f.tensors[2];
  CHECK(q.name == "blk.0.q4_k.weight");
  CHECK(q.type == gg::Type::Q4_K);
  CHECK(q.ne == std::vector<std::uint64_t>{512, 2});
  CHECK(q.offset == 128);
  const std::vector<std::uint8_t> q4k = slurp(kDir + "q4_K.bin");
  REQUIRE(q.data.size() == 576);
  CHECK(std::equal(q.data.begin(), q.data.end(), q4k.begin()));

  const gf::TensorInfo& n = f.tensors[3];
  CHECK(n.name == "blk.0.norm.weight");
  CHECK(n.type == gg::Type::F32);
  CHECK(n.ne == std::vector<std::uint64_t>{7});
  CHECK(n.offset == 704);
  gg::dequantize_row(gg::Type::F32, n.data.data(), 7, v.data());
  for (int i = 0; i < 7; ++i) CHECK(v[static_cast<std::size_t>(i)] == 1.0f + static_cast<float>(i));
  CHECK(f.find_tensor("blk.0.norm.weight") == &n);
  CHECK(f.find_tensor("nope") == nullptr);
}

TEST_CASE("gguf: serialize(read(file)) and write(read(file)) reproduce llama.cpp's file byte for byte", "[gguf][golden]") {
  const std::vector<std::uint8_t> bytes = slurp(kGolden);
  const gf::File f = gf::read(kGolden);
  CHECK(gf::serialize(f) == bytes);
  TempDir dir;
  const std::string out = (dir.path / "copy.gguf").string();
  gf::write(f, out);
  CHECK(slurp(out) == bytes);
  CHECK(dir.entries() == 1);  // no temporary left behind
  // the same content built by hand, in the same order, gives the same bytes
  gf::File g;
  for (const auto& kv : f.metadata) g.set(kv.first, kv.second);
  for (const auto& t : f.tensors) g.add_tensor(t.name, t.ne, t.type, t.data);
  CHECK(gf::serialize(g) == bytes);
  gf::layout(g);
  CHECK(g == f);
}

TEST_CASE("gguf: every value type and every tensor type round-trips", "[gguf]") {
  for (std::uint32_t alignment : {32u, 1u, 64u, 4096u}) {
    SECTION("alignment " + std::to_string(alignment)) {
      gf::File f = every_type_file(alignment);
      CHECK(f.alignment() == alignment);
      const std::vector<std::uint8_t> b1 = gf::serialize(f);
      const std::vector<std::uint8_t> b2 = gf::serialize(f);
      CHECK(b1 == b2);
      CHECK(b1.size() % alignment == 0);
      TempDir dir;
      const std::string path = (dir.path / "all.gguf").string();
      gf::write(f, path);
      CHECK(slurp(path) == b1);
      const gf::File r = gf::read(path);
      gf::layout(f);
      CHECK(r == f);
      for (const auto& t : r.tensors) CHECK(t.offset % alignment == 0);
      CHECK(gf::serialize(r) == b1);
      // spot checks of the exact types and edge values
      CHECK(r.at("v.i8").get<std::int8_t>() == -128);
      CHECK(r.at("v.u64").get<std::uint64_t>() == std::numeric_limits<std::uint64_t>::max());
      CHECK(std::signbit(r.at("v.f32").get<float>()));
      CHECK(gg::float_bits(r.at("v.f32.nan").get<float>()) == 0x7fc00123u);
      CHECK(r.at("v.str").str() == std::string("with\0nul and \xc3\xa9", 15));
      CHECK(r.at("a.i32").elem_type() == ValueType::I32);
      CHECK(r.at("a.i32").arr().empty());
      CHECK(r.at("a.str.empty").elem_type() == ValueType::STRING);
      CHECK(r.at("a.bool").to_vector<bool>() == std::vector<bool>{true, false, true});
      CHECK(r.find_tensor("t.empty")->data.empty());
    }
  }
}

TEST_CASE("gguf: File and Value API", "[gguf]") {
  gf::File f;
  f.set("b", 1);
  f.set("a", 2u);
  f.set("c", 3.0);
  f.set("a", std::int64_t{7});  // replaced in place: order kept
  REQUIRE(f.metadata.size() == 3);
  CHECK(f.metadata[1].first == "a");
  CHECK(f.at("a").type() == ValueType::I64);
  CHECK(f.at("b").type() == ValueType::I32);
  CHECK(f.at("c").type() == ValueType::F64);
  CHECK(gf::Value(1.0f).type() == ValueType::F32);
  CHECK(gf::Value(std::uint8_t{1}).type() == ValueType::U8);
  CHECK(gf::Value("s").type() == ValueType::STRING);
  CHECK(gf::Value(true).type() == ValueType::BOOL);
  CHECK(gf::Value(0.0f) != gf::Value(-0.0f));
  CHECK(gf::Value(1) != gf::Value(1u));
  CHECK(gf::Value::array_of(std::vector<std::int32_t>{}) != gf::Value::array_of(std::vector<std::uint32_t>{}));
  CHECK(gf::to_string(gf::Value::array_of(std::vector<std::int32_t>{1, -2})) == "[1, -2]");
  CHECK(f.erase("b"));
  CHECK_FALSE(f.erase("b"));
  CHECK_THROWS_WITH(gf::Value::array(ValueType::I32, {gf::Value(1), gf::Value(2u)}), Catch::Contains("item 1"));
  CHECK_THROWS_WITH(gf::Value::array(ValueType::ARRAY, {}), Catch::Contains("arrays of arrays"));
  CHECK_THROWS_AS(gf::Value::array(ValueType::I32, {gf::Value(1), gf::Value(2u)}), pptq::UsageError);
  CHECK_THROWS_AS(gf::Value(1).elem_type(), pptq::DataError);

  CHECK_THROWS_WITH(f.add_tensor("x", {100}, gg::Type::Q4_0, {}), Catch::Contains("multiple of the block size"));
  CHECK_THROWS_WITH(f.add_tensor("x", {32}, gg::Type::Q4_0, {}), Catch::Contains("expected 18"));
  CHECK_THROWS_WITH(f.add_tensor("x", {}, gg::Type::F32, {}), Catch::Contains("n_dims 0"));
  CHECK_THROWS_WITH(f.add_tensor("x", {1, 1, 1, 1, 1}, gg::Type::F32, {}), Catch::Contains("n_dims 5"));
  CHECK_THROWS_WITH(f.add_tensor("x", {std::uint64_t{1} << 62, 4}, gg::Type::F32, {}), Catch::Contains("overflows"));
  CHECK_THROWS_AS(f.add_tensor("x", {100}, gg::Type::Q4_0, {}), pptq::UsageError);
  CHECK_THROWS_WITH(f.add_tensor("x", {}, gg::Type::F32, {}), Catch::StartsWith("gguf: tensor 'x': n_dims 0"));
  CHECK_THROWS_AS(gf::tensor_nbytes({100}, gg::Type::Q4_0), pptq::UsageError);
  CHECK_THROWS_WITH(gf::tensor_nbytes({100}, gg::Type::Q4_0), Catch::StartsWith("gguf: ne[0] = 100"));
  f.add_tensor("x", {32}, gg::Type::Q4_0, std::vector<std::uint8_t>(18));
  CHECK_THROWS_WITH(f.add_tensor("x", {32}, gg::Type::Q4_0, std::vector<std::uint8_t>(18)), Catch::Contains("duplicate tensor name"));

  // invalid Files are refused by the writer
  gf::File bad = f;
  bad.tensors[0].data.pop_back();
  CHECK_THROWS_WITH(gf::serialize(bad), Catch::Contains("17 bytes"));
  CHECK_THROWS_AS(gf::serialize(bad), pptq::UsageError);
  bad = f;
  bad.metadata.emplace_back("a", gf::Value(1));
  CHECK_THROWS_WITH(gf::serialize(bad), Catch::Contains("duplicate key 'a'"));
  bad = f;
  bad.set("general.alignment", 48u);
  CHECK_THROWS_WITH(gf::serialize(bad), Catch::Contains("power of two"));
  bad.set("general.alignment", 64);
  CHECK_THROWS_WITH(gf::serialize(bad), Catch::Contains("must be a u32"));
  CHECK_THROWS_AS(gf::serialize(bad), pptq::UsageError);
  // only a caller's set() can make the alignment invalid (the reader refuses such a file)
  CHECK_THROWS_AS(bad.alignment(), pptq::UsageError);
}

TEST_CASE("gguf: Reader parses the header alone and reads each tensor on demand", "[gguf][golden]") {
  const gf::File f = gf::read(kGolden);
  gf::Reader r(kGolden);
  gf::File bare = f;
  for (auto& t : bare.tensors) t.data.clear();
  CHECK(r.index() == bare);  // metadata, names, shapes, types, offsets; no data
  for (std::size_t i = f.tensors.size(); i-- > 0;) CHECK(r.load(i) == f.tensors[i].data);  // any order
  CHECK_THROWS_AS(r.load(f.tensors.size()), pptq::UsageError);

  // A header larger than the first read (1 MiB): the prefix grows until the header is in.
  TempDir dir;
  gf::File big;
  big.set("general.architecture", "x");
  // An array whose count reaches past the first read (the count is checked against the bytes left).
  big.set("k.vocab", gf::Value::array_of(std::vector<std::string>(200000, "piece")));
  big.set("k.long", std::string(3u << 20, 'a'));
  big.set("k.arr", gf::Value::array_of(std::vector<std::string>(70000, "token")));
  big.add_tensor("w", {32, 3}, gg::Type::Q8_0, std::vector<std::uint8_t>(3 * 34, 0x11));
  big.add_tensor("n", {5}, gg::Type::F32, std::vector<std::uint8_t>(20, 0x3f));
  const std::string path = (dir.path / "big.gguf").string();
  gf::write(big, path);
  gf::Reader rb(path);
  CHECK(rb.index().at("k.long").str().size() == (3u << 20));
  CHECK(rb.index().at("k.vocab").array_size() == 200000);
  CHECK(rb.load(0) == big.tensors[0].data);
  CHECK(rb.load(1) == big.tensors[1].data);

  // A truncated file is refused when opened, as read() refuses it.
  std::vector<std::uint8_t> bytes = slurp(path);
  for (std::size_t len : {std::size_t{100}, bytes.size() / 2, bytes.size() - 10}) {
    const std::string cut = (dir.path / "cut.gguf").string();
    std::ofstream(cut, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(len));
    INFO("cut at " << len);
    CHECK_THROWS_WITH(gf::Reader(cut), Catch::Contains("truncated"));
  }
}

TEST_CASE("gguf: StreamWriter writes what write() writes, one tensor at a time, and refuses what does not fit", "[gguf][golden]") {
  const std::vector<std::uint8_t> bytes = slurp(kGolden);
  gf::Reader r(kGolden);
  TempDir dir;
  const std::string out = (dir.path / "streamed.gguf").string();
  {
    pptq::io::AtomicFile file(out);
    gf::StreamWriter w(r.index(), file);
    for (std::size_t i = 0; i < r.index().tensors.size(); ++i) {
      CHECK(w.written() == i);
      w.write(r.load(i));
    }
    w.finish();
    file.commit();
  }
  CHECK(slurp(out) == bytes);

  pptq::io::AtomicFile file((dir.path / "bad.gguf").string());
  gf::StreamWriter w(r.index(), file);
  std::vector<std::uint8_t> first = r.load(0);
  first.push_back(0);
  CHECK_THROWS_WITH(w.write(first), Catch::Contains(r.index().tensors[0].name) && Catch::Contains("bytes"));
  w.write(r.load(0));
  CHECK_THROWS_WITH(w.finish(), Catch::Contains("not complete"));
  for (std::size_t i = 1; i < r.index().tensors.size(); ++i) w.write(r.load(i));
  CHECK_THROWS_WITH(w.write(r.load(0)), Catch::Contains("written already"));
  w.finish();
}  // bad.gguf is never committed: nothing is left but streamed.gguf (TempDir removes it)

TEST_CASE("gguf: every truncation of a valid file is rejected cleanly", "[gguf][malformed]") {
  gf::File f;
  f.set("general.architecture", "x");
  f.set("k.arr", gf::Value::array_of(std::vector<std::string>{"ab", "c"}));
  f.set("k.f", gf::Value::array_of(std::vector<float>{1.0f, 2.0f}));
  f.set("k.u16", std::uint16_t{3});
  f.add_tensor("w", {32, 2}, gg::Type::Q4_0, std::vector<std::uint8_t>(36, 0x5a));
  f.add_tensor("n", {3}, gg::Type::F32, std::vector<std::uint8_t>(12, 0x3f));
  const std::vector<std::uint8_t> full = gf::serialize(f);
  REQUIRE_NOTHROW(parse(full));
  for (std::size_t len = 0; len < full.size(); ++len) {
    INFO("prefix of " << len << " of " << full.size() << " bytes");
    // a copy of exactly len bytes, so ASan sees any read past the prefix
    const std::vector<std::uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_THROWS_WITH(gf::parse(cut.data(), cut.size(), "cut"), Catch::Contains("truncated"));
  }
  // the message says where: cut inside a key, a value, an array, a tensor info, the data
  const std::vector<std::uint8_t> g = slurp(kGolden);
  auto cut_at = [&](std::size_t len, const std::string& substring) {
    INFO("cut at " << len << ", expected: " << substring);
    CHECK_THROWS_WITH(gf::parse(g.data(), len, "cut"), Catch::Contains("truncated") && Catch::Contains(substring));
  };
  cut_at(find_bytes(g, "t.u16") + 2, "key of metadata entry 4");
  cut_at(find_bytes(g, "t.u16") - 4, "length of key of metadata entry 4");
  cut_at(type_pos_of_key(g, "t.u16") + 2, "value type of key 't.u16'");
  cut_at(type_pos_of_key(g, "t.u16") + 5, "value of key 't.u16'");
  cut_at(type_pos_of_key(g, "general.name") + 20, "value of key 'general.name'");
  cut_at(type_pos_of_key(g, "t.arr_i32") + 6, "array element type of key 't.arr_i32'");
  cut_at(type_pos_of_key(g, "t.arr_i32") + 10, "array length of key 't.arr_i32'");
  cut_at(type_pos_of_key(g, "t.arr_i32") + 4 + 4 + 8 + 5, "array of 3 i32");
  cut_at(find_bytes(g, "alpha") + 2, "array of 3 string for key 't.arr_str'");
  cut_at(find_bytes(g, "\xce\xb3\xce\xac") + 3, "array item 2 of key 't.arr_str'");
  cut_at(find_bytes(g, "blk.0.f16.weight") + 3, "name of tensor info 1");
  cut_at(info_pos_of_tensor(g, "blk.0.f16.weight") + 2, "n_dims of tensor 'blk.0.f16.weight'");
  cut_at(info_pos_of_tensor(g, "blk.0.f16.weight") + 13, "ne[1] of tensor 'blk.0.f16.weight'");
  cut_at(info_pos_of_tensor(g, "blk.0.f16.weight") + 22, "type of tensor 'blk.0.f16.weight'");
  cut_at(info_pos_of_tensor(g, "blk.0.f16.weight") + 30, "offset of tensor 'blk.0.f16.weight'");
  cut_at(g.size() - 100, "tensor 'blk.0.q4_k.weight': data out of range");

  // and every prefix of the golden file too (different shapes of metadata)
  const std::vector<std::uint8_t> golden = slurp(kGolden);
  for (std::size_t len = 0; len < golden.size(); ++len) {
    const std::vector<std::uint8_t> cut(golden.begin(), golden.begin() + static_cast<std::ptrdiff_t>(len));
    INFO("golden prefix of " << len);
    CHECK_THROWS_WITH(gf::parse(cut.data(), cut.size(), "cut"), Catch::Contains("truncated"));
  }
}

TEST_CASE("gguf: malformed files are rejected with a message naming the problem", "[gguf][malformed]") {
  const std::vector<std::uint8_t> good = slurp(kGolden);
  auto rejects = [&](std::vector<std::uint8_t> b, const std::string& substring) {
    INFO("expected: " << substring);
    CHECK_THROWS_WITH(parse(b), Catch::Contains(substring));
    CHECK_THROWS_WITH(parse(b), Catch::StartsWith("gguf: "));
    CHECK_THROWS_AS(parse(b), pptq::DataError);
  };
  std::vector<std::uint8_t> b;

  b = good;
  b[0] = 'X';
  rejects(b, "bad magic");
  rejects(std::vector<std::uint8_t>{'G', 'G', 'U'}, "truncated");
  rejects(std::vector<std::uint8_t>{}, "truncated");

  b = good;
  put_le(b, 4, 2, 4);
  rejects(b, "unsupported GGUF version 2");

  b = good;  // kv count larger than the file can hold: the reader runs into the tensor infos, then the end
  put_le(b, 16, std::uint64_t{1} << 60, 8);
  rejects(b, "gguf: test: ");
  b = good;  // tensor count larger than the file can hold
  put_le(b, 8, std::uint64_t{1} << 40, 8);
  rejects(b, "gguf: test: ");
  b = good;  // more tensors than there are infos: the data is read as tensor infos
  put_le(b, 8, 5, 8);
  rejects(b, "gguf: test: ");

  b = good;  // unknown value type
  put_le(b, type_pos_of_key(b, "t.u16"), 13, 4);
  rejects(b, "unknown value type 13");
  b = good;  // unknown array element type
  put_le(b, type_pos_of_key(b, "t.arr_i32") + 4, 99, 4);
  rejects(b, "unknown array element type 99");
  b = good;  // nested arrays
  put_le(b, type_pos_of_key(b, "t.arr_i32") + 4, 9, 4);
  rejects(b, "nested arrays");
  b = good;  // array count beyond the file
  put_le(b, type_pos_of_key(b, "t.arr_f32") + 8, std::uint64_t{1} << 50, 8);
  rejects(b, "beyond the end of the file");
  b = good;  // string length beyond the file (the key "t.u8")
  put_le(b, find_bytes(b, "t.u8") - 8, std::uint64_t{1} << 40, 8);
  rejects(b, "beyond the end of the file");
  b = good;  // string value length beyond the file (general.name's value)
  put_le(b, type_pos_of_key(b, "general.name") + 4, 0xffffffffffffffffull, 8);
  rejects(b, "beyond the end of the file");
  b = good;  // bool other than 0/1
  b.at(type_pos_of_key(b, "t.bool") + 4) = 2;
  rejects(b, "invalid bool value 2");
  b = good;  // duplicate key: rename t.i8 to t.u8
  b.at(find_bytes(b, "t.i8") + 2) = 'u';
  rejects(b, "duplicate key 't.u8'");

  b = good;  // duplicate tensor name
  b.at(find_bytes(b, "blk.0.f16.weight") + 7) = '3';
  b.at(find_bytes(b, "blk.0.f36.weight") + 8) = '2';
  rejects(b, "duplicate tensor name 'blk.0.f32.weight'");

  const std::size_t f16 = info_pos_of_tensor(good, "blk.0.f16.weight");  // n_dims u32, ne[2] u64, type u32, offset u64
  const std::size_t q4k = info_pos_of_tensor(good, "blk.0.q4_k.weight");
  REQUIRE(get_le(good, f16, 4) == 2);
  REQUIRE(get_le(good, f16 + 4 + 16, 4) == 1);
  REQUIRE(get_le(good, f16 + 4 + 16 + 4, 8) == 96);
  b = good;
  put_le(b, f16 + 4 + 16, 7, 4);
  rejects(b, "unknown or unsupported tensor type 7");
  b = good;
  put_le(b, f16 + 4 + 16, 0xffffffffu, 4);
  rejects(b, "tensor type 4294967295");
  b = good;
  put_le(b, f16, 0, 4);
  rejects(b, "n_dims 0 is outside 1..4");
  b = good;
  put_le(b, f16, 5, 4);
  rejects(b, "n_dims 5 is outside 1..4");
  b = good;
  put_le(b, q4k + 4, 500, 8);
  rejects(b, "not a multiple of the block size 256");
  b = good;
  put_le(b, q4k + 4 + 8, std::uint64_t{1} << 60, 8);
  rejects(b, "overflows");
  b = good;
  put_le(b, f16 + 4 + 16 + 4, 100, 8);
  rejects(b, "offset 100 is not aligned to 32");
  b = good;
  put_le(b, f16 + 4 + 16 + 4, 1u << 20, 8);
  rejects(b, "data out of range");
  b = good;
  put_le(b, f16 + 4 + 16 + 4, 0xffffffffffffffe0ull, 8);
  rejects(b, "data out of range");
  b = good;
  put_le(b, f16 + 4 + 16 + 4, 64, 8);  // f16 data [64, 84) inside the f32 tensor [0, 96)
  rejects(b, "overlap");
  b = good;  // the data section cut short by one byte of padding
  b.pop_back();
  rejects(b, "data out of range");

  // general.alignment of the wrong type or not a power of two
  std::vector<std::uint8_t> ab;
  {
    gf::File ok;
    ok.set("general.alignment", 64u);
    ab = gf::serialize(ok);
  }
  put_le(ab, type_pos_of_key(ab, "general.alignment") + 4, 48, 4);
  rejects(ab, "power of two");
  put_le(ab, type_pos_of_key(ab, "general.alignment"), 5, 4);  // now an i32
  rejects(ab, "must be a u32");

  // the path appears in read()'s messages
  TempDir dir;
  const std::string p = (dir.path / "bad.gguf").string();
  {
    std::ofstream o(p, std::ios::binary);
    o << "GGUX";
  }
  CHECK_THROWS_WITH(gf::read(p), Catch::Contains(p) && Catch::Contains("bad magic"));
  CHECK_THROWS_AS(gf::read(p), pptq::DataError);
  CHECK_THROWS_WITH(gf::read((dir.path / "missing.gguf").string()), Catch::Contains("cannot open"));
  CHECK_THROWS_AS(gf::read((dir.path / "missing.gguf").string()), pptq::IoError);
}

TEST_CASE("gguf: random corruptions are either read or rejected with pptq::DataError, never a crash", "[gguf][malformed]") {
  // Run under ASan/UBSan this also checks that no corruption makes the reader touch memory out of bounds.
  const std::vector<std::uint8_t> good = slurp(kGolden);
  std::mt19937 rng(7);
  int rejected = 0, accepted = 0;
  for (int it = 0; it < 3000; ++it) {
    std::vector<std::uint8_t> b = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // mostly the header region, where the structure is
      const std::size_t at = rng() % 2 ? rng() % 0x300 : rng() % b.size();
      b[at] = static_cast<std::uint8_t>(rng() % 3 == 0 ? 0xff : rng() & 0xffu);
    }
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    try {
      const gf::File f = gf::parse(b.data(), b.size(), "fuzz");
      ++accepted;
      (void)gf::serialize(f);  // whatever was accepted can be written again
    } catch (const pptq::DataError&) {
      ++rejected;
    }
  }
  CHECK(rejected > 0);
  CHECK(accepted > 0);
}

TEST_CASE("gguf: a failed write leaves nothing behind", "[gguf]") {
  const gf::File f = gf::read(kGolden);
  TempDir dir;
  const fs::path missing = dir.path / "no" / "such" / "dir";
  CHECK_THROWS_AS(gf::write(f, (missing / "x.gguf").string()), pptq::IoError);
  CHECK_FALSE(fs::exists(dir.path / "no"));
  CHECK(dir.entries() == 0);

  // an invalid File is refused before anything touches the disk, and an existing file is left as it was
  const std::string path = (dir.path / "x.gguf").string();
  gf::write(f, path);
  gf::File bad = f;
  bad.tensors[1].data.push_back(0);
  CHECK_THROWS_AS(gf::write(bad, path), pptq::UsageError);
  CHECK(dir.entries() == 1);
  CHECK(slurp(path) == slurp(kGolden));
}
