// pptq-gguf requantize --grams (gguf_hessians.hpp): a Gram file as the source of the Hessians.
#include "gguf_hessians.hpp"

#include <pptq/io/gram_file.hpp>
#include <pptq/io/input_file.hpp>
#include <pptq/io/printable.hpp>

#include <algorithm>
#include <utility>

namespace pptq_gguf {

using pptq::DataError;

namespace {

/// Record i of the file, decoded and checked (gram_file.hpp's reader, one record at a time).
pptq::io::GramRecord read_record(const pptq::gguf::File& f, std::size_t i, const std::string& what) {
  return pptq::io::detail::GramReader(f, what).record(i);
}

}  // namespace

GramSource::GramSource(std::string path) : path_(std::move(path)) {
  try {
    bytes_ = pptq::io::regular_file_size(path_, "--grams: ");
    file_ = pptq::gguf::read(path_);
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());  // an input of the tool: unreadable is bad data, like malformed
  }
  const pptq::io::detail::GramReader rd(file_, path_);
  rd.header();
  const std::uint32_t count = rd.get<std::uint32_t>("pptq.grams.count");
  if (count > file_.tensors.size())
    rd.bad("pptq.grams.count is " + std::to_string(count) + " but the file has " + std::to_string(file_.tensors.size()) +
           " tensors");
  pptq::io::detail::check_tensor_names(file_, count, rd);
  records_ = count;
  std::map<std::string, bool> seen;
  for (std::size_t i = 0; i < records_; ++i) {
    const pptq::io::GramRecord r = read_record(file_, i, path_);  // every value checked now, not mid-run
    if (r.cross.size() != 0) ++with_cross_;
    for (const std::string& w : r.weights) {
      const std::string key = pptq::io::gram_key(w, r.expert);
      if (!seen.emplace(key, true).second) rd.bad("weight '" + key + "' has more than one Gram");
      if (r.expert >= 0) {
        experts_.push_back(key);
      } else {
        record_of_[w] = i;
        samples_[w] = r.samples;
        cols_[w] = r.H.cols();
      }
    }
  }
}

Plan GramSource::plan(const pptq::gguf::File& model, pptq::ggml::Type format, bool allow_unused, const std::regex* only) const {
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < model.tensors.size(); ++i) index.emplace(model.tensors[i].name, i);
  Plan plan;
  for (const auto& kv : record_of_) {
    if (only && !std::regex_search(kv.first, *only)) continue;
    const auto found = index.find(kv.first);
    if (found == index.end()) {
      plan.unused.push_back("the Gram of " + pptq::io::detail::quoted(kv.first) + " in " + path_);
      continue;
    }
    const pptq::gguf::TensorInfo& t = model.tensors[found->second];
    check_requantizable(t, format, path_);
    if (static_cast<std::uint64_t>(cols_.at(kv.first)) != t.ne[0])
      throw DataError(path_ + ": the Gram of " + tensor_label(t) + " is " +
                      pptq_tools::shape_str(cols_.at(kv.first), cols_.at(kv.first)) + " but the tensor has " +
                      std::to_string(t.ne[0]) + " columns");
    Job job;
    job.tensor = found->second;
    job.path = path_;
    job.samples = samples_.at(kv.first);
    job.item_bytes = sizeof(float);  // the file's element: the record is decoded from float
    plan.jobs.push_back(job);
  }
  for (const std::string& e : experts_)
    plan.unused.push_back("the Gram of expert " + pptq::io::detail::quoted(e) + " in " + path_);
  if (!plan.unused.empty() && !allow_unused) {
    const bool expert = plan.unused.front().rfind("the Gram of expert", 0) == 0;
    throw DataError(plan.unused.front() +
                    (expert ? ": requantize handles 2-d tensors only" : " names no tensor of the model") +
                    " (--allow-unused ignores such Grams)");
  }
  if (plan.jobs.empty())
    throw DataError("--grams '" + path_ + "' holds no Gram of a tensor of the model" + (only ? " that --only matches" : "") +
                    ": nothing to requantize");
  std::sort(plan.jobs.begin(), plan.jobs.end(), [](const Job& a, const Job& b) { return a.tensor < b.tensor; });
  return plan;
}

TensorGrams GramSource::grams_of(const std::string& weight) const {
  const auto it = record_of_.find(weight);
  if (it == record_of_.end()) throw DataError("Gram file '" + path_ + "': no Gram for weight " + pptq::io::detail::quoted(weight));
  pptq::io::GramRecord r = read_record(file_, it->second, path_);
  TensorGrams g;
  g.H = std::move(r.H);
  g.cross = std::move(r.cross);
  return g;
}

}  // namespace pptq_gguf
