#include "gguf_report.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>

namespace pptq_gguf {

using json = nlohmann::ordered_json;

namespace {

template <typename T>
json opt(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

const char* action_key(Action a, Method m) {
  switch (a) {
    case Action::Copy: return "copy";
    case Action::Rtn: return "rtn";
    case Action::ToF16: return "f16";
    case Action::Optq: return method_name(m);
  }
  return "copy";
}

json damp_auto_json(const pptq::DampChoice& c) {
  json points = json::array();
  for (const auto& p : c.points)
    points.push_back({{"damp", p.damp}, {"lambda", p.lambda}, {"calibration_error", p.calibration},
                      {"heldout_error", p.heldout}});
  return {{"chosen_damp", c.damp}, {"candidates", points}};
}

json record_json(const TensorRecord& r, Method m) {
  json j;
  j["tensor"] = r.tensor;
  j["name"] = r.name;
  j["expert"] = opt(r.expert);
  j["shape"] = {r.rows, r.cols};
  j["from"] = pptq::ggml::type_name(r.from);
  j["to"] = pptq::ggml::type_name(r.to);
  j["action"] = action_key(r.action, m);
  j["rule"] = r.rule;
  j["bytes_in"] = r.bytes_in;
  j["bytes_out"] = r.bytes_out;
  if (r.action != Action::Optq) return j;
  j["seconds"] = r.seconds;
  j["damp"] = r.damp;
  j["lambda"] = r.lambda;
  j["damping_escalated"] = r.escalated;
  j["damp_auto"] = r.damp_auto ? damp_auto_json(*r.damp_auto) : json(nullptr);
  j["h_error"] = opt(r.h_error);
  j["h_error_relative"] = opt(r.h_error_relative);
  j["rtn_over_method"] = opt(r.rtn_over_method);
  j["compared_rows"] = r.compared_rows;
  j["certificate"] = opt(r.certificate);
  j["C2"] = opt(r.C2);
  j["refit_gain"] = r.refit_gain;
  j["clipped"] = r.clipped;
  return j;
}

/// Per output type and for the model: matrices, weights, bytes in and out, bits per weight (from the
/// entries themselves, so that records gathered from several processes add up the same).
json totals_json(const json& tensors) {
  struct Sum {
    std::uint64_t n = 0, weights = 0, in = 0, out = 0;
  };
  std::map<std::string, Sum> by_type;
  Sum all;
  std::map<std::string, std::uint64_t> by_action;
  for (const auto& r : tensors) {
    const auto shape = r["shape"];
    const std::uint64_t w = shape[0].get<std::uint64_t>() * shape[1].get<std::uint64_t>();
    for (Sum* s : {&by_type[r["to"].get<std::string>()], &all}) {
      s->n += 1;
      s->weights += w;
      s->in += r["bytes_in"].get<std::uint64_t>();
      s->out += r["bytes_out"].get<std::uint64_t>();
    }
    by_action[r["action"].get<std::string>()] += 1;
  }
  auto sum_json = [](const Sum& s) {
    return json{{"matrices", s.n}, {"weights", s.weights}, {"bytes_in", s.in}, {"bytes_out", s.out},
                {"bits_per_weight", s.weights ? 8.0 * static_cast<double>(s.out) / static_cast<double>(s.weights) : 0.0}};
  };
  json types = json::object();
  for (const auto& [t, s] : by_type) types[t] = sum_json(s);
  json actions = json::object();
  for (const auto& [a, n] : by_action) actions[a] = n;
  return {{"by_type", types}, {"by_action", actions}, {"model", sum_json(all)}};
}

}  // namespace

std::string records_text(const std::vector<TensorRecord>& records, Method m) {
  json a = json::array();
  for (const auto& r : records) a.push_back(record_json(r, m));
  return a.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string model_report(const RunSummary& run, const Options& o, const std::vector<TensorRecord>& records) {
  return model_report(run, o, std::vector<std::string>{records_text(records, o.method)});
}

std::string model_report(const RunSummary& run, const Options& o, const std::vector<std::string>& record_texts) {
  json tensors = json::array();
  for (const std::string& t : record_texts)
    for (auto& r : json::parse(t)) tensors.push_back(std::move(r));
  // The model's order: by tensor, then by expert (a copied or 2-d tensor's expert is null, and alone).
  std::stable_sort(tensors.begin(), tensors.end(), [](const json& a, const json& b) {
    const auto ta = a["tensor"].get<std::uint64_t>(), tb = b["tensor"].get<std::uint64_t>();
    if (ta != tb) return ta < tb;
    return a["expert"].is_number() && b["expert"].is_number() && a["expert"].get<std::uint64_t>() < b["expert"].get<std::uint64_t>();
  });
  json j;
  j["tool"] = "pptq-gguf requantize";
  j["model"] = run.model;
  j["output"] = run.output;
  j["format"] = run.format;
  j["method"] = method_name(o.method);
  j["damp"] = o.damp_auto ? json("auto") : (o.damp_given || o.method != Method::Qronos ? json(o.damp) : json(nullptr));
  j["refit"] = o.refit;
  j["hessians"] = o.grams.empty() ? o.hessians : o.grams;
  j["heldout_grams"] = o.heldout_grams.empty() ? json(nullptr) : json(o.heldout_grams);
  j["processes"] = run.processes;
  j["seconds"] = run.seconds;
  j["totals"] = totals_json(tensors);
  j["tensors"] = tensors;
  // Names are bytes, not necessarily UTF-8: an invalid sequence becomes U+FFFD rather than an exception.
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace pptq_gguf
