// The evaluation callback of `calibrate`: while llama.cpp evaluates the calibration text, it finds every
// matrix product whose first operand is a model weight (GGML_OP_MUL_MAT; GGML_OP_MUL_MAT_ID for the
// experts of a mixture-of-experts layer) and accumulates the Gram XᵀX of the product's input X (its
// second operand: rows = tokens, columns = the weight's input width) in a pptq::Gram<double>.
//
// llama.cpp's scheduler asks the callback about every graph node (ask = true) and, for the nodes it
// wants, calls it again once the node is computed (ask = false), when the node's operands are still
// intact: nothing after the node has run yet.
//
// Shared inputs. q, k and v multiply the same input (the attention norm's output), gate and up the same
// FFN norm output: their Gram is one matrix, accumulated once and named by each weight. Within one
// graph evaluation an input is identified by its data pointer, name and layout (the allocator reuses
// memory across a graph, so a pointer alone could name two tensors; the name tells them apart); which
// weights share which input is fixed at the first evaluation and checked at every later one. Hence one
// llama_decode must be one graph evaluation (make_context: n_ubatch = n_ctx) and begin_evaluation() must
// precede each.
//
// Experts. GGML_OP_MUL_MAT_ID multiplies each token's input row by the experts the router picked for it
// (operand 2: expert ids, n_used × tokens); the collector keeps one Gram per expert, of the rows routed
// to it, with its own sample count.
//
// The callback must not throw through llama.cpp: a failure is kept, the evaluation stopped, and
// rethrow() raises it after llama_decode returns.
#pragma once

#include <pptq/gram.hpp>
#include <pptq/io/gram_file.hpp>

#include <ggml-backend.h>
#include <ggml.h>

#include <cstdint>
#include <exception>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace pptq_llama {

class GramCollector {
 public:
  /// ggml_backend_sched_eval_callback; user_data is the GramCollector.
  static bool callback(ggml_tensor* t, bool ask, void* user_data);

  /// Call before each graph evaluation (each llama_decode of one chunk).
  void begin_evaluation();
  /// Raises the failure the callback met during the last evaluation, if any.
  void rethrow();

  /// Distinct inputs accumulated so far.
  std::size_t grams() const { return groups_.size(); }
  /// Weights (with experts counted per expert) that have a Gram.
  std::size_t weights() const { return group_of_.size(); }
  /// Weights whose products were seen but could not be collected (e.g. a view of a weight), by name.
  const std::set<std::string>& skipped() const { return skipped_; }

  /// The Grams as records of a Gram file, in the order they were first seen (graph order).
  std::vector<pptq::io::GramRecord> records() const;

 private:
  // An input within one evaluation: data pointer, name, shape and strides (and for experts the ids').
  using InputKey = std::tuple<const void*, std::string, std::vector<std::int64_t>, const void*>;

  struct Group {
    std::vector<std::string> weights;
    std::int32_t expert = -1;
    std::string input;
    pptq::Gram<double> gram;
    std::int64_t created = -1;      // evaluation that created it
    std::int64_t accumulated = -1;  // last evaluation that added rows
  };

  bool wanted(const ggml_tensor* t);
  void collect(const ggml_tensor* t);
  void collect_dense(const ggml_tensor* t, const std::string& weight);
  void collect_experts(const ggml_tensor* t, const std::string& weight);
  /// The group of (weight, expert) for an input; adds rows() to it unless this evaluation already did.
  template <typename Rows>
  void accumulate(const std::string& weight, std::int32_t expert, const InputKey& key, const std::string& input, Rows&& rows);
  const float* host_data(const ggml_tensor* t, std::vector<float>& buf);

  std::vector<Group> groups_;
  std::map<std::string, std::size_t> group_of_;  // gram_key(weight, expert) → group
  std::map<std::pair<InputKey, std::int32_t>, std::size_t> seen_;  // this evaluation's inputs → group
  std::set<std::string> skipped_;
  std::int64_t evaluation_ = -1;
  std::exception_ptr error_;
  std::vector<float> src_buf_, ids_buf_;
};

}  // namespace pptq_llama
