// Error and bound against λ (docs/theory.md §3.5): OPTQ at λ = c·‖X‖_F²/N for c from 1e-5 to 10, measured on the
// calibration samples and on held-out samples, next to the l2 bound (δ/2)·C2 of the theory. Writes
// lambda_sweep.csv and, when gnuplot is installed, lambda_sweep.png (both curves on log axes).
//
//   ./build/examples/pptq_lambda_sweep [output-directory]
#include <pptq/lambda_sweep.hpp>
#include <pptq/pptq.hpp>

#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n(0.0, 1.0);
  const Eigen::Index rows = 64, cols = 256, rank = 24;
  const Eigen::MatrixXd M = Eigen::MatrixXd::NullaryExpr(rank, cols, [&] { return n(rng); });
  auto inputs = [&](Eigen::Index m) {
    Eigen::MatrixXd X = Eigen::MatrixXd::NullaryExpr(m, rank, [&] { return n(rng); }) * M +
                        0.3 * Eigen::MatrixXd::NullaryExpr(m, cols, [&] { return n(rng); });
    X.col(5) *= 10;  // an outlier channel
    return X;
  };
  const Eigen::MatrixXd X = inputs(384);  // few samples per column: λ matters on new data
  const Eigen::MatrixXd X_test = inputs(2048);
  const Eigen::MatrixXd W = Eigen::MatrixXd::NullaryExpr(rows, cols, [&] { return 0.05 * n(rng); });

  // The paper's alphabet δZ with a δ per row (δ = max|w|/K, K = 3 as for 3 bits): nothing clips, so the
  // bound applies at every λ (with a min/max grid, small λ lets weights drift past the grid: docs/theory.md §3.4).
  pptq::GridSpec grid;
  grid.bits = 3;
  grid.alphabet = pptq::Alphabet::Infinite;
  const std::vector<double> cs = {1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10};
  const pptq::LambdaGuide guide = pptq::lambda_sweep(W, X, X_test, grid, pptq::OptqOptions{}, cs);

  const std::string csv = dir + "/lambda_sweep.csv";
  std::ofstream out(csv);
  // Errors per sample (RMS over samples, ‖·‖_F/√m), so calibration and held-out sets of different sizes compare.
  const double sc = 1.0 / std::sqrt(static_cast<double>(X.rows())), st = 1.0 / std::sqrt(static_cast<double>(X_test.rows()));
  out << "c,lambda,C2,Cw,bound_per_sample,calibration_error_per_sample,heldout_error_per_sample,clipped\n";
  std::printf("per-sample output error ||X(W-Q)^T||_F / sqrt(samples)\n");
  std::printf("%10s %12s %12s %12s %12s %12s %8s\n", "c", "lambda", "bound", "calib.err", "heldout.err", "C2", "clipped");
  for (const auto& p : guide.points) {
    out << p.c << ',' << p.lambda << ',' << p.C2 << ',' << p.Cw << ',' << (p.bound ? std::to_string(*p.bound * sc) : "")
        << ',' << p.measured * sc << ',' << (p.heldout ? *p.heldout * st : 0.0) << ',' << p.clipped << '\n';
    std::printf("%10.0e %12.4g %12s %12.4g %12.4g %12.4g %8lld\n", p.c, p.lambda,
                p.bound ? std::to_string(*p.bound * sc).c_str() : "n/a", p.measured * sc, p.heldout ? *p.heldout * st : 0.0,
                p.C2, (long long)p.clipped);
  }
  out.close();
  std::printf("recommended: c = %g (lambda = %.4g) — %s\nwrote %s\n", guide.c, guide.lambda, guide.rule.c_str(), csv.c_str());

  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
    const std::string png = dir + "/lambda_sweep.png";
    const std::string script = dir + "/lambda_sweep.gp";
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,560 noenhanced\n"
       << "set output '" << png << "'\n"
       << "set datafile separator ','\n"
       << "set logscale xy\nset key top left\nset grid\nset format x '%.0e'\n"
       << "set xlabel 'c  (lambda = c * ||X||_F^2 / N)'\nset ylabel 'output error per sample, ||X (W - Q)^T||_F / sqrt(m)'\n"
       << "set title 'OPTQ on dZ with a 3-bit step, 64 x 256 layer, 384 calibration samples: error and bound against lambda'\n"
       << "plot '" << csv << "' skip 1 using 1:5 with linespoints lw 2 title 'l2 bound (delta/2) C2, per calibration sample', "
       << "'' skip 1 using 1:6 with linespoints lw 2 title 'measured, calibration samples', "
       << "'' skip 1 using 1:7 with linespoints lw 2 title 'measured, held-out samples'\n";
    gp.close();
    if (std::system(("gnuplot '" + script + "'").c_str()) == 0) std::printf("wrote %s\n", png.c_str());
    else std::printf("gnuplot failed; the CSV is complete\n");
  } else {
    std::printf("gnuplot not installed (apt-get install gnuplot-nox): no PNG, the CSV is complete\n");
  }
  return 0;
}
