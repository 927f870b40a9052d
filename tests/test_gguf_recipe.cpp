// pptq-gguf requantize's recipes (tools/gguf_recipe.hpp), --dry-run, --rtn-missing and the BF16 / Q8_0
// sources, on a small llama-shaped model written here: 8 layers (so that llama.cpp's layer rules bite), written
// in reverse layer order (the rules count in llama.cpp's loading order, not the file's), n_head / n_head_kv = 4,
// rows of 256, sources of every kind (F32, F16, BF16, Q8_0), metadata of every GGUF value type. The expected
// type of every tensor is a table written out below from llama.cpp's documented rules (docs/formats.md §5);
// tests/llama/test_llama_recipe.cpp compares the rules with llama.cpp's own quantizer.
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include "test_support.hpp"

#include <pptq/ggml/blocks.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/gram_file.hpp>
#include <pptq/io/npy.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

namespace gguf = pptq::gguf;
using pptq::Index;
using pptq::ggml::Type;
using Eigen::MatrixXd;
using Eigen::MatrixXf;

constexpr int kLayers = 8;
constexpr std::uint64_t kEmbd = 256, kKv = 64, kFf = 256, kVocab = 32;

// ------------------------------------------------------------------------------------------------
// llama.cpp's rules for this model, written out (8 layers: use_more_bits(i, 8) holds for i = 0, 3, 6, 7;
// n_head / n_head_kv = 4; one attn_v per layer, so attn_v's count is the layer)
// ------------------------------------------------------------------------------------------------

struct RuleTable {
  const char* recipe;
  const char* base;         // attn_q, attn_k, ffn_gate, ffn_up, untied token_embd
  const char* attn_output;
  const char* attn_v[kLayers];
  const char* ffn_down[kLayers];
  const char* output;       // output.weight, or token_embd.weight when tied
  std::uint32_t file_type;  // llama.cpp's general.file_type
};

const RuleTable kTables[] = {
    {"q4_k_m", "q4_K", "q4_K",
     {"q6_K", "q4_K", "q4_K", "q6_K", "q4_K", "q4_K", "q6_K", "q6_K"},
     {"q6_K", "q4_K", "q4_K", "q6_K", "q4_K", "q4_K", "q6_K", "q6_K"}, "q6_K", 15},
    {"q5_k_m", "q5_K", "q5_K",
     {"q6_K", "q5_K", "q5_K", "q6_K", "q5_K", "q5_K", "q6_K", "q6_K"},
     {"q6_K", "q5_K", "q5_K", "q6_K", "q5_K", "q5_K", "q6_K", "q6_K"}, "q6_K", 17},
    {"q3_k_m", "q3_K", "q4_K",  // attn_v: the first two q5_K; ffn_down: i < 8/16 = 0 never, so q4_K
     {"q5_K", "q5_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K"},
     {"q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K"}, "q6_K", 12},
    {"q2_k_m", "q2_K", "q3_K",  // attn_v: q4_K as n_head / n_head_kv >= 4
     {"q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K", "q4_K"},
     {"q3_K", "q3_K", "q3_K", "q3_K", "q3_K", "q3_K", "q3_K", "q3_K"}, "q6_K", 10},
};

/// The table's type for a tensor, or "" for a tensor the recipes copy (norms, 1-d).
std::string table_type(const RuleTable& t, const std::string& name, bool tied) {
  if (name == "output.weight" || (tied && name == "token_embd.weight")) return t.output;
  if (name == "token_embd.weight") return t.base;
  if (name.compare(0, 4, "blk.") != 0) return "";  // output_norm, rope_freqs
  const int l = name[4] - '0';
  const std::string rest = name.substr(6);
  if (rest == "attn_v.weight") return t.attn_v[l];
  if (rest == "ffn_down.weight") return t.ffn_down[l];
  if (rest == "attn_output.weight") return t.attn_output;
  if (rest == "attn_q.weight" || rest == "attn_k.weight" || rest == "ffn_gate.weight" || rest == "ffn_up.weight")
    return t.base;
  return "";  // attn_norm, ffn_norm
}

// ------------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------------

