#pragma once
// Untrusted text (a name or a header read from a file) shown in a message: non-printable bytes escaped and
// the length bounded, so that a hostile file can neither garble the terminal that shows the message nor make
// it megabytes long. Depends on the C++ standard library only.

#include <cstddef>
#include <string>

namespace pptq {
namespace io {
namespace detail {

/// The bytes s[0, n) with every byte outside printable ASCII written as \xHH (a line break as \n, a
/// backslash doubled), cut after max_len characters with "...".
inline std::string printable(const char* s, std::size_t n, std::size_t max_len = 80) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    if (out.size() >= max_len) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}
inline std::string printable(const std::string& s, std::size_t max_len = 80) {
  return printable(s.data(), s.size(), max_len);
}

/// A name from a file as a message quotes it: 'name', escaped and bounded.
inline std::string quoted(const std::string& name, std::size_t max_len = 120) {
  return "'" + printable(name, max_len) + "'";
}

}  // namespace detail
}  // namespace io
}  // namespace pptq
