// What the hostile-input tests share: a runner that starts a tool with fork/execve (extra environment
// variables, the signal that ended it, a hard time limit so that a hang fails instead of blocking the
// suite), small layers and models written to a test directory, and the listing of a directory.
#pragma once

#include "test_support.hpp"

#include <pptq/ggml/blocks.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>

#include <Eigen/Core>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace hostile {

using pptq::Index;

/// How a run ended: its exit code, or the signal that ended it (code −1 then), and what it printed.
struct Outcome {
  int code = -1;
  int signal = 0;
  std::string out, err;
  /// The lines of stderr.
  std::vector<std::string> err_lines() const {
    std::vector<std::string> v;
    std::istringstream is(err);
    for (std::string l; std::getline(is, l);) v.push_back(l);
    return v;
  }
};

/// execve's argument and environment vectors (`env`, "NAME=value", added before this process's own),
/// built before a fork: the child may only make async-signal-safe calls.
struct ExecArgs {
  std::vector<std::string> argv_s, env_s;
  std::vector<char*> argv, envp;
  ExecArgs(const std::string& program, const std::vector<std::string>& args, const std::vector<std::string>& env)
      : argv_s{program}, env_s(env) {
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    for (char** e = environ; *e; ++e) env_s.emplace_back(*e);
    for (auto& a : argv_s) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (auto& e : env_s) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
};

/// Runs `program args...` with stdin from /dev/null, stdout and stderr captured in dir/run.stdout and
/// dir/run.stderr, `env` ("NAME=value") added to the environment. A run that takes more than `limit_s`
/// seconds is ended by SIGALRM (alarm() survives execve), so a hang fails the test instead of blocking it.
inline Outcome run(const std::string& program, const std::vector<std::string>& args, const std::string& dir,
                   const std::vector<std::string>& env = {}, unsigned limit_s = 120) {
  const std::string out_path = dir + "/run.stdout", err_path = dir + "/run.stderr";
  const ExecArgs x(program, args, env);
  const pid_t pid = ::fork();
  if (pid == 0) {  // only async-signal-safe calls from here on
    const int in = ::open("/dev/null", O_RDONLY);
    const int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || o < 0 || e < 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(o, 1);
    ::dup2(e, 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::alarm(limit_s);
    ::execve(program.c_str(), x.argv.data(), x.envp.data());
    ::_exit(127);
  }
  Outcome r;
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st)) r.code = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) r.signal = WTERMSIG(st);
  r.out = test::slurp(out_path);
  r.err = test::slurp(err_path);
  return r;
}

/// A tool started in the background, for signals at points the test observes (no sleeping): stdout goes to
/// dir/run.stdout, stderr to a pipe the test reads line by line, so "after the k-th progress line" is an
/// event; `exited()` asks without reaping, so the pid cannot be reused before `signal()`. `finish()` drains
/// stderr and reaps. The same hard time limit as run().
class Child {
 public:
  Child(const std::string& program, const std::vector<std::string>& args, const std::string& dir,
        const std::vector<std::string>& env = {}, unsigned limit_s = 120) {
    const ExecArgs x(program, args, env);
    const std::string out_path = dir + "/run.stdout";
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    // Signals stay blocked from the fork until the child has reset the test runner's handlers (Catch's
    // SIGINT and SIGTERM handlers must never run in the forked copy of the test process).
    sigset_t all, old;
    sigfillset(&all);
    ::sigprocmask(SIG_SETMASK, &all, &old);
    pid_ = ::fork();
    if (pid_ == 0) {  // only async-signal-safe calls from here on
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::sigaction(sig, &dfl, nullptr);
      const int in = ::open("/dev/null", O_RDONLY);
      const int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || o < 0) ::_exit(126);
      ::dup2(in, 0);
      ::dup2(o, 1);
      ::dup2(fds[1], 2);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::alarm(limit_s);
      ::execve(program.c_str(), x.argv.data(), x.envp.data());
      ::_exit(127);
    }
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    ::close(fds[1]);
    err_fd_ = fds[0];
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      finish();
    }
  }

  /// Blocks until stderr has shown `n` lines in all, or ended (then false).
  bool wait_lines(int n) {
    while (lines_ < n) {
      char buf[512];
      const ssize_t k = ::read(err_fd_, buf, sizeof buf);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      for (ssize_t i = 0; i < k; ++i) lines_ += buf[i] == '\n' ? 1 : 0;
      err_.append(buf, static_cast<std::size_t>(k));
    }
    return true;
  }

  /// Whether the process has ended (it is not reaped: its pid stays its own until finish()).
  bool exited() const {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid_;
  }

  /// Polls `event` (yielding the processor between polls, at most `polls` times) until it holds or the
  /// process has ended. Returns whether it held.
  template <typename Event>
  bool poll_until(Event&& event, long polls = 200000) {
    for (long i = 0; i < polls; ++i) {
      if (event()) return true;
      if (exited()) return event();
      ::sched_yield();
    }
    return false;
  }

  void signal(int s) const { ::kill(pid_, s); }

  /// Reads stderr to its end and reaps the process.
  Outcome finish() {
    Outcome r;
    if (pid_ <= 0) return r;
    wait_lines(std::numeric_limits<int>::max());
    ::close(err_fd_);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    if (WIFEXITED(st)) r.code = WEXITSTATUS(st);
    if (WIFSIGNALED(st)) r.signal = WTERMSIG(st);
    r.err = err_;
    return r;
  }

 private:
  pid_t pid_ = -1;
  int err_fd_ = -1;
  int lines_ = 0;
  std::string err_;
};

/// The names in `dir` other than the runner's own capture files.
inline std::set<std::string> listing(const test::TempDir& d, const std::string& sub = "") {
  std::set<std::string> s = d.names(sub);
  s.erase("run.stdout");
  s.erase("run.stderr");
  return s;
}

/// A small layer: W rows × cols (float32), X samples × cols (float64), seeded.
struct Layer {
  Eigen::MatrixXf W;
  Eigen::MatrixXd X;
  explicit Layer(Index rows = 8, Index cols = 64, Index samples = 96, std::uint64_t seed = 5) {
    std::mt19937_64 rng(seed);
    W = test::gaussian(rows, cols, rng, 0.5).cast<float>();
    X = test::structured_inputs(samples, cols, rng);
  }
  void write(const test::TempDir& d) const {
    pptq::io::write_npy(d / "W.npy", W);
    pptq::io::write_npy(d / "X.npy", X);
  }
};

/// The f32 bytes of W's rows (a GGUF tensor with ne = [cols, rows]).
inline std::vector<std::uint8_t> f32_rows(const Eigen::MatrixXf& W) {
  std::vector<std::uint8_t> b;
  for (Index i = 0; i < W.rows(); ++i)
    for (Index j = 0; j < W.cols(); ++j) {
      const std::uint32_t u = pptq::ggml::float_bits(W(i, j));
      for (int k = 0; k < 4; ++k) b.push_back(static_cast<std::uint8_t>(u >> (8 * k)));
    }
  return b;
}

/// A GGUF model with one f32 tensor `name` holding W.
inline pptq::gguf::File one_tensor_model(const std::string& name, const Eigen::MatrixXf& W) {
  pptq::gguf::File f;
  f.set("general.architecture", pptq::gguf::Value("llama"));
  f.add_tensor(name, {static_cast<std::uint64_t>(W.cols()), static_cast<std::uint64_t>(W.rows())},
               pptq::ggml::Type::F32, f32_rows(W));
  return f;
}

}  // namespace hostile
