// pptq-gguf: requantize the linear layers of a GGUF model with OPTQ into one of llama.cpp's block formats.
//
//   pptq-gguf requantize --model IN.gguf --hessians DIR --format q4_0|q4_k|q3_k|q2_k|q8_0|q5_0|q5_k|q6_k|iq4_nl|iq4_xs --output OUT.gguf
//       [--damp C] [--no-refit] [--threads T] [--quiet] [--allow-unused]
//
// Every 2-d tensor NAME of the model for which DIR holds NAME.H.npy (cols x cols, any positive multiple of
// XᵀX) or NAME.X.npy (samples x cols calibration inputs; H = XᵀX) is requantized with
// pptq::ggml::quantize_optq; its type becomes the format, its data the format's bytes, its shape (ne) is
// kept. Everything else (metadata: keys, order, values; all other tensors' types, shapes and bytes) is copied
// unchanged. A linear layer W (out x in) is stored with ne = [in, out]: the rows of W are the contiguous
// rows (docs/formats.md). The source tensor must be F32 or F16; an already quantized tensor is an error
// naming it.
//
// Exit codes (cli_common.hpp): 0 success; 1 the output could not be written (or an unexpected internal
// error); 2 bad usage; 3 bad data (unreadable or malformed files, shape mismatch, NaN/Inf, unsupported
// tensor); 4 numerical failure (H + λI not positive definite even after escalating the damping). The output
// is written through a temporary file renamed over OUT.gguf only on success: on failure nothing is left
// behind and an existing OUT.gguf is untouched.
#include "cli_common.hpp"
#ifdef PPTQ_WITH_LLAMA
#include "commands.hpp"
#endif

#include <pptq/ggml/grid.hpp>
#include <pptq/measure.hpp>
#include <pptq/gram.hpp>
#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/result.hpp>

