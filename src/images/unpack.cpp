#include "images/unpack.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <string>
#include <vector>

#include "util/error.h"

namespace ultari::images {

std::unique_ptr<Unpacker> load_unpacker() {
  // Next to the ultari binary (a build tree) or one directory up (the
  // build tree's test programs), then the installed library directory.
  // Never a path from the environment: ultari runs as root.
  std::vector<std::string> candidates;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    dir.resize(dir.rfind('/') + 1);
    candidates.push_back(dir + "libultari_archive.so");
    candidates.push_back(dir + "../libultari_archive.so");
  }
  candidates.push_back(ULTARI_MODULE_DIR "/libultari_archive.so");
  std::string why;
  for (const auto& path : candidates) {
    if (access(path.c_str(), R_OK) != 0) continue;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed: the unpacker's code lives in it
    if (!lib) {
      why = dlerror();
      continue;
    }
    auto create = reinterpret_cast<Unpacker* (*)()>(dlsym(lib, "ultari_unpacker_create"));
    if (!create) throw Error(path + " is not Ultari's archive module");
    Unpacker* u = create();
    if (!u) throw Error(path + ": could not start");
    return std::unique_ptr<Unpacker>(u);
  }
  if (why.empty()) why = "not found at " + candidates.front() + " or " + candidates.back();
  throw Error("ultari image needs Ultari's archive module (libultari_archive.so, libarchive): " + why);
}

}  // namespace ultari::images
