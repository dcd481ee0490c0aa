#include "isolation/identity.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <optional>
#include <tuple>
#include <utility>

#include "util/caller.h"
#include "util/error.h"
#include "util/paths.h"

namespace ultari::isolation {
namespace {

constexpr uint32_t kDefaultSubBase = 2000000000;
constexpr const char* kNewUidMap = "/usr/bin/newuidmap";
constexpr const char* kNewGidMap = "/usr/bin/newgidmap";
constexpr uint32_t kDefaultOwnerBase = 3000000000U;
constexpr uint32_t kDefaultOwnerCount = 1U << 30;  // owners 3000000000..4073741823
constexpr uint32_t kDefaultBlockCount = 15257;  // 2000065536..2999948287: below the owners
constexpr uint32_t kDefaultGatewayBase = 4100000000U;
constexpr uint32_t kDefaultGatewayCount = 1U << 27;  // gateways 4100000000..4234217727

// "<start>:<count>" (trailing blanks allowed), each up to 10 decimal digits
// (so the sum cannot wrap).
bool parse_id_pair(const char* p, uint64_t* start, uint64_t* count) {
  uint64_t* out[2] = {start, count};
  for (int i = 0; i < 2; ++i) {
    int digits = 0;
    *out[i] = 0;
    for (; *p >= '0' && *p <= '9'; ++p)
      if (++digits > 10) return false;
      else *out[i] = *out[i] * 10 + static_cast<uint64_t>(*p - '0');
    if (i == 1)
      while (*p == ' ' || *p == '\t' || *p == '\r') ++p;
    if (digits == 0 || *p != (i == 0 ? ':' : '\0')) return false;
    if (i == 0) ++p;
  }
  return true;
}

// The first "<name>:<start>:<count>" line of /etc/subuid (or subgid) whose
// range holds at least `min_count` ids below 2^32 - 1, else nullopt.
// While plan_identity runs, each of /etc/subuid, /etc/subgid and
// /etc/passwd is read once (the store's range, the owners' and the blocks'
// all look at them): a start pays for one read of each.
thread_local std::map<std::string, std::string>* t_files = nullptr;

struct FileCacheScope {
  std::map<std::string, std::string> files;
  FileCacheScope() { t_files = &files; }
  ~FileCacheScope() { t_files = nullptr; }
  FileCacheScope(const FileCacheScope&) = delete;
  FileCacheScope& operator=(const FileCacheScope&) = delete;
};

// The whole file ("" when it cannot be read): a user's line may lie past
// the first pages.
std::string whole_file(const char* path) {
  if (t_files)
    if (auto it = t_files->find(path); it != t_files->end()) return it->second;
  std::string text = read_or_empty(path);
  if (t_files) (*t_files)[path] = text;
  return text;
}

std::optional<std::pair<uint32_t, uint32_t>> subordinate_range(const char* file, const char* name, uint32_t min_count) {
  std::string text = whole_file(file);
  if (text.empty()) return std::nullopt;
  char* buf = text.data();
  size_t len = std::strlen(name);
  for (char* line = buf; line && *line;) {
    char* next = std::strchr(line, '\n');
    if (next) *next++ = '\0';
    uint64_t start = 0, count = 0;
    // Decimal digits only: sscanf("%lu") took "-1" for ULONG_MAX, and the
    // sum below then wrapped around onto uid 0 and (uid_t)-1.
    if (std::strncmp(line, name, len) == 0 && line[len] == ':' && parse_id_pair(line + len + 1, &start, &count) &&
        count >= min_count && start > 0 && start + count <= 0xffffffffULL)
      return std::pair{static_cast<uint32_t>(start), static_cast<uint32_t>(count)};
    line = next;
  }
  return std::nullopt;
}

uint32_t subordinate_base(const char* file) {
  auto range = subordinate_range(file, "ultari", kRangeSize);
  return range ? range->first : kDefaultSubBase;
}

void write_file(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open " + path);
  ssize_t n = write(fd, text.data(), text.size());
  int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(text.size())) throw_errno("write " + path + " (\"" + text + "\")", err);
}

}  // namespace

std::string format_map(const std::vector<IdRange>& map) {
  std::string out;
  for (const auto& r : map)
    out += std::to_string(r.inside) + " " + std::to_string(r.outside) + " " + std::to_string(r.count) + "\n";
  return out;
}

