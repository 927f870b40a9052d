// pptq-gguf requantize's recipes (gguf_recipe.hpp; the rule table is written out there and in
// docs/formats.md §5).
#include "gguf_recipe.hpp"

#include <pptq/io/printable.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <numeric>
#include <sstream>
#include <utility>

namespace pptq_gguf {

using pptq::DataError;
using pptq::ggml::Type;

namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// An integer metadata value (any integer type; an array: its first element, llama.cpp's layer 0).
std::optional<std::int64_t> int_value(const pptq::gguf::Value& v) {
  using VT = pptq::gguf::ValueType;
  if (v.is_array()) return v.array_size() == 0 ? std::nullopt : int_value(v.item(0));
  switch (v.type()) {
    case VT::U8: case VT::U16: case VT::U32: case VT::U64: {
      const std::uint64_t u = v.scalar_bits();
      if (u > 1000000) return std::nullopt;
      return static_cast<std::int64_t>(u);
    }
    case VT::I8: return v.get<std::int8_t>();
    case VT::I16: return v.get<std::int16_t>();
    case VT::I32: return v.get<std::int32_t>();
    case VT::I64: return v.get<std::int64_t>();
    default: return std::nullopt;
  }
}

/// The key's value as a count in [lo, 1e6]; `fallback` when absent (nullopt: required).
int count_key(const pptq::gguf::File& f, const std::string& key, std::optional<int> fallback, int lo) {
  const pptq::gguf::Value* v = f.find(key);
  if (!v && fallback) return *fallback;
  const std::optional<std::int64_t> n = v ? int_value(*v) : std::nullopt;
  if (!n || *n < lo || *n > 1000000)
    throw DataError("the recipes need the metadata key " + pptq::io::detail::quoted(key) + " as an integer >= " +
                    std::to_string(lo) + (v ? ", got " + pptq::gguf::to_string(*v) : " (it is missing)"));
  return static_cast<int>(*n);
}

/// The N of a name "blk.N....", or -1 (llama.cpp's loader sorts and counts layers by it).
int layer_of(const std::string& name) {
  if (name.compare(0, 4, "blk.") != 0) return -1;
  const char* p = name.c_str() + 4;
  char* end = nullptr;
  const long n = std::strtol(p, &end, 10);
  if (end == p || n < -1000000 || n > 1000000) return -1;
  return static_cast<int>(n);
}

bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/// Dimensions counting only those above 1 (ggml_n_dims: ne = [4096, 1] is 1-d).
std::size_t n_dims(const std::vector<std::uint64_t>& ne) {
  std::size_t n = 1;
  for (std::size_t k = 1; k < ne.size(); ++k)
    if (ne[k] > 1) n = k + 1;
  return n;
}

/// The running counts of llama.cpp's rules (attn_v and ffn_down in loading order).
struct Counters {
  int attn_v = 0, ffn_down = 0;
};

struct RuleInput {
  Recipe r;
  const ModelShape& m;
};

Type output_type(std::uint64_t nx, Type base, std::string& rule) {
  rule = "output";
  return nx % static_cast<std::uint64_t>(pptq::ggml::block_size(base)) != 0 ? Type::Q8_0 : Type::Q6_K;
}

Type attn_v_type(const RuleInput& in, Type t, Counters& c, std::string& rule) {
  const int i = c.attn_v++, n = in.m.n_attention_wv;
  rule = "attn_v #" + std::to_string(i);
  switch (in.r) {
    case Recipe::Q2_K: t = in.m.n_gqa() >= 4 ? Type::Q4_K : Type::Q3_K; rule += ", n_gqa " + std::to_string(in.m.n_gqa()); break;
    case Recipe::Q3_K_M: t = i < 2 ? Type::Q5_K : Type::Q4_K; break;
    case Recipe::Q4_K_M:
    case Recipe::Q5_K_M:
      if (use_more_bits(i, n)) t = Type::Q6_K, rule += ", use_more_bits(" + std::to_string(i) + ", " + std::to_string(n) + ")";
      break;
  }
  if (in.m.is_70b() && (t == Type::Q3_K || t == Type::Q4_K)) t = Type::Q5_K, rule += ", 70B";
  if (in.m.n_expert == 8) t = Type::Q8_0, rule += ", 8 experts";
  return t;
}

Type ffn_down_type(const RuleInput& in, const std::string& name, Type t, Counters& c, std::string& rule) {
  int i = c.ffn_down++;
  const int n = in.m.n_layer;
  if (in.m.n_expert > 1) {
    i = layer_of(name);
    if (name.compare(0, 4, "blk.") != 0 || i < 0 || i >= n)
      throw DataError("tensor " + pptq::io::detail::quoted(name) + ": its layer (blk.N.) is not in [0, " +
                      std::to_string(n) + "), as llama.cpp's rules for experts need");
  }
  rule = "ffn_down layer " + std::to_string(i) + " of " + std::to_string(n);
  switch (in.r) {
    case Recipe::Q2_K: return Type::Q3_K;
    case Recipe::Q3_K_M: return i < n / 16 ? Type::Q5_K : Type::Q4_K;
    case Recipe::Q4_K_M:
    case Recipe::Q5_K_M:
      if (use_more_bits(i, n)) rule += ", use_more_bits";
      return use_more_bits(i, n) ? Type::Q6_K : t;
  }
  return t;
}

Type attn_output_type(const RuleInput& in, Type t, std::string& rule) {
  rule = "attn_output";
  if (in.m.n_expert == 8)
    return (in.r == Recipe::Q2_K || in.r == Recipe::Q3_K_M || in.r == Recipe::Q4_K_M) ? Type::Q5_K : t;
  if (in.r == Recipe::Q2_K) return Type::Q3_K;
  if (in.r == Recipe::Q3_K_M) return Type::Q4_K;
  return t;
}

Type attn_qkv_type(const RuleInput& in, Type t, std::string& rule) {
  rule = "attn_qkv";
  switch (in.r) {
    case Recipe::Q3_K_M: return Type::Q4_K;
    case Recipe::Q4_K_M: return Type::Q5_K;
    case Recipe::Q5_K_M: return Type::Q6_K;
    case Recipe::Q2_K: return t;
  }
  return t;
}

/// llama.cpp's fallback when ne[0] is not a multiple of the type's block size; DataError where it has none
/// or pptq cannot write it.
Type fallback(const pptq::gguf::TensorInfo& t, Type type, std::string& rule) {
  const std::uint64_t nx = t.ne[0];
  if (nx % static_cast<std::uint64_t>(pptq::ggml::block_size(type)) == 0) return type;
  const std::string who = "tensor " + pptq::io::detail::quoted(t.name) + ": its rows have " + std::to_string(nx) +
                          " columns, not a multiple of " + pptq::ggml::type_name(type) + "'s block size; ";
  Type to = type;
  switch (type) {
    case Type::Q2_K: case Type::Q3_K: case Type::IQ4_XS: to = Type::IQ4_NL; break;
    case Type::Q4_K: to = Type::Q5_0; break;
    case Type::Q6_K: to = Type::Q8_0; break;
    case Type::Q5_K:
      throw DataError(who + "llama.cpp falls back to q5_1 there, which pptq does not write");
    default: throw DataError(who + "llama-quantize has no fallback for it either");
  }
  if (nx % static_cast<std::uint64_t>(pptq::ggml::block_size(to)) != 0) to = Type::F16;
  rule += ", fallback from " + std::string(pptq::ggml::type_name(type));
  return to;
}

/// The rule for one quantized tensor (before the fallback).
Type rule_type(const RuleInput& in, const pptq::gguf::TensorInfo& t, Counters& c, std::string& rule) {
  const Type base = recipe_base_type(in.r);
  const std::string& name = t.name;
  rule = "base";
  if (name == "output.weight" || (!in.m.has_output && name == "token_embd.weight"))
    return output_type(t.ne[0], base, rule);
  if (name == "token_embd.weight") return rule = "token_embd", base;
  if (contains(name, "attn_v.weight")) return attn_v_type(in, base, c, rule);
  if (contains(name, "attn_k.weight")) {
    if (in.m.n_expert == 8) return rule = "attn_k, 8 experts", Type::Q8_0;
    return base;
  }
  if (contains(name, "attn_q.weight")) return base;
  if (contains(name, "ffn_down")) return ffn_down_type(in, name, base, c, rule);
  if (contains(name, "attn_output.weight")) return attn_output_type(in, base, rule);
  if (contains(name, "attn_qkv.weight")) return attn_qkv_type(in, base, rule);
  return base;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Names and the model
// ------------------------------------------------------------------------------------------------

std::optional<Recipe> parse_recipe(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  for (Recipe r : {Recipe::Q2_K, Recipe::Q3_K_M, Recipe::Q4_K_M, Recipe::Q5_K_M})
    if (s == recipe_name(r)) return r;
  return std::nullopt;
}

const char* recipe_name(Recipe r) {
  switch (r) {
    case Recipe::Q2_K: return "q2_k_m";
    case Recipe::Q3_K_M: return "q3_k_m";
    case Recipe::Q4_K_M: return "q4_k_m";
    case Recipe::Q5_K_M: return "q5_k_m";
  }
  return "?";
}

std::uint32_t recipe_file_type(Recipe r) {
  switch (r) {  // llama.h's llama_ftype: MOSTLY_Q2_K, MOSTLY_Q3_K_M, MOSTLY_Q4_K_M, MOSTLY_Q5_K_M
    case Recipe::Q2_K: return 10;
    case Recipe::Q3_K_M: return 12;
    case Recipe::Q4_K_M: return 15;
    case Recipe::Q5_K_M: return 17;
  }
  return 0;
}

Type recipe_base_type(Recipe r) {
  switch (r) {
    case Recipe::Q2_K: return Type::Q2_K;
    case Recipe::Q3_K_M: return Type::Q3_K;
    case Recipe::Q4_K_M: return Type::Q4_K;
    case Recipe::Q5_K_M: return Type::Q5_K;
  }
  return Type::Q4_K;
}

bool ModelShape::is_70b() const { return arch == "llama" && n_expert != 8 && n_layer == 80 && n_head != n_head_kv; }

ModelShape model_shape(const pptq::gguf::File& f) {
  ModelShape m;
  const pptq::gguf::Value* a = f.find("general.architecture");
  if (!a || a->type() != pptq::gguf::ValueType::STRING)
    throw DataError("the recipes need the metadata key general.architecture (a string)");
  m.arch = a->str();
  if (m.arch != "llama")
    throw DataError("the recipes follow llama.cpp's rules for the llama architecture; this model's is " +
                    pptq::io::detail::quoted(m.arch) + " (use a plain --format)");
  m.n_layer = count_key(f, "llama.block_count", std::nullopt, 1);
  m.n_head = count_key(f, "llama.attention.head_count", std::nullopt, 1);
  m.n_head_kv = count_key(f, "llama.attention.head_count_kv", m.n_head, 0);
  m.n_expert = count_key(f, "llama.expert_count", 0, 0);
  for (const auto& t : f.tensors) {
    if (t.name == "output.weight") m.has_output = true;
    if (contains(t.name, "attn_v.weight") || contains(t.name, "attn_qkv.weight") || contains(t.name, "attn_kv_b.weight"))
      ++m.n_attention_wv;
  }
  // llama-quantize asserts one such tensor per attention layer.
  if (m.n_attention_wv != 0 && m.n_head_kv > 0 && m.n_attention_wv != m.n_layer)
    throw DataError("the model has " + std::to_string(m.n_attention_wv) + " attn_v/attn_qkv tensors for " +
                    std::to_string(m.n_layer) + " layers (llama.block_count): llama-quantize refuses such a model");
  return m;
}

std::string not_quantized_reason(const pptq::gguf::TensorInfo& t) {
  const std::string& n = t.name;
  if (!ends_with(n, "weight")) return "not a weight";
  if (n_dims(t.ne) < 2) return "1-d";
  if (contains(n, "_norm.weight")) return "a norm";
  if (contains(n, "ffn_gate_inp.weight")) return "the expert router";
  if (n == "position_embd.weight" || n == "token_types.weight") return "an embedding llama.cpp keeps";
  for (const char* k : {"ssm_conv1d.weight", "time_mix_first.weight", "time_mix_w1.weight", "time_mix_w2.weight",
                        "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
                        "attn_rel_b.weight"})
    if (contains(n, k)) return "a tensor llama.cpp keeps";
  return "";
}

std::vector<std::optional<Target>> recipe_targets(const pptq::gguf::File& f, Recipe r) {
  const ModelShape m = model_shape(f);
  // llama.cpp's loading order: by the layer of "blk.N." (others, -1, first), then by name.
  std::vector<std::size_t> order(f.tensors.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const int la = layer_of(f.tensors[a].name), lb = layer_of(f.tensors[b].name);
    return la != lb ? la < lb : f.tensors[a].name < f.tensors[b].name;
  });
  std::vector<std::optional<Target>> out(f.tensors.size());
  Counters c;
  const RuleInput in{r, m};
  for (std::size_t i : order) {
    const pptq::gguf::TensorInfo& t = f.tensors[i];
    if (!not_quantized_reason(t).empty()) continue;
    Target tg;
    tg.type = rule_type(in, t, c, tg.rule);
    tg.type = fallback(t, tg.type, tg.rule);
    out[i] = tg;
  }
  return out;
}

void set_recipe_metadata(pptq::gguf::File& f, Recipe r) {
  f.erase("general.quantization_version");
  f.metadata.emplace_back("general.quantization_version", pptq::gguf::Value(std::uint32_t{2}));
  f.erase("general.file_type");
  f.metadata.emplace_back("general.file_type", pptq::gguf::Value(recipe_file_type(r)));
  for (const char* k : {"split.no", "split.count", "split.tensors.count"}) f.erase(k);
}

// ------------------------------------------------------------------------------------------------
// The plan
// ------------------------------------------------------------------------------------------------

const char* action_name(Action a) {
  switch (a) {
    case Action::Copy: return "copied";
    case Action::Optq: return "OPTQ";
    case Action::Rtn: return "RTN (no Hessian)";
    case Action::ToF16: return "converted";
  }
  return "?";
}

namespace {

/// Where a calibration file goes: a tensor, and an expert of it (-1: the whole tensor).
using FileKey = std::pair<std::size_t, int>;
using Matched = std::map<FileKey, std::pair<std::string, bool>>;  // -> (path, from inputs)

/// The tensor and expert a stem (a file name without .H.npy / .X.npy) names: NAME, or NAME.<e> for expert e of
/// a 3-d tensor NAME.
std::optional<FileKey> key_of(const pptq::gguf::File& f, const std::map<std::string, std::size_t>& index,
                              const std::string& stem) {
  const auto whole = index.find(stem);
  if (whole != index.end()) return FileKey{whole->second, -1};
  const std::size_t dot = stem.rfind('.');
  if (dot == std::string::npos || dot + 1 >= stem.size() || stem.size() - dot > 7) return std::nullopt;
  for (std::size_t k = dot + 1; k < stem.size(); ++k)
    if (stem[k] < '0' || stem[k] > '9') return std::nullopt;
  const auto t = index.find(stem.substr(0, dot));
  const long e = std::strtol(stem.c_str() + dot + 1, nullptr, 10);
  if (t == index.end() || f.tensors[t->second].ne.size() != 3 || static_cast<std::uint64_t>(e) >= f.tensors[t->second].ne[2])
    return std::nullopt;
  return FileKey{t->second, static_cast<int>(e)};
}

/// DIR's calibration files matched to tensors (and experts); the others into `unused`.
Matched match_files(const pptq::gguf::File& f, const std::string& dir, const std::vector<std::string>& names,
                    std::vector<std::string>& unused) {
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < f.tensors.size(); ++i) index.emplace(f.tensors[i].name, i);
  const std::string sep = (!dir.empty() && dir.back() == '/') ? "" : "/";
  Matched matched;
  for (const std::string& n : names) {
    const std::string path = dir + sep + n;
    const bool is_h = ends_with(n, ".H.npy"), is_x = ends_with(n, ".X.npy");
    const auto key = (is_h || is_x) ? key_of(f, index, n.substr(0, n.size() - 6)) : std::nullopt;
    if (!key) {
      unused.push_back(path);
      continue;
    }
    const auto prev = matched.find(*key);
    if (prev != matched.end())
      throw DataError(tensor_label(f.tensors[key->first]) + " has both " + prev->second.first + " and " + path +
                      ": give either the Hessian (.H.npy) or the inputs (.X.npy), not both");
    matched.emplace(*key, std::make_pair(path, is_x));
  }
  return matched;
}

/// A 3-d tensor of experts can be quantized into `format` expert by expert; DataError naming it otherwise.
void check_experts(const pptq::gguf::TensorInfo& t, Type format) {
  if (t.ne[0] == 0 || t.ne[1] == 0 || t.ne[2] == 0)
    throw DataError(tensor_label(t) + " is empty (ne[0], ne[1] or ne[2] is 0)");
  if (t.ne[0] % static_cast<std::uint64_t>(pptq::ggml::block_size(format)) != 0)
    throw DataError(tensor_label(t) + ": its rows have " + std::to_string(t.ne[0]) + " columns, not a multiple of " +
                    pptq::ggml::type_name(format) + "'s block size");
}

/// The step of a tensor the recipe quantizes (a 2-d tensor's Hessian, if any, in `file`).
Step quantized_step(const pptq::gguf::TensorInfo& t, std::size_t i, const Target& tg, const std::string* file) {
  Step s;
  s.tensor = i;
  s.to = tg.type;
  s.why = tg.rule;
  if (tg.type == t.type) {
    s.why = "already " + std::string(pptq::ggml::type_name(t.type)) + " (" + tg.rule + ")";
    return s;  // Copy
  }
  if (!is_source_type(t.type))
    throw DataError(tensor_label(t) + " is " + pptq::ggml::type_name(t.type) + " and the recipe gives it " +
                    pptq::ggml::type_name(tg.type) + ": pptq reads weights from f32, f16, bf16 or q8_0 tensors only");
  if (t.ne.size() > 3) throw DataError(tensor_label(t) + " has 4 dimensions: only matrices and experts are quantized");
  if (tg.type == Type::F16) {
    s.action = Action::ToF16;
    return s;
  }
  if (t.ne.size() == 3) {
    check_experts(t, tg.type);
    s.action = Action::Rtn;  // Optq once an expert has a Hessian (make_recipe_plan)
    s.experts.resize(static_cast<std::size_t>(t.ne[2]));
    return s;
  }
  check_requantizable(t, tg.type, file ? *file : "no Hessian");
  s.action = file ? Action::Optq : Action::Rtn;
  return s;
}

std::string missing_message(const std::vector<std::string>& missing, const std::string& dir) {
  std::string m = std::to_string(missing.size()) + " tensor(s) or expert(s) the recipe quantizes have no Hessian "
                  "(NAME.H.npy or NAME.X.npy; NAME.<e>.H.npy for expert e) in --hessians '" + dir + "': ";
  for (std::size_t k = 0; k < missing.size(); ++k) m += (k ? ", " : "") + missing[k];
  return m + " (--rtn-missing quantizes them by plain rounding instead)";
}

/// Attaches the experts' files to a 3-d step (headers checked); the experts without one into `missing`.
void attach_experts(const pptq::gguf::File& f, Step& s, const Matched& matched, std::vector<std::string>& missing,
                    const HeaderReader& header_of) {
  const auto& t = f.tensors[s.tensor];
  for (std::size_t e = 0; e < s.experts.size(); ++e) {
    const auto m = matched.find(FileKey{s.tensor, static_cast<int>(e)});
    if (m == matched.end()) {
      missing.push_back(pptq::io::detail::quoted(t.name) + " expert " + std::to_string(e));
      continue;
    }
    s.experts[e] = check_file(t, s.tensor, m->second.first, m->second.second, header_of);
    s.action = Action::Optq;
  }
}

}  // namespace

