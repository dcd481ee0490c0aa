// A private "small internet" for the network tests: two network namespaces
// joined by a veth, real servers (HTTP, HTTPS, DNS, UDP echo) on documentation
// addresses, and a way to run `ultari` on the host side of it. No mocks: the
// sandbox's packets cross real namespaces to real sockets, and the servers log
// what arrived so a test can prove what did (or did not) get out.
//
//   H  "host side" (ultari runs here)      I  "internet"
//   lab0 203.0.113.2/24, 2001:db8::2/64 -- net0 203.0.113.1/24, 2001:db8::1/64
//   default via 203.0.113.1                   203.0.113.10  allowed.test, www.allowed.test
//   10.99.0.0/24 via 203.0.113.1              203.0.113.11  other.test, evil.allowed.test
//   default v6 via 2001:db8::1                10.99.0.10    private.test (on lo)
//                                             203.0.113.53  DNS (udp/53)
//                                             203.0.113.1   proxy :3128, :3129 (auth)
//
// Every server address has HTTP :80 and HTTPS :443 (a per-lab CA signs one
// certificate for all the names and addresses); 203.0.113.10 also HTTP :8080;
// 203.0.113.10 and [2001:db8::1] a UDP echo on :9999. A corporate-style
// HTTP proxy (CONNECT to 443 only, plain HTTP in absolute form) listens on
// 203.0.113.1:3128, and on :3129 wanting Basic credentials. The scripts live
// in tests/data/netlab/ (servers.py, dns_server.py, upstream_proxy.py,
// mkcerts.py, probe.py).
//
// Namespaces are named ulab<pid>h / ulab<pid>i (ulab<pid>_<n>h/i for further
// labs in the same process); the destructor kills every process still in
// them, deletes them and the lab's temp dir. Servers die with the test
// process (PR_SET_PDEATHSIG), and a new lab removes labs whose process is gone.
#pragma once
#include <sys/types.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"

namespace ultari::test {

class NetLab {
 public:
  static constexpr const char* kHostAddr = "203.0.113.2";
  static constexpr const char* kGatewayAddr = "203.0.113.1";
  static constexpr const char* kAllowedAddr = "203.0.113.10";  // allowed.test, www.allowed.test
  static constexpr const char* kOtherAddr = "203.0.113.11";    // other.test, evil.allowed.test
  static constexpr const char* kPrivateAddr = "10.99.0.10";    // private.test
  static constexpr const char* kDnsAddr = "203.0.113.53";
  static constexpr const char* kInet6Addr = "2001:db8::1";
  static constexpr const char* kHost6Addr = "2001:db8::2";
  static constexpr int kUdpEchoPort = 9999;
  static constexpr const char* kProxyAddr = "203.0.113.1";
  static constexpr int kProxyPort = 3128;
  static constexpr int kProxyAuthPort = 3129;
  static constexpr const char* kProxyCredentials = "lab:proxy-password-1";

  // Builds the lab and waits (a few seconds at most) until every server
  // answers; throws std::runtime_error, leaving nothing behind, if it cannot.
  NetLab();
  ~NetLab();
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;

  const std::string& host_ns() const { return host_ns_; }  // H
  const std::string& inet_ns() const { return inet_ns_; }  // I
  const std::string& dir() const { return dir_; }          // the lab's temp dir (logs, keys)
  const std::string& ca_cert() const { return ca_cert_; }  // PEM of the lab CA
  // tests/data/netlab (probe.py etc.) on the host.
  static std::string data_dir();

  // Flags binding the lab CA at /ca.pem and tests/data/netlab at /lab into a
  // sandbox (so `/usr/bin/python3 /lab/probe.py ...` runs inside).
  std::vector<std::string> binds() const;

  // `ultari ARGS` / `ultari run FLAGS -- sh -c SCRIPT` with the network
  // namespace switched to H and nothing else changed.
  Options options(Options base = {}) const;
  Outcome ultari(const std::vector<std::string>& args, Options opt = {}) const;
  Outcome sh(const std::string& script, const std::vector<std::string>& flags = {}, Options opt = {}) const;

