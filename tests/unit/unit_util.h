// Small helpers the unit tests share.
#pragma once
#include <exception>
#include <fstream>
#include <sstream>
#include <string>

namespace ultari::unit {

inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

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
