// The level-3 products of the factor and the sweep, on OpenBLAS when pptq is built with it
// (PPTQ_USE_BLAS, set by the CMake target pptq::blas: cmake/pptqBlas.cmake), on Eigen's kernels
// otherwise. The sweep and the factor spend most of their time in such products, and OpenBLAS's kernels
// are faster per core than Eigen's (docs/performance.md has the figures).
//
// Every call runs on ONE thread, from inside pptq's own fixed chunks (detail/parallel.hpp,
// detail/kernels.hpp), so the result is the same for any thread count, as with Eigen's kernels. That
// needs OpenBLAS's OpenMP build (Debian: libopenblas-openmp-dev), checked at run time:
//  - inside an OpenMP parallel region it runs on the calling thread, and it is safe to call from several
//    threads at once;
//  - the sequential build is not: its buffers are not locked, and concurrent calls gave wrong factors;
//  - the pthread build splits a product by its own thread count, and its spinning workers compete with
//    pptq's threads.
// With any other build the calls below stay on Eigen. With and without OpenBLAS the results agree up to
// floating-point reassociation (the suite runs both ways: .ci/run).
#pragma once

#include "../common.hpp"

#include <initializer_list>
#include <limits>
#include <string>

#if defined(PPTQ_USE_BLAS) && defined(_OPENMP)
#define PPTQ_BLAS_ENABLED 1
#include <cblas.h>
#include <omp.h>
#endif

namespace pptq::detail {

/// True when the products below run on OpenBLAS: pptq was compiled with it (and with OpenMP), and the
/// library loaded at run time is the OpenMP build (openblas_get_parallel() == 2; the loader may pick
/// another build than the one linked, e.g. through Debian's alternatives).
inline bool blas_active() {
#ifdef PPTQ_BLAS_ENABLED
  static const bool openmp = openblas_get_parallel() == 2;
  return openmp;
#else
  return false;
#endif
}

/// What runs the products, for reports: "Eigen", or "OpenBLAS 0.3.21 (OpenMP build)".
inline std::string blas_backend() {
#ifdef PPTQ_BLAS_ENABLED
  std::string v = OPENBLAS_VERSION;  // " OpenBLAS 0.3.21 "
  while (!v.empty() && v.back() == ' ') v.pop_back();
  while (!v.empty() && v.front() == ' ') v.erase(v.begin());
  if (blas_active()) return v + " (OpenMP build)";
  return "Eigen (the OpenBLAS loaded is not its OpenMP build, so it is not used)";
#else
  return "Eigen";
#endif
}

#ifdef PPTQ_BLAS_ENABLED
// Whether a product of m × n × k with these leading dimensions goes to OpenBLAS. Products this small
// stay on Eigen: the BLAS call's overhead is not worth it, and small cases keep exactly the arithmetic of
// the Eigen build. So does any product with a dimension or leading dimension beyond BLAS's int (a
// matrix of over 2³¹ − 1 rows): Eigen's kernels take it, instead of an exception thrown inside a
// parallel region, where it would end the process.
inline bool blas_worth(Index m, Index n, Index k, std::initializer_list<Index> strides) {
  constexpr Index most = std::numeric_limits<int>::max();
  if (!blas_active() || m > most || n > most || k > most) return false;
  for (Index s : strides)
    if (s > most) return false;
  return static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) >= 32.0 * 32 * 32;
}

// Outside a parallel region the OpenMP build would use omp_get_max_threads() threads: one, for the same
// bits at any thread count (inside pptq's regions it runs on the calling thread anyway).
class BlasOneThread {
 public:
  BlasOneThread() : set_(!omp_in_parallel()), saved_(set_ ? omp_get_max_threads() : 1) {
    if (set_) omp_set_num_threads(1);
  }
  ~BlasOneThread() {
    if (set_) omp_set_num_threads(saved_);
  }
  BlasOneThread(const BlasOneThread&) = delete;
  BlasOneThread& operator=(const BlasOneThread&) = delete;

 private:
  bool set_;
  int saved_;
};

