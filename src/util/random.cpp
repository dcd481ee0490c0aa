#include "util/random.h"

#include <sys/random.h>

#include <cstdio>
#include <vector>

#include "util/error.h"

namespace ultari {

std::string random_hex(size_t bytes) {
  std::vector<unsigned char> b(bytes);
  if (getrandom(b.data(), b.size(), 0) != static_cast<ssize_t>(b.size())) throw_errno("getrandom");
  std::string out;
  char two[3];
  for (unsigned char c : b) {
    std::snprintf(two, sizeof two, "%02x", c);
    out += two;
  }
  return out;
}

}  // namespace ultari
