// Uses the installed pptq: quantizes a small random layer and checks OPTQ beats round-to-nearest.
#include <pptq/pptq.hpp>

#include <cstdio>

int main() {
  const Eigen::Index rows = 16, cols = 64, samples = 256;
  const Eigen::MatrixXd X = Eigen::MatrixXd::Random(samples, 4) * Eigen::MatrixXd::Random(4, cols) +
                            0.1 * Eigen::MatrixXd::Random(samples, cols);
  const Eigen::MatrixXf W = Eigen::MatrixXf::Random(rows, cols);
  pptq::GridSpec grid;
  grid.bits = 3;
  const auto r = pptq::optq(W, X.transpose() * X, grid);
  const auto rr = pptq::rtn(W, grid);
  const double e_optq = (X.cast<float>() * (W - r.dequantized).transpose()).norm();
  const double e_rtn = (X.cast<float>() * (W - rr.dequantized).transpose()).norm();
  std::printf("consumer: pptq %s, OPTQ error %.4g, RTN error %.4g\n", r.ok() ? "ok" : r.message.c_str(), e_optq, e_rtn);
  return r.ok() && e_optq < e_rtn ? 0 : 1;
}
