// `pptq-gguf calibrate` on a tiny llama model the test writes (test_model.hpp): the Grams it collects
// through llama.cpp's evaluation callback against XᵀX computed here from the model's own weights, the
// sharing of inputs, the sample counts of every weight (the last layer and output.weight included), the
// experts of a mixture-of-experts model, and the tool's errors.
#include "test_model.hpp"
#include "tool_support.hpp"

#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/gram_file.hpp>

#include <Eigen/Core>

#include <cmath>
#include <set>
#include <string>
#include <vector>

using llama_test::ModelSpec;
using llama_test::TempDir;
using pptq::io::GramFile;

namespace {

// The input of blk.0's attention for every token evaluated, one row per token: RMSNorm of the token's
// embedding with the model's eps, times attn_norm's weight (position and attention play no part yet).
Eigen::MatrixXd attention_inputs(const llama_test::TestModel& m, const std::vector<std::vector<llama_token>>& chunks) {
  const llama_test::Tensor& emb = m.tensors.at("token_embd.weight");
  const llama_test::Tensor& g = m.tensors.at("blk.0.attn_norm.weight");
  const Eigen::Index n = m.spec.n_embd;
  std::vector<Eigen::VectorXd> rows;
  for (const auto& chunk : chunks)
    for (llama_token t : chunk) {
      Eigen::VectorXd e(n);
      for (Eigen::Index c = 0; c < n; ++c) e(c) = emb.at(static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(c));
      const double scale = 1.0 / std::sqrt(e.squaredNorm() / static_cast<double>(n) + static_cast<double>(m.spec.eps));
      for (Eigen::Index c = 0; c < n; ++c) e(c) *= scale * static_cast<double>(g.data[static_cast<std::size_t>(c)]);
      rows.push_back(e);
    }
  Eigen::MatrixXd X(static_cast<Eigen::Index>(rows.size()), n);
  for (std::size_t i = 0; i < rows.size(); ++i) X.row(static_cast<Eigen::Index>(i)) = rows[i].transpose();
  return X;
}

Eigen::MatrixXd attention_input_gram(const llama_test::TestModel& m, const std::vector<std::vector<llama_token>>& chunks) {
  const Eigen::MatrixXd X = attention_inputs(m, chunks);
  return X.transpose() * X;
}

// Every record of two Gram files, compared exactly.
void require_same_grams(const GramFile& a, const GramFile& b) {
  REQUIRE(a.by_weight.size() == b.by_weight.size());
  for (const auto& kv : a.by_weight) {
    INFO(kv.first);
    const auto it = b.by_weight.find(kv.first);
    REQUIRE(it != b.by_weight.end());
    CHECK(kv.second->weights == it->second->weights);
    CHECK(kv.second->samples == it->second->samples);
    CHECK(kv.second->H == it->second->H);
    CHECK(kv.second->cross == it->second->cross);
  }
}

std::size_t count_tokens(const std::vector<std::vector<llama_token>>& chunks) {
  std::size_t n = 0;
  for (const auto& c : chunks) n += c.size();
  return n;
}

double rel_max_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

}  // namespace

TEST_CASE("calibrate: blk.0's attention Gram is XᵀX of the normed embeddings, shared by q, k, v", "[llama][calibrate]") {
  TempDir dir;
  ModelSpec spec;
  spec.eps = 0.03f;  // large enough that a wrong eps changes the Gram far beyond float rounding
  const auto model = llama_test::write_test_model(dir.file("m.gguf"), spec);
  const std::string text = llama_test::sample_text(120, 7);
  llama_test::put(dir.file("text.txt"), text);
  const int ctx = 96;  // several chunks, the last one shorter
  const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt"), "--ctx",
                                         std::to_string(ctx), "--threads", "1", "--output", dir.file("g.gguf")},
                                        dir);
  INFO(run.err);
  REQUIRE(run.code == 0);
  const auto chunks = llama_test::expected_chunks(dir.file("m.gguf"), text, ctx);
  REQUIRE(chunks.size() >= 3);
  const std::size_t tokens = count_tokens(chunks);
  CHECK(run.err.find("chunk " + std::to_string(chunks.size()) + "/" + std::to_string(chunks.size())) != std::string::npos);

  const GramFile g = pptq::io::read_gram_file(dir.file("g.gguf"));
  const pptq::io::GramRecord& q = g.at("blk.0.attn_q.weight");
  CHECK(&q == &g.at("blk.0.attn_k.weight"));
  CHECK(&q == &g.at("blk.0.attn_v.weight"));
  CHECK(q.weights == std::vector<std::string>{"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"});
  CHECK(q.samples == static_cast<std::int64_t>(tokens));
  const Eigen::MatrixXd want = attention_input_gram(model, chunks);
  CHECK(rel_max_diff(q.H, want) < 2e-6);

  // The same Gram without the chunks' BOS, or with the eps left out, is far off: the comparison can tell.
  auto no_eps = model;
  no_eps.spec.eps = 0;
  CHECK(rel_max_diff(attention_input_gram(no_eps, chunks), want) > 1e-3);
  auto no_bos = chunks;
  for (auto& c : no_bos) c.erase(c.begin());
  CHECK(rel_max_diff(attention_input_gram(model, no_bos), want) > 1e-3);
}

