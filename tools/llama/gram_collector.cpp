#include "gram_collector.hpp"

#include <pptq/error.hpp>

#include <Eigen/Core>

#include <cstring>
#include <utility>

namespace pptq_llama {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::string tensor_name(const ggml_tensor* t) { return ggml_get_name(t); }

std::vector<std::int64_t> layout(const ggml_tensor* t) {
  std::vector<std::int64_t> v;
  for (int k = 0; k < GGML_MAX_DIMS; ++k) v.push_back(t->ne[k]);
  for (int k = 0; k < GGML_MAX_DIMS; ++k) v.push_back(static_cast<std::int64_t>(t->nb[k]));
  return v;
}

[[noreturn]] void bad(const std::string& weight, const std::string& msg) {
  throw pptq::DataError("calibrate: weight '" + weight + "': " + msg);
}

// X (rows × n) from row pointers, each row n contiguous floats.
RowMatrix gather(const std::vector<const float*>& rows, std::int64_t n) {
  RowMatrix X(static_cast<Eigen::Index>(rows.size()), n);
  for (std::size_t i = 0; i < rows.size(); ++i)
    std::memcpy(X.row(static_cast<Eigen::Index>(i)).data(), rows[i], static_cast<std::size_t>(n) * sizeof(float));
  return X;
}

}  // namespace

bool GramCollector::callback(ggml_tensor* t, bool ask, void* user_data) {
  auto* self = static_cast<GramCollector*>(user_data);
  if (self->error_) return false;  // stop the evaluation: its results are discarded
  if (ask) return self->wanted(t);
  try {
    self->collect(t);
    return true;
  } catch (...) {
    self->error_ = std::current_exception();
    return false;
  }
}

void GramCollector::begin_evaluation() {
  ++evaluation_;
  seen_.clear();
}

