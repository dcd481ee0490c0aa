#include "isolation/identity.h"

#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/securebits.h>
#include <sched.h>
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
#include <optional>
#include <tuple>
#include <utility>

#include "util/error.h"

namespace ultari::isolation {
namespace {

constexpr uint32_t kDefaultSubBase = 2000000000;
constexpr uint32_t kRangeSize = 65536;
constexpr uint32_t kDefaultOwnerBase = 3000000000U;
constexpr uint32_t kDefaultOwnerCount = 1U << 30;  // owners 3000000000..4073741823
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
std::optional<std::pair<uint32_t, uint32_t>> subordinate_range(const char* file, const char* name, uint32_t min_count) {
  char buf[8192];
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return std::nullopt;
  buf[n] = '\0';
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

std::string format(const std::vector<IdRange>& map) {
  std::string out;
  for (const auto& r : map)
    out += std::to_string(r.inside) + " " + std::to_string(r.outside) + " " + std::to_string(r.count) + "\n";
  return out;
}

}  // namespace

Identity plan_identity(uid_t uid, gid_t gid) {
  Identity id;
  id.uid = uid;
  id.gid = gid;
  id.rootful = geteuid() == 0;
  if (id.rootful) {
    uint32_t ubase = subordinate_base("/etc/subuid"), gbase = subordinate_base("/etc/subgid");
    if (uid >= kRangeSize || gid >= kRangeSize)
      throw Error("--user " + std::to_string(uid) + ":" + std::to_string(gid) + " is outside the sandbox's id range 0-65535");
    id.uid_map = {{0, ubase, kRangeSize}};
    id.gid_map = {{0, gbase, kRangeSize}};
    id.host_root_uid = ubase;
    id.host_root_gid = gbase;
    std::tie(id.owner_base, id.owner_count) = owner_range("/etc/subuid", ubase);
  } else {
    id.uid_map = {{uid, geteuid(), 1}};
    id.gid_map = {{gid, getegid(), 1}};
    id.host_root_uid = geteuid();
    id.host_root_gid = getegid();
  }
  return id;
}

namespace {

bool overlap(uint64_t a, uint64_t a_count, uint64_t b, uint64_t b_count) { return a < b + b_count && b < a + a_count; }

// Throws when a user of `passwd_file` has a uid in `range` (`base`, `count`).
void check_no_user_in(const char* passwd_file, uint32_t base, uint32_t count, const std::string& range,
                      const std::string& used_for, const char* subuid_file, const char* line_name) {
  std::ifstream passwd(passwd_file);
  for (std::string line; std::getline(passwd, line);) {
    auto a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    auto c = b == std::string::npos ? b : line.find(':', b + 1);
    if (c == std::string::npos || c == b + 1 || c - b - 1 > 10) continue;
    std::string uid = line.substr(b + 1, c - b - 1);
    if (uid.find_first_not_of("0123456789") != std::string::npos) continue;
    uint64_t u = std::stoull(uid);
    if (u >= base && u < uint64_t{base} + count)
      throw Error(std::string(passwd_file) + ": user " + line.substr(0, a) + " (uid " + uid + ") is in " + range +
                  ", whose uids " + used_for + "; give them another range (" + line_name + ":START:COUNT in " +
                  subuid_file + ")");
  }
}

}  // namespace

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
  if (overlap(base, count, id.host_root_uid, kRangeSize) || overlap(base, count, id.owner_base, id.owner_count))
    throw Error(std::string(subuid_file) + ": " + range + " overlaps the sandboxes' ids (" +
                std::to_string(id.host_root_uid) + ", 65536 ids) or their owners' (" + std::to_string(id.owner_base) +
                ", " + std::to_string(id.owner_count) + " ids); give it a range of its own");
  // A gateway could signal, and reach the files of, a user with its uid.
  check_no_user_in(passwd_file, base, count, range, "run sandboxes' network gateways", subuid_file,
                   "ultari-gateways");
  return {base, count};
}

namespace {

// One uid of base..base+count, leased (see lease_owner) on `path`, or the
// default `name` under /run/ultari.
OwnerLease lease_uid(uint32_t base, uint32_t count_, const char* lock_file, const char* name, const char* what,
                     const char* line_name) {
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
    fl.l_start = static_cast<off_t>(index);
    fl.l_len = 1;
    if (fcntl(fd.get(), F_OFD_SETLK, &fl) == 0) return {static_cast<uid_t>(base + index), std::move(fd)};
    if (errno != EAGAIN && errno != EACCES) throw_errno("lock " + path);
  }
  throw Error(std::string("no free ") + what + " uid among " + std::to_string(std::min(count, kTries)) + " of " +
              std::to_string(base) + "+" + std::to_string(count) + " (as many sandboxes alive; the " + line_name +
              " line of /etc/subuid sets the range)");
}

}  // namespace

