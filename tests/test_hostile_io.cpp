// Hostile files against pptq's IO layer in-process (include/pptq/io/): inputs that are not regular files,
// headers that lie about sizes, GGUF shapes beyond int64 and arrays that would blow up in memory, names
// with terminal escapes, and the outputs' temporaries, links, identities and signals. The GGUF fuzz
// corpus (tests/data/gguf_corpus) is replayed through the fuzzer's own body.
#include <catch2/catch.hpp>

#include "test_paths.hpp"

#include "fuzz_gguf_body.hpp"
#include "test_support.hpp"

#include <pptq/io/atomic_file.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/input_file.hpp>
#include <pptq/io/npy.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <malloc.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace gguf = pptq::gguf;
using Bytes = std::vector<std::uint8_t>;
using Dir = test::TempDir;

void spit(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

void put64(Bytes& b, std::size_t at, std::uint64_t v) {
  for (int k = 0; k < 8; ++k) b[at + static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(v >> (8 * k));
}

/// Bytes the allocator holds (glibc's mallinfo2: heap in use plus mmapped blocks); 0 where it reports none.
std::size_t heap_in_use() {
  const struct mallinfo2 m = ::mallinfo2();
  return m.uordblks + m.hblkhd;
}

/// Runs f in a child process and returns its wait status (f ends the child itself, or it exits 0).
template <typename F>
int in_child(F&& f) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(60);
    f();
    ::_exit(0);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return st;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Inputs
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile io: npy and GGUF inputs are read from regular files only", "[hostile][io]") {
  Dir d("pptq_hostile_io");
  REQUIRE(::mkfifo((d / "fifo").c_str(), 0644) == 0);  // read_npy on it would block forever
  fs::create_directory(d / "dir");
  for (const std::string& p : {d / "fifo", d / "dir", std::string("/dev/zero"), std::string("/dev/null")}) {
    INFO(p);
    CHECK_THROWS_AS(pptq::io::read_npy(p), pptq::DataError);
    CHECK_THROWS_WITH(pptq::io::read_npy(p), Catch::StartsWith("npy: " + p + " is ") && Catch::Contains("not a regular file"));
    CHECK_THROWS_AS(pptq::io::read_npy_header(p), pptq::DataError);
    CHECK_THROWS_AS(gguf::read(p), pptq::DataError);
    CHECK_THROWS_WITH(gguf::read(p), Catch::StartsWith("gguf: " + p + " is ") && Catch::Contains("not a regular file"));
  }
  CHECK_THROWS_AS(pptq::io::read_npy(d / "missing.npy"), pptq::IoError);
  CHECK_THROWS_AS(gguf::read(d / "missing.gguf"), pptq::IoError);
}

TEST_CASE("hostile io: an npy header is checked against the file's size before the data is read", "[hostile][io]") {
  Dir d("pptq_hostile_io");
  const Bytes good = pptq::io::serialize_npy(Eigen::MatrixXf::Ones(3, 5).eval());
  spit(d / "good.npy", good);
  const pptq::io::NpyArray h = pptq::io::read_npy_header(d / "good.npy");
  CHECK(h.shape == std::vector<std::int64_t>{3, 5});
  CHECK(h.dtype == pptq::io::DType::f32);
  CHECK(h.bytes.empty());
  // A header that claims 10^12 elements in a file of a few bytes: refused by the header's check alone.
  Bytes lie = pptq::io::serialize_npy(Eigen::MatrixXf::Ones(1, 1).eval());
  const std::string from = "(1, 1)", to = "(1000000, 1000000)";
  std::string text(lie.begin(), lie.end());
  text.replace(text.find(from), from.size(), to);
  text.erase(text.rfind('\n') - (to.size() - from.size()), to.size() - from.size());  // padding: same length
  spit(d / "lie.npy", Bytes(text.begin(), text.end()));
  CHECK_THROWS_WITH(pptq::io::read_npy_header(d / "lie.npy"), Catch::Contains("truncated data"));
  CHECK_THROWS_WITH(pptq::io::read_npy(d / "lie.npy"), Catch::Contains("truncated data"));
  spit(d / "trailing.npy", [&] { Bytes b = good; b.push_back(0); return b; }());
  CHECK_THROWS_WITH(pptq::io::read_npy_header(d / "trailing.npy"), Catch::Contains("trailing data"));
  // Files shorter than a preamble.
  spit(d / "short.npy", Bytes{0x93, 'N', 'U'});
  CHECK_THROWS_AS(pptq::io::read_npy(d / "short.npy"), pptq::DataError);
  spit(d / "empty.npy", Bytes{});
  CHECK_THROWS_AS(pptq::io::read_npy_header(d / "empty.npy"), pptq::DataError);
}

// ------------------------------------------------------------------------------------------------
// GGUF
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile io: a GGUF ne of 2^63 or more is refused even in an empty tensor", "[hostile][io][gguf]") {
  gguf::File one;
  one.add_tensor("w", {32, 2}, pptq::ggml::Type::F32, Bytes(32 * 2 * 4));
  const Bytes good = gguf::serialize(one);
  const std::size_t ne_at = 24 + 8 + 1 + 4;  // header, name "w", n_dims
  for (std::uint64_t big : {std::uint64_t(1) << 63, ~std::uint64_t(0)}) {
    Bytes b = good;
    put64(b, ne_at, 0);        // ne[0] = 0: the tensor holds no bytes ...
    put64(b, ne_at + 8, big);  // ... and ne[1] is negative as ggml's int64
    INFO("ne[1] = " << big);
    CHECK_THROWS_AS(gguf::parse(b.data(), b.size()), pptq::DataError);
    CHECK_THROWS_WITH(gguf::parse(b.data(), b.size()), Catch::Contains("ne[1]") && Catch::Contains("int64"));
  }
  CHECK_THROWS_AS(gguf::File().add_tensor("x", {0, std::uint64_t(1) << 63}, pptq::ggml::Type::F32, {}), pptq::UsageError);
}