namespace {

bool overlap(uint64_t a, uint64_t a_count, uint64_t b, uint64_t b_count) { return a < b + b_count && b < a + a_count; }

// Throws when a user of `passwd_file` has a uid in `range` (`base`, `count`)
// (with `group`: a group of a group file, its gid; the third field both).
void check_no_user_in(const char* passwd_file, uint32_t base, uint32_t count, const std::string& range,
                      const std::string& used_for, const char* subuid_file, const char* line_name,
                      bool group = false) {
  std::istringstream passwd(whole_file(passwd_file));
  for (std::string line; std::getline(passwd, line);) {
    auto a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    auto c = b == std::string::npos ? b : line.find(':', b + 1);
    if (c == std::string::npos || c == b + 1 || c - b - 1 > 10) continue;
    std::string uid = line.substr(b + 1, c - b - 1);
    if (uid.find_first_not_of("0123456789") != std::string::npos) continue;
    uint64_t u = std::stoull(uid);
    if (u >= base && u < uint64_t{base} + count)
      throw Error(std::string(passwd_file) + (group ? ": group " : ": user ") + line.substr(0, a) +
                  (group ? " (gid " : " (uid ") + uid + ") is in " + range + ", whose " + (group ? "gids " : "uids ") +
                  used_for + "; give them another range (" + line_name + ":START:COUNT in " + subuid_file + ")");
  }
}



}  // namespace

void plan_blocks(Identity& id, const char* subuid_file, const char* subgid_file, const char* passwd_file,
                 const char* group_file) {
  auto u = subordinate_range(subuid_file, "ultari-sandboxes", kRangeSize);
  auto g = subordinate_range(subgid_file, "ultari-sandboxes", kRangeSize);
  // A line that is there but unusable, or in one file only, is a mistake
  // to name, not a reason to fall back to the default range.
  auto has_line = [](const char* file) {
    std::istringstream in(whole_file(file));
    for (std::string line; std::getline(in, line);)
      if (line.rfind("ultari-sandboxes:", 0) == 0) return true;
    return false;
  };
  for (auto [file, range] : {std::pair{subuid_file, u.has_value()}, std::pair{subgid_file, g.has_value()}})
    if (!range && has_line(file))
      throw Error(std::string(file) + ": its ultari-sandboxes line is unusable (START:COUNT, COUNT at least 65536, "
                  "below 4294967295 in all)");
  if (u.has_value() != g.has_value())
    throw Error(std::string("an ultari-sandboxes line is in ") + (u ? subuid_file : subgid_file) + " but not in " +
                (u ? subgid_file : subuid_file) + ": give the sandboxes' gids a range too");
  uint64_t ubase = u ? u->first : uint64_t{kDefaultSubBase} + kRangeSize;
  uint64_t gbase = g ? g->first : uint64_t{kDefaultSubBase} + kRangeSize;
  uint64_t blocks = std::min<uint64_t>(u ? u->second / kRangeSize : kDefaultBlockCount,
                                       g ? g->second / kRangeSize : kDefaultBlockCount);
  const uint64_t ids = blocks * kRangeSize;
  std::string range = "the ultari-sandboxes range (" + std::to_string(ubase) + ", " + std::to_string(ids) + " ids)";
  for (auto [base, mapped, what] : {std::tuple{ubase, uint64_t{id.uid_map[0].outside}, "uids"},
                                    std::tuple{gbase, uint64_t{id.gid_map[0].outside}, "gids"}})
    if (overlap(base, ids, mapped, kRangeSize))
      throw Error(std::string(subuid_file) + ": the ultari-sandboxes range of " + what + " (" + std::to_string(base) +
                  ", " + std::to_string(ids) + " ids) overlaps the image store's (" + std::to_string(mapped) +
                  ", 65536 ids); give it a range of its own");
  if (overlap(ubase, ids, id.owner_base, id.owner_count))
    throw Error(std::string(subuid_file) + ": " + range + " overlaps the sandboxes' owners (" +
                std::to_string(id.owner_base) + ", " + std::to_string(id.owner_count) + " ids); give it a range of its own");
  // A sandbox would own the files of a host user with one of these uids.
  check_no_user_in(passwd_file, static_cast<uint32_t>(ubase), static_cast<uint32_t>(ids), range, "are sandboxes' ids",
                   subuid_file, "ultari-sandboxes");
  // ... and a host group's files with one of these gids.
  check_no_user_in(group_file, static_cast<uint32_t>(gbase), static_cast<uint32_t>(ids),
                   "the ultari-sandboxes range (" + std::to_string(gbase) + ", " + std::to_string(ids) + " ids)",
                   "are sandboxes' ids", subgid_file, "ultari-sandboxes", true);
  id.block_uid_base = static_cast<uint32_t>(ubase);
  id.block_gid_base = static_cast<uint32_t>(gbase);
  id.block_count = static_cast<uint32_t>(blocks);
}

