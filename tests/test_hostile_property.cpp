// A property of pptq-quantize, tested on the library calls the tool makes (tools/pptq_quantize.cpp's
// quantize step), in-process because a run of the tool per case would take minutes: for random finite W
// with hostile rows (denormals, ±FLT_MAX/2, all-zero rows, rows of one value) and every method (rtn, optq,
// optq-stochastic, qronos, gpfq) on every block format (q4_0, q4_k, q3_k, q2_k) and on a plain 4-bit grid,
// the call either succeeds with finite quantized weights (and, for a format, bytes that dequantize to
// finite values), or ends in a clean error the tool maps to exit 2, 3 or 4: a pptq::Error, or a result
// whose status is NumericalIssue. Never a crash, another exception, or a silent NaN. (The tools' own runs
// of the same matrix are in test_hostile_cli.cpp.)
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <pptq/ggml/grid.hpp>
#include <pptq/pptq.hpp>

#include <cfloat>
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

using Eigen::MatrixXd;
using Eigen::MatrixXf;
using pptq::Index;
using pptq::ggml::Type;

enum class Method { Rtn, Optq, OptqStochastic, Qronos, Gpfq };
const char* name(Method m) {
  switch (m) {
    case Method::Rtn: return "rtn";
    case Method::Optq: return "optq";
    case Method::OptqStochastic: return "optq-stochastic";
    case Method::Qronos: return "qronos";
    case Method::Gpfq: return "gpfq";
  }
  return "?";
}

/// A row of W of the given kind (cols entries), float.
Eigen::RowVectorXf hostile_row(int kind, Index cols, std::mt19937_64& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_int_distribution<int> coin(0, 1);
  Eigen::RowVectorXf r(cols);
  for (Index j = 0; j < cols; ++j) {
    switch (kind) {
      case 0: r(j) = g(rng); break;                                                     // ordinary
      case 1: r(j) = g(rng) * 1e-40f; break;                                             // denormals
      case 2: r(j) = (coin(rng) ? 1.0f : -1.0f) * FLT_MAX / 2; break;                     // ±FLT_MAX/2
      case 3: r(j) = 0.0f; break;                                                        // all zero
      case 4: r(j) = 3.25f; break;                                                       // one value
      case 5: r(j) = (j % 17 == 0) ? FLT_MAX / 2 : g(rng) * 1e-3f; break;                 // one huge per block
      default: r(j) = (j % 2 ? 1 : -1) * std::ldexp(1.0f, -126 - static_cast<int>(j % 20)); break;  // at the normal edge
    }
  }
  return r;
}

/// W with one row of each kind, in a seeded order.
MatrixXf hostile_w(Index cols, std::mt19937_64& rng) {
  const int kinds = 7;
  MatrixXf W(kinds, cols);
  std::vector<int> order(kinds);
  for (int k = 0; k < kinds; ++k) order[static_cast<std::size_t>(k)] = k;
  std::shuffle(order.begin(), order.end(), rng);
  for (int i = 0; i < kinds; ++i) W.row(i) = hostile_row(order[static_cast<std::size_t>(i)], cols, rng);
  return W;
}

/// The outcome of one case: empty when it succeeded with finite outputs, otherwise why it stopped.
struct Outcome {
  bool ok = false;          ///< a result with finite weights
  bool clean_error = false;  ///< a pptq::Error, or NumericalIssue
  std::string what;
};

template <typename Options>
Options sweep_options(Method m) {
  Options o;
  o.rounding = m == Method::OptqStochastic ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
  o.seed = 7;
  return o;
}

/// The tool's --format paths (quantize_format, format_qronos).
pptq::QuantResult<float> run_format(Method m, Type type, const MatrixXf& W, const MatrixXd& X, const MatrixXd& Xq,
                                    std::vector<std::uint8_t>& bytes) {
  if (m == Method::Rtn) {
    auto gq = pptq::ggml::quantize_rtn(W, Eigen::VectorXd(X.colwise().squaredNorm().transpose()), type);
    bytes = gq.bytes;
    return gq.result;
  }
  if (m == Method::Optq || m == Method::OptqStochastic) {
    pptq::Gram<double> g(W.cols());
    g.add(X);
    pptq::ggml::QuantizeOptions q;
    q.optq = sweep_options<pptq::OptqOptions>(m);
    q.optq.damp = pptq::ggml::QuantizeOptions::default_optq().damp;
    auto gq = pptq::ggml::quantize_optq(W, g.matrix(), type, q);
    bytes = gq.bytes;
    return gq.result;
  }
  if (m == Method::Gpfq) throw pptq::UsageError("--format does not support --method gpfq");  // the tool's check
  pptq::CrossGram<double> cg(W.cols());
  cg.add(X, Xq);
  const MatrixXd Ht = cg.htilde();
  const auto grid = pptq::ggml::fit_format_grid(W, type, Eigen::VectorXd(Ht.diagonal()));
  auto r = pptq::qronos_from_grams(W, Ht, cg.cross(), grid, sweep_options<pptq::QronosOptions>(m));
  if (r.ok()) bytes = pptq::ggml::to_bytes(r, type);
  return r;
}

