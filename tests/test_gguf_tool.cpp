// The pptq-gguf command-line tool (tools/pptq_gguf.cpp): runs the built binary (test::gguf_tool_path())
// on a small GGUF model written here with pptq::gguf, and checks that exactly the tensors with a Hessian (or
// calibration inputs) change, to the bytes pptq::ggml::quantize_optq gives in-process, that everything else
// is copied byte for byte, and every error case (message, exit code, nothing left behind).
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include "test_support.hpp"

#include <pptq/ggml/grid.hpp>
#include <pptq/gram.hpp>
#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/gram_file.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/qronos.hpp>

#include <nlohmann/json.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace gguf = pptq::gguf;
using pptq::ggml::Type;
using Eigen::MatrixXd;
using Eigen::MatrixXf;
using pptq::Index;

/// The test's directory with `hess` (Hessians) and `out` (where only OUT.gguf may ever appear).
struct TempDir : test::TempDir {
  TempDir() : test::TempDir("pptq_gguf_tool") {
    fs::create_directory(path + "/hess");
    fs::create_directory(path + "/out");
  }
  std::string hess(const std::string& name) const { return path + "/hess/" + name; }
  std::string out() const { return path + "/out/OUT.gguf"; }
  std::set<std::string> out_listing() const { return names("out"); }
};

using test::slurp;

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

using Run = test::ProgramRun;

Run run_tool(const TempDir& d, const std::vector<std::string>& args) {
  return test::run_program(test::gguf_tool_path(), args, d / "tool.stdout", d / "tool.stderr");
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream is(s);
  for (std::string l; std::getline(is, l);) v.push_back(l);
  return v;
}

// ------------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------------

std::vector<std::uint8_t> f32_bytes(const MatrixXf& W) {  // rows of W contiguous: ne = [cols, rows]
  std::vector<std::uint8_t> b;
  for (Index i = 0; i < W.rows(); ++i)
    for (Index j = 0; j < W.cols(); ++j) {
      const std::uint32_t u = pptq::ggml::float_bits(W(i, j));
      for (int k = 0; k < 4; ++k) b.push_back(static_cast<std::uint8_t>(u >> (8 * k)));
    }
  return b;
}

std::vector<std::uint8_t> f16_bytes(const MatrixXf& W) {
  std::vector<std::uint8_t> b;
  for (Index i = 0; i < W.rows(); ++i)
    for (Index j = 0; j < W.cols(); ++j) {
      const std::uint16_t h = pptq::ggml::float_to_half(W(i, j));
      b.push_back(static_cast<std::uint8_t>(h));
      b.push_back(static_cast<std::uint8_t>(h >> 8));
    }
  return b;
}

MatrixXf gaussian(Index r, Index c, std::mt19937_64& rng, double s) {
  std::normal_distribution<double> g(0.0, s);
  MatrixXf m(r, c);
  for (Index j = 0; j < c; ++j)
    for (Index i = 0; i < r; ++i) m(i, j) = static_cast<float>(g(rng));
  return m;
}

/// Calibration inputs with unequal channel scales and correlations (so OPTQ has something to exploit).
MatrixXd inputs(Index m, Index n, std::mt19937_64& rng) {
  std::normal_distribution<double> g;
  MatrixXd Z(m, 8), A(8, n), X(m, n);
  for (Index j = 0; j < 8; ++j)
    for (Index i = 0; i < m; ++i) Z(i, j) = g(rng);
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < 8; ++i) A(i, j) = g(rng);
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i) X(i, j) = (Z.row(i).dot(A.col(j)) + 0.3 * g(rng)) * (1.0 + 2.0 * ((j * 7) % 5 == 0));
  return X;
}

struct Model {
  gguf::File file;
  MatrixXf Wq, Wup, Wdown_f16, Wout;  // Wdown_f16: the f16 tensor decoded, exactly as the tool sees it
  MatrixXd Xq, Xup, Xdown;            // calibration inputs of three layers
  Model() {
    std::mt19937_64 rng(2024);
    Wq = gaussian(8, 256, rng, 0.05);
    Wup = gaussian(16, 512, rng, 0.02);
    const MatrixXf down = gaussian(8, 256, rng, 0.03);
    Wout = gaussian(4, 256, rng, 0.05);
    Xq = inputs(300, 256, rng);
    Xup = inputs(400, 512, rng);
    Xdown = inputs(300, 256, rng);

    gguf::File& f = file;
    f.set("general.architecture", gguf::Value("llama"));
    f.set("general.alignment", gguf::Value(std::uint32_t(64)));
    f.set("meta.u8", gguf::Value(std::uint8_t(200)));
    f.set("meta.i8", gguf::Value(std::int8_t(-100)));
    f.set("meta.u16", gguf::Value(std::uint16_t(60000)));
    f.set("meta.i16", gguf::Value(std::int16_t(-30000)));
    f.set("meta.u32", gguf::Value(std::uint32_t(4000000000u)));
    f.set("meta.i32", gguf::Value(std::int32_t(-2000000000)));
    f.set("meta.f32", gguf::Value(1e-5f));
    f.set("meta.bool", gguf::Value(true));
    f.set("meta.string", gguf::Value("a string with ünïcode"));
    f.set("meta.u64", gguf::Value(std::uint64_t(1) << 60));
    f.set("meta.i64", gguf::Value(-(std::int64_t(1) << 60)));
    f.set("meta.f64", gguf::Value(-0.0));
    f.set("meta.nan", gguf::Value(std::numeric_limits<float>::quiet_NaN()));
    f.set("tokenizer.ggml.tokens", gguf::Value::array_of(std::vector<std::string>{"<s>", "</s>", "hello", ""}));
    f.set("meta.arr_i32", gguf::Value::array_of(std::vector<std::int32_t>{1, -2, 3}));
    f.set("meta.arr_f32", gguf::Value::array_of(std::vector<float>{0.5f, -1.5f}));
    f.set("meta.arr_bool", gguf::Value::array_of(std::vector<bool>{true, false, true}));
    f.set("meta.arr_u8", gguf::Value::array_of(std::vector<std::uint8_t>{}));
    f.set("meta.arr_f64", gguf::Value::array_of(std::vector<double>{3.25}));

    std::vector<float> norm(256);
    for (std::size_t i = 0; i < norm.size(); ++i) norm[i] = 1.0f + 0.01f * static_cast<float>(i);
    f.add_tensor("token_embd.weight", {256, 4}, Type::F32, f32_bytes(Wout));
    f.add_tensor("blk.0.attn_norm.weight", {256}, Type::F32,
                 f32_bytes(Eigen::Map<const MatrixXf>(norm.data(), 1, 256)));
    f.add_tensor("blk.0.attn_q.weight", {256, 8}, Type::F32, f32_bytes(Wq));
    f.add_tensor("blk.0.ffn_up.weight", {512, 16}, Type::F32, f32_bytes(Wup));
    f.add_tensor("blk.0.ffn_down.weight", {256, 8}, Type::F16, f16_bytes(down));
    // Already quantized (copied as is): q4_0 bytes of a 4 x 64 layer.
    const MatrixXf k = gaussian(4, 64, rng, 0.05);
    f.add_tensor("blk.0.attn_k.weight", {64, 4}, Type::Q4_0,
                 pptq::ggml::quantize_rtn(k, Eigen::VectorXd::Ones(64), Type::Q4_0).bytes);
    // 96 columns: a multiple of 32 (q4_0) but not of 256 (the k-quants).
    f.add_tensor("blk.0.narrow.weight", {96, 4}, Type::F32, f32_bytes(gaussian(4, 96, rng, 0.05)));
    f.add_tensor("output.weight", {256, 4}, Type::F32, f32_bytes(Wout));

    Wdown_f16.resize(8, 256);
    for (Index i = 0; i < 8; ++i)
      for (Index j = 0; j < 256; ++j) Wdown_f16(i, j) = pptq::ggml::half_to_float(pptq::ggml::float_to_half(down(i, j)));
  }
  void write(const std::string& path) const { gguf::write(file, path); }
};