#include <CLI/CLI.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace pptq_gguf {
namespace {

constexpr const char* kProg = "pptq-gguf";

using pptq::DataError;
using pptq::UsageError;
using pptq_tools::shape_str;
using Clock = std::chrono::steady_clock;

/// The `requantize` command, validated.
struct Options {
  std::string model, hessians, output, format_name;
  pptq::ggml::Type format = pptq::ggml::Type::Q4_K;
  double damp = pptq::ggml::QuantizeOptions::default_optq().damp;  ///< λ = damp · mean(diag H)
  bool refit = true;
  int threads = 0;  ///< 0: all; results do not depend on it
  bool quiet = false;
  bool allow_unused = false;
};

/// The library's quantize options for `o` (the tool passes exactly these to quantize_optq).
pptq::ggml::QuantizeOptions quantize_options(const Options& o) {
  pptq::ggml::QuantizeOptions q;
  q.optq.damp = o.damp;
  q.optq.threads = o.threads;
  q.fit.threads = o.threads;
  q.refit = o.refit;
  q.refit_options.threads = o.threads;
  return q;
}

void say(const Options& o, const std::string& line) {
  if (o.quiet) return;
  std::fprintf(stderr, "%s: %s\n", kProg, line.c_str());
  std::fflush(stderr);
}

// ------------------------------------------------------------------------------------------------
// Matching the calibration files to the model's tensors
// ------------------------------------------------------------------------------------------------

/// One tensor to requantize and where its Hessian comes from.
struct Job {
  std::size_t tensor = 0;    ///< index into File::tensors
  std::string path;          ///< DIR/NAME.H.npy or DIR/NAME.X.npy
  bool from_inputs = false;  ///< true for .X.npy (H = XᵀX)
};

struct Plan {
  std::vector<Job> jobs;            ///< in the model's tensor order
  std::vector<std::string> unused;  ///< .npy files of DIR that name no tensor (sorted)
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Checks that tensor `t` can be requantized into `format`; throws DataError naming it (and `file`).
void check_requantizable(const pptq::gguf::TensorInfo& t, pptq::ggml::Type format, const std::string& file) {
  const std::string who = "tensor '" + t.name + "' (" + file + ")";
  if (t.ne.size() != 2) {
    std::string shape;
    for (std::size_t k = 0; k < t.ne.size(); ++k) shape += (k ? ", " : "") + std::to_string(t.ne[k]);
    throw DataError(who + ": only 2-d tensors can be requantized, this one has ne = [" + shape + "]");
  }
  if (t.type != pptq::ggml::Type::F32 && t.type != pptq::ggml::Type::F16)
    throw DataError(who + " is already quantized (" + pptq::ggml::type_name(t.type) +
                    "): requantizing needs an f32 or f16 source tensor");
  const std::int64_t bs = pptq::ggml::block_size(format);
  if (t.ne[0] == 0 || t.ne[1] == 0)
    throw DataError(who + " is empty (ne = [" + std::to_string(t.ne[0]) + ", " + std::to_string(t.ne[1]) + "])");
  if (t.ne[0] % static_cast<std::uint64_t>(bs) != 0)
    throw DataError(who + ": its rows have " + std::to_string(t.ne[0]) + " columns (ne[0]), not a multiple of " +
                    pptq::ggml::type_name(format) + "'s block size " + std::to_string(bs));
}

/// The names of DIR's .npy files, sorted; DataError if DIR cannot be listed.
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

/// Lists DIR and matches NAME.H.npy / NAME.X.npy to the model's tensors. Throws DataError on an unreadable
/// directory, both files for one tensor, a tensor that cannot be requantized, an unused file (unless
/// allow_unused), or no match at all.
Plan make_plan(const pptq::gguf::File& f, const std::string& dir, pptq::ggml::Type format, bool allow_unused) {
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < f.tensors.size(); ++i) index.emplace(f.tensors[i].name, i);
  const std::string sep = (!dir.empty() && dir.back() == '/') ? "" : "/";
  Plan plan;
  std::map<std::size_t, Job> by_tensor;
  for (const std::string& n : npy_files(dir)) {
    const std::string path = dir + sep + n;
    const bool is_h = ends_with(n, ".H.npy"), is_x = ends_with(n, ".X.npy");
    const auto found = (is_h || is_x) ? index.find(n.substr(0, n.size() - 6)) : index.end();
    if (found == index.end()) {
      plan.unused.push_back(path);
      continue;
    }
    const auto prev = by_tensor.find(found->second);
    if (prev != by_tensor.end())
      throw DataError("tensor '" + found->first + "' has both " + prev->second.path + " and " + path +
                      ": give either the Hessian (.H.npy) or the inputs (.X.npy), not both");
    check_requantizable(f.tensors[found->second], format, path);
    by_tensor.emplace(found->second, Job{found->second, path, is_x});
  }
  if (!plan.unused.empty() && !allow_unused)
    throw DataError(plan.unused.front() + " matches no tensor of the model (expected <tensor name>.H.npy or "
                    "<tensor name>.X.npy; --allow-unused ignores such files)");
  if (by_tensor.empty())
    throw DataError("--hessians '" + dir + "' holds no <tensor name>.H.npy or <tensor name>.X.npy of a tensor of the "
                    "model: nothing to requantize");
  for (auto& kv : by_tensor) plan.jobs.push_back(std::move(kv.second));
  return plan;
}

// ------------------------------------------------------------------------------------------------
// Data
// ------------------------------------------------------------------------------------------------

/// The model; a file that cannot be read is bad input to the tool (exit 3), like a malformed one.
pptq::gguf::File load_model(const std::string& path) {
  try {
    return pptq::gguf::read(path);  // its messages name the file
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());
  }
}

/// The weight W (rows = ne[1], cols = ne[0]) of an F32/F16 tensor, decoded to float; DataError on NaN/Inf.
pptq::Matrix<float> decode_weight(const pptq::gguf::TensorInfo& t) {
  const auto cols = static_cast<pptq::Index>(t.ne[0]), rows = static_cast<pptq::Index>(t.ne[1]);
  const std::size_t rb = pptq::ggml::row_bytes(t.type, cols);
  pptq::Matrix<float> W(rows, cols);
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (pptq::Index i = 0; i < rows; ++i) {
    pptq::ggml::dequantize_row(t.type, t.data.data() + static_cast<std::size_t>(i) * rb, cols, row.data());
    for (pptq::Index j = 0; j < cols; ++j) {
      const float v = row[static_cast<std::size_t>(j)];
      if (!std::isfinite(v)) {
        std::ostringstream os;
        os << "tensor '" << t.name << "' has a non-finite weight " << v << " at row " << i << ", column " << j;
        throw DataError(os.str());
      }
      W(i, j) = v;
    }
  }
  return W;
}

