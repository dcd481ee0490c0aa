// --inspect-tls and --secret end to end, in the lab (netlab.h): HTTPS is
// terminated with a CA made for the sandbox, so its bodies are scanned and
// its Host checked against its SNI; secrets reach their host while the
// sandbox holds a placeholder. Each test has a negative control: the same
// request without inspection gets through (or carries what it carried).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

constexpr const char* kKey = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAfakefakefake\n-----END RSA PRIVATE KEY-----\n";
constexpr const char* kSecret = "sk-real-value-4b1d9e";

class NetworkTls : public LabSuite {
 protected:
  void SetUp() override {
    LabSuite::SetUp();
    write_file(dir_ / "key.txt", kKey);
  }

  // SCRIPT under a policy allowing allowed.test and www.allowed.test plus
  // `extra` TOML, with `flags`; the lab's files at /lab, /ca.pem, this
  // test's dir at /data.
  Outcome run(const std::vector<std::string>& flags, const std::string& script, const std::string& extra = "",
              Options opt = {}) {
    std::string policy = dir_ / "policy.toml";
    write_file(policy, "allow = [\"allowed.test\", \"www.allowed.test\"]\n" + extra);
    std::vector<std::string> all = {"--net-policy", policy, "--net-resolver", NetLab::kDnsAddr, "--audit",
                                    dir_ / "audit.jsonl", "--ro-bind", dir_.path() + ":/data"};
    for (const auto& b : lab_->binds()) all.push_back(b);
    all.insert(all.end(), flags.begin(), flags.end());
    return lab_->sh(script, all, std::move(opt));
  }
  std::vector<std::string> inspect() const { return {"--inspect-tls", "--net-ca", lab_->ca_cert()}; }
  std::optional<json> line_for(const std::string& kind) const { return first_of(dir_ / "audit.jsonl", kind); }
  static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
};

// curl with the system trust store only (no --cacert): only a CA the
// sandbox trusts makes it work.
const std::string kGet = "curl -sS --noproxy '*' --max-time 5 -w ' code=%{http_code}\\n' https://allowed.test/; echo rc=$?";

TEST_F(NetworkTls, TheSandboxTrustsItsOwnCaAndTheServerIsVerified) {
  Outcome r = run(inspect(), kGet + "; echo env=$SSL_CERT_FILE; openssl crl2pkcs7 -nocrl -certfile " +
                                 "/etc/ssl/certs/ca-certificates.crt | openssl pkcs7 -print_certs -noout | grep Ultari");
  EXPECT_TRUE(contains(r.out, "code=200")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "lab server=allowed.test")) << r.out;
  EXPECT_TRUE(contains(r.out, "env=/etc/ssl/certs/ca-certificates.crt")) << r.out;
  EXPECT_TRUE(contains(r.out, "Ultari sandbox CA")) << r.out;
  // The server saw a real TLS connection for the name, from the gateway.
  auto reqs = lab_->requests();
  ASSERT_EQ(reqs.size(), 1u) << arrived();
  EXPECT_EQ(reqs[0]["scheme"], "https");
  EXPECT_EQ(reqs[0]["sni"], "allowed.test");
  auto l = line_for("tls");
  ASSERT_TRUE(l.has_value()) << read_file(dir_ / "audit.jsonl");
  EXPECT_EQ((*l)["decision"], "allow");
  // The host's trust store is untouched: the sandbox's CA is nowhere on it.
  EXPECT_FALSE(contains(read_file("/etc/ssl/certs/ca-certificates.crt"), "Ultari sandbox CA"));
  // Negative control: without inspection the lab's certificate (not in the
  // system store) is refused by the same curl.
  lab_->clear_logs();
  Outcome plain = run({}, kGet);
  EXPECT_FALSE(contains(plain.out, "rc=0")) << plain.out;
  EXPECT_FALSE(contains(plain.out, "code=200")) << plain.out;
}

TEST_F(NetworkTls, AnUpstreamCertificateThatDoesNotVerifyIsRefused) {
  // No --net-ca: the lab's CA is unknown on the host side.
  Outcome r = run({"--inspect-tls"}, kGet);
  EXPECT_FALSE(contains(r.out, "code=200")) << r.out << r.err;
  EXPECT_TRUE(lab_->requests().empty()) << arrived();
  auto l = line_for("tls");
  ASSERT_TRUE(l.has_value()) << read_file(dir_ / "audit.jsonl");
  EXPECT_TRUE(contains((*l).value("error", ""), "certificate verify failed")) << l->dump();
  // Negative control: the same run with the lab's CA added works (test
  // above); and the certificate must be for the name: the lab's server
  // certificate does not name www2.allowed.test.
}