std::optional<SubIds> caller_subids(std::string* why, const char* subuid_file, const char* subgid_file) {
  auto missing = [why](std::string what) -> std::optional<SubIds> {
    if (why) *why = std::move(what);
    return std::nullopt;
  };
  for (const char* tool : {kNewUidMap, kNewGidMap})
    if (access(tool, X_OK) != 0) return missing(std::string(tool) + " is not installed (apt-get install uidmap)");
  SubIds ids;
  ids.uid = caller_uid();
  ids.gid = caller_gid();
  const passwd* pw = getpwuid(ids.uid);
  // newgidmap maps the user's own group only as its passwd entry says it
  // (not a group taken with sg or newgrp).
  if (pw) ids.gid = pw->pw_gid;
  std::string name = pw && pw->pw_name ? pw->pw_name : "", number = std::to_string(ids.uid);
  std::string who = name.empty() ? "uid " + number : name;
  for (auto [file, start] : {std::pair{subuid_file, &ids.uid_start}, std::pair{subgid_file, &ids.gid_start}}) {
    std::optional<std::pair<uint32_t, uint32_t>> range;
    if (!name.empty()) range = subordinate_range(file, name.c_str(), kRangeSize - 1);
    if (!range) range = subordinate_range(file, number.c_str(), kRangeSize - 1);
    if (!range) return missing(std::string(file) + " has no line for " + who + " with 65535 ids or more");
    *start = range.value().first;
  }
  return ids;
}

Identity plan_identity(uid_t uid, gid_t gid, bool subids) {
  FileCacheScope files;
  Identity id;
  id.uid = uid;
  id.gid = gid;
  id.rootful = host_root();
  const bool nested = in_store_namespace();
  if ((id.rootful || nested || subids) && (uid >= kRangeSize || gid >= kRangeSize))
    throw Error("--user " + std::to_string(uid) + ":" + std::to_string(gid) + " is outside the sandbox's id range 0-65535");
  if (id.rootful) {
    uint32_t ubase = subordinate_base("/etc/subuid"), gbase = subordinate_base("/etc/subgid");
    id.uid_map = {{0, ubase, kRangeSize}};
    id.gid_map = {{0, gbase, kRangeSize}};
    id.host_root_uid = ubase;
    id.host_root_gid = gbase;
    id.setgroups = true;
    check_store_range(ubase, gbase);
    std::tie(id.owner_base, id.owner_count) = owner_range("/etc/subuid", ubase);
    plan_blocks(id, "/etc/subuid", "/etc/subgid", "/etc/passwd");
  } else if (nested) {
    // The store's namespace maps 0..65535 already (enter_store_namespace),
    // as two ranges: an extent of a map must lie within one of its
    // parent's.
    id.uid_map = {{0, 0, 1}, {1, 1, kRangeSize - 1}};
    id.gid_map = id.uid_map;
    id.setgroups = true;
  } else if (subids) {
    std::string why;
    std::optional<SubIds> sub = caller_subids(&why);
    if (!sub) throw Error("this image keeps its files' owners in your subordinate ids, but " + why);
    id.uid_map = {{0, sub->uid, 1}, {1, sub->uid_start, kRangeSize - 1}};
    id.gid_map = {{0, sub->gid, 1}, {1, sub->gid_start, kRangeSize - 1}};
    id.host_root_uid = sub->uid;
    id.host_root_gid = sub->gid;
    id.helper_maps = true;
    id.setgroups = true;
  } else {
    id.uid_map = {{uid, geteuid(), 1}};
    id.gid_map = {{gid, getegid(), 1}};
    id.host_root_uid = geteuid();
    id.host_root_gid = getegid();
  }
  return id;
}


