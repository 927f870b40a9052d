// pptq_block_bench: the plain OPTQ call on every weight of a GGUF model that has a Hessian, timed one by one:
// the yardstick against which bench/requantize_block.sh puts `pptq-gguf requantize` (docs/performance.md).
//
//   pptq_block_bench --model block.gguf --hessians DIR [--format q4_k] [--only SUBSTRING] [--no-keep-factor]
//
// For every 2-d tensor NAME with DIR/NAME.H.npy: W decoded to float, H read as double, then
// pptq::optq(W, H, grid, opt) with GPTQ's 4-bit asymmetric per-row grid and the options of the format path
// (pptq::ggml::QuantizeOptions::default_optq(): the same damp and act-order as `pptq-gguf requantize`), so
// the two differ only by what the format adds (its fit, refit and packing, docs/performance.md §4). Only the
// call is timed, not reading the files. With --format, the format path's call
// pptq::ggml::quantize_optq(W, H, type) is timed too, with its parts. --only keeps the tensors whose names
// contain SUBSTRING (one tensor's peak memory in a process of its own); --no-keep-factor drops the factor
// from both calls' results (OptqOptions::keep_factor), to see what keeping it costs in peak memory.
//
// Output: one line per tensor, then "sum_plain_s S" (and "sum_format_s S") and "peak_MiB M" for scripts.
#include <pptq/ggml/blocks.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/optq.hpp>

#include <Eigen/Core>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

using pptq::Index;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model, hessians;
  std::optional<pptq::ggml::Type> format;
  std::string only;
  bool keep_factor = true;
};

/// The format path's OPTQ options (the same damp and act-order as `pptq-gguf requantize`).
pptq::OptqOptions optq_options(const Options& o) {
  pptq::OptqOptions opt = pptq::ggml::QuantizeOptions::default_optq();
  opt.keep_factor = o.keep_factor;
  return opt;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double peak_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

/// W (rows = ne[1], cols = ne[0]) decoded to float.
pptq::Matrix<float> decode(const pptq::gguf::TensorInfo& t) {
  const auto cols = static_cast<Index>(t.ne[0]), rows = static_cast<Index>(t.ne[1]);
  const std::size_t rb = pptq::ggml::row_bytes(t.type, cols);
  pptq::Matrix<float> W(rows, cols);
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (Index i = 0; i < rows; ++i) {
    pptq::ggml::dequantize_row(t.type, t.data.data() + static_cast<std::size_t>(i) * rb, cols, row.data());
    for (Index j = 0; j < cols; ++j) W(i, j) = row[static_cast<std::size_t>(j)];
  }
  return W;
}

/// The plain call: 4-bit per-row grid, the format path's OPTQ options. Seconds; exits on a failed sweep.
double time_plain(const pptq::Matrix<float>& W, const Eigen::MatrixXd& H, const std::string& name, const Options& o) {
  pptq::GridSpec grid;
  grid.bits = 4;
  const pptq::OptqOptions opt = optq_options(o);
  const auto t0 = Clock::now();
  const auto r = pptq::optq(W, H, grid, opt);
  const double s = seconds_since(t0);
  if (!r.ok()) {
    std::cerr << "pptq_block_bench: " << name << ": " << r.message << "\n";
    std::exit(4);
  }
  return s;
}

/// The format path's call, with its parts printed after the plain time. Seconds.
double time_format(const pptq::Matrix<float>& W, const Eigen::MatrixXd& H, double plain, const Options& o) {
  pptq::ggml::QuantizeOptions qo;
  qo.optq = optq_options(o);
  const auto t0 = Clock::now();
  const auto q = pptq::ggml::quantize_optq(W, H, *o.format, qo);
  const double s = seconds_since(t0);
  std::printf("  %8.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6.1fx", s, q.seconds.fit, q.result.seconds.factor,
              q.result.seconds.sweep, q.seconds.refit, q.seconds.pack, s / plain);
  return s;
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "pptq_block_bench: " << why
            << "\nusage: pptq_block_bench --model M.gguf --hessians DIR [--format TYPE] [--only SUBSTRING] "
               "[--no-keep-factor]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-keep-factor") {
      o.keep_factor = false;
      continue;
    }
    if (i + 1 >= argc) usage(a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--model") o.model = v;
    else if (a == "--hessians") o.hessians = v;
    else if (a == "--format") o.format = pptq::ggml::parse_type(v);
    else if (a == "--only") o.only = v;
    else usage("unknown option " + a);
  }
  if (o.model.empty() || o.hessians.empty()) usage("--model and --hessians are required");
  return o;
}

int run(const Options& o) {
  const pptq::gguf::File f = pptq::gguf::read(o.model);
  std::printf("# %-30s %13s %8s", "tensor", "rows x cols", "plain_s");
  if (o.format)
    std::printf("  %8s %6s %6s %6s %6s %6s %7s", (std::string(pptq::ggml::type_name(*o.format)) + "_s").c_str(), "fit",
                "factor", "sweep", "refit", "pack", "ratio");
  std::printf("\n");
  double sum_plain = 0, sum_format = 0;
  for (const auto& t : f.tensors) {
    const std::string hp = o.hessians + "/" + t.name + ".H.npy";
    if (t.ne.size() != 2 || !std::filesystem::exists(hp) || t.name.find(o.only) == std::string::npos) continue;
    const pptq::Matrix<float> W = decode(t);
    const Eigen::MatrixXd H = pptq::io::read_npy_matrix<double>(hp);
    const double plain = time_plain(W, H, t.name, o);
    sum_plain += plain;
    std::printf("  %-30s %6lld x %-5lld %8.3f", t.name.c_str(), static_cast<long long>(W.rows()),
                static_cast<long long>(W.cols()), plain);
    if (o.format) sum_format += time_format(W, H, plain, o);
    std::printf("\n");
    std::fflush(stdout);
  }
  std::printf("sum_plain_s %.3f\n", sum_plain);
  if (o.format) std::printf("sum_format_s %.3f\nratio %.2f\n", sum_format, sum_format / sum_plain);
  std::printf("peak_MiB %.0f\n", peak_mib());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "pptq_block_bench: " << e.what() << "\n";
    return 1;
  }
}
