// pptq/mpi.hpp under mpirun (CTest runs it with 2 and 4 ranks): the reduced Grams and the row-split layers
// bit for bit against the single-process results, on sub-communicators of 1, 2, 3 and 4 ranks carved from
// the world; and a rank with bad input makes every rank throw the same error (no hang). A small main that
// checks and exits non-zero (MPI_Abort on the first failure, so that no rank is left waiting).
#include <pptq/mpi.hpp>

#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using pptq::Index;
using Eigen::MatrixXd;
using Eigen::MatrixXf;
namespace mpi = pptq::mpi;
namespace gg = pptq::ggml;

int g_rank = 0, g_size = 1, g_checks = 0;

void check_at(bool ok, const char* what, int line) {
  ++g_checks;
  if (ok) return;
  std::fprintf(stderr, "rank %d: CHECK failed at test_mpi.cpp:%d: %s\n", g_rank, line, what);
  MPI_Abort(MPI_COMM_WORLD, 1);
}
#define CHECK(c) check_at(static_cast<bool>(c), #c, __LINE__)

/// Identical bits (a NaN or a signed zero would not pass unnoticed, as they would with ==).
template <typename A, typename B>
bool same_bits(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  using S = typename A::Scalar;
  static_assert(std::is_same_v<S, typename B::Scalar>, "same scalar");
  for (Index j = 0; j < a.cols(); ++j)
    for (Index i = 0; i < a.rows(); ++i) {
      const S x = a(i, j), y = b(i, j);
      if (std::memcmp(&x, &y, sizeof(S)) != 0) return false;
    }
  return true;
}

/// The lower triangles of two matrices, bit for bit.
bool same_lower(const MatrixXd& a, const MatrixXd& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index j = 0; j < a.cols(); ++j)
    if (std::memcmp(a.col(j).data() + j, b.col(j).data() + j, sizeof(double) * static_cast<std::size_t>(a.rows() - j)) != 0)
      return false;
  return true;
}

MatrixXd gaussian(Index r, Index c, std::uint64_t seed, double s = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0, s);
  MatrixXd m(r, c);
  for (Index j = 0; j < c; ++j)
    for (Index i = 0; i < r; ++i) m(i, j) = n(rng) * (1 + j % 5);
  return m;
}

/// Shard s: a batch of 10 + 3s samples (the same on every rank), X and the quantized model's Xq. Double
/// batches: sums of float products are exact in a double accumulator, whatever the order, so float batches
/// would not show that the order is pinned down.
MatrixXd shard_x(Index s, Index cols) { return gaussian(10 + 3 * s, cols, 1000 + s); }
MatrixXd shard_xq(Index s, Index cols) { return shard_x(s, cols) + 0.05 * gaussian(10 + 3 * s, cols, 5000 + s); }

/// The world split into sub-communicators of `k` ranks (the rest, when k does not divide the world, form
/// a smaller one); calls f(sub) on every rank.
void on_groups(int k, const std::function<void(MPI_Comm)>& f) {
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, g_rank / k, g_rank, &sub);
  f(sub);
  MPI_Comm_free(&sub);
}

std::vector<int> group_sizes() {
  std::vector<int> k{1, 2};
  if (g_size >= 3) k.push_back(3);
  if (g_size >= 4) k.push_back(4);
  return k;
}

// ------------------------------------------------------------------------------------------------
// The reduced sums
// ------------------------------------------------------------------------------------------------