/// H (cols x cols, double) for a job: read NAME.H.npy, or NAME.X.npy and form XᵀX with pptq::Gram<double>.
Eigen::MatrixXd load_hessian(const Job& job, const std::string& tensor, pptq::Index cols) {
  const pptq_tools::NpySource src{job.path, ""};
  const pptq::io::NpyArray a = pptq_tools::read_float_array(src);
  const std::int64_t r = a.shape[0], c = a.shape[1];
  if (c != cols || (!job.from_inputs && r != cols))
    throw DataError(job.path + " is " + shape_str(r, c) + " but tensor '" + tensor + "' has " + std::to_string(cols) +
                    " columns: it must be " +
                    (job.from_inputs ? "samples x " + std::to_string(cols) : shape_str(cols, cols)));
  Eigen::MatrixXd m = pptq_tools::to_finite_matrix<double>(a, src);
  if (!job.from_inputs) return m;
  pptq::Gram<double> g(cols);
  g.add(m);
  return g.matrix();
}

// ------------------------------------------------------------------------------------------------
// Requantizing one tensor
// ------------------------------------------------------------------------------------------------

/// What happened to one tensor (for the progress line).
struct TensorReport {
  pptq::Index rows = 0, cols = 0;
  double seconds = 0;
  double lambda = 0;
  bool escalated = false;
  double refit_gain = 1;
  /// Σ (w − q)ᵀH(w − q) of plain rounding (quantize_rtn, same format and importance) divided by OPTQ's,
  /// over `compared_rows` evenly spaced rows (all rows when there are at most kCompareRows).
  std::optional<double> rtn_over_optq;
  pptq::Index compared_rows = 0;
  static constexpr pptq::Index kCompareRows = 256;
};

/// Σ over the rows of (W − Q)_i H (W − Q)_iᵀ, through the library's measurement (pptq/measure.hpp).
double h_error(const pptq::Matrix<float>& W, const pptq::Matrix<float>& Q, const Eigen::MatrixXd& H) {
  const double fro = pptq::measure_errors_gram(W, Q, H).fro;
  return fro * fro;
}

/// Compares OPTQ's Q with plain rounding on at most kCompareRows rows (the grid fit is per row, so RTN of a
/// subset of rows is exactly those rows of RTN of all of them): cheap next to the sweep.
void compare_with_rtn(const pptq::Matrix<float>& W, const pptq::Matrix<float>& Q, const Eigen::MatrixXd& H,
                      pptq::ggml::Type format, const pptq::ggml::FitOptions& fit, TensorReport& rep) {
  const pptq::Index n = std::min(rep.rows, TensorReport::kCompareRows);
  pptq::Matrix<float> Ws(n, rep.cols), Qs(n, rep.cols);
  for (pptq::Index k = 0; k < n; ++k) {
    Ws.row(k) = W.row(k * rep.rows / n);
    Qs.row(k) = Q.row(k * rep.rows / n);
  }
  const Eigen::VectorXd imp = H.diagonal().cwiseMax(0.0);
  const auto rtn = pptq::ggml::quantize_rtn(Ws, imp, format, fit);
  const double e_optq = h_error(Ws, Qs, H), e_rtn = h_error(Ws, rtn.dequantized, H);
  if (e_optq > 0) rep.rtn_over_optq = e_rtn / e_optq;
  rep.compared_rows = n;
}

