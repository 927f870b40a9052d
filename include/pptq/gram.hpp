// Streaming accumulation of the Gram matrix XᵀX over calibration batches (docs/theory.md §1, §7: GPTQ's
// `add_batch`).
//
// The three accumulators agree on their life cycle: add() accumulates (the first batch sets the
// width); reset() zeroes the sums and the sample count and keeps the width, for a new calibration pass;
// clear() frees the storage (0 columns, 0 samples), after which add() starts again at any width;
// require_samples() throws unless a batch was added. Handing one over to an algorithm (std::move)
// leaves it cleared.
//
// pptq keeps the plain sum XᵀX (not GPTQ's running mean (2/n)XᵀX): by scale invariance (docs/theory.md §1) the
// output is the same, and λ then means what the theory says (λ on the scale of XᵀX).
#pragma once

#include "common.hpp"
#include "detail/kernels.hpp"
#include "detail/memory.hpp"
#include "detail/mismatch.hpp"
#include "detail/parallel.hpp"

#include <cstdint>
#include <type_traits>
#include <vector>

namespace pptq {

namespace detail {

/// Reads and writes an accumulator's sums and sample count: defined by pptq/mpi.hpp, which combines the
/// partial sums of shards across processes in a fixed order (docs/mpi.md). Declared here, so that the
/// accumulators can befriend it without the core knowing MPI.
struct AccumulatorAccess;

/// acc (lower triangle) += AᵀB restricted to i ≥ j (A = B: the symmetric rank-k update), or the full
/// AᵀB (lower_only = false). The products run in the batch's own scalar (float batches at float speed)
/// over fixed column panels on all threads, each panel added into the accumulator's scalar (double by
/// default): the precision of double accumulation across batches, the speed of float products, and the
/// same bits for any thread count. Eigen's rankUpdate, by contrast, runs on one thread.
template <typename Acc, typename XS>
void add_products(Matrix<Acc>& acc, const Eigen::Ref<const Matrix<XS>>& A, const Eigen::Ref<const Matrix<XS>>& B,
                  bool lower_only, int threads) {
  const Index n = acc.cols();
  constexpr Index panel = 128;
  SerialEigenScope serial;
  // One panel buffer per thread, reused for its panels: a fresh one per panel faulted its pages in each time.
  std::vector<Matrix<XS>> buffers(static_cast<std::size_t>(std::max(threads, 1)));
  for_fixed_chunks(n, panel, threads, [&](Index c0, Index c1) {
    const Index w = c1 - c0;
    const Index r0 = lower_only ? c0 : 0;
    Matrix<XS>& buf = buffers[static_cast<std::size_t>(thread_index())];
    if (buf.size() == 0) buf.resize(n, std::min(panel, n));
    auto P = buf.topLeftCorner(n - r0, w);
    gemm_atb<XS>(P, A.rightCols(n - r0), B.middleCols(c0, w));
    if constexpr (std::is_same_v<Acc, XS>)
      acc.block(r0, c0, n - r0, w) += P;
    else
      acc.block(r0, c0, n - r0, w) += P.template cast<Acc>();
  });
}

/// The full symmetric matrix from an accumulator whose lower triangle is valid.
template <typename Scalar>
Matrix<Scalar> symmetric_from_lower(const Matrix<Scalar>& L) {
  Matrix<Scalar> H = L.template triangularView<Eigen::Lower>();
  H.template triangularView<Eigen::StrictlyUpper>() = L.transpose();
  return H;
}

/// A batch of the mismatched problem: X and Xq (X̃) must be the same samples and columns, and finite.
template <typename DX, typename DXq>
void require_batch_pair(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DXq>& Xq, const char* who) {
  if (X.rows() != Xq.rows() || X.cols() != Xq.cols())
    fail(std::string(who) + ": X is " + str(X.rows()) + " x " + str(X.cols()) + " but Xq is " + str(Xq.rows()) + " x " +
         str(Xq.cols()) + " (both must be samples x cols)");
  require_finite(X, "calibration batch X");
  require_finite(Xq, "calibration batch Xq");
}

/// The scalar a batch pair's products run in: float when both are float, double otherwise.
template <typename DX, typename DXq>
using batch_scalar_t = std::conditional_t<std::is_same_v<typename DX::Scalar, float> && std::is_same_v<typename DXq::Scalar, float>,
                                          float, double>;

}  // namespace detail

template <typename Scalar_ = double>
class Gram {
 public:
  using Scalar = Scalar_;

