// The whole path on a llama-architecture model the test writes (test_model.hpp), wide enough for the
// k-quants: calibrate → requantize --grams (OPTQ) → eval; calibrate --quantized-model on that OPTQ model →
// requantize --method qronos → eval; llama.cpp's own quantizer with the importance matrix of the same Grams
// at the same type; and calibrate's peak memory under --max-memory.
#include "test_model.hpp"
#include "tool_support.hpp"

#include <pptq/io/gram_file.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

using llama_test::ModelSpec;
using llama_test::TempDir;

namespace {

/// Every 2-d weight's input width a multiple of 256 (q4_K's super-block), small enough for seconds.
ModelSpec wide_spec() {
  ModelSpec s;
  s.n_embd = 256;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 512;
  s.n_layer = 2;
  s.seed = 7;
  return s;
}

void run_ok(const std::vector<std::string>& args, const TempDir& dir) {
  const auto r = llama_test::run_tool(args, dir);
  INFO(r.err);
  REQUIRE(r.code == 0);
}

/// eval's figures of `model` against `reference` on `text`.
struct Figures {
  double kl_mean = 0, kl_p99 = 0, ppl = 0, ppl_ref = 0, top1 = 0;
};

Figures evaluate(const TempDir& dir, const std::string& model, const std::string& reference, const std::string& text) {
  const std::string json = dir.file("eval.json");
  run_ok({"eval", "--model", model, "--reference", reference, "--text", text, "--ctx", "128", "--quiet", "--json", json}, dir);
  const nlohmann::json j = nlohmann::json::parse(llama_test::slurp(json));
  Figures f;
  f.kl_mean = j["kl"]["mean"].get<double>();
  f.kl_p99 = j["kl"]["p99"].get<double>();
  f.ppl = j["quantized"]["perplexity"].get<double>();
  f.ppl_ref = j["reference"]["perplexity"].get<double>();
  f.top1 = j["top1_agreement"].get<double>();
  return f;
}

void print(const char* what, const Figures& f) {
  std::printf("  %-34s KL mean %.6f  p99 %.6f  ppl %.4f (float %.4f)  top-1 %.4f\n", what, f.kl_mean, f.kl_p99, f.ppl, f.ppl_ref,
              f.top1);
}

/// The float model, calibration and held-out texts, and the Grams of the calibration text.
struct Setup {
  TempDir dir;
  std::string model = dir.file("f32.gguf"), cal = dir.file("cal.txt"), held = dir.file("held.txt"), grams = dir.file("grams.gguf");
  Setup() {
    llama_test::write_test_model(model, wide_spec());
    llama_test::put(cal, llama_test::sample_text(500, 31));
    llama_test::put(held, llama_test::sample_text(300, 32));
    run_ok({"calibrate", "--model", model, "--text", cal, "--ctx", "128", "--quiet", "--output", grams}, dir);
  }
  std::string requantize(const std::string& grams_file, const std::string& out, std::vector<std::string> extra = {}) const {
    std::vector<std::string> a = {"requantize", "--model", model, "--grams", grams_file, "--format", "q4_k", "--quiet", "--output", out};
    a.insert(a.end(), extra.begin(), extra.end());
    run_ok(a, dir);
    return out;
  }
};

/// llama-imatrix's form of the importance: per weight the mean over the tokens of x_j², i.e. the diagonal
/// of its Gram divided by the sample count, keyed by the tensor name (what llama_model_quantize reads from
/// llama_model_quantize_params::imatrix).
std::unordered_map<std::string, std::vector<float>> importance_matrix(const pptq::io::GramFile& g) {
  std::unordered_map<std::string, std::vector<float>> m;
  for (const auto& kv : g.by_weight) {
    const pptq::io::GramRecord& r = *kv.second;
    if (r.expert >= 0 || r.samples == 0) continue;
    std::vector<float> v(static_cast<std::size_t>(r.H.rows()));
    for (Eigen::Index j = 0; j < r.H.rows(); ++j) v[static_cast<std::size_t>(j)] = static_cast<float>(r.H(j, j) / static_cast<double>(r.samples));
    m.emplace(kv.first, std::move(v));
  }
  return m;
}

/// `in` quantized by llama.cpp into q4_K for every weight (pure: no per-tensor mix) but the token embeddings,
/// which stay F32 as pptq leaves them, with the importance matrix (nullptr: none).
void llama_q4_k(const std::string& in, const std::string& out, std::unordered_map<std::string, std::vector<float>>* imatrix) {
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  llama_backend_init();
  llama_model_quantize_params p = llama_model_quantize_default_params();
  p.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
  p.pure = true;
  p.nthread = 1;
  p.token_embedding_type = GGML_TYPE_F32;
  p.output_tensor_type = GGML_TYPE_Q4_K;
  p.imatrix = imatrix;
  REQUIRE(llama_model_quantize(in.c_str(), out.c_str(), &p) == 0);
}

}  // namespace