void check_store_range(uint32_t ubase, uint32_t gbase, const char* passwd_file, const char* group_file) {
  // The image store's files, a build's processes and (without idmapped
  // mounts) sandboxes have these ids: a host user or group with one of
  // them would own, or be, what a sandbox leaves.
  check_no_user_in(passwd_file, ubase, kRangeSize, "the image store's range (" + std::to_string(ubase) + ", 65536 ids)",
                   "are the image store's and builds' ids", "/etc/subuid", "ultari");
  check_no_user_in(group_file, gbase, kRangeSize, "the image store's range (" + std::to_string(gbase) + ", 65536 ids)",
                   "are the image store's and builds' ids", "/etc/subgid", "ultari", true);
}

std::pair<uint32_t, uint32_t> owner_range(const char* subuid_file, uint32_t mapped_base, const char* passwd_file) {
  auto owners = subordinate_range(subuid_file, "ultari-owners", 1);
  uint32_t base = owners ? owners->first : kDefaultOwnerBase, count = owners ? owners->second : kDefaultOwnerCount;
  std::string range = "the ultari-owners range (" + std::to_string(base) + ", " + std::to_string(count) + " ids)";
  if (overlap(base, count, mapped_base, kRangeSize))
    throw Error(std::string(subuid_file) + ": " + range + " overlaps the sandboxes' ids (" +
                std::to_string(mapped_base) + ", 65536 ids); give it a range of its own");
  // An owner has every capability over its sandbox's namespace from the
  // host: no user of this host may have one of these uids.
  check_no_user_in(passwd_file, base, count, range, "own sandboxes' namespaces", subuid_file, "ultari-owners");
  return {base, count};
}

std::pair<uint32_t, uint32_t> gateway_range(const char* subuid_file, const Identity& id, const char* passwd_file) {
  auto gateways = subordinate_range(subuid_file, "ultari-gateways", 1);
  uint32_t base = gateways ? gateways->first : kDefaultGatewayBase;
  uint32_t count = gateways ? gateways->second : kDefaultGatewayCount;
  std::string range = "the ultari-gateways range (" + std::to_string(base) + ", " + std::to_string(count) + " ids)";
  if (overlap(base, count, id.host_root_uid, kRangeSize) || overlap(base, count, id.owner_base, id.owner_count) ||
      overlap(base, count, id.block_uid_base, uint64_t{id.block_count} * kRangeSize))
    throw Error(std::string(subuid_file) + ": " + range + " overlaps the sandboxes' ids (" +
                std::to_string(id.host_root_uid) + ", 65536 ids; " + std::to_string(id.block_uid_base) + ", " +
                std::to_string(uint64_t{id.block_count} * kRangeSize) + " ids) or their owners' (" +
                std::to_string(id.owner_base) + ", " + std::to_string(id.owner_count) +
                " ids); give it a range of its own");
  // A gateway could signal, and reach the files of, a user with its uid.
  check_no_user_in(passwd_file, base, count, range, "run sandboxes' network gateways", subuid_file,
                   "ultari-gateways");
  return {base, count};
}

