// --net-upstream: a sandbox on a host that reaches the web only through a
// corporate HTTP proxy. The lab's host side becomes a "corporate network"
// (routes in H that reach the proxy only), so nothing can work unless it
// goes through the proxy; the proxy (tests/data/netlab/upstream_proxy.py)
// is as strict as squid's defaults (CONNECT only to 443, plain HTTP only in
// absolute form) and logs every request it gets.
//
// Negative controls: with the firewall the same requests fail without
// --net-upstream (and from the host side itself); the proxy honours the
// requests the attack tests try to smuggle when they are sent to it
// directly, so "not in the proxy's log" means the gateway stopped them.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
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

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> v;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

std::string proxy_url(int port) { return std::string("http://") + NetLab::kProxyAddr + ":" + std::to_string(port); }

// The host side is a corporate network (CorporateLabSuite): only the proxy
// is reachable, the lab's DNS included.
class Upstream : public CorporateLabSuite {
 protected:
  void SetUp() override {
    CorporateLabSuite::SetUp();
    audit_path_ = dir_ / "audit.jsonl";
  }

  Outcome run(const std::vector<std::string>& flags, const std::string& script, Options opt = {}) {
    std::vector<std::string> f = flags;
    f.insert(f.end(), {"--audit", audit_path_});
    for (const auto& b : lab_->binds()) f.push_back(b);
    return lab_->sh(script, f, std::move(opt));
  }
  // What the proxy was asked, one "METHOD TARGET STATUS" per request.
  std::vector<std::string> proxied() const {
    std::vector<std::string> v;
    for (const auto& e : lab_->proxy_log())
      v.push_back(e.value("method", "?") + " " + e.value("target", "?") + " " + std::to_string(e.value("status", 0)));
    return v;
  }
  bool proxied(const std::string& line) const {
    auto v = proxied();
    return std::find(v.begin(), v.end(), line) != v.end();
  }
  std::string proxy_dump() const {
    std::string s = "proxy saw:\n";
    for (const auto& e : lab_->proxy_log()) s += e.dump() + "\n";
    return s;
  }
  std::string audit_dump() const { return "audit log:\n" + read_file(audit_path_); }

  std::string audit_path_;
};