/// Requantizes W (t's weight) with H into `o.format` and replaces t's type and data. Throws DataError on
/// input the library rejects and NumericalError when the sweep fails, both naming the tensor.
TensorReport requantize_tensor(pptq::gguf::TensorInfo& t, const pptq::Matrix<float>& W, const Eigen::MatrixXd& H,
                               const Options& o) {
  const auto t0 = Clock::now();
  TensorReport rep;
  rep.rows = W.rows();
  rep.cols = W.cols();
  const pptq::ggml::QuantizeOptions qopt = quantize_options(o);
  const std::string who = "tensor '" + t.name + "': ";
  pptq::ggml::GgmlQuant<float> gq =
      pptq_tools::on_input_data(who, [&] { return pptq::ggml::quantize_optq(W, H, o.format, qopt); });
  if (!gq.result.ok())
    throw pptq::NumericalError(who + pptq::to_string(gq.result.status) + ": " + gq.result.message);
  rep.lambda = gq.result.lambda;
  rep.escalated = gq.result.status == pptq::Status::DampingEscalated;
  rep.refit_gain = gq.refit.gain();
  if (!o.quiet) compare_with_rtn(W, gq.dequantized, H, o.format, qopt.fit, rep);
  t.type = o.format;
  t.data = std::move(gq.bytes);
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

/// "[k/n] NAME: done in ... s, ...": the progress line of one requantized tensor.
std::string done_line(const std::string& tag, const TensorReport& r, bool refit) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  os << tag << ": done in " << r.seconds << " s";
  os.unsetf(std::ios::fixed);
  os.precision(4);
  if (r.rtn_over_optq) {
    os << ", H-error of plain rounding / OPTQ " << *r.rtn_over_optq << "x";
    if (r.compared_rows < r.rows) os << " (on " << r.compared_rows << " of " << r.rows << " rows)";
  }
  os << ", lambda " << r.lambda << (r.escalated ? " (damping escalated)" : "");
  if (refit) os << ", refit gain " << r.refit_gain;
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------------

/// Requantizes every tensor of the plan in f, one after the other, saying what it does.
void requantize_all(pptq::gguf::File& f, const Plan& plan, const Options& o) {
  const std::string fmt = pptq::ggml::type_name(o.format);
  const std::size_t n = plan.jobs.size();
  for (std::size_t k = 0; k < n; ++k) {
    const Job& job = plan.jobs[k];
    pptq::gguf::TensorInfo& t = f.tensors[job.tensor];
    const std::string tag = "[" + std::to_string(k + 1) + "/" + std::to_string(n) + "] " + t.name;
    const std::string from = pptq::ggml::type_name(t.type);
    say(o, tag + ": " + shape_str(static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0])) + " " +
               from + " -> " + fmt + (job.from_inputs ? " (H = X^T X)" : "") + " ...");
    const pptq::Matrix<float> W = decode_weight(t);
    const Eigen::MatrixXd H = load_hessian(job, t.name, W.cols());
    say(o, done_line(tag, requantize_tensor(t, W, H, o), o.refit));
  }
}

/// Reads, requantizes and writes. Returns the exit code; throws pptq's errors.
int run(const Options& o) {
  const auto t_start = Clock::now();
  if (o.threads > 0) Eigen::setNbThreads(o.threads);
  pptq::gguf::File f = load_model(o.model);
  const Plan plan = make_plan(f, o.hessians, o.format, o.allow_unused);
  for (const std::string& u : plan.unused) say(o, "ignoring " + u + ": it matches no tensor of the model");
  requantize_all(f, plan, o);
  try {
    pptq::gguf::write(f, o.output);
  } catch (const pptq::IoError& e) {
    throw pptq::IoError(std::string("cannot write the output: ") + e.what());
  }
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << "wrote " << o.output << ": " << plan.jobs.size() << " of " << f.tensors.size() << " tensors requantized to "
     << pptq::ggml::type_name(o.format) << " in " << std::chrono::duration<double>(Clock::now() - t_start).count()
     << " s";
  say(o, os.str());
  return pptq_tools::kExitOk;
}

// ------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------

struct RawOptions {
  Options opt;
  CLI::Option* o_damp = nullptr;
  bool no_refit = false;
};

