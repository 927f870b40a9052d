#include "heldout.hpp"

#include "cli_common.hpp"

#include <pptq/gram.hpp>

namespace pptq_tools {

Eigen::MatrixXd split_gram(const Eigen::MatrixXd& X, bool held_out, const std::string& what) {
  auto taken = [&](Eigen::Index i) { return (i % kHeldOutEvery == kHeldOutEvery - 1) == held_out; };
  Eigen::Index n = 0;
  for (Eigen::Index i = 0; i < X.rows(); ++i) n += taken(i);
  Eigen::MatrixXd part(n, X.cols());
  for (Eigen::Index i = 0, k = 0; i < X.rows(); ++i)
    if (taken(i)) part.row(k++) = X.row(i);
  pptq::Gram<double> g(X.cols());
  g.add(part);
  require_finite_gram(g.lower(), nullptr, "X^T X of " + what);
  return g.matrix();
}

}  // namespace pptq_tools
