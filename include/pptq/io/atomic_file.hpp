#pragma once
// Atomic file replacement: data goes to a temporary file beside the destination and is renamed over the
// destination only on commit(), so a reader never sees a half-written file and a crash or an exception
// leaves any previous file untouched.
//
// - The temporary is named recognisably, ".NAME.pptq-tmp-PID-RANDOM", so that one left behind by a process
//   killed with SIGKILL (the one way no code runs) can be told from the user's files and removed.
// - A destination that is a symbolic link is written through: the link is resolved (a dangling one too), the
//   temporary goes beside the link's final target, the target is replaced and the link is kept.
// - A destination that exists and is not a regular file (a directory, a device such as /dev/null, a FIFO) is
//   refused: renaming over it would replace the device node or fail after all the work.
// - Every live temporary is in a process-wide registry; remove_temporaries_on_signals() installs handlers
//   for SIGINT, SIGTERM and SIGHUP that unlink them (async-signal-safe calls only) and re-raise the signal.
// - OutputGroup commits several files together: every temporary is written first, then they are renamed one
//   after another with the handlers' signals deferred, so that SIGINT/SIGTERM/SIGHUP leave the outputs all
//   old or all new. What remains: SIGKILL, or a power loss, between two renames leaves the earlier outputs
//   new and the later ones old (with their temporaries, named as above, beside them). POSIX offers no
//   rename of several files at once.
//
// Every failure is a pptq::IoError whose message starts with "AtomicFile: " and names the destination.
// Depends on the C++ standard library, POSIX and pptq/error.hpp.

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "../error.hpp"

#include <fcntl.h>
#include <limits.h>
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

// ---------------------------------------------------------------------------------------------------------
// The registry of live temporaries, read by the signal handler. Fixed storage (no allocation, no locks):
// a slot's state goes free → claimed (path being copied) → live, and back to free; the handler unlinks the
// live ones only.

constexpr int kMaxTemps = 64;
constexpr std::size_t kMaxTempPath = PATH_MAX;
enum : int { kSlotFree = 0, kSlotClaimed = 1, kSlotLive = 2 };

struct TempRegistry {
  std::atomic<int> state[kMaxTemps];
  char path[kMaxTemps][kMaxTempPath];
  std::atomic<int> committing;     // > 0 while an OutputGroup renames: the handler defers the signal
  std::atomic<int> deferred;       // the signal deferred meanwhile (0: none)
};
inline TempRegistry g_temps{};  // static storage: zero-initialized

/// Records a live temporary; returns its slot, or -1 when the registry is full or the path too long (the
/// file is then not removed on a signal, as before the registry existed).
inline int register_temp(const std::string& p) {
  if (p.size() + 1 > kMaxTempPath) return -1;
  for (int i = 0; i < kMaxTemps; ++i) {
    int expect = kSlotFree;
    if (g_temps.state[i].compare_exchange_strong(expect, kSlotClaimed)) {
      std::memcpy(g_temps.path[i], p.c_str(), p.size() + 1);
      g_temps.state[i].store(kSlotLive);
      return i;
    }
  }
  return -1;
}

inline void unregister_temp(int slot) {
  if (slot >= 0) g_temps.state[slot].store(kSlotFree);
}

/// Unlinks every live temporary: async-signal-safe (atomics on lock-free ints, unlink).
inline void unlink_live_temps() noexcept {
  for (int i = 0; i < kMaxTemps; ++i)
    if (g_temps.state[i].load() == kSlotLive) (void)::unlink(g_temps.path[i]);
}

constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};

/// Ends the process by `sig` with its default action (the exit status then says which signal it was).
inline void die_by(int sig) noexcept {
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  (void)::sigaction(sig, &sa, nullptr);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  (void)::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  (void)::raise(sig);
}

inline void pptq_on_cleanup_signal(int sig) {
  if (g_temps.committing.load() > 0) {  // an OutputGroup is renaming: it re-raises when done
    g_temps.deferred.store(sig);
    return;
  }
  unlink_live_temps();
  die_by(sig);
}

// ---------------------------------------------------------------------------------------------------------
// Destinations

