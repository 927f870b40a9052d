// The pptq-quantize command-line tool (tools/pptq_quantize.cpp): runs the built binary (test::cli_path()) on
// small layers written with pptq::io into a fresh temporary directory, and checks its outputs and report
// against the library called in-process with the same options, and its errors (message, exit code, no
// output left behind). The tools' shared mapping of exceptions to exit codes (tools/cli_common.hpp) is
// tested in-process.
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include "cli_common.hpp"
#include "test_support.hpp"

#include <pptq/ggml/grid.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/pptq.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Eigen::MatrixXd;
using Eigen::MatrixXf;
using pptq::Index;

/// The test's directory; listing() leaves out the captured stdout/stderr of the tool.
struct TempDir : test::TempDir {
  TempDir() : test::TempDir("pptq_cli_test") {}
  std::set<std::string> listing() const {
    std::set<std::string> s = names();
    s.erase("cli.stdout");
    s.erase("cli.stderr");
    return s;
  }
};

using test::slurp;
using Run = test::ProgramRun;

Run run_cli(const TempDir& d, const std::vector<std::string>& args) {
  return test::run_program(test::cli_path(), args, d / "cli.stdout", d / "cli.stderr");
}

json read_json(const std::string& path) { return json::parse(slurp(path)); }

double rel(double a, double b) { return test::rel_diff(a, b); }

/// A small layer: W 24 × 40, X 200 × 40 (structured, with outlier channels), X̃ = X + noise.
struct Layer {
  MatrixXd W, X, Xq;
  explicit Layer(std::uint64_t seed = 11, Index rows = 24, Index cols = 40, Index m = 200) {
    std::mt19937_64 rng(seed);
    W = test::gaussian(rows, cols, rng, 0.5);
    X = test::structured_inputs(m, cols, rng);
    Xq = X + 0.05 * test::gaussian(m, cols, rng);
  }
};

/// ‖E‖_F, max|E| and ‖XWᵀ‖_F of E = XWᵀ − X̃Qᵀ (X̃ = X for the matched methods), in double.
struct Measured {
  double fro, linf, ref;
};
Measured measure(const MatrixXd& W, const MatrixXd& Q, const MatrixXd& X, const MatrixXd& Xt) {
  const MatrixXd Y = X * W.transpose();
  const MatrixXd E = Y - Xt * Q.transpose();
  return {E.norm(), E.cwiseAbs().maxCoeff(), Y.norm()};
}

/// RTN of W on the result's own grid.
template <typename S>
MatrixXd rtn_on_grid(const pptq::QuantResult<S>& r, const pptq::Matrix<S>& W) {
  MatrixXd Q(W.rows(), W.cols());
  for (Index j = 0; j < W.cols(); ++j)
    for (Index i = 0; i < W.rows(); ++i) {
      const auto lat = r.grid.lattice(i, j);
      bool c = false;
      Q(i, j) = static_cast<double>(lat.value(lat.nearest(W(i, j), c)));
    }
  return Q;
}

const std::vector<std::string> kTopKeys = {
    "method", "rows", "cols", "samples", "bits", "lambda", "order", "error", "bounds", "time_s", "status", "message",
    "lambda_tried", "damping_escalated", "dtype", "rounding", "seed", "damp", "proxy_loss"};
const std::vector<std::string> kErrorKeys = {"fro", "rel", "linf", "rtn_fro", "sampled_rows"};
const std::vector<std::string> kBoundKeys = {"C2",         "C2_max", "Cw",  "Cinf",  "l2_bound", "certificate",
                                             "linf_bound", "eta",    "holds", "clipped"};
const std::vector<std::string> kTimeKeys = {"gram", "fit", "factor", "sweep", "refit", "pack", "quantize", "report", "total"};

void require_keys(const json& j) {
  for (const auto& k : kTopKeys) {
    INFO("key " << k);
    REQUIRE(j.contains(k));
  }
  for (const auto& k : kErrorKeys) {
    INFO("error." << k);
    REQUIRE(j["error"].contains(k));
  }
  for (const auto& k : kBoundKeys) {
    INFO("bounds." << k);
    REQUIRE(j["bounds"].contains(k));
  }
  for (const auto& k : kTimeKeys) {
    INFO("time_s." << k);
    REQUIRE(j["time_s"].contains(k));
  }
  // The factorization is timed on its own for the methods that factor H (or H̃); the parts of a call add
  // up to no more than the call.
  const std::string method = j["method"].get<std::string>();
  const bool factored = method.rfind("optq", 0) == 0 || method.rfind("qronos", 0) == 0;
  CHECK(j["time_s"]["factor"].is_number() == factored);
  CHECK(j["time_s"]["sweep"].is_number());
  CHECK(j["time_s"]["quantize"].is_number());
  CHECK(j["time_s"]["total"].is_number());
  const double parts = (factored ? j["time_s"]["factor"].get<double>() : 0.0) + j["time_s"]["sweep"].get<double>();
  CHECK(parts <= j["time_s"]["quantize"].get<double>() * (1 + 1e-9) + 1e-9);
}

std::vector<Index> order_of(const json& j) { return j["order"].get<std::vector<Index>>(); }

template <typename S>
void write_layer(const TempDir& d, const Layer& L) {
  pptq::io::write_npy(d / "W.npy", pptq::Matrix<S>(L.W.cast<S>()));
  pptq::io::write_npy(d / "X.npy", L.X);
  pptq::io::write_npy(d / "XQ.npy", L.Xq);
}

std::vector<std::string> base_args(const TempDir& d, const std::string& method) {
  std::vector<std::string> a = {"--weights", d / "W.npy", "--method", method, "--bits", "4",
                                "--output",  d / "Q.npy", "--codes", d / "C.npy", "--report", d / "R.json"};
  if (method == "qronos" || method == "qronos-stochastic" || method == "gpfq") {
    a.insert(a.end(), {"--inputs", d / "X.npy", "--quantized-inputs", d / "XQ.npy"});
  } else {
    a.insert(a.end(), {"--inputs", d / "X.npy"});
  }
  return a;
}

