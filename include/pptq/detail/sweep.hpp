// The one sweep engine (docs/design.md): every algorithm of pptq is this loop over the columns of W,
// differing only in (a) the factor it is given, (b) the start point, (c) the rounding policy, (d) what
// is fed back, and (e) the lattices of the grid. A second copy of this loop anywhere is a design bug.
//
// Column form (docs/theory.md §2): for t = 1..N, q_t = Q(w_t), e_t = w_t − q_t, w ← w − (e_t / U_tt)·U_{t,:}, with
// (H + λI)⁻¹ = UᵀU. pptq runs the same recursion in its LEFT-LOOKING form with the Cholesky factor V
// of H + λI = VVᵀ (V = U⁻¹, detail/factor.hpp) instead of U: the argument rounded at step k is
//     w^(k)_k = s_k + Σ_{j<k} f_j S_jk,   S = V·diag(V)⁻¹ (unit upper),   f_j = s_j − q_j,
// where s is the start point. Proof: GPTQ's identity w − q = E·U (docs/theory.md §3.1) gives E = (w − q)V, so
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
  NegatedValue,  ///< f_j = −q_j: GPFQ's Gram form (docs/theory.md §8, gpfq.hpp)
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
  /// Rows of W are rows [row_offset, …) of a larger layer (RowBlock, options.hpp): Philox is keyed by the
  /// global row, and the rows run on the layer's chunks (chunk > 0; 0: row_chunk(rows)).
  Index row_offset = 0;
  Index chunk = 0;
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
  Eigen::VectorXd energy;  ///< per row Σ_t (w^(t)_t − q_t)²·V_tt²  (docs/theory.md §3.1(iv): ‖X(w−q)‖² + λ‖w−q‖², exact)
  Eigen::VectorXi clipped; ///< per row: rounding arguments outside the lattice's range
  /// Per row: rounding arguments that were NaN. Finite inputs give finite arguments unless the feedback or
  /// an offset overflowed the scalar (inf − inf); such a code means nothing, and the result is refused
  /// (attach_sweep) instead of casting the NaN to an integer.
  Eigen::VectorXi nan_arguments;
  Index row_offset = 0;  ///< the global index of row 0 (for messages naming a row)
};

