// Network egress (issue 3): `--net none|allow=NAMES|open`, `--net-policy`,
// the DNS answered by Ultari, the transparent and explicit proxies, the
// audit log and the report. Every sandbox runs with its network namespace's
// parent switched to the lab's host side (NetLab), so its traffic reaches
// only the lab's private internet, whose servers log what arrived.
//
// Negative controls: the same request made straight from the lab's host side
// works (the lab serves it), and the same request with the name allowed works
// from the sandbox (the probe can succeed), so a "blocked" is the policy's
// doing, not a broken probe.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

using lab::blocked;
using lab::direct;
using lab::fetch;
using lab::probe;
using lab::served;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

struct Want {
  std::string kind, name, decision, reason;
};

class Network : public LabSuite {
 protected:
  void SetUp() override {
    LabSuite::SetUp();
    audit_path_ = dir_ / "audit.jsonl";
  }

  void TearDown() override {
    if (!lab_) return;
    // Nothing of ultari may outlive it on the host side: no process (proxy,
    // resolver), no interface, no firewall rule.
    std::vector<pid_t> left;
    for (int i = 0; i < 100; ++i) {
      left = lab_->processes_in_host();
      if (left.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::string names;
    for (pid_t p : left) names += std::to_string(p) + ":" + read_file("/proc/" + std::to_string(p) + "/comm");
    EXPECT_TRUE(left.empty()) << "processes left in the host-side netns: " << names;
    EXPECT_EQ(lab_->host_links(), (std::vector<std::string>{"lo", "lab0"}));
    EXPECT_EQ(lab_->host_ruleset(), "");
  }

  // ultari run NET... [common flags] -- sh -c SCRIPT, with the lab's resolver,
  // the audit log in this test's dir, and /ca.pem + /lab bound in.
  Outcome run(const std::vector<std::string>& net, const std::string& script) {
    std::vector<std::string> flags = net;
    // No --inspect-tls: TLS is not terminated, the sandbox's curl checks
    // the lab CA itself (network_tls_test.cpp covers inspection).
    flags.insert(flags.end(), {"--net-resolver", NetLab::kDnsAddr, "--audit", audit_path_});
    for (const auto& b : lab_->binds()) flags.push_back(b);
    return lab_->sh(script, flags);
  }
  // Without the egress flags (for --net none and the default).
  Outcome run_plain(const std::vector<std::string>& net, const std::string& script) {
    std::vector<std::string> flags = net;
    for (const auto& b : lab_->binds()) flags.push_back(b);
    return lab_->sh(script, flags);
  }

  std::string policy(const std::string& toml) {
    static int n = 0;
    std::string p = dir_ / ("policy" + std::to_string(n++) + ".toml");
    write_file(p, toml);
    return p;
  }

  std::vector<json> audit() const {
    std::vector<json> v;
    std::istringstream in(read_file(audit_path_));
    for (std::string l; std::getline(in, l);) {
      if (l.empty()) continue;
      try {
        v.push_back(json::parse(l));
      } catch (...) {
        v.push_back(json{{"unparsable", l}});
      }
    }
    return v;
  }
  static bool matches(const json& e, const Want& w) {
    auto field = [&](const char* k) { return e.contains(k) && e[k].is_string() ? e[k].get<std::string>() : std::string(); };
    if (!w.kind.empty() && field("kind") != w.kind) return false;
    if (!w.name.empty() && lower(field("name")) != w.name) return false;
    if (!w.decision.empty() && field("decision") != w.decision) return false;
    if (!w.reason.empty() && field("reason") != w.reason) return false;
    return true;
  }
  bool audited(const Want& w) const {
    for (const auto& e : audit())
      if (matches(e, w)) return true;
    return false;
  }
  std::string audit_dump() const { return "audit log:\n" + read_file(audit_path_); }

  // Requests the lab's servers got for `server` (or whose Host is `host`).
  int requests_to(const std::string& server) const {
    int n = 0;
    for (const auto& r : lab_->requests()) n += r["server"] == server;
    return n;
  }
  int requests_with_host(const std::string& host) const {
    int n = 0;
    for (const auto& r : lab_->requests()) n += lower(r["host"].get<std::string>()).rfind(host, 0) == 0;
    return n;
  }
  std::string seen() const {
    std::string s = "lab saw:\n";
    for (const auto& r : lab_->requests()) s += r.dump() + "\n";
    return s;
  }
  bool dns_saw(const std::string& name) const {
    auto q = lab_->dns_queries();
    return std::find(q.begin(), q.end(), name) != q.end();
  }
  // curl straight from the lab's host side.
  std::string host_curl(const std::string& args) const {
    Outcome r = lab_->host_sh("curl -sS --max-time 5 --cacert '" + lab_->ca_cert() + "' " + NetLab::curl_resolve() + " " + args +
                              " 2>&1");
    return r.out;
  }

  std::string audit_path_;
};


// ---------------------------------------------------------------------------
// The lab itself: everything the sandbox tests rely on works from H.

TEST_F(Network, LabServesEverythingFromTheHostSide) {
  EXPECT_TRUE(served(host_curl("http://allowed.test/"), "allowed.test"));
  std::string tls = host_curl("https://www.allowed.test/p?q=1");
  EXPECT_TRUE(served(tls, "allowed.test")) << tls;
  EXPECT_TRUE(has(tls, "sni=www.allowed.test") && has(tls, "host=www.allowed.test")) << tls;
  EXPECT_TRUE(served(host_curl("https://other.test/"), "other.test"));
  EXPECT_TRUE(served(host_curl("https://evil.allowed.test/"), "other.test"));
  EXPECT_TRUE(served(host_curl("https://private.test/"), "private.test"));
  EXPECT_TRUE(served(host_curl("http://allowed.test:8080/"), "allowed.test"));
  EXPECT_TRUE(served(host_curl("-6 'http://[2001:db8::1]/'"), "v6.test"));
  // Servers log what arrived, body included.
  lab_->clear_logs();
  host_curl("-X POST -H 'X-Api-Key: sekrit' --data-binary 'hello=world' http://allowed.test/upload");
  auto reqs = lab_->requests();
  ASSERT_EQ(reqs.size(), 1u) << seen();
  EXPECT_EQ(reqs[0]["method"], "POST");
  EXPECT_EQ(reqs[0]["path"], "/upload");
  EXPECT_EQ(reqs[0]["host"], "allowed.test");
  EXPECT_EQ(reqs[0]["body"], "hello=world");
  EXPECT_EQ(reqs[0]["body_len"], 11);
  EXPECT_EQ(reqs[0]["peer"], NetLab::kHostAddr);
  EXPECT_NE(reqs[0].dump().find("sekrit"), std::string::npos);
  // The certificate is checked: without the lab CA curl refuses.
  EXPECT_FALSE(served(lab_->host_sh("curl -sS --max-time 5 " + NetLab::curl_resolve() + " https://allowed.test/ 2>&1").out,
                      "allowed.test"));
  // DNS, UDP, ICMP, IPv6.
  EXPECT_EQ(lab_->host_probe({"dns", "allowed.test"}), "dns rcode=0 answers=203.0.113.10\n");
  EXPECT_EQ(lab_->host_probe({"dns", "Other.Test."}), "dns rcode=0 answers=203.0.113.11\n");
  EXPECT_EQ(lab_->host_probe({"dns", "private.test"}), "dns rcode=0 answers=10.99.0.10\n");
  EXPECT_EQ(lab_->host_probe({"dns", "allowed.test", "AAAA"}), "dns rcode=0 answers=\n");
  EXPECT_EQ(lab_->host_probe({"dns", "nowhere.test"}), "dns rcode=3 answers=\n");
  EXPECT_TRUE(dns_saw("other.test") && dns_saw("nowhere.test"));
  EXPECT_EQ(lab_->host_probe({"udp", "203.0.113.10", "9999"}), "udp echo\n");
  EXPECT_EQ(lab_->host_probe({"udp", "2001:db8::1", "9999"}), "udp echo\n");
  EXPECT_TRUE(has(lab_->host_probe({"icmp", "203.0.113.10"}), "icmp raw reply"));
  EXPECT_TRUE(has(lab_->host_probe({"icmp", "2001:db8::1"}), "icmp raw reply"));
  EXPECT_EQ(lab_->udp_log().size(), 2u);
  EXPECT_EQ(lab_->icmp_log().size(), 2u);
}

TEST_F(Network, LabLeavesNothingBehind) {
  std::string h, i, dir;
  pid_t straggler = -1;
  {
    NetLab second;
    h = second.host_ns(), i = second.inet_ns(), dir = second.dir();
    EXPECT_NE(h, lab_->host_ns());
    EXPECT_TRUE(exists("/run/netns/" + h) && exists("/run/netns/" + i) && exists(dir));
    EXPECT_FALSE(pids_in_netns("/run/netns/" + i).empty());  // the servers
    // A process left running in H (as a hung ultari would be).
    straggler = fork();
    if (straggler == 0) {
      execl("/usr/bin/nsenter", "nsenter", ("--net=/run/netns/" + h).c_str(), "--", "/bin/sleep", "60", nullptr);
      _exit(127);
    }
    for (int n = 0; n < 100 && second.processes_in_host().empty(); ++n)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(second.processes_in_host(), std::vector<pid_t>{straggler});
  }
  // Killed (and, being our child, reaped) by the lab.
  EXPECT_NE(kill(straggler, 0), 0);
  waitpid(straggler, nullptr, WNOHANG);
  EXPECT_FALSE(exists("/run/netns/" + h));
  EXPECT_FALSE(exists("/run/netns/" + i));
  EXPECT_FALSE(exists(dir));
  EXPECT_EQ(processes_matching(dir), 0);
}

// ---------------------------------------------------------------------------
// Allow mode.

TEST_F(Network, AllowedHostReachableOverHttpAndHttpsWithoutProxySettings) {
  Outcome r = run({"--net", "allow=allowed.test"},
                  direct("http", "http://allowed.test/") + direct("https", "https://allowed.test/tls") +
                      direct("denied", "http://other.test/"));
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["http"], "allowed.test") && has(l["http"], "host=allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["https"], "allowed.test") && has(l["https"], "sni=allowed.test")) << r.out << r.err;
  // Negative control in the same sandbox: a name not allowed does not work.
  EXPECT_TRUE(blocked(l["denied"])) << l["denied"];
  // They really crossed the lab, from the host side.
  auto reqs = lab_->requests();
  ASSERT_EQ(requests_to("allowed.test"), 2) << seen();
  for (const auto& q : reqs) EXPECT_EQ(q["peer"], NetLab::kHostAddr);
  EXPECT_EQ(requests_to("other.test"), 0) << seen();
  EXPECT_TRUE(dns_saw("allowed.test"));  // resolved on the host side, by the lab's DNS
  EXPECT_TRUE(audited({"", "allowed.test", "allow", "allowed.test"})) << audit_dump();
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST_F(Network, DeniedHostIsBlockedAndAudited) {
  // Negative control: the lab serves other.test to anyone who asks.
  ASSERT_TRUE(served(host_curl("http://other.test/"), "other.test"));
  lab_->clear_logs();
  std::string script = direct("http", "http://other.test/") + direct("https", "https://other.test/") +
                       // Skipping DNS: the address given, the name only in Host / SNI.
                       direct("http_resolve", "--resolve other.test:80:203.0.113.11 http://other.test/") +
                       direct("https_resolve", "--resolve other.test:443:203.0.113.11 https://other.test/");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  for (const char* k : {"http", "https", "http_resolve", "https_resolve"}) EXPECT_TRUE(blocked(l[k])) << k << ": " << l[k];
  EXPECT_EQ(requests_to("other.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "other.test", "deny", ""})) << audit_dump();
  EXPECT_TRUE(audited({"http", "other.test", "deny", "no-rule"})) << audit_dump();
  EXPECT_TRUE(audited({"tls", "other.test", "deny", "no-rule"})) << audit_dump();
  for (const auto& e : audit()) EXPECT_FALSE(matches(e, {"", "other.test", "allow", ""})) << e.dump();

  // Negative control from the sandbox: with the name allowed, the same script works.
  lab_->clear_logs();
  Outcome ok = run({"--net", "allow=other.test"}, script);
  auto l2 = by_label(ok.out);
  for (const char* k : {"http", "https", "http_resolve", "https_resolve"})
    EXPECT_TRUE(served(l2[k], "other.test")) << k << ": " << l2[k] << ok.err;
}

TEST_F(Network, DirectIpConnectionsAreDenied) {
  ASSERT_TRUE(served(host_curl("http://203.0.113.10/"), "allowed.test"));
  ASSERT_TRUE(served(host_curl("https://203.0.113.10/"), "allowed.test"));
  lab_->clear_logs();
  // Before and after the sandbox resolved the allowed name of that address.
  std::string script = direct("ip_http", "http://203.0.113.10/") + direct("ip_https", "https://203.0.113.10/") +
                       direct("name", "http://allowed.test/") + direct("ip_http2", "http://203.0.113.10/") +
                       direct("ip_https2", "https://203.0.113.10/") + probe("tcp", "tcp 203.0.113.11 80") +
                       // An IPv4-mapped IPv6 address is the same IPv4 destination.
                       probe("mapped", "tcp ::ffff:203.0.113.11 80 other.test");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["name"], "allowed.test")) << r.out << r.err;  // control
  for (const char* k : {"ip_http", "ip_https", "ip_http2", "ip_https2"}) EXPECT_TRUE(blocked(l[k])) << k << ": " << l[k];
  EXPECT_TRUE(blocked(l["tcp"]) && !has(l["tcp"], "tcp ok")) << l["tcp"];
  EXPECT_TRUE(blocked(l["mapped"]) && !has(l["mapped"], "tcp ok")) << l["mapped"];
  EXPECT_EQ(requests_to("allowed.test"), 1) << seen();
  EXPECT_EQ(requests_to("other.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "", "deny", ""})) << audit_dump();
}

TEST_F(Network, DnsForADeniedNameIsNxdomainLoggedAndNeverLeaves) {
  const std::string leak = "leak" + std::to_string(getpid()) + ".other.test";
  std::string script = probe("allowed", "dns allowed.test") + probe("allowed_any_server", "dns allowed.test A 192.0.2.1") +
                       probe("aaaa", "dns allowed.test AAAA") + probe("other", "dns other.test") +
                       probe("leak", "dns " + leak) + probe("leak_any_server", "dns " + leak + " A 198.51.100.7") +
                       "getent hosts other.test; echo getent_rc=$?\n";
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_EQ(l["allowed"], "dns rcode=0 answers=203.0.113.10 ") << r.out << r.err;
  EXPECT_EQ(l["allowed_any_server"], "dns rcode=0 answers=203.0.113.10 ") << r.out;
  EXPECT_EQ(l["aaaa"], "dns rcode=0 answers= ") << r.out;
  EXPECT_EQ(l["other"], "dns rcode=3 answers= ") << r.out;
  EXPECT_EQ(l["leak"], "dns rcode=3 answers= ") << r.out;
  EXPECT_EQ(l["leak_any_server"], "dns rcode=3 answers= ") << r.out;
  EXPECT_TRUE(has(r.out, "getent_rc=2")) << r.out;
  // Ultari asked the lab's DNS for the allowed name only.
  EXPECT_TRUE(dns_saw("allowed.test")) << "dns log: " << testing::PrintToString(lab_->dns_log());
  EXPECT_FALSE(dns_saw("other.test")) << testing::PrintToString(lab_->dns_log());
  EXPECT_FALSE(dns_saw(leak)) << testing::PrintToString(lab_->dns_log());
  EXPECT_TRUE(audited({"dns", "other.test", "deny", ""})) << audit_dump();
  EXPECT_TRUE(audited({"dns", leak, "deny", ""})) << audit_dump();
  EXPECT_TRUE(audited({"dns", "allowed.test", "allow", "allowed.test"})) << audit_dump();

  // Negative control: the same query straight from H reaches the lab's DNS.
  EXPECT_EQ(lab_->host_probe({"dns", leak}), "dns rcode=3 answers=\n");
  EXPECT_EQ(lab_->host_probe({"dns", "other.test"}), "dns rcode=0 answers=203.0.113.11\n");
  EXPECT_TRUE(dns_saw(leak) && dns_saw("other.test"));
}

TEST_F(Network, UdpIcmpAndIpv6AreBlocked) {
  std::string script = probe("udp", "udp 203.0.113.10 9999") + probe("udp6", "udp 2001:db8::1 9999") +
                       probe("icmp", "icmp 203.0.113.10") + probe("icmp6", "icmp 2001:db8::1") +
                       probe("tcp6", "tcp 2001:db8::1 80") + direct("curl6", "-6 'http://[2001:db8::1]/'") +
                       direct("control", "http://allowed.test/");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["control"], "allowed.test")) << r.out << r.err;
  EXPECT_FALSE(has(l["udp"], "udp echo")) << l["udp"];
  EXPECT_FALSE(has(l["udp6"], "udp echo")) << l["udp6"];
  EXPECT_FALSE(has(l["icmp"], "reply")) << l["icmp"];
  EXPECT_FALSE(has(l["icmp6"], "reply")) << l["icmp6"];
  EXPECT_FALSE(has(l["tcp6"], "tcp ok")) << l["tcp6"];
  EXPECT_TRUE(blocked(l["curl6"])) << l["curl6"];
  // Nothing arrived.
  EXPECT_TRUE(lab_->udp_log().empty()) << testing::PrintToString(lab_->udp_log());
  EXPECT_TRUE(lab_->icmp_log().empty()) << testing::PrintToString(lab_->icmp_log());
  EXPECT_EQ(requests_to("v6.test"), 0) << seen();
  EXPECT_TRUE(audited({"udp", "", "deny", ""})) << "UDP to :9999 not audited; " << audit_dump();

  // Negative control: the same probes straight from H get through.
  EXPECT_EQ(lab_->host_probe({"udp", "203.0.113.10", "9999"}), "udp echo\n");
  EXPECT_EQ(lab_->host_probe({"udp", "2001:db8::1", "9999"}), "udp echo\n");
  EXPECT_TRUE(has(lab_->host_probe({"icmp", "203.0.113.10"}), "icmp raw reply"));
  EXPECT_TRUE(has(lab_->host_probe({"icmp", "2001:db8::1"}), "icmp raw reply"));
  EXPECT_TRUE(has(lab_->host_probe({"tcp", "2001:db8::1", "80"}), "tcp ok"));
  EXPECT_EQ(lab_->udp_log().size(), 2u);
}

TEST_F(Network, NameResolvingToAPrivateAddressIsRefused) {
  ASSERT_TRUE(served(host_curl("http://private.test/"), "private.test"));
  lab_->clear_logs();
  Outcome r = run({"--net", "allow=private.test,allowed.test"},
                  direct("http", "http://private.test/") + direct("https", "https://private.test/") +
                      direct("resolve", "--resolve private.test:80:10.99.0.10 http://private.test/") +
                      fetch("proxy", "-x http://127.0.0.1:3128 http://private.test/") +
                      fetch("proxy_tls", "-x http://127.0.0.1:3128 https://private.test/") +
                      fetch("socks", "-x socks5h://127.0.0.1:1080 http://private.test/") +
                      direct("control", "http://allowed.test/"));
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["control"], "allowed.test")) << r.out << r.err;
  for (const char* k : {"http", "https", "resolve", "proxy", "proxy_tls", "socks"})
    EXPECT_TRUE(blocked(l[k])) << k << ": " << l[k];
  EXPECT_EQ(requests_to("private.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "private.test", "deny", "private-address"})) << audit_dump();
}

TEST_F(Network, HostOrSniDifferentFromTheResolvedNameIsRefused) {
  // Negative control: the lab's server at .10 accepts any Host / SNI.
  ASSERT_TRUE(has(host_curl("-H 'Host: other.test' http://203.0.113.10/"), "host=other.test"));
  ASSERT_TRUE(has(host_curl("--resolve other.test:443:203.0.113.10 https://other.test/"), "sni=other.test"));
  lab_->clear_logs();
  std::string script = "getent hosts other.test >/dev/null\n" + direct("ok_http", "http://allowed.test/") +
                       direct("ok_https", "https://allowed.test/") +
                       direct("host", "-H 'Host: other.test' http://allowed.test/") +
                       direct("sni", "--resolve other.test:443:203.0.113.10 https://other.test/") +
                       direct("ok_other", "https://other.test/") +
                       // The Host header split across two segments 0.3 s apart.
                       probe("split", "raw allowed.test 80 'GET / HTTP/1.1\\r\\nHo' "
                                      "'st: other.test\\r\\nConnection: close\\r\\n\\r\\n'");
  Outcome r = run({"--net", "allow=allowed.test,other.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok_http"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["ok_https"], "allowed.test")) << r.out;
  EXPECT_TRUE(served(l["ok_other"], "other.test")) << r.out;
  EXPECT_TRUE(blocked(l["host"])) << l["host"];
  EXPECT_TRUE(blocked(l["sni"])) << l["sni"];
  EXPECT_TRUE(blocked(l["split"])) << l["split"];
  for (const auto& q : lab_->requests()) {
    EXPECT_FALSE(q["addr"] == NetLab::kAllowedAddr && lower(q["host"].get<std::string>()) == "other.test") << q.dump();
    EXPECT_FALSE(q["addr"] == NetLab::kAllowedAddr && q["sni"] == "other.test") << q.dump();
  }
  EXPECT_TRUE(audited({"http", "other.test", "deny", "sni-mismatch"})) << audit_dump();
  EXPECT_TRUE(audited({"tls", "other.test", "deny", "sni-mismatch"})) << audit_dump();
}

TEST_F(Network, TwoHostHeadersAreRefused) {
  // Servers disagree on which Host counts (the lab's takes the first, others
  // the last), so a request naming two hosts must not pass.
  std::string twice = "lab server=allowed.test";
  std::string control = lab_->host_probe(
      {"raw", "203.0.113.10", "80", "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n"});
  ASSERT_TRUE(has(control, twice)) << control;  // negative control: the lab takes it
  lab_->clear_logs();
  std::string script =
      probe("first", "raw allowed.test 80 'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n'") +
      probe("last", "raw allowed.test 80 'GET / HTTP/1.1\\r\\nHost: other.test\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n'") +
      probe("once", "raw allowed.test 80 'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n'");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["once"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(blocked(l["first"])) << l["first"];
  EXPECT_TRUE(blocked(l["last"])) << l["last"];
  for (const auto& q : lab_->requests()) {
    int hosts = 0;
    for (const auto& h : q["headers"]) hosts += lower(h[0].get<std::string>()) == "host";
    EXPECT_EQ(hosts, 1) << q.dump();
  }
}

TEST_F(Network, WildcardMatchesSubdomainsNeverTheNameItself) {
  std::string script = direct("www", "http://www.allowed.test/") + direct("www_tls", "https://www.allowed.test/") +
                       probe("evil_dns", "dns evil.allowed.test") + direct("apex", "http://allowed.test/") +
                       direct("apex_resolve", "--resolve allowed.test:80:203.0.113.10 http://allowed.test/") +
                       probe("apex_dns", "dns allowed.test") + probe("case_dns", "dns WWW.Allowed.TEST.") +
                       direct("case", "http://WWW.ALLOWED.TEST./") + direct("other", "http://other.test/");
  Outcome r = run({"--net", "allow=*.allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["www"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["www_tls"], "allowed.test")) << r.out;
  EXPECT_EQ(l["evil_dns"], "dns rcode=0 answers=203.0.113.11 ") << r.out;
  EXPECT_EQ(l["case_dns"], "dns rcode=0 answers=203.0.113.10 ") << r.out;
  EXPECT_TRUE(served(l["case"], "allowed.test")) << r.out;
  EXPECT_TRUE(blocked(l["apex"])) << l["apex"];
  EXPECT_TRUE(blocked(l["apex_resolve"])) << l["apex_resolve"];
  EXPECT_EQ(l["apex_dns"], "dns rcode=3 answers= ") << r.out;
  EXPECT_TRUE(blocked(l["other"])) << l["other"];
  EXPECT_EQ(requests_with_host("allowed.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "www.allowed.test", "allow", "*.allowed.test"})) << audit_dump();
  EXPECT_TRUE(audited({"", "allowed.test", "deny", ""})) << audit_dump();

  // Negative control: allowing the name itself makes the apex work.
  Outcome ok = run({"--net", "allow=*.allowed.test", "--net", "allow=allowed.test"}, direct("apex", "http://allowed.test/"));
  EXPECT_TRUE(served(by_label(ok.out)["apex"], "allowed.test")) << ok.out << ok.err;
}

TEST_F(Network, PolicyNamesIgnoreCaseAndTrailingDot) {
  std::string script = direct("apex", "http://allowed.test/") + direct("www", "https://www.allowed.test/") +
                       direct("other", "http://other.test/") + direct("evil", "http://evil.allowed.test/");
  Outcome r = run({"--net", "allow=ALLOWED.Test.", "--net-policy",
                   policy("allow = [\"*.Allowed.TEST.\"]\ndeny = [\"Evil.Allowed.Test.\"]\n")},
                  script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["apex"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["www"], "allowed.test")) << r.out;
  EXPECT_TRUE(blocked(l["evil"])) << l["evil"];
  EXPECT_TRUE(blocked(l["other"])) << l["other"];  // control: not everything is allowed
  EXPECT_EQ(requests_with_host("evil.allowed.test"), 0) << seen();
}

TEST_F(Network, DenyWinsOverAllow) {
  std::string script = direct("www", "http://www.allowed.test/") + direct("evil", "https://evil.allowed.test/") +
                       direct("evil_resolve", "--resolve evil.allowed.test:80:203.0.113.11 http://evil.allowed.test/") +
                       probe("evil_dns", "dns EVIL.allowed.test.");
  Outcome r = run({"--net-policy", policy("allow = [\"*.allowed.test\"]\ndeny = [\"evil.allowed.test\"]\n")}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["www"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(blocked(l["evil"])) << l["evil"];
  EXPECT_TRUE(blocked(l["evil_resolve"])) << l["evil_resolve"];
  EXPECT_EQ(l["evil_dns"], "dns rcode=3 answers= ") << r.out;
  EXPECT_EQ(requests_with_host("evil.allowed.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "evil.allowed.test", "deny", "evil.allowed.test"})) << audit_dump();

  // Negative control: without the deny rule the same script reaches evil.
  Outcome ok = run({"--net-policy", policy("allow = [\"*.allowed.test\"]\n")}, script);
  auto l2 = by_label(ok.out);
  EXPECT_TRUE(served(l2["evil"], "other.test")) << ok.out << ok.err;
  EXPECT_TRUE(served(l2["evil_resolve"], "other.test")) << ok.out;
}

TEST_F(Network, DenyAppliesInOpenModeToo) {
  std::string script = direct("other", "http://other.test/") + direct("www", "http://www.allowed.test/");
  Outcome r = run({"--net", "open", "--net-policy", policy("deny = [\"other.test\"]\n")}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["www"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(blocked(l["other"])) << l["other"];
  EXPECT_EQ(requests_to("other.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "other.test", "deny", "other.test"})) << audit_dump();
}

TEST_F(Network, OnlyPolicyPortsAreAllowed) {
  ASSERT_TRUE(has(host_curl("http://allowed.test:8080/"), "port=8080"));
  lab_->clear_logs();
  std::string script = direct("p8080", "http://allowed.test:8080/") + direct("p80", "http://allowed.test/");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["p80"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(blocked(l["p8080"])) << l["p8080"];
  for (const auto& q : lab_->requests()) EXPECT_NE(q["port"], 8080) << q.dump();
  EXPECT_TRUE(audited({"", "", "deny", "port"})) << audit_dump();

  // Negative control: with 8080 in the policy the same request works, and 80
  // (no longer listed) does not.
  Outcome ok = run({"--net-policy", policy("allow = [\"allowed.test\"]\nports = [8080, 443]\n")}, script);
  auto l2 = by_label(ok.out);
  EXPECT_TRUE(has(l2["p8080"], "port=8080")) << ok.out << ok.err;
  EXPECT_TRUE(blocked(l2["p80"])) << l2["p80"];
}

// ---------------------------------------------------------------------------
// Explicit proxies.

TEST_F(Network, ExplicitHttpProxyForAllowedNamesOnly) {
  std::string script =
      "echo \"env $HTTP_PROXY $HTTPS_PROXY $http_proxy $https_proxy $ALL_PROXY $all_proxy\"\n" +
      // curl honours the environment: plain HTTP forwarded, HTTPS through CONNECT.
      fetch("env_http", "http://allowed.test/") + fetch("env_https", "https://allowed.test/") +
      fetch("tunnel_http", "-p -x http://127.0.0.1:3128 http://allowed.test/") +
      fetch("denied_http", "-x http://127.0.0.1:3128 http://other.test/") +
      fetch("denied_https", "-x http://127.0.0.1:3128 https://other.test/") +
      fetch("ip", "-x http://127.0.0.1:3128 http://203.0.113.10/") +
      probe("connect_ip", "connect 3128 203.0.113.10:80 allowed.test") +
      probe("connect_port", "connect 3128 allowed.test:8080 allowed.test");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_EQ(l["env"],
            "http://127.0.0.1:3128 http://127.0.0.1:3128 http://127.0.0.1:3128 http://127.0.0.1:3128 "
            "socks5h://127.0.0.1:1080 socks5h://127.0.0.1:1080")
      << r.out << r.err;
  EXPECT_TRUE(served(l["env_http"], "allowed.test")) << r.out;
  EXPECT_TRUE(served(l["env_https"], "allowed.test") && has(l["env_https"], "sni=allowed.test")) << r.out;
  EXPECT_TRUE(served(l["tunnel_http"], "allowed.test")) << r.out;
  EXPECT_TRUE(blocked(l["denied_http"]) && has(l["denied_http"], "code=403")) << l["denied_http"];
  EXPECT_TRUE(blocked(l["denied_https"])) << l["denied_https"];
  // No direct IP, no port outside the policy through the proxy either.
  EXPECT_TRUE(blocked(l["ip"])) << l["ip"];
  EXPECT_TRUE(blocked(l["connect_ip"]) && !has(l["connect_ip"], "status=200")) << l["connect_ip"];
  EXPECT_TRUE(blocked(l["connect_port"]) && !has(l["connect_port"], "status=200")) << l["connect_port"];
  EXPECT_EQ(requests_to("other.test"), 0) << seen();
  EXPECT_EQ(requests_to("allowed.test"), 3) << seen();
  for (const auto& q : lab_->requests()) EXPECT_NE(q["port"], 8080) << q.dump();
  EXPECT_TRUE(audited({"", "other.test", "deny", ""})) << audit_dump();
  EXPECT_TRUE(audited({"", "", "deny", "port"})) << audit_dump();
}

TEST_F(Network, KeepAliveConnectionCannotSwitchToAnotherHost) {
  // Negative control: the lab's server answers a second request with another
  // Host on the same connection.
  std::string control = lab_->host_probe({"pipeline", "203.0.113.10", "80", "/", "allowed.test", "/", "other.test"});
  ASSERT_TRUE(has(control, "second=HTTP/1.1_200_OK lab server=allowed.test") && has(control, "host=other.test")) << control;
  lab_->clear_logs();
  // Only allowed.test is allowed; the second request of each connection names
  // other.test (Host, or the absolute URL of the explicit proxy).
  std::string script =
      probe("transparent", "pipeline allowed.test 80 / allowed.test / other.test") +
      probe("proxy", "pipeline 127.0.0.1 3128 http://allowed.test/ allowed.test http://other.test/ other.test") +
      probe("proxy_host", "pipeline 127.0.0.1 3128 http://allowed.test/ allowed.test http://allowed.test/ other.test");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  for (const char* k : {"transparent", "proxy", "proxy_host"}) {
    const std::string& line = l[k];
    auto second = line.find(" second=");
    EXPECT_TRUE(has(line, "first=lab server=allowed.test")) << k << ": " << line << r.err;  // control
    EXPECT_TRUE(second != std::string::npos && !has(line.substr(second), "lab server=")) << k << ": " << line;
  }
  EXPECT_EQ(requests_with_host("other.test"), 0) << seen();
  EXPECT_EQ(requests_to("allowed.test"), 3) << seen();
  EXPECT_TRUE(audited({"", "", "deny", ""})) << audit_dump();
}

TEST_F(Network, ProxyRefusesHostOrSniDifferentFromTheTarget) {
  // Both names allowed: only the disagreement can refuse these.
  std::string script = probe("c_ok", "connect 3128 allowed.test:80 allowed.test") +
                       probe("c_host", "connect 3128 allowed.test:80 other.test") +
                       probe("c_tls_ok", "connect 3128 allowed.test:443 allowed.test allowed.test /ca.pem") +
                       probe("c_sni", "connect 3128 allowed.test:443 other.test other.test /ca.pem") +
                       probe("a_ok", "absolute 3128 http://allowed.test/ allowed.test") +
                       probe("a_host", "absolute 3128 http://allowed.test/ other.test") +
                       fetch("s_host", "-x socks5h://127.0.0.1:1080 -H 'Host: other.test' http://allowed.test/");
  Outcome r = run({"--net", "allow=allowed.test,other.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(has(l["c_ok"], "connect status=200") && served(l["c_ok"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["c_tls_ok"], "allowed.test")) << r.out;
  EXPECT_TRUE(served(l["a_ok"], "allowed.test") && has(l["a_ok"], "status=200")) << r.out;
  EXPECT_TRUE(blocked(l["c_host"]) && has(l["c_host"], "tunnel refused")) << l["c_host"];
  EXPECT_TRUE(blocked(l["c_sni"]) && has(l["c_sni"], "tunnel refused")) << l["c_sni"];
  EXPECT_TRUE(blocked(l["a_host"]) && has(l["a_host"], "status=403")) << l["a_host"];
  EXPECT_TRUE(blocked(l["s_host"])) << l["s_host"];
  for (const auto& q : lab_->requests()) EXPECT_NE(lower(q["host"].get<std::string>()), "other.test") << q.dump();
  EXPECT_TRUE(audited({"", "", "deny", "sni-mismatch"})) << audit_dump();
}

// apt sends a source's user:password@ in the proxy requests' absolute URLs
// (and as Authorization), on kept-alive connections too. The proxy checks
// and connects to the host after the '@', and sends every request in
// origin form: the userinfo reaches neither the server's request line nor
// the audit log. A userinfo naming an allowed host does not make another
// host allowed, and a URL parsers could split two ways is refused.
TEST_F(Network, ProxyChecksTheHostAfterAUserinfoAndDropsIt) {
  std::string script = probe("user", "absolute 3128 http://al%40ice:pw-s3cret@allowed.test/u allowed.test") +
                       probe("keepalive", "pipeline 127.0.0.1 3128 http://al:pw-s3cret@allowed.test/k1 allowed.test "
                                          "http://al:pw-s3cret@allowed.test/k2 allowed.test") +
                       probe("keepalive_q", "pipeline 127.0.0.1 3128 http://allowed.test/q1 allowed.test "
                                            "http://allowed.test?@other.test/q2 allowed.test") +
                       probe("disguised", "absolute 3128 http://allowed.test:80@other.test/d other.test") +
                       probe("disguised_host", "absolute 3128 http://allowed.test@other.test/h allowed.test") +
                       probe("two_at", "absolute 3128 http://a@allowed.test@allowed.test/t allowed.test") +
                       probe("query_at", "absolute 3128 http://allowed.test?@allowed.test/q allowed.test");
  Outcome r = run({"--net", "allow=allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["user"], "allowed.test") && has(l["user"], "status=200")) << r.out << r.err;
  EXPECT_TRUE(blocked(l["disguised"]) && has(l["disguised"], "status=403")) << l["disguised"];
  EXPECT_TRUE(blocked(l["disguised_host"]) && has(l["disguised_host"], "status=403")) << l["disguised_host"];
  EXPECT_TRUE(blocked(l["two_at"]) && has(l["two_at"], "status=403") && has(l["two_at"], "http-malformed"))
      << l["two_at"];
  EXPECT_TRUE(blocked(l["query_at"]) && has(l["query_at"], "status=403") && has(l["query_at"], "http-malformed"))
      << l["query_at"];
  std::vector<std::string> paths;
  for (const auto& q : lab_->requests()) paths.push_back(q["host"].get<std::string>() + " " + q["path"].get<std::string>());
  EXPECT_TRUE(has(l["keepalive"], "first=lab server=allowed.test") && has(l["keepalive"], "path=/k2")) << l["keepalive"];
  // Every request goes on in origin form (the lab's server reads no
  // other): no userinfo, and a '?' before an '@' starts the query.
  EXPECT_EQ(paths, (std::vector<std::string>{"allowed.test /u", "allowed.test /k1", "allowed.test /k2",
                                             "allowed.test /q1", "allowed.test /?@other.test/q2"}))
      << seen();
  EXPECT_FALSE(has(audit_dump(), "s3cret")) << audit_dump();
  EXPECT_TRUE(audited({"", "other.test", "deny", ""})) << audit_dump();
}

TEST_F(Network, Socks5hProxyForAllowedNamesOnly) {
  std::string script = fetch("env_socks", "--noproxy '' -x \"$ALL_PROXY\" https://allowed.test/") +
                       fetch("s_http", "-x socks5h://127.0.0.1:1080 http://allowed.test/") +
                       fetch("s_https", "-x socks5h://127.0.0.1:1080 https://www.allowed.test/") +
                       fetch("s_denied", "-x socks5h://127.0.0.1:1080 http://other.test/") +
                       fetch("s_denied_tls", "-x socks5h://127.0.0.1:1080 https://other.test/") +
                       fetch("s_ip", "-x socks5h://127.0.0.1:1080 http://203.0.113.11/");
  Outcome r = run({"--net", "allow=*.allowed.test,allowed.test"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["env_socks"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["s_http"], "allowed.test")) << r.out;
  EXPECT_TRUE(served(l["s_https"], "allowed.test") && has(l["s_https"], "sni=www.allowed.test")) << r.out;
  EXPECT_TRUE(blocked(l["s_denied"])) << l["s_denied"];
  EXPECT_TRUE(blocked(l["s_denied_tls"])) << l["s_denied_tls"];
  EXPECT_TRUE(blocked(l["s_ip"])) << l["s_ip"];
  EXPECT_EQ(requests_to("other.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "other.test", "deny", ""})) << audit_dump();
}

// ---------------------------------------------------------------------------
// none / open.

TEST_F(Network, NoneMeansNoNetworkAtAll) {
  std::string script = "ls /sys/class/net | tr '\\n' ' '; echo\n" + direct("ip", "http://203.0.113.10/") +
                       direct("name", "http://allowed.test/") + probe("dns", "dns allowed.test") +
                       probe("udp", "udp 203.0.113.10 9999") + "echo \"env [$HTTP_PROXY$ALL_PROXY]\"\n";
  for (const auto& net : std::vector<std::vector<std::string>>{{"--net", "none"}, {}}) {
    lab_->clear_logs();
    Outcome r = run_plain(net, script);
    auto l = by_label(r.out);
    EXPECT_TRUE(has(r.out, "lo \n")) << r.out << r.err;
    EXPECT_TRUE(blocked(l["ip"])) << l["ip"];
    EXPECT_TRUE(blocked(l["name"])) << l["name"];
    EXPECT_TRUE(has(l["dns"], "dns error")) << l["dns"];
    EXPECT_FALSE(has(l["udp"], "echo")) << l["udp"];
    EXPECT_EQ(l["env"], "[]") << r.out;
    EXPECT_TRUE(lab_->requests().empty()) << seen();
    EXPECT_TRUE(lab_->dns_log().empty());
    EXPECT_TRUE(lab_->udp_log().empty());
    EXPECT_TRUE(r.report.is_object()) << r.err;
    EXPECT_TRUE(!r.report.contains("network") || r.report["network"].is_null()) << r.report.dump();
  }
  // Negative control: the same script with the name allowed gets out.
  Outcome ok = run({"--net", "allow=allowed.test"}, script);
  EXPECT_TRUE(served(by_label(ok.out)["name"], "allowed.test")) << ok.out << ok.err;
}

TEST_F(Network, OpenReachesAnyNameButNeverPrivateAddresses) {
  std::string script = direct("other", "http://other.test/") + direct("evil", "https://evil.allowed.test/") +
                       probe("dns", "dns other.test") + direct("private", "http://private.test/") +
                       direct("private_tls", "https://private.test/") + probe("private_ip", "tcp 10.99.0.10 80") +
                       probe("private_mapped", "tcp ::ffff:10.99.0.10 80") + direct("metadata", "http://169.254.169.254/");
  Outcome r = run({"--net", "open"}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["other"], "other.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["evil"], "other.test")) << r.out;
  EXPECT_EQ(l["dns"], "dns rcode=0 answers=203.0.113.11 ") << r.out;
  EXPECT_TRUE(blocked(l["private"])) << l["private"];
  EXPECT_TRUE(blocked(l["private_tls"])) << l["private_tls"];
  EXPECT_TRUE(blocked(l["private_ip"])) << l["private_ip"];
  EXPECT_TRUE(blocked(l["private_mapped"])) << l["private_mapped"];
  EXPECT_TRUE(blocked(l["metadata"])) << l["metadata"];
  EXPECT_EQ(requests_to("private.test"), 0) << seen();
  EXPECT_TRUE(audited({"", "", "deny", "private-address"})) << audit_dump();
  EXPECT_TRUE(audited({"", "private.test", "deny", "private-address"})) << audit_dump();
  ASSERT_TRUE(r.report.contains("network")) << r.report.dump();
  EXPECT_EQ(r.report["network"]["mode"], "open");
  // Negative control: the lab serves private.test to the host side.
  EXPECT_TRUE(served(host_curl("http://private.test/"), "private.test"));
}

// ---------------------------------------------------------------------------
// Bad input, audit and report.

TEST_F(Network, BadInputIsRefusedWithAClearMessageAndLeavesNothing) {
  Leftovers before = leftovers();
  // [dlp] exists now (docs/network.md); an unknown key in it is still refused.
  std::string tables_dlp = policy("allow = [\"allowed.test\"]\n[dlp]\nblock = [\"AKIA\"]\n");
  // [[secret]] exists too; a key it does not know (value: secrets never
  // sit in a policy file) is refused.
  std::string tables_secret = policy("allow = [\"allowed.test\"]\n[[secret]]\nname = \"API\"\nvalue = \"x\"\n");
  struct Case {
    std::vector<std::string> flags;
    std::string mention;
  };
  std::string bad_toml = policy("allow = [\"allowed.test\"\n");
  std::vector<Case> cases = {
      {{"--net", "allow=*"}, "*"},
      {{"--net-policy", policy("allow = [\"*\"]\n")}, "*"},
      {{"--net-policy", bad_toml}, bad_toml},
      {{"--net-policy", dir_ / "missing.toml"}, "missing.toml"},
      {{"--net", "bogus"}, "bogus"},
      {{"--inspect-tls"}, "need a network"},
      {{"--net", "allow=allowed.test", "--secret", "API_KEY=x"}, "API_KEY=x"},
      {{"--net", "allow=allowed.test", "--secret", "API_KEY=env:HOME@allowed.test"}, "--inspect-tls"},
      {{"--net", "allow=allowed.test", "--inspect-tls", "--secret", "API_KEY=env:HOME@other.test"}, "other.test"},
      {{"--net", "allow=allowed.test", "--inspect-tls", "--secret", "API_KEY=env:ULTARI_NO_SUCH_VAR@allowed.test"},
       "ULTARI_NO_SUCH_VAR"},
      {{"--net", "allow=allowed.test", "--inspect-tls", "--secret", "1KEY=env:HOME@allowed.test"}, "1KEY"},
      {{"--net", "allow=allowed.test", "--inspect-tls", "--net-ca", dir_ / "missing.pem"}, "missing.pem"},
      {{"--net", "allow=allowed.test", "--inspect-tls", "--net-ca", "/etc/hostname"}, "--net-ca"},
      {{"--net-policy", tables_dlp}, "block"},
      {{"--net", "allow=allowed.test", "--net-ca", "/etc/hostname"}, "--inspect-tls"},
      {{"--net-policy", tables_secret}, "secret.value"},
      {{"--net-policy", policy("allow = [\"allowed.test\"]\nports = [70000]\n")}, "ports"},
      {{"--net", "allow="}, "allow="},
      {{"--net", "open", "--net-resolver", "not-an-ip"}, "not-an-ip"},
  };
  for (const auto& c : cases) {
    // The case's flags last: for options where the last one wins.
    std::vector<std::string> args = {"run", "--net-resolver", NetLab::kDnsAddr, "--audit", audit_path_};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    args.insert(args.end(), {"--", "/bin/sh", "-c", "echo ran; curl -s --noproxy '*' http://allowed.test/"});
    Outcome r = lab_->ultari(args);
    std::string what = testing::PrintToString(c.flags);
    EXPECT_EQ(r.status, 125) << what << ": " << r.err;
    EXPECT_EQ(r.err.rfind("ultari: ", 0), 0u) << what << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.mention)) << what << " should mention " << c.mention << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
    EXPECT_EQ(r.out, "") << what;
    EXPECT_TRUE(lab_->processes_in_host().empty()) << what;
  }
  EXPECT_TRUE(lab_->requests().empty()) << seen();
  EXPECT_TRUE(lab_->dns_log().empty());
  // The report says why.
  Outcome rep = lab_->ultari({"run", "--net-policy", bad_toml, "--", "true"});
  EXPECT_EQ(rep.report["verdict"], "setup_error") << rep.report.dump();
  EXPECT_EQ(rep.report["exit_code"], 125);
  EXPECT_TRUE(has(rep.report.value("error", ""), bad_toml)) << rep.report.dump();
  // Negative control: the same command with a good policy runs and gets out.
  Outcome ok = lab_->ultari({"run", "--net-policy", policy("allow = [\"allowed.test\"]\n"), "--net-resolver",
                             NetLab::kDnsAddr, "--", "/bin/sh", "-c", "curl -s --noproxy '*' http://allowed.test/"});
  EXPECT_TRUE(served(ok.out, "allowed.test")) << ok.out << ok.err;
  // Nothing left: other test processes may run sandboxes meanwhile, so wait
  // for the counts to come back to what they were.
  Leftovers after;
  for (int i = 0; i < 100; ++i) {
    after = leftovers();
    if (after.processes <= before.processes && after.cgroups <= before.cgroups && after.mounts <= before.mounts) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_LE(after.processes, before.processes) << before.describe() << " -> " << after.describe();
  EXPECT_LE(after.cgroups, before.cgroups) << before.describe() << " -> " << after.describe();
  EXPECT_LE(after.mounts, before.mounts) << before.describe() << " -> " << after.describe();
}

// Rootless: the same policy, enforced the same way. Several runs: joining
// the sandbox's namespaces once raced with init making itself non-dumpable
// (setns then failed with EPERM for a caller without CAP_SYS_PTRACE).
TEST_F(Network, RootlessRunsGetTheSameNetwork) {
  for (int i = 0; i < 5; ++i) {
    Outcome r = lab_->sh(direct("ok", "http://allowed.test/") + direct("denied", "http://other.test/"),
                         {"--net", "allow=allowed.test", "--net-resolver", NetLab::kDnsAddr}, rootless_options());
    auto l = by_label(r.out);
    EXPECT_EQ(r.status, 0) << i << ": " << r.err;
    EXPECT_TRUE(served(l["ok"], "allowed.test")) << i << ": " << r.out << r.err;
    // Negative control of the same run: the policy holds.
    EXPECT_TRUE(blocked(l["denied"])) << i << ": " << r.out;
  }
}

// The gateway parses what the sandbox sends: it runs as a uid of its own
// (not shared with another sandbox's gateway), with no_new_privs, not
// dumpable, and under a seccomp filter of its own.
TEST_F(Network, TheGatewayIsConfined) {
  // Started with a soft limit of 1024 open files, which the gateway raises
  // (its flows and kept pipes need more); the supervisor keeps it.
  rlimit files{}, saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  files = saved;
  files.rlim_cur = std::min<rlim_t>(1024, saved.rlim_max);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &files), 0);
  std::map<pid_t, std::string> seen_limits;
  std::string supervisor_limits;
  // Two sandboxes at once: their gateways' uids differ.
  Outcome r, r2;
  std::atomic<bool> finished{false};
  std::thread t2([&] { r2 = run({"--net", "allow=allowed.test"}, "sleep 1; echo done"); });
  std::thread t([&] {
    r = run({"--net", "allow=allowed.test"}, "sleep 1; echo done");
    finished = true;
  });
  // The last reading while the command runs (the gateway confines itself
  // during its set-up, before the command starts).
  std::map<pid_t, std::string> seen_status, seen_stdio;
  std::string supervisor_status;
  while (!finished) {
    for (pid_t p : lab_->processes_in_host()) {
      std::string dir = "/proc/" + std::to_string(p);
      std::string comm = read_file(dir + "/comm");
      std::string status = read_file(dir + "/status");
      if (status.empty()) continue;  // gone meanwhile
      if (comm == "ultari-net\n") {
        seen_status[p] = status, seen_limits[p] = read_file(dir + "/limits");
        // Its stdio and session: /dev/null, and a session of its own (no
        // terminal of the caller's to type into).
        std::string stdio;
        for (const char* fd : {"/fd/0", "/fd/1", "/fd/2"}) {
          char target[256] = {};
          ssize_t n = readlink((dir + fd).c_str(), target, sizeof target - 1);
          stdio += std::string(target, n > 0 ? static_cast<size_t>(n) : 0) + " ";
        }
        std::string stat = read_file(dir + "/stat");
        std::istringstream fields(stat.substr(stat.rfind(')') + 2));
        std::string state, ppid, pgrp, session;
        fields >> state >> ppid >> pgrp >> session;
        seen_stdio[p] = stdio + "session=" + (session == std::to_string(p) ? "own" : session);
      }
      if (comm == "ultari\n") supervisor_status = status, supervisor_limits = read_file(dir + "/limits");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  t.join();
  t2.join();
  setrlimit(RLIMIT_NOFILE, &saved);
  EXPECT_TRUE(has(r.out, "done")) << r.out << r.err;
  EXPECT_TRUE(has(r2.out, "done")) << r2.out << r2.err;
  ASSERT_FALSE(seen_status.empty()) << "no gateway process seen";
  auto soft_files = [](const std::string& limits) {
    std::istringstream in(limits);
    for (std::string line; std::getline(in, line);)
      if (line.starts_with("Max open files")) return std::stol(line.substr(26));
    return -1L;
  };
  for (const auto& [pid, limits] : seen_limits)
    EXPECT_EQ(soft_files(limits), std::min<long>(8192, static_cast<long>(saved.rlim_max))) << limits;
  if (!supervisor_limits.empty()) {
    EXPECT_EQ(soft_files(supervisor_limits), 1024) << supervisor_limits;
  }
  auto field = [](const std::string& status, const std::string& name) {
    size_t at = status.find("\n" + name + ":");
    if (at == std::string::npos) return std::string();
    size_t start = status.find_first_not_of(" \t", at + name.size() + 2);
    return status.substr(start, status.find('\n', start) - start);
  };
  for (const auto& [pid, stdio] : seen_stdio) EXPECT_EQ(stdio, "/dev/null /dev/null /dev/null session=own") << pid;
  std::set<std::string> uids;
  for (const auto& [pid, status] : seen_status) uids.insert(field(status, "Uid"));
  EXPECT_EQ(uids.size(), seen_status.size());
  EXPECT_GE(uids.size(), 2u);  // (both gateways seen)
  for (const auto& [pid, status] : seen_status) {
    // A uid of its own (this host's /etc/subuid has no ultari-gateways
    // line: the default range), group nogroup.
    unsigned long uid = std::stoul(field(status, "Uid"));
    EXPECT_GE(uid, 4100000000UL) << status;
    EXPECT_LT(uid, 4100000000UL + (1UL << 27)) << status;
    EXPECT_EQ(field(status, "Uid"), std::to_string(uid) + "\t" + std::to_string(uid) + "\t" + std::to_string(uid) +
                                        "\t" + std::to_string(uid))
        << status;
    EXPECT_EQ(field(status, "Gid"), "65534\t65534\t65534\t65534") << status;
    EXPECT_EQ(field(status, "Groups"), "") << status;
    EXPECT_EQ(field(status, "NoNewPrivs"), "1") << status;
    EXPECT_EQ(field(status, "Seccomp"), "2") << status;
    EXPECT_EQ(field(status, "CapEff"), "0000000000000000") << status;
  }
  // Negative control: the same fields read from the supervisor (root, no
  // filter) differ, so the parsing above can fail.
  if (!supervisor_status.empty()) {
    EXPECT_EQ(field(supervisor_status, "Seccomp"), "0") << supervisor_status;
    EXPECT_EQ(field(supervisor_status, "Uid"), "0\t0\t0\t0");
  }
}

TEST_F(Network, AuditLinesHaveEveryField) {
  Outcome r = run({"--net", "allow=allowed.test"},
                  direct("ok", "http://allowed.test/") + direct("tls", "https://allowed.test/") +
                      direct("denied", "--resolve other.test:80:203.0.113.11 http://other.test/") +
                      probe("dns", "dns other.test"));
  auto l = by_label(r.out);
  ASSERT_TRUE(served(l["ok"], "allowed.test")) << r.out << r.err;
  auto entries = audit();
  ASSERT_FALSE(entries.empty()) << audit_dump();
  const std::set<std::string> kinds = {"dns", "tcp", "http", "tls", "udp", "icmp"};
  for (const auto& e : entries) {
    SCOPED_TRACE(e.dump());
    ASSERT_TRUE(e.is_object());
    for (const char* k : {"ts", "sandbox", "kind", "name", "addr", "port", "decision", "reason", "bytes_out", "bytes_in",
                          "duration_ms"})
      EXPECT_TRUE(e.contains(k)) << k;
    EXPECT_TRUE(kinds.count(e.value("kind", ""))) << e["kind"];
    EXPECT_TRUE(e["decision"] == "allow" || e["decision"] == "deny");
    EXPECT_TRUE(e["reason"].is_string() && !e["reason"].get<std::string>().empty());
    EXPECT_TRUE(e["bytes_out"].is_number_unsigned() && e["bytes_in"].is_number_unsigned());
    EXPECT_TRUE(e["duration_ms"].is_number() && e["duration_ms"] >= 0);
    EXPECT_TRUE(e["port"].is_number_unsigned() || e["port"].is_null());
    if (r.report.contains("sandbox_id")) {
      EXPECT_EQ(e["sandbox"], r.report["sandbox_id"]);
    }
  }
  // The allowed HTTP exchange moved bytes both ways, to the right place.
  bool found = false;
  for (const auto& e : entries)
    if (matches(e, {"", "allowed.test", "allow", "allowed.test"}) && e["port"] == 80 && e.value("bytes_in", 0) > 0 &&
        e.value("bytes_out", 0) > 0) {
      found = true;
      EXPECT_EQ(e["addr"], NetLab::kAllowedAddr) << e.dump();
    }
  EXPECT_TRUE(found) << audit_dump();
  EXPECT_TRUE(audited({"http", "other.test", "deny", "no-rule"})) << audit_dump();
  EXPECT_TRUE(audited({"dns", "other.test", "deny", ""})) << audit_dump();
}

TEST_F(Network, ReportCountsAllowedAndDenied) {
  Outcome r = run({"--net", "allow=allowed.test"},
                  direct("a", "http://allowed.test/") + direct("b", "https://allowed.test/") +
                      direct("c", "--resolve other.test:80:203.0.113.11 http://other.test/") +
                      direct("d", "--resolve evil.allowed.test:443:203.0.113.11 https://evil.allowed.test/"));
  auto l = by_label(r.out);
  ASSERT_TRUE(served(l["a"], "allowed.test")) << r.out << r.err;
  ASSERT_TRUE(r.report.contains("network")) << r.report.dump();
  const json& n = r.report["network"];
  EXPECT_EQ(n["mode"], "allow") << n.dump();
  EXPECT_GE(n["allowed"].get<int>(), 2) << n.dump();
  EXPECT_GE(n["denied"].get<int>(), 2) << n.dump();
  std::set<std::string> names;
  for (const auto& d : n["denied_names"]) names.insert(lower(d.get<std::string>()));
  EXPECT_TRUE(names.count("other.test") && names.count("evil.allowed.test")) << n.dump();
  EXPECT_FALSE(names.count("allowed.test")) << n.dump();
  EXPECT_EQ(n["audit_log"], audit_path_) << n.dump();
  // The counts agree with the audit log.
  int allowed = 0, denied = 0;
  for (const auto& e : audit()) (e["decision"] == "allow" ? allowed : denied)++;
  EXPECT_EQ(n["allowed"], allowed) << audit_dump();
  EXPECT_EQ(n["denied"], denied) << audit_dump();
}

// The report says what the gateway used for the sandbox, apart from the
// sandbox's own figures (rootful: the gateway's own group).
TEST_F(Network, ReportSaysWhatTheGatewayUsed) {
  ASSERT_EQ(host("mkdir -p " + lab_->dir() + "/files && head -c 48M /dev/zero > " + lab_->dir() + "/files/big.bin").status,
            0);
  Outcome r = run({"--net", "allow=allowed.test"},
                  "curl -sS --noproxy '*' -o /dev/null -w 'got %{size_download}\\n' http://allowed.test/files/big.bin\n");
  host("rm -f " + lab_->dir() + "/files/big.bin");
  EXPECT_EQ(r.out, "got 50331648\n") << r.err;
  ASSERT_TRUE(r.report["network"].is_object()) << r.report.dump();
  const json& g = r.report["network"]["gateway"];
  if (geteuid() != 0) {
    EXPECT_TRUE(g.is_null()) << g.dump();  // rootless: in the caller's group, not measured apart
    return;
  }
  ASSERT_TRUE(g.is_object()) << r.report.dump();
  // 48 MiB relayed: some CPU, and some memory (what the gateway touched
  // after its start: the pages it shares with the supervisor were charged
  // before).
  EXPECT_GE(g["cpu_ms"].get<int64_t>(), 1) << g.dump();
  EXPECT_GT(g["peak_memory_bytes"].get<int64_t>(), 0) << g.dump();
  // Negative control: without a network there is no gateway to report.
  Outcome none = ultari({"run", "--", "true"});
  EXPECT_TRUE(none.report["network"].is_null()) << none.report.dump();
}

// The gateway works for its sandbox, and what the sandbox makes it do
// (relaying, TLS, scanning) is bounded like the sandbox: rootful, it runs in
// a group of its own with the sandbox's cpu and memory limits and a task
// limit, and the group goes with the sandbox. No traffic is needed.
struct GroupLimits {
  std::string path;  // the memory controller's group
  std::string dir;   // that group's directory
  std::string memory, cpu, pids;
};

GroupLimits limits_of(pid_t pid) {
  GroupLimits g;
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/cgroup"));
  std::string line, v2;
  std::map<std::string, std::string> v1;
  while (std::getline(in, line)) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (controllers.empty()) v2 = path;
    std::stringstream list(controllers);
    std::string c;
    while (std::getline(list, c, ',')) v1[c] = path;
  }
  auto first_line = [](const std::string& text) { return text.substr(0, text.find('\n')); };
  if (v1.count("memory")) {
    g.path = v1["memory"];
    g.dir = "/sys/fs/cgroup/memory" + g.path;
    g.memory = first_line(read_file("/sys/fs/cgroup/memory" + v1["memory"] + "/memory.limit_in_bytes"));
    g.cpu = first_line(read_file("/sys/fs/cgroup/cpu" + v1["cpu"] + "/cpu.cfs_quota_us"));
    g.pids = first_line(read_file("/sys/fs/cgroup/pids" + v1["pids"] + "/pids.max"));
  } else {
    g.path = v2;
    g.dir = "/sys/fs/cgroup" + g.path;
    g.memory = first_line(read_file("/sys/fs/cgroup" + v2 + "/memory.max"));
    g.cpu = first_line(read_file("/sys/fs/cgroup" + v2 + "/cpu.max"));
    g.pids = first_line(read_file("/sys/fs/cgroup" + v2 + "/pids.max"));
  }
  return g;
}

// The child of `supervisor` named `comm` (0 when none).
pid_t child_named(pid_t supervisor, const std::string& comm) {
  std::istringstream in(read_file("/proc/" + std::to_string(supervisor) + "/task/" + std::to_string(supervisor) +
                                  "/children"));
  pid_t child;
  while (in >> child)
    if (read_file("/proc/" + std::to_string(child) + "/comm") == comm + "\n") return child;
  return 0;
}

TEST(NetworkGateway, RunsUnderItsSandboxsLimits) {
  if (geteuid() != 0) GTEST_SKIP() << "rootful only: a rootless gateway runs in the caller's group";
  TempDir dir;
  auto start = [&](const std::vector<std::string>& flags) {
    std::string log = dir / "out.log";
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    std::vector<std::string> args = {"run", "--quiet", "--net", "open", "--timeout", "60s"};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"--", "sh", "-c", "echo up; sleep 60"});
    pid_t pid = spawn_ultari(args, fd);
    close(fd);
    EXPECT_TRUE(wait_for_text(log, pid, "up")) << read_file(log);
    return pid;
  };
  auto stop = [](pid_t pid) {
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  };
  pid_t pid = start({"--cpus", "0.3", "--memory", "300M"});
  pid_t gateway = child_named(pid, "ultari-net"), init = child_named(pid, "ultari-init");
  ASSERT_GT(gateway, 0);
  ASSERT_GT(init, 0);
  GroupLimits g = limits_of(gateway), sandbox = limits_of(init);
  EXPECT_TRUE(exists(g.dir)) << g.dir;
  stop(pid);
  EXPECT_NE(g.path, "/");
  EXPECT_NE(g.path, sandbox.path);  // not the sandbox's own group
  EXPECT_EQ(g.memory, "314572800");
  EXPECT_TRUE(g.cpu == "30000" || g.cpu == "30000 100000") << g.cpu;
  EXPECT_EQ(g.pids, "512");
  EXPECT_FALSE(exists(g.dir)) << g.dir << " outlived the sandbox";
  // Negative control: without --cpus the gateway's group has no cpu limit
  // either (the value above came from the flag).
  pid = start({});
  gateway = child_named(pid, "ultari-net");
  ASSERT_GT(gateway, 0);
  GroupLimits open = limits_of(gateway);
  stop(pid);
  EXPECT_TRUE(open.cpu == "-1" || open.cpu.rfind("max", 0) == 0) << open.cpu;
  EXPECT_EQ(open.memory, std::to_string(1ull << 30));
}

}  // namespace
}  // namespace ultari::test
