// Scale-out over MPI processes (docs/mpi.md): the calibration sums reduced across ranks in a fixed order,
// and one layer's rows split across ranks. The only header of pptq that includes <mpi.h>; the core stays
// MPI-free (the build adds it only when find_package(MPI) succeeds).
//
// Reduction order. The calibration data are cut into S shards (batches of samples, in order), shard s
// owned by ShardLayout::owner(s): contiguous ranges, rank 0 first. The sum over shards is ONE fixed tree,
// whatever the number of ranks: the bisection tree over [0, S) (node [lo, hi) = [lo, mid) + [mid, hi),
// mid = lo + (hi − lo)/2, the left partial plus the right one), with each shard's partial (its own
// accumulator, filled by the caller) as a leaf. A rank computes the nodes that lie inside its range on its
// own; a node that spans ranks is formed on the owner of its first shard, which receives the right child
// from the owner of `mid`. Floating-point addition happens node by node in the same order for 1, 2, 3, 4
// … ranks, so the reduced sums are bit-identical for any number of ranks given the same shards
// (tests/mpi). MPI_Allreduce is not used: its order is unspecified. allreduce() of one partial per rank
// is the same tree with the ranks as the leaves: bit-identical across rank counts when every rank's
// partial is a node of the shards' tree (shards split evenly over a power-of-two number of ranks, each
// partial accumulated with accumulate_local()).
//
// Failure. A rank whose own work throws (a NaN in its shard, its H or its rows of W) must not leave the
// others waiting in a collective: every phase runs the local work, then agree() (one MPI_Allreduce and
// two broadcasts), and if any rank failed every rank throws the error of the lowest failing rank: the same
// kind (pptq::Error) and the same message, prefixed "rank r: ".
//
// Row split. optq_rows and quantize_optq_rows give each rank a block of the layer's rows on the layer's
// row chunks (row_block_bounds, RowBlock in options.hpp): the factor of H + λI is computed redundantly on
// every rank (it does not scale), the sweep, the grid fit and the refit do (rows are independent), and
// the result is gathered on EVERY rank, bit-identical to the single-process call.
#pragma once

#include <mpi.h>

#include "ggml/grid.hpp"
#include "gram.hpp"
#include "optq.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace pptq {
namespace mpi {

/// How data move between ranks: messages of at most `chunk` elements (MPI counts are `int`).
struct TransferOptions {
  Index chunk = Index(1) << 24;

  void check() const {
    if (chunk < 1 || chunk > INT_MAX)
      detail::fail("TransferOptions.chunk must be in 1..INT_MAX, got " + detail::str(chunk));
  }
};

/// Shards [0, shards) dealt to the ranks of a communicator in contiguous ranges, rank 0 first; when the
/// ranks do not divide the shards, the first ranks take one more (ranks beyond the shards take none).
class ShardLayout {
 public:
  ShardLayout(Index shards, int ranks) : shards_(shards), ranks_(ranks) {
    if (shards < 1 || ranks < 1) detail::fail("ShardLayout: shards and ranks must be >= 1");
  }
  static ShardLayout of(Index shards, MPI_Comm comm) {
    int size = 1;
    MPI_Comm_size(comm, &size);
    return ShardLayout(shards, size);
  }

  Index shards() const { return shards_; }
  int ranks() const { return ranks_; }
  /// Rank r's shards are [first(r), first(r + 1)).
  Index first(int r) const {
    const Index q = shards_ / ranks_, rem = shards_ % ranks_;
    return q * r + std::min<Index>(r, rem);
  }
  int owner(Index shard) const {
    int lo = 0, hi = ranks_ - 1;  // the last rank whose first shard is <= shard
    while (lo < hi) {
      const int m = (lo + hi + 1) / 2;
      if (first(m) <= shard) lo = m; else hi = m - 1;
    }
    return lo;
  }

