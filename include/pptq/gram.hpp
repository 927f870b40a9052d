// Streaming accumulation of the Gram matrix XᵀX over calibration batches (spec §1, §7 `add_batch`).
//
// pptq keeps the plain sum XᵀX (not GPTQ's running mean (2/n)XᵀX): by scale invariance (spec §1) the
// output is the same, and λ then means what the theory says (λ on the scale of XᵀX).
#pragma once

#include "common.hpp"

#include <cstdint>

namespace pptq {

template <typename Scalar_ = double>
class Gram {
 public:
  using Scalar = Scalar_;

  Gram() = default;
  explicit Gram(Index cols) : H_(Matrix<Scalar>::Zero(cols, cols)) {}

  /// Adds a batch X (samples × cols): H += XᵀX, by a symmetric rank-k update of the lower triangle.
  template <typename Derived>
  Gram& add(const Eigen::MatrixBase<Derived>& X) {
    if (H_.size() == 0 && samples_ == 0) H_.setZero(X.cols(), X.cols());
    if (X.cols() != H_.cols())
      detail::fail("Gram::add: batch has " + detail::str(X.cols()) + " columns, the Gram has " + detail::str(H_.cols()));
    detail::require_finite(X, "calibration batch X");
    if (X.rows() == 0) return *this;
    H_.template selfadjointView<Eigen::Lower>().rankUpdate(X.transpose().template cast<Scalar>());
    samples_ += X.rows();
    return *this;
  }

  Index cols() const { return H_.cols(); }
  std::int64_t samples() const { return samples_; }

  /// XᵀX as a full symmetric matrix.
  Matrix<Scalar> matrix() const {
    Matrix<Scalar> H = H_.template triangularView<Eigen::Lower>();
    H.template triangularView<Eigen::StrictlyUpper>() = H_.transpose();
    return H;
  }

  void reset() {
    H_.setZero();
    samples_ = 0;
  }

 private:
  Matrix<Scalar> H_;  // lower triangle valid
  std::int64_t samples_ = 0;
};

/// Streaming accumulator for the mismatched problem of Qronos and GPFQ (spec §5.1): over batches of the
/// same samples seen by the full-precision model (X) and by the quantized one (X̃, "Xq"), both
/// samples × cols, it keeps H̃ = X̃ᵀX̃ and the cross Gram G = X̃ᵀX, G(i, j) = ⟨X̃_i, X_j⟩ — plain sums,
/// λ on their scale (spec §1).
template <typename Scalar_ = double>
class CrossGram {
 public:
  using Scalar = Scalar_;

  CrossGram() = default;
  explicit CrossGram(Index cols) : Ht_(Matrix<Scalar>::Zero(cols, cols)), G_(Matrix<Scalar>::Zero(cols, cols)) {}

  /// Adds a batch: X (full-precision inputs) and Xq (quantized-model inputs of the same samples).
  template <typename DX, typename DXq>
  CrossGram& add(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DXq>& Xq) {
    if (X.rows() != Xq.rows() || X.cols() != Xq.cols())
      detail::fail("CrossGram::add: X is " + detail::str(X.rows()) + " x " + detail::str(X.cols()) + " but Xq is " +
                   detail::str(Xq.rows()) + " x " + detail::str(Xq.cols()) + " (both must be samples x cols)");
    if (Ht_.size() == 0 && samples_ == 0) {
      Ht_.setZero(X.cols(), X.cols());
      G_.setZero(X.cols(), X.cols());
    }
    if (X.cols() != Ht_.cols())
      detail::fail("CrossGram::add: batch has " + detail::str(X.cols()) + " columns, the accumulator has " +
                   detail::str(Ht_.cols()));
    detail::require_finite(X, "calibration batch X");
    detail::require_finite(Xq, "calibration batch Xq");
    if (X.rows() == 0) return *this;
    const Matrix<Scalar> Xs = X.template cast<Scalar>();
    const Matrix<Scalar> Xqs = Xq.template cast<Scalar>();
    Ht_.template selfadjointView<Eigen::Lower>().rankUpdate(Xqs.transpose());
    G_.noalias() += Xqs.transpose() * Xs;
    samples_ += X.rows();
    return *this;
  }

  Index cols() const { return Ht_.cols(); }
  std::int64_t samples() const { return samples_; }

  /// H̃ = X̃ᵀX̃ as a full symmetric matrix.
  Matrix<Scalar> htilde() const {
    Matrix<Scalar> H = Ht_.template triangularView<Eigen::Lower>();
    H.template triangularView<Eigen::StrictlyUpper>() = Ht_.transpose();
    return H;
  }
  /// G = X̃ᵀX (not symmetric).
  const Matrix<Scalar>& cross() const { return G_; }

  void reset() {
    Ht_.setZero();
    G_.setZero();
    samples_ = 0;
  }

 private:
  Matrix<Scalar> Ht_;  // lower triangle valid
  Matrix<Scalar> G_;
  std::int64_t samples_ = 0;
};

}  // namespace pptq
