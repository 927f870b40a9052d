// pptq-gguf requantize --report: the whole model's JSON report (docs/llama.md). Per matrix (a 2-d tensor, or
// an expert of a 3-d one): the types, shape, bytes, action and rule, and for the ones quantized from a
// Hessian the damp and λ (every candidate of --damp auto with its held-out error), the H-error on the
// calibration data (exact, and relative on sampled rows), plain rounding's H-error over the method's, the
// sweep's certificate and C2; then totals per output type and for the model, and the time.
#pragma once

#include "gguf_requantize.hpp"

#include <string>
#include <vector>

namespace pptq_gguf {

/// What the run was, for the report's header.
struct RunSummary {
  std::string model, output, format;  ///< format: the plain type or the recipe's name
  double seconds = 0;
  int processes = 1;  ///< MPI ranks (gguf_mpi.hpp)
};

/// The report as JSON text (2-space indent, ending in a newline).
std::string model_report(const RunSummary& run, const Options& o, const std::vector<TensorRecord>& records);

/// Some records as a JSON array of the report's "tensors" entries (what one MPI rank sends), and the report
/// from such arrays, in any order and split (the entries are put in the model's order).
std::string records_text(const std::vector<TensorRecord>& records, Method m);
std::string model_report(const RunSummary& run, const Options& o, const std::vector<std::string>& record_texts);

}  // namespace pptq_gguf
