// Gram files (include/pptq/io/gram_file.hpp): what `pptq-gguf calibrate` writes and the requantizer
// reads. Round trips (shared inputs, experts, cross Grams, calibration metadata), the float rounding of
// the stored matrices, and malformed files → pptq::DataError.
#include <catch2/catch.hpp>

#include <pptq/gram.hpp>
#include <pptq/io/gram_file.hpp>

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

namespace gf = pptq::gguf;
namespace fs = std::filesystem;
using pptq::io::GramFile;
using pptq::io::GramRecord;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    for (int i = 0;; ++i) {
      path = fs::temp_directory_path() / ("pptq_gram_file_test_" + std::to_string(rd()) + "_" + std::to_string(i));
      if (fs::create_directory(path)) break;
    }
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

Eigen::MatrixXd random_gram(Eigen::Index rows, Eigen::Index n, std::mt19937_64& rng, std::int64_t* samples = nullptr) {
  std::normal_distribution<double> nd(0.0, 1.0);
  Eigen::MatrixXd X(rows, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) X(i, j) = nd(rng) * (1.0 + static_cast<double>(j % 5));
  pptq::Gram<double> g;
  g.add(X);
  if (samples) *samples = g.samples();
  return g.matrix();
}

// What the file stores: every entry rounded to float.
Eigen::MatrixXd as_float(const Eigen::MatrixXd& M) { return M.cast<float>().cast<double>(); }

