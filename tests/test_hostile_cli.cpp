// Hostile command lines and files against the built tools (pptq-quantize, pptq-gguf): every run ends by
// itself (no crash, no hang), with exit 0 or a clean error exit and one line on stderr, and leaves no
// output or temporary behind unless it succeeded. Options with values CLI11 would saturate or accept empty,
// --threads beyond the processors, inputs that are FIFOs, devices or directories, outputs that alias each
// other or are links, devices or directories, names with terminal escapes, overflowing Grams, clamped
// weights, layers too large for memory, and signals at the commit's named points (the test hook
// PPTQ_TEST_SIGNAL_AT).
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include "test_hostile_support.hpp"

#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <nlohmann/json.hpp>

#include <cfloat>
#include <cstdint>
#include <filesystem>
#include <random>
#include <fstream>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using hostile::Outcome;
using Dir = test::TempDir;

Outcome quantize(const Dir& d, const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                 unsigned limit_s = 120) {
  return hostile::run(test::cli_path(), args, d.path, env, limit_s);
}
Outcome requantize(const Dir& d, const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                   unsigned limit_s = 120) {
  std::vector<std::string> a = {"requantize"};
  a.insert(a.end(), args.begin(), args.end());
  return hostile::run(test::gguf_tool_path(), a, d.path, env, limit_s);
}

/// A failed run: exit `code`, no signal, exactly one line on stderr starting with the program's name and
/// holding `needle`.
void expect_one_line(const Outcome& r, int code, const std::string& prog, const std::string& needle) {
  INFO("stderr: " << r.err);
  CHECK(r.signal == 0);
  CHECK(r.code == code);
  const auto lines = r.err_lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].rfind(prog + ": ", 0) == 0);
  CHECK(lines[0].find(needle) != std::string::npos);
}

/// pptq-quantize's base command on the layer in d, writing d/out/Q.npy and d/out/R.json.
std::vector<std::string> base(const Dir& d, std::vector<std::string> extra = {}, const std::string& method = "optq") {
  std::vector<std::string> a = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", method,
                                "--output",  d / "out/Q.npy", "--report", d / "out/R.json"};
  if (std::find(extra.begin(), extra.end(), "--bits") == extra.end()) a.insert(a.end(), {"--bits", "4"});
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

/// A directory with the small layer and an empty out/.
struct LayerDir : Dir {
  LayerDir() : Dir("pptq_hostile") {
    hostile::Layer().write(*this);
    fs::create_directory(path + "/out");
  }
};