  Gram() = default;
  explicit Gram(Index cols) : H_(detail::zero_on_huge_pages<Scalar>(cols, cols)) {}

  /// Adds a batch X (samples × cols): H += XᵀX, by a symmetric rank-k update of the lower triangle.
  template <typename Derived>
  Gram& add(const Eigen::MatrixBase<Derived>& X) {
    if (H_.size() == 0 && samples_ == 0) H_ = detail::zero_on_huge_pages<Scalar>(X.cols(), X.cols());
    if (X.cols() != H_.cols())
      detail::fail("Gram::add: batch has " + detail::str(X.cols()) + " columns, the Gram has " + detail::str(H_.cols()));
    detail::require_finite(X, "calibration batch X");
    if (X.rows() == 0) return *this;
    using XS = std::conditional_t<std::is_same_v<typename Derived::Scalar, float>, float, double>;
    const Eigen::Ref<const Matrix<XS>> Xb(X.derived().template cast<XS>());
    detail::add_products<Scalar, XS>(H_, Xb, Xb, true, detail::resolve_threads(0));
    samples_ += X.rows();
    return *this;
  }

  Index cols() const { return H_.cols(); }
  std::int64_t samples() const { return samples_; }

  /// XᵀX as a full symmetric matrix (a copy).
  Matrix<Scalar> matrix() const { return detail::symmetric_from_lower(H_); }
  /// XᵀX by its lower triangle (the strict upper part holds no meaning): what optq() reads, no copy.
  const Matrix<Scalar>& lower() const { return H_; }

  void reset() {
    H_.setZero();
    samples_ = 0;
  }

  void clear() {
    H_.resize(0, 0);
    samples_ = 0;
  }

  /// Throws (UsageError) unless a batch was added; `who` names the call that needs the samples.
  void require_samples(const char* who) const {
    if (samples_ == 0) detail::fail(std::string(who) + ": the Gram accumulator holds no samples: add calibration batches first");
  }

  /// Gives up the accumulated matrix (its lower triangle is XᵀX): what optq(W, std::move(gram), ...)
  /// factors in place. The accumulator is left empty: 0 samples, 0 columns.
  Matrix<Scalar> release() && {
    samples_ = 0;
    Matrix<Scalar> h = std::move(H_);
    H_.resize(0, 0);
    return h;
  }

 private:
  friend struct detail::AccumulatorAccess;
  Matrix<Scalar> H_;  // lower triangle valid
  std::int64_t samples_ = 0;
};

/// Streaming accumulator for the mismatched problem of Qronos and GPFQ (docs/theory.md §5.1): over batches of the
/// same samples seen by the full-precision model (X) and by the quantized one (X̃, "Xq"), both
/// samples × cols, it keeps H̃ = X̃ᵀX̃ and the cross Gram G = X̃ᵀX, G(i, j) = ⟨X̃_i, X_j⟩ — plain sums,
/// λ on their scale (docs/theory.md §1).
template <typename Scalar_ = double>
class CrossGram {
 public:
  using Scalar = Scalar_;

  CrossGram() = default;
  explicit CrossGram(Index cols)
      : Ht_(detail::zero_on_huge_pages<Scalar>(cols, cols)), G_(detail::zero_on_huge_pages<Scalar>(cols, cols)) {}

