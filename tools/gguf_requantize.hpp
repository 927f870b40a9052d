// pptq-gguf requantize, the work on the tensors: the options of a run, what becomes of one tensor (OPTQ or
// another --method from its Hessian, plain rounding, conversion to f16), and the run itself, which reads the
// model tensor by tensor (pptq::gguf::Reader) and writes the output tensor by tensor (pptq::gguf::StreamWriter):
// the memory is bounded by the largest tensor's work, never by the model (docs/llama.md).
//
// --damp auto (docs/theory.md §3.5, pptq/damp_choice.hpp) runs the method at every damp of
// pptq::default_damps() and keeps the one with the smallest error on held-out inputs: every fifth sample of
// NAME.X.npy (the quantization then uses all samples with the damp chosen), or the Gram of other text given
// with --heldout-grams (the quantization uses the calibration Gram alone). Qronos keeps its own damping.
#pragma once

#include "gguf_hessians.hpp"
#include "gguf_methods.hpp"
#include "gguf_plan.hpp"
#include "gguf_recipe.hpp"

#include <pptq/damp_choice.hpp>
#include <pptq/io/gguf.hpp>

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

namespace pptq_gguf {

/// The `requantize` command, validated.
struct Options {
  std::string model, hessians, output, format_name;
  std::string grams;  ///< --grams: the Hessians from a Gram file (gguf_hessians.hpp) instead of --hessians
  std::string heldout_grams;  ///< --heldout-grams: the held-out Grams of --damp auto (a Gram file of other text)
  std::string report;         ///< --report: the model's JSON report (gguf_report.hpp)
  pptq::ggml::Type format = pptq::ggml::Type::Q4_K;
  Method method = Method::Optq;  ///< --method (gguf_methods.hpp)
  double damp = pptq::ggml::QuantizeOptions::default_optq().damp;  ///< λ = damp · mean(diag H)
  bool damp_given = false;  ///< Qronos's default damping is its own (gguf_methods.hpp)
  bool damp_auto = false;   ///< --damp auto: chosen per tensor on held-out inputs
  std::uint64_t seed = 0;   ///< optq-stochastic
  std::optional<std::regex> only;  ///< --only: requantize only the Gram file's weights whose names match
  bool refit = true;
  int threads = 0;  ///< 0: all; results do not depend on it; capped to the processors (cap_threads)
  std::optional<std::uint64_t> max_memory;  ///< --max-memory: the pre-flight's budget besides MemAvailable
  bool quiet = false;
  bool allow_unused = false;
  std::optional<Recipe> recipe;  ///< --format q4_k_m|q5_k_m|q3_k_m|q2_k_m: llama.cpp's mixture (gguf_recipe.hpp)
  bool dry_run = false;          ///< print the plan, write nothing
  bool rtn_missing = false;      ///< a recipe's tensors without a Hessian: plain rounding instead of a refusal
};

/// How `o` quantizes a tensor at a given damp (gguf_methods.hpp).
MethodOptions method_options(const Options& o);

/// What became of one matrix (a 2-d tensor, or one expert of a 3-d one): the model report's record.
struct TensorRecord {
  std::size_t tensor = 0;  ///< its index in the model
  std::string name;
  std::optional<std::uint64_t> expert;
  std::int64_t rows = 0, cols = 0;
  pptq::ggml::Type from = pptq::ggml::Type::F32, to = pptq::ggml::Type::F32;
  Action action = Action::Copy;
  std::string rule;  ///< the recipe's rule, or why the tensor is copied
  std::uint64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;
  // Quantized from a Hessian (Action::Optq) only:
  double damp = 0, lambda = 0;
  bool escalated = false;
  std::optional<pptq::DampChoice> damp_auto;  ///< --damp auto: every candidate's errors
  /// Σ over the rows of (w − q)ᵀH(w − q), exactly, from the quantizer's own objective (the sweep's energy
  /// identity, docs/theory.md §3.1, or the refit's objective) minus λ‖W − Q‖²; null for Qronos, whose
  /// objective is another one.
  std::optional<double> h_error;
  /// On `compared_rows` evenly spaced rows: Σ (w − q)ᵀH(w − q) / Σ wᵀHw, and plain rounding's (quantize_rtn,
  /// the same format and importance) H-error over the method's.
  std::optional<double> h_error_relative, rtn_over_method;
  std::int64_t compared_rows = 0;
  std::optional<double> certificate;  ///< √Σ_t e_t²/L_tt² of the sweep (before the refit), docs/theory.md §3.1
  std::optional<double> C2;           ///< √Σ_t 1/L_tt², docs/theory.md §3.2
  double refit_gain = 1;
  std::int64_t clipped = 0;  ///< weights clamped to the format's range
  static constexpr std::int64_t kCompareRows = 256;
};

/// Where the tensors' Hessians come from (one of the first two), and the held-out Grams of --damp auto.
struct Sources {
  const GramSource* grams = nullptr;
  const GramSource* heldout = nullptr;
};

/// The output's tensor infos: the model's, each with the type its step gives it.
pptq::gguf::File output_index(const pptq::gguf::File& model, const RecipePlan& plan);

/// Runs step `s` on tensor t (its data loaded; its type and data replaced by the step's), saying what it
/// does under `tag` unless quiet; appends a record per matrix (one per expert of a 3-d tensor).
void run_step(pptq::gguf::TensorInfo& t, const Step& s, const Sources& src, const Options& o, const std::string& tag,
              std::vector<TensorRecord>& records);

/// The run: every tensor of the model read in its order, transformed by its step, and written to the output
/// (through `out`, whose header is already written); records appended.
void stream_steps(pptq::gguf::Reader& model, const RecipePlan& plan, const Sources& src, const Options& o,
                  pptq::gguf::StreamWriter& out, std::vector<TensorRecord>& records);

}  // namespace pptq_gguf