MatrixXd gram(const MatrixXd& X) {
  pptq::Gram<double> g(X.cols());
  g.add(X);
  return g.matrix();
}

std::vector<std::string> args(const TempDir& d, const std::string& format, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"requantize", "--model",  d / "IN.gguf", "--hessians", d / "hess",
                                "--format",   format,     "--output",    d.out()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

/// The bytes the library gives in-process for W, H with the tool's default options (or the ones set).
std::vector<std::uint8_t> expected(const MatrixXf& W, const MatrixXd& H, Type type,
                                   const pptq::ggml::QuantizeOptions& opt = {}) {
  const auto gq = pptq::ggml::quantize_optq(W, H, type, opt);
  REQUIRE(gq.result.ok());
  return gq.bytes;
}

/// Checks that `out` is `in` with exactly the tensors in `changed` replaced (type `type`, bytes as given),
/// metadata identical (parsed and as raw bytes), tensor order and shapes kept.
void check_only_changed(const std::string& in_path, const std::string& out_path,
                        const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& changed, Type type) {
  const gguf::File in = gguf::read(in_path), out = gguf::read(out_path);
  CHECK(out.metadata == in.metadata);
  // The header and metadata bytes are those of the input, byte for byte: everything before the first
  // tensor info (its u64 name length followed by the name).
  const std::string ib = slurp(in_path), ob = slurp(out_path);
  const std::string& first = in.tensors.front().name;
  std::string info(8, '\0');
  for (int k = 0; k < 8; ++k) info[static_cast<std::size_t>(k)] = static_cast<char>((first.size() >> (8 * k)) & 0xff);
  info += first;
  const std::size_t at = ib.find(info, 24);
  REQUIRE(at != std::string::npos);
  CHECK(ob.compare(0, at, ib, 0, at) == 0);

  REQUIRE(out.tensors.size() == in.tensors.size());
  for (std::size_t i = 0; i < in.tensors.size(); ++i) {
    const gguf::TensorInfo &a = in.tensors[i], &b = out.tensors[i];
    INFO("tensor " << a.name);
    CHECK(b.name == a.name);
    CHECK(b.ne == a.ne);
    const auto it = std::find_if(changed.begin(), changed.end(), [&](const auto& c) { return c.first == a.name; });
    if (it == changed.end()) {
      CHECK(b.type == a.type);
      CHECK(b.data == a.data);
    } else {
      CHECK(b.type == type);
      CHECK(b.data.size() == it->second.size());
      CHECK(b.data == it->second);
    }
  }
  // The output is what the canonical writer produces (offsets recomputed, aligned, zero padded).
  const std::vector<std::uint8_t> re = gguf::serialize(out);
  CHECK(std::string(re.begin(), re.end()) == ob);
}

/// The run fails with `code`, a single line "pptq-gguf: ...<needle>..." on stderr (with --quiet), and
/// leaves nothing in out/.
void expect_failure(const TempDir& d, std::vector<std::string> a, int code, const std::string& needle) {
  a.push_back("--quiet");
  const Run r = run_tool(d, a);
  INFO("stderr: " << r.err);
  CHECK(r.code == code);
  const auto ls = lines_of(r.err);
  REQUIRE(ls.size() == 1);
  CHECK(ls[0].rfind("pptq-gguf: ", 0) == 0);
  CHECK(ls[0].find(needle) != std::string::npos);
  CHECK(d.out_listing().empty());
}

}  // namespace