/// The tool's plain-grid paths (4 bits, asymmetric, one grid per row).
pptq::QuantResult<float> run_plain(Method m, const MatrixXf& W, const MatrixXd& X, const MatrixXd& Xq) {
  pptq::GridSpec spec;
  spec.bits = 4;
  if (m == Method::Rtn) return pptq::rtn(W, spec);
  if (m == Method::Optq || m == Method::OptqStochastic) {
    pptq::Gram<double> g(W.cols());
    g.add(X);
    return pptq::optq(W, std::move(g), spec, sweep_options<pptq::OptqOptions>(m));
  }
  pptq::CrossGram<double> cg(W.cols());
  cg.add(X, Xq);
  if (m == Method::Qronos) return pptq::qronos(W, std::move(cg), spec, sweep_options<pptq::QronosOptions>(m));
  return pptq::gpfq(W, cg, spec, sweep_options<pptq::GpfqOptions>(m));
}

Outcome run_case(Method m, std::optional<Type> type, const MatrixXf& W, const MatrixXd& X, const MatrixXd& Xq) {
  Outcome out;
  try {
    std::vector<std::uint8_t> bytes;
    const pptq::QuantResult<float> r = type ? run_format(m, *type, W, X, Xq, bytes) : run_plain(m, W, X, Xq);
    if (!r.ok()) {
      out.clean_error = true;
      out.what = "NumericalIssue: " + r.message;
      return out;
    }
    if (!r.dequantized.allFinite()) {
      out.what = "success with a non-finite Q";
      return out;
    }
    if (type && !pptq::ggml::dequantize_bytes(bytes, W.rows(), W.cols(), *type).allFinite()) {
      out.what = "success with bytes that dequantize to non-finite values";
      return out;
    }
    out.ok = true;
  } catch (const pptq::Error& e) {
    out.clean_error = true;
    out.what = std::string(pptq::to_string(e.kind())) + ": " + e.what();
  } catch (const std::exception& e) {
    out.what = std::string("unexpected exception: ") + e.what();
  }
  return out;
}

}  // namespace

namespace {

const std::vector<std::optional<Type>> kFormats = {std::nullopt, Type::Q4_0, Type::Q4_K, Type::Q3_K, Type::Q2_K};
const std::vector<Method> kMethods = {Method::Rtn, Method::Optq, Method::OptqStochastic, Method::Qronos, Method::Gpfq};

std::string label(Method m, const std::optional<Type>& type) {
  return std::string(name(m)) + " on " + (type ? pptq::ggml::type_name(*type) : "a 4-bit grid");
}

}  // namespace

TEST_CASE("hostile property: every method on every format gives finite weights or a clean error", "[hostile][property]") {
  std::mt19937_64 rng(20260101);
  const Index cols = 256, samples = 48;
  for (int trial = 0; trial < 3; ++trial) {
    const MatrixXf W = hostile_w(cols, rng);
    const MatrixXd X = test::structured_inputs(samples, cols, rng);
    const MatrixXd Xq = X + 0.05 * test::gaussian(samples, cols, rng);
    for (const auto& type : kFormats)
      for (Method m : kMethods) {
        INFO("trial " << trial << ", " << label(m, type));
        const Outcome o = run_case(m, type, W, X, Xq);
        INFO(o.what);
        CHECK((o.ok || o.clean_error));
        if (m == Method::Gpfq && type) CHECK(o.clean_error);  // the tool refuses gpfq with --format (exit 2)
      }
  }
}

TEST_CASE("hostile property: rows without overflow succeed for every supported combination", "[hostile][property]") {
  // Not vacuous: denormal, all-zero, one-value and normal-edge rows quantize, on every format and method.
  std::mt19937_64 rng(77);
  const Index cols = 256, samples = 48;
  MatrixXf W(5, cols);
  int i = 0;
  for (int kind : {0, 1, 3, 4, 6}) W.row(i++) = hostile_row(kind, cols, rng);
  const MatrixXd X = test::structured_inputs(samples, cols, rng);
  const MatrixXd Xq = X + 0.05 * test::gaussian(samples, cols, rng);
  for (const auto& type : kFormats)
    for (Method m : kMethods) {
      if (m == Method::Gpfq && type) continue;
      INFO(label(m, type));
      const Outcome o = run_case(m, type, W, X, Xq);
      INFO(o.what);
      CHECK(o.ok);
    }
}