void GramCollector::rethrow() {
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

bool GramCollector::wanted(const ggml_tensor* t) {
  if (t->op != GGML_OP_MUL_MAT && t->op != GGML_OP_MUL_MAT_ID) return false;
  const ggml_tensor* w = t->src[0];
  // A model weight lives in a buffer llama.cpp marks as holding weights (the KV cache and activations do not).
  if (!w || !w->buffer || ggml_backend_buffer_get_usage(w->buffer) != GGML_BACKEND_BUFFER_USAGE_WEIGHTS) return false;
  if (w->view_src) {  // a slice of a weight: its Gram would not describe the whole stored tensor
    skipped_.insert(tensor_name(w));
    return false;
  }
  return true;
}

const float* GramCollector::host_data(const ggml_tensor* t, std::vector<float>& buf) {
  if (ggml_backend_buffer_is_host(t->buffer)) return static_cast<const float*>(t->data);
  const std::size_t bytes = ggml_nbytes(t);
  buf.resize((bytes + sizeof(float) - 1) / sizeof(float));
  ggml_backend_tensor_get(t, buf.data(), 0, bytes);
  return buf.data();
}

void GramCollector::collect(const ggml_tensor* t) {
  const std::string weight = tensor_name(t->src[0]);
  const ggml_tensor* x = t->src[1];
  if (x->type != GGML_TYPE_F32) bad(weight, std::string("its input is ") + ggml_type_name(x->type) + ", not F32");
  if (x->ne[0] != t->src[0]->ne[0]) bad(weight, "its input width differs from the weight's");
  if (x->nb[0] != sizeof(float)) bad(weight, "its input rows are not contiguous");
  if (t->op == GGML_OP_MUL_MAT)
    collect_dense(t, weight);
  else
    collect_experts(t, weight);
}

void GramCollector::collect_dense(const ggml_tensor* t, const std::string& weight) {
  const ggml_tensor* x = t->src[1];
  const InputKey key{x->data, tensor_name(x), layout(x), nullptr};
  accumulate(weight, -1, key, tensor_name(x), [&] {
    const auto* base = reinterpret_cast<const char*>(host_data(x, src_buf_));
    std::vector<const float*> rows;
    rows.reserve(static_cast<std::size_t>(x->ne[1] * x->ne[2] * x->ne[3]));
    for (std::int64_t i3 = 0; i3 < x->ne[3]; ++i3)
      for (std::int64_t i2 = 0; i2 < x->ne[2]; ++i2)
        for (std::int64_t i1 = 0; i1 < x->ne[1]; ++i1)
          rows.push_back(reinterpret_cast<const float*>(base + i1 * x->nb[1] + i2 * x->nb[2] + i3 * x->nb[3]));
    return gather(rows, x->ne[0]);
  });
}

void GramCollector::collect_experts(const ggml_tensor* t, const std::string& weight) {
  const ggml_tensor* w = t->src[0];
  const ggml_tensor* x = t->src[1];  // [n_in, slots or 1, tokens]
  const ggml_tensor* ids = t->src[2];  // [n_used, tokens], I32
  if (!ids || ids->type != GGML_TYPE_I32 || ids->ne[1] != x->ne[2] || x->ne[3] != 1)
    bad(weight, "an expert product whose operands have an unexpected layout");
  const std::int64_t n_expert = w->ne[2];
  const auto* xb = reinterpret_cast<const char*>(host_data(x, src_buf_));
  const auto* ib = reinterpret_cast<const char*>(host_data(ids, ids_buf_));
  // The rows routed to each expert: token i's slot k went to expert ids[k, i]; the input row of slot k
  // is x[:, k, i] (or x[:, 0, i] when one row is broadcast to every slot).
  std::vector<std::vector<const float*>> routed(static_cast<std::size_t>(n_expert));
  for (std::int64_t i = 0; i < ids->ne[1]; ++i)
    for (std::int64_t k = 0; k < ids->ne[0]; ++k) {
      std::int32_t e;
      std::memcpy(&e, ib + i * ids->nb[1] + k * ids->nb[0], sizeof e);
      if (e < 0 || e >= n_expert) bad(weight, "expert id " + std::to_string(e) + " out of range");
      routed[static_cast<std::size_t>(e)].push_back(
          reinterpret_cast<const float*>(xb + i * x->nb[2] + (k % x->ne[1]) * x->nb[1]));
    }
  const InputKey key{x->data, tensor_name(x), layout(x), ids->data};
  for (std::int64_t e = 0; e < n_expert; ++e) {
    const auto& rows = routed[static_cast<std::size_t>(e)];
    if (rows.empty()) continue;
    accumulate(weight, static_cast<std::int32_t>(e), key, tensor_name(x), [&] { return gather(rows, x->ne[0]); });
  }
}

template <typename Rows>
void GramCollector::accumulate(const std::string& weight, std::int32_t expert, const InputKey& key, const std::string& input,
                               Rows&& rows) {
  const std::string wk = pptq::io::gram_key(weight, expert);
  const auto seen = seen_.find({key, expert});
  const auto mine = group_of_.find(wk);
  if (seen != seen_.end()) {  // another weight already accumulated this input in this evaluation
    Group& g = groups_[seen->second];
    if (mine != group_of_.end()) {
      if (mine->second != seen->second)
        bad(wk, "reads the input of '" + g.weights.front() + "' now but did not in earlier chunks");
      return;
    }
    if (g.created != evaluation_)
      bad(wk, "reads the input of '" + g.weights.front() + "' now but did not in earlier chunks");
    g.weights.push_back(weight);
    group_of_.emplace(wk, seen->second);
    return;
  }
  std::size_t gi;
  if (mine == group_of_.end()) {
    gi = groups_.size();
    groups_.emplace_back();
    groups_[gi].weights = {weight};
    groups_[gi].expert = expert;
    groups_[gi].input = input;
    groups_[gi].created = evaluation_;
    group_of_.emplace(wk, gi);
  } else {
    gi = mine->second;
  }
  Group& g = groups_[gi];
  if (g.accumulated == evaluation_ && g.weights.size() > 1)
    bad(wk, "reads two different inputs in one evaluation while sharing its Gram with '" + g.weights.front() + "'");
  g.gram.add(rows());
  g.accumulated = evaluation_;
  seen_.emplace(std::make_pair(key, expert), gi);
}

std::vector<pptq::io::GramRecord> GramCollector::records() const {
  std::vector<pptq::io::GramRecord> out;
  out.reserve(groups_.size());
  for (const Group& g : groups_) {
    pptq::io::GramRecord r;
    r.weights = g.weights;
    r.expert = g.expert;
    r.input = g.input;
    r.samples = g.gram.samples();
    r.H = g.gram.matrix();
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace pptq_llama