/// A directory with a one-tensor model IN.gguf ("blk.0.w", 4 x 256), its Hessian in hess/ and an empty out/.
struct ModelDir : Dir {
  ModelDir() : Dir("pptq_hostile_gguf") {
    fs::create_directory(path + "/hess");
    fs::create_directory(path + "/out");
    const hostile::Layer L(4, 256, 300);
    pptq::gguf::write(hostile::one_tensor_model("blk.0.w", L.W), path + "/IN.gguf");
    pptq::io::write_npy(path + "/hess/blk.0.w.X.npy", L.X);
  }
  std::vector<std::string> args(std::vector<std::string> extra = {}) const {
    std::vector<std::string> a = {"--model", path + "/IN.gguf", "--hessians", path + "/hess", "--format", "q4_0",
                                  "--output", path + "/out/OUT.gguf", "--quiet"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile: pptq-quantize parses every numeric option strictly", "[hostile][cli]") {
  LayerDir d;
  struct Bad {
    std::vector<std::string> extra;
    std::string method, needle;
  };
  const std::vector<Bad> cases = {
      {{"--threads", "9223372036854775807"}, "optq", "--threads"},
      {{"--threads", "18446744073709551616"}, "optq", "--threads"},
      {{"--threads", "-1"}, "optq", "--threads"},
      {{"--threads", ""}, "optq", "--threads"},
      {{"--threads", "2x"}, "optq", "--threads"},
      {{"--bits", "4294967300"}, "optq", "--bits"},
      {{"--bits", ""}, "optq", "--bits"},
      {{"--group-size", "9223372036854775807"}, "optq", "--group-size"},
      {{"--group-size", "9223372036854775807"}, "rtn", "--group-size"},
      {{"--group-size", "9223372036854775807", "--quantized-inputs", d / "X.npy"}, "gpfq", "--group-size"},
      {{"--group-size", ""}, "optq", "--group-size"},
      {{"--block-size", "9223372036854775807"}, "optq", "--block-size"},
      {{"--block-size", "9223372036854775808"}, "optq", "--block-size"},
      {{"--block-size", "0"}, "optq", "--block-size"},
      {{"--block-size", " 8"}, "optq", "--block-size"},
      {{"--seed", "18446744073709551616"}, "optq-stochastic", "--seed"},
      {{"--seed", "-1"}, "optq-stochastic", "--seed"},
      {{"--seed", ""}, "optq-stochastic", "--seed"},
      {{"--damp", ""}, "optq", "--damp"},
      {{"--damp", "nan"}, "optq", "--damp"},
      {{"--damp", "inf"}, "optq", "--damp"},
      {{"--damp", "1e999"}, "optq", "--damp"},
      {{"--damp", "0x1p3"}, "optq", "--damp"},
      {{"--lambda", "-1"}, "optq", "--lambda"},
      {{"--eta", ""}, "optq", "--eta"},
      {{"--max-memory", ""}, "optq", "--max-memory"},
      {{"--max-memory", "-1"}, "optq", "--max-memory"},
      {{"--max-memory", "99999999999999999999G"}, "optq", "--max-memory"},
      {{"--max-memory", "12Q"}, "optq", "--max-memory"},
  };
  for (const Bad& c : cases) {
    INFO("option " << c.extra[0] << " '" << c.extra[1] << "'");
    expect_one_line(quantize(d, base(d, c.extra, c.method)), 2, "pptq-quantize", c.needle);
    CHECK(hostile::listing(d, "out").empty());
  }
}

TEST_CASE("hostile: pptq-gguf parses every numeric option strictly", "[hostile][cli][gguf-tool]") {
  ModelDir d;
  const std::vector<std::vector<std::string>> cases = {
      {"--threads", "9223372036854775807"}, {"--threads", "-1"},   {"--threads", ""},
      {"--damp", ""},                       {"--damp", "nan"},     {"--damp", "-0.5"},
      {"--max-memory", ""},                 {"--max-memory", "1X"}};
  for (const auto& c : cases) {
    INFO("option " << c[0] << " '" << c[1] << "'");
    expect_one_line(requantize(d, d.args(c)), 2, "pptq-gguf", c[0]);
    CHECK(hostile::listing(d, "out").empty());
  }
}

TEST_CASE("hostile: --threads beyond the processors is capped with a note, before OpenMP sees it", "[hostile][cli]") {
  LayerDir d;
  const Outcome q = quantize(d, base(d, {"--threads", "100000"}));
  INFO("stderr: " << q.err);
  CHECK(q.signal == 0);
  CHECK(q.code == 0);
  REQUIRE(q.err_lines().size() == 1);
  CHECK(q.err.find("--threads 100000 is more than the") != std::string::npos);
  // The same through the --format path (pptq::ggml::quantize_optq's own threads).
  std::vector<std::string> fa = base(d, {"--format", "q4_0", "--threads", "100000"});
  fa.erase(std::find(fa.begin(), fa.end(), "--bits"), std::find(fa.begin(), fa.end(), "--bits") + 2);
  const Outcome qf = quantize(d, fa);
  INFO("--format stderr: " << qf.err);
  CHECK(qf.signal == 0);
  CHECK(qf.code == 0);
  CHECK(qf.err.find("--threads 100000 is more than the") != std::string::npos);
  // OpenMP's own default, when the environment asks for more threads than there are processors.
  const Outcome e = quantize(d, base(d), {"OMP_NUM_THREADS=100000"});
  CHECK(e.signal == 0);
  CHECK(e.code == 0);
  CHECK(e.err.find("OMP_NUM_THREADS") != std::string::npos);
  const Outcome both = quantize(d, base(d, {"--threads", "2"}), {"OMP_NUM_THREADS=100000"});
  CHECK(both.signal == 0);
  CHECK(both.code == 0);
  ModelDir m;
  const Outcome g = requantize(m, m.args({"--threads", "100000"}));
  INFO("pptq-gguf stderr: " << g.err);
  CHECK(g.signal == 0);
  CHECK(g.code == 0);
  CHECK(g.err.find("--threads 100000 is more than the") != std::string::npos);
}

// ------------------------------------------------------------------------------------------------
// Inputs that are not regular files
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile: pptq-quantize reads inputs from regular files only", "[hostile][cli]") {
  LayerDir d;
  REQUIRE(::mkfifo((d / "fifo.npy").c_str(), 0644) == 0);
  fs::create_directory(d / "dir.npy");
  struct Case {
    std::string option, path;
  };
  const std::vector<Case> cases = {{"--weights", d / "fifo.npy"}, {"--inputs", d / "fifo.npy"},
                                   {"--weights", "/dev/zero"},    {"--inputs", "/dev/zero"},
                                   {"--weights", d / "dir.npy"},  {"--inputs", d / "dir.npy"}};
  for (const Case& c : cases) {
    INFO(c.option << " " << c.path);
    std::vector<std::string> a = base(d);
    *(std::find(a.begin(), a.end(), c.option) + 1) = c.path;
    const Outcome r = quantize(d, a, {}, 30);  // a FIFO that is opened blocks: the limit turns a hang into a failure
    expect_one_line(r, 3, "pptq-quantize", c.path + " is ");
    CHECK(r.err.find("not a regular file") != std::string::npos);
    CHECK(hostile::listing(d, "out").empty());
  }
  // A Hessian that is a FIFO, too.
  const Outcome h = quantize(d, {"--weights", d / "W.npy", "--hessian", d / "fifo.npy", "--method", "optq", "--bits",
                                 "4", "--output", d / "out/Q.npy"},
                             {}, 30);
  expect_one_line(h, 3, "pptq-quantize", "not a regular file");
}

TEST_CASE("hostile: pptq-gguf reads the model and the Hessians from regular files only", "[hostile][cli][gguf-tool]") {
  ModelDir d;
  REQUIRE(::mkfifo((d / "fifo.gguf").c_str(), 0644) == 0);
  for (const std::string& model : {d / "fifo.gguf", std::string("/dev/zero"), d / "hess"}) {
    INFO("--model " << model);
    std::vector<std::string> a = d.args();
    a[1] = model;
    expect_one_line(requantize(d, a, {}, 30), 3, "pptq-gguf", "not a regular file");
    CHECK(hostile::listing(d, "out").empty());
  }
  // A FIFO in the Hessians' place: refused when the plan reads its header, before anything is quantized.
  fs::remove(d / "hess/blk.0.w.X.npy");
  REQUIRE(::mkfifo((d / "hess/blk.0.w.H.npy").c_str(), 0644) == 0);
  expect_one_line(requantize(d, d.args(), {}, 30), 3, "pptq-gguf", "not a regular file");
  CHECK(hostile::listing(d, "out").empty());
}

TEST_CASE("hostile: pptq-gguf checks every Hessian's shape before quantizing anything", "[hostile][cli][gguf-tool]") {
  ModelDir d;
  // A second tensor whose Hessian has the wrong shape: the run must fail before the first tensor is
  // quantized, i.e. without a progress line for it.
  const hostile::Layer L(4, 256, 300);
  pptq::gguf::File f = hostile::one_tensor_model("blk.0.w", L.W);
  f.add_tensor("blk.1.w", {256, 4}, pptq::ggml::Type::F32, hostile::f32_rows(L.W));
  pptq::gguf::write(f, d / "IN.gguf");
  pptq::io::write_npy(d / "hess/blk.1.w.H.npy", Eigen::MatrixXd::Identity(128, 128).eval());
  std::vector<std::string> a = d.args();
  a.pop_back();  // not --quiet: the progress would show a tensor started
  const Outcome r = requantize(d, a);
  expect_one_line(r, 3, "pptq-gguf", "blk.1.w.H.npy is 128 x 128");
  CHECK(hostile::listing(d, "out").empty());
}

// ------------------------------------------------------------------------------------------------
// Outputs
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile: two outputs naming one file through other paths are refused", "[hostile][cli]") {
  LayerDir d;
  fs::create_directory(d / "o");
  const std::vector<std::string> common = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq",
                                           "--bits", "4"};
  auto with = [&](std::vector<std::string> outs) {
    std::vector<std::string> a = common;
    a.insert(a.end(), outs.begin(), outs.end());
    return a;
  };
  expect_one_line(quantize(d, with({"--output", d / "o/Q.npy", "--report", d / "o/./Q.npy"})), 2, "pptq-quantize",
                  "name the same file");
  expect_one_line(quantize(d, with({"--output", d / "o/Q.npy", "--codes", d / "o/../o/Q.npy"})), 2, "pptq-quantize",
                  "name the same file");
  // An existing file and a symbolic link to it; an existing file and a hard link to it.
  std::ofstream(d / "o/existing.npy") << "x";
  fs::create_symlink(d / "o/existing.npy", d / "o/sym.npy");
  fs::create_hard_link(d / "o/existing.npy", d / "o/hard.npy");
  expect_one_line(quantize(d, with({"--output", d / "o/existing.npy", "--report", d / "o/sym.npy"})), 2,
                  "pptq-quantize", "name the same file");
  expect_one_line(quantize(d, with({"--output", d / "o/existing.npy", "--report", d / "o/hard.npy"})), 2,
                  "pptq-quantize", "name the same file");
  CHECK(test::slurp(d / "o/existing.npy") == "x");
  CHECK(hostile::listing(d, "o") == std::set<std::string>{"existing.npy", "sym.npy", "hard.npy"});
}