/// Runs `method` through the CLI and in-process with the same options; compares Q bit for bit, the codes,
/// λ, the order, the errors (1e-12 relative) and the trivially available bounds.
template <typename S>
void round_trip(const std::string& method, const std::vector<std::string>& extra = {}, std::uint64_t seed = 0) {
  TempDir d;
  const Layer L;
  write_layer<S>(d, L);
  auto args = base_args(d, method);
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back("--full-report");  // every figure measured on X, compared below with the test's own
  const Run run = run_cli(d, args);
  INFO("stderr: " << run.err);
  REQUIRE(run.code == 0);
  CHECK(run.err.empty());

  // In-process, the same options (defaults of the library unless given in `extra`).
  const pptq::Matrix<S> W = L.W.cast<S>();
  pptq::GridSpec grid;
  grid.bits = 4;
  pptq::QuantResult<S> r;
  const bool stochastic = method.find("stochastic") != std::string::npos;
  if (method == "rtn") {
    r = pptq::rtn(W, grid);
  } else if (method == "optq" || method == "optq-stochastic") {
    pptq::OptqOptions o;
    if (stochastic) {
      o.rounding = pptq::Rounding::Stochastic;
      o.seed = seed;
    }
    pptq::Gram<double> g(L.X.cols());
    g.add(L.X);
    r = pptq::optq(W, g.matrix(), grid, o);
  } else if (method == "qronos" || method == "qronos-stochastic") {
    pptq::QronosOptions o;
    if (stochastic) {
      o.rounding = pptq::Rounding::Stochastic;
      o.seed = seed;
    }
    r = pptq::qronos(W, L.X, L.Xq, grid, o);
  } else {
    r = pptq::gpfq(W, L.X, L.Xq, grid);
  }
  REQUIRE(r.ok());

  // Q: W's dtype and shape, bit for bit.
  const pptq::io::NpyArray qa = pptq::io::read_npy(d / "Q.npy");
  CHECK(qa.dtype == (std::is_same<S, float>::value ? pptq::io::DType::f32 : pptq::io::DType::f64));
  REQUIRE(qa.shape == std::vector<std::int64_t>{24, 40});
  const pptq::Matrix<S> Q = pptq::io::to_matrix<S>(qa);
  CHECK((Q.array() == r.dequantized.array()).all());
  // Codes: int32, rows × cols.
  const pptq::io::NpyArray ca = pptq::io::read_npy(d / "C.npy");
  CHECK(ca.dtype == pptq::io::DType::i32);
  REQUIRE(ca.shape == std::vector<std::int64_t>{24, 40});
  CHECK((pptq::io::to_matrix<std::int32_t>(ca).array() == r.codes.array()).all());

  const json j = read_json(d / "R.json");
  require_keys(j);
  CHECK(j["method"] == method);
  CHECK(j["rows"] == 24);
  CHECK(j["cols"] == 40);
  CHECK(j["samples"] == 200);
  CHECK(j["bits"] == 4);
  CHECK(j["dtype"] == (std::is_same<S, float>::value ? "float32" : "float64"));
  CHECK(order_of(j) == r.perm);
  CHECK(j["status"] == pptq::to_string(r.status));
  CHECK(j["bounds"]["clipped"] == r.clipped_total());
  CHECK(j["rounding"] == (stochastic ? "stochastic" : "nearest"));
  if (stochastic)
    CHECK(j["seed"] == seed);
  else
    CHECK(j["seed"].is_null());

  const bool factor = method != "rtn" && method != "gpfq";
  if (factor) {
    CHECK(rel(j["lambda"].get<double>(), r.lambda) < 1e-12);
    CHECK(j["lambda_tried"].get<std::vector<double>>().size() == r.lambda_tried.size());
    CHECK(j["damping_escalated"] == (r.status == pptq::Status::DampingEscalated));
    CHECK(j["time_s"]["gram"].is_number());
    // C2 = sqrt(Σ 1/L_tt²), C2_max = √N max 1/L_tt from the run's own factor.
    double s = 0, mx = 0;
    for (Index t = 0; t < r.Ltt.size(); ++t) {
      s += 1.0 / (r.Ltt(t) * r.Ltt(t));
      mx = std::max(mx, 1.0 / std::abs(r.Ltt(t)));
    }
    CHECK(rel(j["bounds"]["C2"].get<double>(), std::sqrt(s)) < 1e-9);
    CHECK(rel(j["bounds"]["C2_max"].get<double>(), std::sqrt(40.0) * mx) < 1e-9);
    REQUIRE(j["bounds"]["certificate"].is_number());
    CHECK(j["bounds"]["Cw"].is_number());
    CHECK(j["bounds"]["Cinf"].is_number());
  } else {
    CHECK(j["lambda"].is_null());
    CHECK(j["lambda_tried"].is_null());
    CHECK(j["damping_escalated"].is_null());
    CHECK(j["bounds"]["C2"].is_null());
    CHECK(j["bounds"]["certificate"].is_null());
  }
  if (method == "rtn") CHECK(j["time_s"]["gram"].is_null());

  // Errors: ‖X(W − Q)ᵀ‖ (OPTQ, RTN) or ‖XWᵀ − X̃Qᵀ‖ (Qronos, GPFQ); RTN on the same grid.
  const bool mismatched = method == "qronos" || method == "qronos-stochastic" || method == "gpfq";
  const MatrixXd Qd = r.dequantized.template cast<double>();
  const MatrixXd Wd = W.template cast<double>();
  const Measured m = measure(Wd, Qd, L.X, mismatched ? L.Xq : L.X);
  const Measured mr = measure(Wd, rtn_on_grid(r, W), L.X, mismatched ? L.Xq : L.X);
  CHECK(rel(j["error"]["fro"].get<double>(), m.fro) < 1e-12);
  CHECK(rel(j["error"]["rel"].get<double>(), m.fro / m.ref) < 1e-12);
  CHECK(rel(j["error"]["linf"].get<double>(), m.linf) < 1e-12);
  CHECK(rel(j["error"]["rtn_fro"].get<double>(), mr.fro) < 1e-12);
  if (method == "optq") {
    // The certificate is exact: ‖X(W − Q)ᵀ‖² + λ‖W − Q‖².
    const double cert2 = m.fro * m.fro + r.lambda * (Wd - Qd).squaredNorm();
    CHECK(rel(j["bounds"]["certificate"].get<double>(), std::sqrt(cert2)) < (std::is_same<S, float>::value ? 1e-4 : 1e-9));
    // (float: the sweep accumulates the energy in float, whose rounding may depend on compiler flags)
    CHECK(rel(j["bounds"]["certificate"].get<double>(), std::sqrt(r.energy.sum())) <
          (std::is_same<S, float>::value ? 1e-5 : 1e-9));
  }
  // Only the outputs and the inputs are left in the directory (no temporary files).
  CHECK(d.listing() == std::set<std::string>{"W.npy", "X.npy", "XQ.npy", "Q.npy", "C.npy", "R.json"});
}