 private:
  Index shards_;
  int ranks_;
};

inline int rank_of(MPI_Comm comm) {
  int r = 0;
  MPI_Comm_rank(comm, &r);
  return r;
}
inline int size_of(MPI_Comm comm) {
  int s = 1;
  MPI_Comm_size(comm, &s);
  return s;
}

// ------------------------------------------------------------------------------------------------
// Agreeing on failure
// ------------------------------------------------------------------------------------------------
namespace detail {

/// The kind of a caught exception (−1 for one that is not a pptq::Error) and its message.
inline int describe(const std::exception_ptr& e, std::string& msg) {
  try {
    std::rethrow_exception(e);
  } catch (const pptq::Error& x) {
    msg = x.what();
    return static_cast<int>(x.kind());
  } catch (const std::exception& x) {
    msg = x.what();
  } catch (...) {
    msg = "unknown exception";
  }
  return -1;
}

[[noreturn]] inline void throw_as(int kind, const std::string& m) {
  switch (kind) {
    case static_cast<int>(ErrorKind::Usage): throw UsageError(m);
    case static_cast<int>(ErrorKind::Data): throw DataError(m);
    case static_cast<int>(ErrorKind::Numerical): throw NumericalError(m);
    case static_cast<int>(ErrorKind::Io): throw IoError(m);
    default: throw std::runtime_error(m);
  }
}

}  // namespace detail

/// Collective: every rank passes its local outcome (null: success). If any rank failed, every rank throws
/// the error of the lowest failing rank, of its kind, with the message "rank r: <what>".
inline void agree(const std::exception_ptr& local, MPI_Comm comm) {
  const int me = rank_of(comm), size = size_of(comm);
  int mine = local ? me : size, first = size;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == size) return;
  std::string msg;
  int head[2] = {0, 0};
  if (me == first) {
    head[0] = detail::describe(local, msg);
    if (msg.size() > 65536) msg.resize(65536);
    head[1] = static_cast<int>(msg.size());
  }
  MPI_Bcast(head, 2, MPI_INT, first, comm);
  msg.resize(static_cast<std::size_t>(head[1]));
  if (head[1] > 0) MPI_Bcast(msg.data(), head[1], MPI_CHAR, first, comm);
  detail::throw_as(head[0], "rank " + std::to_string(first) + ": " + msg);
}

/// Runs f() on every rank, then agree(): either every rank returns or every rank throws the same error.
template <typename F>
void collectively(MPI_Comm comm, F&& f) {
  std::exception_ptr e;
  try {
    f();
  } catch (...) {
    e = std::current_exception();
  }
  agree(e, comm);
}

// ------------------------------------------------------------------------------------------------
// Moving arrays in chunks
// ------------------------------------------------------------------------------------------------
namespace detail {

template <typename T> MPI_Datatype datatype();
template <> inline MPI_Datatype datatype<float>() { return MPI_FLOAT; }
template <> inline MPI_Datatype datatype<double>() { return MPI_DOUBLE; }
template <> inline MPI_Datatype datatype<std::int32_t>() { return MPI_INT32_T; }
template <> inline MPI_Datatype datatype<std::int64_t>() { return MPI_INT64_T; }
template <> inline MPI_Datatype datatype<std::uint64_t>() { return MPI_UINT64_T; }
template <> inline MPI_Datatype datatype<std::uint8_t>() { return MPI_UINT8_T; }

/// A run of contiguous stored numbers.
template <typename T>
struct Span {
  T* p;
  Index n;
};

/// Walks a list of spans in order, `count` elements at a time: f(pointer, n, offset in the chunk).
template <typename T>
class SpanCursor {
 public:
  explicit SpanCursor(const std::vector<Span<T>>& s) : s_(s) {}
  template <typename F>
  void next(Index count, F&& f) {
    Index done = 0;
    while (done < count) {
      const Span<T>& sp = s_[i_];
      const Index k = std::min(count - done, sp.n - off_);
      f(sp.p + off_, k, done);
      done += k;
      off_ += k;
      if (off_ == sp.n) {
        ++i_;
        off_ = 0;
      }
    }
  }

