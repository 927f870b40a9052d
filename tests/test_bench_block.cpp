// The synthetic llama-7B-shaped block of bench/make_block.cpp (test::make_block_path()), at a tiny scale: the
// files it writes are a llama model's (names, shapes, types, metadata), every Hessian is a symmetric positive
// definite cols × cols matrix shared as a real block shares it, the files follow from the seed alone, and
// `pptq-gguf requantize` (test::gguf_tool_path()) quantizes exactly the seven weights of every block.
#include <catch2/catch.hpp>

#include "test_support.hpp"

namespace test {
const char* make_block_path();  ///< the built bench/pptq_make_block (test_paths.cpp)
}

#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <vector>


namespace {

namespace gguf = pptq::gguf;
using pptq::ggml::Type;

const std::vector<std::string> kWeights = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

test::ProgramRun make_block(const test::TempDir& d, const std::string& sub, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"--out-dir", d / sub, "--scale", "0.0625"};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_program(test::make_block_path(), args, d / "gen.stdout", d / "gen.stderr");
}

/// (rows, cols) of weight w at scale 0.0625: 4096 → 256, 11008 → 688 → 768 (whole super-blocks of 256).
std::pair<std::uint64_t, std::uint64_t> shape_of(const std::string& w) {
  if (w == "ffn_gate" || w == "ffn_up") return {768, 256};
  if (w == "ffn_down") return {256, 768};
  return {256, 256};
}

}  // namespace

TEST_CASE("make_block writes a llama-shaped GGUF and its Hessians", "[bench_block]") {
  const test::TempDir d("pptq_bench_block");
  const test::ProgramRun r = make_block(d, "a", {"--blocks", "2", "--seed", "5"});
  REQUIRE(r.code == 0);
  const gguf::File f = gguf::read(d / "a/block.gguf");
  CHECK(f.at("general.architecture").str() == "llama");
  CHECK(f.at("llama.block_count").get<std::uint32_t>() == 2);
  CHECK(f.at("llama.embedding_length").get<std::uint32_t>() == 256);
  CHECK(f.at("llama.feed_forward_length").get<std::uint32_t>() == 768);
  CHECK(f.tensors.size() == 18);
  for (int b = 0; b < 2; ++b) {
    const std::string pre = "blk." + std::to_string(b) + ".";
    for (const char* norm : {"attn_norm", "ffn_norm"}) {
      const gguf::TensorInfo* t = f.find_tensor(pre + norm + ".weight");
      REQUIRE(t != nullptr);
      CHECK(t->type == Type::F32);
      CHECK(t->ne == std::vector<std::uint64_t>{256});
    }
    for (const std::string& w : kWeights) {
      const gguf::TensorInfo* t = f.find_tensor(pre + w + ".weight");
      REQUIRE(t != nullptr);
      CHECK(t->type == Type::F16);
      const auto [rows, cols] = shape_of(w);
      CHECK(t->ne == std::vector<std::uint64_t>{cols, rows});  // ne = [in, out]
      const Eigen::MatrixXd H = pptq::io::read_npy_matrix<double>(d / ("a/hessians/" + pre + w + ".weight.H.npy"));
      REQUIRE(H.rows() == static_cast<Eigen::Index>(cols));
      REQUIRE(H.cols() == static_cast<Eigen::Index>(cols));
      CHECK((H - H.transpose()).norm() == 0.0);
      CHECK(Eigen::LLT<Eigen::MatrixXd>(H).info() == Eigen::Success);
    }
  }
  // q, k and v read one input, gate and up another; attn_output's differs; the blocks differ.
  const auto bytes = [&](const std::string& name) { return test::slurp(d / ("a/hessians/" + name + ".H.npy")); };
  CHECK(bytes("blk.0.attn_q.weight") == bytes("blk.0.attn_v.weight"));
  CHECK(bytes("blk.0.ffn_gate.weight") == bytes("blk.0.ffn_up.weight"));
  CHECK(bytes("blk.0.attn_q.weight") != bytes("blk.0.attn_output.weight"));
  CHECK(bytes("blk.0.attn_q.weight") != bytes("blk.1.attn_q.weight"));
  CHECK(f.find_tensor("blk.0.attn_q.weight")->data != f.find_tensor("blk.1.attn_q.weight")->data);
}

TEST_CASE("make_block's files follow from the seed alone", "[bench_block]") {
  const test::TempDir d("pptq_bench_block");
  REQUIRE(make_block(d, "a", {"--seed", "3"}).code == 0);
  REQUIRE(make_block(d, "b", {"--seed", "3"}).code == 0);
  REQUIRE(make_block(d, "c", {"--seed", "4"}).code == 0);
  const std::string h = "/hessians/blk.0.ffn_down.weight.H.npy";
  CHECK(test::slurp(d / "a/block.gguf") == test::slurp(d / "b/block.gguf"));
  CHECK(test::slurp(d / ("a" + h)) == test::slurp(d / ("b" + h)));
  CHECK(test::slurp(d / "a/block.gguf") != test::slurp(d / "c/block.gguf"));
  CHECK(test::slurp(d / ("a" + h)) != test::slurp(d / ("c" + h)));
  CHECK(make_block(d, "x", {"--scale", "0"}).code == 2);
  CHECK(make_block(d, "x", {"--blocks", "two"}).code == 2);
}

TEST_CASE("pptq-gguf requantize takes make_block's output", "[bench_block]") {
  const test::TempDir d("pptq_bench_block");
  REQUIRE(make_block(d, "a", {"--blocks", "2", "--h-dtype", "f64"}).code == 0);
  const test::ProgramRun r =
      test::run_program(test::gguf_tool_path(),
                        {"requantize", "--model", d / "a/block.gguf", "--hessians", d / "a/hessians", "--format", "q4_k",
                         "--output", d / "out.gguf", "--quiet"},
                        d / "tool.stdout", d / "tool.stderr");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const gguf::File in = gguf::read(d / "a/block.gguf"), out = gguf::read(d / "out.gguf");
  REQUIRE(out.tensors.size() == in.tensors.size());
  int quantized = 0;
  for (std::size_t i = 0; i < in.tensors.size(); ++i) {
    CHECK(out.tensors[i].ne == in.tensors[i].ne);
    if (in.tensors[i].type == Type::F16) {
      CHECK(out.tensors[i].type == Type::Q4_K);
      ++quantized;
    } else {
      CHECK(out.tensors[i].data == in.tensors[i].data);
    }
  }
  CHECK(quantized == 14);
}
