#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>

namespace ultari::test {

namespace {
std::string report_path() {
  static int n = 0;
  return "/tmp/ultari-test-report-" + std::to_string(getpid()) + "-" + std::to_string(n++) + ".json";
}
}  // namespace

Outcome ultari(const std::vector<std::string>& args, const Options& opt) {
  std::vector<std::string> argv = {opt.binary.empty() ? std::string(ULTARI_BIN) : opt.binary};
  bool has_report = false;
  for (const auto& a : args) has_report |= a == "--report";
  std::string report;
  for (const auto& a : args) {
    if (a == "--" && !has_report && !args.empty() && args[0] == "run") {
      report = report_path();
      argv.push_back("--report");
      argv.push_back(report);
      has_report = true;
    }
    argv.push_back(a);
  }
  if (!opt.as_user.empty()) {
    const passwd* pw = getpwnam(opt.as_user.c_str());
    if (!pw) throw std::runtime_error("no user " + opt.as_user);
    std::vector<std::string> wrap = {"/usr/bin/setpriv", "--reuid=" + std::to_string(pw->pw_uid),
                                     "--regid=" + std::to_string(pw->pw_gid), "--init-groups", "--reset-env", "--"};
    // setpriv resets the environment: opt.env goes in through env(1).
    if (!opt.env.empty()) {
      wrap.push_back("/usr/bin/env");
      wrap.insert(wrap.end(), opt.env.begin(), opt.env.end());
    }
    wrap.insert(wrap.end(), argv.begin(), argv.end());
    argv = wrap;
  }
  if (!opt.netns.empty()) {
    // nsenter, not `ip netns exec`: only the network namespace changes (no
    // remounted /sys hiding the cgroup mounts).
    std::vector<std::string> wrap = {"/usr/bin/nsenter", "--net=/run/netns/" + opt.netns, "--"};
    wrap.insert(wrap.end(), argv.begin(), argv.end());
    argv = wrap;
  }
  if (!report.empty()) unlink(report.c_str());

  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) throw std::runtime_error("pipe");
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  std::vector<std::string> envs = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=dumb"};
  if (opt.as_user.empty()) envs.push_back("HOME=/root");
  for (const auto& e : opt.env) envs.push_back(e);
  std::vector<char*> cenv;
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (!opt.stdin_data.empty()) {
    if (write(in[1], opt.stdin_data.data(), opt.stdin_data.size()) < 0) {
    }
  }
  close(in[1]);

  Outcome r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt.timeout_s);
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (left <= 0) {
      kill(pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, left) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[65536];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  int status = 0;
  waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (!report.empty() && exists(report)) {
    try {
      r.report = nlohmann::json::parse(read_file(report));
    } catch (...) {
    }
    unlink(report.c_str());
  }
  return r;
}

pid_t spawn_ultari(const std::vector<std::string>& args, int stdout_fd) {
  std::vector<std::string> argv = {ULTARI_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int out = stdout_fd >= 0 ? stdout_fd : open("/dev/null", O_WRONLY);
    dup2(out, 1);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  return pid;
}

Outcome sh(const std::string& script, const std::vector<std::string>& flags, const Options& opt) {
  std::vector<std::string> args = {"run"};
  args.insert(args.end(), flags.begin(), flags.end());
  args.insert(args.end(), {"--", "/bin/sh", "-c", script});
  return ultari(args, opt);
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/ultari-test-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
  path_ = tmpl;
  chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
  std::string cmd = "rm -rf '" + path_ + "'";
  if (std::system(cmd.c_str()) != 0) {
  }
}

void write_file(const std::string& path, const std::string& content, unsigned mode) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
  f.close();
  chmod(path.c_str(), mode);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool exists(const std::string& path) {
  struct stat st{};
  return lstat(path.c_str(), &st) == 0;
}

std::string Leftovers::describe() const {
  return "cgroups=" + std::to_string(cgroups) + " processes=" + std::to_string(processes) +
         " mounts=" + std::to_string(mounts);
}

Leftovers leftovers() {
  Leftovers l;
  if (DIR* root = opendir("/sys/fs/cgroup")) {
    std::vector<std::string> bases = {"/sys/fs/cgroup"};
    while (dirent* e = readdir(root))
      if (e->d_name[0] != '.') bases.push_back(std::string("/sys/fs/cgroup/") + e->d_name);
    closedir(root);
    for (const auto& b : bases)
      if (DIR* d = opendir(b.c_str())) {
        while (dirent* e = readdir(d))
          if (std::strncmp(e->d_name, "ultari-", 7) == 0) ++l.cgroups;
        closedir(d);
      }
  }
  if (DIR* proc = opendir("/proc")) {
    while (dirent* e = readdir(proc)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      std::string base = std::string("/proc/") + e->d_name;
      struct stat st{};
      if (stat(base.c_str(), &st) != 0) continue;
      // A zombie holds no resource but its pid; this host's pid 1 does not
      // reap the orphans of SIGKILLed supervisors, so zombies are not counted.
      std::string stat_line = read_file(base + "/stat");
      auto paren = stat_line.rfind(')');
      if (paren != std::string::npos && stat_line.compare(paren + 2, 1, "Z") == 0) continue;
      if (st.st_uid >= 2000000000u) {
        ++l.processes;
        continue;
      }
      std::string comm = read_file(base + "/comm");
      if ((comm == "ultari\n" || comm == "ultari-init\n" || comm == "ultari-net\n") && std::atoi(e->d_name) != getpid())
        ++l.processes;
    }
    closedir(proc);
  }
  std::string mounts = read_file("/proc/self/mountinfo");
  for (size_t pos = 0; (pos = mounts.find("ultari", pos)) != std::string::npos; ++pos) ++l.mounts;
  return l;
}

std::vector<pid_t> pids_matching(const std::string& needle) {
  std::vector<pid_t> pids;
  if (DIR* proc = opendir("/proc")) {
    while (dirent* e = readdir(proc)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      std::string cmd = read_file(std::string("/proc/") + e->d_name + "/cmdline");
      for (auto& c : cmd)
        if (c == '\0') c = ' ';
      if (cmd.find(needle) != std::string::npos && std::atoi(e->d_name) != getpid()) pids.push_back(std::atoi(e->d_name));
    }
    closedir(proc);
  }
  return pids;
}

int processes_matching(const std::string& needle) { return static_cast<int>(pids_matching(needle).size()); }

const char* const kPySyscall = R"PY(
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    print(name, 0 if r >= 0 else ctypes.get_errno())
)PY";

