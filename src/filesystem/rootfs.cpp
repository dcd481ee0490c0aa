#include "filesystem/rootfs.h"

#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "util/error.h"
#include "util/openat2.h"

namespace ultari::filesystem {

// ---------------------------------------------------------------------------
// Supervisor side: turn the Spec into a recipe.
// ---------------------------------------------------------------------------
namespace {

constexpr const char* kStaging = "/tmp";

// Masked with an empty file or directory (runc's defaults and a few more).
constexpr const char* kMaskedPaths[] = {
    "/proc/acpi",        "/proc/asound",      "/proc/interrupts",  "/proc/kcore",
    "/proc/keys",        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug", "/proc/scsi",        "/sys/firmware",
    "/sys/devices/virtual/powercap", "/sys/kernel/debug", "/sys/kernel/security",
};
constexpr const char* kReadOnlyPaths[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};
constexpr const char* kDevices[] = {"null", "zero", "full", "random", "urandom", "tty"};

// Overlay options are split at ',' and lower layers at ':'.
void check_overlay_path(const std::string& p, const char* what) {
  if (p.find_first_of(",:\\=") != std::string::npos)
    throw Error(std::string(what) + " '" + p + "' contains one of , : \\ = which overlayfs cannot take");
}

std::string real_dir(const std::string& path, const char* what) {
  char buf[PATH_MAX];
  if (!realpath(path.c_str(), buf)) throw_errno(std::string(what) + " '" + path + "'");
  struct stat st{};
  if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) throw Error(std::string(what) + " '" + path + "' is not a directory");
  return buf;
}

void check_destination(const std::string& dst, const char* what) {
  if (dst.empty() || dst[0] != '/') throw Error(std::string(what) + " destination '" + dst + "' must be an absolute path");
  if (dst == "/") throw Error(std::string(what) + " destination '/' is not allowed (use --rootfs)");
  for (size_t i = 0; i < dst.size();) {
    size_t j = dst.find('/', i + 1);
    std::string comp = dst.substr(i + 1, (j == std::string::npos ? dst.size() : j) - i - 1);
    if (comp == "..") throw Error(std::string(what) + " destination '" + dst + "' must not contain '..'");
    if (j == std::string::npos) break;
    i = j;
  }
}

}  // namespace

