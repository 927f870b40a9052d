// Preparation and assembly shared by every algorithm: the column order, the damping policy, and
// moving the factor and the sweep's output into the result. The result type is a template parameter
// (QuantResult, result.hpp): this layer sits below the public headers and includes none of them.
#pragma once

#include "../common.hpp"
#include "factor.hpp"
#include "sweep.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

namespace pptq {
namespace detail {

/// The sweep order: a validated custom order, act-order (decreasing diag, stable), or natural.
template <typename DerivedD>
std::vector<Index> column_order(const Eigen::MatrixBase<DerivedD>& diag, bool act_order, const std::vector<Index>& custom) {
  const Index n = diag.size();
  std::vector<Index> perm(static_cast<std::size_t>(n));
  if (!custom.empty()) {
    if (static_cast<Index>(custom.size()) != n)
      fail("order has " + str(custom.size()) + " entries, W has " + str(n) + " columns");
    std::vector<bool> seen(static_cast<std::size_t>(n), false);
    for (Index v : custom) {
      if (v < 0 || v >= n) fail("order entry " + str(v) + " is not a column index in [0, " + str(n) + ")");
      if (seen[v]) fail("order lists column " + str(v) + " twice: it must be a permutation");
      seen[v] = true;
    }
    return custom;
  }
  std::iota(perm.begin(), perm.end(), Index(0));
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](Index a, Index b) { return diag(a) > diag(b); });
  return perm;
}

/// What every method with a Gram matrix decides about the columns before anything moves: which are dead
/// (diag(H) == 0: no sample touches them), the diagonal used for ordering and for relative damping (dead
/// columns count as 1, as GPTQ sets H_ii = 1 before both: docs/theory.md §7, steps 3, 5, 6), and the sweep order.
struct ColumnPlan {
  std::vector<bool> dead;
  Eigen::VectorXd diag;
  std::vector<Index> perm;
};

template <typename DerivedH>
ColumnPlan plan_columns(const Eigen::MatrixBase<DerivedH>& H, bool act_order, const std::vector<Index>& order) {
  const Index n = H.cols();
  ColumnPlan p;
  p.dead.assign(static_cast<std::size_t>(n), false);
  p.diag.resize(n);
  for (Index j = 0; j < n; ++j) {
    p.dead[j] = H(j, j) == typename DerivedH::Scalar(0);
    p.diag(j) = p.dead[j] ? 1.0 : static_cast<double>(H(j, j));
  }
  p.perm = column_order(p.diag, act_order, order);
  return p;
}

/// A result with the fields every method fills first.
template <typename Result, typename MethodT>
Result start_result(MethodT method, Rounding rounding, std::uint64_t seed, const std::vector<Index>& perm) {
  Result r;
  r.method = method;
  r.rounding = rounding;
  r.seed = seed;
  r.perm = perm;
  return r;
}

/// The λ policy of docs/theory.md §1, §7: relative to mean(diag H) after the dead-column fix, or absolute.
inline Damping damping_policy(double mean_diag, double damp, std::optional<double> lambda, bool escalate,
                              double factor, double max_damp) {
  Damping d;
  d.lambda = lambda ? *lambda : damp * mean_diag;
  d.escalate = escalate;
  d.factor = factor;
  d.floor = 1e-8 * (mean_diag > 0 ? mean_diag : 1.0);
  d.cap = std::max({max_damp * mean_diag, d.lambda, d.floor});
  return d;
}

/// Fills the parts of a result common to the methods that sweep with a factor.
template <typename Result, typename FScalar>
void attach_factor(Result& r, const FactorResult<FScalar>& f) {
  r.lambda = f.lambda;
  r.lambda_tried = f.lambda_tried;
  r.status = f.status;
  r.message = f.message;
}

