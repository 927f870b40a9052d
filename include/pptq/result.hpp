// The result every algorithm returns. It owns plain Eigen matrices only: nothing here needs the factor's
// kernels (factor.hpp turns the kept factor into GPTQ's U for the bounds).
#pragma once

#include "common.hpp"
#include "grid.hpp"

#include <memory>
#include <string>
#include <vector>

namespace pptq {

enum class Method { RTN, OPTQ, Qronos, GPFQ };

inline const char* to_string(Method m) {
  switch (m) {
    case Method::RTN: return "rtn";
    case Method::OPTQ: return "optq";
    case Method::Qronos: return "qronos";
    case Method::GPFQ: return "gpfq";
  }
  return "unknown";
}

/// Wall-clock seconds of a call's parts, for reports (never read by the arithmetic). factor: the
/// factorization of H + λI with any damping escalation (0 for methods without a factor); sweep: the rest.
struct Timings {
  double factor = 0, sweep = 0;
};

template <typename Scalar_>
struct QuantResult {
  using Scalar = Scalar_;

  Method method = Method::OPTQ;
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;

  Matrix<Scalar> dequantized;  ///< rows × cols, original column order: the quantized weights Q
  MatrixXi32 codes;            ///< rows × cols: Q(i, j) = grid.lattice(i, j).value(codes(i, j))
  Grid<Scalar> grid;           ///< scales, zero points (and mins), group of every column, code range
  std::vector<Index> perm;     ///< sweep order: perm[k] = original column quantized at step k

  double lambda = 0;                 ///< λ actually used, on the scale of the H given (docs/theory.md §1)
  std::vector<double> lambda_tried;  ///< every λ tried (more than one when damping was escalated)
  double lambda_max = 0;             ///< Qronos with α-damping: λ_max(X̃ᵀX̃) by power iteration (0 otherwise)
  Status status = Status::Success;
  std::string message;               ///< empty on plain success; says what happened otherwise

  /// GPTQ's printed `error`: Σ_rows ½ Σ_t e_t²/U_tt² = Σ_rows ½ (w−q)ᵀ(H + λI)(w−q) on the scale of
  /// the H given (docs/theory.md §3.1, §7 step 8).
  double proxy_loss = 0;
  /// Per row: Σ_t e_t²/L_tt², which equals ‖X(w−q)‖² + λ‖w−q‖² exactly (docs/theory.md §3.1 (iv)): the
  /// a-posteriori certificate. Empty for methods without a factor (RTN, GPFQ).
  Eigen::VectorXd energy;
  Eigen::VectorXd Ltt;               ///< L_tt = U_tt = 1/V_tt in sweep order (empty without a factor)
  Eigen::VectorXi clipped;           ///< per row: rounding arguments that fell outside the grid's range
  /// The factor the sweep used, kept when options.keep_factor (empty for RTN and GPFQ): the unit upper
  /// triangular S with H_π + λI = VVᵀ, V = S·diag(Ltt)⁻¹, in sweep order (detail/sweep.hpp). A view of
  /// storage the result shares; inverse_factor(result) (factor.hpp) gives GPTQ's U from it.
  std::shared_ptr<const Eigen::Map<Matrix<Scalar>>> factor;
  Timings seconds;  ///< where the call's time went

  bool ok() const { return status != Status::NumericalIssue; }
  Index rows() const { return dequantized.rows(); }
  Index cols() const { return dequantized.cols(); }
  const Matrix<Scalar>& scales() const { return grid.scale; }
  const Matrix<Scalar>& zeros() const { return grid.zero; }
  const VectorXi32& group_index() const { return grid.group_index; }
  Index clipped_total() const { return clipped.size() ? static_cast<Index>(clipped.sum()) : 0; }
};

}  // namespace pptq
