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
// Lockstep (Qronos, docs/theory.md §5.1). Two collectors run the full-precision model (Capture: keep
// this evaluation's rows of every input) and the quantized one (Cross: H̃ = X̃ᵀX̃ and G = X̃ᵀX in a
// pptq::CrossGram, X̃ its own rows, X the partner's rows of the same weight) on the same tokens, chunk by
// chunk, the full-precision model first. An expert's rows are paired by token: the tokens both models
// routed to it (the routers may disagree once the weights are quantized).
//
// Passes. A pass may collect only some tensors (start_pass's `only`), so that the accumulators of one
// pass fit a memory budget; a Discover pass finds the inputs, their widths and their sharing, from which
// units() says which tensors must share a pass and what their accumulators take.
//
// The callback must not throw through llama.cpp: a failure is kept, the evaluation stopped, and
// rethrow() raises it after llama_decode returns.
#pragma once

#include <pptq/gram.hpp>
#include <pptq/io/gram_file.hpp>

#include <ggml-backend.h>
#include <ggml.h>

#include <Eigen/Core>

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace pptq_llama {

enum class CollectMode {
  Gram,      ///< XᵀX of every input
  Capture,   ///< keep the current evaluation's rows of every input (the full-precision side of a lockstep run)
  Cross,     ///< H̃ = X̃ᵀX̃ and G = X̃ᵀX against the partner's captured rows (the quantized side)
  Discover,  ///< only find the inputs, their widths and their sharing (to plan passes)
};

/// Tensors that must be collected in the same pass (they share inputs) and the bytes their accumulators take.
struct Unit {
  std::vector<std::string> tensors;
  std::uint64_t bytes = 0;
};

class GramCollector {
 public:
  /// ggml_backend_sched_eval_callback; user_data is the GramCollector.
  static bool callback(ggml_tensor* t, bool ask, void* user_data);

  /// Forgets everything collected and starts a pass: collects the products of the tensors named in
  /// `only` (all when empty). Cross mode pairs its rows with the partner's (a Capture collector).
  void start_pass(CollectMode mode, std::set<std::string> only = {}, const GramCollector* partner = nullptr);
  /// Call before each graph evaluation (each llama_decode of one chunk).
  void begin_evaluation();
  /// Raises the failure the callback met during the last evaluation, if any.
  void rethrow();

  /// Distinct inputs seen so far.
  std::size_t grams() const { return groups_.size(); }
  /// Weights (with experts counted per expert) that have a Gram.
  std::size_t weights() const { return group_of_.size(); }
  /// Weights whose products were seen but could not be collected (e.g. a view of a weight), by name.
  const std::set<std::string>& skipped() const { return skipped_; }

  /// Hands the Grams (Gram and Cross modes) to sink one by one as records of a Gram file, in the order
  /// first seen (graph order), freeing each accumulator once its record is made: the pass is over.
  void drain(const std::function<void(const pptq::io::GramRecord&)>& sink);
  /// After a Discover pass: the units in graph order; `cross`: accumulators for a lockstep run.
  std::vector<Unit> units(bool cross) const;

 private:
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // An input within one evaluation: data pointer, name, shape and strides (and for experts the ids').
  using InputKey = std::tuple<const void*, std::string, std::vector<std::int64_t>, const void*>;

  // Rows of one input: X (rows × cols) and, for an expert, the token of each row (ascending).
  struct Rows {
    RowMatrix X;
    std::vector<std::int64_t> tokens;
  };

  struct Group {
    std::vector<std::string> weights;
    std::int32_t expert = -1;
    std::int64_t n_expert = 0;  // the tensor's experts (expert groups)
    std::string input;
    std::int64_t cols = 0;
    pptq::Gram<double> gram;
    pptq::CrossGram<double> cross;
    Rows captured;
    std::int64_t captured_at = -1;  // evaluation of the captured rows
    std::int64_t created = -1;      // evaluation that created it
    std::int64_t accumulated = -1;  // last evaluation that added rows
  };

  // What one product contributes: the weight, its input and a way to read the rows.
  struct Product {
    std::string weight;
    std::int32_t expert = -1;
    std::int64_t n_expert = 0;
    InputKey key;
    std::string input;
    std::int64_t cols = 0;
  };

  bool wanted(const ggml_tensor* t);
  void collect(const ggml_tensor* t);
  void collect_dense(const ggml_tensor* t, const std::string& weight);
  void collect_experts(const ggml_tensor* t, const std::string& weight);
  /// The group of the product's weight for its input; adds the rows to it unless this evaluation already did.
  template <typename ReadRows>
  void accumulate(const Product& p, ReadRows&& read);
  std::size_t group_for(const Product& p);
  void add_rows(Group& g, const std::string& key, Rows rows);
  void add_cross(Group& g, const std::string& key, const Rows& mine);
  const char* host_data(const ggml_tensor* t, std::vector<char>& buf);

  CollectMode mode_ = CollectMode::Gram;
  std::set<std::string> only_;
  const GramCollector* partner_ = nullptr;
  std::vector<Group> groups_;
  std::map<std::string, std::size_t> group_of_;  // gram_key(weight, expert) → group
  std::map<std::pair<InputKey, std::int32_t>, std::size_t> seen_;  // this evaluation's inputs → group
  std::set<std::string> skipped_;
  std::int64_t evaluation_ = -1;
  std::exception_ptr error_;
  std::vector<char> src_buf_, ids_buf_;
};

}  // namespace pptq_llama
