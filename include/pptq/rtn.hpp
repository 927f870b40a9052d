// RTN: round to nearest, no error feedback — the zero baseline (spec §3.2 "Contrast RTN"). It runs
// through the same sweep engine with no factor, so grids, codes and the result type are the same.
#pragma once

#include "common.hpp"
#include "detail/prepare.hpp"
#include "detail/sweep.hpp"
#include "grid.hpp"
#include "result.hpp"

#include <numeric>
#include <vector>

namespace pptq {

struct RtnOptions {
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;
  int threads = 0;
  void check() const {
    if (threads < 0) detail::fail("RtnOptions.threads must be >= 0 (0 = all), got " + detail::str(threads));
  }
};

template <typename DerivedW>
QuantResult<typename DerivedW::Scalar> rtn(const Eigen::MatrixBase<DerivedW>& W, const GridSpec& grid,
                                           const RtnOptions& opt = {}) {
  using Scalar = typename DerivedW::Scalar;
  opt.check();
  grid.check();
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  detail::require_nonempty(W0, "W");
  detail::require_finite(W0, "W", 0, 0, opt.threads);
  QuantResult<Scalar> r;
  r.method = Method::RTN;
  r.rounding = opt.rounding;
  r.seed = opt.seed;
  r.perm.resize(static_cast<std::size_t>(W.cols()));
  std::iota(r.perm.begin(), r.perm.end(), Index(0));
  r.grid = fit_grid(W0, grid, r.perm, {}, opt.threads);
  detail::SweepInput<Scalar> in;
  in.start = &W0;
  in.perm = &r.perm;
  in.rounding = opt.rounding;
  in.seed = opt.seed;
  in.threads = opt.threads;
  in.block_size = W.cols();
  detail::attach_sweep(r, detail::sweep(in, r.grid), std::shared_ptr<const detail::SweepFactor<Scalar>>(), false);
  return r;
}

}  // namespace pptq
