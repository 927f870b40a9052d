// Shared helpers of the test suite: seeded random layers and small comparisons.
#pragma once

#include "test_paths.hpp"
#include <pptq/pptq.hpp>

#include <Eigen/Dense>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <random>
#include <string>
#include <vector>

#include <filesystem>
#include <set>
#include <stdexcept>

#include <stdlib.h>
#include <sys/wait.h>

namespace test {

using pptq::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

inline std::string data_path(const std::string& rel) { return std::string(test::data_dir()) + "/" + rel; }

inline MatrixXd gaussian(Index r, Index c, std::mt19937_64& rng, double s = 1.0) {
  std::normal_distribution<double> n(0.0, s);
  MatrixXd m(r, c);
  for (Index j = 0; j < c; ++j)
    for (Index i = 0; i < r; ++i) m(i, j) = n(rng);
  return m;
}

/// Calibration inputs with realistic structure: a low-rank correlated part plus noise, log-normal column
/// scales (some outlier input channels). cond controls the spread of the column scales.
inline MatrixXd structured_inputs(Index m, Index n, std::mt19937_64& rng, Index rank = 8, double spread = 1.0) {
  MatrixXd X = gaussian(m, rank, rng) * gaussian(rank, n, rng) + 0.3 * gaussian(m, n, rng);
  std::normal_distribution<double> ln(0.0, spread);
  for (Index j = 0; j < n; ++j) X.col(j) *= std::exp(ln(rng));
  return X;
}

inline std::vector<Index> random_perm(Index n, std::mt19937_64& rng) {
  std::vector<Index> p(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) p[i] = i;
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

/// The library's own rounding of (row, original column, value) as a plain callback for the references
/// in tests/reference (ref::RoundFn): nearest, or stochastic with the engine's Philox key (seed, row, column).
inline std::function<double(Index, Index, double)> library_rounding(const pptq::Grid<double>& g,
                                                                     pptq::Rounding rounding = pptq::Rounding::Nearest,
                                                                     std::uint64_t seed = 0) {
  return [&g, rounding, seed](Index r, Index j, double v) {
    bool clip = false;
    const auto lat = g.lattice(r, j);
    if (rounding == pptq::Rounding::Nearest) return lat.value(lat.nearest(v, clip));
    const double u = pptq::detail::rounding_uniform(seed, static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(j));
    return lat.value(lat.stochastic(v, u, clip));
  };
}

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at the end of the test.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& prefix = "pptq_test") {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/" + prefix + "_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + templ);
    path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  /// The names in directory `sub` of it ("" = itself).
  std::set<std::string> names(const std::string& sub = "") const {
    std::set<std::string> s;
    for (const auto& e : std::filesystem::directory_iterator(sub.empty() ? path : path + "/" + sub))
      s.insert(e.path().filename().string());
    return s;
  }
};

/// A file's bytes ("" when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// A finished run of a program: exit code (−1 if it did not exit normally), stdout, stderr.
struct ProgramRun {
  int code = -1;
  std::string out, err;
};

/// Runs `program args...` with stdin from /dev/null, capturing stdout and stderr through the two files given.
inline ProgramRun run_program(const std::string& program, const std::vector<std::string>& args,
                              const std::string& stdout_path, const std::string& stderr_path) {
  std::string cmd = shell_quote(program);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + shell_quote(stdout_path) + " 2>" + shell_quote(stderr_path) + " </dev/null";
  const int st = std::system(cmd.c_str());
  ProgramRun r;
  r.code = (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
  r.out = slurp(stdout_path);
  r.err = slurp(stderr_path);
  return r;
}

inline double rel_diff(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

/// The paper's infinite alphabet δZ (no clipping at all).
inline pptq::GridSpec infinite_alphabet(double delta) {
  pptq::GridSpec g;
  g.alphabet = pptq::Alphabet::Infinite;
  g.delta = delta;
  return g;
}

/// A layer with structured inputs and its Gram: W rows × cols, X samples × cols, H = XᵀX.
struct GramLayer {
  MatrixXd W, X, H;
};

inline GramLayer gram_layer(Index rows, Index cols, Index samples, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  GramLayer L;
  L.X = structured_inputs(samples, cols, rng);
  L.W = gaussian(rows, cols, rng);
  L.H = L.X.transpose() * L.X;
  return L;
}

}  // namespace test
