// User namespace identity: how sandbox ids map to host ids, and the helpers
// that write the maps and build idmapped mounts.
#pragma once
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "util/fd.h"

namespace ultari::isolation {

struct IdRange {
  uint32_t inside, outside, count;
};

struct Identity {
  bool rootful = false;
  std::vector<IdRange> uid_map, gid_map;
  uid_t host_root_uid = 0;  // host uid that is root (or the caller) inside
  gid_t host_root_gid = 0;
  uid_t uid = 0;            // uid/gid the command runs as inside
  gid_t gid = 0;
  // Rootful: the range of host uids that create sandboxes' user namespaces
  // (see lease_owner); disjoint from the mapped range.
  uint32_t owner_base = 0, owner_count = 0;
};

// Rootful: sandbox ids 0..65535 map to a dedicated subordinate range (the
// "ultari" entry of /etc/subuid and /etc/subgid, else 2000000000+).
// Rootless: the requested uid/gid inside map to the caller, nothing else.
// Throws when the request cannot be mapped.
Identity plan_identity(uid_t uid, gid_t gid);

// Rootful: the host uid that creates a sandbox's user namespace, one per
// sandbox alive. The kernel charges the per-user quotas of everything in a
// user namespace (inotify instances and watches, processes, message queue
// bytes, pending signals, namespaces) to the namespace's owner at every
// level above it as well, so sandboxes created by one uid share those
// quotas with each other and with that uid. Owners come from the
// "ultari-owners:<start>:<count>" line of /etc/subuid, else 3000000000 +
// 2^30, and are leased: a lock on byte i of `lock_file` (default
// /run/ultari/owners) for owner start + i, on an open file description of
// the lease's own, held while the sandbox lives and released by the kernel
// when its holder dies. So two sandboxes alive at once never share an
// owner, whichever processes made them. The search starts at a place
// picked from this process's pid and a counter.
struct OwnerLease {
  uid_t uid = 0;
  UniqueFd lock;  // the lease: closing it (and every copy) ends it
};
// Throws (naming the range) when none of the owners tried is free.
OwnerLease lease_owner(const Identity& id, const char* lock_file = nullptr);
// The owners' range (start, count) read from `subuid_file`; throws when it
// overlaps the sandboxes' ids (mapped_base .. +65535) or holds the uid of a
// user in `passwd_file`.
std::pair<uint32_t, uint32_t> owner_range(const char* subuid_file, uint32_t mapped_base,
                                          const char* passwd_file = "/etc/passwd");

// Rootful: the host uid a sandbox's network gateway runs as, one per
// sandbox alive, leased like the owners (on /run/ultari/gateways): so that
// two gateways share no per-user budget (pipe buffers above all: each
// relay keeps two 1 MiB pipes) and cannot signal each other. From the
// "ultari-gateways:<start>:<count>" line of /etc/subuid, else 4100000000 +
// 2^27; throws when that range overlaps the sandboxes' ids (`id`'s), their
// owners', or holds the uid of a user in `passwd_file`.
std::pair<uint32_t, uint32_t> gateway_range(const char* subuid_file, const Identity& id,
                                            const char* passwd_file = "/etc/passwd");
OwnerLease lease_gateway(uint32_t base, uint32_t count, const char* lock_file = nullptr);

// Makes the calling thread, and it alone (raw setres[ug]id: glibc's wrappers
// change every thread), create namespaces as `uid`/`gid` until destroyed;
// with `keep_caps`, keeping its effective capabilities
// (SECBIT_NO_SETUID_FIXUP, which needs CAP_SETPCAP): clone3 with
// CLONE_INTO_CGROUP still needs root's write access to the group. The
// child does not inherit the securebit: a new user namespace starts its
// creds with the default securebits (kernel set_cred_user_ns), and init
// sets and locks its own later. The process stays non-dumpable afterwards
// (any euid change sets the mm's dumpable flag to fs.suid_dumpable), and
// so does the child until its exec.
class CreatorScope {
 public:
  CreatorScope(uid_t uid, gid_t gid, bool keep_caps);
  ~CreatorScope();
  CreatorScope(const CreatorScope&) = delete;
  CreatorScope& operator=(const CreatorScope&) = delete;

 private:
  int bits_;
  bool set_bits_ = false;
};

// Writes /proc/<pid>/{uid_map,setgroups,gid_map}.
void write_maps(pid_t pid, const Identity& id);

// A user namespace with the given maps (inside = ids on disk, outside =
// host ids they appear as), kept alive by the returned fd. Used to build
// idmapped mounts.
UniqueFd mapping_userns(const std::vector<IdRange>& uid_map, const std::vector<IdRange>& gid_map);

// A detached copy of the host directory `path` (not recursive; nosuid,
// nodev, read-only unless asked otherwise). Rootful only.
UniqueFd detached_tree(const std::string& path, bool read_only);

// A detached, idmapped copy of the host path (recursive) seen through
// `userns`: files owned by the mapped owner appear owned by the target ids
// and files written through it are stored as that owner. Rootful only.
UniqueFd idmapped_tree(const std::string& path, int userns);

}  // namespace ultari::isolation