 private:
  const std::vector<Span<T>>& s_;
  std::size_t i_ = 0;
  Index off_ = 0;
};

template <typename T>
Index total(const std::vector<Span<T>>& s) {
  Index t = 0;
  for (const auto& x : s) t += x.n;
  return t;
}

constexpr int kTag = 7351;

/// Sends the spans' numbers to `dest`, chunk by chunk.
template <typename T>
void send_spans(const std::vector<Span<T>>& s, int dest, MPI_Comm comm, Index chunk) {
  const Index n = total(s);
  std::vector<T> buf(static_cast<std::size_t>(std::min(n, chunk)));
  SpanCursor<T> cur(s);
  for (Index off = 0; off < n; off += chunk) {
    const Index k = std::min(chunk, n - off);
    cur.next(k, [&](T* p, Index m, Index at) { std::copy(p, p + m, buf.data() + at); });
    MPI_Send(buf.data(), static_cast<int>(k), datatype<T>(), dest, kTag, comm);
  }
}

/// Receives numbers from `src` and adds them into the spans, element by element (in order).
template <typename T>
void recv_add_spans(const std::vector<Span<T>>& s, int src, MPI_Comm comm, Index chunk) {
  const Index n = total(s);
  std::vector<T> buf(static_cast<std::size_t>(std::min(n, chunk)));
  SpanCursor<T> cur(s);
  for (Index off = 0; off < n; off += chunk) {
    const Index k = std::min(chunk, n - off);
    MPI_Recv(buf.data(), static_cast<int>(k), datatype<T>(), src, kTag, comm, MPI_STATUS_IGNORE);
    cur.next(k, [&](T* p, Index m, Index at) {
      for (Index i = 0; i < m; ++i) p[i] += buf[static_cast<std::size_t>(at + i)];
    });
  }
}

/// Broadcasts the spans' numbers from `root` into every rank's spans.
template <typename T>
void bcast_spans(const std::vector<Span<T>>& s, int root, MPI_Comm comm, Index chunk) {
  const Index n = total(s);
  const bool me = rank_of(comm) == root;
  std::vector<T> buf(static_cast<std::size_t>(std::min(n, chunk)));
  SpanCursor<T> cur(s);
  for (Index off = 0; off < n; off += chunk) {
    const Index k = std::min(chunk, n - off);
    if (me) cur.next(k, [&](T* p, Index m, Index at) { std::copy(p, p + m, buf.data() + at); });
    MPI_Bcast(buf.data(), static_cast<int>(k), datatype<T>(), root, comm);
    if (!me) cur.next(k, [&](T* p, Index m, Index at) { std::copy(buf.data() + at, buf.data() + at + m, p); });
  }
}

/// A contiguous array broadcast from `root` in chunks.
template <typename T>
void bcast_array(T* data, Index n, int root, MPI_Comm comm, Index chunk) {
  for (Index off = 0; off < n; off += chunk)
    MPI_Bcast(data + off, static_cast<int>(std::min(chunk, n - off)), datatype<T>(), root, comm);
}

/// 64-bit FNV-1a of a matrix's bytes (with its shape): do the ranks hold the same input?
template <typename Derived>
std::uint64_t fingerprint(const Eigen::MatrixBase<Derived>& m) {
  using S = typename Derived::Scalar;
  const Eigen::Ref<const pptq::Matrix<S>> a(m.derived());
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  const Index r = a.rows(), c = a.cols();
  mix(&r, sizeof r);
  mix(&c, sizeof c);
  for (Index j = 0; j < c; ++j) mix(a.col(j).data(), sizeof(S) * static_cast<std::size_t>(r));
  return h;
}

}  // namespace detail
}  // namespace mpi

// ------------------------------------------------------------------------------------------------
// The accumulators' sums, for the reduction (befriended by gram.hpp)
// ------------------------------------------------------------------------------------------------
namespace detail {

/// What must agree for two partials to be added: the width, (CorrectionGram) the rows and W's checksum,
/// and the samples they hold. cols == 0: an empty partial (the identity).
struct PartialShape {
  std::int64_t cols = 0, rows = 0, samples = 0;
  double fingerprint = 0;

  bool empty() const { return cols == 0; }
  bool fits(const PartialShape& o) const { return cols == o.cols && rows == o.rows && fingerprint == o.fingerprint; }
};

struct AccumulatorAccess {
  template <typename S>
  static PartialShape shape(const Gram<S>& g) { return {g.H_.cols(), 0, g.samples_, 0}; }
  template <typename S>
  static PartialShape shape(const CrossGram<S>& g) { return {g.Ht_.cols(), 0, g.samples_, 0}; }
  template <typename S>
  static PartialShape shape(const CorrectionGram<S>& g) { return {g.Ht_.cols(), g.C_.cols(), g.samples_, g.fingerprint_}; }

  /// Zero sums of the given shape (no samples).
  template <typename S>
  static void make_zero(Gram<S>& g, const PartialShape& s) {
    g.H_ = zero_on_huge_pages<S>(s.cols, s.cols);
    g.samples_ = 0;
  }
  template <typename S>
  static void make_zero(CrossGram<S>& g, const PartialShape& s) {
    g = CrossGram<S>(s.cols);
  }
  template <typename S>
  static void make_zero(CorrectionGram<S>& g, const PartialShape& s) {
    g.Ht_ = zero_on_huge_pages<S>(s.cols, s.cols);
    g.C_.setZero(s.cols, s.rows);
    g.samples_ = 0;
    g.fingerprint_ = s.fingerprint;
  }

  template <typename Acc>
  static void add_samples(Acc& g, std::int64_t n) { g.samples_ += n; }

  /// The stored numbers: the lower triangle column by column, then G or the correction whole.
  template <typename S>
  static std::vector<mpi::detail::Span<S>> spans(Gram<S>& g) { return triangle(g.H_); }
  template <typename S>
  static std::vector<mpi::detail::Span<S>> spans(CrossGram<S>& g) {
    auto s = triangle(g.Ht_);
    s.push_back({g.G_.data(), g.G_.size()});
    return s;
  }
  template <typename S>
  static std::vector<mpi::detail::Span<S>> spans(CorrectionGram<S>& g) {
    auto s = triangle(g.Ht_);
    s.push_back({g.C_.data(), g.C_.size()});
    return s;
  }