TEST_CASE("hostile: an output that is a symbolic link is written through, the link kept", "[hostile][cli]") {
  LayerDir d;
  fs::create_directory(d / "real");
  std::ofstream(d / "real/Q.npy") << "old";
  fs::create_symlink("../real/Q.npy", d / "out/link.npy");         // relative, to an existing file
  fs::create_symlink(d / "real/new.json", d / "out/dangling.json");  // absolute, to a file yet to exist
  const Outcome r = quantize(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--bits", "4",
                                 "--output", d / "out/link.npy", "--report", d / "out/dangling.json"});
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(fs::is_symlink(d / "out/link.npy"));
  CHECK(fs::read_symlink(d / "out/link.npy") == "../real/Q.npy");
  CHECK(fs::is_symlink(d / "out/dangling.json"));
  const pptq::io::NpyArray q = pptq::io::read_npy(d / "real/Q.npy");
  CHECK(q.shape == std::vector<std::int64_t>{8, 64});
  CHECK(nlohmann::json::parse(test::slurp(d / "real/new.json"))["method"] == "optq");
  CHECK(hostile::listing(d, "out") == std::set<std::string>{"link.npy", "dangling.json"});
  CHECK(hostile::listing(d, "real") == std::set<std::string>{"Q.npy", "new.json"});  // no temporary left
}

