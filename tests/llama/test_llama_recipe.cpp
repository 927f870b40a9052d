// The recipes (tools/gguf_recipe.hpp) against llama.cpp's own quantizer: for tiny llama models of 8 layers
// (so that the layer rules bite), dense or of 8 experts, tied or untied, with an FFN width that is or is not a
// multiple of 256, every tensor's type in llama_model_quantize's file equals the recipe's, and pptq-gguf's file
// (no Hessians: --rtn-missing) has llama's types, sizes and file size, and llama's metadata changes.
#include "test_model.hpp"
#include "tool_support.hpp"

#include "gguf_recipe.hpp"

#include <pptq/ggml/grid.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <catch2/catch.hpp>

#include <map>
#include <string>

namespace {

using namespace llama_test;
using pptq_gguf::Recipe;

struct Case {
  Recipe recipe;
  llama_ftype ftype;
};

const Case kCases[] = {{Recipe::Q2_K, LLAMA_FTYPE_MOSTLY_Q2_K},
                       {Recipe::Q3_K_M, LLAMA_FTYPE_MOSTLY_Q3_K_M},
                       {Recipe::Q4_K_M, LLAMA_FTYPE_MOSTLY_Q4_K_M},
                       {Recipe::Q5_K_M, LLAMA_FTYPE_MOSTLY_Q5_K_M}};

ModelSpec spec_of(int n_ff, int n_head_kv, int n_expert) {
  ModelSpec s;
  s.n_embd = 256;
  s.n_head = 8;
  s.n_head_kv = n_head_kv;
  s.n_ff = n_ff;
  s.n_layer = 8;
  s.n_expert = n_expert;
  s.n_expert_used = n_expert ? 2 : 0;
  return s;
}

/// Writes the model; without output.weight when tied (llama.cpp then uses token_embd for the output).
void write_model(const std::string& path, const ModelSpec& s, bool tied) {
  write_test_model(path, s);
  if (!tied) return;
  pptq::gguf::File f = pptq::gguf::read(path);
  f.tensors.erase(std::remove_if(f.tensors.begin(), f.tensors.end(),
                                 [](const pptq::gguf::TensorInfo& t) { return t.name == "output.weight"; }),
                  f.tensors.end());
  pptq::gguf::write(f, path);
}

std::map<std::string, pptq::ggml::Type> types_of(const pptq::gguf::File& f) {
  std::map<std::string, pptq::ggml::Type> m;
  for (const auto& t : f.tensors) m[t.name] = t.type;
  return m;
}

/// The recipe's types (copied tensors keep theirs) for the model at `path`.
std::map<std::string, pptq::ggml::Type> recipe_types(const std::string& path, Recipe r) {
  const pptq::gguf::File f = pptq::gguf::read(path);
  const auto targets = pptq_gguf::recipe_targets(f, r);
  std::map<std::string, pptq::ggml::Type> m;
  for (std::size_t i = 0; i < f.tensors.size(); ++i) m[f.tensors[i].name] = targets[i] ? targets[i]->type : f.tensors[i].type;
  return m;
}

void check_case(const ModelSpec& s, bool tied, const Case& c, bool run_tool_too) {
  TempDir d;
  const std::string in = d.file("in.gguf"), ref = d.file("llama.gguf"), out = d.file("pptq.gguf");
  write_model(in, s, tied);
  quantize_with_llama(in, ref, c.ftype);
  const pptq::gguf::File lf = pptq::gguf::read(ref);
  const auto want = types_of(lf);
  const auto got = recipe_types(in, c.recipe);
  for (const auto& kv : want) {
    INFO(pptq_gguf::recipe_name(c.recipe) << " " << kv.first);
    REQUIRE(got.count(kv.first) == 1);
    CHECK(pptq::ggml::type_name(got.at(kv.first)) == std::string(pptq::ggml::type_name(kv.second)));
  }
  CHECK(got.size() == want.size());
  if (!run_tool_too) return;
  fs::create_directory(d.path / "h");
  const RunResult r = run_tool({"requantize", "--model", in, "--hessians", d.file("h"), "--format",
                                pptq_gguf::recipe_name(c.recipe), "--rtn-missing", "--output", out, "--quiet"}, d);
  INFO(r.err);
  REQUIRE(r.code == 0);
  const pptq::gguf::File pf = pptq::gguf::read(out);
  CHECK(types_of(pf) == want);
  for (const auto& t : pf.tensors) CHECK(t.data.size() == lf.find_tensor(t.name)->data.size());
  CHECK(fs::file_size(out) == fs::file_size(ref));
  CHECK(pf.at("general.file_type") == lf.at("general.file_type"));
  CHECK(pf.at("general.quantization_version") == lf.at("general.quantization_version"));
  REQUIRE(pf.metadata.size() == lf.metadata.size());
  for (std::size_t k = 0; k < pf.metadata.size(); ++k) {  // same keys, same order, same values
    CHECK(pf.metadata[k].first == lf.metadata[k].first);
    CHECK(pf.metadata[k].second == lf.metadata[k].second);
  }
}

}  // namespace