 private:
  template <typename S>
  static std::vector<mpi::detail::Span<S>> triangle(Matrix<S>& H) {
    std::vector<mpi::detail::Span<S>> s;
    const Index n = H.cols();
    for (Index j = 0; j < n; ++j) s.push_back({H.data() + j * n + j, n - j});
    return s;
  }
};

}  // namespace detail

namespace mpi {
namespace detail {

using pptq::detail::AccumulatorAccess;
using pptq::detail::PartialShape;

template <typename Acc>
using scalar_of = typename Acc::Scalar;

inline std::string describe_shape(const PartialShape& s) {
  std::string d = std::to_string(s.cols) + " columns";
  if (s.rows) d += ", " + std::to_string(s.rows) + " rows";
  return d;
}

/// a += b (the left partial plus the right one); an empty partial is the identity. The same code runs for
/// partials on one rank and across ranks, so the arithmetic does not depend on where a node is formed.
template <typename Acc>
void combine(Acc& a, Acc& b) {
  const PartialShape sb = AccumulatorAccess::shape(b);
  if (sb.empty()) return;
  const PartialShape sa = AccumulatorAccess::shape(a);
  if (!sa.empty() && !sa.fits(sb))
    throw DataError("the shards' partial sums do not fit together: " + describe_shape(sa) + " vs " + describe_shape(sb) +
                    (sa.fingerprint != sb.fingerprint ? " (a CorrectionGram of another W)" : ""));
  if (sa.empty()) AccumulatorAccess::make_zero(a, sb);
  const auto da = AccumulatorAccess::spans(a), db = AccumulatorAccess::spans(b);
  for (std::size_t i = 0; i < da.size(); ++i)
    for (Index k = 0; k < da[i].n; ++k) da[i].p[k] += db[i].p[k];
  AccumulatorAccess::add_samples(a, sb.samples);
}

inline void send_shape(const PartialShape& s, int dest, MPI_Comm comm) {
  std::int64_t h[4] = {s.cols, s.rows, s.samples, 0};
  std::memcpy(&h[3], &s.fingerprint, sizeof(double));
  MPI_Send(h, 4, MPI_INT64_T, dest, kTag, comm);
}
inline PartialShape recv_shape(int src, MPI_Comm comm) {
  std::int64_t h[4];
  MPI_Recv(h, 4, MPI_INT64_T, src, kTag, comm, MPI_STATUS_IGNORE);
  PartialShape s{h[0], h[1], h[2], 0};
  std::memcpy(&s.fingerprint, &h[3], sizeof(double));
  return s;
}

/// The shards' tree as seen from one rank: its own nodes (computed locally), then the nodes spanning ranks.
template <typename Acc>
class Tree {
 public:
  Tree(const ShardLayout& layout, MPI_Comm comm, Index chunk)
      : L_(layout), comm_(comm), me_(rank_of(comm)), lo_(layout.first(me_)),
        hi_(me_ + 1 < layout.ranks() ? layout.first(me_ + 1) : layout.shards()), chunk_(chunk) {}

  /// The maximal nodes inside this rank's shards, left to right, each summed over the same subtree.
  template <typename Fill>
  void local_roots(Index lo, Index hi, Fill& fill, std::vector<Acc>& out) const {
    if (hi <= lo_ || lo >= hi_) return;
    if (lo >= lo_ && hi <= hi_) {
      out.push_back(local_sum(lo, hi, fill));
      return;
    }
    const Index mid = lo + (hi - lo) / 2;
    local_roots(lo, mid, fill, out);
    local_roots(mid, hi, fill, out);
  }

  /// Forms node [lo, hi) on the owner of lo (its value left in `out` there), from the local roots in order.
  void cross(Index lo, Index hi, std::vector<Acc>& roots, std::size_t& next, Acc& out) {
    if (hi <= lo_ || lo >= hi_) return;
    if (lo >= lo_ && hi <= hi_) {
      out = std::move(roots[next++]);
      return;
    }
    const Index mid = lo + (hi - lo) / 2;
    Acc right;
    cross(lo, mid, roots, next, out);
    cross(mid, hi, roots, next, right);
    const int ol = L_.owner(lo), om = L_.owner(mid);
    if (ol == om) {
      if (me_ == ol) combine(out, right);
    } else if (me_ == om) {
      send(right, ol);
    } else if (me_ == ol) {
      recv_combine(out, om);
    }
  }

 private:
  template <typename Fill>
  Acc local_sum(Index lo, Index hi, Fill& fill) const {
    if (hi - lo == 1) {
      Acc a;
      fill(lo, a);
      return a;
    }
    const Index mid = lo + (hi - lo) / 2;
    Acc a = local_sum(lo, mid, fill);
    Acc b = local_sum(mid, hi, fill);
    combine(a, b);
    return a;
  }

  void send(Acc& a, int dest) {
    const PartialShape s = AccumulatorAccess::shape(a);
    send_shape(s, dest, comm_);
    if (!s.empty()) send_spans(AccumulatorAccess::spans(a), dest, comm_, chunk_);
  }