void test_gram_reduction() {
  const Index cols = 40;
  auto fill = [&](Index s, pptq::Gram<double>& g) { g.add(shard_x(s, cols)); };
  for (const Index shards : {Index(8), Index(6), Index(3), Index(1)}) {
    const auto ref = mpi::accumulate_local<pptq::Gram<double>>(0, shards, fill);  // no MPI at all
    CHECK(ref.samples() > 0);
    if (shards == 8) {  // the plain sequential sum differs in its last bits: the order is what is pinned down
      pptq::Gram<double> seq;
      for (Index s = 0; s < shards; ++s) fill(s, seq);
      CHECK(seq.samples() == ref.samples());
      CHECK(!same_lower(seq.lower(), ref.lower()));
    }
    for (const int k : group_sizes())
      on_groups(k, [&](MPI_Comm sub) {
        const mpi::TransferOptions small{97};  // many messages per partial (and a chunk that splits columns)
        const auto g = mpi::accumulate<pptq::Gram<double>>(mpi::ShardLayout::of(shards, sub), fill, sub, small);
        CHECK(g.samples() == ref.samples());
        CHECK(same_lower(g.lower(), ref.lower()));
        const auto g2 = mpi::accumulate<pptq::Gram<double>>(mpi::ShardLayout::of(shards, sub), fill, sub);
        CHECK(same_lower(g2.lower(), ref.lower()));
      });
  }
  // allreduce of one partial per rank: a node of the shards' tree on 1, 2, 4 ranks (8 shards) → the same bits.
  const auto ref = mpi::accumulate_local<pptq::Gram<double>>(0, 8, fill);
  for (const int k : {1, 2, 4}) {
    if (k > g_size || g_size % k != 0) continue;
    on_groups(k, [&](MPI_Comm sub) {
      const mpi::ShardLayout L = mpi::ShardLayout::of(8, sub);
      const int r = mpi::rank_of(sub);
      auto partial = mpi::accumulate_local<pptq::Gram<double>>(L.first(r), L.first(r + 1), fill);
      mpi::allreduce(partial, sub, mpi::TransferOptions{1000});
      CHECK(partial.samples() == ref.samples());
      CHECK(same_lower(partial.lower(), ref.lower()));
    });
  }
}

void test_cross_and_correction() {
  const Index cols = 24, rows = 9;
  const MatrixXd W = gaussian(rows, cols, 77);
  auto fill_cross = [&](Index s, pptq::CrossGram<double>& g) { g.add(shard_x(s, cols), shard_xq(s, cols)); };
  auto fill_corr = [&](Index s, pptq::CorrectionGram<double>& g) { g.add(W, shard_x(s, cols), shard_xq(s, cols)); };
  const auto cref = mpi::accumulate_local<pptq::CrossGram<double>>(0, 7, fill_cross);
  const auto kref = mpi::accumulate_local<pptq::CorrectionGram<double>>(0, 7, fill_corr);
  for (const int k : group_sizes())
    on_groups(k, [&](MPI_Comm sub) {
      const auto c = mpi::accumulate<pptq::CrossGram<double>>(mpi::ShardLayout::of(7, sub), fill_cross, sub, {50});
      CHECK(c.samples() == cref.samples());
      CHECK(same_lower(c.htilde_lower(), cref.htilde_lower()));
      CHECK(same_bits(c.cross(), cref.cross()));
      const auto q = mpi::accumulate<pptq::CorrectionGram<double>>(mpi::ShardLayout::of(7, sub), fill_corr, sub, {50});
      CHECK(q.samples() == kref.samples());
      CHECK(same_lower(q.htilde_lower(), kref.htilde_lower()));
      CHECK(same_bits(q.correction(), kref.correction()));
      q.require_matches(W);  // the reduced accumulator still knows its W
    });
}

/// Every rank threw `what` with the same message (compared through a checksum of it), naming rank `bad`.
void expect_same_error(const std::string& msg, bool threw, int bad, const char* needle, MPI_Comm comm) {
  CHECK(threw);
  CHECK(msg.find("rank " + std::to_string(bad) + ": ") == 0);
  CHECK(msg.find(needle) != std::string::npos);
  std::uint64_t h = 1469598103934665603ull, mn = 0, mx = 0;
  for (unsigned char ch : msg) h = (h ^ ch) * 1099511628211ull;
  MPI_Allreduce(&h, &mn, 1, MPI_UINT64_T, MPI_MIN, comm);
  MPI_Allreduce(&h, &mx, 1, MPI_UINT64_T, MPI_MAX, comm);
  CHECK(mn == mx);
  if (g_rank == 0) std::printf("  every rank: %s\n", msg.c_str());
}