TEST_F(Upstream, AllowedNamesGoThroughTheProxyTheRestNowhere) {
  // Negative controls: behind the firewall nothing gets out directly, from
  // the host side or from a sandbox without --net-upstream.
  Outcome host = lab_->host_sh("curl -sS --max-time 3 " + NetLab::curl_resolve() + " http://allowed.test/ 2>&1");
  EXPECT_FALSE(served(host.out, "allowed.test")) << host.out;
  std::string script = direct("http", "http://allowed.test/") + direct("https", "https://www.allowed.test/tls") +
                       fetch("proxy_env_http", "http://allowed.test/p") + fetch("proxy_env_https", "https://allowed.test/q") +
                       direct("denied", "http://other.test/") + direct("denied_tls", "https://other.test/") +
                       probe("dns", "dns allowed.test") + probe("dns_denied", "dns other.test");
  Outcome without = run({"--net", "allow=allowed.test,www.allowed.test", "--net-resolver", NetLab::kDnsAddr}, script);
  EXPECT_TRUE(blocked(by_label(without.out)["http"])) << without.out;
  EXPECT_TRUE(blocked(by_label(without.out)["https"])) << without.out;
  lab_->clear_logs();
  truncate(audit_path_.c_str(), 0);

  Outcome r = run({"--net", "allow=allowed.test,www.allowed.test", "--net-upstream", proxy_url(NetLab::kProxyPort)}, script);
  auto l = by_label(r.out);
  // The transparent path and the explicit proxies, plain and TLS.
  EXPECT_TRUE(served(l["http"], "allowed.test") && has(l["http"], "host=allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["https"], "allowed.test") && has(l["https"], "sni=www.allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["proxy_env_http"], "allowed.test")) << l["proxy_env_http"];
  EXPECT_TRUE(served(l["proxy_env_https"], "allowed.test")) << l["proxy_env_https"];
  // Plain HTTP went as absolute-form requests, TLS through CONNECT.
  EXPECT_TRUE(proxied("GET http://allowed.test/ 200")) << proxy_dump();
  EXPECT_TRUE(proxied("GET http://allowed.test/p 200")) << proxy_dump();
  EXPECT_TRUE(proxied("CONNECT www.allowed.test:443 200")) << proxy_dump();
  EXPECT_TRUE(proxied("CONNECT allowed.test:443 200")) << proxy_dump();
  // The sandbox's names stand for synthetic addresses; denied names get none
  // and never reach the proxy; the lab's DNS was never asked.
  EXPECT_TRUE(has(l["dns"], "rcode=0 answers=198.18.")) << l["dns"];
  EXPECT_TRUE(has(l["dns_denied"], "rcode=3")) << l["dns_denied"];
  EXPECT_TRUE(blocked(l["denied"]) && blocked(l["denied_tls"])) << r.out;
  for (const auto& p : proxied()) EXPECT_FALSE(has(p, "other.test")) << proxy_dump();
  EXPECT_TRUE(lab_->dns_log().empty());
  // The audit log names the proxy each allowed connection went through.
  int via = 0;
  for (const auto& line : split_lines(read_file(audit_path_))) {
    json e = json::parse(line);
    if (e["kind"] == "dns") continue;
    if (e["decision"] == "allow") {
      EXPECT_EQ(e.value("via", ""), std::string(NetLab::kProxyAddr) + ":3128") << e.dump();
      ++via;
    } else {
      EXPECT_EQ(e["name"], "other.test") << e.dump();
    }
  }
  EXPECT_EQ(via, 4) << audit_dump();
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST_F(Upstream, CredentialsReachTheProxyNeverTheSandbox) {
  const std::string password = "proxy-password-1";  // NetLab::kProxyCredentials
  std::string script = direct("http", "-H 'Proxy-Authorization: Basic c2FuZGJveDpndWVzcw==' http://allowed.test/") +
                       direct("https", "https://allowed.test/") +
                       "if env | grep -q " + password + "; then echo 'env leaked'; else echo 'env clean'; fi\n"
                       "if grep -rqs " + password + " /proc/1/environ /proc/1/cmdline /etc /tmp; then echo 'files leaked'; "
                       "else echo 'files clean'; fi\n";
  std::vector<std::string> flags = {"--net", "allow=allowed.test", "--net-upstream", proxy_url(NetLab::kProxyAuthPort)};
  // Negative control: without the credentials the proxy refuses, and the
  // audit log says why.
  Outcome no = run(flags, script);
  EXPECT_TRUE(blocked(by_label(no.out)["http"]) || has(by_label(no.out)["http"], "code=407")) << no.out;
  EXPECT_TRUE(blocked(by_label(no.out)["https"])) << no.out;
  EXPECT_TRUE(proxied("CONNECT allowed.test:443 407")) << proxy_dump();
  EXPECT_TRUE(has(read_file(audit_path_), "407 Proxy Authentication Required (give --net-upstream-auth)")) << audit_dump();
  lab_->clear_logs();

  flags.insert(flags.end(), {"--net-upstream-auth", "env:ULTARI_TEST_PROXY_AUTH"});
  Options opt;
  opt.env = {std::string("ULTARI_TEST_PROXY_AUTH=") + NetLab::kProxyCredentials};
  Outcome r = run(flags, script, opt);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["http"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["https"], "allowed.test")) << r.out << r.err;
  EXPECT_EQ(l["env"], "clean");
  EXPECT_EQ(l["files"], "clean");
  // Every request carried the configured credentials, never the sandbox's own.
  auto log = lab_->proxy_log();
  ASSERT_EQ(log.size(), 2u) << proxy_dump();
  for (const auto& e : log) {
    EXPECT_EQ(e["auth"], "Basic bGFiOnByb3h5LXBhc3N3b3JkLTE=") << e.dump();  // base64("lab:proxy-password-1")
    EXPECT_EQ(e["status"], 200) << e.dump();
  }
  EXPECT_FALSE(has(lab_->requests().at(0).dump(), "c2FuZGJveDpndWVzcw")) << "the sandbox's Proxy-Authorization went on";
}

TEST_F(Upstream, TheProxyIsNeverAskedForAnotherHostOrPort) {
  // What the sandbox sends on its connection to allowed.test:80, and what a
  // proxy would make of it if it were passed on as it is.
  const std::string port_bypass =
      "GET http://allowed.test:8080/ HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n";
  const std::string tunnel = "CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n";
  const std::string other_host =
      "GET http://other.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n";
  // Negative controls: asked directly, the proxy goes to port 8080, opens
  // a tunnel to allowed.test:443 and fetches from other.test.
  std::string curl = "curl -sS --max-time 5 --cacert '" + lab_->ca_cert() + "' -x " + proxy_url(NetLab::kProxyPort) + " ";
  EXPECT_TRUE(served(lab_->host_sh(curl + "http://allowed.test:8080/").out, "allowed.test"));
  EXPECT_TRUE(proxied("GET http://allowed.test:8080/ 200")) << proxy_dump();
  EXPECT_TRUE(served(lab_->host_sh(curl + "https://allowed.test/").out, "allowed.test"));
  EXPECT_TRUE(proxied("CONNECT allowed.test:443 200")) << proxy_dump();
  EXPECT_TRUE(served(lab_->host_sh(curl + "-H 'Host: allowed.test' http://other.test/").out, "other.test"));
  lab_->clear_logs();

  Outcome r = run({"--net", "allow=allowed.test", "--net-upstream", proxy_url(NetLab::kProxyPort)},
                  probe("port", "raw allowed.test 80 '" + port_bypass + "'") +
                      probe("tunnel", "raw allowed.test 80 '" + tunnel + "'") +
                      probe("other", "raw allowed.test 80 '" + other_host + "'") +
                      probe("ok", "raw allowed.test 80 'GET /ok HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n'"));
  auto l = by_label(r.out);
  EXPECT_TRUE(has(l["ok"], "200 OK") && served(l["ok"], "allowed.test")) << r.out << r.err;  // the probe works
  // The absolute target's port is not the flow's: the proxy is asked for port 80.
  EXPECT_TRUE(served(l["port"], "allowed.test") && has(l["port"], " port=80 ")) << l["port"];
  EXPECT_TRUE(proxied("GET http://allowed.test/ 200")) << proxy_dump();
  EXPECT_FALSE(has(l["tunnel"], "200 Connection established")) << l["tunnel"];
  EXPECT_FALSE(has(l["other"], "server=other.test")) << l["other"];
  for (const auto& p : proxied()) {
    EXPECT_FALSE(has(p, "8080") || has(p, "CONNECT") || has(p, "other.test")) << proxy_dump();
  }
  std::string audit = read_file(audit_path_);
  EXPECT_TRUE(has(audit, "\"reason\":\"http-connect\"")) << audit;
  EXPECT_TRUE(has(audit, "\"reason\":\"sni-mismatch\"")) << audit;
}