std::map<std::string, int> parse_pairs(const std::string& out) {
  std::map<std::string, int> m;
  std::istringstream in(out);
  std::string name;
  int v;
  while (in >> name >> v) m[name] = v;
  return m;
}

std::string allow_all_profile(const TempDir& dir, bool foreign_abis) {
  std::string p = dir / "allow.json";
  write_file(p, foreign_abis ? R"({"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"]})"
                             : R"({"defaultAction":"SCMP_ACT_ALLOW"})");
  return p;
}

std::string helpers_dir() { return ULTARI_TEST_HELPERS; }

bool host_has_i386() {
  static const bool has = [] {
    std::string cmd = helpers_dir() + "/abi_probe i386 >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
  }();
  return has;
}

const char* const kRootlessUser = "ultari-rootless";

Options rootless_options() {
  // Removed when the test program exits.
  static std::unique_ptr<TempDir> bin_dir = [] {
    if (!getpwnam(kRootlessUser)) {
      std::string cmd = std::string("useradd --create-home --shell /bin/sh ") + kRootlessUser + " 2>/dev/null";
      if (std::system(cmd.c_str()) != 0) throw std::runtime_error("cannot create the test user");
    }
    // Subordinate ids (useradd gives them where /etc/subuid exists): the
    // user's image stores keep owners in them.
    std::string user = kRootlessUser;
    std::string subids = "grep -q '^" + user + ":' /etc/subuid && grep -q '^" + user + ":' /etc/subgid || usermod " +
                         "--add-subuids 1000000000-1000065535 --add-subgids 1000000000-1000065535 " + user;
    if (std::system(subids.c_str()) != 0) throw std::runtime_error("cannot give the test user subordinate ids");
    // A copy of the binary any user can execute, wherever the build lives.
    auto dir = std::make_unique<TempDir>();
    // Its modules (TLS, archives) are looked up next to it.
    std::string bin = ULTARI_BIN;
    std::string build = bin.substr(0, bin.rfind('/'));
    std::string cmd = "cp " + bin + " " + build + "/libultari_tls.so " + build + "/libultari_archive.so " + dir->path();
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("cannot copy ultari");
    chmod(dir->path().c_str(), 0755);
    chmod((*dir / "ultari").c_str(), 0755);
    return dir;
  }();
  Options o;
  o.as_user = kRootlessUser;
  o.binary = *bin_dir / "ultari";
  return o;
}

// Sandboxes of process pid that have a cgroup: distinct names
// ultari-<pid>-* over all hierarchies.
int groups_of(pid_t pid) {
  std::string prefix = "ultari-" + std::to_string(pid) + "-";
  std::set<std::string> names;
  auto scan = [&](const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    while (dirent* e = readdir(d))
      if (std::string(e->d_name).rfind(prefix, 0) == 0) names.insert(e->d_name);
    closedir(d);
  };
  scan("/sys/fs/cgroup");
  DIR* root = opendir("/sys/fs/cgroup");
  if (!root) return 0;
  while (dirent* e = readdir(root))
    if (e->d_name[0] != '.') scan(std::string("/sys/fs/cgroup/") + e->d_name);
  closedir(root);
  return static_cast<int>(names.size());
}

Outcome host(const std::string& script) {
  Outcome o;
  FILE* p = popen(script.c_str(), "r");
  char buf[4096];
  size_t n;
  while (p && (n = fread(buf, 1, sizeof buf, p)) > 0) o.out.append(buf, n);
  o.status = p ? pclose(p) : -1;
  return o;
}

std::string test_image_store() {
  std::string bin = ULTARI_BIN;
  return bin.substr(0, bin.rfind('/')) + "/test-images";
}

Options test_image_options(int timeout_s) {
  Options o;
  o.env.push_back("ULTARI_DATA_DIR=" + test_image_store());
  o.timeout_s = timeout_s;
  return o;
}

std::string ensure_debian_test_image() {
  std::string dir = test_image_store();
  mkdir(dir.c_str(), 0755);
  int fd = open((dir + "/.build-lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return "cannot open " + dir + "/.build-lock";
  while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
  }
  std::string error;
  if (ultari({"image", "inspect", "minbase-kmod"}, test_image_options()).status != 0) {
    Outcome b = ultari({"image", "build", "minbase-kmod", "--debian", "bookworm", "--variant", "minbase", "--include",
                        "kmod", "-q"},
                       test_image_options(900));
    if (b.status != 0) error = "building the Debian test image failed: " + b.err;
  }
  close(fd);
  return error;
}

bool wait_for_text(const std::string& log, pid_t pid, const std::string& text) {
  for (int i = 0; i < 1200 && exists("/proc/" + std::to_string(pid)); ++i) {
    if (read_file(log).find(text) != std::string::npos) return true;
    usleep(250000);
  }
  return read_file(log).find(text) != std::string::npos;
}

}  // namespace ultari::test