/// Runs a failing command and checks exit code, message and that no output is left behind.
void expect_failure(const TempDir& d, const std::vector<std::string>& args, int code, const std::string& needle) {
  const std::set<std::string> before = d.listing();
  const Run run = run_cli(d, args);
  INFO("stderr: " << run.err);
  CHECK(run.code == code);
  CHECK(run.err.rfind("pptq-quantize: ", 0) == 0);
  CHECK(run.err.find(needle) != std::string::npos);
  CHECK(std::count(run.err.begin(), run.err.end(), '\n') == 1);  // one line
  CHECK(d.listing() == before);
}

}  // namespace

TEST_CASE("cli: OPTQ round trip, float64, report agrees with the library", "[cli]") { round_trip<double>("optq"); }

TEST_CASE("cli: OPTQ round trip, float32 weights stay float32", "[cli]") { round_trip<float>("optq"); }

TEST_CASE("cli: every method runs and matches the library bit for bit", "[cli]") {
  SECTION("rtn") { round_trip<double>("rtn"); }
  SECTION("optq-stochastic") { round_trip<double>("optq-stochastic", {"--seed", "7"}, 7); }
  SECTION("qronos") { round_trip<double>("qronos"); }
  SECTION("qronos-stochastic") { round_trip<double>("qronos-stochastic", {"--seed", "3"}, 3); }
  SECTION("gpfq") { round_trip<double>("gpfq"); }
  SECTION("qronos float32") { round_trip<float>("qronos"); }
  SECTION("gpfq float32") { round_trip<float>("gpfq"); }
}

TEST_CASE("cli: options reach the library (damp, lambda, act-order, groups, block size, threads)", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  pptq::Gram<double> g(40);
  g.add(L.X);
  const MatrixXd H = g.matrix();
  pptq::GridSpec grid;
  grid.bits = 3;
  grid.symmetric = true;
  grid.group_size = 8;
  grid.static_groups = true;
  grid.mse = true;

  struct Case {
    std::vector<std::string> args;
    pptq::OptqOptions opt;
  };
  std::vector<Case> cases;
  {
    Case c;
    c.args = {"--damp", "0.1", "--no-act-order", "--block-size", "7", "--threads", "1"};
    c.opt.damp = 0.1;
    c.opt.act_order = false;
    c.opt.block_size = 7;
    cases.push_back(c);
  }
  {
    Case c;
    c.args = {"--lambda", "2.5", "--act-order"};
    c.opt.lambda = 2.5;
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq",
                                     "--bits", "3", "--symmetric", "--group-size", "8", "--static-groups", "--mse",
                                     "--output", d / "Q.npy", "--report", d / "R.json"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const Run run = run_cli(d, args);
    INFO("stderr: " << run.err);
    REQUIRE(run.code == 0);
    const auto r = pptq::optq(L.W, H, grid, c.opt);
    const MatrixXd Q = pptq::io::read_npy_matrix<double>(d / "Q.npy");
    CHECK((Q.array() == r.dequantized.array()).all());
    const json j = read_json(d / "R.json");
    require_keys(j);
    CHECK(rel(j["lambda"].get<double>(), r.lambda) < 1e-12);
    if (c.opt.lambda) {
      CHECK(j["lambda"].get<double>() == 2.5);
      CHECK(j["damp"].is_null());
    } else {
      CHECK(rel(j["lambda"].get<double>(), 0.1 * H.diagonal().mean()) < 1e-12);
      CHECK(j["damp"].get<double>() == 0.1);
    }
    CHECK(order_of(j) == r.perm);
    CHECK(j["act_order"] == c.opt.act_order);
    CHECK(j["group_size"] == 8);
    CHECK(j["block_size"] == c.opt.block_size);  // the library default (1024) when not given
    CHECK(j["backend"] == pptq::detail::blas_backend());
    if (!c.opt.act_order) {
      std::vector<Index> id(40);
      for (Index i = 0; i < 40; ++i) id[i] = i;
      CHECK(order_of(j) == id);
    }
  }
}