TEST_CASE("hostile: an output that exists and is not a regular file is refused up front", "[hostile][cli]") {
  LayerDir d;
  REQUIRE(::mkfifo((d / "out/fifo.npy").c_str(), 0644) == 0);
  fs::create_directory(d / "out/dir.npy");
  for (const std::string& o : {d / "out/fifo.npy", d / "out/dir.npy"}) {
    INFO("--output " << o);
    const Outcome r = quantize(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--bits",
                                   "4", "--output", o});
    expect_one_line(r, 2, "pptq-quantize", "is not a regular file");
  }
  struct stat st {};
  REQUIRE(::stat((d / "out/fifo.npy").c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));  // still the FIFO, never replaced by a file
  CHECK(hostile::listing(d, "out") == std::set<std::string>{"fifo.npy", "dir.npy"});
  ModelDir m;
  fs::create_directory(m / "out/OUT.gguf");
  expect_one_line(requantize(m, m.args()), 2, "pptq-gguf", "is not a regular file");
}

// ------------------------------------------------------------------------------------------------
// Messages and numbers
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile: names read from a GGUF reach the terminal escaped", "[hostile][cli][gguf-tool]") {
  Dir d("pptq_hostile_gguf");
  fs::create_directory(d / "hess");
  fs::create_directory(d / "out");
  const std::string evil = "blk\x1b[2J\x1b]0;owned\x07\n\xff\xc2\x9b" "31m.w";  // ESC, OSC, BEL, LF, bad UTF-8, C1 CSI
  Eigen::MatrixXf W = Eigen::MatrixXf::Ones(2, 32);
  W(1, 3) = std::numeric_limits<float>::infinity();  // a non-finite weight: the error names the tensor
  pptq::gguf::write(hostile::one_tensor_model(evil, W), d / "IN.gguf");
  pptq::io::write_npy(d / ("hess/" + evil + ".H.npy"), Eigen::MatrixXd::Identity(32, 32).eval());
  const Outcome r = requantize(d, {"--model", d / "IN.gguf", "--hessians", d / "hess", "--format", "q4_0", "--output",
                                   d / "out/OUT.gguf"});
  INFO("stderr: " << r.err);
  CHECK(r.code == 3);
  for (char c : r.err) {
    const auto u = static_cast<unsigned char>(c);
    CHECK((u >= 0x20 || c == '\n'));
    CHECK(u != 0x7f);
    CHECK(u != 0xff);
  }
  CHECK(r.err.find("\xc2\x9b") == std::string::npos);  // the C1 CSI, valid UTF-8 but a control
  const auto lines = r.err_lines();
  REQUIRE(!lines.empty());
  CHECK(lines.back().find("non-finite weight") != std::string::npos);
  CHECK(lines.back().find("\\x1b[2J") != std::string::npos);
}

TEST_CASE("hostile: an overflowing X^T X is reported as such, exit 4", "[hostile][cli]") {
  LayerDir d;
  // Every entry finite (1e160), every product of two of them beyond double.
  pptq::io::write_npy(d / "X.npy", Eigen::MatrixXd::Constant(16, 64, 1e160).eval());
  pptq::io::write_npy(d / "XQ.npy", Eigen::MatrixXd::Constant(16, 64, 1e160).eval());
  const std::vector<std::vector<std::string>> runs = {
      base(d, {}, "optq"),
      base(d, {"--quantized-inputs", d / "XQ.npy"}, "qronos"),
      base(d, {"--quantized-inputs", d / "XQ.npy"}, "gpfq"),
      base(d, {"--format", "q4_0"}, "optq"),
      base(d, {"--format", "q4_0"}, "rtn"),
  };
  for (auto a : runs) {
    if (std::find(a.begin(), a.end(), "--format") != a.end()) {  // the format fixes the bits
      const auto b = std::find(a.begin(), a.end(), "--bits");
      a.erase(b, b + 2);
    }
    INFO("method " << *(std::find(a.begin(), a.end(), "--method") + 1));
    const Outcome r = quantize(d, a);
    expect_one_line(r, 4, "pptq-quantize", "overflows double");
    CHECK(r.err.find("scale X down") != std::string::npos);
    CHECK(hostile::listing(d, "out").empty());
  }
  ModelDir m;
  pptq::io::write_npy(m / "hess/blk.0.w.X.npy", Eigen::MatrixXd::Constant(8, 256, 1e160).eval());
  const Outcome g = requantize(m, m.args());
  expect_one_line(g, 4, "pptq-gguf", "X^T X of");
  CHECK(g.err.find("scale X down") != std::string::npos);
}