TEST_F(Upstream, OpenModeReachesPublicAddressesThroughTheProxyOnly) {
  Outcome r = run({"--net", "open", "--net-upstream", proxy_url(NetLab::kProxyPort)},
                  direct("ip_tls", "https://203.0.113.10/") + direct("private", "https://10.99.0.10/") +
                      direct("name", "https://other.test/"));
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ip_tls"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["name"], "other.test")) << r.out << r.err;
  EXPECT_TRUE(blocked(l["private"])) << l["private"];
  EXPECT_TRUE(proxied("CONNECT 203.0.113.10:443 200")) << proxy_dump();
  for (const auto& p : proxied()) EXPECT_FALSE(has(p, "10.99.0.10")) << proxy_dump();
}

TEST_F(Upstream, InspectedTlsGoesThroughTheProxyToo) {
  Outcome r = run({"--net", "allow=allowed.test", "--net-upstream", proxy_url(NetLab::kProxyPort), "--inspect-tls",
                   "--net-ca", lab_->ca_cert()},
                  // The sandbox's own trust store (its CA), not the lab's.
                  "r=$(curl -sS --noproxy '*' --max-time 8 https://allowed.test/tls 2>&1); echo \"https $r\"\n"
                  "echo | openssl s_client -connect allowed.test:443 -servername allowed.test 2>/dev/null | "
                  "grep -m1 '^issuer' | sed 's/^/issuer /'\n");
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["https"], "allowed.test")) << r.out << r.err;
  EXPECT_TRUE(has(l["issuer"], "Ultari")) << r.out;
  EXPECT_TRUE(proxied("CONNECT allowed.test:443 200")) << proxy_dump();
}

TEST_F(Upstream, BadInputIsRefusedWithAClearMessage) {
  struct Case {
    std::vector<std::string> flags;
    std::string mention;
    std::vector<std::string> env = {};
  };
  std::string no_colon = dir_ / "cred";
  write_file(no_colon, "justapassword\n");
  std::vector<Case> cases = {
      {{"--net", "allow=allowed.test", "--net-upstream", "https://203.0.113.1:3128"}, "http://HOST:PORT"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://203.0.113.1"}, "port"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://u:p@203.0.113.1:3128"}, "--net-upstream-auth"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://203.0.113.1:99999"}, "99999"},
      {{"--net-upstream", "http://203.0.113.1:3128"}, "needs a network"},
      {{"--net", "allow=allowed.test", "--net-upstream-auth", "env:HOME"}, "needs --net-upstream"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://203.0.113.1:3128", "--net-upstream-auth", "HOME"},
       "env:VARIABLE"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://203.0.113.1:3128", "--net-upstream-auth",
        "env:ULTARI_NO_SUCH_VAR"},
       "ULTARI_NO_SUCH_VAR"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://203.0.113.1:3128", "--net-upstream-auth",
        "file:" + no_colon},
       "user:password"},
      {{"--net", "allow=allowed.test", "--net-upstream", "http://no-such-proxy.invalid:3128"}, "no-such-proxy.invalid"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"run"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    args.insert(args.end(), {"--", "/bin/sh", "-c", "echo ran"});
    Outcome r = lab_->ultari(args);
    std::string what = testing::PrintToString(c.flags);
    EXPECT_EQ(r.status, 125) << what << ": " << r.err;
    EXPECT_EQ(r.err.rfind("ultari: ", 0), 0u) << what << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.mention)) << what << " should mention " << c.mention << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
    EXPECT_EQ(r.out, "") << what;
    EXPECT_FALSE(has(r.err, "justapassword") || has(r.err, "u:p@")) << r.err;
  }
  EXPECT_TRUE(lab_->proxy_log().empty()) << proxy_dump();
  // Negative control: a good URL runs.
  Outcome ok = lab_->ultari({"run", "--net", "allow=allowed.test", "--net-upstream", proxy_url(NetLab::kProxyPort), "--",
                             "/bin/sh", "-c", "echo ran"});
  EXPECT_EQ(ok.out, "ran\n") << ok.err;
  EXPECT_EQ(ok.status, 0) << ok.err;
}

}  // namespace
}  // namespace ultari::test