TEST_CASE("cli: the default report takes the errors from the energy identity; --full-report measures on X", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  json reports[2];
  for (int full = 0; full < 2; ++full) {
    auto args = base_args(d, "optq");
    if (full) args.push_back("--full-report");
    const Run run = run_cli(d, args);
    INFO("stderr: " << run.err);
    REQUIRE(run.code == 0);
    reports[full] = read_json(d / "R.json");
    require_keys(reports[full]);
  }
  const json &a = reports[0], &b = reports[1];
  CHECK(a["error"]["sampled_rows"] == 24);  // fewer rows than the sample: every row measured
  CHECK(b["error"]["sampled_rows"].is_null());
  CHECK(rel(a["error"]["fro"].get<double>(), b["error"]["fro"].get<double>()) < 1e-9);
  CHECK(rel(a["error"]["rel"].get<double>(), b["error"]["rel"].get<double>()) < 1e-9);
  CHECK(rel(a["error"]["rtn_fro"].get<double>(), b["error"]["rtn_fro"].get<double>()) < 1e-9);
  CHECK(a["error"]["linf"].is_null());
  CHECK(b["error"]["linf"].is_number());
  CHECK(a["bounds"]["Cinf"].is_null());
  CHECK(b["bounds"]["Cinf"].is_number());
  for (const char* k : {"C2", "Cw", "Cinf_crude", "certificate"}) {
    INFO("bounds." << k);
    CHECK(rel(a["bounds"][k].get<double>(), b["bounds"][k].get<double>()) < 1e-9);
  }
  CHECK(a["samples"] == 200);
  CHECK(a["order"] == b["order"]);
}

TEST_CASE("cli: --hessian gives the same weights as --inputs and errors from H", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  pptq::Gram<double> g(40);
  g.add(L.X);
  const MatrixXd H = g.matrix();
  pptq::io::write_npy(d / "H.npy", H);
  const Run a = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "QX.npy"});
  const Run b = run_cli(d, {"--weights", d / "W.npy", "--hessian", d / "H.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "QH.npy", "--report", d / "R.json"});
  INFO(a.err << b.err);
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  const MatrixXd QX = pptq::io::read_npy_matrix<double>(d / "QX.npy");
  const MatrixXd QH = pptq::io::read_npy_matrix<double>(d / "QH.npy");
  CHECK((QX.array() == QH.array()).all());
  const json j = read_json(d / "R.json");
  require_keys(j);
  CHECK(j["samples"].is_null());
  CHECK(j["error"]["linf"].is_null());
  CHECK(j["bounds"]["Cinf"].is_null());
  CHECK(j["bounds"]["linf_bound"].is_null());
  const MatrixXd D = L.W - QH;
  const double fro = std::sqrt((D * H).cwiseProduct(D).sum());
  CHECK(rel(j["error"]["fro"].get<double>(), fro) < 1e-10);
  CHECK(rel(j["error"]["fro"].get<double>(), (L.X * D.transpose()).norm()) < 1e-8);
  CHECK(j["time_s"]["gram"].is_null());
}

TEST_CASE("cli: Fortran-order and float32 inputs give the same result", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  // X in Fortran order: column-major bytes, fortran_order True.
  pptq::io::NpyArray fa;
  fa.dtype = pptq::io::DType::f64;
  fa.shape = {L.X.rows(), L.X.cols()};
  fa.fortran_order = true;
  const auto* p = reinterpret_cast<const std::uint8_t*>(L.X.data());
  fa.bytes.assign(p, p + L.X.size() * sizeof(double));
  pptq::io::write_npy(d / "XF.npy", fa);
  const Run a = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "QC.npy"});
  const Run b = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "XF.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "QF.npy"});
  INFO(a.err << b.err);
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  CHECK(slurp(d / "QC.npy") == slurp(d / "QF.npy"));

  // float32 X: the library sees the same values in double.
  const MatrixXf Xf = L.X.cast<float>();
  pptq::io::write_npy(d / "X32.npy", Xf);
  const Run c = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "X32.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "Q32.npy"});
  REQUIRE(c.code == 0);
  pptq::Gram<double> g(40);
  g.add(Xf.cast<double>());
  const auto r = pptq::optq(L.W, g.matrix(), pptq::GridSpec{}, pptq::OptqOptions{});
  CHECK((pptq::io::read_npy_matrix<double>(d / "Q32.npy").array() == r.dequantized.array()).all());
}

TEST_CASE("cli: --progress reports on stderr", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  const Run run = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--bits", "4",
                              "--output", d / "Q.npy", "--progress"});
  REQUIRE(run.code == 0);
  CHECK(run.err.find("100%") != std::string::npos);
}

TEST_CASE("cli: bad usage exits 2 with a one-line message and writes nothing", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  const std::string W = d / "W.npy", X = d / "X.npy", XQ = d / "XQ.npy", Q = d / "Q.npy";
  const std::vector<std::string> out = {"--output", Q, "--report", d / "R.json", "--codes", d / "C.npy"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), out.begin(), out.end());
    return a;
  };
  SECTION("missing --weights") {
    expect_failure(d, with({"--inputs", X, "--method", "optq", "--bits", "4"}), 2, "--weights is required");
  }
  SECTION("unknown method") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "obq", "--bits", "4"}), 2, "--method");
  }
  SECTION("bits 9") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "optq", "--bits", "9"}), 2, "--bits");
  }
  SECTION("--damp with --lambda") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--damp", "0.1",
                            "--lambda", "1"}),
                   2, "excludes");
  }
  SECTION("qronos without --quantized-inputs") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "qronos", "--bits", "4"}), 2,
                   "needs --quantized-inputs");
  }
  SECTION("gpfq with --hessian") {
    expect_failure(d, with({"--weights", W, "--hessian", X, "--method", "gpfq", "--bits", "4", "--quantized-inputs", XQ}),
                   2, "does not accept --hessian");
  }
  SECTION("neither --inputs nor --hessian") {
    expect_failure(d, with({"--weights", W, "--method", "optq", "--bits", "4"}), 2, "--inputs");
  }
  SECTION("--inputs with --hessian") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--hessian", X, "--method", "optq", "--bits", "4"}), 2,
                   "excludes");
  }
  SECTION("eta out of (0, 1)") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--eta", "1.5"}), 2,
                   "--eta must be in (0, 1)");
  }
  SECTION("--act-order with --no-act-order") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--act-order",
                            "--no-act-order"}),
                   2, "excludes");
  }
  SECTION("--lambda for gpfq") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--quantized-inputs", XQ, "--method", "gpfq", "--bits", "4",
                            "--lambda", "1"}),
                   2, "--lambda does not apply");
  }
  SECTION("--seed for a deterministic method") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--seed", "1"}), 2,
                   "--seed applies");
  }
  SECTION("bad group size") {
    expect_failure(d, with({"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--group-size", "0"}),
                   2, "--group-size");
  }
  SECTION("output directory missing") {
    expect_failure(d, {"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--output",
                       d / "no/such/dir/Q.npy"},
                   2, "not writable");
  }
  SECTION("same file twice") {
    expect_failure(d, {"--weights", W, "--inputs", X, "--method", "optq", "--bits", "4", "--output", Q, "--codes", Q},
                   2, "same file");
  }
}