/// The file a write to `path` lands in: `path` itself, or, when it is a symbolic link, the link's final
/// target (followed through at most 40 links, like the kernel; a dangling link gives its missing target).
inline std::string resolve_destination(const std::string& path) {
  std::string p = path;
  for (int hop = 0; hop < 40; ++hop) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::vector<char> buf(static_cast<std::size_t>(st.st_size > 0 ? st.st_size : PATH_MAX) + 1);
    const ::ssize_t n = ::readlink(p.c_str(), buf.data(), buf.size());
    if (n < 0 || static_cast<std::size_t>(n) >= buf.size()) return p;  // open() reports what is wrong
    const std::string target(buf.data(), static_cast<std::size_t>(n));
    p = (target.front() == '/' || p.find('/') == std::string::npos) ? target : dir_of(p) + "/" + target;
  }
  return p;
}

/// Throws IoError when `target` exists and is not a regular file.
inline void require_replaceable(const std::string& path, const std::string& target) {
  struct stat st {};
  if (::stat(target.c_str(), &st) != 0 || S_ISREG(st.st_mode)) return;
  const char* kind = S_ISDIR(st.st_mode) ? "a directory" : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                     : S_ISFIFO(st.st_mode) ? "a FIFO" : "not a regular file";
  throw IoError("AtomicFile: '" + path + "' is " + kind + ": refusing to replace it with a file");
}

}  // namespace detail

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every live temporary of AtomicFile and then
/// end the process by the same signal. A signal the process ignores (e.g. SIGHUP under nohup) stays ignored.
/// For programs (the tools call it first thing); a library never installs handlers by itself.
inline void remove_temporaries_on_signals() {
  for (int sig : detail::kCleanupSignals) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    struct sigaction sa {};
    sa.sa_handler = detail::pptq_on_cleanup_signal;
    sigemptyset(&sa.sa_mask);
    for (int s : detail::kCleanupSignals) sigaddset(&sa.sa_mask, s);
    (void)::sigaction(sig, &sa, nullptr);
  }
}

/// Where `path`'s file is, for telling whether two paths name the same output: the (device, inode) of the
/// existing file after symbolic links, or, for a file yet to be created, of its directory plus its name.
struct FileIdentity {
  std::uint64_t dev = 0, ino = 0;
  std::string name;  ///< empty for an existing file
  friend bool operator==(const FileIdentity& a, const FileIdentity& b) {
    return a.dev == b.dev && a.ino == b.ino && a.name == b.name;
  }
};