TEST_CASE("pptq-gguf: requantize changes exactly the tensors with a Hessian, to quantize_optq's bytes", "[gguf-tool]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = gram(m.Xq), Hdown = 3.5 * gram(m.Xdown);  // any positive multiple of XᵀX
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  pptq::io::write_npy(d.hess("blk.0.ffn_up.weight.X.npy"), m.Xup);
  pptq::io::write_npy(d.hess("blk.0.ffn_down.weight.H.npy"), Hdown);
  spit(d.hess("notes.txt"), "not a .npy: ignored");

  const Run r = run_tool(d, args(d, "q4_k"));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.empty());
  // One start and one done line per tensor, naming it, its shape, formats and the comparison with rounding.
  CHECK(r.err.find("[1/3] blk.0.attn_q.weight: 8 x 256 f32 -> q4_K") != std::string::npos);
  CHECK(r.err.find("[2/3] blk.0.ffn_up.weight: 16 x 512 f32 -> q4_K (H = X^T X)") != std::string::npos);
  CHECK(r.err.find("[3/3] blk.0.ffn_down.weight: 8 x 256 f16 -> q4_K") != std::string::npos);
  CHECK(r.err.find("plain rounding / OPTQ") != std::string::npos);
  for (const auto& l : lines_of(r.err)) CHECK(l.rfind("pptq-gguf: ", 0) == 0);
  CHECK(d.out_listing() == std::set<std::string>{"OUT.gguf"});

  check_only_changed(d / "IN.gguf", d.out(),
                     {{"blk.0.attn_q.weight", expected(m.Wq, Hq, Type::Q4_K)},
                      {"blk.0.ffn_up.weight", expected(m.Wup, gram(m.Xup), Type::Q4_K)},
                      {"blk.0.ffn_down.weight", expected(m.Wdown_f16, Hdown, Type::Q4_K)}},
                     Type::Q4_K);
  // ggml's decode of the new bytes is close to W (sanity of rows = ne[1], cols = ne[0]).
  const gguf::File out = gguf::read(d.out());
  const auto& t = *out.find_tensor("blk.0.attn_q.weight");
  const pptq::Matrix<float> Q = pptq::ggml::dequantize_bytes(t.data, 8, 256, Type::Q4_K);
  CHECK((Q - m.Wq).norm() < 0.2 * m.Wq.norm());
}

TEST_CASE("pptq-gguf: the .X.npy path equals the .H.npy path with H = X^T X", "[gguf-tool]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  pptq::io::write_npy(d.hess("blk.0.ffn_up.weight.X.npy"), m.Xup);
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.X.npy"), pptq::Matrix<float>(m.Xq.cast<float>()));  // float32 X
  Run r = run_tool(d, args(d, "q3_k", {"--quiet"}));
  REQUIRE(r.code == 0);
  INFO("stderr: " << r.err);
  {  // --quiet: no progress; the only lines left are warnings (weights clamped to the format's range)
    std::istringstream lines(r.err);
    for (std::string line; std::getline(lines, line);) CHECK(line.rfind("pptq-gguf: warning: ", 0) == 0);
  }
  const std::string via_x = slurp(d.out());

  fs::remove(d.hess("blk.0.ffn_up.weight.X.npy"));
  fs::remove(d.hess("blk.0.attn_q.weight.X.npy"));
  const MatrixXd Hq = gram(m.Xq.cast<float>().cast<double>());
  pptq::io::write_npy(d.hess("blk.0.ffn_up.weight.H.npy"), gram(m.Xup));
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  r = run_tool(d, args(d, "q3_k", {"--quiet"}));
  REQUIRE(r.code == 0);
  CHECK(slurp(d.out()) == via_x);
  check_only_changed(d / "IN.gguf", d.out(),
                     {{"blk.0.attn_q.weight", expected(m.Wq, Hq, Type::Q3_K)},
                      {"blk.0.ffn_up.weight", expected(m.Wup, gram(m.Xup), Type::Q3_K)}},
                     Type::Q3_K);
}

TEST_CASE("pptq-gguf: --damp, --no-refit and --threads reach quantize_optq, with q4_0 and q2_k", "[gguf-tool]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = gram(m.Xq);
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  pptq::io::write_npy(d.hess("blk.0.narrow.weight.H.npy"), gram(m.Xq.leftCols(96)));
  gguf::File in = gguf::read(d / "IN.gguf");
  MatrixXf narrow(4, 96);  // the f32 tensor as stored: rows of 96 contiguous floats
  std::vector<float> row(96);
  for (Index i = 0; i < 4; ++i) {
    pptq::ggml::dequantize_row(Type::F32, in.find_tensor("blk.0.narrow.weight")->data.data() + i * 96 * 4, 96,
                               row.data());
    for (Index j = 0; j < 96; ++j) narrow(i, j) = row[static_cast<std::size_t>(j)];
  }

  pptq::ggml::QuantizeOptions opt;
  opt.optq.damp = 0.03;
  opt.refit = false;
  Run r = run_tool(d, args(d, "Q4_0", {"--damp", "0.03", "--no-refit", "--threads", "1"}));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("refit gain") == std::string::npos);
  check_only_changed(d / "IN.gguf", d.out(),
                     {{"blk.0.attn_q.weight", expected(m.Wq, Hq, Type::Q4_0, opt)},
                      {"blk.0.narrow.weight", expected(narrow, gram(m.Xq.leftCols(96)), Type::Q4_0, opt)}},
                     Type::Q4_0);
  // The options matter: the defaults give other bytes.
  CHECK(gguf::read(d.out()).find_tensor("blk.0.attn_q.weight")->data != expected(m.Wq, Hq, Type::Q4_0));

  fs::remove(d.hess("blk.0.narrow.weight.H.npy"));  // 96 columns: not a q2_K layer
  r = run_tool(d, args(d, "q2_k", {"--threads", "2"}));
  REQUIRE(r.code == 0);
  check_only_changed(d / "IN.gguf", d.out(), {{"blk.0.attn_q.weight", expected(m.Wq, Hq, Type::Q2_K)}}, Type::Q2_K);
}

