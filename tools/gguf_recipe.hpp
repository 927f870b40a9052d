// pptq-gguf requantize's recipes: llama.cpp's mixed file types (Q4_K_M, Q5_K_M, Q3_K_M, Q2_K) as a rule
// table giving every tensor of a llama-architecture model its type, and the plan that says, tensor by
// tensor, what the tool does with it: quantize it with OPTQ (its Hessian found), quantize it by plain
// rounding (no Hessian, --rtn-missing), convert it to F16 (the last fallback), or copy it unchanged.
//
// The rules (docs/formats.md §5; llama.cpp's src/llama-quant.cpp, read, not copied). A tensor is QUANTIZED
// when its name ends in "weight", it has at least 2 dimensions counting only those above 1 (ne = [4096, 1] is
// 1-d), and its name contains none of "_norm.weight", "ffn_gate_inp.weight" (the expert router),
// "ssm_conv1d.weight", "time_mix_first/w1/w2/decay_w1/decay_w2/lerp_fused.weight", "attn_rel_b.weight", and is
// not "position_embd.weight" or "token_types.weight". Every other tensor is COPIED. A quantized tensor gets the
// recipe's base type (Q4_K, Q5_K, Q3_K, Q2_K), except:
//   - output.weight, and token_embd.weight when the model has no output.weight (tied embeddings): Q6_K; Q8_0
//     when its row width ne[0] is not a multiple of 256.
//   - untied token_embd.weight: the base type.
//   - attn_v.weight (counted in llama.cpp's loading order: by layer, then by name; i of n, n the number of
//     attn_v/attn_qkv/attn_kv_b tensors): Q2_K: Q4_K if n_head/n_head_kv >= 4, else Q3_K; Q3_K_M: Q5_K for
//     i < 2, else Q4_K; Q4_K_M and Q5_K_M: Q6_K when use_more_bits(i, n), else the base type. Then a 70B
//     llama (80 layers, n_head != n_head_kv, not 8 experts) takes Q5_K for Q3_K or Q4_K, and a model of 8
//     experts takes Q8_0.
//   - attn_k.weight: Q8_0 with 8 experts.
//   - ffn_down (any name containing it; layer i = its index in loading order, or the "blk.N." of its name
//     with more than one expert; n = block_count): Q2_K: Q3_K; Q3_K_M: Q5_K for i < n/16, else Q4_K;
//     Q4_K_M and Q5_K_M: Q6_K when use_more_bits(i, n).
//   - attn_output.weight: with 8 experts Q5_K for Q2_K, Q3_K_M, Q4_K_M; else Q2_K: Q3_K, Q3_K_M: Q4_K.
//   - attn_qkv.weight: Q3_K_M: Q4_K; Q4_K_M: Q5_K; Q5_K_M: Q6_K.
// use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i − n/8) mod 3 == 2 (integer division; C's remainder).
// Finally, when ne[0] is not a multiple of the chosen type's block size, the fallback: Q2_K, Q3_K, IQ4_XS ->
// IQ4_NL; Q4_K -> Q5_0; Q5_K -> Q5_1 (pptq does not write Q5_1: refused); Q6_K -> Q8_0; any other type:
// refused, as llama-quantize refuses it; and F16 when ne[0] is not a multiple of 32 either. A tensor whose
// chosen type is its own type is copied unchanged (llama-quantize does the same). A 3-d expert tensor
// (ne = [in, out, n_expert]) is quantized expert by expert, each expert its own matrix with its own Hessian.
//
// The output's metadata is the input's, with general.quantization_version (u32 2) and general.file_type (u32,
// llama.cpp's file type id) removed and appended at the end, and split.no, split.count, split.tensors.count
// removed, as llama-quantize writes them. Tensors keep the input's order (llama-quantize writes them in its
// loading order): the types, and every tensor's size and so the file's size, are llama-quantize's.
#pragma once

#include "gguf_plan.hpp"

#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pptq_gguf {

/// llama.cpp's mixed file types.
enum class Recipe { Q2_K, Q3_K_M, Q4_K_M, Q5_K_M };

/// q4_k_m, q5_k_m, q3_k_m or q2_k_m (llama-quantize's Q2_K: the plain type q2_k keeps its meaning),
/// case-insensitive; nullopt for anything else.
std::optional<Recipe> parse_recipe(const std::string& name);
const char* recipe_name(Recipe r);           ///< "q4_k_m", ...
std::uint32_t recipe_file_type(Recipe r);    ///< llama.cpp's general.file_type id: 10, 12, 15, 17
pptq::ggml::Type recipe_base_type(Recipe r); ///< Q2_K, Q3_K, Q4_K, Q5_K