namespace {

// One uid of base..base+count, leased (see lease_owner) on `path`, or the
// default `name` under /run/ultari.
// The lock of index i is on bytes key(i) .. + len: absolute host ids, so
// leases from differently configured processes still exclude each other
// wherever their ids overlap.
OwnerLease lease_uid(uint32_t base, uint32_t count_, const char* lock_file, const char* name, const char* what,
                     const char* line_name, uint64_t stride = 1, off_t len = 1) {
  std::string path = lock_file ? lock_file : std::string("/run/ultari/") + name;
  // Its own open file description: locks taken through one are not
  // exclusive against each other. /run/ultari is made once, on the first
  // start after boot.
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd && errno == ENOENT && !lock_file) {
    if (mkdir("/run/ultari", 0700) != 0 && errno != EEXIST) throw_errno("mkdir /run/ultari");
    fd.reset(open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  }
  if (!fd) throw_errno("open " + path + " (the " + what + " leases)");
  static std::atomic<uint32_t> counter{0};
  uint64_t count = count_ ? count_ : 1;
  uint64_t start = ((static_cast<uint64_t>(getpid()) << 8) | (counter.fetch_add(1, std::memory_order_relaxed) & 0xff)) % count;
  constexpr uint64_t kTries = 4096;
  for (uint64_t i = 0; i < std::min(count, kTries); ++i) {
    uint64_t index = (start + i) % count;
    struct flock fl{};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = static_cast<off_t>(base + index * stride);
    fl.l_len = len;
    if (fcntl(fd.get(), F_OFD_SETLK, &fl) == 0)
      return {static_cast<uid_t>(stride == 1 ? base + index : index), std::move(fd)};
    if (errno != EAGAIN && errno != EACCES) throw_errno("lock " + path);
  }
  throw Error(std::string("no free ") + what + " among " + std::to_string(std::min(count, kTries)) + " of " +
              std::to_string(base) + "+" + std::to_string(count) + " (as many sandboxes alive; the " + line_name +
              " line of /etc/subuid sets the range)");
}

}  // namespace

OwnerLease lease_owner(const Identity& id, const char* lock_file) {
  return lease_uid(id.owner_base, id.owner_count, lock_file, "owners", "owner uid", "ultari-owners");
}

OwnerLease lease_gateway(uint32_t base, uint32_t count, const char* lock_file) {
  return lease_uid(base, count, lock_file, "gateways", "gateway uid", "ultari-gateways");
}

OwnerLease lease_block(const Identity& id, const char* lock_file) {
  return lease_uid(id.block_uid_base, id.block_count, lock_file, "blocks", "block of sandbox ids", "ultari-sandboxes",
                   kRangeSize, kRangeSize);
}

Identity for_block(const Identity& id, uint32_t index) {
  Identity own = id;
  own.host_root_uid = id.block_uid_base + index * kRangeSize;
  own.host_root_gid = id.block_gid_base + index * kRangeSize;
  own.uid_map = {{0, own.host_root_uid, kRangeSize}};
  own.gid_map = {{0, own.host_root_gid, kRangeSize}};
  return own;
}