TEST_CASE("calibrate: every weight has a Gram from every token, the last layer and output.weight included", "[llama][calibrate]") {
  TempDir dir;
  ModelSpec spec;
  spec.n_layer = 3;
  llama_test::write_test_model(dir.file("m.gguf"), spec);
  const std::string text = llama_test::sample_text(60, 8);
  llama_test::put(dir.file("text.txt"), text);
  const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt"), "--ctx", "64",
                                         "--quiet", "--output", dir.file("g.gguf")},
                                        dir);
  INFO(run.err);
  REQUIRE(run.code == 0);
  CHECK(run.err.empty());  // --quiet
  const std::size_t tokens = count_tokens(llama_test::expected_chunks(dir.file("m.gguf"), text, 64));
  const GramFile g = pptq::io::read_gram_file(dir.file("g.gguf"));

  std::set<std::string> want = {"output.weight"};
  for (int il = 0; il < spec.n_layer; ++il)
    for (const char* w : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
      want.insert("blk." + std::to_string(il) + "." + w + ".weight");
  std::set<std::string> got;
  for (const auto& kv : g.by_weight) got.insert(kv.first);
  CHECK(got == want);
  // Per layer: the attention input (q, k, v), the attention output, the FFN input (gate, up), the FFN's
  // inner activation; and output.weight's.
  CHECK(g.grams.size() == static_cast<std::size_t>(4 * spec.n_layer + 1));
  for (const auto& r : g.grams) {
    INFO(r->weights.front() << " from " << r->input);
    CHECK(r->samples == static_cast<std::int64_t>(tokens));
    CHECK(r->expert == -1);
    CHECK(r->H.rows() == (r->weights.front().find("ffn_down") != std::string::npos ? spec.n_ff : spec.n_embd));
    CHECK(r->H.diagonal().minCoeff() > 0);
  }
  const std::string last = "blk." + std::to_string(spec.n_layer - 1) + ".";
  CHECK(&g.at(last + "ffn_gate.weight") == &g.at(last + "ffn_up.weight"));
  CHECK(g.at(last + "attn_output.weight").weights.size() == 1);
  CHECK(g.at("output.weight").samples == static_cast<std::int64_t>(tokens));
  // Provenance
  std::map<std::string, std::string> cal;
  for (const auto& kv : g.calibration) cal[kv.first] = pptq::gguf::to_string(kv.second);
  CHECK(cal["pptq.calibration.tokens"] == std::to_string(tokens));
  CHECK(cal["pptq.calibration.ctx"] == "64");
  CHECK(cal["pptq.calibration.model"] == "\"m.gguf\"");
}

