#include "gguf_mpi.hpp"

#include "cli_common.hpp"
#include "gguf_report.hpp"

#include <pptq/io/atomic_file.hpp>
#include <pptq/mpi.hpp>

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace pptq_gguf {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTagBytes = 71, kTagText = 72;
constexpr std::size_t kMessage = std::size_t{1} << 30;  ///< bytes per message: MPI's counts are int

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

bool mpi_running() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

void send_bytes(const std::uint8_t* p, std::size_t n, int dest, int tag) {
  for (std::size_t k = 0; k < n; k += kMessage)
    MPI_Send(p + k, static_cast<int>(std::min(kMessage, n - k)), MPI_BYTE, dest, tag, MPI_COMM_WORLD);
}

void recv_bytes(std::uint8_t* p, std::size_t n, int src, int tag) {
  for (std::size_t k = 0; k < n; k += kMessage)
    MPI_Recv(p + k, static_cast<int>(std::min(kMessage, n - k)), MPI_BYTE, src, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

/// A rank's outputs, in the model's order, in an unnamed temporary file (removed when closed, also on a
/// crash): the rank holds one tensor's bytes at a time.
class Spill {
 public:
  Spill() : f_(std::tmpfile()) {
    if (!f_) throw pptq::IoError("cannot create a temporary file for this rank's outputs (TMPDIR)");
  }
  ~Spill() { std::fclose(f_); }
  Spill(const Spill&) = delete;
  Spill& operator=(const Spill&) = delete;

  void put(const std::vector<std::uint8_t>& b) {
    if (!b.empty() && std::fwrite(b.data(), 1, b.size(), f_) != b.size())
      throw pptq::IoError("cannot write this rank's outputs to its temporary file");
  }
  void rewind() {
    if (std::fflush(f_) != 0 || std::fseek(f_, 0, SEEK_SET) != 0)
      throw pptq::IoError("cannot read back this rank's temporary file");
  }
  std::vector<std::uint8_t> get(std::size_t n) {
    std::vector<std::uint8_t> b(n);
    if (n > 0 && std::fread(b.data(), 1, n, f_) != n) throw pptq::IoError("cannot read back this rank's temporary file");
    return b;
  }

 private:
  std::FILE* f_;
};

/// Runs f and keeps its failure (the first one) instead of throwing: a rank must reach the next collective.
template <typename F>
void keep_failure(std::exception_ptr& err, F&& f) {
  if (err) return;
  try {
    f();
  } catch (...) {
    err = std::current_exception();
  }
}

/// Step 3: this rank's steps, quantized in the model's order into `spill`; rank 0 also makes the copied
/// tensors' records.
void quantize_mine(pptq::gguf::Reader& model, const RecipePlan& plan, const std::vector<int>& owner, const Sources& src,
                   const Options& o, int rank, Spill& spill, std::vector<TensorRecord>& records) {
  std::size_t n = 0, k = 0;
  for (const Step& s : plan.steps) n += s.action != Action::Copy;
  for (std::size_t i = 0; i < plan.steps.size(); ++i) {
    const Step& s = plan.steps[i];
    k += s.action != Action::Copy;
    if (owner[i] != rank) continue;
    pptq::gguf::TensorInfo t = model.index().tensors[s.tensor];
    if (s.action != Action::Copy) t.data = model.load(s.tensor);
    run_step(t, s, src, o, "[" + std::to_string(k) + "/" + std::to_string(n) + "] " + t.name, records);
    if (s.action != Action::Copy) spill.put(t.data);
  }
}

/// Step 4 on rank 0: every tensor in order into the writer, receiving the other ranks' (always, also after
/// a failure here, so that no rank waits forever on its send).
void write_all(pptq::gguf::Reader& model, const RecipePlan& plan, const std::vector<int>& owner,
               const pptq::gguf::File& out, Spill& spill, pptq::gguf::StreamWriter* w, std::exception_ptr& err) {
  for (std::size_t i = 0; i < plan.steps.size(); ++i) {
    const Step& s = plan.steps[i];
    const std::size_t n = static_cast<std::size_t>(out.tensors[s.tensor].nbytes());
    std::vector<std::uint8_t> bytes;
    if (owner[i] != 0) {
      bytes.resize(n);
      recv_bytes(bytes.data(), n, owner[i], kTagBytes);
    } else {
      keep_failure(err, [&] { bytes = s.action == Action::Copy ? model.load(s.tensor) : spill.get(n); });
    }
    keep_failure(err, [&] { w->write(bytes); });
  }
}

/// Step 4 on the other ranks: their tensors, in order, to rank 0 (zeros in place of one that cannot be read
/// back, the failure kept for the agreement).
void send_mine(const RecipePlan& plan, const std::vector<int>& owner, const pptq::gguf::File& out, int rank, Spill& spill,
               std::exception_ptr& err) {
  for (std::size_t i = 0; i < plan.steps.size(); ++i) {
    if (owner[i] != rank) continue;
    const std::size_t n = static_cast<std::size_t>(out.tensors[plan.steps[i].tensor].nbytes());
    std::vector<std::uint8_t> bytes;
    keep_failure(err, [&] { bytes = spill.get(n); });
    bytes.resize(n);
    send_bytes(bytes.data(), n, 0, kTagBytes);
  }
}

/// Every rank's records as JSON text, on rank 0 (for --report).
std::vector<std::string> gather_records(const std::vector<TensorRecord>& mine, const Options& o, int rank, int ranks) {
  std::string text = records_text(mine, o.method);
  if (rank != 0) {
    const std::uint64_t n = text.size();
    MPI_Send(&n, 1, MPI_UINT64_T, 0, kTagText, MPI_COMM_WORLD);
    send_bytes(reinterpret_cast<const std::uint8_t*>(text.data()), text.size(), 0, kTagText);
    return {};
  }
  std::vector<std::string> all{std::move(text)};
  for (int r = 1; r < ranks; ++r) {
    std::uint64_t n = 0;
    MPI_Recv(&n, 1, MPI_UINT64_T, r, kTagText, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    std::string t(static_cast<std::size_t>(n), '\0');
    recv_bytes(reinterpret_cast<std::uint8_t*>(t.data()), t.size(), r, kTagText);
    all.push_back(std::move(t));
  }
  return all;
}

}  // namespace

MpiSession::MpiSession() {
  if (!launched_by_mpirun() || mpi_running()) return;
  int provided = 0;
  // FUNNELED: OpenMP's threads do the arithmetic, only the main thread calls MPI.
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  initialized_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiSession::~MpiSession() {
  if (initialized_) MPI_Finalize();
}

void collectively(const std::function<void()>& f) {
  if (!mpi_running()) return f();
  pptq::mpi::collectively(MPI_COMM_WORLD, f);
}

std::vector<int> deal_steps(const pptq::gguf::File& model, const RecipePlan& plan, int ranks) {
  std::vector<int> owner(plan.steps.size(), 0);
  std::vector<std::pair<double, std::size_t>> cost;
  for (std::size_t k = 0; k < plan.steps.size(); ++k) {
    const Step& s = plan.steps[k];
    if (s.action == Action::Copy) continue;
    const auto& t = model.tensors[s.tensor];
    const double cols = static_cast<double>(t.ne[0]), rows = static_cast<double>(t.ne[1]);
    const double experts = t.ne.size() == 3 ? static_cast<double>(t.ne[2]) : 1.0;
    // Seconds on the measured machine (docs/mpi.md §8): the format's fit and per-weight refit work
    // (rows·cols), the sweep's and the refit's products (rows·cols²), the factor (cols³). The sweep's
    // terms alone gave a 4096 × 11008 tensor ten times a 4096² one where it takes five (docs/performance.md §4).
    constexpr double per_weight = 2.8e-7, per_product = 9.1e-11, per_factor = 4.8e-12;
    const double per = s.action == Action::Optq
                           ? per_product * rows * cols * cols + per_weight * rows * cols + per_factor * cols * cols * cols
                           : per_weight * rows * cols;
    cost.emplace_back(experts * per, k);
  }
  std::stable_sort(cost.begin(), cost.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<double> load(static_cast<std::size_t>(ranks), 0.0);
  for (const auto& [c, k] : cost) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[k] = static_cast<int>(r);
    load[r] += c;
  }
  return owner;
}

std::int64_t write_outputs_mpi(pptq::gguf::Reader& model, const RecipePlan& plan, const Sources& src, const Options& o,
                               Clock::time_point t_start) {
  const int rank = pptq::mpi::rank_of(MPI_COMM_WORLD), ranks = pptq::mpi::size_of(MPI_COMM_WORLD);
  const std::vector<int> owner = deal_steps(model.index(), plan, ranks);
  pptq::gguf::File out = output_index(model.index(), plan);
  if (o.recipe) set_recipe_metadata(out, *o.recipe);
  std::unique_ptr<Spill> spill;
  std::vector<TensorRecord> mine;
  collectively([&] {
    spill = std::make_unique<Spill>();
    quantize_mine(model, plan, owner, src, o, rank, *spill, mine);
    spill->rewind();
  });
  std::exception_ptr err;
  std::optional<pptq::io::OutputGroup> group;
  std::optional<pptq::gguf::StreamWriter> w;
  if (rank == 0) {
    keep_failure(err, [&] {
      group.emplace();
      w.emplace(out, group->add(o.output));
    });
    write_all(model, plan, owner, out, *spill, w ? &*w : nullptr, err);
    keep_failure(err, [&] { w->finish(); });
  } else {
    send_mine(plan, owner, out, rank, *spill, err);
  }
  const std::vector<std::string> texts = o.report.empty() ? std::vector<std::string>{} : gather_records(mine, o, rank, ranks);
  if (rank == 0 && !o.report.empty())
    keep_failure(err, [&] {
      RunSummary run{o.model, o.output, o.recipe ? recipe_name(*o.recipe) : pptq::ggml::type_name(o.format),
                     std::chrono::duration<double>(Clock::now() - t_start).count(), ranks};
      const std::string text = model_report(run, o, texts);
      group->add(o.report).write(text.data(), text.size());
    });
  pptq::mpi::agree(err, MPI_COMM_WORLD);  // a failure anywhere: every rank throws it, rank 0's temporaries go
  collectively([&] {
    if (rank != 0) return;
    pptq_tools::test_signal_point("after-first-temp");
    group->commit();
  });
  std::int64_t clipped = 0, all = 0;
  for (const TensorRecord& r : mine) clipped += r.clipped;
  MPI_Allreduce(&clipped, &all, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return all;
}

}  // namespace pptq_gguf
