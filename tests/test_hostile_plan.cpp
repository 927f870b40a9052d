// pptq-gguf requantize's plan in-process (tools/gguf_plan.hpp): every matched calibration file's header is
// checked against its tensor before anything is quantized, and the plan fuzz corpus
// (tests/data/plan_corpus) is replayed through the fuzzer's own body.
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include "fuzz_plan_body.hpp"
#include "gguf_plan.hpp"
#include "test_support.hpp"

#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace gguf = pptq::gguf;
using pptq::ggml::Type;

gguf::File model() {
  gguf::File f;
  f.add_tensor("a", {32, 4}, Type::F32, std::vector<std::uint8_t>(32 * 4 * 4));
  f.add_tensor("b", {256, 2}, Type::F16, std::vector<std::uint8_t>(256 * 2 * 2));
  return f;
}

/// A header reader over in-memory files (name -> matrix shape), counting the reads.
struct Headers {
  std::map<std::string, std::pair<Eigen::Index, Eigen::Index>> shapes;
  mutable int reads = 0;
  pptq_gguf::HeaderReader reader() const {
    return [this](const pptq_tools::NpySource& src) {
      ++reads;
      const auto& s = shapes.at(src.path.substr(4));
      const auto b = pptq::io::serialize_npy(Eigen::MatrixXf::Zero(s.first, s.second).eval());
      return pptq::io::parse_npy_header(b.data(), b.size(), src.path);
    };
  }
  std::vector<std::string> names() const {
    std::vector<std::string> v;
    for (const auto& kv : shapes) v.push_back(kv.first);
    return v;
  }
};

}  // namespace

TEST_CASE("hostile plan: the Hessians' shapes are checked from their headers, in the model's order", "[hostile][plan]") {
  const gguf::File f = model();
  Headers h;
  h.shapes = {{"a.H.npy", {32, 32}}, {"b.X.npy", {7, 256}}};
  const pptq_gguf::Plan p = pptq_gguf::make_plan(f, "dir", h.names(), Type::Q4_0, false, h.reader());
  REQUIRE(p.jobs.size() == 2);
  CHECK(p.jobs[0].tensor == 0);
  CHECK(!p.jobs[0].from_inputs);
  CHECK(p.jobs[1].tensor == 1);
  CHECK(p.jobs[1].from_inputs);
  CHECK(p.jobs[1].samples == 7);
  CHECK(p.jobs[1].item_bytes == 4);
  CHECK(pptq_gguf::job_memory(f.tensors[1], p.jobs[1]) >= 4.0 * 8 * 256 * 256);

  h.shapes["b.X.npy"] = {7, 128};
  CHECK_THROWS_WITH(pptq_gguf::make_plan(f, "dir", h.names(), Type::Q4_0, false, h.reader()),
                    Catch::Contains("dir/b.X.npy is 7 x 128") && Catch::Contains("samples x 256"));
  h.shapes = {{"a.H.npy", {32, 31}}};
  CHECK_THROWS_AS(pptq_gguf::make_plan(f, "dir", h.names(), Type::Q4_0, false, h.reader()), pptq::DataError);
  // A name problem (an unused file) is reported before any header is read.
  h.shapes = {{"a.H.npy", {32, 32}}, {"zz.npy", {1, 1}}};
  h.reads = 0;
  CHECK_THROWS_WITH(pptq_gguf::make_plan(f, "dir", h.names(), Type::Q4_0, false, h.reader()),
                    Catch::Contains("matches no tensor"));
  CHECK(h.reads == 0);
}

TEST_CASE("hostile plan: every plan corpus input is planned or refused with DataError", "[hostile][plan][fuzz]") {
  const fs::path corpus = fs::path(test::data_dir()) / "plan_corpus";
  REQUIRE(fs::is_directory(corpus));
  int files = 0, planned = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    INFO(e.path().string());
    const std::string s = test::slurp(e.path().string());
    planned += pptq_fuzz::fuzz_plan_one(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()) ? 1 : 0;
    ++files;
  }
  CHECK(files >= 10);
  CHECK(planned >= 3);          // the valid seeds
  CHECK(files - planned >= 6);  // one per refusal
}