TEST_CASE("hostile io: a GGUF array costs memory in proportion to its bytes", "[hostile][io][gguf]") {
  // One u8 array of 20M elements: 20 MB on disk. As a Value per element it took over a gigabyte.
  constexpr std::size_t n = 20'000'000;
  gguf::File f;
  f.set("big", gguf::Value::array_of(std::vector<std::uint8_t>(n, 1)));
  const Bytes b = gguf::serialize(f);
  f = gguf::File();
  const std::size_t before = heap_in_use();
  const gguf::File r = gguf::parse(b.data(), b.size());
  const std::size_t after = heap_in_use();
  CHECK(r.at("big").array_size() == n);
  CHECK(r.at("big").item(n - 1) == gguf::Value(std::uint8_t(1)));
  CHECK(after - std::min(after, before) < 3 * n);  // about n; far from ~48 n (0 where mallinfo2 says nothing)
  // String arrays too: 2M empty strings (16 MB on disk) stay within a few bytes each.
  gguf::File s;
  s.set("strs", gguf::Value::array_of(std::vector<std::string>(2'000'000)));
  const Bytes sb = gguf::serialize(s);
  s = gguf::File();
  const std::size_t sbefore = heap_in_use();
  const gguf::File sr = gguf::parse(sb.data(), sb.size());
  CHECK(sr.at("strs").array_size() == 2'000'000);
  CHECK(heap_in_use() - std::min(heap_in_use(), sbefore) < 2 * sb.size());
  CHECK(gguf::serialize(sr) == sb);
}

