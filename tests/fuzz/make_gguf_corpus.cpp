// Writes the seed corpora of fuzz_gguf (tests/data/gguf_corpus) and fuzz_plan (tests/data/plan_corpus):
// small valid files covering every value type, array and tensor type, plus one malformed file per
// rejection path of the reader and one input per outcome of the plan, so that the fuzzers start next to
// each branch.
//
//   g++ -std=c++17 -I include -I tools -I tests/fuzz -isystem /usr/include/eigen3 \
//       tests/fuzz/make_gguf_corpus.cpp -o /tmp/mkgguf
//   /tmp/mkgguf tests/data/gguf_corpus tests/data/plan_corpus
#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

namespace gguf = pptq::gguf;
using pptq::ggml::Type;
using Bytes = std::vector<std::uint8_t>;

void save(const std::string& path, const Bytes& b) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fwrite(b.data(), 1, b.size(), f);
  std::fclose(f);
}

Bytes zeros_for(const std::vector<std::uint64_t>& ne, Type t) {
  Bytes b(static_cast<std::size_t>(gguf::tensor_nbytes(ne, t)));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint8_t>(i * 7 % 13);  // finite in f32/f16
  return b;
}

gguf::File every_value() {
  gguf::File f;
  f.set("general.architecture", gguf::Value("llama"));
  f.set("u8", gguf::Value(std::uint8_t(7)));
  f.set("i8", gguf::Value(std::int8_t(-7)));
  f.set("u16", gguf::Value(std::uint16_t(700)));
  f.set("i16", gguf::Value(std::int16_t(-700)));
  f.set("u32", gguf::Value(std::uint32_t(70000)));
  f.set("i32", gguf::Value(std::int32_t(-70000)));
  f.set("f32", gguf::Value(1.5f));
  f.set("bool", gguf::Value(true));
  f.set("str", gguf::Value("text"));
  f.set("u64", gguf::Value(std::uint64_t(1) << 40));
  f.set("i64", gguf::Value(-(std::int64_t(1) << 40)));
  f.set("f64", gguf::Value(-0.25));
  f.set("a.u8", gguf::Value::array_of(std::vector<std::uint8_t>{1, 2, 3}));
  f.set("a.bool", gguf::Value::array_of(std::vector<bool>{true, false}));
  f.set("a.f32", gguf::Value::array_of(std::vector<float>{0.5f, -2.0f}));
  f.set("a.str", gguf::Value::array_of(std::vector<std::string>{"a", "", "bc"}));
  f.set("a.i64", gguf::Value::array_of(std::vector<std::int64_t>{-1, 2}));
  return f;
}

gguf::File with_tensors() {
  gguf::File f;
  f.set("general.alignment", gguf::Value(std::uint32_t(64)));
  for (Type t : {Type::F32, Type::F16, Type::Q4_0, Type::Q4_K, Type::Q3_K, Type::Q2_K}) {
    const std::uint64_t cols = static_cast<std::uint64_t>(pptq::ggml::block_size(t));
    const std::vector<std::uint64_t> ne = {cols, 2};
    f.add_tensor(std::string("t.") + pptq::ggml::type_name(t), ne, t, zeros_for(ne, t));
  }
  f.add_tensor("t.1d", {32}, Type::F32, zeros_for({32}, Type::F32));
  f.add_tensor("t.4d", {32, 1, 1, 2}, Type::F32, zeros_for({32, 1, 1, 2}, Type::F32));
  return f;
}

void put32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int k = 0; k < 4; ++k) b[at + k] = static_cast<std::uint8_t>(v >> (8 * k));
}
void put64(Bytes& b, std::size_t at, std::uint64_t v) {
  for (int k = 0; k < 8; ++k) b[at + k] = static_cast<std::uint8_t>(v >> (8 * k));
}

/// The byte offset of the first tensor info's n_dims in a one-tensor file named `name` without metadata.
std::size_t ndims_at(const std::string& name) { return 24 + 8 + name.size(); }

