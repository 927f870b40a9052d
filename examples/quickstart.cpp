// pptq quick start: quantize one synthetic layer to 4 bits with round-to-nearest and with OPTQ, and
// compare the output error ‖X(W − Q)‖_F / ‖XW‖_F that each leaves on held-out inputs.
//
// The layer is the shape of a small transformer projection (256 outputs × 512 inputs); the inputs X
// have strongly correlated features, as real activations do — that correlation is what OPTQ's error
// feedback exploits (docs/theory.md §2).
#include <pptq/pptq.hpp>

#include <cmath>
#include <cstdio>
#include <random>

namespace {

// Samples × cols inputs with correlated features: X = Z·M + noise, the mixing M (rank × cols) shared by
// calibration and held-out samples (the same distribution), a few dominant directions.
Eigen::MatrixXf correlated_inputs(Eigen::Index samples, const Eigen::MatrixXf& M, std::mt19937& gen) {
  std::normal_distribution<float> n(0.f, 1.f);
  Eigen::MatrixXf Z = Eigen::MatrixXf::NullaryExpr(samples, M.rows(), [&] { return n(gen); });
  Eigen::MatrixXf noise = Eigen::MatrixXf::NullaryExpr(samples, M.cols(), [&] { return 0.3f * n(gen); });
  return Z * M + noise;
}

double relative_output_error(const Eigen::MatrixXf& X, const Eigen::MatrixXf& W, const Eigen::MatrixXf& Q) {
  return static_cast<double>((X * (W - Q).transpose()).norm() / (X * W.transpose()).norm());
}

}  // namespace

int main() {
  std::mt19937 gen(2026);
  std::normal_distribution<float> n(0.f, 1.f);
  const Eigen::Index rows = 256, cols = 512;
  Eigen::MatrixXf W = Eigen::MatrixXf::NullaryExpr(rows, cols, [&] { return 0.02f * n(gen); });
  const Eigen::MatrixXf M = Eigen::MatrixXf::NullaryExpr(cols / 8, cols, [&] { return n(gen); });
  Eigen::MatrixXf X_calib = correlated_inputs(2048, M, gen);
  Eigen::MatrixXf X_test = correlated_inputs(1024, M, gen);

  // Calibration: stream XᵀX in batches (any positive multiple of XᵀX would do, docs/theory.md §1).
  pptq::Gram<double> gram(cols);
  for (Eigen::Index b = 0; b < X_calib.rows(); b += 512) gram.add(X_calib.middleRows(b, 512));

  pptq::GridSpec grid;
  grid.bits = 4;
  grid.symmetric = false;
  grid.group_size = -1;
  grid.static_groups = false;
  pptq::OptqOptions opt;
  opt.damp = 0.01;
  opt.act_order = true;
  opt.block_size = 128;

  const auto r = pptq::optq(W, gram, grid, opt);
  if (!r.ok()) {
    std::fprintf(stderr, "OPTQ failed: %s\n", r.message.c_str());
    return 1;
  }
  const auto baseline = pptq::rtn(W, grid);

  std::printf("layer %lld x %lld, 4-bit asymmetric per-row grid, %lld calibration samples\n",
              static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(gram.samples()));
  std::printf("lambda used: %.4g (damp 0.01 of mean diag(X^T X)), status: %s\n", r.lambda, pptq::to_string(r.status));
  std::printf("GPTQ proxy loss: %.6g\n", r.proxy_loss);
  // A small table: each method's relative output error on the calibration and on held-out samples, and
  // the certificate of the theory (docs/theory.md §3.1, docs/bounds.md): ‖X(W−Q)ᵀ‖² + λ‖W−Q‖² = Σ e²/L², exact on the
  // calibration set, so its square root bounds the calibration error.
  pptq::OptqOptions so = opt;
  so.rounding = pptq::Rounding::Stochastic;
  so.seed = 1;
  const auto rs = pptq::optq(W, gram, grid, so);
  std::printf("\n%-16s %14s %14s %16s\n", "method", "calib. error", "held-out error", "certificate");
  struct Row {
    const char* name;
    const Eigen::MatrixXf* Q;
    const Eigen::VectorXd* energy;
  };
  for (const Row& row : {Row{"rtn", &baseline.dequantized, nullptr}, Row{"optq", &r.dequantized, &r.energy},
                         Row{"optq-stochastic", &rs.dequantized, &rs.energy}}) {
    const double calib = relative_output_error(X_calib, W, *row.Q);
    const double held = relative_output_error(X_test, W, *row.Q);
    const double cert = row.energy ? std::sqrt(row.energy->sum()) / static_cast<double>((X_calib * W.transpose()).norm()) : 0.0;
    if (row.energy)
      std::printf("%-16s %14.4f %14.4f %16.4f\n", row.name, calib, held, cert);
    else
      std::printf("%-16s %14.4f %14.4f %16s\n", row.name, calib, held, "-");
  }
  std::printf("(errors relative to ||XW^T||_F; certificate = sqrt(||X(W-Q)^T||^2 + lambda ||W-Q||^2), same scale)\n\n");
  const double e_rtn = relative_output_error(X_test, W, baseline.dequantized);
  const double e_optq = relative_output_error(X_test, W, r.dequantized);
  std::printf("first row, first 8 codes:");
  for (Eigen::Index j = 0; j < 8; ++j) std::printf(" %d", r.codes(0, j));
  std::printf("   scale %.5g  zero %.0f\n", static_cast<double>(r.scales()(0, 0)), static_cast<double>(r.zeros()(0, 0)));
  return e_optq < e_rtn ? 0 : 1;
}
