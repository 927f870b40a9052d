// pptq-gguf requantize's plan (gguf_plan.hpp): matching calibration files to tensors, checked up front.
#include "gguf_plan.hpp"

#include <pptq/io/printable.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <system_error>
#include <utility>

namespace pptq_gguf {

using pptq::DataError;
using pptq_tools::shape_str;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// ne as the messages write it: [a, b, ...].
std::string ne_str(const std::vector<std::uint64_t>& ne) {
  std::string s = "[";
  for (std::size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

}  // namespace

/// The header of a matched file has the shape the tensor needs; returns the job.
Job check_file(const pptq::gguf::TensorInfo& t, std::size_t index, const std::string& path, bool from_inputs,
               const HeaderReader& header_of) {
  const pptq_tools::NpySource src{path, ""};
  const pptq::io::NpyArray h = header_of(src);
  pptq_tools::check_float_2d(h, src);
  const std::int64_t r = h.shape[0], c = h.shape[1];
  const auto cols = static_cast<std::int64_t>(t.ne[0]);  // <= INT64_MAX: the reader checked every ne
  if (c != cols || (!from_inputs && r != cols))
    throw DataError(path + " is " + shape_str(r, c) + " but " + tensor_label(t) + " has " + std::to_string(cols) +
                    " columns: it must be " + (from_inputs ? "samples x " + std::to_string(cols) : shape_str(cols, cols)));
  Job job;
  job.tensor = index;
  job.path = path;
  job.from_inputs = from_inputs;
  job.samples = from_inputs ? r : 0;
  job.item_bytes = pptq::io::dtype_size(h.dtype);
  return job;
}

std::string tensor_label(const pptq::gguf::TensorInfo& t) { return "tensor " + pptq::io::detail::quoted(t.name); }

bool is_source_type(pptq::ggml::Type t) {
  using pptq::ggml::Type;
  return t == Type::F32 || t == Type::F16 || t == Type::BF16 || t == Type::Q8_0;
}

void check_requantizable(const pptq::gguf::TensorInfo& t, pptq::ggml::Type format, const std::string& file) {
  const std::string who = tensor_label(t) + " (" + file + ")";
  if (t.ne.size() != 2) throw DataError(who + ": only 2-d tensors can be requantized, this one has ne = " + ne_str(t.ne));
  if (!is_source_type(t.type))
    throw DataError(who + " is already quantized (" + pptq::ggml::type_name(t.type) +
                    "): requantizing needs an f32, f16, bf16 or q8_0 source tensor");
  const std::int64_t bs = pptq::ggml::block_size(format);
  if (t.ne[0] == 0 || t.ne[1] == 0) throw DataError(who + " is empty (ne = " + ne_str(t.ne) + ")");
  if (t.ne[0] % static_cast<std::uint64_t>(bs) != 0)
    throw DataError(who + ": its rows have " + std::to_string(t.ne[0]) + " columns (ne[0]), not a multiple of " +
                    pptq::ggml::type_name(format) + "'s block size " + std::to_string(bs));
}

std::vector<std::string> npy_files(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw DataError("--hessians '" + dir + "' is not a readable directory");
  std::vector<std::string> names;
  fs::directory_iterator it(dir, ec), end;
  if (ec) throw DataError("--hessians '" + dir + "': cannot list the directory: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw DataError("--hessians '" + dir + "': cannot list the directory: " + ec.message());
    const std::string n = it->path().filename().string();
    if (!ends_with(n, ".npy")) continue;  // only .npy files are ours
    std::error_code ec2;
    if (it->is_directory(ec2)) continue;
    names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

Plan make_plan(const pptq::gguf::File& f, const std::string& dir, const std::vector<std::string>& names,
               pptq::ggml::Type format, bool allow_unused, const HeaderReader& header_of) {
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < f.tensors.size(); ++i) index.emplace(f.tensors[i].name, i);
  const std::string sep = (!dir.empty() && dir.back() == '/') ? "" : "/";
  Plan plan;
  std::map<std::size_t, std::pair<std::string, bool>> matched;  // tensor -> (file, from inputs)
  for (const std::string& n : names) {
    const std::string path = dir + sep + n;
    const bool is_h = ends_with(n, ".H.npy"), is_x = ends_with(n, ".X.npy");
    const auto found = (is_h || is_x) ? index.find(n.substr(0, n.size() - 6)) : index.end();
    if (found == index.end()) {
      plan.unused.push_back(path);
      continue;
    }
    const auto prev = matched.find(found->second);
    if (prev != matched.end())
      throw DataError(tensor_label(f.tensors[found->second]) + " has both " + prev->second.first + " and " + path +
                      ": give either the Hessian (.H.npy) or the inputs (.X.npy), not both");
    check_requantizable(f.tensors[found->second], format, path);
    matched.emplace(found->second, std::make_pair(path, is_x));
  }
  if (!plan.unused.empty() && !allow_unused)
    throw DataError(plan.unused.front() + " matches no tensor of the model (expected <tensor name>.H.npy or "
                    "<tensor name>.X.npy; --allow-unused ignores such files)");
  if (matched.empty())
    throw DataError("--hessians '" + dir + "' holds no <tensor name>.H.npy or <tensor name>.X.npy of a tensor of the "
                    "model: nothing to requantize");
  // The headers last, in the model's tensor order: every name problem is reported before any file is opened.
  for (const auto& kv : matched)
    plan.jobs.push_back(check_file(f.tensors[kv.first], kv.first, kv.second.first, kv.second.second, header_of));
  return plan;
}

double job_memory(const pptq::gguf::TensorInfo& t, const Job& job) {
  const double cols = static_cast<double>(t.ne[0]), rows = static_cast<double>(t.ne[1]);
  // H as read (or X^T X and its full copy), the copy and the factor of quantize_optq: four cols x cols doubles.
  double est = 4.0 * 8.0 * cols * cols;
  if (job.from_inputs) est += static_cast<double>(job.samples) * cols * (8.0 + static_cast<double>(job.item_bytes));
  else est += static_cast<double>(job.item_bytes) * cols * cols;  // the file's array while it is converted
  est += 6.0 * 4.0 * rows * cols;  // W, Q, codes and the working copies, in float
  return est;
}

}  // namespace pptq_gguf