inline FileIdentity file_identity(const std::string& path) {
  const std::string target = detail::resolve_destination(path);
  struct stat st {};
  FileIdentity id;
  if (::stat(target.c_str(), &st) == 0) {
    id.dev = static_cast<std::uint64_t>(st.st_dev);
    id.ino = static_cast<std::uint64_t>(st.st_ino);
    return id;
  }
  id.name = detail::base_of(target);
  if (::stat(detail::dir_of(target).c_str(), &st) == 0) {
    id.dev = static_cast<std::uint64_t>(st.st_dev);
    id.ino = static_cast<std::uint64_t>(st.st_ino);
  } else {
    id.name = target;  // no directory: the path itself is all there is to compare
  }
  return id;
}

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path) : path_(path), target_(detail::resolve_destination(path)) {
    const std::string base = detail::base_of(target_);
    if (base.empty() || base == "." || base == "..")
      throw IoError("AtomicFile: '" + path + "' does not name a file");
    detail::require_replaceable(path, target_);
    // Hidden, recognisably temporary name; the base is shortened so the temp name stays under NAME_MAX
    // even when the destination's own name is close to it.
    const std::string stem = "." + base.substr(0, 200) + ".pptq-tmp-" + std::to_string(::getpid()) + "-";
    const std::string dir = detail::dir_of(target_);
    static const char hex[] = "0123456789abcdef";
    int last_err = 0;
    for (unsigned attempt = 0; attempt < 64; ++attempt) {
      std::uint64_t r = detail::temp_suffix(this, attempt);
      std::string suffix(12, '0');
      for (int i = 11; i >= 0; --i, r >>= 4) suffix[static_cast<std::size_t>(i)] = hex[r & 15u];
      std::string candidate = (dir == "/" ? std::string("/") : dir + "/") + stem + suffix;
      // Registered before it exists: a signal between open() and registration would otherwise leave it.
      const int slot = detail::register_temp(candidate);
      // 0666 rather than mkstemp's 0600 so the final file gets the usual umask-derived permissions.
      const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd >= 0) {
        fd_ = fd;
        slot_ = slot;
        temp_ = std::move(candidate);
        return;
      }
      last_err = errno;
      detail::unregister_temp(slot);
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
        throw IoError("AtomicFile: write to '" + temp_ + "' (for '" + path_ + "') failed: " + detail::errno_message(errno));
      }
      if (w == 0) throw IoError("AtomicFile: short write to '" + temp_ + "' (for '" + path_ + "')");
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  /// Makes the temporary durable (fsync, close): everything commit() does except the rename, so that a
  /// group of files can be made ready before the first of them replaces its destination.
  void finish() {
    if (finished_) return;
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
    finished_ = true;
  }

  /// finish(), then renames the temporary over the destination (the symbolic link's target, if it is one).
  void commit() {
    finish();
    if (committed_ || removed_) throw IoError("AtomicFile: commit of '" + path_ + "' after commit or failure");
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail_commit("rename", errno);
    committed_ = true;
    detail::unregister_temp(slot_);  // after the rename: a signal before it must still remove the temporary
    slot_ = -1;
    // Persist the directory entry too. Best effort: some filesystems refuse fsync on directories, and the
    // data itself is already safe, so a failure here is not worth an exception.
    const int dfd = ::open(detail::dir_of(target_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      (void)::close(dfd);
    }
  }

  ~AtomicFile() {
    if (fd_ >= 0) (void)::close(fd_);
    if (!committed_ && !removed_ && !temp_.empty()) (void)::unlink(temp_.c_str());
    detail::unregister_temp(slot_);
  }

  const std::string& temp_path() const { return temp_; }
  const std::string& path() const { return path_; }
  /// The file that commit() replaces: path(), or the final target of the symbolic link path() names.
  const std::string& target() const { return target_; }

 private:
  [[noreturn]] void fail_commit(const char* step, int err) {
    if (fd_ >= 0) {
      (void)::close(fd_);
      fd_ = -1;
    }
    (void)::unlink(temp_.c_str());
    removed_ = true;
    detail::unregister_temp(slot_);
    slot_ = -1;
    throw IoError(std::string("AtomicFile: ") + step + " failed while committing '" + path_ + "' (temporary '" + temp_ +
                  "'): " + detail::errno_message(err));
  }

  std::string path_, target_, temp_;
  int fd_ = -1;
  int slot_ = -1;
  bool finished_ = false;
  bool committed_ = false;
  bool removed_ = false;
};

/// Several outputs committed together: add() each, write it, then commit() renames them all. A failure
/// before the first rename leaves every destination as it was; SIGINT, SIGTERM and SIGHUP (with
/// remove_temporaries_on_signals installed) are deferred during the renames, so they too leave the outputs
/// all old (before the renames: the temporaries are removed) or all new. See the header comment for the
/// window that remains (SIGKILL or a power loss between two renames).
class OutputGroup {
 public:
  AtomicFile& add(const std::string& path) {
    files_.push_back(std::make_unique<AtomicFile>(path));
    return *files_.back();
  }
  std::size_t size() const { return files_.size(); }

  /// Finishes every file, then renames them in the order added. `between(k)` runs before the k-th rename
  /// (k >= 1: after k renames; the tools' test hook). A signal deferred meanwhile is re-raised at the end.
  void commit(const std::function<void(std::size_t)>& between = {}) {
    for (auto& f : files_) f->finish();
    struct Deferral {
      Deferral() { detail::g_temps.committing.fetch_add(1); }
      ~Deferral() {
        if (detail::g_temps.committing.fetch_sub(1) != 1) return;
        const int sig = detail::g_temps.deferred.exchange(0);
        if (sig != 0) detail::pptq_on_cleanup_signal(sig);
      }
    } deferral;
    for (std::size_t k = 0; k < files_.size(); ++k) {
      if (k > 0 && between) between(k);
      files_[k]->commit();
    }
  }

 private:
  std::vector<std::unique_ptr<AtomicFile>> files_;
};

// Convenience: the whole buffer in one atomic replacement.
inline void write_file_atomic(const std::string& path, const void* data, std::size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace io
}  // namespace pptq