TEST_CASE("pptq-gguf: an unused Hessian file is an error unless --allow-unused", "[gguf-tool]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = gram(m.Xq);
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  pptq::io::write_npy(d.hess("blk.0.attn_qq.weight.H.npy"), Hq);  // a typo
  expect_failure(d, args(d, "q4_k"), 3, "blk.0.attn_qq.weight.H.npy matches no tensor");
  pptq::io::write_npy(d.hess("stray.npy"), Hq);  // neither .H.npy nor .X.npy
  expect_failure(d, args(d, "q4_k"), 3, "matches no tensor");

  const Run r = run_tool(d, args(d, "q4_k", {"--allow-unused"}));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("ignoring " + d.hess("blk.0.attn_qq.weight.H.npy")) != std::string::npos);
  CHECK(r.err.find("ignoring " + d.hess("stray.npy")) != std::string::npos);
  check_only_changed(d / "IN.gguf", d.out(), {{"blk.0.attn_q.weight", expected(m.Wq, Hq, Type::Q4_K)}}, Type::Q4_K);
}

TEST_CASE("pptq-gguf: bad usage exits 2 and writes nothing", "[gguf-tool]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), gram(m.Xq));
  std::vector<std::string> no_out = args(d, "q4_k");
  no_out.resize(no_out.size() - 2);
  expect_failure(d, no_out, 2, "--output");
  expect_failure(d, {}, 2, "A subcommand is required");
  expect_failure(d, args(d, "q5_1"), 2, "--format must be one of q4_0, q4_k, q3_k, q2_k, q8_0, q5_0, q5_k, q6_k, iq4_nl, iq4_xs, got 'q5_1'");
  expect_failure(d, args(d, "f16"), 2, "--format must be");
  expect_failure(d, args(d, "q4_k", {"--damp", "-1"}), 2, "--damp must be >= 0");
  expect_failure(d, args(d, "q4_k", {"--damp", "nan"}), 2, "--damp");
  expect_failure(d, args(d, "q4_k", {"--threads", "-2"}), 2, "--threads must be an integer in [0, ");
  expect_failure(d, args(d, "q4_k", {"--bogus"}), 2, "--bogus");
  std::vector<std::string> bad_dir = args(d, "q4_k");
  bad_dir[8] = d / "missing/OUT.gguf";
  expect_failure(d, bad_dir, 2, "does not exist or is not writable");
  CHECK(!fs::exists(d / "missing"));
}

TEST_CASE("pptq-gguf: bad data exits 3 naming the problem and writes nothing", "[gguf-tool]") {
  TempDir d;
  Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = gram(m.Xq);

  SECTION("unreadable or malformed model") {
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
    std::vector<std::string> a = args(d, "q4_k");
    a[2] = d / "nope.gguf";
    expect_failure(d, a, 3, d / "nope.gguf" + ": cannot open");
    spit(d / "trunc.gguf", slurp(d / "IN.gguf").substr(0, 300));
    a[2] = d / "trunc.gguf";
    expect_failure(d, a, 3, "truncated");
    spit(d / "magic.gguf", "GGUX" + slurp(d / "IN.gguf").substr(4));
    a[2] = d / "magic.gguf";
    expect_failure(d, a, 3, "bad magic");
  }
  SECTION("missing Hessian directory, or nothing in it for the model") {
    std::vector<std::string> a = args(d, "q4_k");
    a[4] = d / "nodir";
    expect_failure(d, a, 3, "--hessians '" + d / "nodir" + "' is not a readable directory");
    expect_failure(d, args(d, "q4_k", {"--allow-unused"}), 3, "nothing to requantize");
  }
  SECTION("a tensor that cannot be requantized") {
    pptq::io::write_npy(d.hess("blk.0.attn_k.weight.H.npy"), gram(m.Xq.leftCols(64)));
    expect_failure(d, args(d, "q4_k"), 3, "tensor 'blk.0.attn_k.weight'");
    expect_failure(d, args(d, "q4_k"), 3, "is already quantized (q4_0)");
    fs::remove(d.hess("blk.0.attn_k.weight.H.npy"));
    pptq::io::write_npy(d.hess("blk.0.attn_norm.weight.H.npy"), Hq);
    expect_failure(d, args(d, "q4_k"), 3, "tensor 'blk.0.attn_norm.weight'");
    expect_failure(d, args(d, "q4_k"), 3, "only 2-d tensors can be requantized");
    fs::remove(d.hess("blk.0.attn_norm.weight.H.npy"));
    pptq::io::write_npy(d.hess("blk.0.narrow.weight.H.npy"), gram(m.Xq.leftCols(96)));
    expect_failure(d, args(d, "q4_k"), 3, "tensor 'blk.0.narrow.weight'");
    expect_failure(d, args(d, "q4_k"), 3, "96 columns (ne[0]), not a multiple of q4_K's block size 256");
  }
  SECTION("both .H.npy and .X.npy for one tensor") {
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.X.npy"), m.Xq);
    expect_failure(d, args(d, "q4_k"), 3, "tensor 'blk.0.attn_q.weight' has both");
  }
  SECTION("shape mismatch") {
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), gram(m.Xup));
    expect_failure(d, args(d, "q4_k"), 3, "is 512 x 512 but tensor 'blk.0.attn_q.weight' has 256 columns");
    fs::remove(d.hess("blk.0.attn_q.weight.H.npy"));
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.X.npy"), m.Xup);
    expect_failure(d, args(d, "q4_k"), 3, "must be samples x 256");
  }
  SECTION("NaN in the Hessian, the inputs or the weights") {
    MatrixXd H = Hq;
    H(3, 5) = std::numeric_limits<double>::quiet_NaN();
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), H);
    expect_failure(d, args(d, "q4_k"), 3, "blk.0.attn_q.weight.H.npy: non-finite entry");
    fs::remove(d.hess("blk.0.attn_q.weight.H.npy"));
    MatrixXd X = m.Xq;
    X(7, 1) = std::numeric_limits<double>::infinity();
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.X.npy"), X);
    expect_failure(d, args(d, "q4_k"), 3, "blk.0.attn_q.weight.X.npy: non-finite entry");
    fs::remove(d.hess("blk.0.attn_q.weight.X.npy"));

    m.Wq(2, 9) = std::numeric_limits<float>::quiet_NaN();
    m.file.find_tensor("blk.0.attn_q.weight")->data = f32_bytes(m.Wq);
    m.write(d / "IN.gguf");
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
    expect_failure(d, args(d, "q4_k"), 3, "tensor 'blk.0.attn_q.weight' has a non-finite weight nan at row 2, column 9");
  }
  SECTION("malformed or wrongly typed .npy, and an H that is not a Gram matrix") {
    spit(d.hess("blk.0.attn_q.weight.H.npy"), "\x93NUMPY garbage");
    expect_failure(d, args(d, "q4_k"), 3, "blk.0.attn_q.weight.H.npy");
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Eigen::MatrixXi::Ones(256, 256).eval());
    expect_failure(d, args(d, "q4_k"), 3, "is not supported");
    MatrixXd H = Hq;
    H(0, 1) += 1.0;  // not symmetric
    pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), H);
    expect_failure(d, args(d, "q4_k"), 3, "tensor 'blk.0.attn_q.weight': H is not symmetric");
  }
}

