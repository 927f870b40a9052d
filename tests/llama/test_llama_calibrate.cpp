// `pptq-gguf-llama calibrate` on a tiny llama model the test writes (test_model.hpp): the Grams it collects
// through llama.cpp's evaluation callback against XᵀX computed here from the model's own weights, the
// sharing of inputs, the sample counts of every weight (the last layer and output.weight included), the
// experts of a mixture-of-experts model, and the tool's errors.
#include "test_model.hpp"
#include "tool_support.hpp"

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

// The input of blk.0's attention for every token evaluated: RMSNorm of the token's embedding with the
// model's eps, times attn_norm's weight (position and attention play no part yet).
Eigen::MatrixXd attention_input_gram(const llama_test::TestModel& m, const std::vector<std::vector<llama_token>>& chunks) {
  const llama_test::Tensor& emb = m.tensors.at("token_embd.weight");
  const llama_test::Tensor& g = m.tensors.at("blk.0.attn_norm.weight");
  const Eigen::Index n = m.spec.n_embd;
  Eigen::MatrixXd H = Eigen::MatrixXd::Zero(n, n);
  for (const auto& chunk : chunks)
    for (llama_token t : chunk) {
      Eigen::VectorXd e(n);
      for (Eigen::Index c = 0; c < n; ++c) e(c) = emb.at(static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(c));
      const double scale = 1.0 / std::sqrt(e.squaredNorm() / static_cast<double>(n) + static_cast<double>(m.spec.eps));
      Eigen::VectorXd y(n);
      for (Eigen::Index c = 0; c < n; ++c) y(c) = e(c) * scale * static_cast<double>(g.data[static_cast<std::size_t>(c)]);
      H += y * y.transpose();
    }
  return H;
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

TEST_CASE("calibrate: blk.0's attention Gram is XᵀX of the normed embeddings; q, k, v share it", "[llama][calibrate]") {
  TempDir dir;
  ModelSpec spec;
  spec.eps = 0.03f;  // large enough that a wrong eps changes the Gram far beyond float rounding
  const auto model = llama_test::write_test_model(dir.file("m.gguf"), spec);
  const std::string text = llama_test::sample_text(120, 7);
  llama_test::put(dir.file("text.txt"), text);
  const int ctx = 96;  // several chunks, the last one shorter
  const auto run = llama_test::run_tool({"calibrate", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt"), "--ctx",
                                         std::to_string(ctx), "--threads", "2", "--output", dir.file("g.gguf")},
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