  // Any command (argv[0] looked up in PATH) run straight in H: the negative
  // controls. H has no resolver: curl there needs curl_resolve().
  Outcome in_host(const std::vector<std::string>& argv, int timeout_s = 30) const;
  Outcome host_sh(const std::string& script, int timeout_s = 30) const;
  // probe.py ARGS run in H; its stdout.
  std::string host_probe(const std::vector<std::string>& args) const;
  // curl --resolve options mapping every lab name (ports 80, 443, 8080).
  static std::string curl_resolve();

  // What the servers received since the lab started (or clear_logs()).
  std::vector<nlohmann::json> requests() const;  // HTTP(S) requests, see servers.py
  std::vector<std::string> dns_log() const;      // "name TYPE"
  std::vector<std::string> dns_queries() const;  // the names only
  std::vector<std::string> udp_log() const;
  std::vector<std::string> icmp_log() const;
  std::vector<std::string> tls_errors() const;   // failed handshakes at the servers
  std::vector<nlohmann::json> proxy_log() const; // requests the proxy saw, see upstream_proxy.py
  void clear_logs() const;

  // A corporate network (--net-upstream tests): routes in H that drop
  // everything but the proxy (the lab's DNS included), or back to normal.
  Outcome corporate_network(bool on) const;
  // Processes in H after waiting up to 2 s for them to end.
  std::vector<pid_t> processes_left_in_host() const;

  // Processes whose network namespace is H (ultari and whatever it started);
  // zombies are not counted.
  std::vector<pid_t> processes_in_host() const;
  // Interface names in H (lo, lab0 when nothing was added).
  std::vector<std::string> host_links() const;
  // `nft list ruleset` in H (empty when none).
  std::string host_ruleset() const;

 private:
  void build();
  void cleanup() noexcept;
  std::vector<std::string> lines(const std::string& file) const;

  std::string host_ns_, inet_ns_, dir_, ca_cert_;
  std::vector<pid_t> servers_;
};

// Shell lines for scripts in a sandbox of the lab, and how to read what
// they print (network_test.cpp, network_upstream_test.cpp).
namespace lab {
// One line "LABEL rc=N BODY code=HTTP" for a curl (curl's own errors
// included; the lab CA at /ca.pem). `args` is shell text.
std::string fetch(const std::string& label, const std::string& args);
// The transparent path: no proxy, whatever the environment says.
std::string direct(const std::string& label, const std::string& args);
// One line "LABEL <probe.py output>".
std::string probe(const std::string& label, const std::string& args);
// A lab server answered (its body names it), or nothing did.
bool served(const std::string& line, const std::string& server);
bool blocked(const std::string& line);
}  // namespace lab

// "LABEL rest" lines (what scripts in the sandbox print) by label.
std::map<std::string, std::string> by_label(const std::string& out);
bool has(const std::string& s, const std::string& part);

// A test suite sharing one lab, built once for the suite; every test
// starts with the servers' logs cleared and a temp dir of its own.
class LabSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  void SetUp() override;
  // The JSON lines of the audit log at `path`.
  static std::vector<nlohmann::json> audit_lines(const std::string& path);
  // The first line of kind `kind` in that log, or null.
  static std::optional<nlohmann::json> first_of(const std::string& path, const std::string& kind);
  // Every request the lab's servers received, one JSON object a line.
  static std::string arrived();

  static NetLab* lab_;
  static std::string lab_error_;
  TempDir dir_;
};

// A LabSuite whose host side is a corporate network for every test
// (NetLab::corporate_network): only the proxy is reachable. Each test ends
// with the fence lifted and nothing of ultari left on the host side.
class CorporateLabSuite : public LabSuite {
 protected:
  void SetUp() override;
  void TearDown() override;
};

// Processes whose network namespace is the one mounted at `ns_path`.
std::vector<pid_t> pids_in_netns(const std::string& ns_path);

}  // namespace ultari::test
