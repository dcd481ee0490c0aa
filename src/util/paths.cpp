#include "util/paths.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace ultari {

std::string cache_dir() {
  if (const char* env = std::getenv("ULTARI_CACHE_DIR"); env && *env) return env;
  if (geteuid() == 0) return "/var/cache/ultari";
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg == '/') return std::string(xdg) + "/ultari";
  return home_dir() + "/.cache/ultari";
}

std::string home_dir() {
  const char* home = std::getenv("HOME");
  if (home && *home == '/') return home;
  const passwd* pw = getpwuid(geteuid());
  if (!pw || !pw->pw_dir || *pw->pw_dir != '/') throw Error("cannot find a home directory: HOME is not set");
  return pw->pw_dir;
}

void make_dirs(const std::string& dir, unsigned mode) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    bool leaf = pos == dir.size();
    if (mkdir(part.c_str(), leaf ? mode : 0755) != 0 && errno != EEXIST) throw_errno("mkdir " + part);
  }
}

std::string read_or_empty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  if (in) ss << in.rdbuf();
  return ss.str();
}

}  // namespace ultari
