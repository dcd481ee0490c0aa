// User namespace identity: how sandbox ids map to host ids, and the helpers
// that write the maps and build idmapped mounts.
#pragma once
#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "util/error.h"
#include "util/fd.h"

namespace ultari::isolation {

// A sandbox's ids: 0..65535 inside.
inline constexpr uint32_t kRangeSize = 65536;

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
  // Rootful: blocks of 65536 ids, one leased per sandbox alive
  // (lease_block, for_block), so that no two sandboxes share a host uid:
  // the kernel keeps some per-user budgets by uid alone (pipe buffers, unix
  // fds in flight, epoll watches). The maps above are then the store's ids
  // (what layers and the default root's skeleton are stored in), shown to
  // the sandbox through idmapped mounts. From the "ultari-sandboxes" lines of
  // /etc/subuid and /etc/subgid, else 2000065536 + 15257 blocks.
  uint32_t block_uid_base = 0, block_gid_base = 0, block_count = 0;
  // The maps hold subordinate ids of a user: newuidmap and newgidmap write
  // them (write_maps).
  bool helper_maps = false;
  // The sandbox may call setgroups(): its gids are more than the caller's
  // own (rootful, or subordinate ids), so setgroups is not denied.
  bool setgroups = false;
};

// Rootless: a user's subordinate ids, as newuidmap and newgidmap grant them.
struct SubIds {
  uid_t uid = 0;  // the user's own ids (root inside)
  gid_t gid = 0;
  uint32_t uid_start = 0, gid_start = 0;  // inside ids 1..65535 map here
};
// The caller's SubIds: the first line of `subuid_file` and of
// `subgid_file` for its name (or uid) with at least 65535 ids, when
// `newuidmap` and `newgidmap` are installed (/usr/bin). nullopt otherwise,
// with `why` saying what is missing.
std::optional<SubIds> caller_subids(std::string* why = nullptr, const char* subuid_file = "/etc/subuid",
                                    const char* subgid_file = "/etc/subgid");

// Rootful: sandbox ids 0..65535 map to a dedicated subordinate range (the
// "ultari" entry of /etc/subuid and /etc/subgid, else 2000000000+).
// Rootless: the requested uid/gid inside map to the caller, nothing else;
// with `subids` (an image store that keeps owners), inside 0 is the caller
// and 1..65535 the caller's subordinate ids (caller_subids). In the image
// store's namespace (enter_store_namespace): 0..65535 as they are there.
// Throws when the request cannot be mapped.
Identity plan_identity(uid_t uid, gid_t gid, bool subids = false);

// Makes this process root of a user namespace whose ids 0..65535 are the
// caller and its subordinate ids (newuidmap and newgidmap write the maps),
// for an image store that keeps owners: unpacking, committing and removing
// layers need those owners, and a sandbox from its images nests its own
// namespace there. One process per store (comm "ultari-userns") holds the
// namespace for later commands, which join it (no helper to run); it ends
// after ULTARI_USERNS_IDLE_SECONDS (default 60) without being asked while
// no process is in its namespace. What a holder sends is checked before it
// is joined (store_userns.cpp); an unusable holder is replaced, with a
// warning. Where the idle time is 0, `store_dir` is not the caller's alone,
// or the holder's namespace is not a child of ours, the namespace is this
// process's own. The caller's supplementary groups stay (unmapped there,
// they still count on the host). Must be called while the process has one thread. Nothing of the
// host's root comes with it (the namespace has no other user's ids);
// ultari::host_root() stays false. Throws Error.
void enter_store_namespace(const SubIds& ids, const std::string& store_dir);

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

// Fills id's block_* (rootful: uid_map/gid_map and the owners' range are
// planned) from the "ultari-sandboxes:START:COUNT" lines of the two files
// (blocks: COUNT / 65536 of the smaller), else 2000065536 + 15257 blocks;
// throws when they overlap the image store's ids or the owners', or hold
// the uid of a user in `passwd_file` or the gid of a group in `group_file`.
void plan_blocks(Identity& id, const char* subuid_file, const char* subgid_file, const char* passwd_file,
                 const char* group_file = "/etc/group");
// Rootful: throws when a user of `passwd_file` has a uid in the image
// store's range (ubase .. +65535, the "ultari" line of /etc/subuid), or a
// group of `group_file` a gid in gbase .. +65535.
void check_store_range(uint32_t ubase, uint32_t gbase, const char* passwd_file = "/etc/passwd",
                       const char* group_file = "/etc/group");

// Rootful: a block of ids of its own for one sandbox, leased on
// /run/ultari/blocks: a lock on the byte range of its host uids, so two
// leases never overlap, whatever ranges the processes holding them were
// configured with; `uid` is the block's index. Throws when none of those
// tried is free.
OwnerLease lease_block(const Identity& id, const char* lock_file = nullptr);
// `id` mapped to block `index`: inside 0..65535 are that block's ids.
Identity for_block(const Identity& id, uint32_t index);

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
// A map as /proc/PID/uid_map takes it: "inside outside count" lines.
std::string format_map(const std::vector<IdRange>& map);

// A user namespace with the given maps (inside = ids on disk, outside =
// host ids they appear as), kept alive by the returned fd. Used to build
// idmapped mounts.
UniqueFd mapping_userns(const std::vector<IdRange>& uid_map, const std::vector<IdRange>& gid_map);

// A detached copy of the host directory `path` (not recursive; nosuid,
// nodev, read-only unless asked otherwise). Rootful only.
// With `userns` (a mapping_userns), idmapped through it as well; throws
// IdmapUnsupported when the path's filesystem takes no idmapped mount.
struct IdmapUnsupported : Error {
  using Error::Error;
};
UniqueFd detached_tree(const std::string& path, bool read_only, int userns = -1);

// A detached, idmapped copy of the host path (recursive) seen through
// `userns`: files owned by the mapped owner appear owned by the target ids
// and files written through it are stored as that owner. Rootful only.
UniqueFd idmapped_tree(const std::string& path, int userns);
// The same of `at`, an fd of `path` from open_host_path (the tree whose
// owner was read, not whatever the path names by now).
UniqueFd idmapped_tree(int at, const std::string& path, int userns);

// An O_PATH fd of the host path, never through a symlink (a canonical path
// holds none: one there now was swapped in).
UniqueFd open_host_path(const std::string& path);

}  // namespace ultari::isolation