TEST_CASE("recipes: every tensor's type is llama_model_quantize's, untied and tied, gqa 4 and 1", "[llama][recipe]") {
  for (const Case& c : kCases) {
    check_case(spec_of(256, 2, 0), false, c, c.recipe == Recipe::Q3_K_M || c.recipe == Recipe::Q5_K_M);
    check_case(spec_of(256, 8, 0), true, c, c.recipe == Recipe::Q2_K);
  }
}

TEST_CASE("recipes: rows of 288 columns take llama.cpp's fallbacks (q5_k_m's q5_1 is refused)", "[llama][recipe]") {
  for (const Case& c : kCases) {
    if (c.recipe == Recipe::Q5_K_M) continue;
    check_case(spec_of(288, 2, 0), false, c, c.recipe == Recipe::Q4_K_M);
  }
  TempDir d;
  write_model(d.file("in.gguf"), spec_of(288, 2, 0), false);
  CHECK_THROWS_WITH(pptq_gguf::recipe_targets(pptq::gguf::read(d.file("in.gguf")), Recipe::Q5_K_M),
                    Catch::Contains("q5_1"));
}

TEST_CASE("recipes: a model of 8 experts takes llama.cpp's expert rules", "[llama][recipe][moe]") {
  for (const Case& c : kCases) check_case(spec_of(256, 2, 8), false, c, false);
}

TEST_CASE("recipes: experts are quantized one by one, OPTQ with NAME.<e>.H.npy, plain rounding without", "[llama][recipe][moe]") {
  TempDir d;
  const std::string in = d.file("in.gguf"), ref = d.file("llama.gguf"), out = d.file("pptq.gguf");
  const ModelSpec s = spec_of(256, 2, 8);
  const TestModel m = write_test_model(in, s);
  quantize_with_llama(in, ref, LLAMA_FTYPE_MOSTLY_Q4_K_M);
  fs::create_directory(d.path / "h");
  Eigen::MatrixXd H = Eigen::MatrixXd::Identity(256, 256);
  for (int j = 0; j < 256; ++j) H(j, j) += 0.5 * (1 + std::sin(0.3 * j));
  pptq::io::write_npy(d.file("h/blk.0.ffn_down_exps.weight.0.H.npy"), H);
  const RunResult r = run_tool({"requantize", "--model", in, "--hessians", d.file("h"), "--format", "q4_k_m",
                                "--rtn-missing", "--output", out}, d);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("'blk.0.ffn_down_exps.weight' expert 1") != std::string::npos);
  CHECK(r.err.find("'blk.0.ffn_down_exps.weight' expert 0") == std::string::npos);
  const pptq::gguf::File pf = pptq::gguf::read(out), lf = pptq::gguf::read(ref);
  CHECK(types_of(pf) == types_of(lf));
  CHECK(fs::file_size(out) == fs::file_size(ref));
  // blk.0.ffn_down_exps: q6_K (use_more_bits(0, 8)); expert 0 by OPTQ with H, expert 1 by plain rounding.
  const auto& t = *pf.find_tensor("blk.0.ffn_down_exps.weight");
  REQUIRE(t.type == pptq::ggml::Type::Q6_K);
  const Tensor& src = m.tensors.at("blk.0.ffn_down_exps.weight");
  const std::size_t per = pptq::ggml::row_bytes(t.type, 256) * 256;
  for (int e = 0; e < 2; ++e) {
    Eigen::MatrixXf W(256, 256);
    for (int i = 0; i < 256; ++i)
      for (int j = 0; j < 256; ++j) W(i, j) = src.data[static_cast<std::size_t>(e) * 65536 + static_cast<std::size_t>(i) * 256 + static_cast<std::size_t>(j)];
    const std::vector<std::uint8_t> want = e == 0 ? pptq::ggml::quantize_optq(W, H, t.type).bytes
                                                  : pptq::ggml::quantize_rtn(W, Eigen::VectorXd::Ones(256), t.type).bytes;
    CHECK(std::vector<std::uint8_t>(t.data.begin() + static_cast<std::ptrdiff_t>(e * per),
                                    t.data.begin() + static_cast<std::ptrdiff_t>((e + 1) * per)) == want);
  }
}
