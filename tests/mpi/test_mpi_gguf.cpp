// pptq-gguf requantize under mpirun (tools/gguf_mpi.hpp, docs/mpi.md): the same output file, byte for byte,
// from 1, 2 and 4 processes (OPTQ and stochastic OPTQ, a plain format and a recipe's mixture of types, the
// report), and a rank whose tensor has a bad Hessian makes every rank fail with its error, leaving no output.
// This program is not itself run under mpirun: it runs the tool both ways.
#include <catch2/catch.hpp>

#include "../test_hostile_support.hpp"
#include "../test_support.hpp"

#include <pptq/ggml/half.hpp>
#include <pptq/gram.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <nlohmann/json.hpp>

#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#ifndef PPTQ_MPIEXEC
#error "PPTQ_MPIEXEC must name mpirun"
#endif
#ifndef PPTQ_MPI_OVERSUBSCRIBE
#define PPTQ_MPI_OVERSUBSCRIBE ""
#endif

namespace {

using Eigen::MatrixXd;
using Eigen::MatrixXf;
using pptq::Index;
namespace gguf = pptq::gguf;

/// A two-layer llama-shaped model (a recipe reads its metadata) with a Hessian for every weight.
void write_model(const test::TempDir& d) {
  std::mt19937_64 rng(5);
  gguf::File f;
  f.set("general.architecture", gguf::Value("llama"));
  f.set("llama.block_count", gguf::Value(std::uint32_t(2)));
  f.set("llama.attention.head_count", gguf::Value(std::uint32_t(4)));
  f.set("llama.attention.head_count_kv", gguf::Value(std::uint32_t(4)));
  std::filesystem::create_directory(d / "hess");
  auto weight = [&](const std::string& name, Index rows, Index cols) {
    const MatrixXf W = test::gaussian(rows, cols, rng, 0.05).cast<float>();
    f.add_tensor(name, {static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(rows)}, pptq::ggml::Type::F32,
                 hostile::f32_rows(W));
    const MatrixXd X = test::structured_inputs(2 * cols, cols, rng);
    pptq::Gram<double> g(cols);
    g.add(X);
    pptq::io::write_npy(d / ("hess/" + name + ".H.npy"), g.matrix());
  };
  weight("token_embd.weight", 64, 256);
  for (int l = 0; l < 2; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    f.add_tensor(b + "attn_norm.weight", {256}, pptq::ggml::Type::F32, std::vector<std::uint8_t>(1024, 0));
    for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output"}) weight(b + n + ".weight", 64 + 32 * l, 256);
    weight(b + "ffn_up.weight", 128, 256);
    weight(b + "ffn_down.weight", 64, 512);
  }
  weight("output.weight", 64, 256);
  gguf::write(f, d / "IN.gguf");
}

test::ProgramRun tool(const test::TempDir& d, int np, const std::vector<std::string>& args) {
  std::vector<std::string> a;
  if (np > 0) {
    if (*PPTQ_MPI_OVERSUBSCRIBE) a.push_back(PPTQ_MPI_OVERSUBSCRIBE);  // Open MPI: more ranks than cores
    a.insert(a.end(), {"-np", std::to_string(np), test::gguf_tool_path()});
  }
  a.push_back("requantize");
  a.insert(a.end(), args.begin(), args.end());
  return test::run_program(np > 0 ? PPTQ_MPIEXEC : test::gguf_tool_path(), a, d / "stdout", d / "stderr");
}

std::vector<std::string> args(const test::TempDir& d, const std::string& format, const std::string& out,
                              std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"--model", d / "IN.gguf", "--hessians", d / "hess", "--format", format, "--output", out};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

/// The report without what depends on the run (times, the processes, the output's name).
nlohmann::json stable(nlohmann::json j) {
  j.erase("seconds");
  j.erase("processes");
  j.erase("output");
  for (auto& t : j["tensors"]) t.erase("seconds");
  return j;
}

}  // namespace

TEST_CASE("mpi: pptq-gguf requantize writes the same file from 1, 2 and 4 processes", "[mpi]") {
  test::TempDir d("pptq_mpi_gguf");
  write_model(d);
  for (const auto& [format, extra] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"q4_k", {}}, {"q4_k", {"--method", "optq-stochastic", "--seed", "9"}}, {"q4_k_m", {"--rtn-missing"}}}) {
    std::string how = format;
    for (const std::string& e : extra) how += " " + e;
    INFO(how);
    std::vector<std::string> with_report = extra;
    with_report.insert(with_report.end(), {"--report", d / "r1.json"});
    const test::ProgramRun one = tool(d, 0, args(d, format, d / "one.gguf", with_report));
    INFO("stderr: " << one.err);
    REQUIRE(one.code == 0);
    const std::string ref = test::slurp(d / "one.gguf");
    for (int np : {1, 2, 4}) {
      INFO(np << " processes");
      std::vector<std::string> e = extra;
      e.insert(e.end(), {"--report", d / "rn.json"});
      const test::ProgramRun r = tool(d, np, args(d, format, d / "n.gguf", e));
      INFO("stderr: " << r.err);
      REQUIRE(r.code == 0);
      CHECK(test::slurp(d / "n.gguf") == ref);
      const auto a = nlohmann::json::parse(test::slurp(d / "r1.json")), b = nlohmann::json::parse(test::slurp(d / "rn.json"));
      CHECK(b["processes"] == np);
      CHECK(stable(a) == stable(b));
    }
  }
}

TEST_CASE("mpi: a rank whose tensor has a bad Hessian makes every rank fail, and nothing is written", "[mpi]") {
  test::TempDir d("pptq_mpi_gguf");
  write_model(d);
  MatrixXd H = pptq::io::read_npy_matrix<double>(d / "hess/blk.1.ffn_down.weight.H.npy");
  H(3, 3) = std::numeric_limits<double>::quiet_NaN();
  pptq::io::write_npy(d / "hess/blk.1.ffn_down.weight.H.npy", H);
  std::filesystem::create_directory(d / "out");
  for (int np : {2, 4}) {
    INFO(np << " processes");
    const test::ProgramRun r =
        tool(d, np, args(d, "q4_k", d / "out/OUT.gguf", {"--quiet", "--report", d / "out/r.json"}));
    INFO("stderr: " << r.err);
    CHECK(r.code != 0);
    CHECK(d.names("out").empty());
    // Every rank exits with the failing rank's error (a data error: exit 3), naming the tensor's Hessian;
    // mpirun stops the job at the first exit, so not every rank may get to print it.
    CHECK(r.code == 3);
    std::set<std::string> lines;
    for (std::size_t pos = 0; (pos = r.err.find("pptq-gguf: ", pos)) != std::string::npos; ++pos)
      lines.insert(r.err.substr(pos, r.err.find('\n', pos) - pos));
    REQUIRE(lines.size() == 1);  // the same error, whichever ranks printed it
    CHECK(lines.begin()->find("pptq-gguf: rank ") == 0);
    CHECK(lines.begin()->find("blk.1.ffn_down.weight") != std::string::npos);
  }
}
