#pragma once
// Opening an input file for reading: regular files only. A directory, a FIFO, a socket or a device is
// refused before anything is read from it (a FIFO would block the reader forever, /dev/zero would be read
// until memory runs out, a directory reports a meaningless size), and the size the caller reads against is
// the regular file's own, from fstat, so a reader can check a header's claims against it before reading
// the data. Depends on the C++ standard library, POSIX and pptq/error.hpp.

#include <cerrno>
#include <cstddef>
#include <cstdint>
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

/// What a file that is not a regular one is, for the message refusing it.
inline const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

inline std::string errno_text(int err) { return std::generic_category().message(err); }

}  // namespace detail

/// A regular file open for reading. `prefix` starts every message ("npy: ", "gguf: "); every message names
/// the path. A file that cannot be opened or read is an IoError; a path that names something other than a
/// regular file is a DataError (the input given is not a file of data).
class InputFile {
 public:
  InputFile(const std::string& path, const std::string& prefix) : path_(path), prefix_(prefix) {
    // stat first: opening some devices has effects of its own, and a FIFO's open blocks until a writer comes.
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      throw IoError(prefix_ + path_ + ": cannot open: " + detail::errno_text(err));
    }
    require_regular(st.st_mode);
    // O_NONBLOCK: if the path was swapped for a FIFO since the stat, open() must not block; fstat refuses it.
    do fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) {
      const int err = errno;
      throw IoError(prefix_ + path_ + ": cannot open: " + detail::errno_text(err));
    }
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      close_fd();
      throw IoError(prefix_ + path_ + ": cannot stat: " + detail::errno_text(err));
    }
    try {
      require_regular(st.st_mode);
    } catch (...) {
      close_fd();
      throw;
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~InputFile() { close_fd(); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  /// The file's size when it was opened.
  std::uint64_t size() const { return size_; }
  /// Bytes read so far.
  std::uint64_t position() const { return pos_; }

  /// Reads the next n bytes into buf. A file that ends early (it shrank after it was opened) is a DataError.
  void read_exact(void* buf, std::size_t n) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
      const ::ssize_t got = ::read(fd_, p, n);
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        const int err = errno;
        throw IoError(prefix_ + path_ + ": read error: " + detail::errno_text(err));
      }
      if (got == 0)
        throw DataError(prefix_ + path_ + ": the file ended at byte " + std::to_string(pos_) + " of the " +
                        std::to_string(size_) + " it had when opened (it changed while being read)");
      p += got;
      n -= static_cast<std::size_t>(got);
      pos_ += static_cast<std::uint64_t>(got);
    }
  }

  /// Reads n bytes at `offset` into buf without moving position() (pread). A file too short for them (it
  /// shrank after it was opened) is a DataError.
  void read_at(std::uint64_t offset, void* buf, std::size_t n) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
      const ::ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        const int err = errno;
        throw IoError(prefix_ + path_ + ": read error: " + detail::errno_text(err));
      }
      if (got == 0)
        throw DataError(prefix_ + path_ + ": the file ended at byte " + std::to_string(offset) + " of the " +
                        std::to_string(size_) + " it had when opened (it changed while being read)");
      p += got;
      n -= static_cast<std::size_t>(got);
      offset += static_cast<std::uint64_t>(got);
    }
  }

 private:
  void require_regular(mode_t m) const {
    if (!S_ISREG(m))
      throw DataError(prefix_ + path_ + " is " + detail::file_kind(m) + ", not a regular file: inputs are read from regular files only");
  }
  void close_fd() {
    if (fd_ >= 0) (void)::close(fd_);
    fd_ = -1;
  }

  std::string path_, prefix_;
  int fd_ = -1;
  std::uint64_t size_ = 0, pos_ = 0;
};

/// A regular file's size without reading it (the checks and errors of InputFile).
inline std::uint64_t regular_file_size(const std::string& path, const std::string& prefix) {
  return InputFile(path, prefix).size();
}

}  // namespace io
}  // namespace pptq