RootPlan plan_root(const Spec& spec, const HostRoot* host_root, const std::string& home) {
  RootPlan plan;
  auto add = [&plan](Step s) { plan.steps.push_back(s); };
  std::string staging = kStaging;
  const char* upper = plan.intern(staging + "/upper");
  const char* work = plan.intern(staging + "/work");
  const char* root = plan.intern(staging + "/root");

  std::string lower;
  if (!spec.rootfs.empty() && !spec.layers.empty()) throw Error("a root directory and image layers exclude each other");
  if (!spec.layers.empty()) {
    if (spec.layers.size() > kMaxLayers)
      throw Error("an image of " + std::to_string(spec.layers.size()) + " layers: at most " +
                  std::to_string(kMaxLayers) + " are supported");
    for (const auto& l : spec.layers) {
      plan.lower_dirs.push_back(real_dir(l, "image layer"));
      check_overlay_path(plan.lower_dirs.back(), "image layer");
      lower += (lower.empty() ? "" : ":") + plan.lower_dirs.back();
    }
  } else if (!spec.rootfs.empty()) {
    lower = real_dir(spec.rootfs, "rootfs");
    if (lower == "/") throw Error("rootfs '/' would expose the whole host; leave --rootfs out for the default root");
    plan.lower_dirs.push_back(lower);
  } else {
    if (!host_root) throw Error("internal: no host root prepared");
    lower = host_root->skeleton;
    plan.lower_dirs.push_back(lower);
  }
  if (spec.layers.empty()) check_overlay_path(lower, "rootfs");

  add({.op = Step::StagingTmpfs, .target = plan.intern(staging),
       .data = plan.intern("mode=755,size=" + std::to_string(spec.limits.tmp_bytes ? spec.limits.tmp_bytes : kDefaultTmpBytes))});
  for (const char* d : {upper, work, root}) add({.op = Step::MkdirStaging, .target = d, .mode = 0755});
  add({.op = Step::MkdirStaging, .target = plan.intern(staging + "/mask-dir"), .mode = 0});
  const char* shm = plan.intern(staging + "/shm");
  add({.op = Step::MkdirStaging, .target = shm, .mode = 01777});
  add({.op = Step::MkdirStaging, .target = plan.intern(staging + "/mask-file"), .is_dir = false, .mode = 0});
  plan.staged_lower = plan.intern(staging + "/lower");
  if (!spec.layers.empty()) {
    for (const auto& d : plan.lower_dirs) plan.layer_paths.push_back(plan.intern(d));
    plan.layer_fds.assign(plan.layer_paths.size(), -1);
  }
  const char* upper_path = nullptr;
  if (!spec.upper_dir.empty()) {
    upper_path = plan.intern(real_dir(spec.upper_dir, "writable layer"));
    plan.upper_fd.assign(1, -1);
  }
  add({.op = Step::Overlay, .source = plan.intern(lower), .target = root,
       .data = plan.intern(std::string(",upperdir=") + upper + ",workdir=" + work + ",userxattr"),
       .lower_list = !spec.layers.empty(), .layer_paths = plan.layer_paths.data(), .layer_fds = plan.layer_fds.data(),
       .layer_count = plan.layer_paths.size(), .upper_path = upper_path,
       .upper_staged = upper_path ? plan.intern(staging + "/upper-layer") : nullptr,
       .upper_fd = upper_path ? plan.upper_fd.data() : nullptr});

  if (uses_host_root(spec))
    for (const auto& dir : host_root->system_dirs)
      add({.op = Step::BindInRoot, .source = plan.intern(dir), .target = plan.intern(dir), .read_only = true});

  add({.op = Step::ProcInRoot, .target = "/proc"});
  add({.op = Step::SysfsInRoot, .target = "/sys", .read_only = true});
  for (const char* p : kMaskedPaths) add({.op = Step::MaskInRoot, .target = p, .optional = true});
  for (const char* p : kReadOnlyPaths) add({.op = Step::ReadOnlyInRoot, .target = p, .optional = true});

  add({.op = Step::TmpfsInRoot, .target = "/dev", .data = "mode=755,size=64k,nr_inodes=64"});
  for (const char* d : kDevices)
    add({.op = Step::DeviceInRoot, .source = plan.intern(std::string("/dev/") + d),
         .target = plan.intern(std::string("/dev/") + d), .is_dir = false});
  add({.op = Step::DevptsInRoot, .target = "/dev/pts", .data = "newinstance,ptmxmode=0666,mode=0620,max=64"});
  // /dev/shm lives on the staging tmpfs: one --tmp-size budget for all writes.
  add({.op = Step::StagingBindInRoot, .source = shm, .target = "/dev/shm"});
  struct Link {
    const char* from;
    const char* to;
  };
  for (auto [from, to] : {Link{"pts/ptmx", "/dev/ptmx"}, {"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
                          {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}})
    add({.op = Step::SymlinkInRoot, .source = from, .target = to});
  add({.op = Step::RemountRoRoot, .target = "/dev"});

  if (!spec.workspace.empty()) {
    std::string ws = real_dir(spec.workspace, "workspace");
    add({.op = Step::BindInRoot, .source = plan.intern(ws), .target = "/workspace", .read_only = false,
         .user_path = true});
  }
  for (const auto& m : spec.mounts) {
    const char* what = m.kind == Mount::Kind::Tmpfs ? "--tmpfs" : m.read_only ? "--ro-bind" : "--bind";
    check_destination(m.destination, what);
    if (m.kind == Mount::Kind::Tmpfs) {
      add({.op = Step::TmpfsInRoot, .target = plan.intern(m.destination),
           .data = plan.intern("mode=1777" + (m.tmpfs_size ? ",size=" + std::to_string(m.tmpfs_size) : std::string()))});
      continue;
    }
    char buf[PATH_MAX];
    if (!realpath(m.source.c_str(), buf)) throw_errno(std::string(what) + " source '" + m.source + "'");
    struct stat st{};
    if (stat(buf, &st) != 0) throw_errno(std::string(what) + " source '" + m.source + "'");
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
      throw Error(std::string(what) + " source '" + m.source + "' is neither a directory nor a regular file");
    add({.op = Step::BindInRoot, .source = plan.intern(buf), .target = plan.intern(m.destination),
         .read_only = m.read_only, .is_dir = S_ISDIR(st.st_mode), .user_path = true});
  }
  // Every root has a /tmp: an image or --rootfs without one gets an empty
  // one (1777, root's) in the sandbox's writable layer; one it has is left
  // as it is.
  if (!uses_host_root(spec))
    add({.op = Step::MkdirInRoot, .target = "/tmp", .optional = true, .mode = 01777});
  if (!home.empty() && (home != "/root" || !uses_host_root(spec)))
    add({.op = Step::MkdirInRoot, .target = plan.intern(home), .mode = 0700, .uid = spec.identity.uid,
         .gid = spec.identity.gid});
  add({.op = Step::PivotRoot, .target = root});
  plan.host_fds.assign(plan.steps.size(), -1);
  return plan;
}

// ---------------------------------------------------------------------------
// Child side: raw syscalls only, no allocation.
// ---------------------------------------------------------------------------
namespace {

int sys_open_tree(int dfd, const char* path, unsigned flags) {
  return static_cast<int>(syscall(SYS_open_tree, dfd, path, flags));
}
int sys_move_mount(int from_dfd, const char* from, int to_dfd, const char* to, unsigned flags) {
  return static_cast<int>(syscall(SYS_move_mount, from_dfd, from, to_dfd, to, flags));
}
int sys_mount_setattr(int dfd, const char* path, unsigned flags, mount_attr* attr) {
  return static_cast<int>(syscall(SYS_mount_setattr, dfd, path, flags, attr, sizeof *attr));
}
int sys_openat2(int dfd, const char* path, open_how* how) { return openat2_retrying(dfd, path, *how); }

// "/proc/self/fd/<fd>" into buf; async-signal-safe.
const char* fd_path(int fd, char (&buf)[32]) {
  const char prefix[] = "/proc/self/fd/";
  size_t p = 0;
  for (; prefix[p]; ++p) buf[p] = prefix[p];
  char rev[12];
  int digits = 0;
  do rev[digits++] = static_cast<char>('0' + fd % 10), fd /= 10;
  while (fd);
  while (digits) buf[p++] = rev[--digits];
  buf[p] = '\0';
  return buf;
}

struct Ctx {
  int root = -1;  // O_PATH fd of the new root (overlay mount)
  const char* mask_dir = nullptr;
  const char* mask_file = nullptr;
};

// Resolves `path` inside the new root without following any symlink: a
// link planted where a mount goes is refused, never followed
// (CVE-2021-30465); ".." cannot climb out of the root either. `flags` may
// add O_DIRECTORY; without O_PATH in `how_flags` the fd can create entries.
int open_in_root(const Ctx& c, const char* path, int flags, bool as_path = true) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags) | O_CLOEXEC | (as_path ? O_PATH : O_RDONLY);
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;
  return sys_openat2(c.root, path, &how);
}