TEST_CASE("requantize --grams: OPTQ, then Qronos layer by layer from calibrate --quantized-model, beats it on held-out KL",
          "[llama][requantize][qronos]") {
  Setup s;
  const std::string optq = s.requantize(s.grams, s.dir.file("optq.gguf"));
  const Figures fo = evaluate(s.dir, optq, s.model, s.held);

  // Qronos corrects the error of the layers before (its G = X̃ᵀX pairs X̃ of the quantized model with X):
  // the quantized model of the lockstep run must hold the final weights of those layers, so the model is
  // requantized one layer at a time, each stage calibrated against the model the stages before produced
  // (arXiv 2505.11695 quantizes sequentially). One lockstep run on another model (e.g. the OPTQ one)
  // corrects errors that are no longer there.
  std::string current = s.model;
  const int layers = wide_spec().n_layer;
  for (int l = 0; l <= layers; ++l) {
    const std::string lock = s.dir.file("lock.gguf"), next = s.dir.file("stage" + std::to_string(l) + ".gguf");
    run_ok({"calibrate", "--model", s.model, "--quantized-model", current, "--text", s.cal, "--ctx", "128", "--quiet", "--output", lock},
           s.dir);
    const std::string only = l < layers ? "^blk\\." + std::to_string(l) + "\\." : "^output\\.";
    run_ok({"requantize", "--model", current, "--grams", lock, "--method", "qronos", "--only", only, "--format", "q4_k", "--quiet",
            "--output", next},
           s.dir);
    current = next;
  }
  const Figures fq = evaluate(s.dir, current, s.model, s.held);

  std::printf("requantize --grams, q4_K, held-out text:\n");
  print("pptq OPTQ", fo);
  print("pptq Qronos (layer by layer)", fq);
  // Every weight became q4_K.
  const pptq::gguf::File f = pptq::gguf::read(current);
  for (const auto& t : f.tensors)
    if (t.ne.size() == 2 && t.name != "token_embd.weight") CHECK(t.type == pptq::ggml::Type::Q4_K);
  CHECK(fo.kl_mean > 0);
  CHECK(std::isfinite(fo.kl_mean));
  CHECK(fq.kl_mean > 0);
  CHECK(fq.kl_mean < fo.kl_mean);
}

TEST_CASE("requantize --grams against llama.cpp's quantizer with the importance matrix of the same Grams", "[llama][requantize][compare]") {
  Setup s;
  const std::string pptq_model = s.requantize(s.grams, s.dir.file("pptq.gguf"));
  auto imatrix = importance_matrix(pptq::io::read_gram_file(s.grams));
  REQUIRE(imatrix.count("blk.0.ffn_down.weight") == 1);
  CHECK(imatrix.at("blk.0.ffn_down.weight").size() == 512);
  llama_q4_k(s.model, s.dir.file("llama_imat.gguf"), &imatrix);
  llama_q4_k(s.model, s.dir.file("llama.gguf"), nullptr);
  // The same type everywhere: only how the blocks were chosen differs.
  const pptq::gguf::File a = pptq::gguf::read(pptq_model), b = pptq::gguf::read(s.dir.file("llama_imat.gguf"));
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& t : a.tensors) {
    INFO(t.name);
    CHECK(b.find_tensor(t.name)->type == t.type);
  }

  const Figures fp = evaluate(s.dir, pptq_model, s.model, s.held);
  const Figures fi = evaluate(s.dir, s.dir.file("llama_imat.gguf"), s.model, s.held);
  const Figures fl = evaluate(s.dir, s.dir.file("llama.gguf"), s.model, s.held);
  std::printf("q4_K everywhere (token embeddings F32), held-out text:\n");
  print("pptq OPTQ (--grams)", fp);
  print("llama.cpp with the imatrix", fi);
  print("llama.cpp without an imatrix", fl);
  CHECK(std::isfinite(fp.kl_mean));
  CHECK(fp.kl_mean > 0);
  CHECK(std::isfinite(fi.kl_mean));
  CHECK(fi.kl_mean > 0);
  CHECK(std::isfinite(fp.ppl));
  CHECK(std::isfinite(fi.ppl));
}

