// pptq-gguf requantize --method: OPTQ, stochastic OPTQ or Qronos into one of llama.cpp's block formats.
//
//   optq             pptq::ggml::quantize_optq: the format's grid fitted on W with the importance diag(H),
//                    OPTQ onto it, the block scales refitted against (w − q)ᵀ(H + λI)(w − q)
//   optq-stochastic  the same with stochastic rounding (seeded; the same seed gives the same bytes)
//   qronos           Qronos (docs/theory.md §5.4, arXiv 2505.11695) from H̃ = X̃ᵀX̃ and G = X̃ᵀX: the grid
//                    fitted on W with the importance diag(H̃), then qronos_from_grams; the refit runs against
//                    Qronos's own objective (see refit_target in the .cpp)
//
// Qronos corrects the error of the layers before a weight: G pairs the quantized model's inputs X̃ with the
// full-precision ones, so the quantized model of the lockstep run must hold the FINAL weights of every layer
// before. Requantize layer by layer (--only), each stage calibrated against the model the stages before
// produced, as the paper quantizes sequentially; one lockstep run against another model (say the OPTQ one)
// corrects errors that are no longer there and loses to OPTQ (tests/llama/test_llama_requantize.cpp).
//
// Damping as pptq-quantize's: OPTQ λ = damp·mean(diag H) with damp 0.1 (the formats' default, docs/formats.md
// §4); Qronos λ = 1e-6·λ_max(H̃) unless --damp is given (then damp·mean(diag H̃)).
#pragma once

#include "gguf_hessians.hpp"

#include <pptq/ggml/grid.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace pptq_gguf {

enum class Method { Optq, OptqStochastic, Qronos };

/// "optq", "optq-stochastic" or "qronos".
const char* method_name(Method m);
/// The method a --method names; UsageError otherwise.
Method parse_method(const std::string& name);

/// How a tensor is quantized.
struct MethodOptions {
  Method method = Method::Optq;
  std::optional<double> damp;  ///< --damp; unset: the method's default
  std::uint64_t seed = 0;      ///< optq-stochastic
  bool refit = true;
  int threads = 0;
};

/// The library's options for the OPTQ methods (the tool passes exactly these to quantize_optq).
pptq::ggml::QuantizeOptions optq_options(const MethodOptions& o);

/// W quantized into `format` from its Grams by the method (Qronos needs g.cross). If the sweep fails
/// (Status::NumericalIssue) the result holds no bytes; the library's input errors propagate.
pptq::ggml::GgmlQuant<float> quantize_with(const pptq::Matrix<float>& W, const TensorGrams& g, pptq::ggml::Type format,
                                          const MethodOptions& o);

/// Bytes the method needs beyond OPTQ's for a rows × cols tensor (Qronos: G, its target and copies), about.
double method_extra_memory(Method m, double rows, double cols);

}  // namespace pptq_gguf
