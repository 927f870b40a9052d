// libFuzzer target for the .npy reader. Build and run:
//   clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include -I /usr/include/eigen3 \
//       tests/fuzz/fuzz_npy.cpp -o /tmp/npyfuzz/fuzz
//   cp -r tests/data/npy_corpus /tmp/npyfuzz/corpus && /tmp/npyfuzz/fuzz -max_total_time=60 /tmp/npyfuzz/corpus
// Any input must either parse or throw NpyError; anything else (crash, sanitizer report, other exception,
// a parse that does not survive a round trip) is a bug.
#include <cstdint>
#include <cstdlib>
#include <cstdio>

#include "pptq/io/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  pptq::io::NpyArray a;
  try {
    a = pptq::io::parse_npy(data, size, "fuzz");
  } catch (const pptq::io::NpyError&) {
    return 0;
  }
  // Conversions: to double always succeeds for <= 2-d; float and int32 exercise saturation/range checks.
  try {
    (void)pptq::io::to_matrix<double>(a);
  } catch (const pptq::io::NpyError&) {
  }
  try {
    (void)pptq::io::to_matrix<float>(a);
  } catch (const pptq::io::NpyError&) {
  }
  try {
    (void)pptq::io::to_matrix<std::int32_t>(a);
  } catch (const pptq::io::NpyError&) {
  }
  // Round trip: whatever parses must serialise to a file that parses to the same array. More than 64 dims
  // cannot parse, so the serialiser's version 2.0 path is never needed here.
  const std::vector<std::uint8_t> again = pptq::io::serialize_npy(a);
  const pptq::io::NpyArray b = pptq::io::parse_npy(again.data(), again.size(), "fuzz-roundtrip");
  if (b.dtype != a.dtype || b.shape != a.shape || b.fortran_order != a.fortran_order || b.bytes != a.bytes) {
    std::fprintf(stderr, "round trip mismatch\n");
    std::abort();
  }
  return 0;
}
