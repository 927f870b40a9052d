// pptq-gguf requantize under mpirun (built when MPI is found; docs/mpi.md): the model's tensors spread over
// the ranks by their cost, the output written by rank 0, byte for byte the single process's file.
//
//   1. Every rank plans the same run from the same files (a rank that cannot refuses for all: agree()).
//   2. The steps that quantize are dealt by cost, largest first, each to the least-loaded rank (the lowest
//      on ties): OPTQ of a rows × cols matrix costs about rows·cols² + cols³/3, plain rounding and
//      conversion rows·cols. Copied tensors stay with rank 0, which reads them when it writes.
//   3. Every rank quantizes its steps in the model's order, each output into a temporary file of its own
//      (memory: the largest tensor's work, as in one process), then all agree: if any failed, every rank
//      throws that error and no output is created.
//   4. Rank 0 writes the header and then every tensor in the model's order (its own from its temporary,
//      the others' received from their ranks, which send theirs in the model's order), into the temporary
//      of the output, renamed into place when everything is written and every rank agreed.
// --report gathers every rank's records on rank 0.
#pragma once

#include "gguf_requantize.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

namespace pptq_gguf {

/// MPI for this process when it was started by mpirun (Open MPI's or a PMI launcher's environment): held for
/// the run, finalized at the end. size() is 1 otherwise.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  bool initialized_ = false;
  int rank_ = 0, size_ = 1;
};

/// The ranks each step goes to (index-aligned with plan.steps; copied steps: rank 0).
std::vector<int> deal_steps(const pptq::gguf::File& model, const RecipePlan& plan, int ranks);

/// Steps 2–4 above, once every rank has the plan. Returns the weights clamped to the formats' ranges over
/// all ranks. Throws on every rank the same error when any rank failed.
std::int64_t write_outputs_mpi(pptq::gguf::Reader& model, const RecipePlan& plan, const Sources& src, const Options& o,
                               std::chrono::steady_clock::time_point t_start);

/// Runs f() on every rank and agrees: every rank returns, or every rank throws the lowest failing rank's
/// error (pptq::mpi::collectively). Without mpirun, f() alone.
void collectively(const std::function<void()>& f);

}  // namespace pptq_gguf