  /// Adds a batch: X (full-precision inputs) and Xq (quantized-model inputs of the same samples).
  template <typename DX, typename DXq>
  CrossGram& add(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DXq>& Xq) {
    detail::require_batch_pair(X, Xq, "CrossGram::add");
    if (Ht_.size() == 0 && samples_ == 0) {
      Ht_ = detail::zero_on_huge_pages<Scalar>(X.cols(), X.cols());
      G_ = detail::zero_on_huge_pages<Scalar>(X.cols(), X.cols());
    }
    if (X.cols() != Ht_.cols())
      detail::fail("CrossGram::add: batch has " + detail::str(X.cols()) + " columns, the accumulator has " +
                   detail::str(Ht_.cols()));
    if (X.rows() == 0) return *this;
    using XS = detail::batch_scalar_t<DX, DXq>;
    const Eigen::Ref<const Matrix<XS>> Xb(X.derived().template cast<XS>());
    const Eigen::Ref<const Matrix<XS>> Xqb(Xq.derived().template cast<XS>());
    const int threads = detail::resolve_threads(0);
    detail::add_products<Scalar, XS>(Ht_, Xqb, Xqb, true, threads);
    detail::add_products<Scalar, XS>(G_, Xqb, Xb, false, threads);
    samples_ += X.rows();
    return *this;
  }

  Index cols() const { return Ht_.cols(); }
  std::int64_t samples() const { return samples_; }

  /// H̃ = X̃ᵀX̃ as a full symmetric matrix (a copy).
  Matrix<Scalar> htilde() const { return detail::symmetric_from_lower(Ht_); }
  /// H̃ by its lower triangle (the strict upper part holds no meaning): what qronos() reads, no copy.
  const Matrix<Scalar>& htilde_lower() const { return Ht_; }
  /// G = X̃ᵀX (not symmetric).
  const Matrix<Scalar>& cross() const { return G_; }

  void reset() {
    Ht_.setZero();
    G_.setZero();
    samples_ = 0;
  }

  void clear() {
    Ht_.resize(0, 0);
    G_.resize(0, 0);
    samples_ = 0;
  }

  void require_samples(const char* who) const {
    if (samples_ == 0)
      detail::fail(std::string(who) + ": the CrossGram accumulator holds no samples: add calibration batches first");
  }

  /// Gives up H̃'s storage, for qronos(W, std::move(grams), ...), which factors it in place and clears
  /// the accumulator when done.
  Matrix<Scalar> release_htilde() && { return std::move(Ht_); }

 private:
  friend struct detail::AccumulatorAccess;
  Matrix<Scalar> Ht_;  // lower triangle valid
  Matrix<Scalar> G_;
  std::int64_t samples_ = 0;
};

/// Streaming accumulator for Qronos when the layer's weights W (rows × cols) are known at calibration
/// time, as they are when layers are quantized in order: it keeps H̃ = X̃ᵀX̃ and the correction
/// X̃ᵀ(X − X̃)Wᵀ = (G − H̃)Wᵀ (cols × rows) instead of the cols × cols cross Gram G. Qronos then skips its
/// largest product (W·(G − H̃)ᵀ, 2·rows·cols² FLOPs), and the accumulator holds cols × rows numbers
/// instead of cols × cols (docs/theory.md §5.4: the memory-saving form). (X − X̃)Wᵀ is the difference of the
/// layer's outputs on the two inputs, which a calibration loop often has at hand anyway.
template <typename Scalar_ = double>
class CorrectionGram {
 public:
  using Scalar = Scalar_;

  /// Adds a batch for the layer's weights W: X (full-precision inputs) and Xq (quantized-model inputs of
  /// the same samples), both samples × cols. W must be the same at every call (checked).
  template <typename DW, typename DX, typename DXq>
  CorrectionGram& add(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DXq>& Xq) {
    detail::require_batch_pair(X, Xq, "CorrectionGram::add");
    if (W.cols() != X.cols())
      detail::fail("CorrectionGram::add: W has " + detail::str(W.cols()) + " columns, the batch " + detail::str(X.cols()));
    detail::require_nonempty(W, "W");
    detail::require_finite(W, "W");
    if (samples_ == 0) {  // the first batch (also after reset or clear) sets W
      Ht_ = detail::zero_on_huge_pages<Scalar>(W.cols(), W.cols());
      C_.setZero(W.cols(), W.rows());
      fingerprint_ = fingerprint(W);
    } else {
      require_matches(W);
    }
    if (X.rows() == 0) return *this;
    using XS = detail::batch_scalar_t<DX, DXq>;
    const Eigen::Ref<const Matrix<XS>> Xb(X.derived().template cast<XS>());
    const Eigen::Ref<const Matrix<XS>> Xqb(Xq.derived().template cast<XS>());
    const Matrix<XS> Wx = W.derived().template cast<XS>();
    const int threads = detail::resolve_threads(0);
    detail::add_products<Scalar, XS>(Ht_, Xqb, Xqb, true, threads);
    // (X − X̃)Wᵀ (samples × rows), then X̃ᵀ·that over fixed column panels of the result.
    const Matrix<XS> D = detail::rowwise_product<XS>(Xb, W.rows(), threads, [&](Index r0, Index r1) {
      return Matrix<XS>((Xb.middleRows(r0, r1 - r0) - Xqb.middleRows(r0, r1 - r0)) * Wx.transpose());
    });
    detail::SerialEigenScope serial;
    detail::for_fixed_chunks(W.rows(), 128, threads, [&](Index c0, Index c1) {
      const Matrix<XS> P = Xqb.transpose() * D.middleCols(c0, c1 - c0);
      C_.middleCols(c0, c1 - c0) += P.template cast<Scalar>();
    });
    samples_ += X.rows();
    return *this;
  }