namespace {

struct Measured {
  int code = -1;
  double peak_mib = 0;  ///< the child's peak resident set (ru_maxrss)
  std::string err;
};

/// Runs pptq-gguf with args directly (no shell between: wait4 reports the tool's own peak resident set).
Measured run_measured(std::vector<std::string> args, const TempDir& dir) {
  args.insert(args.begin(), test::gguf_tool_path());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string err = dir.file("measured.stderr");
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::FILE* e = std::freopen(err.c_str(), "w", stderr);
    std::FILE* o = std::freopen("/dev/null", "w", stdout);
    if (e && o) ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  REQUIRE(::wait4(pid, &status, 0, &ru) == pid);
  Measured m;
  m.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  m.peak_mib = static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux: KiB
  m.err = llama_test::slurp(err);
  return m;
}

}  // namespace

TEST_CASE("calibrate --max-memory: the peak resident set stays within the budget, the model and a fixed overhead",
          "[llama][calibrate][passes][memory]") {
  TempDir dir;
  ModelSpec spec;  // the FFN's inner input (2048 wide) takes 32 MiB of accumulators per layer, the rest 1.5 MiB
  spec.n_embd = 256;
  spec.n_ff = 2048;
  spec.n_layer = 6;
  const std::string model = dir.file("m.gguf"), text = dir.file("text.txt");
  llama_test::write_test_model(model, spec);
  llama_test::put(text, llama_test::sample_text(40, 41));
  const double model_mib = static_cast<double>(std::filesystem::file_size(model)) / (1024.0 * 1024.0);
  auto calibrate = [&](std::vector<std::string> extra, const std::string& out) {
    std::vector<std::string> a = {"calibrate", "--model", model, "--text", text, "--ctx", "128", "--threads", "1", "--output", out};
    a.insert(a.end(), extra.begin(), extra.end());
    const Measured m = run_measured(a, dir);
    INFO(m.err);
    REQUIRE(m.code == 0);
    return m;
  };
  const double budget = 36;  // MiB: one layer's accumulators a pass
  const Measured one = calibrate({}, dir.file("one.gguf"));
  const Measured many = calibrate({"--max-memory", "36"}, dir.file("many.gguf"));
  // Fixed overhead: 80 MiB for llama.cpp's runtime and compute buffers and the process, and 48 MiB for the
  // drain of the widest input at the end of a pass, which holds its accumulator, the record's double copy
  // and its float image at once (8 + 8 + 4 bytes per entry of the 2048 x 2048 Gram: 80 MiB) while the
  // budget counts 8 (32 MiB).
  const double overhead = 80 + 48;
  std::printf("calibrate peak RSS: model file %.1f MiB; one pass %.1f MiB; --max-memory %.0f: %.1f MiB (bound %.1f)\n", model_mib,
              one.peak_mib, budget, many.peak_mib, budget + model_mib + overhead);
  CHECK(many.err.find("passes over the text") != std::string::npos);
  CHECK(many.err.find("pass 6/") != std::string::npos);
  CHECK(many.peak_mib <= budget + model_mib + overhead);
  CHECK(one.peak_mib > budget + model_mib + overhead);  // without passes the bound would not hold: it measures something
  const auto a = pptq::io::read_gram_file(dir.file("one.gguf")), b = pptq::io::read_gram_file(dir.file("many.gguf"));
  CHECK(a.at("blk.5.ffn_down.weight").H == b.at("blk.5.ffn_down.weight").H);
}