std::vector<std::uint8_t> encode(const MatrixXf& W, Type type) {
  std::vector<std::uint8_t> b;
  auto put = [&](std::uint64_t u, int n) {
    for (int k = 0; k < n; ++k) b.push_back(static_cast<std::uint8_t>(u >> (8 * k)));
  };
  if (type == Type::Q8_0) return pptq::ggml::quantize_rtn(W, Eigen::VectorXd::Ones(W.cols()), Type::Q8_0).bytes;
  for (Index i = 0; i < W.rows(); ++i)
    for (Index j = 0; j < W.cols(); ++j) {
      if (type == Type::F32) put(pptq::ggml::float_bits(W(i, j)), 4);
      if (type == Type::F16) put(pptq::ggml::float_to_half(W(i, j)), 2);
      if (type == Type::BF16) put(pptq::ggml::float_to_bf16(W(i, j)), 2);
    }
  return b;
}

/// The source type of each weight: mostly F32, layer 1 F16, one BF16 and one Q8_0 tensor.
Type source_type(const std::string& name) {
  if (name == "blk.2.attn_q.weight") return Type::BF16;
  if (name == "blk.4.attn_output.weight") return Type::Q8_0;
  if (name.compare(0, 6, "blk.1.") == 0) return Type::F16;
  return Type::F32;
}

void add_metadata(gguf::File& f) {
  using gguf::Value;
  f.set("general.architecture", "llama");
  f.set("general.file_type", std::uint32_t(0));  // all F32: replaced by the recipe's, as llama-quantize does
  f.set("llama.block_count", std::uint32_t(kLayers));
  f.set("llama.embedding_length", std::uint32_t(kEmbd));
  f.set("llama.attention.head_count", std::uint32_t(8));
  f.set("llama.attention.head_count_kv", std::uint32_t(2));
  f.set("test.u8", std::uint8_t(200));
  f.set("test.i8", std::int8_t(-100));
  f.set("test.u16", std::uint16_t(60000));
  f.set("test.i16", std::int16_t(-30000));
  f.set("test.i32", std::int32_t(-7));
  f.set("test.f32", 0.1f);
  f.set("test.bool", true);
  f.set("test.string", "t\xc3\xa9st");
  f.set("test.array", Value::array_of(std::vector<std::string>{"a", "", "c"}));
  f.set("test.array_i16", Value::array_of(std::vector<std::int16_t>{-1, 2, -3}));
  f.set("test.u64", std::uint64_t(1) << 40);
  f.set("test.i64", -(std::int64_t(1) << 40));
  f.set("test.f64", -2.5);
  f.set("general.quantization_version", std::uint32_t(2));
}

struct Model {
  gguf::File file;
  std::map<std::string, MatrixXf> W;  ///< every 2-d weight as its source stores it (decoded)
};

/// The model, layers in reverse order (the rules must count in llama.cpp's order, by layer then name).
Model make_model(bool tied, std::uint64_t seed) {
  Model m;
  add_metadata(m.file);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  auto add2 = [&](const std::string& name, std::uint64_t cols, std::uint64_t rows) {
    MatrixXf W(static_cast<Index>(rows), static_cast<Index>(cols));
    for (Index i = 0; i < W.rows(); ++i)
      for (Index j = 0; j < W.cols(); ++j) W(i, j) = static_cast<float>(g(rng) / 16.0);
    const Type type = source_type(name);
    auto bytes = encode(W, type);
    m.W[name] = pptq::ggml::dequantize_bytes(bytes, W.rows(), W.cols(), type);
    m.file.add_tensor(name, {cols, rows}, type, std::move(bytes));
  };
  auto add1 = [&](const std::string& name, std::uint64_t n) {
    m.file.add_tensor(name, {n}, Type::F32, encode(MatrixXf::Constant(1, static_cast<Index>(n), 1.0f), Type::F32));
  };
  add2("token_embd.weight", kEmbd, kVocab);
  add1("rope_freqs.weight", 16);
  for (int l = kLayers - 1; l >= 0; --l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add1(p + "attn_norm.weight", kEmbd);
    add2(p + "attn_q.weight", kEmbd, kEmbd);
    add2(p + "attn_k.weight", kEmbd, kKv);
    add2(p + "attn_v.weight", kEmbd, kKv);
    add2(p + "attn_output.weight", kEmbd, kEmbd);
    add1(p + "ffn_norm.weight", kEmbd);
    add2(p + "ffn_gate.weight", kEmbd, kFf);
    add2(p + "ffn_down.weight", kFf, kEmbd);
    add2(p + "ffn_up.weight", kEmbd, kFf);
  }
  add1("output_norm.weight", kEmbd);
  if (!tied) add2("output.weight", kEmbd, kVocab);
  return m;
}