/// What the rules read from the model's metadata and tensor names.
struct ModelShape {
  std::string arch;
  int n_layer = 0, n_head = 0, n_head_kv = 0, n_expert = 0;
  bool has_output = false;  ///< an output.weight (false: tied embeddings)
  int n_attention_wv = 0;   ///< tensors named *attn_v.weight, *attn_qkv.weight, *attn_kv_b.weight
  bool is_70b() const;      ///< llama.cpp's LLM_TYPE_70B for a llama model
  int n_gqa() const { return n_head_kv == 0 ? 0 : n_head / n_head_kv; }
};

/// The shape of a llama model (general.architecture "llama", llama.block_count, llama.attention.head_count,
/// ...head_count_kv, ...expert_count); DataError for another architecture or a missing or invalid key.
ModelShape model_shape(const pptq::gguf::File& f);

/// Why llama-quantize leaves `t` unquantized ("a norm", "1-d", ...), or "" when it quantizes it.
std::string not_quantized_reason(const pptq::gguf::TensorInfo& t);

/// The type the recipe gives one quantized tensor, and the rule that chose it.
struct Target {
  pptq::ggml::Type type = pptq::ggml::Type::F32;
  std::string rule;  ///< "base", "output", "attn_v: use_more_bits(2, 8)", ...; ", fallback" appended
};

/// The recipe's type for every tensor (index-aligned with f.tensors; nullopt: not quantized). DataError for a
/// fallback pptq cannot write (Q5_1) or one llama-quantize refuses, and for an expert tensor outside the layers.
std::vector<std::optional<Target>> recipe_targets(const pptq::gguf::File& f, Recipe r);

/// What the tool does with one tensor.
enum class Action { Copy, Optq, Rtn, ToF16 };
const char* action_name(Action a);  ///< "copied", "OPTQ", "RTN (no Hessian)", "converted"

struct Step {
  std::size_t tensor = 0;
  Action action = Action::Copy;
  pptq::ggml::Type to = pptq::ggml::Type::F32;  ///< the output type (the input's for Copy)
  std::string why;                              ///< the rule, or why it is copied
  std::optional<Job> job;                       ///< the Hessian (Optq of a 2-d tensor)
  /// A 3-d expert tensor (ne = [in, out, n_expert]), quantized expert by expert: expert e's Hessian
  /// NAME.<e>.H.npy / NAME.<e>.X.npy, or nullopt (plain rounding, --rtn-missing). Empty for a 2-d tensor.
  std::vector<std::optional<Job>> experts;
};

struct RecipePlan {
  std::vector<Step> steps;          ///< one per tensor, in the model's order
  std::vector<std::string> unused;  ///< .npy files of DIR that no OPTQ step uses (sorted)
};

/// The plan of a recipe: targets matched to DIR's NAME.H.npy / NAME.X.npy, and NAME.<e>.H.npy / NAME.<e>.X.npy
/// for expert e of a 3-d tensor (headers checked with header_of).
/// A quantized tensor without a Hessian is refused (DataError naming every such tensor) unless rtn_missing;
/// an unused file is refused unless allow_unused.
RecipePlan make_recipe_plan(const pptq::gguf::File& f, const std::string& dir, const std::vector<std::string>& names,
                            const std::vector<std::optional<Target>>& targets, bool rtn_missing, bool allow_unused,
                            const HeaderReader& header_of);

/// The plain-format plan (make_plan's jobs into `format`, everything else copied) in the same form.
RecipePlan single_format_plan(const pptq::gguf::File& f, const Plan& plan, pptq::ggml::Type format);

/// Bytes of tensor t once stored as `type` (its shape kept).
std::uint64_t bytes_as(const pptq::gguf::TensorInfo& t, pptq::ggml::Type type);

/// The plan as a table (tensor, shape, source -> output type, bytes, action, Hessian) and a summary line.
std::string plan_table(const pptq::gguf::File& f, const RecipePlan& plan);

/// The metadata changes llama-quantize makes (general.quantization_version, general.file_type, split.*).
void set_recipe_metadata(pptq::gguf::File& f, Recipe r);

}  // namespace pptq_gguf
