// Runs a host program (debootstrap, depmod, modprobe) with a fixed
// environment, stdin from /dev/null, stdout and stderr together.
#pragma once
#include <linux/filter.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ultari {

struct ProgramResult {
  int status = 0;                // exit status, or 128 + signal
  std::vector<std::string> tail;  // the last lines of output (up to `keep_lines`)
  std::string tail_text() const;  // those lines joined with " | "
};

// Where the program runs.
struct Containment {
  // As pid 1 of new pid and mount namespaces: whatever it starts dies with
  // it, and what it mounts (debootstrap's /proc in its target) goes with
  // its namespace, even when this process is SIGKILLed.
  bool namespaces = false;
  // With them, a new user namespace in which the caller (its one id) is
  // root: what an unprivileged caller may make (rootless).
  bool own_user = false;
  // A seccomp filter installed right before exec (with no_new_privs), or
  // empty.
  std::vector<sock_filter> filter;
};

// argv[0] is an absolute path. `on_line` sees each line of output as it
// comes. Throws Error when the program cannot be started. The program is
// killed when this process dies (PR_SET_PDEATHSIG).
ProgramResult run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          const std::function<void(const std::string&)>& on_line = {}, size_t keep_lines = 5,
                          const Containment& containment = {});

// [arg_start, arg_end) of this process (fields 48 and 49 of
// /proc/self/stat, read once): a copy of the process that must not show
// the command line (paths of the host) overwrites it.
std::pair<char*, size_t> argv_area();

// Whether process `pid` (> 0) of this pid namespace exists (a zombie too;
// one of another user: EPERM).
bool pid_alive(pid_t pid);

}  // namespace ultari