/// An identity-ish Hessian: unequal diagonal and a mild correlation, positive definite.
MatrixXd hessian(Index n, int salt) {
  MatrixXd H = MatrixXd::Identity(n, n);
  Eigen::VectorXd v(n);
  for (Index j = 0; j < n; ++j) {
    H(j, j) += 0.5 * (1.0 + std::sin(0.37 * static_cast<double>(j + salt)));
    v(j) = std::cos(0.11 * static_cast<double>(j * (salt + 1)));
  }
  return H + 0.2 * v * v.transpose() / static_cast<double>(n);
}

/// The tensors the test gives a Hessian: layers 0 and 3 and output.weight; everything else is plain rounding.
bool has_hessian(const std::string& name) {
  return name == "output.weight" || ((name.compare(0, 6, "blk.0.") == 0 || name.compare(0, 6, "blk.3.") == 0) &&
                                     name.find("norm") == std::string::npos);
}

struct Dir : test::TempDir {
  Dir() : test::TempDir("pptq_gguf_recipe") {
    std::filesystem::create_directory(path + "/h");
    std::filesystem::create_directory(path + "/out");
  }
  std::string h() const { return path + "/h"; }
  std::string out() const { return path + "/out/OUT.gguf"; }
};

std::map<std::string, MatrixXd> write_inputs(const Dir& d, const Model& m) {
  gguf::write(m.file, d / "IN.gguf");
  std::map<std::string, MatrixXd> H;
  int salt = 0;
  for (const auto& kv : m.W)
    if (has_hessian(kv.first)) {
      H[kv.first] = hessian(kv.second.cols(), salt++);
      pptq::io::write_npy(d.h() + "/" + kv.first + ".H.npy", H[kv.first]);
    }
  return H;
}

test::ProgramRun run_tool(const Dir& d, std::vector<std::string> extra) {
  std::vector<std::string> args = {"requantize", "--model", d / "IN.gguf", "--hessians", d.h()};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_program(test::gguf_tool_path(), args, d / "tool.stdout", d / "tool.stderr");
}

/// The input's metadata with llama-quantize's changes: general.quantization_version and general.file_type
/// moved to the end, the latter the recipe's.
std::vector<std::pair<std::string, gguf::Value>> recipe_metadata(const gguf::File& in, std::uint32_t file_type) {
  auto md = in.metadata;
  md.erase(std::remove_if(md.begin(), md.end(), [](const auto& kv) {
             return kv.first == "general.quantization_version" || kv.first == "general.file_type";
           }), md.end());
  md.emplace_back("general.quantization_version", gguf::Value(std::uint32_t(2)));
  md.emplace_back("general.file_type", gguf::Value(file_type));
  return md;
}

/// Checks the output of a recipe run tensor by tensor: the table's type, OPTQ's or plain rounding's bytes
/// (computed here in-process), copied tensors byte for byte, order and shapes kept, the metadata.
void check_output(const Dir& d, const Model& m, const std::map<std::string, MatrixXd>& H, const RuleTable& table,
                  bool tied) {
  const gguf::File out = gguf::read(d.out());
  CHECK(out.metadata == recipe_metadata(m.file, table.file_type));
  REQUIRE(out.tensors.size() == m.file.tensors.size());
  for (std::size_t i = 0; i < out.tensors.size(); ++i) {
    const gguf::TensorInfo &o = out.tensors[i], &in = m.file.tensors[i];
    INFO(table.recipe << ": " << in.name);
    REQUIRE(o.name == in.name);
    CHECK(o.ne == in.ne);
    const std::string want = table_type(table, in.name, tied);
    if (want.empty()) {
      CHECK(o.type == in.type);
      CHECK(o.data == in.data);  // copied byte for byte
      continue;
    }
    REQUIRE(pptq::ggml::type_name(o.type) == want);
    const MatrixXf& W = m.W.at(in.name);
    const auto h = H.find(in.name);
    if (h != H.end()) {
      const auto gq = pptq::ggml::quantize_optq(W, h->second, o.type);
      REQUIRE(gq.result.ok());
      CHECK(o.data == gq.bytes);
    } else {
      CHECK(o.data == pptq::ggml::quantize_rtn(W, Eigen::VectorXd::Ones(W.cols()), o.type).bytes);
    }
  }
}

}  // namespace

