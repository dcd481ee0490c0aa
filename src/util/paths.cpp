#include "util/paths.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/openat2.h>
#include <pwd.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

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

// Removes `name` in directory `dir`; a directory's entries first, each
// reached through an fd of its parent (O_NOFOLLOW): no path is looked up.
void remove_at(int dir, const char* name, int depth) {
  struct stat st{};
  if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (S_ISDIR(st.st_mode) && depth < 256) {
    int sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub >= 0) {
      if (DIR* d = fdopendir(sub)) {
        std::vector<std::string> names;
        while (dirent* e = readdir(d))
          if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
        for (const auto& n : names) remove_at(dirfd(d), n.c_str(), depth + 1);
        closedir(d);
      } else {
        close(sub);
      }
    }
    unlinkat(dir, name, AT_REMOVEDIR);
  } else {
    unlinkat(dir, name, 0);
  }
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
  remove_at(dir, leaf.c_str(), 0);
  close(dir);
}

void write_beneath(const std::string& root, const std::string& rel, const std::string& content, unsigned mode) {
  auto slash = rel.rfind('/');
  std::string parent = slash == std::string::npos ? "." : rel.substr(0, slash);
  std::string leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
  if (leaf.empty() || leaf == "." || leaf == "..") throw Error("write_beneath: '" + rel + "' names no file");
  int dir = open_dir_beneath(root, parent);
  if (dir < 0) throw_errno("open " + root + "/" + parent + " (a symlink or missing)");
  remove_at(dir, leaf.c_str(), 0);
  int fd = openat(dir, leaf.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  close(dir);
  if (fd < 0) throw_errno("create " + root + "/" + rel);
  bool ok = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  close(fd);
  if (!ok) throw_errno("write " + root + "/" + rel);
}

namespace {

// Removes a tree without following links or leaving the filesystem, with
// a bounded number of fds (nftw): first opening up directories without
// read, write or search permission (a rootless caller's own layer), then
// removing bottom up. nftw reports a directory it cannot read as FTW_DNR
// and does not enter it: once opened up, it is walked again (a worklist,
// each subtree once).
thread_local std::vector<std::string>* opened_unreadable = nullptr;
int open_up(const char* path, const struct stat* st, int type, FTW*) {
  if ((type == FTW_D || type == FTW_DNR) && (st->st_mode & 0700) != 0700 &&
      chmod(path, (st->st_mode & 07777) | 0700) == 0 && type == FTW_DNR && opened_unreadable)
    opened_unreadable->emplace_back(path);
  return 0;
}
int remove_one(const char* path, const struct stat*, int type, FTW*) {
  if (type == FTW_DP || type == FTW_D || type == FTW_DNR) rmdir(path);
  else unlink(path);
  return 0;
}

}  // namespace

void remove_tree(const std::string& path) {
  struct stat st{};
  if (lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    unlink(path.c_str());
    return;
  }
  std::vector<std::string> pending = {path}, found;
  opened_unreadable = &found;
  while (!pending.empty()) {
    std::string next = std::move(pending.back());
    pending.pop_back();
    nftw(next.c_str(), open_up, 16, FTW_PHYS | FTW_MOUNT);
    pending.insert(pending.end(), found.begin(), found.end());
    found.clear();
  }
  opened_unreadable = nullptr;
  nftw(path.c_str(), remove_one, 16, FTW_PHYS | FTW_MOUNT | FTW_DEPTH);
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
