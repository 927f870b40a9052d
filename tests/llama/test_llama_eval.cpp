// `pptq-gguf eval` on tiny llama models the test writes: a model against itself, against copies
// perturbed more and more, against its F16 copy; the JSON report; and the metrics themselves
// (tools/llama/eval_metrics.hpp) on distributions whose values are known.
#include "test_model.hpp"
#include "tool_support.hpp"

#include "eval_metrics.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>
#include <vector>

using llama_test::ModelSpec;
using llama_test::TempDir;

namespace {

nlohmann::json eval_json(const TempDir& dir, const std::string& model, const std::string& reference, const std::string& text) {
  const std::string json = dir.file("eval.json");
  const auto run = llama_test::run_tool({"eval", "--model", model, "--reference", reference, "--text", text, "--ctx", "64", "--quiet", "--json", json},
                                        dir);
  INFO(run.err);
  REQUIRE(run.code == 0);
  CHECK(run.out.find("top-1 agreement") != std::string::npos);
  return nlohmann::json::parse(llama_test::slurp(json));
}

}  // namespace

TEST_CASE("eval: KL grows with the perturbation, vanishes for the model itself", "[llama][eval]") {
  TempDir dir;
  const std::string ref = dir.file("ref.gguf");
  llama_test::write_test_model(ref);
  ModelSpec small, large;
  small.perturb = 0.05;
  large.perturb = 0.3;
  llama_test::write_test_model(dir.file("small.gguf"), small);
  llama_test::write_test_model(dir.file("large.gguf"), large);
  const std::string text = dir.file("text.txt");
  const std::string words = llama_test::sample_text(100, 3);
  llama_test::put(text, words);
  const auto chunks = llama_test::expected_chunks(ref, words, 64);
  std::size_t positions = 0;
  for (const auto& c : chunks) positions += c.size() - 1;

  const nlohmann::json self = eval_json(dir, ref, ref, text);
  CHECK(self["kl"]["mean"].get<double>() < 1e-12);
  CHECK(self["kl"]["max"].get<double>() < 1e-12);
  CHECK(self["top1_agreement"].get<double>() == 1.0);
  CHECK(self["quantized"]["perplexity"].get<double>() == self["reference"]["perplexity"].get<double>());
  CHECK(self["tokens_scored"].get<std::size_t>() == positions);
  CHECK(self["chunks"].get<std::size_t>() == chunks.size());
  const double ppl = self["reference"]["perplexity"].get<double>();
  CHECK(ppl > 1.0);
  CHECK(std::isfinite(ppl));

  const nlohmann::json s = eval_json(dir, dir.file("small.gguf"), ref, text);
  const nlohmann::json l = eval_json(dir, dir.file("large.gguf"), ref, text);
  CHECK(s["reference"]["perplexity"].get<double>() == ppl);  // the reference is scored the same way each time
  CHECK(s["kl"]["mean"].get<double>() > 0);
  CHECK(s["kl"]["mean"].get<double>() < l["kl"]["mean"].get<double>());
  CHECK(s["kl"]["p99"].get<double>() >= s["kl"]["median"].get<double>());
  CHECK(s["kl"]["max"].get<double>() >= s["kl"]["p99"].get<double>());
  CHECK(s["top1_agreement"].get<double>() >= l["top1_agreement"].get<double>());
  CHECK(l["top1_agreement"].get<double>() < 1.0);
  CHECK(l["quantized"]["perplexity"].get<double>() != ppl);
}

TEST_CASE("eval: an F16 copy is close to its F32 reference", "[llama][eval]") {
  TempDir dir;
  llama_test::write_test_model(dir.file("f32.gguf"));
  ModelSpec half;
  half.f16 = true;
  llama_test::write_test_model(dir.file("f16.gguf"), half);
  llama_test::put(dir.file("text.txt"), llama_test::sample_text(60, 4));
  const nlohmann::json j = eval_json(dir, dir.file("f16.gguf"), dir.file("f32.gguf"), dir.file("text.txt"));
  CHECK(j["kl"]["mean"].get<double>() > 0);
  CHECK(j["kl"]["mean"].get<double>() < 1e-4);
  CHECK(j["top1_agreement"].get<double>() > 0.95);
}

