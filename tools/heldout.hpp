// --damp auto's held-out split (docs/theory.md §3.5, pptq/damp_choice.hpp), shared by pptq-quantize and
// pptq-gguf: every 5th calibration sample (rows 4, 9, 14, ...) is held out, the others calibrate. Every 5th
// rather than the last fifth: calibration text is often ordered (documents one after another), and a
// held-out tail would judge the damp on one document.
#pragma once

#include <Eigen/Core>

#include <string>

namespace pptq_tools {

constexpr Eigen::Index kHeldOutEvery = 5;

/// XᵀX (through pptq::Gram, checked finite; `what` names X in the error) of the held-out samples of X
/// (held_out) or of the others.
Eigen::MatrixXd split_gram(const Eigen::MatrixXd& X, bool held_out, const std::string& what);

}  // namespace pptq_tools
