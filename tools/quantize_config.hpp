// pptq-quantize's command line: the options (CLI11) and the validated Config they give. Every check that
// needs no input data is done here, so that a bad command line fails (exit 2) before any file is read.
#pragma once

#include <pptq/ggml/blocks.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pptq_quantize {

constexpr const char* kProg = "pptq-quantize";

enum class MethodKind { Rtn, Optq, OptqStochastic, Qronos, QronosStochastic, Gpfq };

/// The --method names and what they select.
const std::vector<std::pair<std::string, MethodKind>>& method_names();

/// Qronos and GPFQ minimize ||X W^T - X~ Q^T||: they need the quantized model's inputs X~.
inline bool is_mismatched(MethodKind m) {
  return m == MethodKind::Qronos || m == MethodKind::QronosStochastic || m == MethodKind::Gpfq;
}
inline bool is_stochastic(MethodKind m) { return m == MethodKind::OptqStochastic || m == MethodKind::QronosStochastic; }
/// The methods that factor a damped H (and so take --damp / --lambda).
inline bool has_damping(MethodKind m) { return m != MethodKind::Rtn && m != MethodKind::Gpfq; }
inline bool is_qronos(MethodKind m) { return m == MethodKind::Qronos || m == MethodKind::QronosStochastic; }

/// Everything the command line says, validated.
struct Config {
  std::string weights, inputs, hessian, quantized_inputs, output, codes, report;
  std::string method_name;
  MethodKind method = MethodKind::Optq;
  int bits = 4;
  bool symmetric = false;
  long long group_size = -1;
  bool static_groups = false;
  bool mse = false;
  bool act_order = true;  ///< the library's default; --no-act-order turns it off
  std::optional<double> damp, lambda;
  bool damp_auto = false;  ///< --damp auto: chosen on held-out samples (pptq/damp_choice.hpp)
  std::optional<long long> block_size;
  std::optional<std::uint64_t> seed;
  double eta = 0.05;
  int threads = 0;  ///< after cap_threads: 0 (OpenMP's default) or at most the processor count
  std::optional<std::uint64_t> max_memory;  ///< --max-memory: the pre-flight's budget besides MemAvailable
  bool progress = false;
  /// --full-report: every figure measured on X (l∞ errors, C∞, every row's relative and RTN error); by
  /// default the report takes the l2 errors from the sweep's energy identity and samples 256 rows.
  bool full_report = false;
  // llama.cpp block formats: the format fixes the grid (bits, groups); the GGUF holds one tensor.
  std::string format_name, gguf, tensor_name = "weight";
  std::string qronos_form = "ls";  ///< ls (docs/theory.md §5.4, the library's default) | sequential (§5.2/5.3)
  std::optional<pptq::ggml::Type> format;
};

/// Raw values bound to the CLI11 options; turned into a Config by finish_config(). Every numeric option is
/// bound as text and parsed strictly there (cli_common.hpp): CLI11's own conversion saturates and accepts
/// empty values.
struct RawOptions {
  Config cfg;
  std::string bits, group_size, damp, lambda, eta, block_size, seed, threads, max_memory;
  bool act_order_on = false, act_order_off = false;
  CLI::Option *o_damp = nullptr, *o_lambda = nullptr, *o_block = nullptr, *o_seed = nullptr, *o_eta = nullptr,
              *o_threads = nullptr, *o_act_on = nullptr, *o_act_off = nullptr, *o_bits = nullptr,
              *o_group = nullptr, *o_tensor = nullptr, *o_qronos_form = nullptr, *o_max_memory = nullptr;
};

/// The largest --block-size and --group-size: far beyond any layer, small enough that no index sum overflows.
constexpr long long kMaxBlockOrGroup = (1LL << 31) - 1;

/// Declares every option of pptq-quantize on `app`, bound to `raw`.
void build_app(CLI::App& app, RawOptions& raw);

/// The cross-option checks CLI11 cannot express (after app.parse); throws pptq::UsageError.
Config finish_config(const RawOptions& raw);

}  // namespace pptq_quantize