TEST_F(NetworkTls, DlpSeesInsideHttps) {
  const std::string post =
      "curl -sS --noproxy '*' --max-time 5 -o /dev/null -w 'code=%{http_code}\\n' --data-binary @/data/key.txt "
      "https://allowed.test/upload; echo rc=$?";
  Outcome r = run(inspect(), post, "[dlp]\n");
  EXPECT_FALSE(contains(r.out, "code=200")) << r.out << r.err;
  EXPECT_FALSE(contains(arrived(), "PRIVATE KEY")) << arrived();
  auto l = line_for("tls");
  ASSERT_TRUE(l.has_value()) << read_file(dir_ / "audit.jsonl");
  EXPECT_EQ((*l)["decision"], "deny");
  EXPECT_EQ((*l)["reason"], "dlp:private-key");
  // Negative control: without --inspect-tls the key leaves inside TLS
  // (the sandbox trusts the lab's CA itself here).
  lab_->clear_logs();
  Outcome blind = run({}, "curl -sS --cacert /ca.pem --noproxy '*' --max-time 5 -o /dev/null -w 'code=%{http_code}\\n' "
                          "--data-binary @/data/key.txt https://allowed.test/upload",
                      "[dlp]\n");
  EXPECT_TRUE(contains(blind.out, "code=200")) << blind.out << blind.err;
  EXPECT_TRUE(contains(arrived(), "PRIVATE KEY")) << arrived();
}

TEST_F(NetworkTls, DomainFrontingInsideTlsIsCaught) {
  // SNI allowed.test (allowed), Host other.test (not): the lab serves
  // both names on every address, so a fronted request would be answered.
  const std::string fronted = "curl -sS --noproxy '*' --max-time 5 -w ' code=%{http_code}\\n' -H 'Host: other.test' "
                              "https://allowed.test/; echo rc=$?";
  Outcome r = run(inspect(), fronted);
  EXPECT_FALSE(contains(r.out, "code=200")) << r.out << r.err;
  for (const auto& req : lab_->requests()) EXPECT_NE(req["host"], "other.test") << req.dump();
  auto l = line_for("tls");
  ASSERT_TRUE(l.has_value()) << read_file(dir_ / "audit.jsonl");
  EXPECT_EQ((*l)["reason"], "sni-mismatch");
  // Negative control: without inspection the fronted request reaches the
  // server (which is why --inspect-tls exists).
  lab_->clear_logs();
  Outcome blind = run({}, "curl -sS --cacert /ca.pem --noproxy '*' --max-time 5 -o /dev/null -w 'code=%{http_code}\\n' "
                          "-H 'Host: other.test' https://allowed.test/");
  EXPECT_TRUE(contains(blind.out, "code=200")) << blind.out << blind.err;
  bool fronted_arrived = false;
  for (const auto& req : lab_->requests()) fronted_arrived |= req["host"] == "other.test";
  EXPECT_TRUE(fronted_arrived) << arrived();
}

TEST_F(NetworkTls, ThroughTheExplicitProxiesToo) {
  const std::string script =
      "curl -sS -x http://127.0.0.1:3128 --max-time 5 -o /dev/null -w 'connect=%{http_code}\\n' "
      "--data-binary @/data/key.txt https://allowed.test/upload; "
      "curl -sS -x socks5h://127.0.0.1:1080 --max-time 5 -o /dev/null -w 'socks=%{http_code}\\n' "
      "--data-binary @/data/key.txt https://allowed.test/upload; "
      "curl -sS -x http://127.0.0.1:3128 --max-time 5 -o /dev/null -w 'ok=%{http_code}\\n' https://allowed.test/";
  Outcome r = run(inspect(), script, "[dlp]\n");
  EXPECT_FALSE(contains(r.out, "connect=200")) << r.out << r.err;
  EXPECT_FALSE(contains(r.out, "socks=200")) << r.out << r.err;
  EXPECT_FALSE(contains(arrived(), "PRIVATE KEY")) << arrived();
  // Negative control: a request without the key goes through the proxy.
  EXPECT_TRUE(contains(r.out, "ok=200")) << r.out << r.err;
}

