// Fifth independent attack review: write_files[].source (a URL fetched at
// provisioning by a sandbox allowed that URL's host and port alone, its
// headers sent by the image's curl or wget). Provisionings run inside the
// lab (tests/integration/netlab.h) on a busybox base (wget): traffic goes
// only to the lab's hosts.
//
// Every test proves the attack fails, with a negative control showing that
// the test would see it succeed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class AttackReview5 : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(host("chmod 755 " + dir_.path()).status, 0); }
  std::string name(const std::string& suffix) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string("t-") + info->name() + "-" + suffix + "-" + std::to_string(getpid());
  }
  // A busybox base (its wget sends the headers), imported once per test.
  std::string busybox_base() {
    std::string root = dir_ / "bb";
    EXPECT_EQ(host("set -e; R=" + root + "; mkdir -p $R/bin $R/tmp $R/root $R/etc && cp /usr/bin/busybox $R/bin/ && "
                   "for c in $(/usr/bin/busybox --list); do [ \"$c\" = busybox ] || ln -sf busybox \"$R/bin/$c\"; done && "
                   "printf 'root:x:0:0:root:/root:/bin/sh\\n' > $R/etc/passwd && printf 'root:x:0:\\n' > $R/etc/group && "
                   "chmod 1777 $R/tmp")
                  .status,
              0);
    std::string base = name("bb");
    EXPECT_EQ(ultari({"image", "import", base, root, "-q"}, test_image_options()).status, 0);
    images_.push_back(base);
    return base;
  }
  Outcome provision_in_lab(const NetLab& lab, const std::string& base, const std::string& image,
                           const std::string& user_data) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    images_.push_back(image);
    return lab.ultari({"image", "provision", image, "--from", base, "--user-data", file, "--net-resolver",
                       NetLab::kDnsAddr, "--no-cache", "-q"},
                      test_image_options(600));
  }
  Outcome in(const std::string& image, const std::string& script) {
    return ultari({"run", "--image", image, "--", "/bin/sh", "-c", script}, test_image_options());
  }
  void TearDown() override {
    for (auto it = images_.rbegin(); it != images_.rend(); ++it) ultari({"image", "rm", *it}, test_image_options());
  }
  std::vector<std::string> images_;
  TempDir dir_;
};

