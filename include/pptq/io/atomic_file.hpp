#pragma once
// Atomic file replacement: data goes to a temporary file in the destination's directory and is renamed over
// the destination only on commit(), so a reader never sees a half-written file and a crash or an exception
// leaves any previous file untouched. Every failure is a pptq::IoError whose message starts with
// "AtomicFile: " and names the destination. Depends on the C++ standard library, POSIX and pptq/error.hpp.

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>

#include "../error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

namespace pptq {
namespace io {

namespace detail {

// std::strerror may use a shared static buffer; the error_code message is the thread-safe way to get it.
inline std::string errno_message(int err) { return std::generic_category().message(err); }

// Directory part of `path` for the temporary file: it must live on the same filesystem for rename() to be
// atomic, so it goes next to the destination.
inline std::string dir_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

inline std::string base_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// A fresh pseudo-random suffix per call, without any global state: random_device where it works, mixed
// with the clock, the pid and a caller-provided address so two objects in one process differ even if
// random_device is deterministic.
inline std::uint64_t temp_suffix(const void* salt, unsigned attempt) {
  std::uint64_t x = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  x ^= static_cast<std::uint64_t>(::getpid()) << 32;
  x ^= static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(salt));
  x ^= static_cast<std::uint64_t>(attempt) * 0x9E3779B97F4A7C15ull;
  try {
    std::random_device rd;
    x ^= (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  } catch (...) {
    // No entropy source: the clock/pid/address mix is still unique enough, and O_EXCL catches collisions.
  }
  // splitmix64 finalizer so nearby inputs give unrelated names.
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace detail

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path) : path_(path) {
    const std::string base = detail::base_of(path);
    if (base.empty() || base == "." || base == "..")
      throw IoError("AtomicFile: '" + path + "' does not name a file");
    // Hidden, recognisably temporary name; the base is shortened so the temp name stays under NAME_MAX
    // even when the destination's own name is close to it.
    const std::string stem = "." + base.substr(0, 200) + ".tmp-";
    const std::string dir = detail::dir_of(path);
    static const char hex[] = "0123456789abcdef";
    int last_err = 0;
    for (unsigned attempt = 0; attempt < 64; ++attempt) {
      std::uint64_t r = detail::temp_suffix(this, attempt);
      std::string suffix(16, '0');
      for (int i = 15; i >= 0; --i, r >>= 4) suffix[static_cast<std::size_t>(i)] = hex[r & 15u];
      std::string candidate = (dir == "/" ? std::string("/") : dir + "/") + stem + suffix;
      // 0666 rather than mkstemp's 0600 so the final file gets the usual umask-derived permissions.
      const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd >= 0) {
        fd_ = fd;
        temp_ = std::move(candidate);
        return;
      }
      last_err = errno;
      if (last_err == EINTR || last_err == EEXIST) continue;
      break;
    }
    throw IoError("AtomicFile: cannot create a temporary file for '" + path + "' in '" + dir +
                             "': " + detail::errno_message(last_err));
  }

  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t n) {
    if (fd_ < 0) throw IoError("AtomicFile: write to '" + path_ + "' after commit or failure");
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ::ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IoError("AtomicFile: write to '" + temp_ + "' (for '" + path_ +
                                 "') failed: " + detail::errno_message(errno));
      }
      if (w == 0)
        throw IoError("AtomicFile: short write to '" + temp_ + "' (for '" + path_ + "')");
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  void commit() {
    if (fd_ < 0) throw IoError("AtomicFile: commit of '" + path_ + "' after commit or failure");
    // fsync before rename: otherwise a crash right after the rename can leave an empty or partial file
    // under the final name on filesystems that reorder metadata and data writes.
    int rc;
    do rc = ::fsync(fd_); while (rc != 0 && errno == EINTR);
    if (rc != 0) fail_commit("fsync", errno);
    // close() is not retried on EINTR: on Linux the descriptor is released regardless.
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0 && errno != EINTR) fail_commit("close", errno);
    if (::rename(temp_.c_str(), path_.c_str()) != 0) fail_commit("rename", errno);
    committed_ = true;
    // Persist the directory entry too. Best effort: some filesystems refuse fsync on directories, and the
    // data itself is already safe, so a failure here is not worth an exception.
    const int dfd = ::open(detail::dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      (void)::close(dfd);
    }
  }

  ~AtomicFile() {
    if (fd_ >= 0) (void)::close(fd_);
    if (!committed_ && !removed_ && !temp_.empty()) (void)::unlink(temp_.c_str());
  }

  const std::string& temp_path() const { return temp_; }
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail_commit(const char* step, int err) {
    if (fd_ >= 0) {
      (void)::close(fd_);
      fd_ = -1;
    }
    (void)::unlink(temp_.c_str());
    removed_ = true;
    throw IoError(std::string("AtomicFile: ") + step + " failed while committing '" + path_ +
                             "' (temporary '" + temp_ + "'): " + detail::errno_message(err));
  }

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
  bool removed_ = false;
};

// Convenience: the whole buffer in one atomic replacement.
inline void write_file_atomic(const std::string& path, const void* data, std::size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace io
}  // namespace pptq