void add_requantize_options(CLI::App& rq, RawOptions& raw) {
  Options& o = raw.opt;
  rq.option_defaults()->always_capture_default(false);
  rq.add_option("--model", o.model, "the input model")->required()->type_name("IN.gguf");
  rq.add_option("--hessians", o.hessians, "directory of <tensor name>.H.npy / <tensor name>.X.npy (float16, "
                                          "float32 or float64)")
      ->required()
      ->type_name("DIR");
  rq.add_option("--format", o.format_name, "q4_0 | q4_k | q3_k | q2_k | q8_0 | q5_0 | q5_k | q6_k | iq4_nl | iq4_xs")->required()->type_name("F");
  rq.add_option("--output", o.output, "the output model (written atomically)")->required()->type_name("OUT.gguf");
  raw.o_damp = rq.add_option("--damp", o.damp, "lambda = C * mean(diag H) (default 0.1, the library's ggml default)")
                   ->type_name("C");
  rq.add_flag("--no-refit", raw.no_refit, "do not refit the block scales after the sweep");
  rq.add_option("--threads", o.threads, "threads (0, the default: all); results do not depend on it")->type_name("T");
  rq.add_flag("--quiet", o.quiet, "no progress on stderr (errors are still reported)");
  rq.add_flag("--allow-unused", o.allow_unused, "ignore .npy files in DIR that name no tensor of the model");
}

void build_app(CLI::App& app, RawOptions& raw) {
  app.name(kProg);
  app.description("Requantize the linear layers of a GGUF model with OPTQ into llama.cpp's block formats.");
  app.set_version_flag("--version", std::string("pptq-gguf 0.1.0"));
  app.require_subcommand(1);
  CLI::App* rq = app.add_subcommand(
      "requantize",
      "Requantize every 2-d f32/f16 tensor NAME for which DIR holds NAME.H.npy (a cols x cols Hessian, any positive "
      "multiple of X^T X) or NAME.X.npy (samples x cols calibration inputs; H = X^T X) with OPTQ into the format; "
      "all other tensors and all metadata are copied unchanged. A linear layer W (out x in) is stored with "
      "ne = [in, out]; in must be a multiple of the block size (32 for q4_0, q5_0, q8_0, iq4_nl; 256 for the k-quants and iq4_xs).");
  add_requantize_options(*rq, raw);
  app.footer(
      "Exit codes: 0 success; 1 the output could not be written; 2 bad usage; 3 bad data (unreadable or malformed "
      "files, shape mismatch, NaN/Inf, a tensor that cannot be requantized); 4 numerical failure. On failure no "
      "output file is created or replaced.");
}

/// Cross-option checks that CLI11 cannot express; throws UsageError.
Options finish_options(const RawOptions& raw) {
  Options o = raw.opt;
  try {
    o.format = pptq::ggml::parse_type(o.format_name);
  } catch (const std::invalid_argument&) {
    throw UsageError("--format must be one of q4_0, q4_k, q3_k, q2_k, q8_0, q5_0, q5_k, q6_k, iq4_nl, iq4_xs, got '" + o.format_name + "'");
  }
  if (o.format == pptq::ggml::Type::F32 || o.format == pptq::ggml::Type::F16)
    throw UsageError("--format must be one of q4_0, q4_k, q3_k, q2_k, q8_0, q5_0, q5_k, q6_k, iq4_nl, iq4_xs (a block format), got '" + o.format_name + "'");
  if (!(o.damp >= 0) || !std::isfinite(o.damp))
    throw UsageError("--damp must be >= 0 and finite, got " + raw.o_damp->as<std::string>());
  if (o.threads < 0) throw UsageError("--threads must be >= 0 (0 = all), got " + std::to_string(o.threads));
  o.refit = !raw.no_refit;
  pptq_tools::require_writable_file("--output", o.output);
  return o;
}

}  // namespace
}  // namespace pptq_gguf

int main(int argc, char** argv) {
#ifdef PPTQ_WITH_LLAMA
  // calibrate and eval run llama.cpp (tools/llama/commands.hpp); each takes its own argument vector,
  // named "pptq-gguf COMMAND" in messages.
  if (argc >= 2 && (std::string(argv[1]) == "calibrate" || std::string(argv[1]) == "eval")) {
    const std::string cmd = argv[1], name = "pptq-gguf " + cmd;
    argv[1] = const_cast<char*>(name.c_str());
    return cmd == "calibrate" ? pptq_llama::calibrate_main(argc - 1, argv + 1) : pptq_llama::eval_main(argc - 1, argv + 1);
  }
#endif
  CLI::App app;
  pptq_gguf::RawOptions raw;
  pptq_gguf::build_app(app, raw);
  return pptq_tools::run_tool(pptq_gguf::kProg, app, argc, argv,
                              [&] { return pptq_gguf::run(pptq_gguf::finish_options(raw)); });
}
