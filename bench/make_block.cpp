// pptq_make_block: a synthetic transformer block shaped like llama-7B's, as a GGUF model and one Hessian per
// weight, for timing `pptq-gguf requantize` on the shapes a real model has (bench/requantize_block.sh).
//
//   pptq_make_block --out-dir DIR [--seed S] [--scale F] [--blocks N] [--h-dtype f32|f64]
//
// writes DIR/block.gguf (F16 weights blk.<b>.attn_q/attn_k/attn_v/attn_output/ffn_gate/ffn_up/ffn_down.weight,
// the F32 vectors blk.<b>.attn_norm.weight and blk.<b>.ffn_norm.weight, general.* and llama.* metadata) and
// DIR/hessians/<weight name>.H.npy (cols × cols). Every dimension is 4096 or 11008 times --scale, rounded to a
// multiple of 256 (the k-quants' super-block, docs/formats.md §1) and at least 256. Everything follows from
// --seed alone: every row has its own generator, so the files do not depend on the thread count.
//
// Why the data is representative of what OPTQ meets in a real llama-7B block (and cheap to make):
// - Weights: Student-t with 5 degrees of freedom, standard deviation 0.02 (the order of llama-7B's linear
//   weights), each row with its own log-normal scale. The heavy tail puts an occasional large weight in a
//   block, which widens the range the format fit must cover (docs/formats.md §3) as real weights do.
// - Hessians H = XᵀX: a real H is dominated by a few directions (its spectrum decays fast), its diagonal
//   spreads over orders of magnitude between input channels, and the inputs of q/k/v and gate/up (RMSNorm
//   outputs of the residual stream) carry a handful of outlier channels tens of times larger than the rest
//   (LLM.int8(), arXiv 2208.07339). We build X as k ≪ cols pseudo-samples: a mean row (activations are not
//   centred), then rows of decaying weight 1/√t (a power-law spectrum), every column scaled by its channel's
//   log-normal scale and the outliers' gain; then H = XᵀX + a diagonal floor (the bulk of the many real
//   samples, which makes H positive definite like a Gram of ≫ cols samples). That is k·cols² FLOPs (one
//   symmetric rank-k update, pptq::Gram) instead of the samples·cols² of a calibration set of 10⁵ tokens.
//   Its condition number before damping grows with the width (10⁴ for attn_output's input to 5·10⁶ for
//   ffn_down's at a quarter of llama's widths), ill-conditioned as real Grams are, so the damping and the
//   factor do the work they do on a real model.
// - Like a real block, the weights that read the same input share one Hessian: q, k and v the attention
//   norm's output, gate and up the FFN norm's (the files are hard links, one H each, as a calibration run
//   would produce identical Grams); attn_output and ffn_down have their own inputs, milder and wider.
#include <pptq/ggml/blocks.hpp>
#include <pptq/ggml/half.hpp>
#include <pptq/detail/parallel.hpp>
#include <pptq/gram.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using pptq::Index;

struct Options {
  std::string out_dir;
  std::uint64_t seed = 1;
  double scale = 1.0;
  int blocks = 1;
  bool h_double = false;
};

/// llama-7B's widths times the scale, rounded to whole super-blocks.
struct Dims {
  Index model = 4096, ff = 11008;
};

Index scaled(double n, double scale) {
  const double k = std::round(n * scale / 256.0);
  return static_cast<Index>(std::max(1.0, k)) * 256;
}

/// A 64-bit mix of a key and a stream (splitmix64's finalizer): every row, tensor and block its own seed.
std::uint64_t mix(std::uint64_t key, std::uint64_t stream) {
  std::uint64_t z = key + 0x9e3779b97f4a7c15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// rows × cols heavy-tailed weights (see the header comment) as F16 bytes, rows one after the other.
std::vector<std::uint8_t> f16_weights(Index rows, Index cols, std::uint64_t key) {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(rows * cols) * 2);
  const float t_std = std::sqrt(5.0f / 3.0f);  // a t(5) variable's standard deviation
  pptq::detail::for_row_chunks(rows, pptq::detail::resolve_threads(0), [&](Index r0, Index r1) {
    for (Index i = r0; i < r1; ++i) {
      std::mt19937_64 gen(mix(key, static_cast<std::uint64_t>(i)));
      std::student_t_distribution<float> t(5.0f);
      std::normal_distribution<float> n(0.f, 1.f);
      const float s = 0.02f / t_std * std::exp(0.2f * n(gen));
      std::uint8_t* p = out.data() + static_cast<std::size_t>(i * cols) * 2;
      for (Index j = 0; j < cols; ++j) {
        const std::uint16_t h = pptq::ggml::float_to_half(s * t(gen));
        p[2 * j] = static_cast<std::uint8_t>(h & 0xff);
        p[2 * j + 1] = static_cast<std::uint8_t>(h >> 8);
      }
    }
  });
  return out;
}