TEST_CASE("hostile io: GGUF arrays round-trip and compare as before", "[hostile][io][gguf]") {
  gguf::File f;
  f.set("a.f32", gguf::Value::array_of(std::vector<float>{1.5f, -0.0f, std::numeric_limits<float>::quiet_NaN()}));
  f.set("a.str", gguf::Value::array_of(std::vector<std::string>{"x", "", "\xce\xb3"}));
  f.set("a.bool", gguf::Value::array(gguf::ValueType::BOOL, {gguf::Value(true), gguf::Value(false)}));
  const Bytes b = gguf::serialize(f);
  const gguf::File r = gguf::parse(b.data(), b.size());
  CHECK(r == f);
  CHECK(r.at("a.str").to_vector<std::string>() == std::vector<std::string>{"x", "", "\xce\xb3"});
  CHECK(r.at("a.bool").arr() == std::vector<gguf::Value>{gguf::Value(true), gguf::Value(false)});
  CHECK(gguf::to_string(r.at("a.str")) == "[\"x\", \"\", \"\xce\xb3\"]");
  CHECK(gguf::Value::array_of(std::vector<float>{0.0f}) != gguf::Value::array_of(std::vector<float>{-0.0f}));
  CHECK_THROWS_AS(r.at("a.f32").item(3), pptq::UsageError);
  CHECK_THROWS_AS(gguf::Value(1).array_size(), pptq::DataError);
}

TEST_CASE("hostile io: names from a GGUF are escaped in its messages", "[hostile][io][gguf]") {
  // One key holding a clear-screen escape and a line break, written twice: the duplicate is refused, and the
  // message names the key escaped.
  const std::string key = "\x1b[2Jred\n";
  gguf::File g;
  g.set(key, gguf::Value(1));
  const Bytes once = gguf::serialize(g);
  const std::size_t entry = 8 + key.size() + 4 + 4;  // key length, key, type, i32
  Bytes dup(once.begin(), once.begin() + 24 + static_cast<std::ptrdiff_t>(entry));
  dup.insert(dup.end(), once.begin() + 24, once.begin() + 24 + static_cast<std::ptrdiff_t>(entry));
  put64(dup, 16, 2);  // two metadata entries
  try {
    gguf::parse(dup.data(), dup.size());
    FAIL("a duplicate key parsed");
  } catch (const pptq::DataError& e) {
    const std::string m = e.what();
    CHECK(m.find("duplicate key") != std::string::npos);
    CHECK(m.find('\x1b') == std::string::npos);
    CHECK(m.find('\n') == std::string::npos);
    CHECK(m.find("\\x1b[2Jred\\n") != std::string::npos);
  }
}

TEST_CASE("hostile io: every GGUF corpus file parses or throws DataError, and what parses round-trips", "[hostile][io][gguf][fuzz]") {
  const fs::path corpus = fs::path(test::data_dir()) / "gguf_corpus";
  REQUIRE(fs::is_directory(corpus));
  int files = 0, parsed = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    INFO(e.path().string());
    const std::string s = test::slurp(e.path().string());
    parsed += pptq_fuzz::fuzz_gguf_one(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()) ? 1 : 0;
    ++files;
  }
  CHECK(files >= 15);
  CHECK(parsed >= 3);          // the valid seeds
  CHECK(files - parsed >= 10);  // one per rejection path
}

// ------------------------------------------------------------------------------------------------
// Outputs
// ------------------------------------------------------------------------------------------------

TEST_CASE("hostile io: temporaries are named .NAME.pptq-tmp-PID-RANDOM beside the destination", "[hostile][io][atomic]") {
  Dir d("pptq_hostile_io");
  pptq::io::AtomicFile f(d / "out.bin");
  const std::string base = fs::path(f.temp_path()).filename().string();
  CHECK(fs::path(f.temp_path()).parent_path() == fs::path(d.path));
  CHECK(base.rfind(".out.bin.pptq-tmp-" + std::to_string(::getpid()) + "-", 0) == 0);
}

