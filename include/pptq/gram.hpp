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

}  // namespace pptq