// Three records as a calibration writes them: q, k, v share the attention input; an expert's Gram; a
// record with a cross Gram.
std::vector<GramRecord> sample_records(std::mt19937_64& rng) {
  std::vector<GramRecord> recs(3);
  recs[0].weights = {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"};
  recs[0].input = "attn_norm-0";
  recs[0].H = random_gram(40, 16, rng, &recs[0].samples);
  recs[1].weights = {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"};
  recs[1].expert = 3;
  recs[1].H = random_gram(7, 16, rng, &recs[1].samples);
  recs[2].weights = {"output.weight"};
  recs[2].H = random_gram(40, 12, rng, &recs[2].samples);
  std::normal_distribution<double> nd(0.0, 10.0);
  recs[2].cross = Eigen::MatrixXd::NullaryExpr(12, 12, [&] { return nd(rng); });
  return recs;
}

// Writes a (possibly damaged) image and reads it back.
GramFile reread(const gf::File& f, const TempDir& dir) {
  const std::string path = dir.file("g.gguf");
  gf::write(f, path);
  return pptq::io::read_gram_file(path);
}

}  // namespace

TEST_CASE("gram file: round trip keeps every record, shared inputs once, experts and cross Grams", "[gram_file]") {
  std::mt19937_64 rng(11);
  const std::vector<GramRecord> recs = sample_records(rng);
  TempDir dir;
  const std::string path = dir.file("grams.gguf");
  pptq::io::write_gram_file(path, recs, {{"tokens", gf::Value(std::uint64_t(40))}, {"pptq.calibration.model", gf::Value("m.gguf")}});
  const GramFile g = pptq::io::read_gram_file(path);

  REQUIRE(g.grams.size() == 3);
  REQUIRE(g.by_weight.size() == 6);
  // q, k and v point at one record: the shared input is stored once.
  const pptq::io::GramRecord* q = g.find("blk.0.attn_q.weight");
  REQUIRE(q != nullptr);
  CHECK(g.find("blk.0.attn_k.weight") == q);
  CHECK(g.find("blk.0.attn_v.weight") == q);
  CHECK(q->input == "attn_norm-0");
  CHECK(q->samples == 40);
  CHECK(q->expert == -1);
  CHECK(q->cross.size() == 0);
  CHECK(q->H == as_float(recs[0].H));  // exactly the float rounding of each entry
  CHECK(q->H == q->H.transpose());

  // An expert's Gram is found under its expert index only.
  CHECK(g.find("blk.0.ffn_up_exps.weight") == nullptr);
  CHECK(g.find("blk.0.ffn_up_exps.weight", 2) == nullptr);
  const GramRecord& e = g.at("blk.0.ffn_up_exps.weight", 3);
  CHECK(&e == g.find("blk.0.ffn_gate_exps.weight", 3));
  CHECK(g.by_weight.count("blk.0.ffn_gate_exps.weight#3") == 1);
  CHECK(e.expert == 3);
  CHECK(e.samples == 7);
  CHECK(e.H == as_float(recs[1].H));

  const GramRecord& o = g.at("output.weight");
  CHECK(o.cross == as_float(recs[2].cross));  // not symmetric: rows and columns must not be swapped
  CHECK(o.cross != as_float(recs[2].cross).transpose());
  CHECK_THROWS_AS(g.at("blk.9.attn_q.weight"), pptq::DataError);

  REQUIRE(g.calibration.size() == 2);
  CHECK(g.calibration[0].first == "pptq.calibration.tokens");
  CHECK(g.calibration[0].second == gf::Value(std::uint64_t(40)));
  CHECK(g.calibration[1].first == "pptq.calibration.model");
}

TEST_CASE("gram file: the streaming writer writes exactly the in-memory image, and nothing else", "[gram_file]") {
  std::mt19937_64 rng(12);
  const std::vector<GramRecord> recs = sample_records(rng);
  const std::vector<std::pair<std::string, gf::Value>> cal = {{"ctx", gf::Value(std::uint32_t(64))}};
  TempDir dir;
  const std::string path = dir.file("grams.gguf");
  {
    pptq::io::GramFileWriter w(dir.file("abandoned.gguf"), cal);
    w.add(recs[0]);
  }  // never committed: no file, no spill left behind
  pptq::io::GramFileWriter w(path, cal);
  for (const GramRecord& r : recs) w.add(r);
  CHECK(w.size() == 3);
  w.commit();
  std::ifstream in(path, std::ios::binary);
  const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(bytes == gf::serialize(pptq::io::make_gram_file(recs, cal)));
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    INFO(e.path());
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("gram file: the stored triangle is the lower triangle, row by row", "[gram_file]") {
  GramRecord r;
  r.weights = {"w"};
  r.H.resize(3, 3);
  r.H << 1, 2, 4,  //
         2, 3, 5,  //
         4, 5, 6;
  const gf::File f = pptq::io::make_gram_file({r});
  const gf::TensorInfo* t = f.find_tensor("pptq.grams.0.xtx");
  REQUIRE(t != nullptr);
  REQUIRE(t->ne == std::vector<std::uint64_t>{6});
  std::vector<float> v(6);
  std::memcpy(v.data(), t->data.data(), 24);
  CHECK(v == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(f.at("pptq.grams.0.cols") == gf::Value(std::uint32_t(3)));
  CHECK(f.at("general.type").str() == "pptq-grams");
}

TEST_CASE("gram file: invalid records are a usage error and nothing is written", "[gram_file]") {
  TempDir dir;
  const std::string path = dir.file("bad.gguf");
  GramRecord r;
  r.weights = {"w"};
  r.H = Eigen::MatrixXd::Identity(4, 4);
  SECTION("no weight") { r.weights.clear(); }
  SECTION("not square") { r.H = Eigen::MatrixXd::Zero(4, 3); }
  SECTION("NaN") { r.H(2, 1) = std::nan(""); }
  SECTION("cross of another size") { r.cross = Eigen::MatrixXd::Zero(3, 3); }
  SECTION("negative samples") { r.samples = -1; }
  CHECK_THROWS_AS(pptq::io::write_gram_file(path, {r}), pptq::UsageError);
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("gram file: malformed files are data errors naming the problem", "[gram_file]") {
  std::mt19937_64 rng(5);
  const gf::File good = pptq::io::make_gram_file(sample_records(rng));
  TempDir dir;
  REQUIRE_NOTHROW(reread(good, dir));
  gf::File f = good;
  std::string expect;

  SECTION("not a Gram file: a model's GGUF") {
    f.erase("general.type");
    f.set("general.architecture", "llama");
    expect = "general.type";
  }
  SECTION("another file type") {
    f.set("general.type", "model");
    expect = "not a Gram file";
  }
  SECTION("a future version") {
    f.set("pptq.grams.version", std::uint32_t(2));
    expect = "version 2";
  }
  SECTION("count larger than the records") {
    f.set("pptq.grams.count", std::uint32_t(9));
    expect = "count";
  }
  SECTION("a weight in two records") {
    f.set("pptq.grams.2.weights", gf::Value::array_of(std::vector<std::string>{"blk.0.attn_k.weight"}));
    expect = "more than one Gram";
  }
  SECTION("weights of the wrong type") {
    f.set("pptq.grams.0.weights", gf::Value("blk.0.attn_q.weight"));
    expect = "array of strings";
  }
  SECTION("no weights") {
    f.set("pptq.grams.0.weights", gf::Value::array_of(std::vector<std::string>{}));
    expect = "empty";
  }
  SECTION("samples of the wrong type") {
    f.set("pptq.grams.1.samples", std::int32_t(7));
    expect = "samples";
  }
  SECTION("cols disagree with the triangle") {
    f.set("pptq.grams.0.cols", std::uint32_t(15));
    expect = "wrong shape";
  }
  SECTION("a missing matrix") {
    f.tensors.erase(f.tensors.begin());
    expect = "missing tensor";
  }
  SECTION("a stray tensor") {
    f.add_tensor("blk.0.attn_q.weight", {4}, pptq::ggml::Type::F32, std::vector<std::uint8_t>(16, 0));
    expect = "unexpected tensor";
  }
  SECTION("a non-finite entry") {
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(f.find_tensor("pptq.grams.1.xtx")->data.data() + 8, &inf, 4);
    expect = "non-finite";
  }
  SECTION("a negative diagonal entry") {
    const float neg = -1.0f;
    std::memcpy(f.find_tensor("pptq.grams.1.xtx")->data.data() + 8, &neg, 4);  // element 2 = H(1,1)
    expect = "negative diagonal";
  }
  SECTION("a cross Gram of the wrong type") {
    gf::TensorInfo* t = f.find_tensor("pptq.grams.2.cross");
    t->type = pptq::ggml::Type::F16;
    t->data.resize(t->data.size() / 2);
    expect = "is f16, not f32";
  }
  try {
    reread(f, dir);
    FAIL("no error for a malformed file (expected: " << expect << ")");
  } catch (const pptq::DataError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(expect) != std::string::npos);
  }
}

TEST_CASE("gram file: damaged bytes and missing files", "[gram_file]") {
  std::mt19937_64 rng(6);
  const std::vector<std::uint8_t> bytes = gf::serialize(pptq::io::make_gram_file(sample_records(rng)));
  TempDir dir;
  const std::string path = dir.file("g.gguf");
  auto put = [&](const std::vector<std::uint8_t>& b) {
    std::ofstream o(path, std::ios::binary | std::ios::trunc);
    o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  put(bytes);
  REQUIRE_NOTHROW(pptq::io::read_gram_file(path));
  // Truncated anywhere: in the header, the metadata, or the data.
  for (std::size_t cut : {std::size_t(3), std::size_t(40), bytes.size() / 3, bytes.size() - 1}) {
    put(std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut)));
    CHECK_THROWS_AS(pptq::io::read_gram_file(path), pptq::DataError);
  }
  put({'n', 'o', 't', ' ', 'g', 'g', 'u', 'f'});
  CHECK_THROWS_AS(pptq::io::read_gram_file(path), pptq::DataError);
  CHECK_THROWS_AS(pptq::io::read_gram_file(dir.file("missing.gguf")), pptq::IoError);
}