void test_gram_failure() {
  const Index cols = 16, shards = 8;
  const mpi::ShardLayout L = mpi::ShardLayout::of(shards, MPI_COMM_WORLD);
  const Index bad_shard = 5;
  auto fill = [&](Index s, pptq::Gram<double>& g) {
    MatrixXd x = shard_x(s, cols);
    if (s == bad_shard) x(2, 3) = std::numeric_limits<double>::quiet_NaN();
    g.add(x);
  };
  std::string msg;
  bool threw = false, usage = false;
  try {
    (void)mpi::accumulate<pptq::Gram<double>>(L, fill, MPI_COMM_WORLD);
  } catch (const pptq::UsageError& e) {
    threw = usage = true;
    msg = e.what();
  } catch (const std::exception& e) {
    threw = true;
    msg = e.what();
  }
  CHECK(usage);
  expect_same_error(msg, threw, L.owner(bad_shard), "calibration batch X has a non-finite entry", MPI_COMM_WORLD);

  // Partials of different widths (one rank's shards are of another layer): a DataError on every rank.
  auto fill_wide = [&](Index s, pptq::Gram<double>& g) { g.add(shard_x(s, L.owner(s) == g_size - 1 ? cols + 1 : cols)); };
  threw = false;
  try {
    (void)mpi::accumulate<pptq::Gram<double>>(L, fill_wide, MPI_COMM_WORLD);
  } catch (const pptq::DataError& e) {
    threw = true;
    msg = e.what();
  }
  CHECK(threw);
  CHECK(std::string(msg).find("do not fit together") != std::string::npos);
}

// ------------------------------------------------------------------------------------------------
// The row-split layers
// ------------------------------------------------------------------------------------------------

struct Layer {
  MatrixXf W;
  MatrixXd H;
};

Layer make_layer(Index rows, Index cols, std::uint64_t seed) {
  const MatrixXd X = gaussian(3 * cols, cols, seed) + 0.5 * gaussian(3 * cols, 4, seed + 1) * gaussian(4, cols, seed + 2);
  return {(0.05 * gaussian(rows, cols, seed + 3)).cast<float>(), X.transpose() * X};
}

template <typename Scalar>
void check_same_result(const pptq::QuantResult<Scalar>& a, const pptq::QuantResult<Scalar>& b) {
  CHECK(a.ok() && b.ok());
  CHECK(same_bits(a.codes, b.codes));
  CHECK(same_bits(a.dequantized, b.dequantized));
  CHECK(same_bits(a.grid.scale, b.grid.scale));
  CHECK(same_bits(a.grid.zero, b.grid.zero));
  CHECK(same_bits(a.grid.min, b.grid.min));
  CHECK(same_bits(a.energy, b.energy));
  CHECK(a.clipped == b.clipped);
  CHECK(a.perm == b.perm);
  CHECK(a.lambda == b.lambda);
  CHECK(std::memcmp(&a.proxy_loss, &b.proxy_loss, sizeof(double)) == 0);
}

void test_optq_rows() {
  for (const Index rows : {Index(300), Index(40)}) {  // 8 row chunks (the last short); 2 chunks: idle ranks
    const Layer L = make_layer(rows, 96, 11 + rows);
    for (const bool stochastic : {false, true})
      for (const Index gs : {Index(-1), Index(32)}) {
        pptq::GridSpec spec;
        spec.bits = 3;
        spec.group_size = gs;
        pptq::OptqOptions opt;
        opt.block_size = 40;
        opt.rounding = stochastic ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
        opt.seed = 99;
        const auto ref = pptq::optq(L.W, L.H, spec, opt);
        for (const int k : group_sizes())
          on_groups(k, [&](MPI_Comm sub) {
            const auto r = mpi::optq_rows(L.W, L.H, spec, opt, sub, {1000});
            check_same_result(r, ref);
          });
      }
  }
}

