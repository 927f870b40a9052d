// pptq-gguf requantize --grams: the Hessians read from a Gram file (include/pptq/io/gram_file.hpp, what
// `pptq-gguf calibrate` writes) instead of DIR/NAME.H.npy. The file is kept as its GGUF image (float, the
// lower triangle: about a quarter of the doubles it decodes to) and each record is decoded when its tensor
// is requantized, so that the decoded Grams of a whole model never sit in memory at once; every record is
// decoded and checked once when the file is opened, before anything is quantized.
//
// A record written with `calibrate --quantized-model` holds H̃ = X̃ᵀX̃ and the cross Gram G = X̃ᵀX
// (docs/theory.md §5.1): Qronos needs both; OPTQ then runs on H̃ (the quantized model's inputs).
#pragma once

#include "gguf_plan.hpp"

#include <pptq/io/gguf.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace pptq_gguf {

/// What one tensor is quantized from: OPTQ's H, or for Qronos H̃ = X̃ᵀX̃ and G = X̃ᵀX (docs/theory.md §5.1).
struct TensorGrams {
  Eigen::MatrixXd H;      ///< cols × cols: H, or H̃ when cross is set
  Eigen::MatrixXd cross;  ///< cols × cols G = X̃ᵀX (G(i, j) = ⟨X̃_i, X_j⟩), or empty
};

/// A Gram file opened for requantizing.
class GramSource {
 public:
  /// Reads `path` and checks every record (DataError naming the file on anything malformed, also when it
  /// cannot be read: it is the tool's input).
  explicit GramSource(std::string path);

  const std::string& path() const { return path_; }
  /// The bytes the file's image takes in memory while the tool runs.
  std::uint64_t bytes() const { return bytes_; }
  /// Every record holds a cross Gram (the file came from calibrate --quantized-model).
  bool lockstep() const { return with_cross_ == records_; }
  /// Some record holds a cross Gram.
  bool any_cross() const { return with_cross_ > 0; }

  /// The plan: every weight the file names that is a tensor of the model, in the model's order, each checked
  /// requantizable into `format` (DataError naming it). A weight that names no tensor, and an expert's Gram
  /// (requantize handles 2-d tensors only), is unused: an error unless allow_unused. With `only`, a weight
  /// whose name the regular expression does not match (std::regex_search) is left as it is, unchecked and
  /// not unused: Qronos's sequential stages (gguf_methods.hpp) requantize a model part by part.
  Plan plan(const pptq::gguf::File& model, pptq::ggml::Type format, bool allow_unused, const std::regex* only = nullptr) const;

  /// The width of the Gram the file holds for a 2-d tensor's weight, or 0 when it holds none (a recipe's
  /// plan: pptq_gguf.cpp).
  std::int64_t cols_of(const std::string& weight) const {
    const auto it = cols_.find(weight);
    return it == cols_.end() || !record_of_.count(weight) ? 0 : it->second;
  }
  /// The Grams of a weight of the plan, decoded from the file.
  TensorGrams grams_of(const std::string& weight) const;

 private:
  std::string path_;
  pptq::gguf::File file_;
  std::uint64_t bytes_ = 0;
  std::size_t records_ = 0, with_cross_ = 0;
  std::map<std::string, std::size_t> record_of_;  ///< weight (a 2-d tensor's Gram) → record
  std::map<std::string, std::int64_t> samples_;   ///< weight → rows accumulated
  std::map<std::string, std::int64_t> cols_;      ///< weight → the Gram's width
  std::vector<std::string> experts_;              ///< "NAME#e" of the experts' records
};

}  // namespace pptq_gguf