RecipePlan make_recipe_plan(const pptq::gguf::File& f, const std::string& dir, const std::vector<std::string>& names,
                            const std::vector<std::optional<Target>>& targets, bool rtn_missing, bool allow_unused,
                            const HeaderReader& header_of) {
  RecipePlan plan;
  const Matched matched = match_files(f, dir, names, plan.unused);
  std::vector<std::string> missing;
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    const pptq::gguf::TensorInfo& t = f.tensors[i];
    const auto m = matched.find(FileKey{i, -1});
    if (!targets[i]) {
      Step s;
      s.tensor = i;
      s.to = t.type;
      s.why = not_quantized_reason(t);
      plan.steps.push_back(s);
    } else {
      plan.steps.push_back(quantized_step(t, i, *targets[i], m == matched.end() ? nullptr : &m->second.first));
      const Step& s = plan.steps.back();
      if (s.action == Action::Rtn && s.experts.empty()) missing.push_back(pptq::io::detail::quoted(t.name));
    }
    if (m != matched.end() && (plan.steps.back().action != Action::Optq || !plan.steps.back().experts.empty()))
      plan.unused.push_back(m->second.first);
  }
  for (const auto& kv : matched)  // experts' files of tensors that are not quantized expert by expert
    if (kv.first.second >= 0 && plan.steps[kv.first.first].experts.empty()) plan.unused.push_back(kv.second.first);
  std::sort(plan.unused.begin(), plan.unused.end());
  if (!plan.unused.empty() && !allow_unused)
    throw DataError(plan.unused.front() + " matches no tensor the recipe quantizes with OPTQ (expected <tensor "
                    "name>.H.npy or <tensor name>.X.npy; --allow-unused ignores such files)");
  // The headers last: every name problem is reported before any file is opened.
  for (Step& s : plan.steps) {
    if (!s.experts.empty()) attach_experts(f, s, matched, missing, header_of);
    if (s.action == Action::Optq && s.experts.empty()) {
      const auto& file = matched.at(FileKey{s.tensor, -1});
      s.job = check_file(f.tensors[s.tensor], s.tensor, file.first, file.second, header_of);
    }
  }
  if (!missing.empty() && !rtn_missing) throw DataError(missing_message(missing, dir));
  return plan;
}