TEST_F(NetworkTls, SecretsReachTheirHostOnlyAndTheSandboxSeesAPlaceholder) {
  Options opt;
  opt.env = {std::string("ULTARI_TEST_SECRET=") + kSecret};
  write_file(dir_ / "token", std::string(kSecret) + "-file\n");
  std::vector<std::string> flags = inspect();
  flags.insert(flags.end(), {"--secret", "API_KEY=env:ULTARI_TEST_SECRET@allowed.test", "--secret",
                             "FILE_KEY=file:" + std::string(dir_ / "token") + "@allowed.test"});
  const std::string script =
      "echo key=$API_KEY file=$FILE_KEY; "
      "curl -sS --noproxy '*' --max-time 5 -o /dev/null -H \"Authorization: Bearer $API_KEY\" "
      "-H \"X-Api-Key: $FILE_KEY\" -H \"Origin: $API_KEY\" 'https://allowed.test/a?key='$API_KEY; "
      "curl -sS --noproxy '*' --max-time 5 -o /dev/null -H \"Authorization: Bearer $API_KEY\" https://www.allowed.test/b; "
      "curl -sS --noproxy '*' --max-time 5 -o /dev/null -H \"Authorization: Bearer $API_KEY\" http://allowed.test/c; "
      "grep -rl " + std::string(kSecret) + " /proc/self/environ /etc /tmp /root 2>/dev/null; echo searched";
  Outcome r = run(flags, script, "", opt);
  ASSERT_TRUE(contains(r.out, "searched")) << r.out << r.err;
  // The sandbox holds placeholders only, everywhere it can look.
  EXPECT_FALSE(contains(r.out, kSecret)) << r.out;
  EXPECT_TRUE(contains(r.out, "key=ultari-secret-")) << r.out;
  EXPECT_TRUE(contains(r.out, "file=ultari-secret-")) << r.out;
  std::map<std::string, json> by_path;
  for (const auto& req : lab_->requests()) by_path[req["path"].get<std::string>().substr(0, 2)] = req;
  ASSERT_EQ(by_path.size(), 3u) << arrived();
  std::string a = by_path["/a"].dump(), b = by_path["/b"].dump(), c = by_path["/c"].dump();
  // allowed.test over inspected TLS gets the values in its auth headers...
  EXPECT_TRUE(contains(a, std::string("Bearer ") + kSecret)) << a;
  EXPECT_TRUE(contains(a, std::string(kSecret) + "-file")) << a;
  // ...never in the request line or another header, which servers echo
  // back (a 404 page, CORS Origin reflection).
  EXPECT_TRUE(contains(by_path["/a"]["path"].get<std::string>(), "key=ultari-secret-")) << a;
  std::string origin;
  for (const auto& kv : by_path["/a"]["headers"])
    if (kv[0] == "Origin") origin = kv[1];
  EXPECT_EQ(origin.rfind("ultari-secret-", 0), 0u) << a;
  // Another host, allowed too, and cleartext HTTP to the secret's own
  // host: the placeholder only.
  EXPECT_FALSE(contains(b, kSecret)) << b;
  EXPECT_TRUE(contains(b, "Bearer ultari-secret-")) << b;
  EXPECT_FALSE(contains(c, kSecret)) << c;
  EXPECT_TRUE(contains(c, "Bearer ultari-secret-")) << c;
  // Never in the audit log.
  EXPECT_FALSE(contains(read_file(dir_ / "audit.jsonl"), kSecret));
}

// Whether any readable mapping of process `pid` holds `needle` (read as
// root through /proc/PID/mem).
bool memory_holds(pid_t pid, const std::string& needle) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  int mem = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (mem < 0) return false;
  bool found = false;
  for (std::string line; !found && std::getline(maps, line);) {
    unsigned long start = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &start, &end, perms) != 3 || perms[0] != 'r') continue;
    if (line.find("[vvar]") != std::string::npos || end - start > (256ul << 20)) continue;
    std::string buf(end - start, '\0');
    ssize_t n = pread(mem, buf.data(), buf.size(), static_cast<off_t>(start));
    if (n > 0) found = std::string_view(buf.data(), static_cast<size_t>(n)).find(needle) != std::string_view::npos;
  }
  close(mem);
  return found;
}

