// A tiny llama-architecture GGUF model that the integration tests write themselves (random weights, written
// with pptq's own GGUF writer), small enough to run in milliseconds and valid enough for llama.cpp to load:
//
//   n_embd 64, 4 heads of 16 (2 KV heads: k and v are narrower than q), FFN 96 wide, 2 layers by default;
//   optionally a mixture of experts (llama's MoE form: a router ffn_gate_inp and 3-d expert tensors).
//   Tokenizer: SentencePiece ("llama") with <unk>, <s>, </s> and the 256 byte tokens <0x00>..<0xFF>, so any
//   text tokenizes, byte by byte, and BOS is added.
//
// The weights stay in memory (TestModel::tensors) so that a test can compute what the model must do.
#pragma once

#include <pptq/io/gguf.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace llama_test {

struct ModelSpec {
  int n_embd = 64;
  int n_head = 4;
  int n_head_kv = 2;
  int n_ff = 96;
  int n_layer = 2;
  int n_expert = 0;       ///< 0: dense FFN
  int n_expert_used = 0;
  float eps = 1e-5f;       ///< RMSNorm epsilon
  bool f16 = false;        ///< store the 2-d and 3-d weights as F16 (norms stay F32)
  std::uint64_t seed = 1;
  double perturb = 0;      ///< relative noise added to every weight after drawing it (a "quantized" copy)
  std::uint64_t perturb_seed = 99;
};

constexpr int kVocab = 3 + 256;  // <unk>, <s>, </s>, bytes

/// A tensor as GGUF stores it: ne (ne[0] contiguous) and float data in that order.
struct Tensor {
  std::vector<std::uint64_t> ne;
  std::vector<float> data;
  /// Element (row r, column c) of a 2-d tensor: row r is the r-th run of ne[0] contiguous values.
  float at(std::uint64_t r, std::uint64_t c) const { return data[r * ne[0] + c]; }
};

struct TestModel {
  ModelSpec spec;
  std::map<std::string, Tensor> tensors;
  std::vector<std::string> order;  ///< tensor order in the file
};

namespace detail {

inline void add(TestModel& m, const std::string& name, std::vector<std::uint64_t> ne, double scale, double offset,
                std::mt19937_64& rng, std::mt19937_64& noise) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uint64_t n = 1;
  for (auto x : ne) n *= x;
  Tensor t{std::move(ne), std::vector<float>(n)};
  for (auto& v : t.data) v = static_cast<float>(offset + scale * nd(rng));
  // The perturbation draws from its own stream, so the unperturbed weights are the same with or without it.
  if (m.spec.perturb > 0)
    for (auto& v : t.data) v = static_cast<float>(v + m.spec.perturb * scale * nd(noise));
  m.tensors[name] = std::move(t);
  m.order.push_back(name);
}

inline void add_layer(TestModel& m, int il, std::mt19937_64& rng, std::mt19937_64& noise) {
  const ModelSpec& s = m.spec;
  const auto E = static_cast<std::uint64_t>(s.n_embd), F = static_cast<std::uint64_t>(s.n_ff);
  const auto head = E / static_cast<std::uint64_t>(s.n_head);
  const auto kv = head * static_cast<std::uint64_t>(s.n_head_kv);
  const std::string p = "blk." + std::to_string(il) + ".";
  const double in_e = 1.0 / std::sqrt(static_cast<double>(E)), in_f = 1.0 / std::sqrt(static_cast<double>(F));
  add(m, p + "attn_norm.weight", {E}, 0.1, 1.0, rng, noise);
  add(m, p + "attn_q.weight", {E, E}, in_e, 0, rng, noise);
  add(m, p + "attn_k.weight", {E, kv}, in_e, 0, rng, noise);
  add(m, p + "attn_v.weight", {E, kv}, in_e, 0, rng, noise);
  add(m, p + "attn_output.weight", {E, E}, in_e, 0, rng, noise);
  add(m, p + "ffn_norm.weight", {E}, 0.1, 1.0, rng, noise);
  if (s.n_expert == 0) {
    add(m, p + "ffn_gate.weight", {E, F}, in_e, 0, rng, noise);
    add(m, p + "ffn_down.weight", {F, E}, in_f, 0, rng, noise);
    add(m, p + "ffn_up.weight", {E, F}, in_e, 0, rng, noise);
  } else {
    const auto X = static_cast<std::uint64_t>(s.n_expert);
    add(m, p + "ffn_gate_inp.weight", {E, X}, 4 * in_e, 0, rng, noise);
    add(m, p + "ffn_gate_exps.weight", {E, F, X}, in_e, 0, rng, noise);
    add(m, p + "ffn_down_exps.weight", {F, E, X}, in_f, 0, rng, noise);
    add(m, p + "ffn_up_exps.weight", {E, F, X}, in_e, 0, rng, noise);
  }
}

