#include "util/paths.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pwd.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/sysmacros.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#include <fstream>
#include <sstream>

#include "util/caller.h"
#include "util/error.h"
#include "util/openat2.h"
#include "util/process.h"

namespace ultari {

std::string cache_dir() {
  if (const char* env = std::getenv("ULTARI_CACHE_DIR"); env && *env) return env;
  if (host_root()) return "/var/cache/ultari";
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg == '/') return std::string(xdg) + "/ultari";
  return home_dir() + "/.cache/ultari";
}

std::string home_dir() {
  const char* home = std::getenv("HOME");
  if (home && *home == '/') return home;
  const passwd* pw = getpwuid(caller_uid());
  if (!pw || !pw->pw_dir || *pw->pw_dir != '/') throw Error("cannot find a home directory: HOME is not set");
  return pw->pw_dir;
}

void make_dirs(const std::string& dir, unsigned mode) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    bool leaf = pos == dir.size();
    if (mkdir(part.c_str(), leaf ? mode : 0755) != 0 && errno != EEXIST) throw_errno("mkdir " + part);
  }
}

std::string read_fd(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  explicit_bzero(buf, sizeof buf);
  return out;
}

std::string read_or_empty(const std::string& path) {
  // read(2) into the string: an ifstream opens without O_CLOEXEC and costs
  // a stream buffer and a locale on every start's config reads.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return {};
  std::string out = read_fd(fd);
  close(fd);
  return out;
}

std::optional<std::string> read_in_root(const std::string& root, const std::string& path, size_t max_bytes) {
  int dir = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return std::nullopt;
  open_how how{};
  how.flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
  int fd = openat2_retrying(dir, path.c_str(), how);
  close(dir);
  if (fd < 0) return std::nullopt;
  struct stat st{};
  std::optional<std::string> out;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) <= max_bytes) {
    std::string data(static_cast<size_t>(st.st_size), '\0');
    ssize_t n = pread(fd, data.data(), data.size(), 0);
    if (n >= 0) {
      data.resize(static_cast<size_t>(n));
      out = std::move(data);
    }
  }
  close(fd);
  return out;
}

namespace {

// Gives directory `name` in `parent` owner rwx when it lacks it, through
// an O_PATH fd of it (never a symlink; no path looked up again).
void open_up(int parent, const char* name) {
  if (int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); fd >= 0) {
    struct stat st{};
    if (fstat(fd, &st) == 0 && (st.st_mode & 0700) != 0700) (void)fchmod(fd, (st.st_mode & 07777) | 0700);
    close(fd);
    return;
  }
  // (not readable: through /proc's view of an O_PATH fd)
  int path = openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (path < 0) return;
  struct stat st{};
  if (fstat(path, &st) == 0 && (st.st_mode & 0700) != 0700)
    (void)chmod(("/proc/self/fd/" + std::to_string(path)).c_str(), (st.st_mode & 07777) | 0700);
  close(path);
}

// A directory `name` in `parent` opened for reading, never through a
// symlink; one without read or search permission for its owner (a
// rootless caller's own: overlayfs leaves work/work at mode 0) is opened
// up first. -1 when it cannot be.
int open_dir_opened_up(int parent, const char* name) {
  int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0 || errno != EACCES) return fd;
  open_up(parent, name);
  return openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

// Directories deeper than this below the one being emptied are moved up
// into it and emptied from there: fds stay bounded, and no path is ever
// longer than a name (a tree deeper than PATH_MAX goes too). One that
// cannot be moved is entered where it is, down to kMaxDepth.
constexpr int kFlatDepth = 64;
constexpr int kMaxDepth = 256;

// Where a file is: its filesystem, inode and mount. A bind mount of a
// directory of the same filesystem has the same st_dev; only the mount id
// tells it apart.
struct Place {
  bool ok = false, dir = false;
  dev_t dev = 0;
  ino_t ino = 0;
  uint64_t mnt = 0;  // 0: the kernel did not say
  bool same_mount(const Place& o) const { return dev == o.dev && (mnt == 0 || o.mnt == 0 || mnt == o.mnt); }
};

// `name` in `dir` (never followed), or `dir` itself when `name` is "".
Place place_of(int dir, const char* name) {
  struct statx sx{};
  Place p;
  int flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (*name ? 0 : AT_EMPTY_PATH);
  if (statx(dir, name, flags, STATX_TYPE | STATX_INO | STATX_MNT_ID, &sx) != 0) return p;
  p.ok = true;
  p.dir = S_ISDIR(sx.stx_mode);
  p.dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
  p.ino = sx.stx_ino;
  if (sx.stx_mask & STATX_MNT_ID) p.mnt = sx.stx_mnt_id;
  return p;
}

unsigned empty_names(int fd, int top, const Place& where, int depth, uint64_t& next_name,
                     const std::vector<std::string>& names);

// Removes what directory `fd` holds (not itself), on mount `where` only
// (a mount point, a bind mount of the same filesystem too, is left alone),
// depth first through fds. Returns how many directories it moved up into
// `top`, named .ultari-deep-N from `next_name` on (one counter for the
// whole removal: no name is tried twice).