TEST_CASE("pptq-gguf: numerical failure exits 4, and an existing output is untouched by failed runs", "[gguf-tool]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  // A valid H for the first tensor, then one whose block [[1, 3], [3, 1]] (eigenvalue −2) keeps H + λI
  // indefinite for every λ up to the cap (1 · mean diag = 1): the run fails after doing work.
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), gram(m.Xq));
  MatrixXd H = MatrixXd::Identity(256, 256);
  H(0, 1) = H(1, 0) = 3;
  pptq::io::write_npy(d.hess("blk.0.ffn_down.weight.H.npy"), H);
  expect_failure(d, args(d, "q4_k"), 4, "tensor 'blk.0.ffn_down.weight': ");
  expect_failure(d, args(d, "q4_k"), 4, "not positive definite");

  spit(d.out(), "previous contents");
  const Run r = run_tool(d, args(d, "q4_k"));  // not quiet: progress lines, then the error last
  CHECK(r.code == 4);
  const auto ls = lines_of(r.err);
  REQUIRE(!ls.empty());
  CHECK(ls.back().rfind("pptq-gguf: tensor 'blk.0.ffn_down.weight'", 0) == 0);
  CHECK(slurp(d.out()) == "previous contents");
  CHECK(d.out_listing() == std::set<std::string>{"OUT.gguf"});

  fs::remove(d.hess("blk.0.ffn_down.weight.H.npy"));
  pptq::io::write_npy(d.hess("blk.0.attn_qq.weight.H.npy"), H);  // a data error, early
  CHECK(run_tool(d, args(d, "q4_k")).code == 3);
  CHECK(slurp(d.out()) == "previous contents");
  CHECK(d.out_listing() == std::set<std::string>{"OUT.gguf"});

  // Success replaces it.
  fs::remove(d.hess("blk.0.attn_qq.weight.H.npy"));
  REQUIRE(run_tool(d, args(d, "q4_k", {"--quiet"})).code == 0);
  CHECK(gguf::read(d.out()).find_tensor("blk.0.attn_q.weight")->type == Type::Q4_K);
  CHECK(d.out_listing() == std::set<std::string>{"OUT.gguf"});
}

// ------------------------------------------------------------------------------------------------
// --grams (a Gram file of pptq-gguf calibrate) and --method
// ------------------------------------------------------------------------------------------------

namespace {

/// H as the Gram file stores it (float): the npy form given the same values gives the same bytes.
MatrixXd float_rounded(const MatrixXd& H) { return H.cast<float>().cast<double>(); }

pptq::io::GramRecord record(std::vector<std::string> weights, const MatrixXd& H, const MatrixXd& cross = {}) {
  pptq::io::GramRecord r;
  r.weights = std::move(weights);
  r.samples = 300;
  r.H = H;
  r.cross = cross;
  return r;
}

std::vector<std::string> gargs(const TempDir& d, const std::string& format, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"requantize", "--model", d / "IN.gguf", "--grams", d / "grams.gguf",
                                "--format",   format,    "--output",    d.out()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

/// ‖X Wᵀ − X̃ Qᵀ‖²_F: the layer's output error when the quantized model feeds X̃ (Qronos's objective,
/// docs/theory.md §5.1).
double mismatched_error(const MatrixXd& X, const MatrixXd& Xt, const MatrixXf& W, const std::vector<std::uint8_t>& bytes,
                        Type type) {
  const MatrixXd Q = pptq::ggml::dequantize_bytes(bytes, W.rows(), W.cols(), type).cast<double>();
  return (X * W.cast<double>().transpose() - Xt * Q.transpose()).squaredNorm();
}

std::vector<std::uint8_t> tensor_bytes(const std::string& path, const std::string& name) {
  return gguf::read(path).find_tensor(name)->data;
}

/// A quantized model's inputs of the same samples: X plus noise (what the quantized layers before did).
MatrixXd perturbed(const MatrixXd& X, double s, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, s);
  MatrixXd Xt = X;
  for (Index j = 0; j < X.cols(); ++j)
    for (Index i = 0; i < X.rows(); ++i) Xt(i, j) += g(rng);
  return Xt;
}

}  // namespace