TEST_CASE("recipes: every tensor gets llama.cpp's type for it; OPTQ with a Hessian, plain rounding without",
          "[gguf-recipe]") {
  for (const RuleTable& table : kTables) {
    Dir d;
    const Model m = make_model(false, 7);
    const auto H = write_inputs(d, m);
    const auto r = run_tool(d, {"--format", table.recipe, "--rtn-missing", "--output", d.out(), "--threads", "2"});
    INFO(r.err);
    REQUIRE(r.code == 0);
    check_output(d, m, H, table, false);
    // The summary says which tensors went without a Hessian and that a source was already quantized.
    CHECK(r.err.find("by plain rounding (no Hessian: 'token_embd.weight'") != std::string::npos);
    CHECK(r.err.find("'blk.7.ffn_up.weight'") != std::string::npos);
    CHECK(r.err.find("1 source tensor(s) were already quantized (q8_0)") != std::string::npos);
  }
}

TEST_CASE("recipes: tied embeddings take the output's type", "[gguf-recipe]") {
  Dir d;
  const Model m = make_model(true, 8);
  const auto H = write_inputs(d, m);
  const auto r = run_tool(d, {"--format", "Q4_K_M", "--rtn-missing", "--output", d.out(), "--quiet"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  check_output(d, m, H, kTables[0], true);
  CHECK(gguf::read(d.out()).find_tensor("token_embd.weight")->type == Type::Q6_K);
}

TEST_CASE("recipes: tensors without a Hessian are refused, all named at once; nothing is written", "[gguf-recipe]") {
  Dir d;
  const Model m = make_model(false, 9);
  write_inputs(d, m);
  const auto r = run_tool(d, {"--format", "q5_k_m", "--output", d.out()});
  CHECK(r.code == 3);
  CHECK(r.err.find("43 tensor(s) or expert(s) the recipe quantizes have no Hessian") != std::string::npos);
  for (const char* name : {"'token_embd.weight'", "'blk.1.attn_q.weight'", "'blk.7.ffn_down.weight'"})
    CHECK(r.err.find(name) != std::string::npos);
  CHECK(r.err.find("--rtn-missing") != std::string::npos);
  CHECK(d.names("out").empty());
}

TEST_CASE("recipes: the Hessians of a Gram file give the bytes of the .H.npy form", "[gguf-recipe][grams]") {
  Dir d;
  const Model m = make_model(false, 11);
  const auto H = write_inputs(d, m);
  // The same Hessians in both forms, rounded to float as a Gram file stores them.
  std::vector<pptq::io::GramRecord> records;
  for (const auto& kv : H) {
    const MatrixXd Hf = kv.second.cast<float>().cast<double>();
    pptq::io::write_npy(d.h() + "/" + kv.first + ".H.npy", Hf);
    pptq::io::GramRecord r;
    r.weights = {kv.first};
    r.samples = 100;
    r.H = Hf;
    records.push_back(r);
  }
  pptq::io::write_gram_file(d / "grams.gguf", records);
  const auto a = run_tool(d, {"--format", "q4_k_m", "--rtn-missing", "--output", d.out(), "--quiet"});
  INFO(a.err);
  REQUIRE(a.code == 0);
  const gguf::File from_npy = gguf::read(d.out());
  std::vector<std::string> args = {"requantize", "--model", d / "IN.gguf", "--grams",   d / "grams.gguf",
                                   "--format",   "q4_k_m", "--rtn-missing", "--output", d.out(), "--quiet"};
  auto b = test::run_program(test::gguf_tool_path(), args, d / "g.stdout", d / "g.stderr");
  INFO(b.err);
  REQUIRE(b.code == 0);
  const gguf::File from_grams = gguf::read(d.out());
  CHECK(from_grams.metadata == from_npy.metadata);
  REQUIRE(from_grams.tensors.size() == from_npy.tensors.size());
  for (std::size_t i = 0; i < from_npy.tensors.size(); ++i) {
    INFO(from_npy.tensors[i].name);
    CHECK(from_grams.tensors[i].name == from_npy.tensors[i].name);
    CHECK(from_grams.tensors[i].type == from_npy.tensors[i].type);
    CHECK(from_grams.tensors[i].data == from_npy.tensors[i].data);
  }
  // Without --rtn-missing the recipe's tensors without a Gram are refused, named, and nothing is written.
  std::filesystem::remove(d.out());
  args.erase(std::find(args.begin(), args.end(), "--rtn-missing"));
  b = test::run_program(test::gguf_tool_path(), args, d / "g.stdout", d / "g.stderr");
  CHECK(b.code == 3);
  CHECK(b.err.find("have no Gram in") != std::string::npos);
  CHECK(b.err.find("'token_embd.weight'") != std::string::npos);
  CHECK(d.names("out").empty());
}

TEST_CASE("recipes and plain formats: --dry-run prints the plan and writes nothing", "[gguf-recipe]") {
  Dir d;
  const Model m = make_model(false, 10);
  write_inputs(d, m);
  auto r = run_tool(d, {"--format", "q4_k_m", "--rtn-missing", "--dry-run", "--output", d.out()});
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(d.names("out").empty());
  CHECK(r.out.find("'blk.0.attn_v.weight'\t[256, 64]\tf32 -> q6_K\t65536 -> 13440\tOPTQ\t" + d.h() +
                   "/blk.0.attn_v.weight.H.npy") != std::string::npos);
  CHECK(r.out.find("'blk.1.attn_v.weight'\t[256, 64]\tf16 -> q4_K\t32768 -> 9216\tRTN (no Hessian)\tmissing") !=
        std::string::npos);
  CHECK(r.out.find("'blk.2.attn_q.weight'\t[256, 256]\tbf16 -> q4_K") != std::string::npos);
  CHECK(r.out.find("'output_norm.weight'\t[256]\tf32 -> f32\t1024 -> 1024\tcopied\t-\t1-d") != std::string::npos);
  CHECK(r.out.find("76 tensors: 15 OPTQ, 43 RTN (no Hessian), 0 converted to f16, 18 copied") != std::string::npos);
  // Without --rtn-missing the dry run refuses like the run; a plain format's plan has its Hessians' tensors only.
  CHECK(run_tool(d, {"--format", "q4_k_m", "--dry-run"}).code == 3);
  r = run_tool(d, {"--format", "q8_0", "--dry-run"});
  REQUIRE(r.code == 0);
  CHECK(r.out.find("'blk.3.ffn_up.weight'\t[256, 256]\tf32 -> q8_0") != std::string::npos);
  CHECK(r.out.find("15 OPTQ, 0 RTN (no Hessian), 0 converted to f16, 61 copied") != std::string::npos);
  CHECK(d.names("out").empty());
  // Usage: --rtn-missing needs a recipe; --output is needed without --dry-run.
  CHECK(run_tool(d, {"--format", "q4_k", "--rtn-missing", "--output", d.out()}).code == 2);
  CHECK(run_tool(d, {"--format", "q4_k_m", "--rtn-missing"}).code == 2);
}

TEST_CASE("requantize reads BF16 and Q8_0 sources exactly", "[gguf-recipe]") {
  // Each source decodes to exactly the values it stores: OPTQ from them gives in-process quantize_optq's bytes.
  Dir d;
  const Model m = make_model(false, 11);
  gguf::write(m.file, d / "IN.gguf");
  const MatrixXd H = hessian(256, 3);
  pptq::io::write_npy(d.h() + "/blk.2.attn_q.weight.H.npy", H);
  pptq::io::write_npy(d.h() + "/blk.4.attn_output.weight.H.npy", H);
  const auto r = run_tool(d, {"--format", "q4_k", "--output", d.out(), "--quiet"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  const gguf::File out = gguf::read(d.out());
  for (const char* name : {"blk.2.attn_q.weight", "blk.4.attn_output.weight"}) {
    INFO(name);
    CHECK(out.find_tensor(name)->type == Type::Q4_K);
    CHECK(out.find_tensor(name)->data == pptq::ggml::quantize_optq(m.W.at(name), H, Type::Q4_K).bytes);
  }
}