/// How the inputs of one kind of weight look (header comment): channel scales log-normal(0, sigma), a few
/// outlier channels `gain` times larger, a mean row of weight `mean`.
struct InputModel {
  double sigma, outliers_per_4096, gain, mean;
};
const InputModel kNormOutput{0.6, 4, 30, 1.0};   // into q, k, v and gate, up: the residual stream, normed
const InputModel kAttnOutput{0.3, 1, 5, 0.2};    // into attn_output: the heads' mixed values
const InputModel kFfnHidden{0.8, 2, 10, 0.3};    // into ffn_down: SiLU(gate) · up

/// Every input channel's scale, outliers included.
Eigen::VectorXf channel_scales(Index cols, const InputModel& m, std::uint64_t key) {
  std::mt19937_64 gen(mix(key, 0));
  std::normal_distribution<float> n(0.f, 1.f);
  Eigen::VectorXf s(cols);
  for (Index j = 0; j < cols; ++j) s[j] = std::exp(static_cast<float>(m.sigma) * n(gen));
  const Index n_out = std::max<Index>(1, static_cast<Index>(std::lround(m.outliers_per_4096 * cols / 4096.0)));
  std::uniform_int_distribution<Index> pick(0, cols - 1);
  for (Index k = 0; k < n_out; ++k) s[pick(gen)] *= static_cast<float>(m.gain);
  return s;
}

/// H = XᵀX + floor (header comment), cols × cols, double.
Eigen::MatrixXd synthetic_hessian(Index cols, const InputModel& m, std::uint64_t key) {
  const Eigen::VectorXf s = channel_scales(cols, m, key);
  const Index k = std::clamp<Index>(cols / 4, 16, 256);
  Eigen::MatrixXf X(k, cols);
  pptq::detail::for_row_chunks(k, pptq::detail::resolve_threads(0), [&](Index r0, Index r1) {
    for (Index t = r0; t < r1; ++t) {
      std::mt19937_64 gen(mix(key, static_cast<std::uint64_t>(t) + 1));
      std::normal_distribution<float> n(0.f, 1.f);
      for (Index j = 0; j < cols; ++j)
        X(t, j) = t == 0 ? s[j] * static_cast<float>(m.mean) * (1.f + 0.3f * n(gen))
                         : s[j] * n(gen) / std::sqrt(static_cast<float>(t));
    }
  });
  pptq::Gram<double> g(cols);
  g.add(X);
  Eigen::MatrixXd H = g.matrix();
  for (Index j = 0; j < cols; ++j) H(j, j) += 0.5 * static_cast<double>(s[j]) * static_cast<double>(s[j]);
  return H;
}

/// Writes H as DIR/NAME.H.npy and links the other names that share it to the same file.
void write_hessian(const Eigen::MatrixXd& H, const std::string& dir, const std::vector<std::string>& names,
                   bool as_double) {
  const std::string first = dir + "/" + names.front() + ".H.npy";
  if (as_double)
    pptq::io::write_npy(first, H);
  else
    pptq::io::write_npy(first, Eigen::MatrixXf(H.cast<float>()));
  for (std::size_t i = 1; i < names.size(); ++i) {
    const std::string p = dir + "/" + names[i] + ".H.npy";
    std::error_code ec;
    fs::remove(p, ec);
    fs::create_hard_link(first, p, ec);
    if (ec) fs::copy_file(first, p, fs::copy_options::overwrite_existing);  // a file system without links
  }
}

/// One weight: its name, shape (out × in) and which Hessian it reads.
struct WeightSpec {
  const char* name;
  Index rows, cols;
  int input;  ///< 0 attention norm, 1 attention output, 2 FFN norm, 3 FFN hidden
};

std::vector<WeightSpec> block_weights(const Dims& d) {
  return {{"attn_q", d.model, d.model, 0},  {"attn_k", d.model, d.model, 0}, {"attn_v", d.model, d.model, 0},
          {"attn_output", d.model, d.model, 1}, {"ffn_gate", d.ff, d.model, 2}, {"ffn_up", d.ff, d.model, 2},
          {"ffn_down", d.model, d.ff, 3}};
}

/// A norm vector: F32 values around 1 (RMSNorm gains).
std::vector<std::uint8_t> norm_vector(Index n, std::uint64_t key) {
  std::mt19937_64 gen(mix(key, 0));
  std::normal_distribution<float> g(1.f, 0.1f);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(n) * 4);
  for (Index j = 0; j < n; ++j) {
    const float v = g(gen);
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    for (int b = 0; b < 4; ++b) out[static_cast<std::size_t>(4 * j + b)] = static_cast<std::uint8_t>(u >> (8 * b));
  }
  return out;
}