TEST_CASE("cli: bad data exits 3 with a one-line message and writes nothing", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  const std::string W = d / "W.npy", X = d / "X.npy", XQ = d / "XQ.npy", Q = d / "Q.npy";
  auto args = [&](const std::string& w, const std::string& x) {
    return std::vector<std::string>{"--weights", w, "--inputs", x, "--method", "optq", "--bits", "4",
                                    "--output", Q, "--report", d / "R.json", "--codes", d / "C.npy"};
  };
  SECTION("shape mismatch W vs X") {
    std::mt19937_64 rng(5);
    pptq::io::write_npy(d / "X41.npy", test::gaussian(200, 41, rng));
    expect_failure(d, args(W, d / "X41.npy"), 3, "200 x 41");
  }
  SECTION("shape mismatch X vs XQ") {
    std::mt19937_64 rng(5);
    pptq::io::write_npy(d / "XQ199.npy", test::gaussian(199, 40, rng));
    expect_failure(d, {"--weights", W, "--inputs", X, "--quantized-inputs", d / "XQ199.npy", "--method", "qronos",
                       "--bits", "4", "--output", Q},
                   3, "199 x 40");
  }
  SECTION("NaN in X") {
    MatrixXd Xn = L.X;
    Xn(17, 3) = std::numeric_limits<double>::quiet_NaN();
    pptq::io::write_npy(d / "XN.npy", Xn);
    expect_failure(d, args(W, d / "XN.npy"), 3, "non-finite entry nan at (17, 3)");
  }
  SECTION("Inf in W") {
    MatrixXd Wn = L.W;
    Wn(2, 5) = std::numeric_limits<double>::infinity();
    pptq::io::write_npy(d / "WI.npy", Wn);
    expect_failure(d, args(d / "WI.npy", X), 3, "non-finite entry inf at (2, 5)");
  }
  SECTION("malformed .npy") {
    std::string bytes = slurp(X);
    bytes.resize(bytes.size() / 2);  // truncated data
    { std::ofstream(d / "Xbad.npy", std::ios::binary) << bytes; }
    expect_failure(d, args(W, d / "Xbad.npy"), 3, "Xbad.npy");
    { std::ofstream(d / "Xtext.npy", std::ios::binary) << "not a numpy file at all"; }
    expect_failure(d, args(W, d / "Xtext.npy"), 3, "Xtext.npy");
  }
  SECTION("unreadable path") { expect_failure(d, args(W, d / "missing.npy"), 3, "missing.npy: cannot open"); }
  SECTION("integer dtype") {
    pptq::io::write_npy(d / "Wi.npy", Eigen::MatrixXi::Ones(24, 40).eval());
    expect_failure(d, args(d / "Wi.npy", X), 3, "float32");
  }
  SECTION("1-d array") {
    pptq::io::write_npy_vector(d / "W1.npy", Eigen::VectorXd::Ones(40).eval());
    expect_failure(d, args(d / "W1.npy", X), 3, "2-d");
  }
  SECTION("non-symmetric H") {
    MatrixXd H = L.X.transpose() * L.X;
    H(0, 1) += 0.1 * H.diagonal().maxCoeff();
    pptq::io::write_npy(d / "H.npy", H);
    expect_failure(d, {"--weights", W, "--hessian", d / "H.npy", "--method", "optq", "--bits", "4", "--output", Q}, 3,
                   "not symmetric");
  }
  SECTION("H of the wrong size") {
    pptq::io::write_npy(d / "H.npy", MatrixXd::Identity(39, 39).eval());
    expect_failure(d, {"--weights", W, "--hessian", d / "H.npy", "--method", "optq", "--bits", "4", "--output", Q}, 3,
                   "39 x 39");
  }
}

TEST_CASE("cli: numerical failure exits 4 and writes nothing", "[cli]") {
  TempDir d;
  // H = [[1, 3], [3, 1]] has eigenvalues 4 and −2: H + λI is indefinite for every λ up to the cap (1·mean diag).
  MatrixXd H(2, 2);
  H << 1, 3, 3, 1;
  pptq::io::write_npy(d / "H.npy", H);
  pptq::io::write_npy(d / "W.npy", MatrixXd::Ones(3, 2).eval());
  expect_failure(d, {"--weights", d / "W.npy", "--hessian", d / "H.npy", "--method", "optq", "--bits", "4", "--output",
                     d / "Q.npy", "--report", d / "R.json"},
                 4, "not positive definite");
}

TEST_CASE("cli: --help documents the act-order default and exits 0", "[cli]") {
  TempDir d;
  const Run run = run_cli(d, {"--help"});
  CHECK(run.code == 0);
  CHECK(run.out.find("--no-act-order") != std::string::npos);
  CHECK(run.out.find("DEFAULT") != std::string::npos);
}