// A source's headers are data: a value holding options, shell text or a
// curl @file arrives verbatim as one header (negative control: the fetch
// works and the header is there); a `Host` header naming another host does
// not reach it (refused when the user-data is read, and other.test's
// server logs nothing); a URL whose
// user:password names the other host reaches the URL's host alone.
TEST_F(AttackReview5, SourceHeadersAndUrlsReachTheUrlsHostAlone) {
  NetLab lab;
  ASSERT_EQ(host("mkdir -p " + lab.dir() + "/files && printf 'from-allowed\\n' > " + lab.dir() + "/files/f.txt").status, 0);
  std::string base = busybox_base();
  const std::string probe = "-O /etc/pwned $(touch /etc/pwned-shell) `id` @/etc/shadow \\\\ ' HEADERS";
  const std::string ud =
      "#cloud-config\nwrite_files:\n"
      "  - path: /etc/ok\n    content: fallback-ok\n"
      "    source: {uri: 'http://allowed.test/files/f.txt', headers: {X-Probe: \"" + probe + "\", X-Host: other.test}}\n"
      "  - path: /etc/user-other\n    content: fallback-user\n"
      "    source: {uri: 'http://other.test:80@allowed.test/files/f.txt'}\n"
      "  - path: /etc/port-other\n    content: fallback-port\n"
      "    source: {uri: 'http://allowed.test:8080/files/f.txt?@other.test:80'}\n";
  std::string img = name("src");
  Outcome r = provision_in_lab(lab, base, img, ud);
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome s = in(img, "cat /etc/ok /etc/user-other; echo; ls /etc/pwned /etc/pwned-shell 2>&1 | wc -l");
  // /etc/ok and /etc/user-other fetched.
  EXPECT_EQ(s.out, "from-allowed\nfrom-allowed\n\n2\n") << s.out << s.err;
  EXPECT_FALSE(has(r.err, "/etc/ok (")) << r.err;
  // A Host header is the fetcher's to set: refused when the user-data is
  // read (the gateway's Host check would stop it too), nothing fetched.
  Outcome h = provision_in_lab(lab, base, name("host"),
                               "#cloud-config\nwrite_files:\n  - path: /etc/host-override\n    content: x\n"
                               "    source: {uri: 'http://allowed.test/files/f.txt', headers: {Host: other.test}}\n");
  EXPECT_EQ(h.status, 125);
  EXPECT_TRUE(has(h.err, "'Host' is the fetcher's to set")) << h.err;
  std::string got_probe, got_xhost;
  int at_allowed = 0, at_8080 = 0;
  for (const auto& q : lab.requests()) {
    EXPECT_NE(q["addr"], NetLab::kOtherAddr) << q.dump();  // nothing ever reached other.test
    EXPECT_NE(q["host"], "other.test") << q.dump();
    if (q["addr"] == NetLab::kAllowedAddr) ++at_allowed;
    if (q["port"] == 8080) ++at_8080;
    for (const auto& h : q["headers"]) {
      if (h[0] == "X-Probe") got_probe = h[1];
      if (h[0] == "X-Host") got_xhost = h[1];
    }
  }
  // Negative controls: the headers arrived verbatim (the probe would see
  // an injected Host the same way), and the servers' log is read.
  EXPECT_EQ(got_probe, "-O /etc/pwned $(touch /etc/pwned-shell) `id` @/etc/shadow \\ ' HEADERS");
  EXPECT_EQ(got_xhost, "other.test");
  EXPECT_GE(at_allowed, 2);
  EXPECT_EQ(at_8080, 1);  // the '@' of the query was not read as user:password
}

// A hostile source cannot blow up the host or hang it: a 33 MiB answer
// (past the 32 MiB a source may be) and 200 KiB of headers (past what one
// environment string may hold) each fail their fetch alone, and the
// content is written instead; a small source in the same build is fetched
// (negative control).
TEST_F(AttackReview5, OversizedSourcesAndHeadersFailTheirFetchAlone) {
  NetLab lab;
  ASSERT_EQ(host("set -e; mkdir -p " + lab.dir() + "/files && printf 'small\\n' > " + lab.dir() + "/files/small.txt && "
                 "head -c 34603008 /dev/zero > " + lab.dir() + "/files/big.bin")
                .status,
            0);
  std::string base = busybox_base();
  const std::string ud =
      "#cloud-config\nwrite_files:\n"
      "  - path: /etc/small\n    content: fallback-small\n"
      "    source: {uri: 'http://allowed.test/files/small.txt'}\n"
      "  - path: /etc/big\n    content: fallback-big\n"
      "    source: {uri: 'http://allowed.test/files/big.bin'}\n"
      "  - path: /etc/headers\n    content: fallback-headers\n"
      "    source: {uri: 'http://allowed.test/files/small.txt', headers: {X-Big: '" + std::string(200 << 10, 'a') + "'}}\n";
  std::string img = name("big");
  auto start = std::chrono::steady_clock::now();
  Outcome r = provision_in_lab(lab, base, img, ud);
  ASSERT_EQ(r.status, 0) << r.err.substr(0, 4000);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::minutes(5));
  EXPECT_TRUE(has(r.err, "larger than 33554432 bytes")) << r.err.substr(0, 4000);
  Outcome s = in(img, "cat /etc/small /etc/big; echo; cat /etc/headers");
  EXPECT_EQ(s.out, "small\nfallback-big\nfallback-headers") << s.out << s.err;
  for (const auto& q : lab.requests()) {
    for (const auto& h : q["headers"]) EXPECT_NE(h[0], "X-Big");  // never sent, nor cut and sent
  }
}

}  // namespace
}  // namespace ultari::test
