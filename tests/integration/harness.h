// Runs the real `ultari` binary and inspects what it did. No mocks: every
// test starts real sandboxes on the running kernel.
#pragma once
#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <map>
#include <string>
#include <vector>

namespace ultari::test {

struct Outcome {
  int status = -1;  // exit status of `ultari` (or 128+signal)
  std::string out, err;
  nlohmann::json report;  // parsed --report (null when none was written)
};

struct Options {
  std::string stdin_data;
  std::vector<std::string> env;  // extra environment of the ultari process
  std::string as_user;           // run ultari as this host user (rootless)
  std::string binary;            // ultari binary to run (default ULTARI_BIN)
  std::string netns;             // run it in the named netns (/run/netns/NAME), nothing else changed
  int timeout_s = 60;
};

// ultari ARGS...; adds --report unless `args` holds one already.
Outcome ultari(const std::vector<std::string>& args, const Options& opt = {});
// Starts `ultari ARGS...` in the background with stdout on `stdout_fd`
// (-1: /dev/null); the caller waits for it.
pid_t spawn_ultari(const std::vector<std::string>& args, int stdout_fd = -1);
// `sh -c SCRIPT` on the host (not in a sandbox): its stdout and the
// status as pclose gives it.
Outcome host(const std::string& script);
// ultari run [flags] -- sh -c SCRIPT
Outcome sh(const std::string& script, const std::vector<std::string>& flags = {}, const Options& opt = {});

// A directory under /tmp removed (recursively) when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& content, unsigned mode = 0644);
std::string read_file(const std::string& path);
// Waits (up to 5 minutes, while process `pid` lives) until the file at
// `log` holds `text`; whether it does.
bool wait_for_text(const std::string& log, pid_t pid, const std::string& text);
bool exists(const std::string& path);

// What sandboxes may leave behind on the host.
struct Leftovers {
  int cgroups = 0;    // ultari-* under /sys/fs/cgroup (any hierarchy)
  int processes = 0;  // processes owned by the sandbox uid range or named ultari(-init, -net)
  int mounts = 0;     // mounts mentioning ultari in the host's mount table
  std::string describe() const;
};
Leftovers leftovers();
// Sandboxes of process pid that have a cgroup: distinct names
// ultari-<pid>-* over all hierarchies.
int groups_of(pid_t pid);
// Processes on the host whose command line contains `needle`.
int processes_matching(const std::string& needle);
std::vector<pid_t> pids_matching(const std::string& needle);

// Python prelude for syscall probes: defines sc(name, nr, *args), which
// prints "name errno" (0 when the call succeeded).
extern const char* const kPySyscall;
// "name number" lines -> map.
std::map<std::string, int> parse_pairs(const std::string& out);
// A seccomp profile that allows everything (negative controls); with
// foreign_abis, the i386 and x32 ABIs too.
std::string allow_all_profile(const TempDir& dir, bool foreign_abis = false);

// The unprivileged host user of the rootless tests (created when missing)
// with a copy of ultari it can execute: Options for ultari() as that user.
extern const char* const kRootlessUser;
Options rootless_options();

// Directory holding the static test helper programs (bound into sandboxes).
std::string helpers_dir();
// Whether this kernel runs i386 system calls (int 0x80) at all: without
// IA32 emulation they fault (SIGSEGV) before any filter sees them, so the
// i386 ABI is no way in and its checks are skipped. Probed on the host.
bool host_has_i386();

// The image store the Debian tests share (<build dir>/test-images, kept
// between runs) and Options that point ultari at it.
std::string test_image_store();
Options test_image_options(int timeout_s = 60);
// Builds image "minbase-kmod" (debootstrap --variant=minbase --include=kmod
// bookworm, from the host's mirror) once per build directory; parallel
// test processes wait for the one that builds. "" or the build's error.
std::string ensure_debian_test_image();

}  // namespace ultari::test
