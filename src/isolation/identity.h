// User namespace identity: how sandbox ids map to host ids, and the helpers
// that write the maps and build idmapped mounts.
#pragma once
#include <sys/types.h>

#include <string>
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
};

// Rootful: sandbox ids 0..65535 map to a dedicated subordinate range (the
// "ultari" entry of /etc/subuid and /etc/subgid, else 2000000000+).
// Rootless: the requested uid/gid inside map to the caller, nothing else.
// Throws when the request cannot be mapped.
Identity plan_identity(uid_t uid, gid_t gid);

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
