// A float or double matrix read in its own scalar type, with a double view made only when asked for.
//
// The layer report reads W and the result's Q (rows × N, float when the user's weights are) mostly in
// row reductions and a few sampled rows. Converting both to double up front touched two more
// layer-sized buffers, and on fresh pages their first touches cost more than every pass the report makes
// over them (docs/performance.md §4). The report's products with X or H, which need double operands,
// ask for the view; a double matrix is then read in place and a float one is converted once.
#pragma once

#include "../common.hpp"
#include "memory.hpp"

#include <Eigen/Core>

#include <optional>
#include <type_traits>

namespace pptq::detail {

/// A column-major float or double matrix as given (not owned: it must outlive the view).
class AnyMatrix {
 public:
  AnyMatrix() = default;
  /// Any column-major dense float or double matrix (Matrix, Map, Ref) with data() and outerStride().
  template <typename M>
  explicit AnyMatrix(const M& m) : rows_(m.rows()), cols_(m.cols()), stride_(m.outerStride()) {
    using T = typename M::Scalar;
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "AnyMatrix holds float or double");
    static_assert(!M::IsRowMajor, "AnyMatrix reads column-major storage");
    if constexpr (std::is_same_v<T, float>)
      f_ = m.data();
    else
      d_ = m.data();
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }

  /// fn(M) with M an Eigen::Map of the matrix in its own scalar type; fn returns the same type for both.
  template <typename Fn>
  auto visit(Fn&& fn) const {
    if (f_) return fn(Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>>(f_, rows_, cols_, Eigen::OuterStride<>(stride_)));
    return fn(Eigen::Map<const Eigen::MatrixXd, 0, Eigen::OuterStride<>>(d_, rows_, cols_, Eigen::OuterStride<>(stride_)));
  }

 private:
  const float* f_ = nullptr;
  const double* d_ = nullptr;
  Index rows_ = 0, cols_ = 0, stride_ = 0;
};

/// The double view of an AnyMatrix, made on the first call: the matrix itself when it is double, else a
/// converted copy on huge pages (memory.hpp). Not thread-safe.
class DoubleView {
 public:
  explicit DoubleView(AnyMatrix m) : m_(m) {}
  DoubleView(const DoubleView& o) : m_(o.m_) {}  // a copy starts without a view (none exists when copied)
  DoubleView& operator=(const DoubleView&) = delete;

  const AnyMatrix& source() const { return m_; }

  const Eigen::Ref<const Eigen::MatrixXd>& get() const {
    if (!ref_) {
      m_.visit([&](const auto& M) {
        using T = typename std::decay_t<decltype(M)>::Scalar;
        if constexpr (std::is_same_v<T, double>) {
          ref_.emplace(M);
        } else {
          copy_ = on_huge_pages<double>(M.rows(), M.cols());
          copy_ = M.template cast<double>();
          ref_.emplace(copy_);
        }
        return 0;
      });
    }
    return *ref_;
  }

 private:
  AnyMatrix m_;
  mutable Eigen::MatrixXd copy_;
  mutable std::optional<Eigen::Ref<const Eigen::MatrixXd>> ref_;
};

}  // namespace pptq::detail
