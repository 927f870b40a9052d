// The body of the GGUF reader's fuzz target (fuzz_gguf.cpp), shared with the test suite, which replays the
// corpus tests/data/gguf_corpus through it. Any input must either parse or throw pptq::DataError; what
// parses must serialize (the writer accepts everything the reader accepts) and read back to the same
// content, and every value must print. Anything else (a crash, a sanitizer report, another exception, a
// round trip that changes the content) is a bug: abort() makes the fuzzer report it.
#pragma once

#include <pptq/io/gguf.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace pptq_fuzz {

[[noreturn]] inline void fuzz_bug(const char* what) {
  std::fprintf(stderr, "fuzz_gguf: %s\n", what);
  std::abort();
}

/// Same content: metadata, and every tensor's name, shape, type and bytes (offsets are the writer's own).
inline bool same_content(const pptq::gguf::File& a, const pptq::gguf::File& b) {
  if (!(a.metadata == b.metadata) || a.tensors.size() != b.tensors.size()) return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    const auto &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.ne != y.ne || x.type != y.type || x.data != y.data) return false;
  }
  return true;
}

/// What Reader does with a file whose header is larger than its first read: the header parsed from a prefix
/// (half the input) must either ask for more or be the full parse's header.
inline void check_prefix_index(const std::uint8_t* data, std::size_t size, const pptq::gguf::File& full) {
  std::uint64_t start = 0;
  try {
    const pptq::gguf::File head = pptq::gguf::detail::parse_index(data, size / 2, size, "fuzz-prefix", start);
    pptq::gguf::File bare = full;
    for (auto& t : bare.tensors) t.data.clear();
    if (!(head == bare)) fuzz_bug("the header parsed from a prefix differs from the full parse's");
  } catch (const pptq::gguf::detail::NeedMore&) {
  } catch (...) {
    fuzz_bug("parsing the header from a prefix of a valid file failed");
  }
}

/// Returns true when the input parsed.
inline bool fuzz_gguf_one(const std::uint8_t* data, std::size_t size) {
  pptq::gguf::File f;
  try {
    f = pptq::gguf::parse(data, size, "fuzz");
  } catch (const pptq::DataError&) {
    return false;
  } catch (...) {
    fuzz_bug("parse threw something other than pptq::DataError");
  }
  check_prefix_index(data, size, f);
  std::vector<std::uint8_t> again;
  try {
    for (const auto& kv : f.metadata) (void)pptq::gguf::to_string(kv.second);
    for (const auto& t : f.tensors)
      if (t.nbytes() != t.data.size()) fuzz_bug("a tensor's data does not have its shape's size");
    again = pptq::gguf::serialize(f);
  } catch (...) {
    fuzz_bug("a parsed file does not print or serialize");
  }
  try {
    if (!same_content(f, pptq::gguf::parse(again.data(), again.size(), "fuzz-roundtrip")))
      fuzz_bug("round trip changed the content");
  } catch (const pptq::DataError&) {
    fuzz_bug("the serialized file does not parse");
  }
  return true;
}

}  // namespace pptq_fuzz