TEST_CASE("hostile: weights beyond a format's range are clamped, counted and reported", "[hostile][cli]") {
  LayerDir d;
  Eigen::MatrixXf W = Eigen::MatrixXf::Ones(2, 32);
  for (int j = 1; j < 32; j += 2) W(0, j) = W(1, j) = -1;
  W(0, 0) = 3e38f;  // beyond what q4_0's f16 scale times its largest code can reach
  pptq::io::write_npy(d / "W.npy", W);
  std::mt19937_64 rng(3);
  pptq::io::write_npy(d / "X.npy", test::gaussian(40, 32, rng));
  for (const std::string m : {"rtn", "optq"}) {
    INFO("method " << m);
    std::vector<std::string> a = base(d, {"--format", "q4_0"}, m);
    a.erase(std::find(a.begin(), a.end(), "--bits"), std::find(a.begin(), a.end(), "--bits") + 2);
    const Outcome r = quantize(d, a);
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(test::slurp(d / "out/R.json"));
    const std::int64_t clipped = j["clipped"].get<std::int64_t>();
    CHECK(clipped >= 1);
    CHECK(j["bounds"]["clipped"].get<std::int64_t>() == clipped);
    const auto lines = r.err_lines();
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].find("warning: " + std::to_string(clipped) + " of 64 weights") != std::string::npos);
    const Eigen::MatrixXf Q = pptq::io::read_npy_matrix<float>(d / "out/Q.npy");
    CHECK(Q.allFinite());
  }
}

TEST_CASE("hostile: a layer too large for memory is refused up front with the figure", "[hostile][cli]") {
  LayerDir d;
  const Outcome small = quantize(d, base(d, {"--max-memory", "1K"}));
  expect_one_line(small, 3, "pptq-quantize", "needs about");
  CHECK(small.err.find("--max-memory 1.0 KiB") != std::string::npos);
  CHECK(hostile::listing(d, "out").empty());
  CHECK(quantize(d, base(d, {"--max-memory", "1G"})).code == 0);
  // 65536 columns with one sample: H alone is 32 GiB; refused from the headers, before X^T X is formed.
  pptq::io::write_npy(d / "W.npy", Eigen::MatrixXf::Ones(1, 65536).eval());
  pptq::io::write_npy(d / "X.npy", Eigen::MatrixXf::Ones(1, 65536).eval());
  fs::remove(d / "out/Q.npy");
  fs::remove(d / "out/R.json");
  const Outcome big = quantize(d, base(d), {}, 60);
  expect_one_line(big, 3, "pptq-quantize", "H 65536 x 65536) needs about");
  CHECK(hostile::listing(d, "out").empty());
  // 16384 columns with one sample: H is 2 GiB, refused from the headers under a 1 GiB limit.
  pptq::io::write_npy(d / "W.npy", Eigen::MatrixXf::Ones(1, 16384).eval());
  pptq::io::write_npy(d / "X.npy", Eigen::MatrixXf::Ones(1, 16384).eval());
  expect_one_line(quantize(d, base(d, {"--max-memory", "1G"}), {}, 60), 3, "pptq-quantize", "H 16384 x 16384) needs about");
  CHECK(hostile::listing(d, "out").empty());

  ModelDir m;
  expect_one_line(requantize(m, m.args({"--max-memory", "4K"})), 3, "pptq-gguf", "needs about");
  CHECK(requantize(m, m.args({"--max-memory", "2G"})).code == 0);
  const hostile::Layer L(1, 65536, 1);
  pptq::gguf::write(hostile::one_tensor_model("blk.0.w", L.W), m / "IN.gguf");
  pptq::io::write_npy(m / "hess/blk.0.w.X.npy", Eigen::MatrixXf::Ones(1, 65536).eval());
  fs::remove(m / "out/OUT.gguf");
  expect_one_line(requantize(m, m.args(), {}, 60), 3, "pptq-gguf", "needs about");
  CHECK(hostile::listing(m, "out").empty());
}

// ------------------------------------------------------------------------------------------------
// Signals at the commit's named points (PPTQ_TEST_SIGNAL_AT)
// ------------------------------------------------------------------------------------------------

namespace {

/// The run's four outputs, as bytes ("" for a missing one).
std::vector<std::string> outputs(const Dir& d) {
  std::vector<std::string> v;
  for (const char* n : {"Q.npy", "C.npy", "R.json"}) v.push_back(test::slurp(d / (std::string("out/") + n)));
  return v;
}

std::vector<std::string> kill_args(const Dir& d, const std::string& bits) {
  return {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--bits", bits,
          "--output",  d / "out/Q.npy", "--codes", d / "out/C.npy", "--report", d / "out/R.json"};
}

/// The names in out/ that are stale temporaries.
std::vector<std::string> temporaries(const Dir& d) {
  std::vector<std::string> v;
  for (const auto& n : hostile::listing(d, "out"))
    if (n.find(".pptq-tmp-") != std::string::npos) v.push_back(n);
  return v;
}

}  // namespace