TEST_CASE("hostile io: AtomicFile writes through symbolic links and never replaces a non-file", "[hostile][io][atomic]") {
  Dir d("pptq_hostile_io");
  fs::create_directory(d / "t");
  std::ofstream(d / "t/target") << "old";
  fs::create_symlink("t/target", d / "link");
  fs::create_symlink("link", d / "link2");  // a chain of links
  const std::string data = "new";
  pptq::io::write_file_atomic(d / "link2", data.data(), data.size());
  CHECK(fs::is_symlink(d / "link2"));
  CHECK(fs::is_symlink(d / "link"));
  CHECK(test::slurp(d / "t/target") == "new");
  CHECK(d.names("t") == std::set<std::string>{"target"});
  // A dangling link: its target is created.
  fs::create_symlink("t/fresh", d / "dangling");
  pptq::io::write_file_atomic(d / "dangling", data.data(), data.size());
  CHECK(fs::is_symlink(d / "dangling"));
  CHECK(test::slurp(d / "t/fresh") == "new");
  // A FIFO, a directory, a link to a directory: refused before a temporary exists.
  REQUIRE(::mkfifo((d / "fifo").c_str(), 0644) == 0);
  fs::create_symlink("t", d / "dirlink");
  for (const std::string& p : {d / "fifo", d / "t", d / "dirlink"}) {
    INFO(p);
    CHECK_THROWS_AS(pptq::io::AtomicFile(p), pptq::IoError);
    CHECK_THROWS_WITH(pptq::io::AtomicFile(p), Catch::Contains("refusing to replace"));
  }
  struct stat st {};
  REQUIRE(::stat((d / "fifo").c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
}

TEST_CASE("hostile io: file_identity tells one file under two paths", "[hostile][io][atomic]") {
  Dir d("pptq_hostile_io");
  fs::create_directory(d / "o");
  using pptq::io::file_identity;
  CHECK(file_identity(d / "o/new") == file_identity(d / "o/./new"));
  CHECK(file_identity(d / "o/new") == file_identity(d / "o/../o/new"));
  CHECK(!(file_identity(d / "o/new") == file_identity(d / "o/other")));
  std::ofstream(d / "o/f") << "x";
  fs::create_symlink("f", d / "o/s");
  fs::create_hard_link(d / "o/f", d / "o/h");
  CHECK(file_identity(d / "o/f") == file_identity(d / "o/s"));
  CHECK(file_identity(d / "o/f") == file_identity(d / "o/h"));
  fs::create_symlink("new", d / "o/dangling");
  CHECK(file_identity(d / "o/dangling") == file_identity(d / "o/new"));
}

TEST_CASE("hostile io: SIGTERM removes the live temporaries and still ends the process", "[hostile][io][atomic][kill]") {
  Dir d("pptq_hostile_io");
  std::ofstream(d / "a") << "old";
  const int st = in_child([&] {
    pptq::io::remove_temporaries_on_signals();
    pptq::io::AtomicFile a(d / "a"), b(d / "b");
    a.write("new", 3);
    b.write("new", 3);
    ::raise(SIGTERM);
    ::_exit(7);  // not reached: the handler re-raises with the default action
  });
  CHECK(WIFSIGNALED(st));
  CHECK(WTERMSIG(st) == SIGTERM);
  CHECK(d.names() == std::set<std::string>{"a"});
  CHECK(test::slurp(d / "a") == "old");
}

TEST_CASE("hostile io: OutputGroup defers SIGTERM during its renames: all new, then the signal", "[hostile][io][atomic][kill]") {
  Dir d("pptq_hostile_io");
  std::ofstream(d / "a") << "old";
  std::ofstream(d / "b") << "old";
  const int st = in_child([&] {
    pptq::io::remove_temporaries_on_signals();
    pptq::io::OutputGroup g;
    g.add(d / "a").write("new", 3);
    g.add(d / "b").write("new", 3);
    g.commit([](std::size_t) { ::raise(SIGTERM); });
    ::_exit(7);  // not reached: the deferred signal ends the process after the renames
  });
  CHECK(WIFSIGNALED(st));
  CHECK(WTERMSIG(st) == SIGTERM);
  CHECK(test::slurp(d / "a") == "new");
  CHECK(test::slurp(d / "b") == "new");
  CHECK(d.names() == std::set<std::string>{"a", "b"});
}

TEST_CASE("hostile io: a signal the process ignores stays ignored", "[hostile][io][atomic]") {
  const int st = in_child([] {
    ::signal(SIGHUP, SIG_IGN);
    pptq::io::remove_temporaries_on_signals();
    ::raise(SIGHUP);
    ::_exit(0);
  });
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
}
