#include "util/process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <linux/seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <deque>

#include "util/error.h"
#include "util/fd.h"

namespace ultari {

std::string ProgramResult::tail_text() const {
  std::string s;
  for (const auto& l : tail) s += (s.empty() ? "" : " | ") + l;
  return s;
}

namespace {

void write_proc(pid_t pid, const char* file, const std::string& text) {
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    throw_errno("writing " + path);
}

}  // namespace

ProgramResult run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          const std::function<void(const std::string&)>& on_line, size_t keep_lines,
                          const Containment& containment) {
  const bool contained = containment.namespaces;
  if (containment.own_user && !contained) throw Error("run_program: a user namespace comes with the others");
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') throw Error("run_program: argv[0] must be absolute");
  // Everything the child needs is made before fork.
  std::vector<std::string> args = argv, envs = env;
  std::vector<char*> a, e;
  for (auto& s : args) a.push_back(s.data());
  a.push_back(nullptr);
  for (auto& s : envs) e.push_back(s.data());
  e.push_back(nullptr);
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd r(out[0]), w(out[1]);
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null < 0) throw_errno("open /dev/null");
  UniqueFd null_fd(null);
  // The child waits on `go` for its id maps (written by this process).
  int go_pipe[2];
  if (pipe2(go_pipe, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd go_r(go_pipe[0]), go_w(go_pipe[1]);
  std::string uid_map = "0 " + std::to_string(geteuid()) + " 1\n", gid_map = "0 " + std::to_string(getegid()) + " 1\n";
  sock_fprog filter{static_cast<unsigned short>(containment.filter.size()),
                    const_cast<sock_filter*>(containment.filter.data())};
  const bool filtered = !containment.filter.empty();
  unsigned long flags = CLONE_NEWPID | CLONE_NEWNS | (containment.own_user ? CLONE_NEWUSER : 0);
  pid_t pid = contained ? static_cast<pid_t>(syscall(SYS_clone, flags | SIGCHLD, nullptr, nullptr, nullptr, nullptr))
                        : fork();
  if (pid < 0)
    throw_errno(containment.own_user ? "clone (new user, pid and mount namespaces)"
                : contained          ? "clone (new pid and mount namespaces)"
                                     : "fork");
  if (pid == 0) {
    // Syscalls only from here. Our copy of the read end goes first: then a
    // write end with no reader means the parent is gone already.
    close(r.get());
    close(go_w.get());
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    pollfd parent{w.get(), POLLOUT, 0};
    if (poll(&parent, 1, 0) == 1 && (parent.revents & POLLERR)) _exit(127);
    if (containment.own_user) {  // the maps are written, or the parent gave up (EOF either way)
      char c;
      while (read(go_r.get(), &c, 1) < 0 && errno == EINTR) {
      }
      if (getuid() != 0) _exit(127);
    }
    if (contained && mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(127);
    if (filtered && (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
                     syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &filter) != 0))
      _exit(127);
    dup2(null, 0);
    dup2(w.get(), 1);
    dup2(w.get(), 2);
    execve(a[0], a.data(), e.data());
    _exit(127);
  }
  w.reset();
  null_fd.reset();
  go_r.reset();
  if (containment.own_user) {
    try {
      write_proc(pid, "setgroups", "deny");
      write_proc(pid, "uid_map", uid_map);
      write_proc(pid, "gid_map", gid_map);
    } catch (...) {
      kill(pid, SIGKILL);
      while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      throw;
    }
  }
  go_w.reset();
  ProgramResult result;
  std::deque<std::string> tail;
  std::string pending;
  char buf[4096];
  auto line = [&](std::string l) {
    if (on_line) on_line(l);
    tail.push_back(std::move(l));
    if (tail.size() > keep_lines) tail.pop_front();
  };
  for (;;) {
    ssize_t n = read(r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    for (size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
      line(pending.substr(0, nl));
      pending.erase(0, nl + 1);
    }
  }
  if (!pending.empty()) line(pending);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.tail.assign(tail.begin(), tail.end());
  return result;
}

// [arg_start, arg_end) of this process: fields 48 and 49 of /proc/self/stat.
std::pair<char*, size_t> argv_area() {
  static std::pair<char*, size_t> area = [] {
    std::pair<char*, size_t> none{nullptr, 0};
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return none;
    char buf[2048];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return none;
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');  // comm may hold spaces
    if (!p) return none;
    unsigned long long start = 0, end = 0;
    int field = 2;
    for (const char* c = p + 1; *c; ++c) {
      if (*c != ' ') continue;
      ++field;
      if (field == 48) start = std::strtoull(c + 1, nullptr, 10);
      if (field == 49) end = std::strtoull(c + 1, nullptr, 10);
    }
    if (!start || end <= start) return none;
    return std::pair<char*, size_t>{reinterpret_cast<char*>(start), static_cast<size_t>(end - start)};
  }();
  return area;
}

bool pid_alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace ultari
