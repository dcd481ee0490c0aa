// Small helpers the unit tests share.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "isolation/identity.h"
#include "util/paths.h"

namespace ultari::unit {

inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A rootful identity whose namespace owners are base .. base + count - 1.
inline isolation::Identity owners(uint32_t base, uint32_t count) {
  isolation::Identity id;
  id.rootful = true;
  id.owner_base = base;
  id.owner_count = count;
  return id;
}

// A new directory /tmp/ultari-<what>-XXXXXX of mode `mode`, removed with
// what it holds at the end of the scope.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& what = "unit", mode_t mode = 0700) {
    path = "/tmp/ultari-" + what + "-XXXXXX";
    if (!mkdtemp(path.data())) throw std::runtime_error("mkdtemp " + path);
    chmod(path.c_str(), mode);
  }
  ~TempDir() { remove_tree(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// A new file /tmp/ultari-<what>-XXXXXX holding `text`; its path (the
// caller unlinks it).
inline std::string temp_file(const std::string& what, const std::string& text = "") {
  std::string path = "/tmp/ultari-" + what + "-XXXXXX";
  int fd = mkstemp(path.data());
  if (fd >= 0) {
    if (write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) path = "(short write)";
    close(fd);
  }
  return path;
}

// The message of what `f` throws ("" when it throws nothing).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// OpenPGP keys made for the tests (tests/data/provision/keys/README), and
// their fingerprints as gpg gives them.
inline std::string test_key(const std::string& name) {
  std::ifstream in(std::string(ULTARI_TEST_DATA) + "/provision/keys/" + name);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}
inline constexpr const char* kKeyFpr = "EA875C85C945DA5297F51AC04731D5CD4E7EDEA6";    // test.asc
inline constexpr const char* kOtherFpr = "44BA1FB14E04D7E89D9C155FDE0CC9B25BF5F9E4";  // other.asc

}  // namespace ultari::unit
