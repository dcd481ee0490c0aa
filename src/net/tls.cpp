#include "net/tls.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <string>
#include <vector>

#include "util/error.h"

namespace ultari::net::tls {

std::unique_ptr<Engine> load() {
  // Next to the ultari binary (a build tree), then the installed library
  // directory. Never a path from the environment: ultari runs as root.
  std::vector<std::string> candidates;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    dir.resize(dir.rfind('/') + 1);
    candidates.push_back(dir + "libultari_tls.so");
  }
  candidates.push_back(ULTARI_TLS_MODULE_DIR "/libultari_tls.so");
  std::string why;
  for (const auto& path : candidates) {
    if (access(path.c_str(), R_OK) != 0) continue;
    // Never closed: the engine's code lives in it.
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      why = dlerror();
      continue;
    }
    auto create = reinterpret_cast<Engine* (*)()>(dlsym(lib, "ultari_tls_engine_create"));
    if (!create) throw Error(path + " is not Ultari's TLS module");
    return std::unique_ptr<Engine>(create());
  }
  if (why.empty()) why = "not found at " + candidates.front() + " or " + candidates.back();
  throw Error("--inspect-tls needs Ultari's TLS module (libultari_tls.so, OpenSSL): " + why);
}

}  // namespace ultari::net::tls
