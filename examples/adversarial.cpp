// The adversarial example of docs/theory.md §4.4: X = H_N/√N (Sylvester Hadamard), w = (½ − ε)δ·1. Deterministic
// OPTQ leaves an l∞ output error (½ − ε)δ√N — growing like √N — while stochastic OPTQ stays within
// δ·sqrt(½ log(2N/η))·C∞, growing like √log N.
#include <pptq/bounds.hpp>
#include <pptq/pptq.hpp>

#include <cmath>
#include <cstdio>

int main() {
  const double eta = 0.05;
  std::printf("%6s %16s %16s %22s %16s\n", "N", "deterministic", "(1/2-eps)d*sqrtN", "stochastic (max of 10)", "stochastic bound");
  for (Eigen::Index N : {64, 256, 1024}) {
    const pptq::AdversarialExample ex = pptq::adversarial_example(N, 1.0, 0.05);
    const Eigen::MatrixXd H = ex.X.transpose() * ex.X;
    pptq::GridSpec grid;
    grid.alphabet = pptq::Alphabet::Infinite;
    grid.delta = ex.delta;
    pptq::OptqOptions o;
    o.act_order = false;
    const auto det = pptq::optq(ex.W, H, grid, o);
    const double det_linf = (ex.X * (ex.W - det.dequantized).transpose()).cwiseAbs().maxCoeff();
    double sto_linf = 0, bound = 0;
    for (int seed = 0; seed < 10; ++seed) {
      o.rounding = pptq::Rounding::Stochastic;
      o.seed = static_cast<std::uint64_t>(seed);
      const auto sto = pptq::optq(ex.W, H, grid, o);
      pptq::ReportOptions ro;
      ro.eta = eta;
      const pptq::LayerReport rep = pptq::layer_report(sto, ex.W, ex.X, ro);
      sto_linf = std::max(sto_linf, *rep.err_linf);
      if (rep.linf.bound) bound = *rep.linf.bound;
    }
    std::printf("%6lld %16.3f %16.3f %22.3f %16.3f\n", (long long)N, det_linf, ex.deterministic_linf(), sto_linf, bound);
  }
  return 0;
}