TEST_CASE("pptq-gguf: requantize --grams gives the bytes of the .H.npy form with the same H", "[gguf-tool][grams]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = float_rounded(gram(m.Xq)), Hup = float_rounded(gram(m.Xup)), Hdown = float_rounded(gram(m.Xdown));
  // attn_q and output.weight share one record, as q, k and v do in calibrate's files.
  pptq::io::write_gram_file(d / "grams.gguf",
                            {record({"blk.0.attn_q.weight", "output.weight"}, Hq), record({"blk.0.ffn_up.weight"}, Hup),
                             record({"blk.0.ffn_down.weight"}, Hdown)},
                            {{"model", gguf::Value("IN.gguf")}});
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  pptq::io::write_npy(d.hess("output.weight.H.npy"), Hq);
  pptq::io::write_npy(d.hess("blk.0.ffn_up.weight.H.npy"), Hup);
  pptq::io::write_npy(d.hess("blk.0.ffn_down.weight.H.npy"), Hdown);

  for (const std::string format : {"q4_k", "q6_k"}) {
    INFO(format);
    Run r = run_tool(d, args(d, format, {"--quiet"}));
    REQUIRE(r.code == 0);
    const std::string via_npy = slurp(d.out());
    r = run_tool(d, gargs(d, format));
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.err.find("[4/4] output.weight: 4 x 256 f32 -> ") != std::string::npos);
    CHECK(r.err.find("plain rounding / OPTQ") != std::string::npos);
    CHECK(slurp(d.out()) == via_npy);
  }
  const Type t = Type::Q6_K;
  check_only_changed(d / "IN.gguf", d.out(),
                     {{"blk.0.attn_q.weight", expected(m.Wq, Hq, t)},
                      {"blk.0.ffn_up.weight", expected(m.Wup, Hup, t)},
                      {"blk.0.ffn_down.weight", expected(m.Wdown_f16, Hdown, t)},
                      {"output.weight", expected(m.Wout, Hq, t)}},
                     t);
}

TEST_CASE("pptq-gguf: --method optq-stochastic and qronos, from a Gram file of calibrate --quantized-model",
          "[gguf-tool][grams]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd& X = m.Xq;
  const MatrixXd Xt = perturbed(X, 0.8, 11);
  const MatrixXd Ht = float_rounded(gram(Xt)), G = float_rounded(Xt.transpose() * X);
  pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.attn_q.weight"}, Ht, G)});
  const Type t = Type::Q4_K;
  const std::string q = "blk.0.attn_q.weight";

  SECTION("optq-stochastic: the library's stochastic rounding with the seed") {
    Run r = run_tool(d, gargs(d, "q4_k", {"--method", "optq-stochastic", "--seed", "5"}));
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.err.find("with optq-stochastic") != std::string::npos);
    CHECK(r.err.find("comes from calibrate --quantized-model") != std::string::npos);
    pptq::ggml::QuantizeOptions opt;
    opt.optq.rounding = pptq::Rounding::Stochastic;
    opt.optq.seed = 5;
    check_only_changed(d / "IN.gguf", d.out(), {{q, expected(m.Wq, Ht, t, opt)}}, t);
    CHECK(tensor_bytes(d.out(), q) != expected(m.Wq, Ht, t));  // not nearest rounding
    REQUIRE(run_tool(d, gargs(d, "q4_k", {"--method", "optq-stochastic", "--seed", "6", "--quiet"})).code == 0);
    CHECK(tensor_bytes(d.out(), q) != expected(m.Wq, Ht, t, opt));  // the seed matters
  }
  SECTION("qronos: qronos_from_grams onto the format's grid; the refit lowers Qronos's own objective") {
    Run r = run_tool(d, gargs(d, "q4_k", {"--method", "qronos", "--no-refit"}));
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    const auto grid = pptq::ggml::fit_format_grid(m.Wq, t, Eigen::VectorXd(Ht.diagonal()));
    const auto res = pptq::qronos_from_grams(m.Wq, Ht, G, grid);
    REQUIRE(res.ok());
    const std::vector<std::uint8_t> plain = pptq::ggml::to_bytes(res, t);
    check_only_changed(d / "IN.gguf", d.out(), {{q, plain}}, t);

    r = run_tool(d, gargs(d, "q4_k", {"--method", "qronos"}));
    REQUIRE(r.code == 0);
    CHECK(r.err.find("refit gain") != std::string::npos);
    const std::vector<std::uint8_t> refitted = tensor_bytes(d.out(), q);
    REQUIRE(run_tool(d, gargs(d, "q4_k", {"--quiet"})).code == 0);  // OPTQ on H~: blind to X != X~
    const std::vector<std::uint8_t> optq = tensor_bytes(d.out(), q);
    const double e_plain = mismatched_error(X, Xt, m.Wq, plain, t), e_refit = mismatched_error(X, Xt, m.Wq, refitted, t),
                 e_optq = mismatched_error(X, Xt, m.Wq, optq, t);
    INFO("qronos " << e_plain << ", qronos + refit " << e_refit << ", optq on H~ " << e_optq);
    CHECK(refitted != plain);
    CHECK(e_refit < e_plain);
    CHECK(e_plain < 0.8 * e_optq);
  }
}