OwnerLease lease_owner(const Identity& id, const char* lock_file) {
  return lease_uid(id.owner_base, id.owner_count, lock_file, "owners", "owner", "ultari-owners");
}

OwnerLease lease_gateway(uint32_t base, uint32_t count, const char* lock_file) {
  return lease_uid(base, count, lock_file, "gateways", "gateway", "ultari-gateways");
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

void write_maps(pid_t pid, const Identity& id) {
  std::string base = "/proc/" + std::to_string(pid) + "/";
  write_file(base + "uid_map", format(id.uid_map));
  // Unprivileged callers must give up setgroups() before mapping gids.
  if (!id.rootful) write_file(base + "setgroups", "deny");
  write_file(base + "gid_map", format(id.gid_map));
}

UniqueFd mapping_userns(const std::vector<IdRange>& uid_map, const std::vector<IdRange>& gid_map) {
  // A short-lived process owns the namespace while the maps are written; the
  // fd keeps it alive after the process is gone.
  int ready[2], hold[2];
  if (pipe2(ready, O_CLOEXEC) != 0) throw_errno("pipe");
  if (pipe2(hold, O_CLOEXEC) != 0) {
    close(ready[0]);
    close(ready[1]);
    throw_errno("pipe");
  }
  pid_t child = fork();
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    close(ready[0]);
    close(hold[1]);  // or the read below never sees EOF
    char c = unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
    if (write(ready[1], &c, 1) < 0) _exit(1);
    if (read(hold[0], &c, 1) < 0) _exit(1);
    _exit(0);
  }
  close(ready[1]);
  close(hold[0]);
  char c = 0;
  bool ok = child > 0 && read(ready[0], &c, 1) == 1 && c == 'y';
  close(ready[0]);
  UniqueFd userns;
  std::string err = child < 0 ? "fork failed" : "unshare(CLONE_NEWUSER) failed";
  if (ok) {
    try {
      Identity map;
      map.rootful = true;
      map.uid_map = uid_map;
      map.gid_map = gid_map;
      write_maps(child, map);
      userns.reset(open(("/proc/" + std::to_string(child) + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
      if (!userns) err = std::string("open user namespace: ") + std::strerror(errno);
    } catch (const Error& e) {
      err = e.what();
    }
  }
  close(hold[1]);
  if (child > 0) waitpid(child, nullptr, 0);
  if (!userns) throw Error("user namespace for an idmapped mount: " + err);
  return userns;
}

namespace {

// A detached copy of the mount tree at `path` (canonical: a symlink in it
// now was swapped in and is refused), with `attr` applied.
UniqueFd clone_tree(const std::string& path, bool recursive, mount_attr attr, const std::string& what) {
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS;
  UniqueFd at(static_cast<int>(syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how)));
  if (!at) throw_errno("open " + path);
  unsigned flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0);
  UniqueFd tree(static_cast<int>(syscall(SYS_open_tree, at.get(), "", flags)));
  if (!tree) throw_errno("open_tree " + path);
  if (syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) throw_errno(what);
  return tree;
}

}  // namespace

UniqueFd detached_tree(const std::string& path, bool read_only) {
  mount_attr attr{};
  attr.attr_set = (read_only ? MOUNT_ATTR_RDONLY : 0) | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
  return clone_tree(path, false, attr, "mount attributes of " + path);
}

UniqueFd idmapped_tree(const std::string& path, int userns) {
  mount_attr attr{};
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = static_cast<uint64_t>(userns);
  return clone_tree(path, true, attr, "idmapped mount of " + path + " (does its filesystem support idmapped mounts?)");
}

}  // namespace ultari::isolation