unsigned empty_dir(int fd, int top, const Place& where, int depth, uint64_t& next_name) {
  struct stat self{};
  if (fstat(fd, &self) == 0 && (self.st_mode & 0700) != 0700) (void)fchmod(fd, (self.st_mode & 07777) | 0700);
  // (a new open file: a dup would share the offset a last pass left at the end)
  int again = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (again < 0) return 0;
  DIR* d = fdopendir(again);
  if (!d) {
    close(again);
    return 0;
  }
  std::unique_ptr<DIR, int (*)(DIR*)> listing(d, closedir);
  unsigned moved = 0;
  // Names are read kBatch at a time and removed before the next are read
  // (the stream goes on past what was removed): a directory of millions of
  // entries costs no more memory than one of kBatch. The stream is closed
  // before the last batch, so only a large directory holds a second fd.
  constexpr size_t kBatch = 4096;
  std::vector<std::string> names;
  while (listing) {
    names.clear();
    while (dirent* e = readdir(listing.get())) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
      if (names.size() == kBatch) break;
    }
    if (names.size() < kBatch) listing.reset();
    moved += empty_names(fd, top, where, depth, next_name, names);
  }
  return moved;
}

// empty_dir's work on one batch of the names in `fd`.
unsigned empty_names(int fd, int top, const Place& where, int depth, uint64_t& next_name,
                     const std::vector<std::string>& names) {
  unsigned moved = 0;
  for (const auto& n : names) {
    Place at = place_of(fd, n.c_str());
    if (!at.ok) continue;
    if (!at.dir) {
      unlinkat(fd, n.c_str(), 0);
      continue;
    }
    if (!at.same_mount(where)) continue;
    if (depth >= kFlatDepth) {
      open_up(fd, n.c_str());  // (moving a directory changes its "..": it needs write permission)
      bool gone = false;
      for (;;) {
        std::string to = ".ultari-deep-" + std::to_string(next_name++);
        if (renameat2(fd, n.c_str(), top, to.c_str(), RENAME_NOREPLACE) == 0) {
          gone = true;
          ++moved;
          break;
        }
        if (errno != EEXIST) break;
      }
      if (gone || depth >= kMaxDepth) continue;
    }
    int sub = open_dir_opened_up(fd, n.c_str());
    if (sub >= 0) {
      // (the directory looked at, not one swapped in since)
      Place opened = place_of(sub, "");
      if (opened.ok && opened.same_mount(at) && opened.ino == at.ino)
        moved += empty_dir(sub, top, where, depth + 1, next_name);
      close(sub);
    }
    unlinkat(fd, n.c_str(), AT_REMOVEDIR);
  }
  return moved;
}

// Removes `name` in directory `dir`: a directory's entries first (each
// reached through an fd of its parent, O_NOFOLLOW: no path is looked up),
// however deep. Best effort.
void remove_at(int dir, const char* name) {
  struct stat st{};
  if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    unlinkat(dir, name, 0);
    return;
  }
  if (int top = open_dir_opened_up(dir, name); top >= 0 && fstat(top, &st) == 0) {
    Place where = place_of(top, "");
    if (!where.ok) where.dev = st.st_dev;
    // Each pass empties 64 levels; what lies deeper was moved up into the
    // top for the next, so each pass leaves the tree shallower: the passes
    // end (nothing runs in a tree being removed to make it deeper).
    uint64_t next_name = 0;
    for (int pass = 0; pass < 1000000 && empty_dir(top, top, where, 0, next_name) > 0; ++pass) {
    }
    close(top);
  } else if (top >= 0) {
    close(top);
  }
  unlinkat(dir, name, AT_REMOVEDIR);
}

}  // namespace

int open_dir_beneath(const std::string& root, const std::string& rel) {
  int top = open(root.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (top < 0) return -1;
  open_how how{};
  how.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS;
  int dir = openat2_retrying(top, rel.empty() ? "." : rel.c_str(), how);
  close(top);
  return dir;
}

void remove_beneath(const std::string& root, const std::string& rel) {
  auto slash = rel.rfind('/');
  std::string parent = slash == std::string::npos ? "." : rel.substr(0, slash);
  std::string leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
  if (leaf.empty() || leaf == "." || leaf == "..") return;
  int dir = open_dir_beneath(root, parent);
  if (dir < 0) return;  // missing, or a symlink on the way: leave it
  remove_at(dir, leaf.c_str());
  close(dir);
}

void write_beneath(const std::string& root, const std::string& rel, const std::string& content, unsigned mode) {
  auto slash = rel.rfind('/');
  std::string parent = slash == std::string::npos ? "." : rel.substr(0, slash);
  std::string leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
  if (leaf.empty() || leaf == "." || leaf == "..") throw Error("write_beneath: '" + rel + "' names no file");
  int dir = open_dir_beneath(root, parent);
  if (dir < 0) throw_errno("open " + root + "/" + parent + " (a symlink or missing)");
  remove_at(dir, leaf.c_str());
  int fd = openat(dir, leaf.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  close(dir);
  if (fd < 0) throw_errno("create " + root + "/" + rel);
  bool ok = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  close(fd);
  if (!ok) throw_errno("write " + root + "/" + rel);
}

void remove_tree(const std::string& given) {
  std::string path = given;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string parent = path.substr(0, path.rfind('/') + 1), leaf = path.substr(path.rfind('/') + 1);
  if (leaf.empty() || leaf == "." || leaf == "..") return;
  int dir = open(parent.empty() ? "." : parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  remove_at(dir, leaf.c_str());
  close(dir);
}

size_t remove_dead_temps(const std::string& dir, const std::string& prefix) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) return 0;
  std::vector<std::string> dead;
  while (dirent* e = readdir(d.get())) {
    std::string name = e->d_name;
    auto tmp = name.find(".tmp-");
    if (name.rfind(prefix, 0) != 0 || tmp == std::string::npos) continue;
    if (!pid_alive(static_cast<pid_t>(std::atol(name.c_str() + tmp + 5)))) dead.push_back(name);
  }
  for (const auto& name : dead) remove_tree(dir + "/" + name);
  return dead.size();
}

}  // namespace ultari
