// RTN: round to nearest, no error feedback — the zero baseline (docs/theory.md §3.2, "contrast with RTN"). It runs
// through the same sweep engine with no factor, so grids, codes and the result type are the same.
#pragma once

#include "common.hpp"
#include "detail/prepare.hpp"
#include "detail/stopwatch.hpp"
#include "detail/sweep.hpp"
#include "grid.hpp"
#include "options.hpp"
#include "result.hpp"

#include <numeric>
#include <vector>

namespace pptq {

/// Options of RTN: rounding policy, seed and threads (RoundingOptions); nothing is swept in an order.
struct RtnOptions : RoundingOptions {
  void check() const { RoundingOptions::check("RtnOptions"); }
};

/// RTN of W onto the grid argument: a GridSpec fitted on W, or a fitted Grid (for example a llama.cpp
/// block format's lattices: the plain-fit baseline of that format).
template <typename DerivedW>
QuantResult<typename DerivedW::Scalar> rtn(const Eigen::MatrixBase<DerivedW>& W, const GridArg<typename DerivedW::Scalar>& grid,
                                           const RtnOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  opt.check();
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  detail::require_nonempty(W0, "W");
  detail::require_finite(W0, "W", 0, 0, opt.threads);
  std::vector<Index> perm(static_cast<std::size_t>(W0.cols()));
  std::iota(perm.begin(), perm.end(), Index(0));
  QuantResult<Scalar> r = detail::start_result<QuantResult<Scalar>>(Method::RTN, opt.rounding, opt.seed, perm);
  const detail::Stopwatch total;
  r.grid = detail::grid_for(grid, W0, r.perm, {}, opt.threads);
  detail::SweepInput<Scalar> in;
  in.start = &W0;
  in.perm = &r.perm;
  in.rounding = opt.rounding;
  in.seed = opt.seed;
  in.threads = opt.threads;
  in.block_size = W0.cols();  // nothing is fed back: one block
  detail::attach_sweep(r, detail::sweep(in, r.grid), std::shared_ptr<const detail::SweepFactor<Scalar>>(), false);
  r.seconds.sweep = total.seconds();
  return r;
}

}  // namespace pptq