TEST_CASE("hostile: a signal during the commit leaves the outputs all old or all new", "[hostile][cli][kill]") {
  LayerDir d;
  REQUIRE(quantize(d, kill_args(d, "4")).code == 0);  // the old outputs
  const std::vector<std::string> old = outputs(d);
  // The new run differs in every output (3 bits instead of 4; the report names the bits).
  Dir ref("pptq_hostile_ref");
  hostile::Layer().write(ref);
  fs::create_directory(ref / "out");
  REQUIRE(quantize(ref, kill_args(ref, "3")).code == 0);
  std::vector<std::string> fresh = outputs(ref);
  for (std::size_t k = 0; k < 3; ++k) CHECK(fresh[k] != old[k]);

  SECTION("SIGTERM after the first temporary: all old, no temporary") {
    const Outcome r = quantize(d, kill_args(d, "3"), {"PPTQ_TEST_SIGNAL_AT=after-first-temp:TERM"});
    CHECK(r.signal == SIGTERM);
    CHECK(outputs(d) == old);
    CHECK(temporaries(d).empty());
  }
  SECTION("SIGINT and SIGHUP after the first temporary: the same") {
    for (const char* s : {"INT", "HUP"}) {
      const Outcome r = quantize(d, kill_args(d, "3"), {std::string("PPTQ_TEST_SIGNAL_AT=after-first-temp:") + s});
      CHECK(r.signal == (std::string(s) == "INT" ? SIGINT : SIGHUP));
      CHECK(outputs(d) == old);
      CHECK(temporaries(d).empty());
    }
  }
  SECTION("SIGTERM between two renames: deferred to the end, all new, no temporary") {
    const Outcome r = quantize(d, kill_args(d, "3"), {"PPTQ_TEST_SIGNAL_AT=between-renames:TERM"});
    CHECK(r.signal == SIGTERM);
    // The report holds timings and paths: compare the arrays exactly and the report by its bits.
    const std::vector<std::string> now = outputs(d);
    CHECK(now[0] == fresh[0]);
    CHECK(now[1] == fresh[1]);
    CHECK(nlohmann::json::parse(now[2])["bits"] == 3);
    CHECK(temporaries(d).empty());
  }
  SECTION("SIGKILL after the first temporary: all old; the temporary is left, recognisably named") {
    const Outcome r = quantize(d, kill_args(d, "3"), {"PPTQ_TEST_SIGNAL_AT=after-first-temp:KILL"});
    CHECK(r.signal == SIGKILL);
    CHECK(outputs(d) == old);
    const auto t = temporaries(d);
    REQUIRE(t.size() == 1);
    CHECK(t[0].rfind(".Q.npy.pptq-tmp-", 0) == 0);
  }
  SECTION("SIGKILL between two renames: the documented window, the first output new, the rest old") {
    const Outcome r = quantize(d, kill_args(d, "3"), {"PPTQ_TEST_SIGNAL_AT=between-renames:KILL"});
    CHECK(r.signal == SIGKILL);
    const std::vector<std::string> now = outputs(d);
    CHECK(now[0] == fresh[0]);
    CHECK(now[1] == old[1]);
    CHECK(now[2] == old[2]);
    CHECK(temporaries(d).size() == 2);  // the codes' and the report's, named .C.npy.pptq-tmp-* and .R.json...
  }
}

TEST_CASE("hostile: pptq-gguf removes its temporary on SIGTERM and keeps the old output", "[hostile][cli][kill][gguf-tool]") {
  ModelDir d;
  std::ofstream(d / "out/OUT.gguf") << "old";
  const Outcome r = requantize(d, d.args(), {"PPTQ_TEST_SIGNAL_AT=after-first-temp"});
  CHECK(r.signal == SIGTERM);
  CHECK(test::slurp(d / "out/OUT.gguf") == "old");
  CHECK(hostile::listing(d, "out") == std::set<std::string>{"OUT.gguf"});
  const Outcome ok = requantize(d, d.args());
  CHECK(ok.code == 0);
  CHECK(hostile::listing(d, "out") == std::set<std::string>{"OUT.gguf"});
}

// ------------------------------------------------------------------------------------------------
// Signals at random points of a run (seeded choices among observable events; no sleeping)
// ------------------------------------------------------------------------------------------------

