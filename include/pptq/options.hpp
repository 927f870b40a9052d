// The options every algorithm shares, in one place with one check() each (LBFGSpp's parameter-struct
// discipline: the check names the struct, the field and the bad value). The algorithms' own options
// (OptqOptions, QronosOptions, GpfqOptions, RtnOptions) derive from these and add what is theirs.
#pragma once

#include "common.hpp"
#include "detail/parallel.hpp"

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

/// A block of a layer's rows, for quantizing one layer in pieces (one per process: pptq/mpi.hpp). W then
/// holds rows [offset, offset + W.rows()) of a layer of `layer_rows` rows. Two things make the pieces
/// bit-identical to the whole-layer call: stochastic rounding keys Philox by the GLOBAL row (offset + local
/// row; docs/design.md §5), and the rows run on the layer's row chunks (detail::row_chunk(layer_rows)), so
/// every product a row takes part in has the same shape and the same position of the row. A block must
/// therefore start on a chunk boundary and end on one or at the layer's end: row_block_bounds() splits a
/// layer so. layer_rows = 0 (the default): W is the whole layer.
struct RowBlock {
  Index offset = 0;
  Index layer_rows = 0;

  bool whole() const { return layer_rows == 0; }
  /// The row chunk of the layer (what the sweep of a block of `rows` rows runs on).
  Index chunk(Index rows) const { return detail::row_chunk(whole() ? rows : layer_rows); }

  /// Throws (UsageError) unless a W of `rows` rows can be this block of the layer.
  void check(const char* owner, Index rows) const {
    const std::string me = std::string(owner) + ".row_block";
    if (whole()) {
      if (offset != 0) detail::fail(me + ".offset is " + detail::str(offset) + " but layer_rows is 0 (W is the whole layer)");
      return;
    }
    if (offset < 0 || layer_rows < 0 || offset + rows > layer_rows)
      detail::fail(me + ": rows [" + detail::str(offset) + ", " + detail::str(offset + rows) + ") are not inside a layer of " +
                   detail::str(layer_rows) + " rows");
    const Index c = detail::row_chunk(layer_rows);
    if (offset % c != 0 || ((offset + rows) % c != 0 && offset + rows != layer_rows))
      detail::fail(me + ": rows [" + detail::str(offset) + ", " + detail::str(offset + rows) +
                   ") do not lie on the layer's row chunks of " + detail::str(c) + " rows (use row_block_bounds)");
  }
};

/// Splits a layer of `rows` rows into `parts` blocks on its row chunks: block p is rows
/// [bounds[p], bounds[p + 1]). Chunks are dealt contiguously, the first blocks taking one more when they
/// do not divide evenly; with fewer chunks than parts the last blocks are empty.
inline std::vector<Index> row_block_bounds(Index rows, int parts) {
  if (rows < 0 || parts < 1) detail::fail("row_block_bounds: rows must be >= 0 and parts >= 1");
  const Index c = detail::row_chunk(rows), chunks = (rows + c - 1) / c;
  std::vector<Index> b(static_cast<std::size_t>(parts) + 1, 0);
  for (int p = 0; p < parts; ++p) {
    const Index take = chunks / parts + (p < chunks % parts ? 1 : 0);
    b[p + 1] = std::min(rows, b[p] + take * c);
  }
  return b;
}

namespace detail {
/// A relative damping factor must be finite and ≥ 0.
inline void check_damp(const char* owner, double damp) {
  if (!(damp >= 0) || !std::isfinite(damp))
    fail(std::string(owner) + ".damp must be >= 0 and finite, got " + str(damp));
}
}  // namespace detail

}  // namespace pptq
