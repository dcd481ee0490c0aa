#include "util/module.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <vector>

#include "util/error.h"

namespace ultari {

void* module_entry(const std::string& file, const char* entry, const std::string& purpose) {
  std::vector<std::string> candidates;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    dir.resize(dir.rfind('/') + 1);
    candidates.push_back(dir + file);
  }
  candidates.push_back(std::string(ULTARI_MODULE_DIR "/") + file);
  std::string why;
  for (const auto& path : candidates) {
    if (access(path.c_str(), R_OK) != 0) continue;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed: the module's code lives in it
    if (!lib) {
      why = dlerror();
      continue;
    }
    void* sym = dlsym(lib, entry);
    if (!sym) throw Error(path + " is not the module " + purpose + " needs");
    return sym;
  }
  if (why.empty()) why = "not found at " + candidates.front() + " or " + candidates.back();
  throw Error(purpose + " needs Ultari's module " + file + ": " + why);
}

}  // namespace ultari