// Once a core bug: Qronos's correction b = (X̃ᵀX − H̃)w, computed in W's scalar, overflows float for rows of
// ±FLT_MAX/2, and the sweep rounded the resulting NaN arguments by casting NaN to int32 (undefined; INT_MIN on
// x86): on a format grid, whose values stay finite for any code, that reported success with codes outside the
// lattice. Now qronos.hpp refuses an overflowed correction (NumericalIssue) and the sweep never casts a NaN.
TEST_CASE("hostile property: qronos on a format grid with +-FLT_MAX/2 rows keeps its codes in the lattice", "[hostile][property]") {
  std::mt19937_64 rng(20260101);
  const Index cols = 256, samples = 48;
  const MatrixXf W = hostile_w(cols, rng);
  const MatrixXd X = test::structured_inputs(samples, cols, rng);
  const MatrixXd Xq = X + 0.05 * test::gaussian(samples, cols, rng);
  for (Type type : {Type::Q4_0, Type::Q4_K, Type::Q3_K, Type::Q2_K}) {
    INFO(pptq::ggml::type_name(type));
    pptq::CrossGram<double> cg(cols);
    cg.add(X, Xq);
    const MatrixXd Ht = cg.htilde();
    const auto grid = pptq::ggml::fit_format_grid(W, type, Eigen::VectorXd(Ht.diagonal()));
    const auto r = pptq::qronos_from_grams(W, Ht, cg.cross(), grid, pptq::QronosOptions());
    if (!r.ok()) {  // NumericalIssue is the clean outcome, and it names the overflow
      CHECK(r.message.find("overflows float") != std::string::npos);
      continue;
    }
    bool inside = true;
    for (Index j = 0; j < cols; ++j)
      for (Index k = 0; k < W.rows(); ++k) {
        const auto L = r.grid.lattice(k, j);
        inside = inside && r.codes(k, j) >= L.lo && r.codes(k, j) <= L.hi;
      }
    CHECK(inside);
  }
}

// The sweep's own guard (detail/sweep.hpp): rows of alternating ±FLT_MAX/2 on a grid that cannot reach them
// feed back errors near FLT_MAX, whose sums overflow float to ±inf, and inf − inf is a NaN argument. Such a
// result is refused (never a code cast from NaN: the sanitizer build aborts on that cast), on the vectorized
// uniform path, the table-of-levels path (iq4_nl), nearest and stochastic, on a plain grid too.
TEST_CASE("hostile property: a sweep whose feedback overflows to NaN is refused", "[hostile][property]") {
  std::mt19937_64 rng(5);
  const Index cols = 256;
  MatrixXf W(2, cols);
  for (Index j = 0; j < cols; ++j) {
    W(0, j) = (j % 2 ? 1 : -1) * FLT_MAX / 2;
    W(1, j) = (j % 3 ? 1 : -1) * FLT_MAX / 2;
  }
  const MatrixXd X = test::structured_inputs(16, cols, rng);
  const MatrixXd H = X.transpose() * X;
  for (auto rounding : {pptq::Rounding::Nearest, pptq::Rounding::Stochastic}) {
    for (Type type : {Type::Q4_0, Type::IQ4_NL}) {
      INFO(pptq::ggml::type_name(type) << (rounding == pptq::Rounding::Stochastic ? " stochastic" : " nearest"));
      pptq::ggml::QuantizeOptions q;
      q.optq.damp = 0.001;
      q.optq.rounding = rounding;
      const auto gq = pptq::ggml::quantize_optq(W, H, type, q);
      CHECK_FALSE(gq.result.ok());
      CHECK(gq.result.message.find("rounding arguments overflowed float") != std::string::npos);
      CHECK(gq.bytes.empty());
    }
    pptq::GridSpec spec;
    spec.bits = 4;
    pptq::OptqOptions o;
    o.damp = 0.001;
    o.rounding = rounding;
    const auto r = pptq::optq(W, H, spec, o);
    CHECK_FALSE(r.ok());
    CHECK(r.message.find("overflowed float") != std::string::npos);
  }
}