TEST_CASE("eval: llama.cpp's Q8_0 is closer to the reference than its Q4_0", "[llama][eval]") {
  TempDir dir;
  llama_test::write_test_model(dir.file("f32.gguf"));
  llama_test::quantize_with_llama(dir.file("f32.gguf"), dir.file("q8.gguf"), LLAMA_FTYPE_MOSTLY_Q8_0);
  llama_test::quantize_with_llama(dir.file("f32.gguf"), dir.file("q4.gguf"), LLAMA_FTYPE_MOSTLY_Q4_0);
  llama_test::put(dir.file("text.txt"), llama_test::sample_text(60, 5));
  const nlohmann::json q8 = eval_json(dir, dir.file("q8.gguf"), dir.file("f32.gguf"), dir.file("text.txt"));
  const nlohmann::json q4 = eval_json(dir, dir.file("q4.gguf"), dir.file("f32.gguf"), dir.file("text.txt"));
  CHECK(q8["kl"]["mean"].get<double>() > 0);
  CHECK(q8["kl"]["mean"].get<double>() < q4["kl"]["mean"].get<double>());
  CHECK(q8["kl"]["p99"].get<double>() < q4["kl"]["p99"].get<double>());
  CHECK(q8["top1_agreement"].get<double>() >= q4["top1_agreement"].get<double>());
}

TEST_CASE("eval: missing options and unreadable models are refused", "[llama][eval]") {
  TempDir dir;
  llama_test::write_test_model(dir.file("m.gguf"));
  llama_test::put(dir.file("text.txt"), "text");
  auto r = llama_test::run_tool({"eval", "--model", dir.file("m.gguf"), "--text", dir.file("text.txt")}, dir);
  CHECK(r.code == 2);  // no --reference
  r = llama_test::run_tool({"eval", "--model", dir.file("m.gguf"), "--reference", dir.file("none.gguf"), "--text", dir.file("text.txt")}, dir);
  CHECK(r.code == 3);
  CHECK(r.err.find("none.gguf") != std::string::npos);
}

TEST_CASE("eval metrics: KL, perplexity, agreement and the nearest-rank percentile on known values", "[llama][eval]") {
  using namespace pptq_llama;
  // p_ref = (1/2, 1/2), p_q = (1/4, 3/4): KL = ½ ln 2 + ½ ln(2/3).
  const float ref[] = {0.0f, 0.0f};
  const float q[] = {0.0f, static_cast<float>(std::log(3.0))};
  const TokenScore t = score_token(ref, q, 2, 1);
  CHECK(t.kl == Approx(0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0)).epsilon(1e-6));
  CHECK(t.nll_ref == Approx(std::log(2.0)));
  CHECK(t.nll_q == Approx(-std::log(0.75)).epsilon(1e-6));
  CHECK_FALSE(t.agree);  // argmax: 0 (first of a tie) and 1
  // Large logits: the log-sum-exp must not overflow.
  const float big[] = {1000.0f, 999.0f, -1000.0f};
  const TokenScore b = score_token(big, big, 3, 0);
  CHECK(b.kl == 0.0);
  CHECK(b.agree);
  CHECK(b.nll_ref == Approx(std::log(1.0 + std::exp(-1.0))));

  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  CHECK(nearest_rank(v, 0.99) == 99);
  CHECK(nearest_rank(v, 0.5) == 50);
  CHECK(nearest_rank({3, 1, 2}, 0.99) == 3);
  CHECK(nearest_rank({7}, 0.5) == 7);

  std::vector<TokenScore> s(4);
  for (int i = 0; i < 4; ++i) {
    s[i].nll_ref = i;
    s[i].nll_q = 2;
    s[i].kl = i;
    s[i].agree = i != 3;
  }
  const EvalSummary sum = summarize(s);
  CHECK(sum.ppl_ref == Approx(std::exp(1.5)));
  CHECK(sum.ppl_q == Approx(std::exp(2.0)));
  CHECK(sum.kl_mean == Approx(1.5));
  CHECK(sum.kl_p99 == 3);
  CHECK(sum.kl_max == 3);
  CHECK(sum.top1 == 0.75);
}
