#include "netlab.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace ultari::test {

namespace {

const char* const kPython = "/usr/bin/python3";  // the PATH python3 is a pyenv shim

int run_shell(const std::string& script, std::string* output = nullptr) {
  Options o;
  o.binary = "/bin/sh";
  o.timeout_s = 20;
  Outcome r = ultari::test::ultari({"-c", script}, o);
  if (output) *output = r.out + r.err;
  return r.status;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

bool is_zombie(pid_t pid) {
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  return stat.empty() || (paren != std::string::npos && stat.compare(paren + 2, 1, "Z") == 0);
}

// SIGKILLs every process in the netns mounted at ns_path and waits (bounded)
// until they are gone or zombies.
void kill_netns_processes(const std::string& ns_path) {
  std::vector<pid_t> killed;
  for (int round = 0; round < 100; ++round) {
    auto pids = pids_in_netns(ns_path);
    if (pids.empty()) break;
    for (pid_t p : pids) kill(p, SIGKILL);
    killed.insert(killed.end(), pids.begin(), pids.end());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Dead now (or zombies); reap those that are this process's children.
  for (pid_t p : killed) waitpid(p, nullptr, WNOHANG);
}

void delete_netns(const std::string& name) {
  std::string path = "/run/netns/" + name;
  if (!exists(path)) return;
  kill_netns_processes(path);
  run_shell("ip netns del " + quote(name) + " 2>/dev/null || { umount " + quote(path) + "; rm -f " + quote(path) +
            "; } 2>/dev/null");
}

// Labs of processes that are gone (a SIGKILLed test binary): netns and dirs.
void sweep_stale_labs() {
  std::vector<std::string> stale;
  if (DIR* d = opendir("/run/netns")) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("ulab", 0) != 0) continue;
      pid_t pid = std::atoi(n.c_str() + 4);
      if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(n);
    }
    closedir(d);
  }
  for (const auto& n : stale) delete_netns(n);
  if (DIR* d = opendir("/tmp")) {
    std::vector<std::string> dirs;
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("ulab-", 0) != 0) continue;
      pid_t pid = std::atoi(n.c_str() + 5);
      if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) dirs.push_back("/tmp/" + n);
    }
    closedir(d);
    for (const auto& p : dirs) run_shell("rm -rf " + quote(p));
  }
}

std::atomic<int> lab_counter{0};

}  // namespace

std::vector<pid_t> pids_in_netns(const std::string& ns_path) {
  std::vector<pid_t> pids;
  struct stat ns{};
  if (stat(ns_path.c_str(), &ns) != 0) return pids;
  if (DIR* proc = opendir("/proc")) {
    while (dirent* e = readdir(proc)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      struct stat st{};
      std::string p = std::string("/proc/") + e->d_name + "/ns/net";
      if (stat(p.c_str(), &st) != 0 || st.st_ino != ns.st_ino || st.st_dev != ns.st_dev) continue;
      pid_t pid = std::atoi(e->d_name);
      if (!is_zombie(pid)) pids.push_back(pid);
    }
    closedir(proc);
  }
  return pids;
}

std::string NetLab::data_dir() { return std::string(ULTARI_TEST_DATA) + "/netlab"; }

NetLab::NetLab() {
  sweep_stale_labs();
  int n = lab_counter++;
  std::string base = "ulab" + std::to_string(getpid()) + (n ? "_" + std::to_string(n) : "");
  host_ns_ = base + "h";
  inet_ns_ = base + "i";
  try {
    build();
  } catch (...) {
    cleanup();
    throw;
  }
}

NetLab::~NetLab() { cleanup(); }