TEST_CASE("calibrate: experts get one Gram each from the rows routed to them", "[llama][calibrate][moe]") {
  TempDir dir;
  ModelSpec spec;
  spec.n_expert = 4;
  spec.n_expert_used = 2;
  llama_test::write_test_model(dir.file("moe.gguf"), spec);
  const std::string text = llama_test::sample_text(80, 9);
  llama_test::put(dir.file("text.txt"), text);
  const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("moe.gguf"), "--text", dir.file("text.txt"), "--ctx", "128",
                                         "--output", dir.file("g.gguf")},
                                        dir);
  INFO(run.err);
  REQUIRE(run.code == 0);
  const auto tokens = static_cast<std::int64_t>(count_tokens(llama_test::expected_chunks(dir.file("moe.gguf"), text, 128)));
  const GramFile g = pptq::io::read_gram_file(dir.file("g.gguf"));

  for (int il = 0; il < spec.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    INFO(p);
    // The router reads the FFN norm's output for every token; the experts read the same rows, each row
    // routed to n_expert_used experts: the experts' Grams add up to n_expert_used times the router's.
    const pptq::io::GramRecord& router = g.at(p + "ffn_gate_inp.weight");
    CHECK(router.samples == tokens);
    CHECK(g.find(p + "ffn_up_exps.weight") == nullptr);
    Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(spec.n_embd, spec.n_embd);
    std::int64_t routed = 0;
    for (int e = 0; e < spec.n_expert; ++e) {
      const pptq::io::GramRecord* up = g.find(p + "ffn_up_exps.weight", e);
      if (!up) continue;  // an expert no token was routed to has no Gram
      CHECK(up == g.find(p + "ffn_gate_exps.weight", e));
      CHECK(up->expert == e);
      const pptq::io::GramRecord& down = g.at(p + "ffn_down_exps.weight", e);
      CHECK(down.samples == up->samples);
      CHECK(down.H.rows() == spec.n_ff);
      sum += up->H;
      routed += up->samples;
    }
    CHECK(routed == spec.n_expert_used * tokens);
    CHECK(rel_max_diff(sum, spec.n_expert_used * router.H) < 2e-6);
  }
}

