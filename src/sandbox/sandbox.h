// The engine's public API. A run is: prepare (work that can be done ahead
// and shared between runs), start (the per-request work: cgroup, clone,
// root filesystem, exec), wait (supervise until the command ends) and
// destroy (the destructor: nothing of the sandbox survives it).
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cgroups/cgroups.h"
#include "filesystem/rootfs.h"
#include "isolation/identity.h"
#include "net/summary.h"
#include "seccomp/seccomp.h"
#include "spec/spec.h"

namespace ultari {

enum class Verdict { Ok, NonzeroExit, Signaled, Timeout, CpuTime, Oom, OutputLimit, SetupError };
const char* verdict_name(Verdict v);

struct DeniedSyscall {
  std::string name;
  uint64_t count = 0;
};

struct Result {
  std::string sandbox_id;
  Verdict verdict = Verdict::SetupError;
  int exit_code = 125;  // exit status `ultari run` reports (docker/timeout conventions)
  int signal = 0;       // signal that ended the command, 0 if none
  int64_t wall_ms = 0;
  int64_t cpu_ms = 0;
  uint64_t peak_memory_bytes = 0;
  uint64_t peak_pids = 0;
  uint64_t stdout_bytes = 0;
  uint64_t stderr_bytes = 0;
  bool truncated = false;
  std::vector<DeniedSyscall> denied_syscalls;
  std::string error;                  // set for setup_error and exec failures
  std::vector<std::string> warnings;  // limits not enforced, ...
  bool warm = false;                  // the sandbox came from a warm pool
  // The boot step's (ProcessSpec::boot) exit status, 128+N for signal N;
  // none when there was no boot step or it did not end.
  std::optional<int> boot_exit_code;
  std::optional<net::Summary> network;  // when the sandbox had a network
};

std::string result_json(const Result& r);

// Where the sandbox's standard streams come from and go to (supervisor fds).
// The sandbox never receives these fds themselves: the supervisor copies
// through pipes, so a terminal or a directory on stdin cannot be reached
// from inside (no tty ioctls, no fchdir out of the root). -1: nothing.
struct Io {
  int stdin_fd = 0;
  int stdout_fd = 1;
  int stderr_fd = 2;
};

// Work done ahead: the default root's skeleton, the compiled seccomp policy,
// the identity mapping and the cgroup layout. Reusable for many sandboxes of
// the same spec shape.
struct Prepared {
  std::string cache_dir;
  isolation::Identity identity;
  // Rootful with a network: the gateways' uid range (isolation::gateway_range),
  // read once here (it reads /etc/subuid and /etc/passwd).
  std::pair<uint32_t, uint32_t> gateway_range{0, 0};
  filesystem::HostRoot host_root;  // empty skeleton when --rootfs is used
  seccomp::CompiledPolicy policy;
  cgroups::Layout cgroups;
  int cap_last = 40;
  uint64_t capabilities = 0;  // Spec::capabilities as a mask (bit = CAP_*)
};
Prepared prepare(const Spec& spec);

class Sandbox {
 public:
  // Makes the sandbox: cgroup, namespaces, root filesystem, seccomp. Returns
  // while init finishes the setup; init then waits for its command (see
  // poll_setup), so sandboxes can be made ahead of the requests that use
  // them. Throws ultari::Error for problems found before the sandbox exists
  // (nothing is left behind). spec.process is not used here.
  static std::unique_ptr<Sandbox> create(const Prepared& prepared, const Spec& spec);
  // Gives the sandbox its command (once): request.process and the
  // per-request limits (see take_request_fields) with the caller's streams.
  // Throws ultari::Error for a bad command (nothing was sent).
  void exec(const Spec& request, const Io& io);
  // create + exec, checking the command first.
  static std::unique_ptr<Sandbox> start(const Prepared& prepared, const Spec& spec, const Io& io);
  ~Sandbox();  // kills whatever is left and removes the cgroup
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  const std::string& id() const;
  // Without blocking, takes in what init reported about its setup.
  enum class Status { Starting, Ready, Failed };
  Status poll_setup();
  const std::string& setup_error() const;
  int control_fd() const;  // readable when init reports something
  int pidfd() const;       // readable when init is gone
  // Supervises until the command ends (streams output, enforces limits,
  // answers seccomp notifications) and returns the result.
  Result wait();
  // Kills every process of the sandbox.
  void kill();

  // Internal (sandbox/state.h): what the supervisor holds; the warm pool
  // hands it from the process that made the sandbox to the one that runs it.
  struct State;
  State& state();
  static std::unique_ptr<Sandbox> adopt(std::unique_ptr<State> state);

 private:
  explicit Sandbox(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

// prepare + start + wait + destroy. Never throws: errors become a result
// with verdict setup_error.
Result run(const Spec& spec, const Io& io = {});

}  // namespace ultari