TEST_CASE("cli: Qronos damping options reach QronosOptions", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  pptq::GridSpec grid;
  grid.bits = 4;
  for (const std::string mode : {"--lambda", "--damp"}) {
    const double v = mode == "--lambda" ? 3.0 : 0.02;
    const Run run = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--quantized-inputs", d / "XQ.npy",
                                "--method", "qronos", "--bits", "4", mode, mode == "--lambda" ? "3" : "0.02",
                                "--no-act-order", "--output", d / "Q.npy", "--report", d / "R.json"});
    INFO(run.err);
    REQUIRE(run.code == 0);
    pptq::QronosOptions o;
    if (mode == "--lambda")
      o.lambda = v;
    else
      o.damp = v;
    o.act_order = false;
    const auto r = pptq::qronos(L.W, L.X, L.Xq, grid, o);
    CHECK((pptq::io::read_npy_matrix<double>(d / "Q.npy").array() == r.dequantized.array()).all());
    const json j = read_json(d / "R.json");
    require_keys(j);
    CHECK(rel(j["lambda"].get<double>(), r.lambda) < 1e-12);
    CHECK(j["lambda_max"].is_null());
    CHECK(order_of(j) == r.perm);
    if (mode == "--damp") {
      const MatrixXd Ht = L.Xq.transpose() * L.Xq;
      CHECK(rel(j["lambda"].get<double>(), v * Ht.diagonal().mean()) < 1e-12);
    }
  }
}

TEST_CASE("cli: a failing run does not replace an existing output", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  { std::ofstream(d / "Q.npy", std::ios::binary) << "previous contents"; }
  MatrixXd Xn = L.X;
  Xn(0, 0) = std::numeric_limits<double>::quiet_NaN();
  pptq::io::write_npy(d / "XN.npy", Xn);
  expect_failure(d, {"--weights", d / "W.npy", "--inputs", d / "XN.npy", "--method", "optq", "--bits", "4", "--output",
                     d / "Q.npy"},
                 3, "non-finite");
  CHECK(slurp(d / "Q.npy") == "previous contents");
}

// ------------------------------------------------------------------------------------------------
// --format: llama.cpp's block formats (docs/formats.md)
// ------------------------------------------------------------------------------------------------

TEST_CASE("cli: --format writes the format's bytes into a GGUF and matches the library", "[cli][ggml]") {
  TempDir d;
  const Layer L(5, 12, 256, 600);  // cols a multiple of 256 for the k-quants
  write_layer<float>(d, L);
  pptq::Gram<double> g(256);
  g.add(L.X);
  const MatrixXd H = g.matrix();
  const MatrixXf W = L.W.cast<float>();
  for (const auto& fmt : std::vector<std::pair<std::string, pptq::ggml::Type>>{
           {"q4_0", pptq::ggml::Type::Q4_0}, {"q4_k", pptq::ggml::Type::Q4_K},
           {"q3_k", pptq::ggml::Type::Q3_K}, {"Q2_K", pptq::ggml::Type::Q2_K}}) {
    INFO("format " << fmt.first);
    const Run run = run_cli(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--format",
                                fmt.first, "--gguf", d / "out.gguf", "--tensor-name", "blk.0.attn_q.weight",
                                "--output", d / "Q.npy", "--report", d / "R.json"});
    REQUIRE(run.code == 0);
    // The library in-process: fit → OPTQ (damp 0.1, the format default) → refit → bytes.
    const auto gq = pptq::ggml::quantize_optq(W, H, fmt.second);
    const pptq::gguf::File f = pptq::gguf::read(d / "out.gguf");
    REQUIRE(f.tensors.size() == 1);
    const auto& t = f.tensors[0];
    CHECK(t.name == "blk.0.attn_q.weight");
    CHECK(t.type == fmt.second);
    CHECK(t.ne == std::vector<std::uint64_t>{256, 12});
    CHECK(t.data == gq.bytes);
    const MatrixXf Q = pptq::io::read_npy_matrix<float>(d / "Q.npy");
    CHECK(Q == gq.dequantized);
    const json j = read_json(d / "R.json");
    CHECK(j["format"] == pptq::ggml::type_name(fmt.second));
    CHECK(j["bits_per_weight"].get<double>() == pptq::ggml::bits_per_weight(fmt.second));
    CHECK(j["bits"] == pptq::ggml::format_of(fmt.second).bits);
    CHECK(rel(j["lambda"].get<double>(), gq.result.lambda) < 1e-12);
    CHECK(j["damp"].get<double>() == 0.1);
    CHECK(j["refit_gain"].get<double>() >= 1.0);
    CHECK(j["error"]["rtn_fro"].is_number());
    // The format's own parts are timed apart from the factor and the sweep, all within the call.
    double parts = 0;
    for (const char* k : {"fit", "factor", "sweep", "refit", "pack"}) {
      INFO("time_s." << k);
      REQUIRE(j["time_s"][k].is_number());
      parts += j["time_s"][k].get<double>();
    }
    CHECK(parts <= j["time_s"]["quantize"].get<double>() * (1 + 1e-9) + 1e-9);
  }
  // Qronos and RTN write their format too; --output is optional with --gguf.
  for (const std::string method : {"qronos", "rtn"}) {
    std::vector<std::string> args = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", method,
                                     "--format", "q4_k", "--gguf", d / (method + ".gguf")};
    if (method == "qronos") args.insert(args.end(), {"--quantized-inputs", d / "XQ.npy"});
    const Run run = run_cli(d, args);
    REQUIRE(run.code == 0);
    const pptq::gguf::File f = pptq::gguf::read(d / (method + ".gguf"));
    REQUIRE(f.tensors.size() == 1);
    CHECK(f.tensors[0].name == "weight");
    CHECK(f.tensors[0].type == pptq::ggml::Type::Q4_K);
    CHECK(f.tensors[0].data.size() == 12u * 144u);
  }
}

