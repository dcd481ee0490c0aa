// The gateway process: serves a sandbox's network (net/server.h) outside
// the supervisor, as an unprivileged user, so that a bug in the code that
// parses what the sandbox sends cannot reach the supervisor's privileges.
#pragma once
#include <sys/types.h>

#include <string>
#include <vector>

#include "cgroups/cgroups.h"
#include "net/inspection.h"
#include "net/netns.h"
#include "net/summary.h"
#include "spec/spec.h"

namespace ultari::net {

// The seccomp filter the gateway process puts on all its threads once set
// up (gateway.cpp says what it refuses). Public for its tests.
void confine_gateway();

class Gateway {
 public:
  // Opens the audit log and starts the gateway process serving `endpoints`
  // under `policy`, terminating TLS and swapping secrets per `inspection`
  // (which only the gateway process keeps). With `group`, the process runs
  // in that cgroup from its start. Started by root, it runs as `uid` (a
  // uid of its own, see isolation::lease_gateway; 0: nobody) and group
  // nogroup, and keeps `lease` (that uid's lease) open: the uid is not
  // leased again while the process lives, even past its supervisor.
  // Throws Error (nothing is left running).
  Gateway(const NetworkSpec& policy, const std::string& sandbox_id, Endpoints endpoints, Inspection inspection = {},
          const cgroups::Cgroup* group = nullptr, uid_t uid = 0, int lease = -1);
  ~Gateway();  // kills and reaps the process if finish() did not end it
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Stops serving (open connections are closed) and returns the final
  // counts. `error` says why the counts are missing if the process died.
  Summary finish(std::string& error);

  // Most tasks the process has: a loop thread and one worker per flow or
  // query served at once (at most 256), with room to spare.
  static constexpr uint64_t kMaxTasks = 512;

  // The environment that points clients at the explicit proxies.
  static std::vector<std::string> proxy_env();

 private:
  pid_t pid_ = -1;
  UniqueFd pidfd_, control_;
  std::string audit_path_;
  std::string mode_;
};

}  // namespace ultari::net