namespace {

const std::vector<Type> kAllBlockFormats = {Type::Q4_0, Type::Q5_0, Type::Q8_0, Type::Q2_K,   Type::Q3_K,
                                            Type::Q4_K, Type::Q5_K, Type::Q6_K, Type::IQ4_NL, Type::IQ4_XS};

/// A ggml quantization's outcome is clean: NumericalIssue (no bytes), or finite values on the lattice whose
/// bytes decode to them.
template <typename Scalar>
void check_clean(const pptq::ggml::GgmlQuant<Scalar>& gq, Type type, Index rows, Index cols) {
  if (!gq.result.ok()) {
    CHECK(gq.bytes.empty());
    return;
  }
  REQUIRE(gq.result.dequantized.allFinite());
  const auto f = pptq::ggml::format_of(type);
  CHECK(gq.codes.minCoeff() >= 0);
  CHECK(gq.codes.maxCoeff() <= f.qmax);
  CHECK(pptq::ggml::dequantize_bytes(gq.bytes, rows, cols, type).allFinite());
}

}  // namespace

// The block formats' code → value map at the ends of float: weights of ±FLT_MAX (3.4e38) in every one of
// the ten formats, by plain rounding and by OPTQ, and the format fit with H = 1e308·I (importance weights
// of 1e308, whose products overflow double): finite values on the lattice, or NumericalIssue; never a NaN
// cast to a code (the sanitizer build aborts on one).
TEST_CASE("hostile property: block formats at +-FLT_MAX and with H = 1e308 I stay finite or fail cleanly", "[hostile][property][ggml]") {
  std::mt19937_64 rng(31);
  const Index rows = 3, cols = 256;
  MatrixXf W = test::gaussian(rows, cols, rng).cast<float>();
  for (Index j = 0; j < cols; j += 5) W(0, j) = (j % 2 ? 1 : -1) * FLT_MAX;  // both ends of float
  W.row(1).setConstant(-FLT_MAX);
  const MatrixXd H = 1e308 * MatrixXd::Identity(cols, cols);
  for (Type type : kAllBlockFormats) {
    INFO(pptq::ggml::type_name(type));
    check_clean(pptq::ggml::quantize_rtn(W, Eigen::VectorXd::Ones(cols), type), type, rows, cols);
    check_clean(pptq::ggml::quantize_rtn(W, Eigen::VectorXd::Constant(cols, 1e308), type), type, rows, cols);
    check_clean(pptq::ggml::quantize_optq(W, MatrixXd::Identity(cols, cols), type), type, rows, cols);
    check_clean(pptq::ggml::quantize_optq(W, H, type), type, rows, cols);
    // 1e308·I on ordinary weights: the fit's arithmetic overflows, the quantization must still succeed.
    const MatrixXf Wn = test::gaussian(rows, cols, rng).cast<float>();
    const auto ok = pptq::ggml::quantize_optq(Wn, H, type);
    check_clean(ok, type, rows, cols);
  }
}

// Weights above half the largest value, both signs, in float and in double, through every plain-grid
// method: never success with a NaN or infinite weight (the result's last check, detail/prepare.hpp).
TEMPLATE_TEST_CASE("hostile property: weights above half the largest value never succeed with a non-finite Q", "[hostile][property]", float, double) {
  using S = TestType;
  using MatrixS = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  std::mt19937_64 rng(32);
  const Index cols = 64, samples = 80;
  MatrixS W = test::gaussian(4, cols, rng).cast<S>();
  const S big = std::numeric_limits<S>::max() * S(0.75);
  for (Index j = 0; j < cols; ++j) {
    W(0, j) = (j % 2 ? big : -big);
    W(1, j) = j % 3 == 0 ? -big : W(1, j);
  }
  const MatrixXd X = test::structured_inputs(samples, cols, rng);
  const MatrixXd Xq = X + 0.05 * test::gaussian(samples, cols, rng);
  pptq::GridSpec spec;
  spec.bits = 4;
  std::vector<pptq::QuantResult<S>> results;
  results.push_back(pptq::rtn(W, spec));
  results.push_back(pptq::optq(W, MatrixXd(X.transpose() * X), spec));
  results.push_back(pptq::qronos(W, X, Xq, spec));
  pptq::CrossGram<double> cg(cols);
  cg.add(X, Xq);
  results.push_back(pptq::gpfq(W, cg, spec));
  for (std::size_t k = 0; k < results.size(); ++k) {
    INFO("method " << k << ": " << results[k].message);
    if (results[k].ok()) {
      CHECK(results[k].dequantized.allFinite());
      for (Index i = 0; i < W.rows(); ++i)
        for (Index j = 0; j < cols; ++j) {
          const auto L = results[k].grid.lattice(i, j);
          CHECK((results[k].codes(i, j) >= L.lo && results[k].codes(i, j) <= L.hi));
        }
    }
  }
  CHECK(results[0].ok());  // plain rounding of a finite row onto its own grid needs no arithmetic that overflows
}
