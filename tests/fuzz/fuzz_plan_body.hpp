// The body of the fuzz target for pptq-gguf requantize's planning (tools/gguf_plan.hpp: matching a model's
// tensors to calibration files and checking their shapes, without quantizing), shared with the test suite,
// which replays the corpus tests/data/plan_corpus through it.
//
// An input is one byte of options (bits 0-1: the format q4_0, q4_K, q3_K, q2_K; bit 2: --allow-unused), a
// u32 (little-endian) length and that many bytes of GGUF model, then any number of files of the Hessians'
// directory, each a u8 name length, the name, a u32 length and the file's bytes (a .npy image). The plan
// must either be made or fail with pptq::DataError; a plan made must hold only requantizable tensors, each
// with a file of the right shape, in the model's order. Anything else is a bug: abort().
#pragma once

#include "gguf_plan.hpp"

#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace pptq_fuzz {

[[noreturn]] inline void plan_bug(const char* what) {
  std::fprintf(stderr, "fuzz_plan: %s\n", what);
  std::abort();
}

/// The input split into its parts (see above); false when it is too short to hold a model.
struct PlanInput {
  pptq::ggml::Type format = pptq::ggml::Type::Q4_0;
  bool allow_unused = false;
  std::vector<std::uint8_t> model;
  std::map<std::string, std::vector<std::uint8_t>> files;  // name -> bytes (a later duplicate name wins)
};

inline std::uint32_t le32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

inline bool split_plan_input(const std::uint8_t* data, std::size_t size, PlanInput& in) {
  static const pptq::ggml::Type formats[] = {pptq::ggml::Type::Q4_0, pptq::ggml::Type::Q4_K, pptq::ggml::Type::Q3_K,
                                             pptq::ggml::Type::Q2_K};
  if (size < 5) return false;
  in.format = formats[data[0] & 3];
  in.allow_unused = (data[0] & 4) != 0;
  std::size_t pos = 5, len = le32(data + 1);
  if (len > size - pos) return false;
  in.model.assign(data + pos, data + pos + len);
  pos += len;
  while (pos < size) {
    const std::size_t nl = data[pos++];
    if (nl > size - pos) break;
    std::string name(reinterpret_cast<const char*>(data + pos), nl);
    pos += nl;
    if (size - pos < 4) break;
    const std::size_t fl = le32(data + pos);
    pos += 4;
    if (fl > size - pos) break;
    if (name.empty() || name.find('/') != std::string::npos) name = "x" + std::to_string(in.files.size());
    in.files[name].assign(data + pos, data + pos + fl);
    pos += fl;
  }
  return true;
}

/// The checks a plan made must pass.
inline void check_plan(const pptq::gguf::File& f, const pptq_gguf::Plan& plan, const PlanInput& in) {
  std::size_t last = 0;
  for (std::size_t k = 0; k < plan.jobs.size(); ++k) {
    const pptq_gguf::Job& j = plan.jobs[k];
    if (j.tensor >= f.tensors.size()) plan_bug("a job names no tensor");
    if (k > 0 && j.tensor <= last) plan_bug("jobs out of the model's order");
    last = j.tensor;
    const auto& t = f.tensors[j.tensor];
    if (t.ne.size() != 2 || t.ne[0] == 0 || t.ne[1] == 0) plan_bug("a planned tensor is not a non-empty matrix");
    if (!pptq_gguf::is_source_type(t.type)) plan_bug("a planned tensor is not of a source type");
    if (t.ne[0] % static_cast<std::uint64_t>(pptq::ggml::block_size(in.format)) != 0) plan_bug("columns not whole blocks");
    const std::string name = j.path.substr(4);  // "dir/" + name
    const auto& bytes = in.files.at(name);
    const pptq::io::NpyArray h = pptq::io::parse_npy_header(bytes.data(), bytes.size(), j.path);
    if (h.shape.size() != 2 || h.shape[1] != static_cast<std::int64_t>(t.ne[0])) plan_bug("a file of the wrong shape");
    if (!j.from_inputs && h.shape[0] != h.shape[1]) plan_bug("a Hessian that is not square");
    if (!(pptq_gguf::job_memory(t, j) >= 0)) plan_bug("a memory estimate that is not a size");
  }
  if (plan.jobs.empty()) plan_bug("a plan without jobs");
  if (!plan.unused.empty() && !in.allow_unused) plan_bug("unused files accepted without --allow-unused");
}

/// Returns true when a plan was made.
inline bool fuzz_plan_one(const std::uint8_t* data, std::size_t size) {
  PlanInput in;
  if (!split_plan_input(data, size, in)) return false;
  pptq::gguf::File f;
  try {
    f = pptq::gguf::parse(in.model.data(), in.model.size(), "model");
  } catch (const pptq::DataError&) {
    return false;
  }
  std::vector<std::string> names;
  for (const auto& kv : in.files) names.push_back(kv.first);  // sorted, as npy_files() lists them
  const pptq_gguf::HeaderReader header_of = [&](const pptq_tools::NpySource& src) {
    const auto& bytes = in.files.at(src.path.substr(4));
    return pptq::io::parse_npy_header(bytes.data(), bytes.size(), src.path);
  };
  pptq_gguf::Plan plan;
  try {
    plan = pptq_gguf::make_plan(f, "dir", names, in.format, in.allow_unused, header_of);
  } catch (const pptq::DataError&) {
    return false;
  } catch (...) {
    plan_bug("make_plan threw something other than pptq::DataError");
  }
  check_plan(f, plan, in);
  return true;
}

}  // namespace pptq_fuzz