TEST_CASE("pptq-gguf: --grams and --method refusals", "[gguf-tool][grams]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = gram(m.Xq);
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.attn_q.weight"}, Hq)});

  SECTION("usage") {
    std::vector<std::string> both = gargs(d, "q4_k", {"--hessians", d / "hess"});
    expect_failure(d, both, 2, "excludes");
    std::vector<std::string> neither = gargs(d, "q4_k");
    neither.erase(neither.begin() + 3, neither.begin() + 5);
    expect_failure(d, neither, 2, "give the Hessians: --hessians DIR or --grams GRAMS.gguf");
    expect_failure(d, gargs(d, "q4_k", {"--method", "gpfq"}), 2, "--method must be one of optq, optq-stochastic, qronos, got 'gpfq'");
    expect_failure(d, args(d, "q4_k", {"--method", "qronos"}), 2, "--method qronos needs --grams");
    expect_failure(d, gargs(d, "q4_k", {"--method", "qronos"}), 2, "--method qronos needs a Gram file from calibrate --quantized-model");
    expect_failure(d, gargs(d, "q4_k", {"--seed", "3"}), 2, "--seed applies to optq-stochastic only");
    expect_failure(d, gargs(d, "q4_k", {"--method", "optq-stochastic", "--seed", "x"}), 2, "--seed");
  }
  SECTION("data") {
    std::vector<std::string> a = gargs(d, "q4_k");
    a[4] = d / "none.gguf";
    expect_failure(d, a, 3, "none.gguf");
    a[4] = d / "IN.gguf";  // a GGUF file, not a Gram file
    expect_failure(d, a, 3, "Gram file '" + d / "IN.gguf" + "': missing metadata key 'general.type'");
    pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.attn_q.weight"}, Hq), record({"blk.0.attn_qq.weight"}, Hq)});
    expect_failure(d, gargs(d, "q4_k"), 3, "the Gram of 'blk.0.attn_qq.weight' in " + d / "grams.gguf" + " names no tensor");
    Run r = run_tool(d, gargs(d, "q4_k", {"--allow-unused"}));
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.err.find("ignoring the Gram of 'blk.0.attn_qq.weight'") != std::string::npos);
    check_only_changed(d / "IN.gguf", d.out(), {{"blk.0.attn_q.weight", expected(m.Wq, float_rounded(Hq), Type::Q4_K)}},
                       Type::Q4_K);
    fs::remove(d.out());

    pptq::io::GramRecord expert = record({"blk.0.ffn_up_exps.weight"}, gram(m.Xup));
    expert.expert = 1;
    pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.attn_q.weight"}, Hq), expert});
    expect_failure(d, gargs(d, "q4_k"), 3, "expert 'blk.0.ffn_up_exps.weight#1'");
    pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.attn_q.weight"}, gram(m.Xup))});
    expect_failure(d, gargs(d, "q4_k"), 3, "the Gram of tensor 'blk.0.attn_q.weight' is 512 x 512 but the tensor has 256 columns");
    pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.narrow.weight"}, gram(m.Xq.leftCols(96)))});
    expect_failure(d, gargs(d, "q4_k"), 3, "not a multiple of q4_K's block size 256");
    spit(d / "grams.gguf", slurp(d / "grams.gguf").substr(0, 200));
    expect_failure(d, gargs(d, "q4_k"), 3, "truncated");
  }
}

TEST_CASE("pptq-gguf: --only requantizes the matching weights of the Gram file and leaves the others", "[gguf-tool][grams]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = float_rounded(gram(m.Xq)), Hup = float_rounded(gram(m.Xup));
  // attn_k is already quantized: --only must not even look at it.
  pptq::io::write_gram_file(d / "grams.gguf", {record({"blk.0.attn_q.weight", "blk.0.attn_k.weight"}, Hq),
                                               record({"blk.0.ffn_up.weight"}, Hup)});
  const Run r = run_tool(d, gargs(d, "q4_k", {"--only", "ffn_.*\\.weight$"}));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("[1/1] blk.0.ffn_up.weight") != std::string::npos);
  check_only_changed(d / "IN.gguf", d.out(), {{"blk.0.ffn_up.weight", expected(m.Wup, Hup, Type::Q4_K)}}, Type::Q4_K);
  fs::remove(d.out());
  expect_failure(d, gargs(d, "q4_k", {"--only", "attn_"}), 3, "is already quantized");
  expect_failure(d, gargs(d, "q4_k", {"--only", "nothing"}), 3, "that --only matches: nothing to requantize");
  expect_failure(d, gargs(d, "q4_k", {"--only", "("}), 2, "--only '(' is not a regular expression");
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  expect_failure(d, args(d, "q4_k", {"--only", "attn_q"}), 2, "--only applies to --grams");
}

namespace {

/// X^T X of every 5th sample (rows 4, 9, ...; held_out) or of the others: --damp auto's split of NAME.X.npy.
MatrixXd split_gram(const MatrixXd& X, bool held_out) {
  std::vector<Index> rows;
  for (Index i = 0; i < X.rows(); ++i)
    if ((i % 5 == 4) == held_out) rows.push_back(i);
  MatrixXd part(static_cast<Index>(rows.size()), X.cols());
  for (std::size_t k = 0; k < rows.size(); ++k) part.row(static_cast<Index>(k)) = X.row(rows[k]);
  return gram(part);
}

double h_error_of(const MatrixXf& W, const std::vector<std::uint8_t>& bytes, const MatrixXd& H, Type type) {
  const MatrixXd E = W.cast<double>() - pptq::ggml::dequantize_bytes(bytes, W.rows(), W.cols(), type).cast<double>();
  return (E * H * E.transpose()).trace();
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(slurp(path)); }

const nlohmann::json& record_of(const nlohmann::json& report, const std::string& name) {
  for (const auto& t : report["tensors"])
    if (t["name"] == name) return t;
  FAIL("no record for " << name);
  throw std::logic_error("unreachable");
}

}  // namespace

