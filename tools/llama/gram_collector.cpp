#include "gram_collector.hpp"

#include <pptq/error.hpp>

#include <cstring>
#include <utility>

namespace pptq_llama {

namespace {

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
template <typename RowMatrix>
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

void GramCollector::start_pass(CollectMode mode, std::set<std::string> only, const GramCollector* partner) {
  if (mode == CollectMode::Cross && !partner) throw pptq::UsageError("GramCollector: Cross mode needs a Capture partner");
  mode_ = mode;
  only_ = std::move(only);
  partner_ = partner;
  groups_.clear();
  group_of_.clear();
  seen_.clear();
  evaluation_ = -1;
  error_ = nullptr;
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
  return only_.empty() || only_.count(tensor_name(w)) > 0;
}

const char* GramCollector::host_data(const ggml_tensor* t, std::vector<char>& buf) {
  if (ggml_backend_buffer_is_host(t->buffer)) return static_cast<const char*>(t->data);
  buf.resize(ggml_nbytes(t));
  ggml_backend_tensor_get(t, buf.data(), 0, buf.size());
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
  const Product p{weight, -1, 0, InputKey{x->data, tensor_name(x), layout(x), nullptr}, tensor_name(x), x->ne[0]};
  accumulate(p, [&] {
    const char* base = host_data(x, src_buf_);
    std::vector<const float*> rows;
    rows.reserve(static_cast<std::size_t>(x->ne[1] * x->ne[2] * x->ne[3]));
    for (std::int64_t i3 = 0; i3 < x->ne[3]; ++i3)
      for (std::int64_t i2 = 0; i2 < x->ne[2]; ++i2)
        for (std::int64_t i1 = 0; i1 < x->ne[1]; ++i1)
          rows.push_back(reinterpret_cast<const float*>(base + i1 * x->nb[1] + i2 * x->nb[2] + i3 * x->nb[3]));
    return Rows{gather<RowMatrix>(rows, x->ne[0]), {}};
  });
}

void GramCollector::collect_experts(const ggml_tensor* t, const std::string& weight) {
  const ggml_tensor* w = t->src[0];
  const ggml_tensor* x = t->src[1];    // [n_in, slots or 1, tokens]
  const ggml_tensor* ids = t->src[2];  // [n_used, tokens], I32
  if (!ids || ids->type != GGML_TYPE_I32 || ids->ne[1] != x->ne[2] || x->ne[3] != 1)
    bad(weight, "an expert product whose operands have an unexpected layout");
  const std::int64_t n_expert = w->ne[2];
  const char* xb = host_data(x, src_buf_);
  const char* ib = host_data(ids, ids_buf_);
  // The rows routed to each expert: token i's slot k went to expert ids[k, i]; the input row of slot k
  // is x[:, k, i] (or x[:, 0, i] when one row is broadcast to every slot). Tokens ascend in each list.
  std::vector<std::vector<const float*>> routed(static_cast<std::size_t>(n_expert));
  std::vector<std::vector<std::int64_t>> tokens(static_cast<std::size_t>(n_expert));
  for (std::int64_t i = 0; i < ids->ne[1]; ++i)
    for (std::int64_t k = 0; k < ids->ne[0]; ++k) {
      std::int32_t e;
      std::memcpy(&e, ib + i * ids->nb[1] + k * ids->nb[0], sizeof e);
      if (e < 0 || e >= n_expert) bad(weight, "expert id " + std::to_string(e) + " out of range");
      routed[static_cast<std::size_t>(e)].push_back(reinterpret_cast<const float*>(xb + i * x->nb[2] + (k % x->ne[1]) * x->nb[1]));
      tokens[static_cast<std::size_t>(e)].push_back(i);
    }
  const InputKey key{x->data, tensor_name(x), layout(x), ids->data};
  for (std::int64_t e = 0; e < n_expert; ++e) {
    const auto ue = static_cast<std::size_t>(e);
    if (routed[ue].empty()) continue;
    const Product p{weight, static_cast<std::int32_t>(e), n_expert, key, tensor_name(x), x->ne[0]};
    accumulate(p, [&] { return Rows{gather<RowMatrix>(routed[ue], x->ne[0]), tokens[ue]}; });
  }
}

// Resolves the group of p's weight, checking that the sharing of inputs is the same in every evaluation.
// Returns groups_.size() when another weight already accumulated this input in this evaluation.
std::size_t GramCollector::group_for(const Product& p) {
  const std::string wk = pptq::io::gram_key(p.weight, p.expert);
  const auto seen = seen_.find({p.key, p.expert});
  const auto mine = group_of_.find(wk);
  if (seen != seen_.end()) {  // another weight already accumulated this input in this evaluation
    Group& g = groups_[seen->second];
    const bool same = mine != group_of_.end() ? mine->second == seen->second : g.created == evaluation_;
    if (!same) bad(wk, "reads the input of '" + g.weights.front() + "' now but did not in earlier chunks");
    if (mine == group_of_.end()) {
      g.weights.push_back(p.weight);
      group_of_.emplace(wk, seen->second);
    }
    return groups_.size();
  }
  std::size_t gi = mine != group_of_.end() ? mine->second : groups_.size();
  if (gi == groups_.size()) {
    groups_.emplace_back();
    Group& g = groups_.back();
    g.weights = {p.weight};
    g.expert = p.expert;
    g.n_expert = p.n_expert;
    g.input = p.input;
    g.cols = p.cols;
    g.created = evaluation_;
    group_of_.emplace(wk, gi);
  }
  Group& g = groups_[gi];
  if (g.accumulated == evaluation_ && g.weights.size() > 1)
    bad(wk, "reads two different inputs in one evaluation while sharing its Gram with '" + g.weights.front() + "'");
  seen_.emplace(std::make_pair(p.key, p.expert), gi);
  return gi;
}

template <typename ReadRows>
void GramCollector::accumulate(const Product& p, ReadRows&& read) {
  const std::size_t gi = group_for(p);
  if (gi == groups_.size()) return;  // shared input, already added in this evaluation
  groups_[gi].accumulated = evaluation_;
  if (mode_ != CollectMode::Discover) add_rows(groups_[gi], pptq::io::gram_key(p.weight, p.expert), read());
}

void GramCollector::add_rows(Group& g, const std::string& key, Rows rows) {
  switch (mode_) {
    case CollectMode::Gram: g.gram.add(rows.X); break;
    case CollectMode::Capture:
      g.captured = std::move(rows);
      g.captured_at = evaluation_;
      break;
    case CollectMode::Cross: add_cross(g, key, rows); break;
    case CollectMode::Discover: break;
  }
}

// Pairs this model's rows X̃ with the partner's X of the same weight and evaluation; experts by token.
void GramCollector::add_cross(Group& g, const std::string& key, const Rows& mine) {
  const auto it = partner_->group_of_.find(key);
  const Group* ref = it == partner_->group_of_.end() ? nullptr : &partner_->groups_[it->second];
  const bool current = ref && ref->captured_at == partner_->evaluation_;
  if (g.expert < 0) {
    if (!current) bad(key, "the full-precision model has no input for it in this chunk (do the models differ?)");
    if (ref->captured.X.rows() != mine.X.rows() || ref->captured.X.cols() != mine.X.cols())
      bad(key, "its inputs in the two models have different shapes");
    g.cross.add(ref->captured.X, mine.X);
    return;
  }
  if (!current) return;  // the full-precision model routed no token of this chunk to the expert
  std::vector<Eigen::Index> a, b;  // paired rows: the tokens both models routed here
  const auto& ta = ref->captured.tokens;
  for (std::size_t i = 0, j = 0; i < ta.size() && j < mine.tokens.size();) {
    if (ta[i] < mine.tokens[j]) ++i;
    else if (mine.tokens[j] < ta[i]) ++j;
    else a.push_back(static_cast<Eigen::Index>(i++)), b.push_back(static_cast<Eigen::Index>(j++));
  }
  if (a.empty()) return;
  RowMatrix X(static_cast<Eigen::Index>(a.size()), g.cols), Xq(static_cast<Eigen::Index>(b.size()), g.cols);
  for (std::size_t r = 0; r < a.size(); ++r) {
    X.row(static_cast<Eigen::Index>(r)) = ref->captured.X.row(a[r]);
    Xq.row(static_cast<Eigen::Index>(r)) = mine.X.row(b[r]);
  }
  g.cross.add(X, Xq);
}

void GramCollector::drain(const std::function<void(const pptq::io::GramRecord&)>& sink) {
  for (Group& g : groups_) {
    pptq::io::GramRecord r;
    r.weights = g.weights;
    r.expert = g.expert;
    r.input = g.input;
    if (mode_ == CollectMode::Cross) {
      const auto it = partner_->group_of_.find(pptq::io::gram_key(g.weights.front(), g.expert));
      if (it != partner_->group_of_.end() && partner_->groups_[it->second].weights != g.weights)
        bad(g.weights.front(), "the two models share its input with different weights");
      if (g.cross.samples() == 0) continue;  // an expert the two models never both chose
      r.samples = g.cross.samples();
      r.H = g.cross.htilde();
      r.cross = g.cross.cross();
      g.cross.clear();
    } else {
      if (g.gram.samples() == 0) continue;
      r.samples = g.gram.samples();
      r.H = g.gram.matrix();
      g.gram = pptq::Gram<double>();
    }
    sink(r);
  }
}

std::vector<Unit> GramCollector::units(bool cross) const {
  std::vector<Unit> units;
  std::map<std::string, std::size_t> unit_of;  // tensor → unit
  std::set<std::vector<std::string>> counted;  // expert groups: the tensor's experts are counted once
  for (const Group& g : groups_) {
    std::size_t u = units.size();
    for (const std::string& w : g.weights)
      if (unit_of.count(w)) u = std::min(u, unit_of[w]);
    if (u == units.size()) units.emplace_back();
    for (const std::string& w : g.weights) {
      const auto it = unit_of.find(w);
      if (it != unit_of.end() && it->second != u) {  // joins two units: move the other's tensors here
        Unit& v = units[it->second];
        for (const std::string& t : v.tensors) unit_of[t] = u;
        units[u].tensors.insert(units[u].tensors.end(), v.tensors.begin(), v.tensors.end());
        units[u].bytes += v.bytes;
        v = Unit{};
      }
      if (!unit_of.count(w)) units[u].tensors.push_back(w);
      unit_of[w] = u;
    }
    const auto n = static_cast<std::uint64_t>(g.cols);
    const std::uint64_t one = 8 * n * n * (cross ? 2 : 1);  // double accumulators, n × n (and G for Qronos)
    if (g.expert < 0)
      units[u].bytes += one;
    else if (counted.insert(g.weights).second)
      units[u].bytes += one * static_cast<std::uint64_t>(g.n_expert);
  }
  std::vector<Unit> out;
  for (Unit& v : units)
    if (!v.tensors.empty()) out.push_back(std::move(v));
  return out;
}

}  // namespace pptq_llama