TEST_CASE("calibrate: bad usage and bad data are reported with their exit codes", "[llama][calibrate]") {
  TempDir dir;
  llama_test::write_test_model(dir.file("m.gguf"));
  llama_test::put(dir.file("text.txt"), "some text");
  llama_test::put(dir.file("junk.gguf"), "this is not a model");
  const std::string out = dir.file("g.gguf");
  auto run = [&](std::vector<std::string> args) { return llama_test::run_tool(args, dir); };

  auto r = run({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt")});
  CHECK(r.code == 2);  // no --output
  CHECK(r.err.find("--output") != std::string::npos);
  r = run({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt"), "--output", out, "--ctx", "1"});
  CHECK(r.code == 2);
  CHECK(r.err.find("--ctx") != std::string::npos);
  r = run({"calibrate", "--model", dir.file("junk.gguf"), "--text", dir.file("text.txt"), "--output", out});
  CHECK(r.code == 3);
  CHECK(r.err.find("junk.gguf") != std::string::npos);
  r = run({"calibrate", "--model", dir.file("missing.gguf"), "--text", dir.file("text.txt"), "--output", out});
  CHECK(r.code == 3);
  r = run({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("missing.txt"), "--output", out});
  CHECK(r.code == 3);
  CHECK_FALSE(llama_test::fs::exists(out));
  r = run({"frobnicate"});
  CHECK(r.code == 2);
  r = run({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt"), "--output", dir.file("no/such/dir/g.gguf")});
  CHECK(r.code == 1);
}

TEST_CASE("calibrate --quantized-model: H̃ = X̃ᵀX̃ and G = X̃ᵀX from the two models' own weights", "[llama][calibrate][qronos]") {
  TempDir dir;
  ModelSpec spec, perturbed;
  spec.eps = perturbed.eps = 0.03f;
  perturbed.perturb = 0.05;  // the same weights plus noise: a stand-in for a quantized copy
  const auto ref = llama_test::write_test_model(dir.file("ref.gguf"), spec);
  const auto q = llama_test::write_test_model(dir.file("q.gguf"), perturbed);
  const std::string text = llama_test::sample_text(80, 17);
  llama_test::put(dir.file("text.txt"), text);
  const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("ref.gguf"), "--quantized-model", dir.file("q.gguf"), "--text",
                                         dir.file("text.txt"), "--ctx", "96", "--output", dir.file("g.gguf")},
                                        dir);
  INFO(run.err);
  REQUIRE(run.code == 0);
  const auto chunks = llama_test::expected_chunks(dir.file("ref.gguf"), text, 96);
  const std::size_t tokens = count_tokens(chunks);
  const GramFile g = pptq::io::read_gram_file(dir.file("g.gguf"));

  const Eigen::MatrixXd X = attention_inputs(ref, chunks), Xq = attention_inputs(q, chunks);
  const pptq::io::GramRecord& r = g.at("blk.0.attn_q.weight");
  CHECK(&r == &g.at("blk.0.attn_v.weight"));
  CHECK(r.samples == static_cast<std::int64_t>(tokens));
  CHECK(rel_max_diff(r.H, Xq.transpose() * Xq) < 2e-6);
  REQUIRE(r.cross.rows() == spec.n_embd);
  CHECK(rel_max_diff(r.cross, Xq.transpose() * X) < 2e-6);
  // G is not symmetric, and swapping the models (XᵀX̃ = Gᵀ) or ignoring one of them is far off.
  CHECK(rel_max_diff(r.cross, X.transpose() * Xq) > 1e-3);
  CHECK(rel_max_diff(r.cross, X.transpose() * X) > 1e-3);
  for (const auto& rec : g.grams) {
    INFO(rec->weights.front());
    CHECK(rec->samples == static_cast<std::int64_t>(tokens));
    CHECK(rec->cross.rows() == rec->H.rows());
  }
  CHECK(g.grams.size() == static_cast<std::size_t>(4 * spec.n_layer + 1));
}

TEST_CASE("calibrate --quantized-model: a model against itself gives G = H, experts pair by token", "[llama][calibrate][qronos][moe]") {
  TempDir dir;
  ModelSpec spec, perturbed;
  spec.n_expert = perturbed.n_expert = 4;
  spec.n_expert_used = perturbed.n_expert_used = 2;
  perturbed.perturb = 0.2;
  llama_test::write_test_model(dir.file("moe.gguf"), spec);
  llama_test::write_test_model(dir.file("moe_q.gguf"), perturbed);
  const std::string text = llama_test::sample_text(60, 18);
  llama_test::put(dir.file("text.txt"), text);
  const auto tokens = static_cast<std::int64_t>(count_tokens(llama_test::expected_chunks(dir.file("moe.gguf"), text, 128)));
  auto calibrate = [&](const std::string& q, const std::string& out) {
    const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("moe.gguf"), "--quantized-model", q, "--text",
                                           dir.file("text.txt"), "--ctx", "128", "--quiet", "--output", out},
                                          dir);
    INFO(run.err);
    REQUIRE(run.code == 0);
    return pptq::io::read_gram_file(out);
  };
  const GramFile self = calibrate(dir.file("moe.gguf"), dir.file("self.gguf"));
  std::int64_t routed = 0;
  for (const auto& r : self.grams) {
    INFO(pptq::io::gram_key(r->weights.front(), r->expert));
    CHECK(rel_max_diff(r->cross, r->H) < 1e-6);  // X̃ = X: G = X̃ᵀX = H̃
    if (r->expert >= 0 && r->weights.front() == "blk.0.ffn_up_exps.weight") routed += r->samples;
  }
  CHECK(routed == spec.n_expert_used * tokens);  // the same routing: every routed row pairs

  const GramFile other = calibrate(dir.file("moe_q.gguf"), dir.file("other.gguf"));
  std::int64_t paired = 0;
  for (int e = 0; e < spec.n_expert; ++e)
    if (const auto* r = other.find("blk.1.ffn_up_exps.weight", e)) {
      paired += r->samples;
      CHECK(r->cross.rows() == spec.n_embd);
      CHECK(other.at("blk.1.ffn_down_exps.weight", e).samples == r->samples);
    }
  CHECK(paired > 0);
  CHECK(paired <= spec.n_expert_used * tokens);  // only the tokens both models routed to the expert
  CHECK(other.at("blk.1.ffn_gate_inp.weight").samples == tokens);
}

TEST_CASE("calibrate --max-memory: passes over the text give the same Grams, bit for bit", "[llama][calibrate][passes]") {
  TempDir dir;
  ModelSpec spec, perturbed;
  spec.n_layer = 3;
  perturbed.n_layer = 3;
  perturbed.perturb = 0.05;
  llama_test::write_test_model(dir.file("m.gguf"), spec);
  llama_test::write_test_model(dir.file("q.gguf"), perturbed);
  llama_test::put(dir.file("text.txt"), llama_test::sample_text(50, 19));
  auto calibrate = [&](std::vector<std::string> extra, const std::string& out) {
    std::vector<std::string> args = {"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt"), "--ctx", "64",
                                     "--output", out};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto run = llama_test::run_tool(args, dir);
    INFO(run.err);
    REQUIRE(run.code == 0);
    return std::make_pair(pptq::io::read_gram_file(out), run.err);
  };
  // An input of width 64 takes 32 KiB of accumulators, the FFN's inner one (96) 72 KiB; a layer ~168 KiB.
  const auto one = calibrate({}, dir.file("one.gguf"));
  const auto many = calibrate({"--max-memory", "0.1"}, dir.file("many.gguf"));
  CHECK(many.second.find("passes over the text") != std::string::npos);
  CHECK(many.second.find("pass 5/") != std::string::npos);
  require_same_grams(one.first, many.first);

  const auto lock_one = calibrate({"--quantized-model", dir.file("q.gguf")}, dir.file("lock_one.gguf"));
  const auto lock_many = calibrate({"--quantized-model", dir.file("q.gguf"), "--max-memory", "0.2"}, dir.file("lock_many.gguf"));
  CHECK(lock_many.second.find("pass 3/") != std::string::npos);
  require_same_grams(lock_one.first, lock_many.first);
  CHECK(lock_one.first.grams.front()->cross.size() > 0);
}

TEST_CASE("calibrate --quantized-model on a Q4_0 copy by llama.cpp's quantizer: X̃ from pptq's own Q4_0 decoding",
          "[llama][calibrate][qronos]") {
  TempDir dir;
  ModelSpec spec;
  spec.eps = 0.03f;
  const auto ref = llama_test::write_test_model(dir.file("ref.gguf"), spec);
  // output.weight in Q4_0 too (llama.cpp's choice would be a type pptq's reader need not know)
  llama_test::quantize_with_llama(dir.file("ref.gguf"), dir.file("q4.gguf"), LLAMA_FTYPE_MOSTLY_Q4_0, GGML_TYPE_Q4_0);
  // The quantized model as pptq reads it: its token embeddings decoded by pptq's Q4_0 codec; attn_norm
  // (1-d) stays F32.
  const pptq::gguf::File qf = pptq::gguf::read(dir.file("q4.gguf"));
  const pptq::gguf::TensorInfo* emb = qf.find_tensor("token_embd.weight");
  REQUIRE(emb != nullptr);
  REQUIRE(emb->type == pptq::ggml::Type::Q4_0);
  REQUIRE(qf.find_tensor("blk.0.attn_norm.weight")->type == pptq::ggml::Type::F32);
  auto q = ref;  // the same norms, the decoded embeddings
  auto& qe = q.tensors.at("token_embd.weight").data;
  const std::size_t row = pptq::ggml::row_bytes(emb->type, spec.n_embd);
  for (int t = 0; t < llama_test::kVocab; ++t)
    pptq::ggml::dequantize_row(emb->type, emb->data.data() + static_cast<std::size_t>(t) * row, spec.n_embd,
                               qe.data() + static_cast<std::size_t>(t) * static_cast<std::size_t>(spec.n_embd));

  const std::string text = llama_test::sample_text(60, 21);
  llama_test::put(dir.file("text.txt"), text);
  const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("ref.gguf"), "--quantized-model", dir.file("q4.gguf"), "--text",
                                         dir.file("text.txt"), "--ctx", "128", "--output", dir.file("g.gguf")},
                                        dir);
  INFO(run.err);
  REQUIRE(run.code == 0);
  const auto chunks = llama_test::expected_chunks(dir.file("ref.gguf"), text, 128);
  const Eigen::MatrixXd X = attention_inputs(ref, chunks), Xq = attention_inputs(q, chunks);
  const GramFile g = pptq::io::read_gram_file(dir.file("g.gguf"));
  const pptq::io::GramRecord& r = g.at("blk.0.attn_k.weight");
  CHECK(rel_max_diff(r.H, Xq.transpose() * Xq) < 2e-6);
  CHECK(rel_max_diff(r.cross, Xq.transpose() * X) < 2e-6);
  CHECK(rel_max_diff(r.H, X.transpose() * X) > 1e-4);  // Q4_0 moved the inputs well beyond float rounding
  for (const auto& rec : g.grams) CHECK(rec->samples == static_cast<std::int64_t>(count_tokens(chunks)));
}