void test_ggml_rows() {
  const Index rows = 140, cols = 512;
  const Layer L = make_layer(rows, cols, 21);
  for (const bool stochastic : {false, true}) {
    gg::QuantizeOptions opt;
    opt.optq.rounding = stochastic ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
    opt.optq.seed = 4;
    opt.optq.block_size = 64;
    const auto ref = gg::quantize_optq(L.W, L.H, gg::Type::Q4_K, opt);
    CHECK(ref.refit.rows_improved > 0);
    for (const int k : group_sizes())
      on_groups(k, [&](MPI_Comm sub) {
        const auto q = mpi::quantize_optq_rows(L.W, L.H, gg::Type::Q4_K, opt, sub, {4096});
        CHECK(q.bytes == ref.bytes);
        CHECK(same_bits(q.codes, ref.codes));
        CHECK(same_bits(q.dequantized, ref.dequantized));
        check_same_result(q.result, ref.result);
        CHECK(q.refit.rows_improved == ref.refit.rows_improved);
        CHECK(std::memcmp(&q.refit.after, &ref.refit.after, sizeof(double)) == 0);
        CHECK(q.bits_per_weight == ref.bits_per_weight);
      });
  }
}

void test_layer_failure() {
  const Layer L = make_layer(64, 32, 5);
  pptq::GridSpec spec;
  const int bad = g_size - 1;
  MatrixXd H = L.H;
  if (g_rank == bad) H(3, 7) = std::numeric_limits<double>::quiet_NaN();
  std::string msg;
  bool threw = false;
  try {
    (void)mpi::optq_rows(L.W, H, spec, pptq::OptqOptions{}, MPI_COMM_WORLD);
  } catch (const pptq::UsageError& e) {
    threw = true;
    msg = e.what();
  }
  expect_same_error(msg, threw, bad, "H has a non-finite entry", MPI_COMM_WORLD);

  // One rank holding another layer: the checksums disagree, every rank throws a DataError.
  MatrixXf W = L.W;
  if (g_rank == bad) W(0, 0) += 1;
  threw = false;
  try {
    (void)mpi::quantize_optq_rows(MatrixXf(W.leftCols(32)), L.H, gg::Type::Q8_0, gg::QuantizeOptions{}, MPI_COMM_WORLD);
  } catch (const pptq::DataError& e) {
    threw = true;
    msg = e.what();
  }
  CHECK(threw);
  CHECK(msg.find("the ranks were given different W") != std::string::npos);
  // And the communicator is still usable afterwards: a good call succeeds everywhere.
  const auto r = mpi::optq_rows(L.W, L.H, spec, pptq::OptqOptions{}, MPI_COMM_WORLD);
  CHECK(r.ok() && r.rows() == 64);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  const std::pair<const char*, void (*)()> tests[] = {
      {"Gram reduction: bit-identical for 1, 2, 3, 4 ranks", test_gram_reduction},
      {"CrossGram and CorrectionGram reduction", test_cross_and_correction},
      {"a NaN in one rank's shard: the same error everywhere", test_gram_failure},
      {"optq_rows: bit-identical layers (nearest, stochastic, groups)", test_optq_rows},
      {"quantize_optq_rows: Q4_K bytes bit-identical", test_ggml_rows},
      {"a bad H or W on one rank: the same error everywhere", test_layer_failure},
  };
  for (const auto& [name, fn] : tests) {
    if (g_rank == 0) std::printf("%s (%d ranks)\n", name, g_size);
    fn();
    MPI_Barrier(MPI_COMM_WORLD);
  }
  int total = 0;
  MPI_Reduce(&g_checks, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("all MPI tests passed (%d checks over %d ranks)\n", total, g_size);
  MPI_Finalize();
  return 0;
}