  Index cols() const { return Ht_.cols(); }
  Index rows() const { return C_.cols(); }
  std::int64_t samples() const { return samples_; }

  /// H̃ = X̃ᵀX̃ as a full symmetric matrix (a copy).
  Matrix<Scalar> htilde() const { return detail::symmetric_from_lower(Ht_); }
  /// H̃ by its lower triangle (the strict upper part holds no meaning): what qronos() reads, no copy.
  const Matrix<Scalar>& htilde_lower() const { return Ht_; }
  /// X̃ᵀ(X − X̃)Wᵀ (cols × rows).
  const Matrix<Scalar>& correction() const { return C_; }

  /// Throws unless W is the matrix the batches were added for (shape and a weighted checksum).
  template <typename DW>
  void require_matches(const Eigen::MatrixBase<DW>& W) const {
    require_samples("qronos");
    if (W.rows() != C_.cols() || W.cols() != Ht_.cols())
      detail::fail("W is " + detail::str(W.rows()) + " x " + detail::str(W.cols()) + " but the CorrectionGram was built for a " +
                   detail::str(C_.cols()) + " x " + detail::str(Ht_.cols()) + " W");
    const double f = fingerprint(W);
    if (!(std::abs(f - fingerprint_) <= 1e-12 * std::max(1.0, std::abs(fingerprint_))))
      detail::fail("W differs from the W the CorrectionGram's batches were added for (its correction depends on W)");
  }

  /// Zeroes the sums; the next batch sets W again (the correction depends on W).
  void reset() {
    Ht_.setZero();
    C_.setZero();
    samples_ = 0;
  }

  void clear() {
    Ht_.resize(0, 0);
    C_.resize(0, 0);
    samples_ = 0;
  }

  void require_samples(const char* who) const {
    if (samples_ == 0)
      detail::fail(std::string(who) + ": the CorrectionGram holds no samples: add calibration batches first");
  }

  /// Gives up H̃'s storage, for qronos(W, std::move(grams), ...), which factors it in place and clears
  /// the accumulator when done.
  Matrix<Scalar> release_htilde() && { return std::move(Ht_); }

 private:
  /// A weighted checksum uᵀWv with fixed weights that differ across rows and columns (one vectorized
  /// pass): catches a different W, a transposed or reordered one, without keeping a copy.
  template <typename DW>
  static double fingerprint(const Eigen::MatrixBase<DW>& W) {
    const Eigen::VectorXd u = Eigen::VectorXd::NullaryExpr(W.rows(), [](Index i) { return 1.0 + static_cast<double>((i * 7) % 11) / 16; });
    const Eigen::VectorXd v = Eigen::VectorXd::NullaryExpr(W.cols(), [](Index j) { return 1.0 + static_cast<double>((j * 5) % 13) / 32; });
    double s = 0;
    for (Index j = 0; j < W.cols(); ++j) s += v(j) * u.dot(W.col(j).template cast<double>());
    return s;
  }

  friend struct detail::AccumulatorAccess;
  Matrix<Scalar> Ht_;  // lower triangle valid
  Matrix<Scalar> C_;   // cols × rows
  std::int64_t samples_ = 0;
  double fingerprint_ = 0;
};

}  // namespace pptq
