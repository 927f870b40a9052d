// The one sweep engine (architecture.md): every algorithm of pptq is this loop over the columns of W,
// differing only in (a) the factor U it is given, (b) the start point, (c) the rounding policy and
// (d) the lattices of the grid. A second copy of this loop anywhere is a design bug.
//
// Column form (spec §2): for t = 1..N, q_t = Q(w_t), e_t = w_t − q_t, w ← w − (e_t / U_tt)·U_{t,:}
// (U = Lᵀ). Blocked lazy form (GPTQ Algorithm 1, spec §2): inside a block of B columns the updates
// are rank-1; the columns after the block receive one GEMM per block. Both give the same result in
// exact arithmetic; tests/test_optq.cpp checks identical codes against the plain column loop.
//
// Rows are independent, so the engine runs fixed chunks of rows (detail/parallel.hpp) through the whole
// sweep: a chunk's working copy (chunk × N) is the only large temporary, and the result is identical
// for any thread count.
#pragma once

#include "../common.hpp"
#include "../grid.hpp"
#include "parallel.hpp"
#include "philox.hpp"

#include <atomic>
#include <functional>
#include <vector>

namespace pptq::detail {

template <typename Scalar>
struct SweepInput {
  const Eigen::Ref<const Matrix<Scalar>>* start = nullptr;  ///< rows × N start point, ORIGINAL column order
  const Matrix<Scalar>* U = nullptr;          ///< upper factor in sweep order; nullptr: no feedback (RTN)
  const std::vector<Index>* perm = nullptr;   ///< perm[k] = original column at sweep step k
  const std::vector<bool>* zero_cols = nullptr;  ///< original columns whose start value is 0 (dead columns)
  const Vector<Scalar>* first_argument = nullptr;  ///< optional: per row, the value rounded at step 0
                                                   ///< instead of the current weight (Qronos §5.2/5.3)
  /// What drives the feedback: the rounding error e_t (OPTQ, Qronos: w ← w − (e_t/U_tt)·U_{t,:}) or the
  /// rounded value itself (GPFQ in its Gram form, spec §8: v ← v − q_t·M_{t,:}, see gpfq.hpp).
  bool feedback_value = false;
  Index block_size = 128;
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;
  std::uint32_t stream = 0;
  int threads = 0;
  std::function<void(double)> progress;  ///< fraction of rows done; called from one thread at a time
};

/// The input fields every method takes from its options the same way (start point, order, factor, and
/// the options' block size, rounding, seed, threads and progress). Options types differ, fields do not.
template <typename Scalar, typename Options>
SweepInput<Scalar> sweep_input(const Eigen::Ref<const Matrix<Scalar>>& start, const std::vector<Index>& perm,
                               const Matrix<Scalar>* U, const Options& opt) {
  SweepInput<Scalar> in;
  in.start = &start;
  in.perm = &perm;
  in.U = U;
  in.block_size = opt.block_size;
  in.rounding = opt.rounding;
  in.seed = opt.seed;
  in.threads = opt.threads;
  in.progress = opt.progress;
  return in;
}

template <typename Scalar>
struct SweepOutput {
  Matrix<Scalar> Q;        ///< rows × N, original order: the lattice values
  MatrixXi32 codes;        ///< rows × N, original order
  Eigen::VectorXd energy;  ///< per row Σ_t e_t² / U_tt²  (spec §3.1(iv): ‖X(w−q)‖² + λ‖w−q‖², exact)
  Eigen::VectorXi clipped; ///< per row: rounding arguments outside the lattice's range
};

template <typename Scalar>
SweepOutput<Scalar> sweep(const SweepInput<Scalar>& in, Grid<Scalar>& grid) {
  const Eigen::Ref<const Matrix<Scalar>>& W0 = *in.start;
  const std::vector<Index>& perm = *in.perm;
  const Index rows = W0.rows(), N = W0.cols();
  const Index B = std::max<Index>(1, in.block_size);
  const Index gs = grid.dynamic ? grid.group_size : -1;

  SweepOutput<Scalar> out;
  out.Q.resize(rows, N);
  out.codes.resize(rows, N);
  out.energy.setZero(rows);
  out.clipped.setZero(rows);

  std::atomic<Index> rows_done{0};
  std::mutex progress_mutex;

  for_row_chunks(rows, resolve_threads(in.threads), [&](Index r0, Index r1) {
    const Index nr = r1 - r0;
    // Working copy of this chunk's rows in sweep order: the only large temporary.
    Matrix<Scalar> Wc(nr, N);
    for (Index k = 0; k < N; ++k) {
      if (in.zero_cols && (*in.zero_cols)[perm[k]])
        Wc.col(k).setZero();
      else
        Wc.col(k) = W0.col(perm[k]).segment(r0, nr);
    }
    Matrix<Scalar> E(nr, std::min(B, N));
    Eigen::VectorXd energy = Eigen::VectorXd::Zero(nr);
    Eigen::VectorXi clipped = Eigen::VectorXi::Zero(nr);
    Vector<Scalar> arg(nr);
    std::array<std::uint32_t, 4> rnd{};
    const bool stochastic = in.rounding == Rounding::Stochastic;
    std::vector<double> ubuf(stochastic ? static_cast<std::size_t>(nr) : 0);

    for (Index i1 = 0; i1 < N;) {
      Index i2 = std::min(N, i1 + B);
      if (gs > 0) {
        // Dynamic groups start blocks, so that a group is fitted on fully updated weights w^(i1)
        // (the reference fits on weights missing in-block updates when a group starts inside a block).
        i2 = std::min(i2, (i1 / gs + 1) * gs);
        if (i1 % gs == 0) grid.fit_group(i1 / gs, r0, Wc.middleCols(i1, std::min(gs, N - i1)));
      }
      const Index b = i2 - i1;
      for (Index j = 0; j < b; ++j) {
        const Index k = i1 + j;
        const Index orig = perm[k];
        const Index g = grid.group_index[orig];
        const Scalar* scale = grid.scale.col(g).data() + r0;
        const Scalar* zero = grid.zero.col(g).data() + r0;
        const Scalar* mn = grid.min.col(g).data() + r0;
        const Scalar d = in.U ? (*in.U)(k, k) : Scalar(1);
        if (k == 0 && in.first_argument)
          arg = in.first_argument->segment(r0, nr);
        else
          arg = Wc.col(k);  // into the chunk's buffer: no allocation per column
        Scalar* qcol = out.Q.col(orig).data() + r0;
        std::int32_t* ccol = out.codes.col(orig).data() + r0;
        if (stochastic) {
          // The uniforms of this column for the chunk's rows, in one tight loop (r0 is a multiple of 4, so
          // rows 4q..4q+3 share one Philox call keyed by (seed, q, original column)).
          for (Index r = 0; r < nr; r += 4) {
            rnd = philox_block(in.seed, static_cast<std::uint64_t>(r0 + r) >> 2, static_cast<std::uint64_t>(orig), in.stream);
            for (Index t = 0; t < 4 && r + t < nr; ++t) ubuf[r + t] = uniform_from_bits(rnd[t]);
          }
        }
        for (Index r = 0; r < nr; ++r) {
          const Lattice<Scalar> lat{scale[r], zero[r], mn[r], grid.lo, grid.hi};
          bool clip = false;
          const std::int32_t code = stochastic ? lat.stochastic(arg[r], ubuf[r], clip) : lat.nearest(arg[r], clip);
          const Scalar q = lat.value(code);
          ccol[r] = code;
          qcol[r] = q;
          clipped[r] += clip ? 1 : 0;
          const Scalar e = in.feedback_value ? q / d : (Wc(r, k) - q) / d;  // GPTQ's err = (w − q)/d (spec §2)
          E(r, j) = e;
          energy[r] += static_cast<double>(e) * static_cast<double>(e);
        }
        if (in.U && j + 1 < b)
          Wc.middleCols(k + 1, b - j - 1).noalias() -= E.col(j) * in.U->row(k).segment(k + 1, b - j - 1);
      }
      if (in.U && i2 < N)
        Wc.rightCols(N - i2).noalias() -= E.leftCols(b) * in.U->block(i1, i2, b, N - i2);
      i1 = i2;
    }
    out.energy.segment(r0, nr) = energy;
    out.clipped.segment(r0, nr) = clipped;
    if (in.progress) {
      const Index done = rows_done += nr;
      std::lock_guard<std::mutex> lock(progress_mutex);
      in.progress(static_cast<double>(done) / static_cast<double>(rows));
    }
  });
  return out;
}

}  // namespace pptq::detail