/// Lattice::nearest and Lattice::value over one column of a row chunk (n rows, each with its own
/// lattice), written so the compiler vectorizes it: the same operations on every element, in the same
/// order, as the scalar member functions, with no branch in the loop (the codes and values are identical:
/// tests/test_optq.cpp compares them element by element, ties and clamps included). The
/// caller has checked that no scale is 0 (Lattice::nearest's branch for a degenerate lattice is what
/// kept the loop scalar, a large share of the sweep: docs/performance.md).
template <typename Scalar>
void nearest_column(Index n, const Scalar* __restrict arg, const Scalar* __restrict scale, const Scalar* __restrict zero,
                    const Scalar* __restrict mn, std::int32_t lo, std::int32_t hi, std::int32_t* __restrict codes,
                    Scalar* __restrict q, int* __restrict clipped, int* __restrict nan) {
  const double dlo = lo, dhi = hi;
  for (Index r = 0; r < n; ++r) {
    const Scalar t = std::nearbyint((arg[r] + mn[r]) / scale[r]);
    double c = static_cast<double>(t) + static_cast<double>(zero[r]);
    clipped[r] += static_cast<int>(!(c >= dlo)) | static_cast<int>(c > dhi);
    nan[r] += static_cast<int>(c != c);
    c = c >= dlo ? c : dlo;  // clamped by selects a NaN cannot pass (it becomes lo: never cast to an integer)
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
                       std::int32_t* __restrict codes, Scalar* __restrict q, int* __restrict clipped,
                       int* __restrict nan) {
  const double dlo = lo, dhi = hi;
  for (Index r = 0; r < n; ++r) {
    const double z = static_cast<double>((arg[r] + mn[r]) / scale[r]);
    const double n0 = std::nearbyint(z);
    const double f = n0 > z ? n0 - 1 : n0;  // = std::floor(z), which GCC does not vectorize (trapping math)
    const double rr = u[r] < z - f ? f + 1 : f;
    const double zc = z + static_cast<double>(zero[r]);
    double c = rr + static_cast<double>(zero[r]);
    clipped[r] += static_cast<int>(!(c >= dlo)) | static_cast<int>(c > dhi) | static_cast<int>(zc < dlo) |
                  static_cast<int>(zc > dhi);
    nan[r] += static_cast<int>(c != c);
    c = c >= dlo ? c : dlo;  // a NaN becomes lo (as in nearest_column)
    c = dhi < c ? dhi : c;
    const std::int32_t code = static_cast<std::int32_t>(c);
    codes[r] = code;
    q[r] = scale[r] * (static_cast<Scalar>(code) - zero[r]) - mn[r];
  }
}

/// One row chunk's whole sweep: rows are independent, so each fixed chunk of rows runs every block on its
/// own (one parallel region, no barrier per block, and a block's columns stay in this core's cache from
/// its GEMM to its rounding). F is the chunk's rows of the working matrix, in sweep order: columns not
/// swept yet hold their argument so far (s + offset + the feedback of the swept columns < inc); swept
/// columns hold their feedback f.
template <typename Scalar, typename GridT>
class ChunkSweep {
 public:
  using Lattice = typename GridT::LatticeType;
  using Block = Eigen::Block<Matrix<Scalar>>;

  ChunkSweep(const SweepInput<Scalar>& in, GridT& grid, SweepOutput<Scalar>& out, Matrix<Scalar>& F, Index r0, Index r1)
      : in_(in), grid_(grid), out_(out), W0_(*in.start), perm_(*in.perm), F_(F), Fc_(F.middleRows(r0, r1 - r0)),
        r0_(r0), nr_(r1 - r0), rows_(W0_.rows()), N_(W0_.cols()),
        S_(in.factor ? &in.factor->S : nullptr), residual_(in.feedback == Feedback::Residual),
        stochastic_(in.rounding == Rounding::Stochastic), levels_(grid.levels.empty() ? nullptr : grid.levels.data()),
        sk_(nr_), qbuf_(nr_),
        ubuf_(stochastic_ ? static_cast<std::size_t>(nr_) : 0) {}

  /// The block loop; `on_block(b)` is told each time b more columns are swept.
  template <typename OnBlock>
  void run(Index gs, OnBlock&& on_block) {
    load();
    const Index B = std::max<Index>(1, in_.block_size);
    Index inc = 0;  // the unswept columns of F hold the feedback of swept columns [0, inc)
    for (Index i1 = 0; i1 < N_;) {
      Index i2 = std::min(N_, i1 + B);
      const bool group_start = gs > 0 && i1 % gs == 0;
      if (gs > 0) {
        // Dynamic groups start blocks, and a group is fitted on fully updated weights w^(i1) (the
        // reference fits on weights missing in-block updates when a group starts inside a block).
        i2 = std::min(i2, (i1 / gs + 1) * gs);
        // Every unswept column takes the feedback of the previous group now (right-looking across groups,
        // left-looking within one): each pair (j, k) is still applied exactly once.
        if (group_start && S_ && i1 > inc) gemm_acc<Scalar>(Fc_.rightCols(N_ - i1), Fc_.middleCols(inc, i1 - inc), S_->block(inc, i1, i1 - inc, N_ - i1));
        if (group_start) inc = i1;
      }
      const Index b = i2 - i1;
      if (S_ && i1 > inc)  // the lazy update of the block: one GEMM, inner dimension i1 − inc
        gemm_acc<Scalar>(Fc_.middleCols(i1, b), Fc_.middleCols(inc, i1 - inc), S_->block(inc, i1, i1 - inc, b));
      if (group_start) fit_dynamic_group(i1, std::min(gs, N_ - i1), i1 / gs);
      in_block(i1, i2, 0);
      on_block(b);
      i1 = i2;
    }
    write_values();
  }

 private:
  bool zero_col(Index orig) const { return in_.zero_cols && (*in_.zero_cols)[orig]; }

  /// The start value s_k of the chunk's rows at sweep step k (what the residual feedback subtracts from).
  void start_col(Index k, Vector<Scalar>& v) const {
    if (zero_col(perm_[k]))
      v.setZero(nr_);
    else
      v = W0_.col(perm_[k]).segment(r0_, nr_);
    if (in_.offset && in_.offset_in_start) v += in_.offset->col(k).segment(r0_, nr_);
  }

  /// F ← the start point (plus the offset), in sweep order: the working matrix lives in Q's storage.
  void load() {
    for (Index k = 0; k < N_; ++k) {
      if (zero_col(perm_[k]))
        Fc_.col(k).setZero();
      else
        Fc_.col(k) = W0_.col(perm_[k]).segment(r0_, nr_);
      if (in_.offset) Fc_.col(k) += in_.offset->col(k).segment(r0_, nr_);
    }
  }

  /// The uniforms of original column `orig` for the chunk's rows, in one tight loop (the global row
  /// row_offset + r0 is a multiple of 4 (RowBlock::check), so rows 4q..4q+3 share one Philox call keyed by
  /// (seed, q, original column)).
  void draw_uniforms(Index orig) {
    const Index g0 = in_.row_offset + r0_;
    for (Index r = 0; r < nr_; r += 4) {
      const auto rnd = philox_block(in_.seed, static_cast<std::uint64_t>(g0 + r) >> 2, static_cast<std::uint64_t>(orig), in_.stream);
      for (Index t = 0; t < 4 && r + t < nr_; ++t) ubuf_[r + t] = uniform_from_bits(rnd[t]);
    }
  }

  /// Rounds column k (its argument is complete) and leaves its feedback in F.
  void round_column(Index k) {
    const Index orig = perm_[k];
    const Index g = grid_.group_index[orig];
    const Lanes lanes{grid_.scale.col(g).data() + r0_, grid_.zero.col(g).data() + r0_, grid_.min.col(g).data() + r0_};
    const bool first = k == 0 && in_.first_argument;
    if (first) arg_ = in_.first_argument->segment(r0_, nr_);
    const Scalar* a = first ? arg_.data() : Fc_.col(k).data();
    std::int32_t* ccol = out_.codes.data() + orig * rows_ + r0_;
    if (stochastic_) draw_uniforms(orig);
    if (!levels_ && std::none_of(lanes.scale, lanes.scale + nr_, [](Scalar v) { return v == Scalar(0); })) {
      // Vectorized: the same arithmetic as Lattice's member functions, which remain only for lattices
      // with scale 0 and for non-uniform lattices (a table of levels: round_elementwise).
      int* clipped = out_.clipped.data() + r0_;
      int* nan = out_.nan_arguments.data() + r0_;
      if (stochastic_)
        stochastic_column(nr_, a, ubuf_.data(), lanes.scale, lanes.zero, lanes.min, grid_.lo, grid_.hi, ccol, qbuf_.data(),
                          clipped, nan);
      else
        nearest_column(nr_, a, lanes.scale, lanes.zero, lanes.min, grid_.lo, grid_.hi, ccol, qbuf_.data(), clipped, nan);
    } else {
      round_elementwise(lanes, a, ccol);
    }
    record_and_feed_back(k, orig);
  }

  struct Lanes {
    const Scalar *scale, *zero, *min;  ///< the column's group lattices for the chunk's rows
  };

  void round_elementwise(const Lanes& lanes, const Scalar* a, std::int32_t* ccol) {
    for (Index r = 0; r < nr_; ++r) {
      const Lattice lat{lanes.scale[r], lanes.zero[r], lanes.min[r], grid_.lo, grid_.hi, levels_};
      bool clip = false;
      const std::int32_t code = stochastic_ ? lat.stochastic(a[r], ubuf_[r], clip) : lat.nearest(a[r], clip);
      ccol[r] = code;
      qbuf_[r] = lat.value(code);
      out_.clipped[r0_ + r] += clip ? 1 : 0;
      out_.nan_arguments[r0_ + r] += a[r] != a[r] ? 1 : 0;
    }
  }

  /// The certificate term and the feedback of column k, whose values q are in qbuf_: the energy adds
  /// ((w^(k)_k − q_k)·V_kk)² = (e_k/U_kk)² (docs/theory.md §3.1 (iv)), then F's column becomes the
  /// feedback f_k = s_k − q_k (OPTQ, Qronos) or −q_k (GPFQ).
  void record_and_feed_back(Index k, Index orig) {
    Scalar* fcol = Fc_.col(k).data();
    const Scalar* q = qbuf_.data();
    if (residual_ && in_.factor) {
      const double d = in_.factor->d(k);
      double* energy = out_.energy.data() + r0_;
      for (Index r = 0; r < nr_; ++r) {
        const double e = (static_cast<double>(fcol[r]) - static_cast<double>(q[r])) * d;
        energy[r] += e * e;
      }
    }
    if (!S_) return;
    if (!residual_) {
      for (Index r = 0; r < nr_; ++r) fcol[r] = -q[r];
    } else if (!zero_col(orig) && !(in_.offset && in_.offset_in_start)) {
      const Scalar* s0 = W0_.col(orig).data() + r0_;  // the start value, read in place
      for (Index r = 0; r < nr_; ++r) fcol[r] = s0[r] - q[r];
    } else {
      start_col(k, sk_);
      for (Index r = 0; r < nr_; ++r) fcol[r] = sk_[r] - q[r];
    }
  }

  /// Inside a block, the same left-looking scheme level by level: each piece of `width[level]` columns
  /// takes the feedback of the block's earlier pieces at this level in one GEMM, then recurses; only
  /// within the last level's pieces are the updates rank-1. The in-block cost falls from rows·N·B/2
  /// rank-1 multiply-adds to GEMMs with inner dimension up to B (every pair (j, k) still applied once).
  void in_block(Index a, Index e, std::size_t level) {
    static constexpr std::array<Index, 2> width{128, 16};
    if (level == width.size()) {
      for (Index k = a; k < e; ++k) {
        round_column(k);
        if (S_ && k + 1 < e) Fc_.middleCols(k + 1, e - k - 1).noalias() += Fc_.col(k) * S_->row(k).segment(k + 1, e - k - 1);
      }
      return;
    }
    for (Index p = a; p < e; p += width[level]) {
      const Index q = std::min(e, p + width[level]);
      if (S_ && p > a) gemm_acc<Scalar>(Fc_.middleCols(p, q - p), Fc_.middleCols(a, p - a), S_->block(a, p, p - a, q - p));
      in_block(p, q, level + 1);
    }
  }

  /// Fits dynamic group `group` (g columns from sweep step i1) on GPTQ's fully updated iterate.
  void fit_dynamic_group(Index i1, Index g, Index group) {
    if (!(S_ && residual_)) {
      grid_.fit_group(group, r0_, Fc_.middleCols(i1, g));
      return;
    }
    // F holds s_G + (s_P − q_P)·S_PG for the group G after the swept prefix P; GPTQ's iterate is
    // w^(i1)_G = s_G + (s_P − q_P)·V_PG·V_GG⁻¹ = s_G + (F_G − s_G)·S_GG⁻¹ (V = S·diag(V)).
    Matrix<Scalar> Sg(nr_, g);  // s_G
    for (Index c = 0; c < g; ++c) {
      start_col(i1 + c, sk_);
      Sg.col(c) = sk_;
    }
    Matrix<Scalar> T = Fc_.middleCols(i1, g) - Sg;
    S_->block(i1, i1, g, g).template triangularView<Eigen::UnitUpper>().template solveInPlace<Eigen::OnTheRight>(T);
    T += Sg;
    grid_.fit_group(group, r0_, T);
  }

  /// The values, from the codes, into this chunk's rows of F's storage (original column order; the
  /// chunk's F is no longer needed and no other chunk touches these rows). Lattice::value itself, on
  /// the column's group vectors read in place (no per-element group lookup), so the loop vectorizes.
  void write_values() {
    for (Index j = 0; j < N_; ++j) {
      const Index g = grid_.group_index[j];
      const Scalar* scale = grid_.scale.col(g).data() + r0_;
      const Scalar* zero = grid_.zero.col(g).data() + r0_;
      const Scalar* mn = grid_.min.col(g).data() + r0_;
      const std::int32_t* c = out_.codes.col(j).data() + r0_;
      Scalar* q = F_.col(j).data() + r0_;
      if (levels_)  // kept out of the uniform loop, which stays branch-free
        for (Index r = 0; r < nr_; ++r) q[r] = Lattice{scale[r], zero[r], mn[r], grid_.lo, grid_.hi, levels_}.value(c[r]);
      else
        for (Index r = 0; r < nr_; ++r) q[r] = Lattice{scale[r], zero[r], mn[r], grid_.lo, grid_.hi}.value(c[r]);
    }
  }

  const SweepInput<Scalar>& in_;
  GridT& grid_;
  SweepOutput<Scalar>& out_;
  const Eigen::Ref<const Matrix<Scalar>>& W0_;
  const std::vector<Index>& perm_;
  Matrix<Scalar>& F_;
  Block Fc_;
  const Index r0_, nr_, rows_, N_;
  const MatrixMap<Scalar>* S_;
  const bool residual_, stochastic_;
  const Scalar* levels_;  ///< a non-uniform lattice's table of levels (IQ4_NL, IQ4_XS), or nullptr
  Vector<Scalar> sk_, arg_, qbuf_;
  std::vector<double> ubuf_;
};

/// The sweep onto `grid` (a pptq::Grid, grid.hpp: a template parameter, so that this layer includes no
/// public header): its lattices, group indices, and for dynamic groups fit_group().
template <typename Scalar, typename GridT>
SweepOutput<Scalar> sweep(const SweepInput<Scalar>& in, GridT& grid) {
  const Index rows = in.start->rows(), N = in.start->cols();
  const Index gs = grid.dynamic ? grid.group_size : -1;
  if (in.offset && !in.offset_in_start && gs > 0 && in.factor)
    fail("internal: a sweep offset outside the start point cannot be combined with dynamic groups");

  SweepOutput<Scalar> out;
  out.codes.resize(rows, N);
  advise_huge_pages(out.codes.data(), sizeof(std::int32_t) * static_cast<std::size_t>(out.codes.size()));
  out.energy.setZero(rows);
  out.clipped.setZero(rows);
  out.nan_arguments.setZero(rows);
  out.row_offset = in.row_offset;
  // The working matrix, in the storage of the output Q (whose values are written from the codes at the
  // end): no working copy of W.
  Matrix<Scalar> F(rows, N);
  advise_huge_pages(F.data(), sizeof(Scalar) * static_cast<std::size_t>(F.size()));  // first touched by the chunks

  const Index chunk = in.chunk > 0 ? in.chunk : row_chunk(rows);
  const Index chunks = (rows + chunk - 1) / chunk;
  std::atomic<Index> swept{0};  // columns swept, summed over the row chunks (for progress)
  for_row_chunks(
      rows, resolve_threads(in.threads),
      [&](Index r0, Index r1) {
        ChunkSweep<Scalar, GridT>(in, grid, out, F, r0, r1).run(gs, [&](Index b) {
          const Index now = swept += b;
          if (in.progress && is_calling_thread()) in.progress(static_cast<double>(now) / static_cast<double>(chunks * N));
        });
      },
      chunk);
  if (in.progress) in.progress(1.0);
  out.Q = std::move(F);
  return out;
}

}  // namespace pptq::detail