inline void blas_gemm(CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                      int ldb, float* c, int ldc) {
  BlasOneThread one;
  cblas_sgemm(CblasColMajor, CblasNoTrans, tb, m, n, k, alpha, a, lda, b, ldb, 1.0f, c, ldc);
}
inline void blas_gemm(CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                      int ldb, double* c, int ldc) {
  BlasOneThread one;
  cblas_dgemm(CblasColMajor, CblasNoTrans, tb, m, n, k, alpha, a, lda, b, ldb, 1.0, c, ldc);
}
inline void blas_gemm_tn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  BlasOneThread one;
  cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}
inline void blas_gemm_tn(int m, int n, int k, const double* a, int lda, const double* b, int ldb, double* c, int ldc) {
  BlasOneThread one;
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc);
}
inline void blas_trsm(CBLAS_TRANSPOSE ta, CBLAS_DIAG diag, int m, int n, const float* a, int lda, float* b, int ldb) {
  BlasOneThread one;
  cblas_strsm(CblasColMajor, CblasRight, CblasUpper, ta, diag, m, n, 1.0f, a, lda, b, ldb);
}
inline void blas_trsm(CBLAS_TRANSPOSE ta, CBLAS_DIAG diag, int m, int n, const double* a, int lda, double* b, int ldb) {
  BlasOneThread one;
  cblas_dtrsm(CblasColMajor, CblasRight, CblasUpper, ta, diag, m, n, 1.0, a, lda, b, ldb);
}
inline void blas_syrk(int n, int k, float alpha, const float* a, int lda, float* c, int ldc) {
  BlasOneThread one;
  cblas_ssyrk(CblasColMajor, CblasUpper, CblasNoTrans, n, k, alpha, a, lda, 1.0f, c, ldc);
}
inline void blas_syrk(int n, int k, double alpha, const double* a, int lda, double* c, int ldc) {
  BlasOneThread one;
  cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, n, k, alpha, a, lda, 1.0, c, ldc);
}
// A size blas_worth has checked fits in int.
inline int blas_int(Index v) { return static_cast<int>(v); }
#endif

/// C += sign·A·B (sign = +1 or −1); A m × k, B k × n.
template <typename Scalar>
void gemm_acc(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A,
              const Eigen::Ref<const Matrix<Scalar>>& B, int sign = 1) {
#ifdef PPTQ_BLAS_ENABLED
  if (blas_worth(C.rows(), C.cols(), A.cols(), {A.outerStride(), B.outerStride(), C.outerStride()})) {
    blas_gemm(CblasNoTrans, blas_int(C.rows()), blas_int(C.cols()), blas_int(A.cols()), static_cast<Scalar>(sign),
              A.data(), blas_int(A.outerStride()), B.data(), blas_int(B.outerStride()), C.data(),
              blas_int(C.outerStride()));
    return;
  }
#endif
  if (sign > 0)
    C.noalias() += A * B;
  else
    C.noalias() -= A * B;
}

/// C −= A·Bᵀ; A m × k, B n × k.
template <typename Scalar>
void gemm_sub_abt(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A,
                  const Eigen::Ref<const Matrix<Scalar>>& B) {
#ifdef PPTQ_BLAS_ENABLED
  if (blas_worth(C.rows(), C.cols(), A.cols(), {A.outerStride(), B.outerStride(), C.outerStride()})) {
    blas_gemm(CblasTrans, blas_int(C.rows()), blas_int(C.cols()), blas_int(A.cols()), Scalar(-1), A.data(),
              blas_int(A.outerStride()), B.data(), blas_int(B.outerStride()), C.data(), blas_int(C.outerStride()));
    return;
  }
#endif
  C.noalias() -= A * B.transpose();
}

/// C = Aᵀ·B (overwritten; C must be A.cols() × B.cols()); A k × m, B k × n. The Gram's panels (gram.hpp).
template <typename Scalar>
void gemm_atb(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A,
              const Eigen::Ref<const Matrix<Scalar>>& B) {
#ifdef PPTQ_BLAS_ENABLED
  if (blas_worth(C.rows(), C.cols(), A.rows(), {A.outerStride(), B.outerStride(), C.outerStride()})) {
    blas_gemm_tn(blas_int(C.rows()), blas_int(C.cols()), blas_int(A.rows()), A.data(), blas_int(A.outerStride()), B.data(),
                 blas_int(B.outerStride()), C.data(), blas_int(C.outerStride()));
    return;
  }
#endif
  C.noalias() = A.transpose() * B;
}