TEST_CASE("cli: --format usage errors", "[cli][ggml]") {
  TempDir d;
  const Layer L(6, 4, 256, 300);
  write_layer<double>(d, L);
  const std::vector<std::string> base = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {with({"--format", "q4_k"}), 2, "--format needs --output Q.npy or --gguf OUT.gguf"},
      {with({"--format", "q4_k", "--gguf", d / "o.gguf", "--bits", "3"}), 2, "contradicts --format q4_k"},
      {with({"--format", "q3_k", "--gguf", d / "o.gguf", "--group-size", "32"}), 2, "the format fixes the grid"},
      {with({"--format", "q5_1", "--gguf", d / "o.gguf"}), 2, "--format"},
      {with({"--bits", "4", "--output", d / "Q.npy", "--gguf", d / "o.gguf"}), 2, "--gguf needs --format"},
      {with({"--output", d / "Q.npy"}), 2, "--bits B is required"},
  };
  for (const auto& c : cases) {
    const Run run = run_cli(d, c.args);
    INFO(run.err);
    CHECK(run.code == c.code);
    CHECK_THAT(run.err, Catch::Contains(c.message));
    CHECK(d.listing() == std::set<std::string>{"W.npy", "X.npy", "XQ.npy"});
  }
  // cols not a multiple of the block size is bad data, and leaves nothing.
  TempDir e;
  const Layer M(7, 4, 48, 100);
  write_layer<double>(e, M);
  const Run run = run_cli(e, {"--weights", e / "W.npy", "--inputs", e / "X.npy", "--method", "optq", "--format",
                              "q4_k", "--gguf", e / "o.gguf"});
  CHECK(run.code == 3);
  CHECK_THAT(run.err, Catch::Contains("48"));
  CHECK(e.listing() == std::set<std::string>{"W.npy", "X.npy", "XQ.npy"});
}

TEST_CASE("cli: --qronos-form sequential reaches QronosOptions", "[cli]") {
  TempDir d;
  const Layer L;
  write_layer<double>(d, L);
  for (const std::string form : {"ls", "sequential"}) {
    std::vector<std::string> args = base_args(d, "qronos");
    args.insert(args.end(), {"--qronos-form", form});
    const Run run = run_cli(d, args);
    REQUIRE(run.code == 0);
    pptq::QronosOptions qo;
    qo.form = form == "sequential" ? pptq::QronosForm::Sequential : pptq::QronosForm::LeastSquaresThenOptq;
    pptq::GridSpec grid;
    grid.bits = 4;
    const auto r = pptq::qronos(L.W, L.X, L.Xq, grid, qo);
    CHECK(pptq::io::read_npy_matrix<double>(d / "Q.npy") == r.dequantized);
    CHECK(read_json(d / "R.json")["qronos_form"] == pptq::to_string(qo.form));
  }
  std::vector<std::string> bad = base_args(d, "optq");
  bad.insert(bad.end(), {"--qronos-form", "sequential"});
  const Run run = run_cli(d, bad);
  CHECK(run.code == 2);
  CHECK_THAT(run.err, Catch::Contains("--qronos-form applies to qronos"));
}

// ------------------------------------------------------------------------------------------------
// Exit codes by exception type (tools/cli_common.hpp), in-process
// ------------------------------------------------------------------------------------------------

namespace {

int exit_code_of(std::exception_ptr e) { return pptq_tools::failure_of(std::move(e)).code; }

template <typename E>
int exit_code_of(const E& e) {
  return exit_code_of(std::make_exception_ptr(e));
}

/// The exit code the tools give for what f() throws (0 if it returns).
template <typename F>
int code_when(F&& f) {
  try {
    f();
  } catch (...) {
    return exit_code_of(std::current_exception());
  }
  return 0;
}

}  // namespace

TEST_CASE("cli: the exit code follows the exception's type, not its message", "[cli]") {
  CHECK(exit_code_of(pptq::UsageError("u")) == 2);
  CHECK(exit_code_of(pptq::DataError("d")) == 3);
  CHECK(exit_code_of(pptq::io::NpyError("npy: x.npy: bad magic")) == 3);
  CHECK(exit_code_of(pptq::NumericalError("n")) == 4);
  CHECK(exit_code_of(pptq::IoError("i")) == 1);
  CHECK(exit_code_of(std::bad_alloc()) == 1);
  CHECK(exit_code_of(std::runtime_error("r")) == 1);
  CHECK(exit_code_of(std::invalid_argument("a")) == 1);  // the tools map the library's at its boundary
  // A message that reads like another kind does not change the code.
  CHECK(exit_code_of(pptq::DataError("pptq: --bits must be 2..8")) == 3);
  CHECK(exit_code_of(pptq::NumericalError("invalid argument")) == 4);
  // Messages: a usage error points to --help; the others are printed as thrown.
  CHECK(pptq_tools::failure_of(std::make_exception_ptr(pptq::UsageError("--x is bad"))).message == "--x is bad (see --help)");
  CHECK(pptq_tools::failure_of(std::make_exception_ptr(pptq::DataError("f.npy: bad"))).message == "f.npy: bad");
  CHECK(pptq_tools::failure_of(std::make_exception_ptr(std::bad_alloc())).message == "out of memory");
  CHECK(pptq_tools::failure_of(std::make_exception_ptr(std::logic_error("bug"))).message == "internal error: bug");
}

TEST_CASE("cli: the library's rejection of input data is a data error, a numerical failure stays numerical", "[cli]") {
  using pptq_tools::on_input_data;
  // An argument check of the library (pptq::UsageError) on data the tool read: exit 3, not 2.
  const auto rejects = [] { return on_input_data("tensor 'w': ", []() -> int { throw pptq::UsageError("pptq: H is not symmetric"); }); };
  CHECK(code_when(rejects) == 3);
  CHECK_THROWS_WITH(rejects(), "tensor 'w': H is not symmetric");  // the library's prefix makes way for the context
  // A std::invalid_argument from code not yet on pptq's error types: the same.
  CHECK(code_when([] { return on_input_data("", []() -> int { throw std::invalid_argument("pptq: q4_K needs cols % 256"); }); }) == 3);
  // A numerical failure of the library on valid data passes through: exit 4, not 3.
  CHECK(code_when([] { return on_input_data("", []() -> int { throw pptq::NumericalError("constants: X^T X overflows"); }); }) == 4);
  CHECK(code_when([] { return on_input_data("", []() -> int { throw pptq::DataError("d"); }); }) == 3);
  CHECK(code_when([] { return on_input_data("", []() -> int { throw pptq::IoError("i"); }); }) == 1);
  CHECK(on_input_data("", [] { return 7; }) == 7);
}

