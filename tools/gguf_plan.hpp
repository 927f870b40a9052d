// pptq-gguf requantize's plan: which tensors of the model are requantized, from which calibration file
// (DIR/NAME.H.npy or DIR/NAME.X.npy), checked against the model before anything is quantized — every
// matched tensor requantizable into the format, every matched file's header (read alone, not its data) of
// the shape the tensor needs. Separate from the tool so that a fuzzer can drive it with in-memory files
// (tests/fuzz/fuzz_plan.cpp).
#pragma once

#include "cli_common.hpp"

#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pptq_gguf {

/// One tensor to requantize and where its Hessian comes from.
struct Job {
  std::size_t tensor = 0;    ///< index into File::tensors
  std::string path;          ///< DIR/NAME.H.npy or DIR/NAME.X.npy
  bool from_inputs = false;  ///< true for .X.npy (H = XᵀX)
  std::int64_t samples = 0;  ///< rows of NAME.X.npy (0 for .H.npy)
  std::size_t item_bytes = 8;  ///< bytes per element of the file (2, 4 or 8)
};

struct Plan {
  std::vector<Job> jobs;            ///< in the model's tensor order
  std::vector<std::string> unused;  ///< .npy files of DIR that name no tensor (sorted)
};

/// Reads the header of a calibration file (the tool: pptq_tools::read_float_header).
using HeaderReader = std::function<pptq::io::NpyArray(const pptq_tools::NpySource&)>;

/// "tensor 'NAME' (file)": how the messages name a tensor, its name escaped.
std::string tensor_label(const pptq::gguf::TensorInfo& t);

/// A type requantize reads weights from: F32, F16, BF16 (decoded exactly), or Q8_0 (already quantized:
/// decoded exactly, ggml's d·q, and requantized from those values).
bool is_source_type(pptq::ggml::Type t);

/// The header of `path`, matched to tensor `t` (index `index`), has the shape the tensor needs: float, 2-d,
/// cols x cols (.H) or samples x cols (.X, from_inputs); returns the job. DataError naming both otherwise.
Job check_file(const pptq::gguf::TensorInfo& t, std::size_t index, const std::string& path, bool from_inputs,
               const HeaderReader& header_of);

/// Checks that tensor `t` can be requantized into `format`; throws DataError naming it (and `file`).
void check_requantizable(const pptq::gguf::TensorInfo& t, pptq::ggml::Type format, const std::string& file);

/// The names of DIR's .npy files (not directories), sorted; DataError if DIR cannot be listed.
std::vector<std::string> npy_files(const std::string& dir);

/// Matches `names` (files of DIR) to the model's tensors as NAME.H.npy / NAME.X.npy and checks each match:
/// the tensor requantizable, the file's header (header_of) float, 2-d and cols x cols (.H) or samples x cols
/// (.X). Throws DataError on both files for one tensor, a failed check, an unused file (unless
/// allow_unused), or no match at all.
Plan make_plan(const pptq::gguf::File& f, const std::string& dir, const std::vector<std::string>& names,
               pptq::ggml::Type format, bool allow_unused, const HeaderReader& header_of);

/// Bytes the requantization of one job needs at its peak (W, Q, H and its factor and copies, X), about.
double job_memory(const pptq::gguf::TensorInfo& t, const Job& job);

}  // namespace pptq_gguf
