// Writes the seed corpus for fuzz_npy (tests/data/npy_corpus): small valid files covering every dtype,
// version and layout, plus one malformed file per rejection path, so the fuzzer starts next to each branch.
//
//   g++ -std=c++17 -I include -I /usr/include/eigen3 tests/fuzz/make_npy_corpus.cpp -o /tmp/mkcorpus
//   /tmp/mkcorpus tests/data/npy_corpus
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "pptq/io/npy.hpp"

namespace {

using Bytes = std::vector<std::uint8_t>;

// Header text as given, padded numpy-style unless pad is false.
Bytes npy(const std::string& dict, const Bytes& data, int major = 1, bool pad = true) {
  std::string h = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  if (pad) {
    const std::size_t total = prefix + h.size() + 1;
    h.append((64 - total % 64) % 64, ' ');
    h += '\n';
  }
  Bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<std::uint8_t>(major), 0};
  const std::uint32_t len = static_cast<std::uint32_t>(h.size());
  for (std::size_t i = 0; i < prefix - 8; ++i) out.push_back(static_cast<std::uint8_t>(len >> (8 * i)));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::string hdr(const std::string& descr, const std::string& shape, bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape +
         ", }";
}

Bytes counting(std::size_t n) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(i * 37 + 1);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::pair<std::string, Bytes>> files;

  // Valid files.
  Eigen::MatrixXf mf(3, 4);
  for (int i = 0; i < 12; ++i) mf(i / 4, i % 4) = static_cast<float>(i) * 0.5f - 2.0f;
  files.push_back({"ok_f4_c_3x4.npy", pptq::io::serialize_npy(mf)});
  Eigen::VectorXd vd(5);
  vd << 1, -1, 0.25, 1e300, -0.0;
  files.push_back({"ok_f8_vec5.npy", pptq::io::serialize_npy_vector(vd)});
  Eigen::Matrix<std::int32_t, 2, 2> mi;
  mi << -1, 2, 2147483647, -2147483647 - 1;
  files.push_back({"ok_i4_2x2.npy", pptq::io::serialize_npy(mi)});
  Eigen::Matrix<std::uint8_t, 1, 3> mu;
  mu << 0, 7, 255;
  files.push_back({"ok_u1_1x3.npy", pptq::io::serialize_npy(mu)});
  Eigen::Matrix<std::int64_t, 2, 1> ml;
  ml << -5, 1234567890123;
  files.push_back({"ok_i8_2x1.npy", pptq::io::serialize_npy(ml)});
  files.push_back({"ok_f4_fortran_2x3.npy", npy(hdr("<f4", "(2, 3)", true), counting(24))});
  files.push_back({"ok_f8_big_endian_2x2.npy", npy(hdr(">f8", "(2, 2)"), counting(32))});
  files.push_back({"ok_i2_big_endian.npy", npy(hdr(">i2", "(3,)"), counting(6))});
  files.push_back({"ok_u4_u8_mixed.npy", npy(hdr("<u8", "(1, 2)"), counting(16))});
  files.push_back({"ok_f2_half.npy", npy(hdr("<f2", "(2, 2)"), Bytes{0x00, 0x3c, 0x01, 0x00, 0x00, 0x7c, 0x00, 0x7e})});
  files.push_back({"ok_i1_0d.npy", npy(hdr("|i1", "()"), Bytes{0x80})});
  files.push_back({"ok_f8_empty_0x3.npy", npy(hdr("<f8", "(0, 3)"), Bytes{})});
  files.push_back({"ok_u2_3d.npy", npy(hdr("<u2", "(1, 2, 2)"), counting(8))});
  files.push_back({"ok_v2_header.npy", npy(hdr("<f4", "(2,)"), counting(8), 2)});
  files.push_back({"ok_v3_header.npy", npy(hdr("<i4", "(1, 1)", true), counting(4), 3)});
  files.push_back({"ok_double_quotes_unpadded.npy",
                   npy("{\"shape\":(2,1),\"descr\":\"<f4\",\"fortran_order\":False}", counting(8), 1, false)});

  // Malformed files, one per rejection path.
  files.push_back({"bad_magic.npy", Bytes{'N', 'U', 'M', 'P', 'Y', 0x93, 1, 0, 0, 0}});
  files.push_back({"bad_truncated_preamble.npy", Bytes{0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 16}});
  Bytes v9 = npy(hdr("<f4", "(1,)"), counting(4));
  v9[6] = 9;
  files.push_back({"bad_version_9.npy", v9});
  Bytes hl = npy(hdr("<f4", "(1,)"), counting(4));
  hl[8] = 0xff;
  hl[9] = 0x7f;
  files.push_back({"bad_header_len.npy", hl});
  files.push_back({"bad_not_dict.npy", npy("('descr', '<f4')", counting(4))});
  files.push_back({"bad_missing_key.npy", npy("{'descr': '<f4', 'shape': (1,)}", counting(4))});
  files.push_back({"bad_extra_key.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': None}", counting(4))});
  files.push_back({"bad_shape_list.npy", npy(hdr("<f4", "[1]"), counting(4))});
  files.push_back({"bad_negative_dim.npy", npy(hdr("<f4", "(-1, 4)"), counting(4))});
  files.push_back({"bad_dim_overflow.npy", npy(hdr("<f4", "(3037000500, 3037000500)"), counting(4))});
  files.push_back({"bad_bytes_overflow.npy", npy(hdr("<u8", "(2305843009213693952,)"), counting(8))});
  files.push_back({"bad_huge_literal.npy", npy(hdr("<f4", "(123456789012345678901234567890,)"), counting(4))});
  files.push_back({"bad_complex.npy", npy(hdr("<c8", "(1,)"), counting(8))});
  files.push_back({"bad_object.npy", npy(hdr("|O", "(1,)"), counting(8))});
  files.push_back({"bad_structured.npy",
                   npy("{'descr': [('x', '<f4'), ('y', [('z', '<i2')])], 'fortran_order': False, 'shape': (1,)}", counting(8))});
  files.push_back({"bad_truncated_data.npy", npy(hdr("<f8", "(2, 2)"), counting(31))});
  files.push_back({"bad_trailing_data.npy", npy(hdr("<f8", "(2, 2)"), counting(33))});
  files.push_back({"bad_unterminated.npy", npy("{'descr': '<f4", Bytes{}, 1, false)});
  files.push_back({"bad_nesting.npy", npy("{'shape': " + std::string(40, '[') + std::string(40, ']') + "}", Bytes{})});
  files.push_back({"bad_fortran_not_bool.npy", npy("{'descr': '<f4', 'fortran_order': 1, 'shape': (1,)}", counting(4))});

  for (const auto& f : files) {
    const std::string path = dir + "/" + f.first;
    try {
      pptq::io::write_file_atomic(path, f.second.data(), f.second.size());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
  }
  std::printf("wrote %zu files to %s\n", files.size(), dir.c_str());
  return 0;
}