  /// out += the partial of rank `src`, added as it arrives, element by element as combine() adds.
  void recv_combine(Acc& out, int src) {
    const PartialShape s = recv_shape(src, comm_);
    if (s.empty()) return;
    if (AccumulatorAccess::shape(out).empty()) AccumulatorAccess::make_zero(out, s);
    recv_add_spans(AccumulatorAccess::spans(out), src, comm_, chunk_);
    AccumulatorAccess::add_samples(out, s.samples);
  }

  const ShardLayout& L_;
  MPI_Comm comm_;
  int me_;
  Index lo_, hi_, chunk_;
};

/// The local roots must fit together, and (collective) every rank's must fit every other's.
template <typename Acc>
PartialShape common_shape(const std::vector<Acc>& roots, MPI_Comm comm) {
  PartialShape mine;
  for (const Acc& r : roots) {
    const PartialShape s = AccumulatorAccess::shape(r);
    if (!s.empty()) mine = s;
  }
  std::int64_t fp = 0;
  std::memcpy(&fp, &mine.fingerprint, sizeof fp);
  const bool has = !mine.empty();
  std::int64_t lo[3] = {has ? mine.cols : INT64_MAX, has ? mine.rows : INT64_MAX, has ? fp : INT64_MAX};
  std::int64_t hi[3] = {has ? mine.cols : INT64_MIN, has ? mine.rows : INT64_MIN, has ? fp : INT64_MIN};
  std::int64_t mn[3], mx[3];
  MPI_Allreduce(lo, mn, 3, MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(hi, mx, 3, MPI_INT64_T, MPI_MAX, comm);
  if (mn[0] == INT64_MAX) return {};  // every partial is empty
  if (mn[0] != mx[0] || mn[1] != mx[1] || mn[2] != mx[2])
    throw DataError("the ranks' partial sums do not fit together: " +
                    (mn[0] != mx[0] ? "widths " + std::to_string(mn[0]) + " and " + std::to_string(mx[0])
                                    : mn[1] != mx[1] ? "rows " + std::to_string(mn[1]) + " and " + std::to_string(mx[1])
                                                     : std::string("CorrectionGrams of different W")) +
                    " (every shard must be of the same layer)");
  PartialShape s = mine;
  s.cols = mn[0];
  s.rows = mn[1];
  std::memcpy(&s.fingerprint, &mn[2], sizeof fp);
  return s;
}

/// The reduction once every rank has its local roots: the nodes spanning ranks, then rank 0's root
/// broadcast into `out` on every rank.
template <typename Acc>
void reduce_roots(const ShardLayout& layout, std::vector<Acc>& roots, Acc& out, MPI_Comm comm, Index chunk) {
  std::exception_ptr err;
  PartialShape shape;
  try {
    for (std::size_t i = 1; i < roots.size(); ++i) {  // local roots must fit together (checked before sending)
      const PartialShape a = AccumulatorAccess::shape(roots[0]), b = AccumulatorAccess::shape(roots[i]);
      if (!a.empty() && !b.empty() && !a.fits(b))
        throw DataError("the shards' partial sums do not fit together: " + describe_shape(a) + " vs " + describe_shape(b));
    }
  } catch (...) {
    err = std::current_exception();
  }
  agree(err, comm);
  shape = common_shape(roots, comm);  // throws on every rank alike
  Tree<Acc> t(layout, comm, chunk);
  std::size_t next = 0;
  Acc root;
  t.cross(0, layout.shards(), roots, next, root);
  // Rank 0 holds the sum; every rank takes its shape and numbers.
  std::int64_t samples = rank_of(comm) == 0 ? AccumulatorAccess::shape(root).samples : 0;
  MPI_Bcast(&samples, 1, MPI_INT64_T, 0, comm);
  if (shape.empty()) {
    out = Acc();
    return;
  }
  if (rank_of(comm) != 0) AccumulatorAccess::make_zero(root, shape);
  bcast_spans(AccumulatorAccess::spans(root), 0, comm, chunk);
  if (rank_of(comm) != 0) AccumulatorAccess::add_samples(root, samples);
  out = std::move(root);
}

}  // namespace detail

/// Collective: the sum over shards [0, layout.shards()) of the shards' accumulators, on every rank. Each
/// rank calls fill(shard, acc) for its own shards (acc: an empty accumulator to add that shard's batches
/// to), in order; the sums are formed on the fixed bisection tree over the shards (the header comment), so
/// the result is bit-identical for any number of ranks. Acc: Gram, CrossGram or CorrectionGram. If fill
/// throws on any rank, or the partials do not fit together, every rank throws the same error.
template <typename Acc, typename Fill>
Acc accumulate(const ShardLayout& layout, Fill&& fill, MPI_Comm comm, const TransferOptions& t = {}) {
  std::vector<Acc> roots;
  collectively(comm, [&] {
    t.check();
    if (layout.ranks() != size_of(comm))
      pptq::detail::fail("accumulate: the layout is for " + std::to_string(layout.ranks()) + " ranks, the communicator has " +
                         std::to_string(size_of(comm)));
    detail::Tree<Acc>(layout, comm, t.chunk).local_roots(0, layout.shards(), fill, roots);
  });
  Acc out;
  detail::reduce_roots(layout, roots, out, comm, t.chunk);
  return out;
}

/// One rank's share of the tree without MPI's help: the sum of shards [first, end) over the same bisection
/// tree accumulate() uses (when [first, end) is a node of the shards' tree, e.g. a power-of-two number of
/// ranks dividing the shards evenly, this is exactly that node).
template <typename Acc, typename Fill>
Acc accumulate_local(Index first, Index end, Fill&& fill) {
  if (end - first == 1) {
    Acc a;
    fill(first, a);
    return a;
  }
  if (end <= first) return Acc();
  const Index mid = first + (end - first) / 2;
  Acc a = accumulate_local<Acc>(first, mid, fill);
  Acc b = accumulate_local<Acc>(mid, end, fill);
  detail::combine(a, b);
  return a;
}

/// Collective, in place: every rank's `partial` becomes the sum of all ranks' partials, formed on the
/// bisection tree over the ranks (rank order); the same numbers on every rank. Deterministic for a given
/// number of ranks; bit-identical across rank counts when each partial is a node of one shards' tree
/// (accumulate_local over an even split, a power-of-two number of ranks). If the partials do not fit
/// together (widths, a CorrectionGram of another W), every rank throws the same DataError.
template <typename Acc>
void allreduce(Acc& partial, MPI_Comm comm, const TransferOptions& t = {}) {
  collectively(comm, [&] { t.check(); });
  const ShardLayout layout(size_of(comm), size_of(comm));
  std::vector<Acc> roots;
  roots.push_back(std::move(partial));
  detail::reduce_roots(layout, roots, partial, comm, t.chunk);
}

// ------------------------------------------------------------------------------------------------
// One layer's rows split across ranks
// ------------------------------------------------------------------------------------------------
namespace detail {

/// full (rows × k) on every rank from each rank's block of rows (its `local`, rows [b[p], b[p+1])).
template <typename M>
void gather_rows(const M& local, M& full, const std::vector<Index>& b, Index k, MPI_Comm comm, Index chunk) {
  using T = typename M::Scalar;
  const int me = rank_of(comm);
  full.resize(b.back(), k);
  std::vector<T> buf;
  for (int p = 0; p + 1 < static_cast<int>(b.size()); ++p) {
    const Index nr = b[p + 1] - b[p], n = nr * k;
    if (nr == 0) continue;
    if (me == p) {
      full.middleRows(b[p], nr) = local;
      for (Index off = 0; off < n; off += chunk)
        MPI_Bcast(const_cast<T*>(local.data()) + off, static_cast<int>(std::min(chunk, n - off)), datatype<T>(), p, comm);
      continue;
    }
    buf.resize(static_cast<std::size_t>(std::min(n, chunk)));
    for (Index off = 0; off < n; off += chunk) {
      const Index m = std::min(chunk, n - off);
      MPI_Bcast(buf.data(), static_cast<int>(m), datatype<T>(), p, comm);
      for (Index e = 0; e < m; ++e) full(b[p] + (off + e) % nr, (off + e) / nr) = buf[static_cast<std::size_t>(e)];
    }
  }
}

/// Every rank's block of a QuantResult's row-wise fields gathered into `r` (which holds the shared
/// fields); the proxy loss is recomputed from the whole energy, as the single call computes it.
template <typename Scalar>
void gather_result(QuantResult<Scalar>& r, const std::vector<Index>& b, MPI_Comm comm, Index chunk) {
  const Index cols = r.grid.group_index.size(), groups = r.grid.scale.cols();
  QuantResult<Scalar> l;
  l.dequantized = std::move(r.dequantized);
  l.codes = std::move(r.codes);
  l.grid.scale = std::move(r.grid.scale);
  l.grid.zero = std::move(r.grid.zero);
  l.grid.min = std::move(r.grid.min);
  l.energy = std::move(r.energy);
  l.clipped = std::move(r.clipped);
  const bool has_energy = l.energy.size() > 0;
  gather_rows(l.dequantized, r.dequantized, b, cols, comm, chunk);
  gather_rows(l.codes, r.codes, b, cols, comm, chunk);
  gather_rows(l.grid.scale, r.grid.scale, b, groups, comm, chunk);
  gather_rows(l.grid.zero, r.grid.zero, b, groups, comm, chunk);
  gather_rows(l.grid.min, r.grid.min, b, groups, comm, chunk);
  Eigen::VectorXi clipped = l.clipped;
  gather_rows(clipped, r.clipped, b, 1, comm, chunk);
  if (has_energy) {
    gather_rows(l.energy, r.energy, b, 1, comm, chunk);
    r.proxy_loss = 0.5 * r.energy.sum();
  }
}

/// Collective: the lowest rank whose local result failed (Status::NumericalIssue), or −1. Its status and
/// message then become every rank's (a failed result holds no weights, as from the single call).
template <typename Scalar>
bool agree_on_status(QuantResult<Scalar>& r, MPI_Comm comm) {
  const int me = rank_of(comm), size = size_of(comm);
  int mine = r.ok() ? size : me, first = size;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == size) return true;
  int len = static_cast<int>(std::min<std::size_t>(r.message.size(), 65536));
  MPI_Bcast(&len, 1, MPI_INT, first, comm);
  r.message.resize(static_cast<std::size_t>(len));
  if (len > 0) MPI_Bcast(r.message.data(), len, MPI_CHAR, first, comm);
  r.status = Status::NumericalIssue;
  r.dequantized.resize(0, 0);
  r.codes.resize(0, 0);
  return false;
}

/// Collective: every rank holds the same W and H (a checksum of each), else every rank throws.
template <typename DW, typename DH>
void require_same_inputs(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DH>& H, MPI_Comm comm) {
  const std::uint64_t h[2] = {fingerprint(W), fingerprint(H)};
  std::uint64_t mn[2], mx[2];
  MPI_Allreduce(h, mn, 2, MPI_UINT64_T, MPI_MIN, comm);
  MPI_Allreduce(h, mx, 2, MPI_UINT64_T, MPI_MAX, comm);
  if (mn[0] != mx[0] || mn[1] != mx[1])
    throw DataError(std::string("the ranks were given different ") + (mn[0] != mx[0] ? "W" : "H") +
                    ": every rank must pass the whole layer and the same H");
}

/// The checks every rank runs on its inputs before any work (collectively: the same error everywhere).
template <typename DW, typename DH>
void check_row_split_inputs(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DH>& H, const RowBlock& rb,
                            const char* who) {
  if (!rb.whole()) pptq::detail::fail(std::string(who) + ": the options' row_block is set by the split; leave it empty");
  pptq::detail::require_nonempty(W, "W");
  if (H.rows() != W.cols() || H.cols() != W.cols())
    pptq::detail::fail(std::string(who) + ": H is " + pptq::detail::str(H.rows()) + " x " + pptq::detail::str(H.cols()) +
                       " but W has " + pptq::detail::str(W.cols()) + " columns");
  pptq::detail::require_finite(H, "H");
  pptq::detail::require_finite(W, "W");
}

/// This rank's rows: [b[me], b[me+1]), or for a rank without rows rank 0's block (computed only for the
/// shared fields of the result, its rows not gathered).
inline std::pair<Index, Index> my_rows(const std::vector<Index>& b, MPI_Comm comm) {
  const int me = rank_of(comm);
  if (b[me + 1] > b[me]) return {b[me], b[me + 1] - b[me]};
  return {0, b[1]};
}

template <typename Scalar>
Grid<Scalar> grid_rows(const Grid<Scalar>& g, Index r0, Index n) {
  Grid<Scalar> s = g;
  s.scale = g.scale.middleRows(r0, n).eval();
  s.zero = g.zero.middleRows(r0, n).eval();
  s.min = g.min.middleRows(r0, n).eval();
  return s;
}

}  // namespace detail

/// Collective: OPTQ of W (rows × cols) given H, the rows split across the ranks of comm on the layer's row
/// chunks (row_block_bounds(rows, ranks)). Every rank passes the same W, H, grid and options (checked by
/// checksums of W and H). Returns the whole layer's result on EVERY rank, bit-identical to
/// pptq::optq(W, H, grid, opt) in codes, values, grid, energies and λ (the deterministic and the stochastic
/// rounding: Philox is keyed by the global row). Each rank's factor is its own (computed redundantly).
/// Errors (a NaN in a rank's H, bad options) are thrown on every rank alike (agree()); a numerical failure
/// of any rank's block is every rank's status (with that rank's message).
template <typename DerivedW, typename DerivedH>
QuantResult<typename DerivedW::Scalar> optq_rows(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                                                 const GridArg<typename DerivedW::Scalar>& grid, const OptqOptions& opt,
                                                 MPI_Comm comm, const TransferOptions& t = {}) {
  using Scalar = typename DerivedW::Scalar;
  collectively(comm, [&] {
    t.check();
    detail::check_row_split_inputs(W, H, opt.row_block, "mpi::optq_rows");
    if (grid.fitted()) grid.fitted()->check(W.rows(), W.cols());
  });
  collectively(comm, [&] { detail::require_same_inputs(W, H, comm); });
  const std::vector<Index> b = row_block_bounds(W.rows(), size_of(comm));
  const std::pair<Index, Index> mine_rows = detail::my_rows(b, comm);
  const Index r0 = mine_rows.first, n = mine_rows.second;
  QuantResult<Scalar> r;
  collectively(comm, [&] {
    OptqOptions o = opt;
    o.row_block = {r0, W.rows()};
    const Matrix<Scalar> Wb = W.middleRows(r0, n);
    if (grid.fitted())
      r = pptq::optq(Wb, H, GridArg<Scalar>(detail::grid_rows(*grid.fitted(), r0, n)), o);
    else
      r = pptq::optq(Wb, H, grid, o);
  });
  if (!detail::agree_on_status(r, comm)) return r;
  detail::gather_result(r, b, comm, t.chunk);
  return r;
}

/// Collective: ggml::quantize_optq (fit, OPTQ, refit, bytes) of W into `type`, the rows split across the
/// ranks as optq_rows splits them; the fit and the refit are per row and run on the layer's row chunks, so
/// the bytes, codes, values and the refit's report are bit-identical to the single call, on EVERY rank.
template <typename DerivedW, typename DerivedH>
ggml::GgmlQuant<typename DerivedW::Scalar> quantize_optq_rows(const Eigen::MatrixBase<DerivedW>& W,
                                                             const Eigen::MatrixBase<DerivedH>& H, ggml::Type type,
                                                             const ggml::QuantizeOptions& opt, MPI_Comm comm,
                                                             const TransferOptions& t = {}) {
  using Scalar = typename DerivedW::Scalar;
  collectively(comm, [&] {
    t.check();
    detail::check_row_split_inputs(W, H, opt.optq.row_block, "mpi::quantize_optq_rows");
    if (!opt.refit_options.row_block.whole())
      pptq::detail::fail("mpi::quantize_optq_rows: the refit's row_block is set by the split; leave it empty");
    (void)ggml::format_of(type);
  });
  collectively(comm, [&] { detail::require_same_inputs(W, H, comm); });
  const std::vector<Index> b = row_block_bounds(W.rows(), size_of(comm));
  const std::pair<Index, Index> mine_rows = detail::my_rows(b, comm);
  const Index r0 = mine_rows.first, n = mine_rows.second;
  ggml::GgmlQuant<Scalar> q;
  collectively(comm, [&] {
    ggml::QuantizeOptions o = opt;
    o.optq.row_block = {r0, W.rows()};
    q = ggml::quantize_optq(Matrix<Scalar>(W.middleRows(r0, n)), H, type, o);
  });
  if (!detail::agree_on_status(q.result, comm)) {
    q.bytes.clear();
    return q;
  }
  const int me = rank_of(comm);
  const bool mine = b[me + 1] > b[me];
  const std::size_t rb = ggml::row_bytes(type, W.cols());
  std::vector<std::uint8_t> bytes(rb * static_cast<std::size_t>(W.rows()));
  if (mine) std::copy(q.bytes.begin(), q.bytes.end(), bytes.begin() + static_cast<std::ptrdiff_t>(rb * b[me]));
  for (int p = 0; p + 1 < static_cast<int>(b.size()); ++p)
    detail::bcast_array(bytes.data() + rb * b[p], static_cast<Index>(rb) * (b[p + 1] - b[p]), p, comm, t.chunk);
  q.bytes = std::move(bytes);
  Matrix<float> deq = std::move(q.dequantized);
  detail::gather_rows(deq, q.dequantized, b, W.cols(), comm, t.chunk);
  MatrixXi32 codes = std::move(q.codes);
  detail::gather_rows(codes, q.codes, b, W.cols(), comm, t.chunk);
  detail::gather_result(q.result, b, comm, t.chunk);
  if (opt.refit) {
    Eigen::VectorXd before = std::move(q.refit.row_before), after = std::move(q.refit.row_after);
    detail::gather_rows(before, q.refit.row_before, b, 1, comm, t.chunk);
    detail::gather_rows(after, q.refit.row_after, b, 1, comm, t.chunk);
    q.refit.before = q.refit.row_before.sum();
    q.refit.after = q.refit.row_after.sum();
    std::int64_t improved = mine ? q.refit.rows_improved : 0, all = 0;
    MPI_Allreduce(&improved, &all, 1, MPI_INT64_T, MPI_SUM, comm);
    q.refit.rows_improved = all;
    q.result.proxy_loss = 0.5 * q.refit.after;
  }
  q.bits_per_weight = 8.0 * static_cast<double>(q.bytes.size()) / static_cast<double>(W.rows() * W.cols());
  return q;
}

}  // namespace mpi
}  // namespace pptq