void add_metadata(pptq::gguf::File& f, const Dims& d, int blocks) {
  const auto u32 = [](Index x) { return static_cast<std::uint32_t>(x); };
  f.set("general.architecture", "llama");
  f.set("general.name", "pptq synthetic llama-7B-shaped block");
  f.set("general.file_type", std::uint32_t(1));  // llama.cpp's MOSTLY_F16
  f.set("llama.context_length", std::uint32_t(4096));
  f.set("llama.embedding_length", u32(d.model));
  f.set("llama.block_count", static_cast<std::uint32_t>(blocks));
  f.set("llama.feed_forward_length", u32(d.ff));
  f.set("llama.rope.dimension_count", std::uint32_t(128));
  f.set("llama.attention.head_count", u32(d.model / 128));
  f.set("llama.attention.head_count_kv", u32(d.model / 128));
  f.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
}

/// Block b's tensors into f and its four Hessians into hdir.
void add_block(pptq::gguf::File& f, const Dims& d, int b, const Options& o, const std::string& hdir) {
  const std::string pre = "blk." + std::to_string(b) + ".";
  const std::uint64_t key = mix(o.seed, static_cast<std::uint64_t>(b));
  const std::vector<WeightSpec> ws = block_weights(d);
  const auto u64 = [](Index x) { return static_cast<std::uint64_t>(x); };
  f.add_tensor(pre + "attn_norm.weight", {u64(d.model)}, pptq::ggml::Type::F32, norm_vector(d.model, mix(key, 100)));
  for (std::size_t i = 0; i < ws.size(); ++i) {
    const WeightSpec& w = ws[i];
    f.add_tensor(pre + w.name + ".weight", {u64(w.cols), u64(w.rows)}, pptq::ggml::Type::F16,
                 f16_weights(w.rows, w.cols, mix(key, 200 + i)));
    if (i == 3) f.add_tensor(pre + "ffn_norm.weight", {u64(d.model)}, pptq::ggml::Type::F32, norm_vector(d.model, mix(key, 101)));
  }
  const InputModel* models[4] = {&kNormOutput, &kAttnOutput, &kNormOutput, &kFfnHidden};
  for (int input = 0; input < 4; ++input) {
    std::vector<std::string> names;
    Index cols = 0;
    for (const WeightSpec& w : ws)
      if (w.input == input) names.push_back(pre + w.name + ".weight"), cols = w.cols;
    const Eigen::MatrixXd H = synthetic_hessian(cols, *models[input], mix(key, 300 + static_cast<std::uint64_t>(input)));
    write_hessian(H, hdir, names, o.h_double);
  }
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "pptq_make_block: " << why
            << "\nusage: pptq_make_block --out-dir DIR [--seed S] [--scale F] [--blocks N] [--h-dtype f32|f64]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(a + " needs a value");
    const std::string v = argv[++i];
    char* end = nullptr;
    if (a == "--out-dir") o.out_dir = v;
    else if (a == "--seed") o.seed = std::strtoull(v.c_str(), &end, 10);
    else if (a == "--scale") o.scale = std::strtod(v.c_str(), &end);
    else if (a == "--blocks") o.blocks = static_cast<int>(std::strtol(v.c_str(), &end, 10));
    else if (a == "--h-dtype" && (v == "f32" || v == "f64")) o.h_double = v == "f64";
    else usage("unknown option or value: " + a + " " + v);
    if (end && *end) usage("not a number: " + a + " " + v);
  }
  if (o.out_dir.empty()) usage("--out-dir is required");
  if (!(o.scale > 0 && o.scale <= 4)) usage("--scale must be in (0, 4]");
  if (o.blocks < 1 || o.blocks > 64) usage("--blocks must be in 1..64");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const Dims d{scaled(4096, o.scale), scaled(11008, o.scale)};
  try {
    const std::string hdir = o.out_dir + "/hessians";
    fs::create_directories(hdir);
    pptq::gguf::File f;
    add_metadata(f, d, o.blocks);
    for (int b = 0; b < o.blocks; ++b) add_block(f, d, b, o, hdir);
    pptq::gguf::write(f, o.out_dir + "/block.gguf");
    std::printf("wrote %s/block.gguf (%d block(s), d_model %lld, d_ff %lld) and %s/*.H.npy\n", o.out_dir.c_str(),
                o.blocks, static_cast<long long>(d.model), static_cast<long long>(d.ff), hdir.c_str());
  } catch (const std::exception& e) {
    std::cerr << "pptq_make_block: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