RecipePlan single_format_plan(const pptq::gguf::File& f, const Plan& plan, Type format) {
  RecipePlan out;
  out.unused = plan.unused;
  std::size_t k = 0;
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    Step s;
    s.tensor = i;
    s.to = f.tensors[i].type;
    s.why = "no Hessian";
    if (k < plan.jobs.size() && plan.jobs[k].tensor == i) {
      s.action = Action::Optq;
      s.to = format;
      s.why = "--format";
      s.job = plan.jobs[k++];
    }
    out.steps.push_back(s);
  }
  return out;
}

std::uint64_t bytes_as(const pptq::gguf::TensorInfo& t, Type type) { return pptq::gguf::tensor_nbytes(t.ne, type); }

namespace {

std::string ne_text(const std::vector<std::uint64_t>& ne) {
  std::string s = "[";
  for (std::size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

/// The Hessian's path, "missing", "-" (none needed), or for experts "k of n experts (missing: ...)".
std::string hessian_column(const Step& s) {
  if (s.job) return pptq_tools::terminal_safe(s.job->path);
  if (s.experts.empty()) return s.action == Action::Rtn ? "missing" : "-";
  std::size_t found = 0;
  std::string missing;
  for (std::size_t e = 0; e < s.experts.size(); ++e) {
    if (s.experts[e]) ++found;
    else missing += (missing.empty() ? "" : ",") + std::to_string(e);
  }
  return std::to_string(found) + " of " + std::to_string(s.experts.size()) + " experts" +
         (missing.empty() ? "" : " (missing: " + missing + ")");
}

std::string plan_summary(const pptq::gguf::File& f, const RecipePlan& plan) {
  std::map<Action, std::size_t> count;
  std::uint64_t in = 0, out = 0;
  std::size_t from_q8 = 0;
  for (const Step& s : plan.steps) {
    const auto& t = f.tensors[s.tensor];
    ++count[s.action];
    in += t.nbytes();
    out += bytes_as(t, s.to);
    if (s.action != Action::Copy && t.type == Type::Q8_0) ++from_q8;
  }
  std::ostringstream os;
  os << plan.steps.size() << " tensors: " << count[Action::Optq] << " OPTQ, " << count[Action::Rtn]
     << " RTN (no Hessian), " << count[Action::ToF16] << " converted to f16, " << count[Action::Copy]
     << " copied; tensor data " << in << " -> " << out << " bytes";
  if (from_q8 > 0) os << "; " << from_q8 << " source tensor(s) already quantized (q8_0), decoded and requantized";
  return os.str();
}

}  // namespace

std::string plan_table(const pptq::gguf::File& f, const RecipePlan& plan) {
  std::ostringstream os;
  os << "tensor\tne\ttype\tbytes\taction\thessian\trule\n";
  for (const Step& s : plan.steps) {
    const auto& t = f.tensors[s.tensor];
    os << pptq::io::detail::quoted(t.name) << '\t' << ne_text(t.ne) << '\t' << pptq::ggml::type_name(t.type) << " -> "
       << pptq::ggml::type_name(s.to) << '\t' << t.nbytes() << " -> " << bytes_as(t, s.to) << '\t'
       << action_name(s.action) << '\t'
       << hessian_column(s) << '\t' << s.why << '\n';
  }
  os << plan_summary(f, plan) << '\n';
  return os.str();
}

}  // namespace pptq_gguf