// The processes whose comm is `comm` (and, when given, whose parent is
// `parent`).
std::vector<pid_t> find_processes(const std::string& comm, pid_t parent = 0) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = read_file(e.path() / "stat");
    size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    if (stat.substr(open + 1, close - open - 1) != comm) continue;
    pid_t ppid = static_cast<pid_t>(std::atoi(stat.c_str() + close + 4));
    if (parent == 0 || ppid == parent) out.push_back(static_cast<pid_t>(std::stoi(name)));
  }
  return out;
}

TEST_F(NetworkTls, TheSandboxsInitNeverHeldTheCaKeyOrTheSecret) {
  // Values of this test only: other tests' sandboxes (ctest runs them in
  // parallel) may hold kSecret legitimately, in their command text.
  const std::string env_secret = "env-secret-5be01c7a";
  Options opt;
  opt.env = {"ULTARI_TEST_SECRET=" + env_secret};
  write_file(dir_ / "token", "file-secret-9d2c1e\n");
  std::vector<std::string> flags = inspect();
  flags.insert(flags.end(), {"--secret", "API_KEY=env:ULTARI_TEST_SECRET@allowed.test", "--secret",
                             "FILE_KEY=file:" + std::string(dir_ / "token") + "@allowed.test"});
  std::atomic<bool> finished{false};
  Outcome r;
  std::thread t([&] {
    r = run(flags, "sleep 1.5; echo done", "", opt);
    finished = true;
  });
  // Our sandbox: the gateway that holds this test's file secret (the
  // negative control of the scan, too), and the init of its supervisor.
  pid_t gateway = 0, init = 0;
  for (int i = 0; i < 100 && !finished && (!gateway || !init); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (pid_t g : find_processes("ultari-net"))
      if (memory_holds(g, "file-secret-9d2c1e")) gateway = g;
    std::string stat = gateway ? read_file("/proc/" + std::to_string(gateway) + "/stat") : "";
    pid_t supervisor = stat.empty() ? 0 : static_cast<pid_t>(std::atoi(stat.c_str() + stat.rfind(')') + 4));
    auto inits = supervisor ? find_processes("ultari-init", supervisor) : std::vector<pid_t>{};
    init = inits.empty() ? 0 : inits.front();
  }
  ASSERT_NE(gateway, 0);
  ASSERT_NE(init, 0);
  // Read while the command runs (init waits for it).
  bool init_secret = memory_holds(init, env_secret), init_file = memory_holds(init, "file-secret-9d2c1e"),
       // Every P-256 key in PEM (PKCS#8) starts so; libcrypto's own strings
       // ("PRIVATE KEY") do not.
       init_key = memory_holds(init, "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg");
  // Negative control: the gateway needs them, and the scan finds them there.
  bool gw_secret = memory_holds(gateway, env_secret), gw_file = memory_holds(gateway, "file-secret-9d2c1e");
  t.join();
  EXPECT_NE(r.out.find("done"), std::string::npos) << r.out << r.err;
  EXPECT_FALSE(init_secret);
  EXPECT_FALSE(init_file);
  EXPECT_FALSE(init_key);
  EXPECT_TRUE(gw_secret);
  EXPECT_TRUE(gw_file);
}

TEST_F(NetworkTls, BadSecretSourcesFailBeforeAnythingRuns) {
  write_file(dir_ / "multi", "line1\nline2\n");
  for (const auto& secret : {std::string("K=env:ULTARI_TEST_UNSET_VAR@allowed.test"),
                             "K=file:" + std::string(dir_ / "multi") + "@allowed.test",
                             "K=file:" + std::string(dir_ / "absent") + "@allowed.test"}) {
    std::vector<std::string> flags = inspect();
    flags.insert(flags.end(), {"--secret", secret});
    Outcome r = run(flags, "echo ran");
    EXPECT_EQ(r.status, 125) << secret << ": " << r.err;
    EXPECT_TRUE(contains(r.err, "secret K")) << r.err;
    EXPECT_FALSE(contains(r.out, "ran")) << r.out;
  }
  EXPECT_TRUE(lab_->processes_in_host().empty());
  // Negative control: a good source runs.
  Options opt;
  opt.env = {"ULTARI_TEST_SECRET=x-value"};
  std::vector<std::string> flags = inspect();
  flags.insert(flags.end(), {"--secret", "K=env:ULTARI_TEST_SECRET@allowed.test"});
  EXPECT_TRUE(contains(run(flags, "echo ran", "", opt).out, "ran"));
}

}  // namespace
}  // namespace ultari::test