CreatorScope::CreatorScope(uid_t uid, gid_t gid, bool keep_caps) : bits_(prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)) {
  if (bits_ < 0) throw_errno("prctl PR_GET_SECUREBITS");
  set_bits_ = keep_caps && !(bits_ & SECBIT_NO_SETUID_FIXUP);
  if (set_bits_ && prctl(PR_SET_SECUREBITS, bits_ | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0)
    throw_errno("prctl PR_SET_SECUREBITS (keep capabilities while creating the sandbox as its owner uid)");
  if (syscall(SYS_setresgid, -1, gid, -1) != 0 || syscall(SYS_setresuid, -1, uid, -1) != 0) {
    int err = errno;
    if (syscall(SYS_setresgid, -1, 0, -1) != 0 || (set_bits_ && prctl(PR_SET_SECUREBITS, bits_, 0, 0, 0) != 0))
      std::abort();
    throw_errno("set the effective ids to the sandbox's owner " + std::to_string(uid), err);
  }
}

CreatorScope::~CreatorScope() {
  // Cannot fail for a thread whose real and saved ids are root; going on
  // with another uid's rights would fail confusingly later.
  if (syscall(SYS_setresuid, -1, 0, -1) != 0 || syscall(SYS_setresgid, -1, 0, -1) != 0 ||
      (set_bits_ && prctl(PR_SET_SECUREBITS, bits_, 0, 0, 0) != 0)) {
    std::perror("ultari: cannot return to root after creating the sandbox");
    std::abort();
  }
}

namespace {

// newuidmap/newgidmap PID INSIDE OUTSIDE COUNT...: the setuid helpers that
// grant a user the ids /etc/subuid and /etc/subgid give it. Both run at
// once (each is an exec of a setuid program: milliseconds).
void run_id_helpers(pid_t pid, const Identity& id) {
  struct Helper {
    std::string cmd, output;
    pid_t pid = -1;
    UniqueFd out;
  };
  Helper helpers[2];
  auto reap = [&helpers] {
    for (auto& h : helpers)
      if (h.pid > 0)
        while (waitpid(h.pid, nullptr, 0) < 0 && errno == EINTR) {
        }
  };
  for (int i = 0; i < 2; ++i) {
    const char* tool = i == 0 ? kNewUidMap : kNewGidMap;
    std::vector<std::string> argv = {tool, std::to_string(pid)};
    for (const auto& r : i == 0 ? id.uid_map : id.gid_map)
      for (uint32_t v : {r.inside, r.outside, r.count}) argv.push_back(std::to_string(v));
    for (const auto& a : argv) helpers[i].cmd += (helpers[i].cmd.empty() ? "" : " ") + a;
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    char env0[] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin", env1[] = "LC_ALL=C";
    char* env[] = {env0, env1, nullptr};
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      int err = errno;
      reap();
      throw_errno("pipe", err);
    }
    helpers[i].out.reset(fds[0]);
    UniqueFd w(fds[1]);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, w.get(), 1);
    posix_spawn_file_actions_adddup2(&fa, w.get(), 2);
    int rc = posix_spawn(&helpers[i].pid, tool, &fa, nullptr, args.data(), env);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      helpers[i].pid = -1;
      reap();
      throw_errno(std::string("start ") + tool, rc);
    }
  }
  for (auto& h : helpers) {
    char buf[512];
    for (ssize_t n; (n = read(h.out.get(), buf, sizeof buf)) != 0;) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      h.output.append(buf, static_cast<size_t>(n));
      if (h.output.size() > 2048) h.output.erase(0, h.output.size() - 2048);  // the end says why
    }
  }
  std::string failed;
  for (auto& h : helpers) {
    int status = 0;
    while (waitpid(h.pid, &status, 0) < 0 && errno == EINTR) {
    }
    h.pid = -1;
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && failed.empty()) {
      while (!h.output.empty() && (h.output.back() == '\n' || h.output.back() == ' ')) h.output.pop_back();
      std::string how = WIFEXITED(status) ? "status " + std::to_string(WEXITSTATUS(status))
                                          : "signal " + std::to_string(WTERMSIG(status));
      failed = h.cmd + " failed (" + how + "): " + h.output;
    }
  }
  if (!failed.empty()) throw Error(failed);
}

}  // namespace

void write_maps(pid_t pid, const Identity& id) {
  // newgidmap leaves setgroups allowed: it maps subordinate gids.
  if (id.helper_maps) return run_id_helpers(pid, id);
  std::string base = "/proc/" + std::to_string(pid) + "/";
  write_file(base + "uid_map", format_map(id.uid_map));
  // Unprivileged callers must give up setgroups() before mapping gids.
  if (!id.setgroups) write_file(base + "setgroups", "deny");
  write_file(base + "gid_map", format_map(id.gid_map));
}

namespace {

// The child of mapping_userns: it shares our memory (CLONE_VM: no page
// tables to copy, the clone costs tens of microseconds, not a fork's
// milliseconds) and only waits, with raw system calls, for the end of the
// pipe before it exits.
int hold_until_eof(void* arg) {
  const int* fds = static_cast<int*>(arg);  // the pipe's read and write ends
  // Its own copies of every other fd (the table is not shared) go: the
  // write end above all, or no EOF comes (nor for another thread's child).
  if (fds[0] > 0) syscall(SYS_close_range, 0U, static_cast<unsigned>(fds[0] - 1), 0U);
  syscall(SYS_close_range, static_cast<unsigned>(fds[0] + 1), ~0U, 0U);
  char c;
  while (syscall(SYS_read, fds[0], &c, 1) < 0) {
  }
  syscall(SYS_exit, 0);
  return 0;
}

}  // namespace