/// Upper triangle of C −= A·Aᵀ (C n × n, A n × k); C's strict lower triangle is not written.
template <typename Scalar>
void syrk_sub_upper_block(Eigen::Ref<Matrix<Scalar>> C, const Eigen::Ref<const Matrix<Scalar>>& A) {
#ifdef PPTQ_BLAS_ENABLED
  if (blas_worth(C.rows(), C.cols(), A.cols(), {A.outerStride(), C.outerStride()})) {
    blas_syrk(blas_int(C.rows()), blas_int(A.cols()), Scalar(-1), A.data(), blas_int(A.outerStride()), C.data(),
              blas_int(C.outerStride()));
    return;
  }
#endif
  C.template triangularView<Eigen::Upper>() -= A * A.transpose();
}

/// The triangular-solve kernel itself (see trsm_right_upper).
template <typename Scalar>
void trsm_right_upper_kernel(const Eigen::Ref<const Matrix<Scalar>>& T, Eigen::Ref<Matrix<Scalar>> B, bool transposed,
                             bool unit) {
  if (B.rows() == 0 || B.cols() == 0) return;
#ifdef PPTQ_BLAS_ENABLED
  if (blas_worth(B.rows(), B.cols(), B.cols(), {T.outerStride(), B.outerStride()})) {
    blas_trsm(transposed ? CblasTrans : CblasNoTrans, unit ? CblasUnit : CblasNonUnit, blas_int(B.rows()),
              blas_int(B.cols()), T.data(), blas_int(T.outerStride()), B.data(), blas_int(B.outerStride()));
    return;
  }
#endif
  if (transposed && unit)
    T.transpose().template triangularView<Eigen::UnitLower>().template solveInPlace<Eigen::OnTheRight>(B);
  else if (transposed)
    T.transpose().template triangularView<Eigen::Lower>().template solveInPlace<Eigen::OnTheRight>(B);
  else if (unit)
    T.template triangularView<Eigen::UnitUpper>().template solveInPlace<Eigen::OnTheRight>(B);
  else
    T.template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(B);
}

/// Triangles of at most this many columns go to the triangular-solve kernel; larger ones are split so
/// that the bulk of the work becomes GEMMs: the kernel runs below the GEMM rate (docs/performance.md).
constexpr Index trsm_leaf = 128;

/// B ← B·T⁻ᵀ (transposed) or B ← B·T⁻¹, for T upper triangular (unit: its diagonal taken as ones, not
/// read). B m × n, T n × n. On one thread, recursively: with T = [P Q; 0 R] and B = [B1 B2],
///   B·T⁻ᵀ: X2 = B2·R⁻ᵀ, then X1 = (B1 − X2·Qᵀ)·P⁻ᵀ;
///   B·T⁻¹: X1 = B1·P⁻¹, then X2 = (B2 − X1·Q)·R⁻¹.
/// Only T's upper triangle is read (Q lies above the diagonal), and a unit T's diagonal is not.
template <typename Scalar>
void trsm_right_upper(const Eigen::Ref<const Matrix<Scalar>>& T, Eigen::Ref<Matrix<Scalar>> B, bool transposed,
                      bool unit) {
  const Index n = T.rows();
  if (n <= trsm_leaf || B.rows() == 0) {
    trsm_right_upper_kernel<Scalar>(T, B, transposed, unit);
    return;
  }
  const Index h = (n / 2 + 63) / 64 * 64, r = n - h;  // n > 128, so 64 <= h < n
  const auto P = T.topLeftCorner(h, h), Q = T.topRightCorner(h, r), R = T.bottomRightCorner(r, r);
  if (transposed) {
    trsm_right_upper<Scalar>(R, B.rightCols(r), true, unit);
    gemm_sub_abt<Scalar>(B.leftCols(h), B.rightCols(r), Q);
    trsm_right_upper<Scalar>(P, B.leftCols(h), true, unit);
  } else {
    trsm_right_upper<Scalar>(P, B.leftCols(h), false, unit);
    gemm_acc<Scalar>(B.rightCols(r), B.leftCols(h), Q, -1);
    trsm_right_upper<Scalar>(R, B.rightCols(r), false, unit);
  }
}

}  // namespace pptq::detail
