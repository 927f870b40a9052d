// OPTQ against a GEMM of matching size, measured in the same binary (docs/performance.md).
//
// For a rows × cols layer with H given, pptq's OPTQ executes ≈ cols³/3 (Cholesky) + rows·cols² (sweep)
// FLOPs: the GFLOP/s counter. GPTQ's own algorithm also inverts the triangular factor (cols³/3 more);
// GFLOP/s_gptq counts that nominal work, which pptq does without. The matching GEMM is W·H (rows × cols ×
// cols, 2·rows·cols² FLOPs).
// Report ratios (OPTQ time / GEMM time) from one run: absolute times on a shared machine drift.
//
//   ./build/bench/pptq_bench --benchmark_filter='/768/|/4096/4096' --benchmark_counters_tabular=true
#include <pptq/pptq.hpp>

#include <pptq/ggml/grid.hpp>

#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>

namespace {

Eigen::MatrixXf random_weights(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  return Eigen::MatrixXf::NullaryExpr(rows, cols, [&] { return n(gen); });
}

// A Gram matrix with a realistic, decaying spectrum: H = G Gᵀ + εI with G cols × k (k = 256), plus a
// full-rank diagonal. Cheap to build at 11008 columns (cols²·k FLOPs) and positive definite.
template <typename Scalar>
pptq::Matrix<Scalar> random_gram(Eigen::Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  const Eigen::Index k = 256;
  Eigen::MatrixXf G = Eigen::MatrixXf::NullaryExpr(cols, k, [&] { return n(gen); });
  for (Eigen::Index j = 0; j < k; ++j) G.col(j) *= std::pow(0.98f, static_cast<float>(j));
  Eigen::MatrixXf Hf = Eigen::MatrixXf::Zero(cols, cols);
  Hf.selfadjointView<Eigen::Lower>().rankUpdate(G);
  Hf.triangularView<Eigen::StrictlyUpper>() = Hf.transpose();
  std::uniform_real_distribution<float> u(0.5f, 2.f);
  for (Eigen::Index j = 0; j < cols; ++j) Hf(j, j) += u(gen);
  return Hf.cast<Scalar>();
}

// Peak resident memory of the process so far (MiB). Meaningful per case when each case runs in its own
// process (bench/run_table.sh does that).
double peak_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

void set_flops(benchmark::State& state, double flops, double nominal = 0) {
  state.counters["peak_MiB"] = peak_mib();
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  if (nominal > 0)
    state.counters["GFLOP/s_gptq"] = benchmark::Counter(nominal / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Executed FLOPs of OPTQ (Cholesky + sweep) and GPTQ's nominal count (+ the triangular inverse).
double optq_flops(double rows, double n) { return n * n * n / 3.0 + rows * n * n; }
double gptq_flops(double rows, double n) { return 2.0 * n * n * n / 3.0 + rows * n * n; }

// The yardstick: W (rows × cols) times H (cols × cols), float.
void BM_Gemm(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  const Eigen::MatrixXf H = random_gram<float>(cols, 2);
  Eigen::MatrixXf C(rows, cols);
  for (auto _ : state) {
    C.noalias() = W * H;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  set_flops(state, 2.0 * double(rows) * double(cols) * double(cols));
}

#ifdef PPTQ_BLAS_ENABLED
// The yardstick on OpenBLAS when pptq's products run on it (include/pptq/detail/blas.hpp): the same W·H
// by sgemm on all threads (OpenBLAS's OpenMP build, called outside any parallel region). The faster of
// the two GEMMs is the fair yardstick: pptq's own products then run on OpenBLAS's kernels, one per thread.
void BM_GemmBlas(benchmark::State& state) {
  if (!pptq::detail::blas_active()) {
    state.SkipWithError("the OpenBLAS loaded is not its OpenMP build");
    return;
  }
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  const Eigen::MatrixXf H = random_gram<float>(cols, 2);
  Eigen::MatrixXf C(rows, cols);
  for (auto _ : state) {
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, int(rows), int(cols), int(cols), 1.0f, W.data(), int(rows),
                H.data(), int(cols), 0.0f, C.data(), int(rows));
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  set_flops(state, 2.0 * double(rows) * double(cols) * double(cols));
}
#endif

// OPTQ, 4-bit asymmetric per-row grid, act-order, default block size, H given in HScalar (the factor runs in it).
template <typename HScalar>
void BM_Optq(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  const pptq::Matrix<HScalar> H = random_gram<HScalar>(cols, 2);
  pptq::GridSpec grid;
  grid.bits = 4;
  pptq::OptqOptions opt;
  opt.keep_factor = false;
  for (auto _ : state) {
    auto r = pptq::optq(W, H, grid, opt);
    if (!r.ok()) state.SkipWithError(r.message.c_str());
    benchmark::DoNotOptimize(r.dequantized.data());
  }
  set_flops(state, optq_flops(double(rows), double(cols)), gptq_flops(double(rows), double(cols)));
}

// Stochastic OPTQ: the same engine with the Philox rounding policy.
void BM_OptqStochastic(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  const Eigen::MatrixXd H = random_gram<double>(cols, 2);
  pptq::GridSpec grid;
  pptq::OptqOptions opt;
  opt.keep_factor = false;
  opt.rounding = pptq::Rounding::Stochastic;
  opt.seed = 7;
  for (auto _ : state) {
    auto r = pptq::optq(W, H, grid, opt);
    benchmark::DoNotOptimize(r.dequantized.data());
  }
  set_flops(state, optq_flops(double(rows), double(cols)), gptq_flops(double(rows), double(cols)));
}

// Qronos (least-squares-then-OPTQ) from the two Grams H~ = X~ᵀX~ and G = X~ᵀX: λ_max, the correction
// W(G − H~)ᵀ (2·rows·N²), one triangular solve (rows·N²), factor and sweep (as OPTQ).
void BM_Qronos(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  const Eigen::MatrixXd Ht = random_gram<double>(cols, 2);
  const Eigen::MatrixXd G = Ht + 0.01 * random_gram<double>(cols, 4);
  pptq::GridSpec grid;
  pptq::QronosOptions opt;
  opt.keep_factor = false;
  for (auto _ : state) {
    auto r = pptq::qronos_from_grams(W, Ht, G, grid, opt);
    benchmark::DoNotOptimize(r.dequantized.data());
  }
  const double n = double(cols), m = double(rows);
  set_flops(state, optq_flops(m, n) + 3.0 * m * n * n);
}

// Qronos from a CorrectionGram: H~ and X~ᵀ(X − X~)Wᵀ kept during calibration (2048 samples, outside the
// timed loop), so the product with G is not needed: one triangular solve (rows·N²) on top of OPTQ's work.
void BM_QronosCorrection(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  const Eigen::MatrixXf X = random_weights(2048, cols, 5);
  const Eigen::MatrixXf Xq = X + 0.05f * random_weights(2048, cols, 6);
  pptq::CorrectionGram<double> cg;
  cg.add(W, X, Xq);
  pptq::GridSpec grid;
  pptq::QronosOptions opt;
  opt.keep_factor = false;
  for (auto _ : state) {
    auto r = pptq::qronos(W, cg, grid, opt);
    benchmark::DoNotOptimize(r.dequantized.data());
  }
  const double n = double(cols), m = double(rows);
  set_flops(state, optq_flops(m, n) + m * n * n);
}

// A method written into one of llama.cpp's formats (pptq/ggml/grid.hpp), against the same method's plain
// call (a 4-bit per-row grid) on the same W and H, timed in the same iteration: ratio_to_plain. The parts
// outside the sweep are reported apart: the format's grid fit, the refit with the codes fixed (OPTQ only,
// as quantize_optq does it), the packing into blocks with ggml's decode. Qronos runs from a CorrectionGram
// (2048 samples, outside the timed loop), fitted on diag(H̃) and packed, as pptq-quantize does it.
enum class Into { Optq, Stochastic, Qronos };

template <Into M>
void BM_Format(benchmark::State& state) {
  using Clock = std::chrono::steady_clock;
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const auto type = static_cast<pptq::ggml::Type>(state.range(2));
  const Eigen::MatrixXf W = random_weights(rows, cols, 1);
  Eigen::MatrixXd H;
  pptq::CorrectionGram<double> cg;
  if constexpr (M == Into::Qronos) {
    const Eigen::MatrixXf X = random_weights(2048, cols, 5);
    const Eigen::MatrixXf Xq = X + 0.05f * random_weights(2048, cols, 6);
    cg.add(W, X, Xq);
  } else {
    H = random_gram<double>(cols, 2);
  }
  pptq::OptqOptions po;
  po.keep_factor = false;
  if (M == Into::Stochastic) po.rounding = pptq::Rounding::Stochastic;
  pptq::QronosOptions qo;
  qo.keep_factor = false;
  pptq::ggml::QuantizeOptions fo;
  fo.optq.keep_factor = false;
  fo.optq.rounding = po.rounding;
  pptq::GridSpec plain_grid;
  plain_grid.bits = 4;
  double plain = 0, fit = 0, factor = 0, sweep = 0, refit = 0, pack = 0, total = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto t = Clock::now();
    if constexpr (M == Into::Qronos)
      benchmark::DoNotOptimize(pptq::qronos(W, cg, plain_grid, qo).dequantized.data());
    else
      benchmark::DoNotOptimize(pptq::optq(W, H, plain_grid, po).dequantized.data());
    plain += std::chrono::duration<double>(Clock::now() - t).count();
    state.ResumeTiming();
    t = Clock::now();
    if constexpr (M == Into::Qronos) {
      const auto t0 = Clock::now();
      const auto grid = pptq::ggml::fit_format_grid(W, type, Eigen::VectorXd(cg.htilde_lower().diagonal()));
      fit += std::chrono::duration<double>(Clock::now() - t0).count();
      auto r = pptq::qronos(W, cg, grid, qo);
      factor += r.seconds.factor;
      sweep += r.seconds.sweep;
      const auto t1 = Clock::now();
      benchmark::DoNotOptimize(pptq::ggml::to_bytes(r, type).data());
      pack += std::chrono::duration<double>(Clock::now() - t1).count();
    } else {
      auto q = pptq::ggml::quantize_optq(W, H, type, fo);
      fit += q.seconds.fit;
      factor += q.result.seconds.factor;
      sweep += q.result.seconds.sweep;
      refit += q.seconds.refit;
      pack += q.seconds.pack;
      benchmark::DoNotOptimize(q.bytes.data());
    }
    total += std::chrono::duration<double>(Clock::now() - t).count();
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["ratio_to_plain"] = total / plain;
  state.counters["fit_s"] = fit / n;
  state.counters["factor_s"] = factor / n;
  state.counters["sweep_s"] = sweep / n;
  state.counters["refit_s"] = refit / n;
  state.counters["pack_s"] = pack / n;
  state.counters["plain_s"] = plain / n;
  state.counters["peak_MiB"] = peak_mib();
  state.SetLabel(pptq::ggml::type_name(type));
}

// The streaming Gram: XᵀX of a float batch added into the double accumulator, as calibration adds batch
// after batch (the accumulator is allocated once, outside the timing; useful FLOPs: the lower half).
void BM_GramAdd(benchmark::State& state) {
  const Eigen::Index samples = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf X = random_weights(samples, cols, 3);
  pptq::Gram<double> g(cols);
  for (auto _ : state) {
    g.add(X);
    benchmark::DoNotOptimize(&g);
  }
  set_flops(state, double(samples) * double(cols) * double(cols));
}

// The yardstick for the Gram: the plain float GEMM XᵀX of the same batch (twice the useful FLOPs).
void BM_GramGemm(benchmark::State& state) {
  const Eigen::Index samples = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf X = random_weights(samples, cols, 3);
  Eigen::MatrixXf C(cols, cols);
  for (auto _ : state) {
    C.noalias() = X.transpose() * X;
    benchmark::DoNotOptimize(C.data());
  }
  set_flops(state, double(samples) * double(cols) * double(cols));
}

void layer_sizes(benchmark::internal::Benchmark* b) {
  b->Args({768, 768})->Args({4096, 4096})->Args({11008, 4096})->Args({4096, 11008});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();
}

}  // namespace

BENCHMARK(BM_Gemm)->Apply(layer_sizes);
#ifdef PPTQ_BLAS_ENABLED
BENCHMARK(BM_GemmBlas)->Apply(layer_sizes);
#endif
BENCHMARK_TEMPLATE(BM_Optq, double)->Apply(layer_sizes);
BENCHMARK_TEMPLATE(BM_Optq, float)->Apply(layer_sizes);
BENCHMARK(BM_OptqStochastic)->Apply(layer_sizes);
BENCHMARK(BM_Qronos)->Apply(layer_sizes);
BENCHMARK(BM_QronosCorrection)->Apply(layer_sizes);
// The formats at the two shapes of a llama-7B block's projections: q/k/v/o and gate/up (11008 × 4096).
void format_cases(benchmark::internal::Benchmark* b) {
  for (auto t : {pptq::ggml::Type::Q4_0, pptq::ggml::Type::Q4_K, pptq::ggml::Type::Q3_K, pptq::ggml::Type::Q2_K})
    for (Eigen::Index rows : {4096, 11008}) b->Args({rows, 4096, static_cast<int64_t>(t)});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
}
void q4k_cases(benchmark::internal::Benchmark* b) {
  b->Args({4096, 4096, static_cast<int64_t>(pptq::ggml::Type::Q4_K)})->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
}
BENCHMARK_TEMPLATE(BM_Format, Into::Optq)->Apply(format_cases);
BENCHMARK_TEMPLATE(BM_Format, Into::Stochastic)->Apply(q4k_cases);
BENCHMARK_TEMPLATE(BM_Format, Into::Qronos)->Apply(q4k_cases);
BENCHMARK(BM_GramAdd)->Args({2048, 768})->Args({2048, 4096})->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();
BENCHMARK(BM_GramGemm)->Args({2048, 768})->Args({2048, 4096})->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--backend") {  // what runs pptq's products (bench/run_table.sh)
    std::printf("%s\n", pptq::detail::blas_backend().c_str());
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("pptq_products", pptq::detail::blas_backend());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
