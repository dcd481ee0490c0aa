// Error type used across libultari: one exception, carrying a message that
// names the problem (and errno text when a syscall failed).
#pragma once
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ultari {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws Error("<what>: <strerror(err)>").
[[noreturn]] inline void throw_errno(const std::string& what, int err = errno) {
  throw Error(what + ": " + std::strerror(err));
}

}  // namespace ultari