namespace {

/// A report without its timings (what differs between two runs of the same command).
std::string report_sans_timings(const std::string& bytes) {
  auto j = nlohmann::json::parse(bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return "unparsable: " + bytes;
  j.erase("time_s");
  return j.dump();
}

/// Whether output `name` holds `fresh` (a report: up to its timings).
bool holds(const std::string& name, const std::string& bytes, const std::string& fresh) {
  if (name == "R.json") return !bytes.empty() && report_sans_timings(bytes) == report_sans_timings(fresh);
  return bytes == fresh;
}

/// The inode of a path (0 when missing).
ino_t inode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

/// Waits for one of the run's observable events, chosen by `rng`, then delivers `sig`: at once (before or
/// during exec), after the k-th line of stderr (k in 1..lines), when a temporary appears in out/ (then up to 64
/// yields more), or when `first` has been replaced (the first rename of the commit). Returns the event's name.
std::string signal_at_random_event(hostile::Child& c, std::mt19937_64& rng, int sig, const Dir& d, int lines,
                                   const std::string& first) {
  const int event = std::uniform_int_distribution<int>(0, 3)(rng);
  std::string what = "at once";
  if (event == 1) {
    const int k = std::uniform_int_distribution<int>(1, std::max(1, lines))(rng);
    c.wait_lines(k);
    what = "after stderr line " + std::to_string(k);
  } else if (event == 2) {
    c.poll_until([&] { return !temporaries(d).empty(); });
    const int yields = std::uniform_int_distribution<int>(0, 64)(rng);
    for (int i = 0; i < yields; ++i) ::sched_yield();
    what = "a temporary seen, then " + std::to_string(yields) + " yields";
  } else if (event == 3) {
    const ino_t before = inode_of(first);
    c.poll_until([&] { return inode_of(first) != before; });
    what = "after the first rename";
  }
  c.signal(sig);
  return what;
}

/// The outputs' state after a signal: every output old or new; all of one kind, except after SIGKILL in
/// the commit's documented window (the first outputs renamed, the others old with their new bytes still in
/// their temporaries: nothing is lost). After SIGTERM or SIGINT no temporary is left.
void check_all_old_or_all_new(const Dir& d, const std::vector<std::string>& names, const std::vector<std::string>& old,
                              const std::vector<std::string>& fresh, int sig) {
  std::vector<bool> is_new;
  for (std::size_t k = 0; k < names.size(); ++k) {
    const std::string now = test::slurp(d / ("out/" + names[k]));
    INFO("output " << names[k]);
    const bool n = holds(names[k], now, fresh[k]);
    CHECK((n || now == old[k]));
    is_new.push_back(n);
  }
  const auto first_old = std::find(is_new.begin(), is_new.end(), false);
  const bool mixed = first_old != is_new.begin() && first_old != is_new.end();
  if (sig != SIGKILL) {
    CHECK(temporaries(d).empty());
    CHECK_FALSE(mixed);
    return;
  }
  if (!mixed) return;
  CHECK(std::find(first_old, is_new.end(), true) == is_new.end());  // a prefix is new
  for (auto it = first_old; it != is_new.end(); ++it) {             // and the rest waits in temporaries
    const std::string& n = names[static_cast<std::size_t>(it - is_new.begin())];
    bool kept = false;
    for (const auto& t : temporaries(d))
      kept = kept || (t.rfind("." + n + ".pptq-tmp-", 0) == 0 && holds(n, test::slurp(d / ("out/" + t)), fresh[static_cast<std::size_t>(it - is_new.begin())]));
    CHECK(kept);
  }
}

/// Puts the old outputs back and removes the temporaries a SIGKILL left.
void restore(const Dir& d, const std::vector<std::string>& names, const std::vector<std::string>& old) {
  for (const auto& t : temporaries(d)) fs::remove(d / ("out/" + t));
  for (std::size_t k = 0; k < names.size(); ++k) std::ofstream(d / ("out/" + names[k]), std::ios::binary) << old[k];
}

/// The number of lines of a string.
int count_lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

const char* signal_name(int s) { return s == SIGKILL ? "KILL" : s == SIGTERM ? "TERM" : "INT"; }

}  // namespace

TEST_CASE("hostile: pptq-quantize signalled at random points leaves the outputs all old or all new", "[hostile][cli][kill]") {
  LayerDir d;
  const hostile::Layer L(32, 256, 300);
  L.write(d);
  const std::vector<std::string> names = {"Q.npy", "C.npy", "R.json"};
  auto args = [&](const std::string& bits) {
    std::vector<std::string> a = kill_args(d, bits);
    a.insert(a.end(), {"--progress", "--block-size", "16"});
    return a;
  };
  // The new outputs first (the reference, its progress lines counted), then the old ones left in place.
  const Outcome ref = quantize(d, args("3"));
  REQUIRE(ref.code == 0);
  const int lines = count_lines(ref.err);
  std::vector<std::string> fresh;
  for (const auto& n : names) fresh.push_back(test::slurp(d / ("out/" + n)));
  REQUIRE(quantize(d, args("4")).code == 0);
  std::vector<std::string> old;
  for (const auto& n : names) old.push_back(test::slurp(d / ("out/" + n)));
  for (std::size_t k = 0; k < names.size(); ++k) REQUIRE_FALSE(holds(names[k], old[k], fresh[k]));

  std::mt19937_64 rng(20260202);
  for (int sig : {SIGKILL, SIGTERM, SIGINT})
    for (int trial = 0; trial < 8; ++trial) {
      restore(d, names, old);
      hostile::Child c(test::cli_path(), args("3"), d.path);
      const std::string when = signal_at_random_event(c, rng, sig, d, lines, d / "out/Q.npy");
      const Outcome r = c.finish();
      INFO("SIG" << signal_name(sig) << ", trial " << trial << ": " << when << "; stderr: " << r.err);
      CHECK((r.code == 0 || r.signal == sig));
      check_all_old_or_all_new(d, names, old, fresh, sig);
      if (r.code == 0) CHECK(holds("Q.npy", test::slurp(d / "out/Q.npy"), fresh[0]));
    }
}

TEST_CASE("hostile: pptq-gguf requantize signalled at random points leaves the old model or the new one", "[hostile][cli][kill][gguf-tool]") {
  ModelDir d;
  pptq::gguf::File model;
  model.set("general.architecture", pptq::gguf::Value("llama"));
  for (int t = 0; t < 3; ++t) {
    const hostile::Layer L(8, 256, 300, static_cast<std::uint64_t>(40 + t));
    const std::string name = "blk." + std::to_string(t) + ".w";
    model.add_tensor(name, {256, 8}, pptq::ggml::Type::F32, hostile::f32_rows(L.W));
    pptq::io::write_npy(d / ("hess/" + name + ".X.npy"), L.X);
  }
  pptq::gguf::write(model, d / "IN.gguf");
  auto args = [&](const std::string& format) {
    return std::vector<std::string>{"requantize", "--model", d / "IN.gguf", "--hessians", d / "hess", "--format", format,
                                    "--output", d / "out/OUT.gguf"};
  };
  const Outcome ref = hostile::run(test::gguf_tool_path(), args("q4_0"), d.path);
  REQUIRE(ref.code == 0);
  const int lines = count_lines(ref.err);
  const std::vector<std::string> fresh = {test::slurp(d / "out/OUT.gguf")};
  REQUIRE(hostile::run(test::gguf_tool_path(), args("q8_0"), d.path).code == 0);
  const std::vector<std::string> old = {test::slurp(d / "out/OUT.gguf")};
  REQUIRE(old[0] != fresh[0]);

  std::mt19937_64 rng(20260203);
  for (int sig : {SIGKILL, SIGTERM, SIGINT})
    for (int trial = 0; trial < 8; ++trial) {
      restore(d, {"OUT.gguf"}, old);
      hostile::Child c(test::gguf_tool_path(), args("q4_0"), d.path);
      const std::string when = signal_at_random_event(c, rng, sig, d, lines, d / "out/OUT.gguf");
      const Outcome r = c.finish();
      INFO("SIG" << signal_name(sig) << ", trial " << trial << ": " << when << "; stderr: " << r.err);
      CHECK((r.code == 0 || r.signal == sig));
      const std::string now = test::slurp(d / "out/OUT.gguf");
      CHECK((now == old[0] || now == fresh[0]));
      if (r.code == 0) CHECK(now == fresh[0]);
      if (sig != SIGKILL) CHECK(temporaries(d).empty());
    }
}

// ------------------------------------------------------------------------------------------------
// The property test's matrix through the tool (test_hostile_property.cpp runs it in-process, on more W)
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile: pptq-quantize on hostile rows exits 0 with finite weights or 2/3/4 with one line", "[hostile][cli][property]") {
  LayerDir d;
  std::mt19937_64 rng(99);
  const Eigen::Index cols = 256;
  Eigen::MatrixXf W(6, cols);
  std::normal_distribution<float> g;
  for (Eigen::Index j = 0; j < cols; ++j) {
    W(0, j) = g(rng) * 1e-40f;                                   // denormals
    W(1, j) = (j % 2 ? 1.0f : -1.0f) * FLT_MAX / 2;               // ±FLT_MAX/2
    W(2, j) = 0.0f;                                              // all zero
    W(3, j) = 3.25f;                                             // one value
    W(4, j) = g(rng);                                            // ordinary
    W(5, j) = j % 17 == 0 ? FLT_MAX / 2 : g(rng) * 1e-3f;         // one huge weight per block
  }
  pptq::io::write_npy(d / "W.npy", W);
  const Eigen::MatrixXd X = test::structured_inputs(48, cols, rng);
  pptq::io::write_npy(d / "X.npy", X);
  pptq::io::write_npy(d / "XQ.npy", (X + 0.05 * test::gaussian(48, cols, rng)).eval());
  for (const std::string format : {"", "q4_0", "q4_k", "q3_k", "q2_k"})
    for (const std::string method : {"rtn", "optq", "optq-stochastic", "qronos", "gpfq"}) {
      std::vector<std::string> a = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", method,
                                    "--output", d / "out/Q.npy"};
      if (method == "qronos" || method == "gpfq") a.insert(a.end(), {"--quantized-inputs", d / "XQ.npy"});
      if (format.empty()) a.insert(a.end(), {"--bits", "4"});
      else a.insert(a.end(), {"--format", format});
      INFO(method << " " << (format.empty() ? "4-bit grid" : format));
      const Outcome r = quantize(d, a);
      INFO("stderr: " << r.err);
      CHECK(r.signal == 0);
      if (r.code == 0) {
        CHECK(pptq::io::read_npy_matrix<float>(d / "out/Q.npy").allFinite());
        fs::remove(d / "out/Q.npy");
      } else {
        CHECK((r.code == 2 || r.code == 3 || r.code == 4));
        CHECK(r.err_lines().size() == 1);
        CHECK(hostile::listing(d, "out").empty());
      }
      if (method == "gpfq" && !format.empty()) CHECK(r.code == 2);
    }
}
