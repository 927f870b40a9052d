// The one sweep engine (architecture.md): every algorithm of pptq is this loop over the columns of W,
// differing only in (a) the factor it is given, (b) the start point, (c) the rounding policy, (d) what
// is fed back, and (e) the lattices of the grid. A second copy of this loop anywhere is a design bug.
//
// Column form (spec §2): for t = 1..N, q_t = Q(w_t), e_t = w_t − q_t, w ← w − (e_t / U_tt)·U_{t,:}, with
// (H + λI)⁻¹ = UᵀU. pptq runs the same recursion in its LEFT-LOOKING form with the Cholesky factor V
// of H + λI = VVᵀ (V = U⁻¹, detail/factor.hpp) instead of U: the argument rounded at step k is
//     w^(k)_k = s_k + Σ_{j<k} f_j S_jk,   S = V·diag(V)⁻¹ (unit upper),   f_j = s_j − q_j,
// where s is the start point. Proof: GPTQ's identity w − q = E·U (spec §3.1) gives E = (w − q)V, so
// e_k = Σ_{j≤k} (s_j − q_j)V_jk, and w^(k)_k − q_k = e_k U_kk = e_k / V_kk. This needs no triangular
// inverse (N³/3 FLOPs saved) and its lazy block update is one GEMM with a long inner dimension:
//     F[:, block] += F[:, done] · S[done, block]
// where F holds the feedback f of the swept columns. Tests check identical codes against the plain
// right-looking column loop (tests/reference) for every block size.
//
// Two more feedbacks run on the same loop: GPFQ's Gram form feeds back −q_j with its own unit upper
// matrix (gpfq.hpp), and Qronos adds a per-column offset to the argument that is not fed back
// (qronos.hpp: its least-squares correction in the form (w̃ − w)·S, which costs one triangular solve).
//
// Rows are independent: each fixed chunk of rows (detail/parallel.hpp; its size depends on the row
// count only) runs the whole sweep in one parallel region, so the arithmetic of a row, and the result,
// is the same for any thread count. The working matrix lives in the output's storage: no copy of W.
#pragma once

#include "../common.hpp"
#include "../grid.hpp"
#include "factor.hpp"
#include "kernels.hpp"
#include "memory.hpp"
#include "parallel.hpp"
#include "philox.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <vector>

namespace pptq::detail {

/// The factor in the form the sweep uses: S = V·diag(V)⁻¹ (unit upper; only its strict upper part is
/// read) and d = diag(V), in sweep order, where H_π + λI = VVᵀ.
template <typename Scalar>
struct SweepFactor {
  std::shared_ptr<FactorStorage> storage;  ///< S's bytes (those of the factor it was converted from)
  MatrixMap<Scalar> S{nullptr, 0, 0};
  Eigen::VectorXd d;