void NetLab::build() {
  std::string tmpl = "/tmp/ulab-" + std::to_string(getpid()) + "-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("netlab: mkdtemp");
  dir_ = tmpl;
  chmod(dir_.c_str(), 0755);

  const std::string H = quote(host_ns_), I = quote(inet_ns_);
  std::string script = "set -e\n"
                       "ip netns add " + H + "\n"
                       "ip netns add " + I + "\n"
                       "ip -n " + H + " link add lab0 type veth peer name net0 netns " + I + "\n"
                       "ip -n " + H + " link set lo up\n"
                       "ip -n " + I + " link set lo up\n"
                       "ip -n " + H + " addr add 203.0.113.2/24 dev lab0\n"
                       "ip -n " + H + " -6 addr add 2001:db8::2/64 dev lab0 nodad\n"
                       "ip -n " + I + " addr add 203.0.113.1/24 dev net0\n"
                       "ip -n " + I + " addr add 203.0.113.10/32 dev net0\n"
                       "ip -n " + I + " addr add 203.0.113.11/32 dev net0\n"
                       "ip -n " + I + " addr add 203.0.113.53/32 dev net0\n"
                       "ip -n " + I + " addr add 10.99.0.10/32 dev lo\n"
                       "ip -n " + I + " -6 addr add 2001:db8::1/64 dev net0 nodad\n"
                       "ip -n " + H + " link set lab0 up\n"
                       "ip -n " + I + " link set net0 up\n"
                       "ip -n " + H + " route add default via 203.0.113.1\n"
                       "ip -n " + H + " route add 10.99.0.0/24 via 203.0.113.1\n"
                       "ip -n " + H + " -6 route add default via 2001:db8::1\n"
                       // Until the veth carries packets a first SYN is lost (1 s retransmit).
                       "for i in $(seq 200); do\n"
                       "  ip -n " + H + " -o link show lab0 | grep -q 'state UP' && "
                       "ip -n " + I + " -o link show net0 | grep -q 'state UP' && break; sleep 0.01\n"
                       "done\n"
                       "exec " + std::string(kPython) + " " + quote(data_dir() + "/mkcerts.py") + " " + quote(dir_) + "\n";
  std::string out;
  if (run_shell(script, &out) != 0) throw std::runtime_error("netlab: setup failed: " + out);
  ca_cert_ = dir_ + "/ca.pem";
  for (const auto& f : {"requests.jsonl", "dns.log", "udp.log", "icmp.log", "tls_errors.log", "proxy.jsonl"})
    write_file(dir_ + "/" + f, "");

  // The servers, in I, dying with this process.
  std::string inet_path = "/run/netns/" + inet_ns_;
  auto start = [&](const std::vector<std::string>& args, const std::string& log) {
    std::vector<std::string> argv = {kPython};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::string log_path = dir_ + "/" + log;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("netlab: fork");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      int ns = open(inet_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) _exit(1);
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
      dup2(null, 0);
      dup2(fd, 1);
      dup2(fd, 2);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    servers_.push_back(pid);
  };
  start({data_dir() + "/servers.py", dir_}, "servers.out");
  start({data_dir() + "/dns_server.py", kDnsAddr, "53", dir_ + "/dns.log"}, "dns.out");
  start({data_dir() + "/upstream_proxy.py", dir_, kProxyAddr, std::to_string(kProxyPort)}, "proxy.out");
  start({data_dir() + "/upstream_proxy.py", dir_, kProxyAddr, std::to_string(kProxyAuthPort), kProxyCredentials},
        "proxy.out");

  // Ready when servers.py has bound everything and every server answers from H.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(8);
  std::string last;
  while (true) {
    for (pid_t p : servers_)
      if (waitpid(p, nullptr, WNOHANG) == p)
        throw std::runtime_error("netlab: a server died: " + read_file(dir_ + "/servers.out") +
                                 read_file(dir_ + "/dns.out"));
    if (exists(dir_ + "/ready") && exists(dir_ + "/proxy-" + std::to_string(kProxyPort) + ".ready") &&
        exists(dir_ + "/proxy-" + std::to_string(kProxyAuthPort) + ".ready")) {
      Outcome r = host_sh("LAB_CA=" + quote(ca_cert_) + " " + kPython + " " + quote(data_dir() + "/probe.py") + " check", 10);
      if (r.status == 0) break;
      last = r.out + r.err;
    }
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("netlab: servers not answering: " + last + read_file(dir_ + "/servers.out") +
                               read_file(dir_ + "/dns.out"));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  clear_logs();  // the readiness probe is not a test's traffic
}

void NetLab::cleanup() noexcept {
  try {
    for (pid_t p : servers_) kill(p, SIGKILL);
    for (pid_t p : servers_) waitpid(p, nullptr, 0);
    servers_.clear();
    if (!host_ns_.empty()) delete_netns(host_ns_);
    if (!inet_ns_.empty()) delete_netns(inet_ns_);
    if (!dir_.empty()) run_shell("rm -rf " + quote(dir_));
    dir_.clear();
  } catch (...) {
  }
}

std::vector<std::string> NetLab::binds() const {
  return {"--ro-bind", ca_cert_ + ":/ca.pem", "--ro-bind", data_dir() + ":/lab"};
}

Options NetLab::options(Options base) const {
  base.netns = host_ns_;
  return base;
}

Outcome NetLab::ultari(const std::vector<std::string>& args, Options opt) const {
  return ultari::test::ultari(args, options(std::move(opt)));
}

Outcome NetLab::sh(const std::string& script, const std::vector<std::string>& flags, Options opt) const {
  return ultari::test::sh(script, flags, options(std::move(opt)));
}

Outcome NetLab::in_host(const std::vector<std::string>& argv, int timeout_s) const {
  if (argv.empty()) throw std::invalid_argument("in_host: empty argv");
  // The harness runner with another binary: nsenter looks argv[0] up in PATH.
  Options o;
  o.binary = argv[0];
  o.netns = host_ns_;
  o.timeout_s = timeout_s;
  return ultari::test::ultari(std::vector<std::string>(argv.begin() + 1, argv.end()), o);
}

Outcome NetLab::host_sh(const std::string& script, int timeout_s) const {
  return in_host({"/bin/sh", "-c", script}, timeout_s);
}

std::string NetLab::host_probe(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {kPython, data_dir() + "/probe.py"};
  argv.insert(argv.end(), args.begin(), args.end());
  return in_host(argv).out;
}

std::string NetLab::curl_resolve() {
  std::string s;
  for (const auto& [name, addr] : std::vector<std::pair<std::string, std::string>>{
           {"allowed.test", kAllowedAddr},
           {"www.allowed.test", kAllowedAddr},
           {"evil.allowed.test", kOtherAddr},
           {"other.test", kOtherAddr},
           {"private.test", kPrivateAddr}})
    for (const char* port : {"80", "443", "8080"}) s += " --resolve " + name + ":" + port + ":" + addr;
  return s.substr(1);
}

std::vector<std::string> NetLab::lines(const std::string& file) const {
  std::vector<std::string> v;
  std::istringstream in(read_file(dir_ + "/" + file));
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

std::vector<nlohmann::json> NetLab::requests() const {
  std::vector<nlohmann::json> v;
  for (const auto& l : lines("requests.jsonl")) {
    try {
      v.push_back(nlohmann::json::parse(l));
    } catch (...) {
    }
  }
  return v;
}

std::vector<std::string> NetLab::dns_log() const { return lines("dns.log"); }

std::vector<std::string> NetLab::dns_queries() const {
  std::vector<std::string> v;
  for (const auto& l : dns_log())
    if (l[0] != '?') v.push_back(l.substr(0, l.find(' ')));
  return v;
}

std::vector<std::string> NetLab::udp_log() const { return lines("udp.log"); }
std::vector<std::string> NetLab::icmp_log() const { return lines("icmp.log"); }
std::vector<std::string> NetLab::tls_errors() const { return lines("tls_errors.log"); }

std::vector<nlohmann::json> NetLab::proxy_log() const {
  std::vector<nlohmann::json> out;
  for (const auto& l : lines("proxy.jsonl"))
    if (!l.empty()) out.push_back(nlohmann::json::parse(l));
  return out;
}

void NetLab::clear_logs() const {
  for (const auto& f : {"requests.jsonl", "dns.log", "udp.log", "icmp.log", "tls_errors.log", "proxy.jsonl"})
    truncate((dir_ + "/" + f).c_str(), 0);
}

Outcome NetLab::corporate_network(bool on) const {
  return host_sh(on ? "set -e; for a in 203.0.113.10 203.0.113.11 203.0.113.53; do ip route add blackhole $a/32; done; "
                      "ip route replace blackhole 10.99.0.0/24; ip route del default"
                    : "set -e; for a in 203.0.113.10 203.0.113.11 203.0.113.53; do ip route del blackhole $a/32; done; "
                      "ip route replace 10.99.0.0/24 via 203.0.113.1; ip route add default via 203.0.113.1");
}

std::vector<pid_t> NetLab::processes_left_in_host() const {
  std::vector<pid_t> left;
  for (int i = 0; i < 100 && !(left = processes_in_host()).empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return left;
}

std::vector<pid_t> NetLab::processes_in_host() const { return pids_in_netns("/run/netns/" + host_ns_); }

std::vector<std::string> NetLab::host_links() const {
  std::vector<std::string> v;
  std::istringstream in(in_host({"ip", "-o", "link", "show"}).out);
  for (std::string l; std::getline(in, l);) {
    // "2: lab0@if2: <...": the name up to '@' or ':'.
    auto a = l.find(": ");
    if (a == std::string::npos) continue;
    auto b = l.find_first_of("@:", a + 2);
    v.push_back(l.substr(a + 2, b - a - 2));
  }
  return v;
}

std::string NetLab::host_ruleset() const { return in_host({"nft", "list", "ruleset"}).out; }

namespace lab {
std::string fetch(const std::string& label, const std::string& args) {
  return "r=$(curl -sS --connect-timeout 3 --max-time 5 --cacert /ca.pem -w ' code=%{http_code}' " + args +
         " 2>&1); rc=$?; echo \"" + label + " rc=$rc $(printf %s \"$r\" | tr '\\n\\r' '  ')\"\n";
}
std::string direct(const std::string& label, const std::string& args) { return fetch(label, "--noproxy '*' " + args); }
std::string probe(const std::string& label, const std::string& args) {
  return "echo \"" + label + " $(/usr/bin/python3 /lab/probe.py " + args + " 2>&1 | tr '\\n' ' ')\"\n";
}
bool served(const std::string& line, const std::string& server) { return has(line, "lab server=" + server + " "); }
bool blocked(const std::string& line) { return !line.empty() && !has(line, "lab server="); }
}  // namespace lab

std::map<std::string, std::string> by_label(const std::string& out) {
  std::map<std::string, std::string> m;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);) {
    auto sp = l.find(' ');
    m[l.substr(0, sp)] = sp == std::string::npos ? "" : l.substr(sp + 1);
  }
  return m;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

NetLab* LabSuite::lab_ = nullptr;
std::string LabSuite::lab_error_;

void LabSuite::SetUpTestSuite() {
  try {
    lab_ = new NetLab();
  } catch (const std::exception& e) {
    lab_error_ = e.what();
  }
}

void LabSuite::TearDownTestSuite() {
  delete lab_;
  lab_ = nullptr;
}

void LabSuite::SetUp() {
  ASSERT_NE(lab_, nullptr) << "the lab could not be built: " << lab_error_;
  lab_->clear_logs();
}

void CorporateLabSuite::SetUp() {
  LabSuite::SetUp();
  if (!lab_) return;
  Outcome fw = lab_->corporate_network(true);
  ASSERT_EQ(fw.status, 0) << fw.out << fw.err;
}

void CorporateLabSuite::TearDown() {
  if (!lab_) return;
  Outcome open = lab_->corporate_network(false);
  EXPECT_EQ(open.status, 0) << open.out << open.err;
  EXPECT_TRUE(lab_->processes_left_in_host().empty()) << "processes left in the host-side netns";
  EXPECT_EQ(lab_->host_ruleset(), "");
}

std::vector<nlohmann::json> LabSuite::audit_lines(const std::string& path) {
  std::vector<nlohmann::json> v;
  std::istringstream in(read_file(path));
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(nlohmann::json::parse(l));
  return v;
}

std::optional<nlohmann::json> LabSuite::first_of(const std::string& path, const std::string& kind) {
  for (auto& e : audit_lines(path))
    if (e["kind"] == kind) return e;
  return std::nullopt;
}

std::string LabSuite::arrived() {
  std::string all;
  for (const auto& r : lab_->requests()) all += r.dump() + "\n";
  return all;
}

}  // namespace ultari::test