TEST_CASE("cli: float16 weights and inputs are read as the float32 of the same values", "[cli]") {
  TempDir d;
  const Layer L;
  // The layer rounded to half precision, stored once as float16 and once as float32.
  auto halves = [](const MatrixXd& M) {
    pptq::io::NpyArray a;
    a.dtype = pptq::io::DType::f16;
    a.shape = {M.rows(), M.cols()};
    MatrixXf F(M.rows(), M.cols());
    for (Index i = 0; i < M.rows(); ++i)
      for (Index j = 0; j < M.cols(); ++j) {
        const std::uint16_t h = pptq::ggml::float_to_half(static_cast<float>(M(i, j)));
        a.bytes.push_back(static_cast<std::uint8_t>(h & 0xff));
        a.bytes.push_back(static_cast<std::uint8_t>(h >> 8));
        F(i, j) = pptq::ggml::half_to_float(h);
      }
    return std::make_pair(a, F);
  };
  const auto W = halves(L.W), X = halves(L.X);
  pptq::io::write_npy(d / "W16.npy", W.first);
  pptq::io::write_npy(d / "X16.npy", X.first);
  pptq::io::write_npy(d / "W32.npy", W.second);
  pptq::io::write_npy(d / "X32.npy", X.second);
  const Run a = run_cli(d, {"--weights", d / "W16.npy", "--inputs", d / "X16.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "Q16.npy", "--codes", d / "C16.npy"});
  const Run b = run_cli(d, {"--weights", d / "W32.npy", "--inputs", d / "X32.npy", "--method", "optq", "--bits", "4",
                            "--output", d / "Q32.npy", "--codes", d / "C32.npy"});
  INFO(a.err << b.err);
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  CHECK(pptq::io::read_npy(d / "Q16.npy").dtype == pptq::io::DType::f32);  // float16 W is quantized in float
  CHECK(slurp(d / "Q16.npy") == slurp(d / "Q32.npy"));
  CHECK(slurp(d / "C16.npy") == slurp(d / "C32.npy"));
}

TEST_CASE("cli: --damp auto judges every damp on the held-out fifth, then quantizes on all samples", "[cli][damp_choice]") {
  TempDir d;
  const Layer L(7, 12, 256, 600);
  write_layer<float>(d, L);
  const MatrixXf W = L.W.cast<float>();
  std::vector<Index> cal_rows, test_rows;
  for (Index i = 0; i < L.X.rows(); ++i) (i % 5 == 4 ? test_rows : cal_rows).push_back(i);
  const MatrixXd Xc = L.X(cal_rows, Eigen::all), Xt = L.X(test_rows, Eigen::all);
  // The Grams as the tool forms them (pptq::Gram: its order of summation), so that no rounding flips.
  pptq::Gram<double> gc(256), g(256);
  gc.add(Xc);
  g.add(L.X);
  const MatrixXd Hc = gc.matrix(), H = g.matrix();
  for (const bool format : {false, true}) {
    INFO((format ? "q4_k" : "4-bit grid"));
    std::vector<std::string> args = {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "optq", "--damp",
                                     "auto", "--output", d / "Q.npy", "--report", d / "R.json"};
    if (format) args.insert(args.end(), {"--format", "q4_k"});
    else args.insert(args.end(), {"--bits", "4"});
    const Run run = run_cli(d, args);
    INFO("stderr: " << run.err);
    REQUIRE(run.code == 0);
    const json j = read_json(d / "R.json");
    const json& a = j["damp_auto"];
    REQUIRE(a["candidates"].size() == pptq::default_damps().size());
    double best = std::numeric_limits<double>::infinity(), chosen = 0;
    for (const auto& c : a["candidates"]) {
      const double damp = c["damp"].get<double>();
      INFO("damp " << damp);
      // The candidate in-process on the calibration part (Hc up to the order of summation: 1e-6).
      MatrixXd Q;
      if (format) {
        pptq::ggml::QuantizeOptions o;
        o.optq.damp = damp;
        Q = pptq::ggml::quantize_optq(W, Hc, pptq::ggml::Type::Q4_K, o).dequantized.cast<double>();
      } else {
        pptq::OptqOptions o;
        o.damp = damp;
        pptq::GridSpec g;
        g.bits = 4;
        Q = pptq::optq(W, Hc, g, o).dequantized.cast<double>();
      }
      CHECK(rel(c["heldout_error"].get<double>(), (Xt * (W.cast<double>() - Q).transpose()).norm()) < 1e-6);
      if (c["heldout_error"].get<double>() < best) best = c["heldout_error"], chosen = damp;
    }
    CHECK(a["chosen_damp"] == chosen);
    CHECK(j["damp"] == chosen);
    CHECK(rel(j["lambda"].get<double>(), chosen * H.diagonal().mean()) < 1e-9);  // all samples
  }
  expect_failure(d, {"--weights", d / "W.npy", "--hessian", d / "H.npy", "--method", "optq", "--bits", "4", "--damp",
                     "auto", "--output", d / "Q2.npy"},
                 2, "--damp auto needs --inputs");
  expect_failure(d, {"--weights", d / "W.npy", "--inputs", d / "X.npy", "--method", "rtn", "--bits", "4", "--damp",
                     "auto", "--output", d / "Q2.npy"},
                 2, "--damp auto applies to optq");
}