TEST_CASE("pptq-gguf: --report gives every tensor's figures, the H-error exactly", "[gguf-tool][report]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = gram(m.Xq), Hup = gram(m.Xup);
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  pptq::io::write_npy(d.hess("blk.0.ffn_up.weight.X.npy"), m.Xup);
  for (const bool refit : {true, false}) {
    INFO("refit " << refit);
    std::vector<std::string> extra = {"--quiet", "--report", d / "out/r.json"};
    if (!refit) extra.push_back("--no-refit");
    const Run r = run_tool(d, args(d, "q4_k", extra));
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    CHECK(d.out_listing() == std::set<std::string>{"OUT.gguf", "r.json"});
    const nlohmann::json j = read_json(d / "out/r.json");
    const gguf::File in = gguf::read(d / "IN.gguf"), out = gguf::read(d.out());
    REQUIRE(j["tensors"].size() == in.tensors.size());  // every tensor, copies included
    std::uint64_t bytes_out = 0;
    for (std::size_t i = 0; i < in.tensors.size(); ++i) {
      const auto& t = j["tensors"][i];
      CHECK(t["name"] == in.tensors[i].name);
      CHECK(t["bytes_in"] == in.tensors[i].data.size());
      CHECK(t["bytes_out"] == out.tensors[i].data.size());
      bytes_out += out.tensors[i].data.size();
    }
    CHECK(j["totals"]["model"]["bytes_out"] == bytes_out);
    CHECK(j["totals"]["by_type"]["q4_K"]["matrices"] == 2);
    CHECK(j["totals"]["by_action"]["copy"] == in.tensors.size() - 2);
    for (const auto& [name, W, H] : {std::tuple{std::string("blk.0.attn_q.weight"), m.Wq, Hq},
                                     std::tuple{std::string("blk.0.ffn_up.weight"), m.Wup, Hup}}) {
      INFO(name);
      const auto& t = record_of(j, name);
      CHECK(t["action"] == "optq");
      CHECK(t["from"] == "f32");
      CHECK(t["to"] == "q4_K");
      CHECK(test::rel_diff(t["lambda"].get<double>(), 0.1 * H.diagonal().mean()) < 1e-12);
      // The exact H-error, from the quantizer's own objective, is the one measured on the written bytes.
      const double e = h_error_of(W, out.find_tensor(name)->data, H, Type::Q4_K);
      CHECK(test::rel_diff(t["h_error"].get<double>(), e) < 1e-6);
      // At most 256 rows: all rows are compared, so the relative error is exact too.
      CHECK(t["compared_rows"] == W.rows());
      const MatrixXd Wd = W.cast<double>();
      CHECK(test::rel_diff(t["h_error_relative"].get<double>(), e / (Wd * H * Wd.transpose()).trace()) < 1e-6);
      CHECK(t["rtn_over_method"].get<double>() > 1.0);
      CHECK(t["certificate"].get<double>() > 0);
      CHECK(t["C2"].get<double>() > 0);
      CHECK(t["damp_auto"].is_null());
      if (!refit) CHECK(t["refit_gain"] == 1.0);
    }
    CHECK(record_of(j, "output.weight")["action"] == "copy");
  }
}

TEST_CASE("pptq-gguf: --damp auto picks each tensor's damp on held-out inputs", "[gguf-tool][report]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.X.npy"), m.Xq);
  pptq::io::write_npy(d.hess("blk.0.ffn_up.weight.X.npy"), m.Xup);
  const Run r = run_tool(d, args(d, "q4_k", {"--damp", "auto", "--report", d / "out/r.json"}));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("(auto)") != std::string::npos);
  const nlohmann::json j = read_json(d / "out/r.json");
  CHECK(j["damp"] == "auto");
  for (const auto& [name, W, X] : {std::tuple{std::string("blk.0.attn_q.weight"), m.Wq, m.Xq},
                                   std::tuple{std::string("blk.0.ffn_up.weight"), m.Wup, m.Xup}}) {
    INFO(name);
    const auto& a = record_of(j, name)["damp_auto"];
    REQUIRE(a["candidates"].size() == 7);
    // Each candidate quantized on the calibration part, measured on the held-out part (every 5th sample).
    const MatrixXd Hc = split_gram(X, false), Ht = split_gram(X, true);
    double best = std::numeric_limits<double>::infinity(), chosen = 0;
    for (const auto& c : a["candidates"]) {
      pptq::ggml::QuantizeOptions o;
      o.optq.damp = c["damp"].get<double>();
      const auto bytes = expected(W, Hc, Type::Q4_K, o);
      CHECK(test::rel_diff(c["heldout_error"].get<double>(), std::sqrt(h_error_of(W, bytes, Ht, Type::Q4_K))) < 1e-6);
      if (c["heldout_error"].get<double>() < best) best = c["heldout_error"], chosen = c["damp"];
    }
    CHECK(a["chosen_damp"] == chosen);
    // The weights written: all samples, at the damp chosen.
    pptq::ggml::QuantizeOptions o;
    o.optq.damp = chosen;
    CHECK(tensor_bytes(d.out(), name) == expected(W, gram(X), Type::Q4_K, o));
  }
}

TEST_CASE("pptq-gguf: --damp auto with --heldout-grams, and its refusals", "[gguf-tool][report]") {
  TempDir d;
  const Model m;
  m.write(d / "IN.gguf");
  const MatrixXd Hq = float_rounded(gram(m.Xq));
  std::mt19937_64 rng(7);
  const MatrixXd Xq2 = inputs(200, 256, rng);  // "other text"
  pptq::io::write_npy(d.hess("blk.0.attn_q.weight.H.npy"), Hq);
  {  // a Hessian without samples and no held-out Grams: refused before anything is written
    const Run r = run_tool(d, args(d, "q4_k", {"--damp", "auto"}));
    CHECK(r.code == 2);
    CHECK(r.err.find("held-out") != std::string::npos);
    CHECK(r.err.find("blk.0.attn_q.weight") != std::string::npos);
    CHECK(d.out_listing().empty());
  }
  pptq::io::write_gram_file(d / "heldout.gguf", {record({"blk.0.attn_q.weight"}, float_rounded(gram(Xq2)))},
                            {{"model", gguf::Value("IN.gguf")}});
  const Run r = run_tool(d, args(d, "q4_k", {"--damp", "auto", "--heldout-grams", d / "heldout.gguf", "--report",
                                             d / "out/r.json"}));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  const nlohmann::json j = read_json(d / "out/r.json");
  const double chosen = record_of(j, "blk.0.attn_q.weight")["damp_auto"]["chosen_damp"];
  pptq::ggml::QuantizeOptions o;
  o.optq.damp = chosen;
  CHECK(tensor_bytes(d.out(), "blk.0.attn_q.weight") == expected(m.Wq, Hq, Type::Q4_K, o));  // calibration H alone

  fs::remove(d.out());
  fs::remove(d / "out/r.json");
  for (const auto& [extra, what] :
       {std::pair{std::vector<std::string>{"--heldout-grams", d / "heldout.gguf"}, "--damp auto only"},
        std::pair{std::vector<std::string>{"--damp", "often"}, "--damp"}}) {
    const Run bad = run_tool(d, args(d, "q4_k", extra));
    CHECK(bad.code == 2);
    CHECK(bad.err.find(what) != std::string::npos);
    CHECK(d.out_listing().empty());
  }
}