inline std::vector<std::uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<std::uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

inline std::vector<std::uint8_t> f16_bytes(const std::vector<float>& v) {
  std::vector<std::uint8_t> b(v.size() * 2);
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::uint16_t h = pptq::ggml::float_to_half(v[i]);
    std::memcpy(b.data() + 2 * i, &h, 2);
  }
  return b;
}

inline void put_metadata(pptq::gguf::File& f, const ModelSpec& s) {
  using pptq::gguf::Value;
  f.set("general.architecture", "llama");
  f.set("general.name", "pptq-test-llama");
  f.set("llama.context_length", std::uint32_t(256));
  f.set("llama.embedding_length", static_cast<std::uint32_t>(s.n_embd));
  f.set("llama.block_count", static_cast<std::uint32_t>(s.n_layer));
  f.set("llama.feed_forward_length", static_cast<std::uint32_t>(s.n_ff));
  f.set("llama.attention.head_count", static_cast<std::uint32_t>(s.n_head));
  f.set("llama.attention.head_count_kv", static_cast<std::uint32_t>(s.n_head_kv));
  f.set("llama.attention.layer_norm_rms_epsilon", s.eps);
  f.set("llama.rope.dimension_count", static_cast<std::uint32_t>(s.n_embd / s.n_head));
  f.set("llama.vocab_size", static_cast<std::uint32_t>(kVocab));
  if (s.n_expert > 0) {
    f.set("llama.expert_count", static_cast<std::uint32_t>(s.n_expert));
    f.set("llama.expert_used_count", static_cast<std::uint32_t>(s.n_expert_used));
  }
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<std::int32_t> types = {2, 3, 3};  // unknown, control, control
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    tokens.push_back(name);
    types.push_back(6);  // byte
  }
  f.set("tokenizer.ggml.model", "llama");
  f.set("tokenizer.ggml.tokens", Value::array_of(tokens));
  f.set("tokenizer.ggml.scores", Value::array_of(std::vector<float>(tokens.size(), 0.0f)));
  f.set("tokenizer.ggml.token_type", Value::array_of(types));
  f.set("tokenizer.ggml.bos_token_id", std::uint32_t(1));
  f.set("tokenizer.ggml.eos_token_id", std::uint32_t(2));
  f.set("tokenizer.ggml.unknown_token_id", std::uint32_t(0));
  f.set("tokenizer.ggml.add_bos_token", true);
  f.set("tokenizer.ggml.add_eos_token", false);
}

}  // namespace detail

/// Draws the model's weights (seeded) and writes it to `path`.
inline TestModel write_test_model(const std::string& path, const ModelSpec& spec = {}) {
  TestModel m;
  m.spec = spec;
  std::mt19937_64 rng(spec.seed), noise(spec.perturb_seed);
  const auto E = static_cast<std::uint64_t>(spec.n_embd), V = static_cast<std::uint64_t>(kVocab);
  detail::add(m, "token_embd.weight", {E, V}, 1.0, 0, rng, noise);
  for (int il = 0; il < spec.n_layer; ++il) detail::add_layer(m, il, rng, noise);
  detail::add(m, "output_norm.weight", {E}, 0.1, 1.0, rng, noise);
  detail::add(m, "output.weight", {E, V}, 1.0 / std::sqrt(static_cast<double>(E)), 0, rng, noise);

  pptq::gguf::File f;
  detail::put_metadata(f, spec);
  for (const std::string& name : m.order) {
    Tensor& t = m.tensors.at(name);
    if (spec.f16 && t.ne.size() >= 2)  // what the model holds: keep the rounded values for the tests' references
      for (auto& v : t.data) v = pptq::ggml::half_to_float(pptq::ggml::float_to_half(v));
    const bool half = spec.f16 && t.ne.size() >= 2;
    f.add_tensor(name, t.ne, half ? pptq::ggml::Type::F16 : pptq::ggml::Type::F32, half ? detail::f16_bytes(t.data) : detail::f32_bytes(t.data));
  }
  pptq::gguf::write(f, path);
  return m;
}

}  // namespace llama_test
