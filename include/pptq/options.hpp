// The options every algorithm shares, in one place with one check() each (LBFGSpp's parameter-struct
// discipline: the check names the struct, the field and the bad value). The algorithms' own options
// (OptqOptions, QronosOptions, GpfqOptions, RtnOptions) derive from these and add what is theirs.
#pragma once

#include "common.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace pptq {

/// How a value is rounded, and on how many threads: what even RTN takes.
struct RoundingOptions {
  Rounding rounding = Rounding::Nearest;
  std::uint64_t seed = 0;  ///< stochastic rounding: the key of the counter-based generator (row, column)
  int threads = 0;         ///< 0: all OpenMP threads; results are identical for any count

  void check(const char* owner) const {
    if (threads < 0) detail::fail(std::string(owner) + ".threads must be >= 0 (0 = all), got " + detail::str(threads));
  }
};

/// What every method that sweeps the columns in an order takes (OPTQ, Qronos, GPFQ).
struct SweepOptions : RoundingOptions {
  bool act_order = true;       ///< sweep columns by decreasing diag of the factored Gram (stable for ties)
  std::vector<Index> order;    ///< custom sweep order (perm[k] = original column); overrides act_order
  /// Lazy-batch block size B: a performance knob only, any B ≥ 1 gives the same result in exact
  /// arithmetic (docs/theory.md §2). The left-looking sweep repacks the swept columns once per block
  /// and works inside a block in pieces of 128 and 16 columns (detail/sweep.hpp), so large blocks are
  /// cheapest; docs/performance.md has the measurements behind the default.
  Index block_size = 1024;
  std::function<void(double)> progress;  ///< called with the fraction of the sweep done (from the calling thread)

  void check(const char* owner) const {
    RoundingOptions::check(owner);
    if (block_size < 1) detail::fail(std::string(owner) + ".block_size must be >= 1, got " + detail::str(block_size));
  }
};

/// Damping of the factored matrix H + λI, shared by OPTQ and Qronos (docs/theory.md §1, §3.5, §7).
/// How λ is chosen differs (OPTQ: damp · mean diag H; Qronos: α · λ_max by default); what happens when
/// H + λI is not positive definite does not.
struct DampingOptions {
  std::optional<double> lambda;   ///< absolute λ on the scale of H; overrides every relative rule when set
  bool escalate_damping = true;   ///< raise λ ×escalation_factor while H + λI is not positive definite
  double escalation_factor = 10;
  double max_damp = 1.0;          ///< escalation cap: λ ≤ max(max_damp · mean(diag H), requested λ)
  bool keep_factor = true;        ///< keep the factor in the result (the bounds reuse it: no second factorization)

  void check(const char* owner) const {
    if (lambda && (!(*lambda >= 0) || !std::isfinite(*lambda)))
      detail::fail(std::string(owner) + ".lambda must be >= 0 and finite, got " + detail::str(*lambda));
    if (!(escalation_factor > 1) || !std::isfinite(escalation_factor))
      detail::fail(std::string(owner) + ".escalation_factor must be > 1 and finite, got " + detail::str(escalation_factor));
    if (!(max_damp > 0) || !std::isfinite(max_damp))
      detail::fail(std::string(owner) + ".max_damp must be > 0 and finite, got " + detail::str(max_damp));
  }
};

namespace detail {
/// A relative damping factor must be finite and ≥ 0.
inline void check_damp(const char* owner, double damp) {
  if (!(damp >= 0) || !std::isfinite(damp))
    fail(std::string(owner) + ".damp must be >= 0 and finite, got " + str(damp));
}
}  // namespace detail

}  // namespace pptq