UniqueFd mapping_userns(const std::vector<IdRange>& uid_map, const std::vector<IdRange>& gid_map) {
  // A short-lived process, born in the namespace, owns it while the maps
  // are written; the fd keeps it alive after the process is gone.
  int hold[2];
  if (pipe2(hold, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd hold_r(hold[0]), hold_w(hold[1]);
  // Left uninitialised: zeroing it would touch (fault in) every page; the
  // child uses a few hundred bytes at its top.
  constexpr size_t kStack = 16 * 1024;
  std::unique_ptr<char[]> stack(new char[kStack]);
  int fds[2] = {hold_r.get(), hold_w.get()};
  // No signal handler of ours runs in the child (it shares our memory and
  // this thread's TLS): it starts with every signal blocked.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t child = clone(hold_until_eof, stack.get() + kStack, CLONE_VM | CLONE_NEWUSER | SIGCHLD, fds);
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (child < 0) throw_errno("clone (user namespace for an idmapped mount)", clone_errno);
  // Whatever way this returns (an exception included), the child ends and
  // is reaped before its stack is freed (declared after it: runs first).
  struct Reap {
    UniqueFd& hold;
    pid_t pid;
    ~Reap() {
      hold.reset();
      while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  } reap{hold_w, child};
  UniqueFd userns;
  std::string err;
  try {
    Identity map;
    map.rootful = true;
    map.setgroups = true;
    map.uid_map = uid_map;
    map.gid_map = gid_map;
    write_maps(child, map);
    userns.reset(open(("/proc/" + std::to_string(child) + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
    if (!userns) err = std::string("open user namespace: ") + std::strerror(errno);
  } catch (const Error& e) {
    err = e.what();
  }
  if (!userns) throw Error("user namespace for an idmapped mount: " + err);
  return userns;
}

namespace {

// A detached copy of the mount tree at `at` (an O_PATH fd of `path`), with
// `attr` applied.
UniqueFd clone_tree_at(int at, const std::string& path, bool recursive, mount_attr attr, const std::string& what) {
  unsigned flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0);
  UniqueFd tree(static_cast<int>(syscall(SYS_open_tree, at, "", flags)));
  if (!tree) throw_errno("open_tree " + path);
  // A clone of a shared mount (systemd makes / rshared) is a peer of it:
  // every mount the sandbox's setup makes beneath it (a --tmpfs or a bind
  // inside the workspace) would be copied to the host, outlive the sandbox,
  // and show in other sandboxes over the same host tree. Private, the whole
  // tree (a call of its own: the attributes below, an idmap among them,
  // apply to the top mount only).
  mount_attr priv{};
  priv.propagation = MS_PRIVATE;
  if (syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &priv, sizeof priv) != 0)
    throw_errno("make the mount tree of " + path + " private");
  if (syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) {
    int err = errno;
    if ((attr.attr_set & MOUNT_ATTR_IDMAP) && (err == EINVAL || err == EOPNOTSUPP))
      throw IdmapUnsupported(what + ": " + std::strerror(err));
    throw_errno(what, err);
  }
  return tree;
}

// The same of `path` (canonical: a symlink in it now was swapped in and is
// refused).
UniqueFd clone_tree(const std::string& path, bool recursive, mount_attr attr, const std::string& what) {
  UniqueFd at = open_host_path(path);
  return clone_tree_at(at.get(), path, recursive, attr, what);
}

mount_attr idmap_attr(int userns) {
  mount_attr attr{};
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = static_cast<uint64_t>(userns);
  return attr;
}

std::string idmap_what(const std::string& path) {
  return "idmapped mount of " + path + " (does its filesystem support idmapped mounts?)";
}

}  // namespace

UniqueFd open_host_path(const std::string& path) {
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS;
  UniqueFd at(static_cast<int>(syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how)));
  if (!at) throw_errno("open " + path);
  return at;
}

UniqueFd detached_tree(const std::string& path, bool read_only, int userns) {
  mount_attr attr{};
  attr.attr_set = (read_only ? MOUNT_ATTR_RDONLY : 0) | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
  if (userns >= 0) {
    attr.attr_set |= MOUNT_ATTR_IDMAP;
    attr.userns_fd = static_cast<uint64_t>(userns);
  }
  return clone_tree(path, false, attr,
                    (userns >= 0 ? "idmapped mount of " : "mount attributes of ") + path +
                        (userns >= 0 ? " (does its filesystem support idmapped mounts?)" : ""));
}

UniqueFd idmapped_tree(const std::string& path, int userns) {
  return clone_tree(path, true, idmap_attr(userns), idmap_what(path));
}

UniqueFd idmapped_tree(int at, const std::string& path, int userns) {
  return clone_tree_at(at, path, true, idmap_attr(userns), idmap_what(path));
}

}  // namespace ultari::isolation