void gguf_corpus(const std::string& dir) {
  save(dir + "/empty.gguf", gguf::serialize(gguf::File{}));
  save(dir + "/every_value.gguf", gguf::serialize(every_value()));
  save(dir + "/tensors.gguf", gguf::serialize(with_tensors()));
  Bytes b = gguf::serialize(with_tensors());
  save(dir + "/truncated_header.gguf", Bytes(b.begin(), b.begin() + 100));
  save(dir + "/truncated_data.gguf", Bytes(b.begin(), b.end() - 1));
  Bytes bad = b;
  bad[0] = 'X';
  save(dir + "/bad_magic.gguf", bad);
  bad = b;
  put32(bad, 4, 2);
  save(dir + "/version2.gguf", bad);
  // One tensor "w" [32, 2] f32, no metadata: its n_dims, ne and type at fixed offsets.
  gguf::File one;
  one.add_tensor("w", {32, 2}, Type::F32, zeros_for({32, 2}, Type::F32));
  const Bytes o = gguf::serialize(one);
  const std::size_t nd = ndims_at("w");
  bad = o;
  put32(bad, nd, 5);
  save(dir + "/ndims5.gguf", bad);
  bad = o;
  put64(bad, nd + 4, 0);                            // ne[0] = 0 ...
  put64(bad, nd + 12, std::uint64_t(1) << 63);      // ... and ne[1] = 2^63: no bytes, but negative as int64
  save(dir + "/ne_2pow63.gguf", bad);
  bad = o;
  put64(bad, nd + 12, std::numeric_limits<std::uint64_t>::max());
  save(dir + "/ne_max.gguf", bad);
  bad = o;
  put32(bad, nd + 20, 99);
  save(dir + "/unknown_type.gguf", bad);
  bad = o;
  put64(bad, nd + 24, 8);
  save(dir + "/misaligned.gguf", bad);
  // Metadata: an array whose count the file cannot hold, a bool of 2, a nested array, an alignment of 3.
  gguf::File m;
  m.set("k", gguf::Value::array_of(std::vector<std::uint8_t>{1, 1}));
  Bytes mb = gguf::serialize(m);
  const std::size_t count_at = 24 + 8 + 1 + 4 + 4;
  bad = mb;
  put64(bad, count_at, std::uint64_t(1) << 40);
  save(dir + "/array_count.gguf", bad);
  bad = mb;
  bad[count_at + 8] = 2;
  save(dir + "/array_bool.gguf", bad);
  bad = mb;
  put32(bad, count_at - 4, 9);
  save(dir + "/nested_array.gguf", bad);
  gguf::File al;
  al.set("general.alignment", gguf::Value(std::uint32_t(64)));
  bad = gguf::serialize(al);
  put32(bad, 24 + 8 + 17 + 4, 3);
  save(dir + "/alignment3.gguf", bad);
}

// ------------------------------------------------------------------------------------------------
// The plan's inputs (fuzz_plan_body.hpp)
// ------------------------------------------------------------------------------------------------

struct PlanInput {
  std::uint8_t options = 0;
  Bytes model;
  std::vector<std::pair<std::string, Bytes>> files;
  Bytes encode() const {
    Bytes b = {options, 0, 0, 0, 0};
    put32(b, 1, static_cast<std::uint32_t>(model.size()));
    b.insert(b.end(), model.begin(), model.end());
    for (const auto& f : files) {
      b.push_back(static_cast<std::uint8_t>(f.first.size()));
      b.insert(b.end(), f.first.begin(), f.first.end());
      Bytes len(4);
      put32(len, 0, static_cast<std::uint32_t>(f.second.size()));
      b.insert(b.end(), len.begin(), len.end());
      b.insert(b.end(), f.second.begin(), f.second.end());
    }
    return b;
  }
};

Bytes npy(Eigen::Index rows, Eigen::Index cols) { return pptq::io::serialize_npy(Eigen::MatrixXf::Ones(rows, cols).eval()); }

Bytes plan_model() {
  gguf::File f;
  f.add_tensor("a", {32, 4}, Type::F32, zeros_for({32, 4}, Type::F32));
  f.add_tensor("b", {256, 2}, Type::F16, zeros_for({256, 2}, Type::F16));
  f.add_tensor("q", {32, 2}, Type::Q4_0, zeros_for({32, 2}, Type::Q4_0));
  f.add_tensor("v", {32}, Type::F32, zeros_for({32}, Type::F32));
  return gguf::serialize(f);
}

void plan_corpus(const std::string& dir) {
  const Bytes model = plan_model();
  auto input = [&](std::uint8_t opt, std::vector<std::pair<std::string, Bytes>> files) {
    PlanInput in;
    in.options = opt;
    in.model = model;
    in.files = std::move(files);
    return in.encode();
  };
  save(dir + "/q4_0_h_and_x.bin", input(0, {{"a.H.npy", npy(32, 32)}, {"b.X.npy", npy(5, 256)}}));
  save(dir + "/q4_k_x.bin", input(1, {{"b.X.npy", npy(3, 256)}}));
  save(dir + "/q2_k_not_blocks.bin", input(3, {{"a.H.npy", npy(32, 32)}}));
  save(dir + "/unused.bin", input(0, {{"a.H.npy", npy(32, 32)}, {"stray.npy", npy(1, 1)}}));
  save(dir + "/unused_allowed.bin", input(4, {{"a.H.npy", npy(32, 32)}, {"stray.npy", npy(1, 1)}}));
  save(dir + "/both.bin", input(0, {{"a.H.npy", npy(32, 32)}, {"a.X.npy", npy(2, 32)}}));
  save(dir + "/wrong_shape.bin", input(0, {{"a.H.npy", npy(16, 16)}}));
  save(dir + "/quantized.bin", input(0, {{"q.H.npy", npy(32, 32)}}));
  save(dir + "/one_d.bin", input(0, {{"v.H.npy", npy(32, 32)}}));
  Bytes trunc = npy(32, 32);
  trunc.resize(trunc.size() - 3);
  save(dir + "/truncated_npy.bin", input(0, {{"a.H.npy", trunc}}));
  Bytes hdr = npy(32, 32);
  hdr[20] = '!';
  save(dir + "/bad_npy_header.bin", input(0, {{"a.H.npy", hdr}}));
  save(dir + "/nothing.bin", input(0, {}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s GGUF_CORPUS_DIR PLAN_CORPUS_DIR\n", argv[0]);
    return 2;
  }
  gguf_corpus(argv[1]);
  plan_corpus(argv[2]);
  return 0;
}