  /// An n × n zero S in storage of its own (GPFQ builds its matrix in it).
  void allocate_zero(Index n) {
    storage = std::make_shared<FactorStorage>(sizeof(Scalar) * static_cast<std::size_t>(n * n));
    seat(S, storage->data(), n);
    S.setZero();
  }
};

/// What the sweep feeds back after rounding column j.
enum class Feedback {
  Residual,      ///< f_j = s_j − q_j: OPTQ and Qronos (the argument is then GPTQ's w^(j)_j)
  NegatedValue,  ///< f_j = −q_j: GPFQ's Gram form (spec §8, gpfq.hpp)
};

template <typename Scalar>
struct SweepInput {
  const Eigen::Ref<const Matrix<Scalar>>* start = nullptr;  ///< rows × N start point s, ORIGINAL column order
  const SweepFactor<Scalar>* factor = nullptr;  ///< nullptr: no feedback (RTN)
  const std::vector<Index>* perm = nullptr;     ///< perm[k] = original column at sweep step k
  const std::vector<bool>* zero_cols = nullptr; ///< original columns whose start value is 0 (dead columns)
  /// Optional rows × N, SWEEP order: added to the argument of every column. With offset_in_start the
  /// offset is part of the start point (s + offset is fed back); without, it is not (Qronos's correction
  /// (w̃ − w)·S, qronos.hpp).
  const Matrix<Scalar>* offset = nullptr;
  bool offset_in_start = false;
  const Vector<Scalar>* first_argument = nullptr;  ///< optional: per row, the value rounded at step 0
                                                   ///< instead of the current weight (Qronos §5.2/5.3)
  Feedback feedback = Feedback::Residual;
  Index block_size = 128;
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;
  std::uint32_t stream = 0;
  int threads = 0;
  std::function<void(double)> progress;  ///< fraction of the columns swept; called from the calling thread
};

/// The input fields every method takes from its options the same way (start point, order, factor, and
/// the options' block size, rounding, seed, threads and progress). Options types differ, fields do not.
template <typename Scalar, typename Options>
SweepInput<Scalar> sweep_input(const Eigen::Ref<const Matrix<Scalar>>& start, const std::vector<Index>& perm,
                               const SweepFactor<Scalar>* factor, const Options& opt) {
  SweepInput<Scalar> in;
  in.start = &start;
  in.perm = &perm;
  in.factor = factor;
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
  Eigen::VectorXd energy;  ///< per row Σ_t (w^(t)_t − q_t)²·V_tt²  (spec §3.1(iv): ‖X(w−q)‖² + λ‖w−q‖², exact)
  Eigen::VectorXi clipped; ///< per row: rounding arguments outside the lattice's range
};

/// Lattice::nearest and Lattice::value over one column of a row chunk (n rows, each with its own
/// lattice), written so the compiler vectorizes it: the same operations on every element, in the same
/// order, as the scalar member functions, with no branch in the loop (the codes and values are identical:
/// tests/test_optq.cpp compares them element by element, ties and clamps included). The
/// caller has checked that no scale is 0 (Lattice::nearest's branch for a degenerate lattice is what
/// kept the loop scalar: with it, it took ~9 ns per weight, 15 % of the sweep at 4096²).
template <typename Scalar>
void nearest_column(Index n, const Scalar* __restrict arg, const Scalar* __restrict scale, const Scalar* __restrict zero,
                    const Scalar* __restrict mn, std::int32_t lo, std::int32_t hi, std::int32_t* __restrict codes,
                    Scalar* __restrict q, int* __restrict clipped) {
  const double dlo = lo, dhi = hi;
  for (Index r = 0; r < n; ++r) {
    const Scalar t = std::nearbyint((arg[r] + mn[r]) / scale[r]);
    double c = static_cast<double>(t) + static_cast<double>(zero[r]);
    clipped[r] += static_cast<int>(c < dlo) | static_cast<int>(c > dhi);
    c = c < dlo ? dlo : c;  // std::max(c, dlo) and std::min(c, dhi), spelled as selects
    c = dhi < c ? dhi : c;
    const std::int32_t code = static_cast<std::int32_t>(c);
    codes[r] = code;
    q[r] = scale[r] * (static_cast<Scalar>(code) - zero[r]) - mn[r];
  }
}

/// Lattice::stochastic and Lattice::value over one column of a row chunk, branch-free as nearest_column
/// (the same operations as the member function, element by element); u holds each row's uniform.
template <typename Scalar>
void stochastic_column(Index n, const Scalar* __restrict arg, const double* __restrict u, const Scalar* __restrict scale,
                       const Scalar* __restrict zero, const Scalar* __restrict mn, std::int32_t lo, std::int32_t hi,
                       std::int32_t* __restrict codes, Scalar* __restrict q, int* __restrict clipped) {
  const double dlo = lo, dhi = hi;
  for (Index r = 0; r < n; ++r) {
    const double z = static_cast<double>((arg[r] + mn[r]) / scale[r]);
    const double n0 = std::nearbyint(z);
    const double f = n0 > z ? n0 - 1 : n0;  // = std::floor(z), which GCC does not vectorize (trapping math)
    const double rr = u[r] < z - f ? f + 1 : f;
    const double zc = z + static_cast<double>(zero[r]);
    double c = rr + static_cast<double>(zero[r]);
    clipped[r] += static_cast<int>(c < dlo) | static_cast<int>(c > dhi) | static_cast<int>(zc < dlo) |
                  static_cast<int>(zc > dhi);
    c = c < dlo ? dlo : c;
    c = dhi < c ? dhi : c;
    const std::int32_t code = static_cast<std::int32_t>(c);
    codes[r] = code;
    q[r] = scale[r] * (static_cast<Scalar>(code) - zero[r]) - mn[r];
  }
}

template <typename Scalar>
SweepOutput<Scalar> sweep(const SweepInput<Scalar>& in, Grid<Scalar>& grid) {
  const Eigen::Ref<const Matrix<Scalar>>& W0 = *in.start;
  const std::vector<Index>& perm = *in.perm;
  const Index rows = W0.rows(), N = W0.cols();
  const Index B = std::max<Index>(1, in.block_size);
  const Index gs = grid.dynamic ? grid.group_size : -1;
  const MatrixMap<Scalar>* S = in.factor ? &in.factor->S : nullptr;
  const bool residual = in.feedback == Feedback::Residual;
  const bool stochastic = in.rounding == Rounding::Stochastic;
  const int threads = resolve_threads(in.threads);
  const Scalar* levels = grid.levels.empty() ? nullptr : grid.levels.data();  // a non-uniform lattice's table
  if (in.offset && !in.offset_in_start && gs > 0 && S)
    fail("internal: a sweep offset outside the start point cannot be combined with dynamic groups");

  SweepOutput<Scalar> out;
  out.codes.resize(rows, N);
  advise_huge_pages(out.codes.data(), sizeof(std::int32_t) * static_cast<std::size_t>(out.codes.size()));
  out.energy.setZero(rows);
  out.clipped.setZero(rows);

  // F: all rows in sweep order, in the storage of the output Q (whose values are written from the codes
  // at the end): no working copy of W. Columns not swept yet hold their argument so far (s + offset +
  // the feedback of the swept columns < inc); swept columns hold their feedback f.
  Matrix<Scalar> F(rows, N);
  advise_huge_pages(F.data(), sizeof(Scalar) * static_cast<std::size_t>(F.size()));  // first touched below
  // The start value s_k of rows [r0, r0 + nr) at sweep step k (what the residual feedback subtracts from).
  auto start_col = [&](Index k, Index r0, Index nr, Vector<Scalar>& v) {
    if (in.zero_cols && (*in.zero_cols)[perm[k]])
      v.setZero(nr);
    else
      v = W0.col(perm[k]).segment(r0, nr);
    if (in.offset && in.offset_in_start) v += in.offset->col(k).segment(r0, nr);
  };
  const Index chunks = (rows + row_chunk(rows) - 1) / row_chunk(rows);
  std::atomic<Index> swept{0};  // columns swept, summed over the row chunks (for progress)

  // Rows are independent: each row chunk runs the whole sweep on its own (one parallel region, no
  // barrier per block, and a block's columns stay in this core's cache from its GEMM to its rounding).
  for_row_chunks(rows, threads, [&](Index r0, Index r1) {
    const Index nr = r1 - r0;
    auto Fc = F.middleRows(r0, nr);
    Vector<Scalar> sk(nr), arg;
    for (Index k = 0; k < N; ++k) {
      if (in.zero_cols && (*in.zero_cols)[perm[k]])
        Fc.col(k).setZero();
      else
        Fc.col(k) = W0.col(perm[k]).segment(r0, nr);
      if (in.offset) Fc.col(k) += in.offset->col(k).segment(r0, nr);
    }
    std::array<std::uint32_t, 4> rnd{};
    std::vector<double> ubuf(stochastic ? static_cast<std::size_t>(nr) : 0);
    Vector<Scalar> qbuf(nr);
    std::int32_t* codes = out.codes.data();
    double* energy = out.energy.data() + r0;
    int* clipped = out.clipped.data() + r0;

    // Rounds column k (its argument is complete) and leaves its feedback in F.
    auto round_column = [&](Index k) {
      const Index orig = perm[k];
      const Index g = grid.group_index[orig];
      const Scalar* scale = grid.scale.col(g).data() + r0;
      const Scalar* zero = grid.zero.col(g).data() + r0;
      const Scalar* mn = grid.min.col(g).data() + r0;
      const double d = in.factor ? in.factor->d(k) : 1.0;
      const bool first = k == 0 && in.first_argument;
      if (first) arg = in.first_argument->segment(r0, nr);
      std::int32_t* ccol = codes + orig * rows + r0;
      Scalar* fcol = Fc.col(k).data();
      if (stochastic) {
        // The uniforms of this column for the chunk's rows, in one tight loop (r0 is a multiple of 4, so
        // rows 4q..4q+3 share one Philox call keyed by (seed, q, original column)).
        for (Index r = 0; r < nr; r += 4) {
          rnd = philox_block(in.seed, static_cast<std::uint64_t>(r0 + r) >> 2, static_cast<std::uint64_t>(orig), in.stream);
          for (Index t = 0; t < 4 && r + t < nr; ++t) ubuf[r + t] = uniform_from_bits(rnd[t]);
        }
      }
      if (!levels && std::none_of(scale, scale + nr, [](Scalar v) { return v == Scalar(0); })) {
        // Vectorized: the same arithmetic as the element loop below, which remains only for lattices with
        // scale 0 and for non-uniform lattices (a table of levels). The argument is the column's (or
        // Qronos's first argument); the energy and the feedback are taken from the column, as in the loop
        // below.
        const Scalar* a = first ? arg.data() : fcol;
        if (stochastic)
          stochastic_column(nr, a, ubuf.data(), scale, zero, mn, grid.lo, grid.hi, ccol, qbuf.data(), clipped);
        else
          nearest_column(nr, a, scale, zero, mn, grid.lo, grid.hi, ccol, qbuf.data(), clipped);
        const Scalar* q = qbuf.data();
        if (residual && in.factor) {
          for (Index r = 0; r < nr; ++r) {
            const double e = (static_cast<double>(fcol[r]) - static_cast<double>(q[r])) * d;
            energy[r] += e * e;
          }
        }
        if (!S) return;
        if (!residual) {
          for (Index r = 0; r < nr; ++r) fcol[r] = -q[r];
        } else if (!(in.zero_cols && (*in.zero_cols)[orig]) && !(in.offset && in.offset_in_start)) {
          const Scalar* s0 = W0.col(orig).data() + r0;  // the start value, read in place
          for (Index r = 0; r < nr; ++r) fcol[r] = s0[r] - q[r];
        } else {
          start_col(k, r0, nr, sk);
          for (Index r = 0; r < nr; ++r) fcol[r] = sk[r] - q[r];
        }
        return;
      }
      if (residual && S) start_col(k, r0, nr, sk);
      for (Index r = 0; r < nr; ++r) {
        const Lattice<Scalar> lat{scale[r], zero[r], mn[r], grid.lo, grid.hi, levels};
        const Scalar a = first ? arg[r] : fcol[r];
        bool clip = false;
        const std::int32_t code = stochastic ? lat.stochastic(a, ubuf[r], clip) : lat.nearest(a, clip);
        const Scalar q = lat.value(code);
        ccol[r] = code;
        clipped[r] += clip ? 1 : 0;
        if (residual && in.factor) {
          // The certificate term (w^(k)_k − q_k)·V_kk = GPTQ's e_k/U_kk (spec §3.1(iv)).
          const double e = (static_cast<double>(fcol[r]) - static_cast<double>(q)) * d;
          energy[r] += e * e;
        }
        if (S) fcol[r] = residual ? sk[r] - q : -q;
      }
    };

    // Inside a block, the same left-looking scheme level by level: each piece of `width[level]` columns
    // takes the feedback of the block's earlier pieces at this level in one GEMM, then recurses; only
    // within the last level's pieces are the updates rank-1. The in-block cost falls from rows·N·B/2
    // rank-1 multiply-adds to GEMMs with inner dimension up to B (every pair (j, k) still applied once).
    constexpr std::array<Index, 2> width{128, 16};
    auto in_block = [&](auto& self, Index a, Index e, std::size_t level) -> void {
      if (level == width.size()) {
        for (Index k = a; k < e; ++k) {
          round_column(k);
          if (S && k + 1 < e) Fc.middleCols(k + 1, e - k - 1).noalias() += Fc.col(k) * S->row(k).segment(k + 1, e - k - 1);
        }
        return;
      }
      for (Index p = a; p < e; p += width[level]) {
        const Index q = std::min(e, p + width[level]);
        if (S && p > a) gemm_acc<Scalar>(Fc.middleCols(p, q - p), Fc.middleCols(a, p - a), S->block(a, p, p - a, q - p));
        self(self, p, q, level + 1);
      }
    };

    Index inc = 0;  // the unswept columns of F hold the feedback of swept columns [0, inc)
    for (Index i1 = 0; i1 < N;) {
      Index i2 = std::min(N, i1 + B);
      const bool group_start = gs > 0 && i1 % gs == 0;
      if (gs > 0) {
        // Dynamic groups start blocks, and a group is fitted on fully updated weights w^(i1) (the
        // reference fits on weights missing in-block updates when a group starts inside a block).
        i2 = std::min(i2, (i1 / gs + 1) * gs);
        // Every unswept column takes the feedback of the previous group now (right-looking across groups,
        // left-looking within one): each pair (j, k) is still applied exactly once.
        if (group_start && S && i1 > inc)
          gemm_acc<Scalar>(Fc.rightCols(N - i1), Fc.middleCols(inc, i1 - inc), S->block(inc, i1, i1 - inc, N - i1));
        if (group_start) inc = i1;
      }
      const Index b = i2 - i1;
      if (S && i1 > inc)  // the lazy update of the block: one GEMM, inner dimension i1 − inc
        gemm_acc<Scalar>(Fc.middleCols(i1, b), Fc.middleCols(inc, i1 - inc), S->block(inc, i1, i1 - inc, b));
      if (group_start) {
        const Index g = std::min(gs, N - i1);
        if (S && residual) {
          // F holds s_G + (s_P − q_P)·S_PG for the group G after the swept prefix P; GPTQ's iterate is
          // w^(i1)_G = s_G + (s_P − q_P)·V_PG·V_GG⁻¹ = s_G + (F_G − s_G)·S_GG⁻¹ (V = S·diag(V)).
          Matrix<Scalar> Sg(nr, g);  // s_G
          for (Index c = 0; c < g; ++c) {
            start_col(i1 + c, r0, nr, sk);
            Sg.col(c) = sk;
          }
          Matrix<Scalar> T = Fc.middleCols(i1, g) - Sg;
          S->block(i1, i1, g, g).template triangularView<Eigen::UnitUpper>().template solveInPlace<Eigen::OnTheRight>(T);
          T += Sg;
          grid.fit_group(i1 / gs, r0, T);
        } else {
          grid.fit_group(i1 / gs, r0, Fc.middleCols(i1, g));
        }
      }
      in_block(in_block, i1, i2, 0);
      const Index now = swept += b;
      if (in.progress && is_calling_thread())
        in.progress(static_cast<double>(now) / static_cast<double>(chunks * N));
      i1 = i2;
    }

    // The values, from the codes, into this chunk's rows of F's storage (original column order; the
    // chunk's F is no longer needed and no other chunk touches these rows). Lattice::value itself, on
    // the column's group vectors read in place (no per-element group lookup), so the loop vectorizes.
    for (Index j = 0; j < N; ++j) {
      const Index g = grid.group_index[j];
      const Scalar* scale = grid.scale.col(g).data() + r0;
      const Scalar* zero = grid.zero.col(g).data() + r0;
      const Scalar* mn = grid.min.col(g).data() + r0;
      const std::int32_t* c = out.codes.col(j).data() + r0;
      Scalar* q = F.col(j).data() + r0;
      if (levels)  // kept out of the uniform loop, which stays branch-free
        for (Index r = 0; r < nr; ++r) q[r] = Lattice<Scalar>{scale[r], zero[r], mn[r], grid.lo, grid.hi, levels}.value(c[r]);
      else
        for (Index r = 0; r < nr; ++r) q[r] = Lattice<Scalar>{scale[r], zero[r], mn[r], grid.lo, grid.hi}.value(c[r]);
    }
  });
  if (in.progress) in.progress(1.0);
  out.Q = std::move(F);
  return out;
}

}  // namespace pptq::detail