/// The factor V (upper, H_π + λI = VVᵀ, in the factor's scalar) → the sweep's factor in W's scalar:
/// S = V·diag(V)⁻¹ (unit upper, zero below) and d = diag(V). S takes V's bytes: scaled in place for the
/// same scalar; for a float sweep after a double factor, converted column by column in place (float
/// column k only overwrites bytes of double column ⌊k/2⌋, read before) and the second half of the
/// bytes given back, so no second N × N buffer ever exists. (W double with H float, the one widening
/// case, converts into new storage.)
template <typename Scalar, typename FScalar>
std::shared_ptr<const SweepFactor<Scalar>> make_sweep_factor(FactorResult<FScalar>&& f, int threads) {
  auto out = std::make_shared<SweepFactor<Scalar>>();
  MatrixMap<FScalar>& V = f.V;
  const Index n = V.rows();
  out->d = V.diagonal().template cast<double>();
  threads = n < 1024 ? 1 : resolve_threads(threads);
  if constexpr (std::is_same_v<Scalar, FScalar>) {
    out->storage = std::move(f.storage);
    seat(out->S, out->storage->data(), n);
    for_fixed_chunks(n, 256, threads, [&](Index c0, Index c1) {
      for (Index j = c0; j < c1; ++j) {
        out->S.col(j).head(j) /= out->S(j, j);
        out->S(j, j) = Scalar(1);
      }
    });
  } else if constexpr (sizeof(Scalar) < sizeof(FScalar)) {
    // Narrow column j lands in the bytes of wide column j·sizeof(Scalar)/sizeof(FScalar) (= ⌊j/2⌋ for
    // float from double). Columns [a, b) with b ≤ 2a therefore write only into wide columns < a, all read
    // by earlier steps, and read only wide columns [a, b), which no column of the step writes: the steps
    // [0, 1), [1, 2), [2, 4), [4, 8), … each run on all threads (pure conversions: the same bytes for any
    // thread count), the last one half of the work.
    static_assert(2 * sizeof(Scalar) == sizeof(FScalar), "pptq: the in-place narrowing assumes half-width columns");
    unsigned char* bytes = static_cast<unsigned char*>(f.storage->data());
    for (Index a = 0; a < n;) {
      const Index b = std::min(n, std::max<Index>(1, 2 * a));
      for_fixed_chunks(b - a, 64, threads, [&](Index c0, Index c1) {
        Vector<Scalar> col(n);  // the whole wide column is read before its narrow column is written
        for (Index j = a + c0; j < a + c1; ++j) {
          col.head(j) = (V.col(j).head(j) / V(j, j)).template cast<Scalar>();
          col(j) = Scalar(1);
          col.tail(n - 1 - j).setZero();
          std::memcpy(bytes + sizeof(Scalar) * static_cast<std::size_t>(j * n), col.data(),
                      sizeof(Scalar) * static_cast<std::size_t>(n));
        }
      });
      a = b;
    }
    f.storage->shrink(sizeof(Scalar) * static_cast<std::size_t>(n * n));
    seat<FScalar>(f.V, nullptr, 0);
    out->storage = std::move(f.storage);
    seat(out->S, out->storage->data(), n);
  } else {
    out->allocate_zero(n);
    for_fixed_chunks(n, 256, threads, [&](Index c0, Index c1) {
      for (Index j = c0; j < c1; ++j) {
        out->S.col(j).head(j) = (V.col(j).head(j) / V(j, j)).template cast<Scalar>();
        out->S(j, j) = Scalar(1);
      }
    });
    f.storage.reset();
    seat<FScalar>(f.V, nullptr, 0);
  }
  return out;
}

/// Moves the sweep's output into the result; with a factor, also the certificate and (keep_factor) S.
template <typename Result, typename Scalar>
void attach_sweep(Result& r, SweepOutput<Scalar>&& s, const std::shared_ptr<const SweepFactor<Scalar>>& f, bool keep_factor) {
  // The last line of defence: finite inputs and grids give finite values, but a fitted grid or a factor
  // at the edge of the scalar's range could still overflow. Never report success with a non-finite Q,
  // nor with codes rounded from a NaN argument (the feedback overflowed: inf − inf).
  if (s.nan_arguments.size() > 0 && s.nan_arguments.any()) {
    Index row = 0;
    for (; row < s.nan_arguments.size() && s.nan_arguments(row) == 0; ++row) {
    }
    r.status = Status::NumericalIssue;
    r.message = "the sweep's rounding arguments overflowed " + std::string(sizeof(Scalar) == 4 ? "float" : "double") +
                " (row " + str(s.row_offset + row) + "): scale W or H down";
    return;
  }
  if (!s.Q.allFinite()) {
    r.status = Status::NumericalIssue;
    r.message = "the quantized weights are not finite (the grid or the factor overflowed " +
                std::string(sizeof(Scalar) == 4 ? "float" : "double") + "): scale W or H down";
    return;
  }
  r.dequantized = std::move(s.Q);
  r.codes = std::move(s.codes);
  r.clipped = std::move(s.clipped);
  if (f) {
    r.energy = std::move(s.energy);
    r.proxy_loss = 0.5 * r.energy.sum();
    r.Ltt = f->d.cwiseInverse();
    if (keep_factor) r.factor = std::shared_ptr<const MatrixMap<Scalar>>(f, &f->S);
  }
}

}  // namespace detail

}  // namespace pptq