// Splits "/a/b/c" into a parent ("/a/b", written to `parent`) and returns
// the last component ("c").
const char* split_parent(const char* path, char (&parent)[PATH_MAX]) {
  size_t len = 0, slash = 0;
  for (; path[len] && len + 1 < sizeof parent; ++len) {
    parent[len] = path[len];
    if (path[len] == '/') slash = len;
  }
  parent[slash ? slash : 1] = '\0';
  return path + slash + 1;
}

// Creates `name` in the directory `dir` (a directory or an empty file).
int create_entry(int dir, const char* name, bool is_dir, unsigned mode) {
  if (is_dir) return mkdirat(dir, name, mode) == 0 || errno == EEXIST ? 0 : -errno;
  int fd = openat(dir, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return errno == EEXIST ? 0 : -errno;
  close(fd);
  return 0;
}

// Opens `path` in the root, creating it (a directory, or an empty file when
// !is_dir) and any missing parent directories. Returns an O_PATH fd or -errno.
int open_or_create(const Ctx& c, const char* path, bool is_dir, unsigned mode) {
  int fd = open_in_root(c, path, 0);
  if (fd >= 0) return fd;
  if (errno != ENOENT) return -errno;
  char parent[PATH_MAX];
  const char* leaf = split_parent(path, parent);
  int dir = open_in_root(c, parent, O_DIRECTORY, false);
  if (dir < 0 && errno == ENOENT) {
    int made = open_or_create(c, parent, true, 0755);  // parents first
    if (made < 0) return made;
    close(made);
    dir = open_in_root(c, parent, O_DIRECTORY, false);
  }
  if (dir < 0) return -errno;
  int rc = create_entry(dir, leaf, is_dir, mode);
  close(dir);
  if (rc != 0) return rc;
  fd = open_in_root(c, path, 0);
  return fd < 0 ? -errno : fd;
}

// Mounts the detached tree `tree` onto `target_fd` with the given attributes.
// The tree is made private (whatever it was cloned from, nothing mounted
// beneath it later reaches another namespace).
int attach(int tree, int target_fd, uint64_t attrs) {
  mount_attr attr{};
  attr.attr_set = attrs;
  attr.propagation = MS_PRIVATE;
  if (sys_mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr) != 0) return -errno;
  if (sys_move_mount(tree, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0) return -errno;
  return 0;
}

int bind_path(const char* source, int target_fd, uint64_t attrs) {
  int tree = sys_open_tree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (tree < 0) return -errno;
  int rc = attach(tree, target_fd, attrs);
  close(tree);
  return rc;
}

// mount(2) for new filesystems, aimed at the resolved fd through its
// /proc/self/fd link so no path string inside the root is trusted.
int mount_fs_at(int target_fd, const char* type, unsigned long flags, const char* data) {
  char proc[32];
  if (mount(type, fd_path(target_fd, proc), type, flags, data) != 0) return -errno;
  return 0;
}

int run_step(Ctx& c, const Step& s, int host_fd) {
  switch (s.op) {
    case Step::StagingTmpfs:
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return -errno;
      if (mount("tmpfs", s.target, "tmpfs", MS_NOSUID | MS_NODEV, s.data) != 0) return -errno;
      return 0;
    case Step::MkdirStaging: {
      if (s.is_dir) {
        if (mkdir(s.target, s.mode) != 0 || chmod(s.target, s.mode) != 0) return -errno;  // no umask
      } else {
        int fd = open(s.target, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, s.mode);
        if (fd < 0) return -errno;
        close(fd);
      }
      // The mode-0 directory and file made on the staging tmpfs are the masks.
      if (s.mode == 0) (s.is_dir ? c.mask_dir : c.mask_file) = s.target;
      return 0;
    }
    case Step::StagingFile: {
      int fd = open(s.target, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, s.mode);
      if (fd < 0) return -errno;
      size_t len = 0;
      while (s.data[len]) ++len;
      for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, s.data + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          int err = n < 0 ? errno : ENOSPC;
          close(fd);
          return -err;
        }
        done += static_cast<size_t>(n);
      }
      close(fd);
      return 0;
    }
    case Step::Overlay: {
      // lowerdir is the fd taken before the staging tmpfs covered /tmp, or
      // a detached (idmapped) tree attached next to the upper layer.
      char opts[PATH_MAX + 256];  // a lowerdir list of fds or staged trees fits too
      char fdp[32];
      const char* lower = s.lower_list ? s.source : fd_path(host_fd, fdp);
      char list[kMaxLayers * 32];
      if (s.lower_list && s.tree_count == 0) {
        // The layers' fds, taken before the staging tmpfs: /proc/self/fd/N:...
        size_t m = 0;
        for (size_t i = 0; i < s.layer_count; ++i) {
          char one[32];
          const char* p = fd_path(s.layer_fds[i], one);
          if (i) list[m++] = ':';
          for (size_t k = 0; p[k]; ++k) list[m++] = p[k];
        }
        list[m] = '\0';
        lower = list;
      }
      if (s.tree_fd >= 0) {
        lower = s.source;
        if (mkdir(lower, 0755) != 0) return -errno;
        if (sys_move_mount(s.tree_fd, "", AT_FDCWD, lower, MOVE_MOUNT_F_EMPTY_PATH) != 0) return -errno;
      }
      for (size_t i = 0; i < s.tree_count; ++i) {
        if (mkdir(s.tree_paths[i], 0755) != 0) return -errno;
        if (sys_move_mount(s.tree_fds[i], "", AT_FDCWD, s.tree_paths[i], MOVE_MOUNT_F_EMPTY_PATH) != 0) return -errno;
      }
      size_t n = 0;
      // A writable layer on disk: upper/ and work/ of the tree attached
      // here, or of the fd taken before the staging tmpfs.
      char up[32];
      const char* up_dir = nullptr;
      if (s.upper_path && s.upper_tree) {
        if (mkdir(s.upper_staged, 0755) != 0) return -errno;
        if (sys_move_mount(*s.upper_fd, "", AT_FDCWD, s.upper_staged, MOVE_MOUNT_F_EMPTY_PATH) != 0) return -errno;
        up_dir = s.upper_staged;
      } else if (s.upper_path) {
        up_dir = fd_path(*s.upper_fd, up);
      }
      const char* with_upper[] = {"lowerdir=", lower, ",upperdir=", up_dir, "/upper,workdir=", up_dir, "/work,userxattr"};
      const char* on_tmpfs[] = {"lowerdir=", lower, s.data};
      const char* const* parts = up_dir ? with_upper : on_tmpfs;
      size_t count = up_dir ? 7 : 3;
      for (size_t k = 0; k < count; ++k)
        for (const char* part = parts[k]; *part; ++part) {
          if (n + 1 >= sizeof opts) return -ENAMETOOLONG;
          opts[n++] = *part;
        }
      opts[n] = '\0';
      if (mount("overlay", s.target, "overlay", MS_NOSUID | MS_NODEV, opts) != 0) return -errno;
      for (size_t i = 0; i < s.layer_count; ++i)
        if (s.layer_fds[i] >= 0) close(s.layer_fds[i]);
      if (s.upper_fd && *s.upper_fd >= 0 && !s.upper_tree) close(*s.upper_fd);
      c.root = open(s.target, O_PATH | O_DIRECTORY | O_CLOEXEC);
      return c.root < 0 ? -errno : 0;
    }
    case Step::PivotRoot: {
      if (chdir(s.target) != 0) return -errno;
      if (syscall(SYS_pivot_root, ".", ".") != 0) return -errno;
      if (umount2(".", MNT_DETACH) != 0) return -errno;
      if (chdir("/") != 0) return -errno;
      close(c.root);
      c.root = -1;
      return 0;
    }
    default:
      break;
  }

  // Every other step works on a target inside the new root.
  bool creates = s.op != Step::MaskInRoot && s.op != Step::ReadOnlyInRoot && s.op != Step::SymlinkInRoot;
  if (s.op == Step::SymlinkInRoot) {
    char parent[PATH_MAX];
    const char* leaf = split_parent(s.target, parent);
    int dir = open_in_root(c, parent, O_DIRECTORY, false);
    if (dir < 0) return -errno;
    int rc = symlinkat(s.source, dir, leaf) == 0 || errno == EEXIST ? 0 : -errno;
    close(dir);
    return rc;
  }

  int fd;
  bool made = false;  // MkdirInRoot: the directory is new (its mode is then set past the umask)
  if (s.op == Step::MkdirInRoot) {
    fd = open_in_root(c, s.target, 0);
    if (fd < 0 && errno != ENOENT) return -errno;
    if (fd >= 0 && s.optional) {  // optional: what the root has stays untouched
      close(fd);
      return 0;
    }
    if (fd < 0) {
      made = true;
      fd = open_or_create(c, s.target, true, s.mode);
      if (fd < 0) return fd;
    }
  } else {
    fd = creates ? open_or_create(c, s.target, s.is_dir, 0755) : open_in_root(c, s.target, 0);
    if (fd < 0 && !creates) fd = -errno;
    if (fd < 0) return (s.optional && (fd == -ENOENT)) ? 0 : fd;
  }

  int rc = 0;
  const uint64_t ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
  switch (s.op) {
    case Step::BindInRoot:
      rc = attach(host_fd, fd, s.read_only ? ro : (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV));
      break;
    case Step::AttachInRoot:
      rc = attach(s.tree_fd, fd, s.read_only ? ro : (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV));
      break;
    case Step::StagingBindInRoot: {
      int tree = sys_open_tree(AT_FDCWD, s.source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
      rc = tree < 0 ? -errno : attach(tree, fd, s.read_only ? ro : (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV));
      if (tree >= 0) close(tree);
      break;
    }
    case Step::DeviceInRoot:
      rc = attach(host_fd, fd, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
      break;
    case Step::TmpfsInRoot:
      rc = mount_fs_at(fd, "tmpfs", MS_NOSUID | MS_NODEV, s.data);
      break;
    case Step::ProcInRoot:
      rc = mount_fs_at(fd, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
      break;
    case Step::SysfsInRoot:
      rc = mount_fs_at(fd, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, nullptr);
      break;
    case Step::DevptsInRoot:
      rc = mount_fs_at(fd, "devpts", MS_NOSUID | MS_NOEXEC, s.data);
      break;
    case Step::MaskInRoot: {
      struct stat st{};
      if (fstat(fd, &st) != 0) {
        rc = -errno;
        break;
      }
      rc = bind_path(S_ISDIR(st.st_mode) ? c.mask_dir : c.mask_file, fd, ro | MOUNT_ATTR_NOEXEC);
      break;
    }
    case Step::ReadOnlyInRoot: {
      int tree = sys_open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
      rc = tree < 0 ? -errno : attach(tree, fd, ro);
      if (tree >= 0) close(tree);
      break;
    }
    case Step::RemountRoRoot: {
      mount_attr attr{};
      attr.attr_set = MOUNT_ATTR_RDONLY;
      rc = sys_mount_setattr(fd, "", AT_EMPTY_PATH, &attr) == 0 ? 0 : -errno;
      break;
    }
    case Step::MkdirInRoot: {  // open_or_create made it, or it was there
      char path[32];
      if (fchownat(fd, "", s.uid, s.gid, AT_EMPTY_PATH) != 0 || (made && chmod(fd_path(fd, path), s.mode) != 0))
        rc = -errno;
      break;
    }
    default:
      rc = -EINVAL;
  }
  close(fd);
  return rc;
}

}  // namespace

void RootPlan::add_file(const std::string& destination, std::string content) {
  if (content.find('\0') != std::string::npos) throw Error("internal: a file for " + destination + " holds a NUL byte");
  check_destination(destination, "file");
  auto pivot = std::find_if(steps.begin(), steps.end(), [](const Step& s) { return s.op == Step::PivotRoot; });
  if (pivot == steps.end()) throw Error("internal: add_file on an empty plan");
  const char* staged = intern(std::string(kStaging) + "/file-" + std::to_string(strings.size()));
  Step file{.op = Step::StagingFile, .target = staged, .data = intern(std::move(content)), .is_dir = false,
            .mode = 0444};
  Step bind{.op = Step::StagingBindInRoot, .source = staged, .target = intern(destination), .read_only = true,
            .is_dir = false};
  size_t at = static_cast<size_t>(pivot - steps.begin());
  steps.insert(steps.begin() + static_cast<long>(at), {file, bind});
  host_fds.assign(steps.size(), -1);
}

void RootPlan::use_lower_tree(int tree_fd) {
  for (auto& step : steps)
    if (step.op == Step::Overlay) {
      step.tree_fd = tree_fd;
      step.source = staged_lower;
    }
}

void RootPlan::use_upper_tree(int fd) {
  if (upper_fd.empty()) return;
  upper_fd[0] = fd;
  for (auto& step : steps)
    if (step.op == Step::Overlay) step.upper_tree = true;
}

void RootPlan::use_lower_trees(const std::vector<int>& fds) {
  lower_tree_fds = fds;
  lower_tree_paths.clear();
  std::string list;
  for (size_t i = 0; i < fds.size(); ++i) {
    lower_tree_paths.push_back(intern(std::string(kStaging) + "/lower" + std::to_string(i)));
    list += (i ? ":" : "") + std::string(lower_tree_paths.back());
  }
  for (auto& step : steps)
    if (step.op == Step::Overlay) {
      step.source = intern(list);
      step.lower_list = true;
      step.tree_fds = lower_tree_fds.data();
      step.tree_paths = lower_tree_paths.data();
      step.tree_count = fds.size();
    }
}

const char* step_name(Step::Op op) {
  switch (op) {
    case Step::StagingTmpfs: return "mount staging tmpfs";
    case Step::MkdirStaging: return "create staging entry";
    case Step::Overlay: return "mount overlay root";
    case Step::BindInRoot: return "bind mount";
    case Step::AttachInRoot: return "attach mount";
    case Step::StagingBindInRoot: return "bind staging directory";
    case Step::TmpfsInRoot: return "mount tmpfs";
    case Step::ProcInRoot: return "mount proc";
    case Step::SysfsInRoot: return "mount sysfs";
    case Step::DevptsInRoot: return "mount devpts";
    case Step::MaskInRoot: return "mask path";
    case Step::ReadOnlyInRoot: return "make path read-only";
    case Step::SymlinkInRoot: return "create symlink";
    case Step::DeviceInRoot: return "bind device";
    case Step::RemountRoRoot: return "make mount read-only";
    case Step::MkdirInRoot: return "create directory";
    case Step::StagingFile: return "write file";
    case Step::PivotRoot: return "pivot_root";
  }
  return "setup";
}

// Host paths are taken first, while the host's tree is still visible as it
// is (the staging tmpfs goes over /tmp): bind sources as detached copies,
// the overlay's lower layer as a directory fd.
int open_host_paths(const RootPlan& plan, const Step** failed) {
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const Step& s = plan.steps[i];
    int fd = -2;
    // The supervisor canonicalised every host path: a symlink met now was
    // swapped in since (by another sandbox writing there) and is refused.
    open_how how{};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS;
    if (s.op == Step::BindInRoot || s.op == Step::DeviceInRoot) {
      int path = sys_openat2(AT_FDCWD, s.source, &how);
      fd = path < 0 ? -1 : sys_open_tree(path, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
      if (path >= 0) {
        int err = errno;
        close(path);
        errno = err;
      }
    } else if (s.op == Step::Overlay && s.tree_fd < 0 && !s.lower_list) {
      how.flags |= O_DIRECTORY;
      fd = sys_openat2(AT_FDCWD, s.source, &how);
    }
    if (s.op == Step::Overlay && s.upper_path && !s.upper_tree) {
      open_how up{};
      up.flags = O_PATH | O_CLOEXEC | O_DIRECTORY;
      up.resolve = RESOLVE_NO_SYMLINKS;
      *s.upper_fd = sys_openat2(AT_FDCWD, s.upper_path, &up);
      if (*s.upper_fd < 0) {
        *failed = &s;
        return -errno;
      }
    }
    if (s.op == Step::Overlay && s.lower_list && s.tree_count == 0) {
      how.flags |= O_DIRECTORY;
      for (size_t k = 0; k < s.layer_count; ++k) {
        s.layer_fds[k] = sys_openat2(AT_FDCWD, s.layer_paths[k], &how);
        if (s.layer_fds[k] < 0) {
          *failed = &s;
          return -errno;
        }
      }
    }
    if (fd == -2) continue;
    if (fd < 0) {
      *failed = &s;
      return -errno;
    }
    plan.host_fds[i] = fd;
  }
  return 0;
}

int execute(const RootPlan& plan, const Step** failed) {
  if (int rc = open_host_paths(plan, failed); rc != 0) return rc;
  Ctx c;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    int rc = run_step(c, plan.steps[i], plan.host_fds[i]);
    if (plan.host_fds[i] >= 0) close(plan.host_fds[i]);
    if (rc != 0) {
      *failed = &plan.steps[i];
      if (c.root >= 0) close(c.root);
      return rc;
    }
  }
  return 0;
}

}  // namespace ultari::filesystem
