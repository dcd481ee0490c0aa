// Fourth independent attack review: apt keys by keyid (a hostile key
// server), #include lists fetched at provisioning (URLs naming private
// addresses). Provisionings run inside the lab (tests/integration/netlab.h):
// traffic goes only to the lab's hosts.
//
// Every test proves the attack fails, with a negative control showing that
// the test would see it succeed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class AttackReview4 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { build_error_ = ensure_debian_test_image(); }
  void SetUp() override {
    if (!build_error_.empty()) GTEST_FAIL() << build_error_;
    ASSERT_EQ(host("chmod 755 " + dir_.path()).status, 0);
  }
  static std::string build_error_;
  std::string name(const std::string& suffix) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string("t-") + info->name() + "-" + suffix + "-" + std::to_string(getpid());
  }
  Outcome provision_in_lab(const NetLab& lab, const std::string& image, const std::string& user_data) {
    std::string file = dir_ / (image + ".txt");
    write_file(file, user_data);
    return lab.ultari({"image", "provision", image, "--from", "minbase-kmod", "--user-data", file, "--net-resolver",
                       NetLab::kDnsAddr, "--no-cache", "-q"},
                      test_image_options(600));
  }
  Outcome in(const std::string& image, const std::string& script) {
    return ultari({"run", "--image", image, "--", "/bin/sh", "-c", script}, test_image_options());
  }
  int scratch_dirs() {
    Outcome r = host("for d in $(ls " + test_image_store() +
                     "/images/tmp 2>/dev/null); do [ -d /proc/${d%%-*} ] || echo $d; done | wc -l");
    return std::stoi(r.out);
  }
  void remove_image(const std::string& image) { ultari({"image", "rm", image}, test_image_options()); }
  TempDir dir_;
};
std::string AttackReview4::build_error_;

// A hostile key server answers the ID's key followed by a key of its own
// as a secret-key block (other.asc's packets, the first one's tag made 5).
// gpg's import would split the answer there; Sequoia's sqv (apt's verifier
// since apt 2.9) takes such a block in a keyring as a certificate, so
// keeping it would make apt trust the server's key. The image's keyring is
// the ID's key alone, byte for byte.
TEST_F(AttackReview4, AHostileKeyServerCannotAddAKeyOfItsOwn) {
  NetLab lab;
  const std::string keys = std::string(ULTARI_TEST_DATA) + "/provision/keys/";
  const std::string fpr = "EA875C85C945DA5297F51AC04731D5CD4E7EDEA6";
  ASSERT_EQ(host("set -e; mkdir -p " + lab.dir() + "/keys; cd " + dir_.path() + "; gpg --dearmor < " + keys +
                 "test.asc > a.bin; gpg --dearmor < " + keys + "other.asc > b.bin; "
                 "cat a.bin > answer.bin; printf '\\224' >> answer.bin; tail -c +2 b.bin >> answer.bin; "
                 "{ echo '-----BEGIN PGP PUBLIC KEY BLOCK-----'; echo; base64 -w 64 answer.bin; "
                 "echo '-----END PGP PUBLIC KEY BLOCK-----'; } > " + lab.dir() + "/keys/" +
                 "ea875c85c945da5297f51ac04731d5cd4e7edea6.asc")
                .status,
            0);
  std::string img = name("key");
  Outcome r = provision_in_lab(lab, img,
                               "#cloud-config\napt:\n  sources:\n    lab.list:\n"
                               "      source: 'deb [signed-by=$KEY_FILE] http://allowed.test/debian bookworm main'\n"
                               "      keyid: '" + fpr + "'\n      keyserver: 'http://allowed.test'\n");
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome s = in(img, "sha256sum < /etc/apt/cloud-init.gpg.d/lab.gpg");
  EXPECT_EQ(s.out, host("sha256sum < " + dir_.path() + "/a.bin").out) << s.err;
  // Negative control: the server did answer more than the key (its
  // answer's packets differ from what was kept).
  EXPECT_NE(host("sha256sum < " + dir_.path() + "/answer.bin").out, s.out);
  bool asked = false;
  for (const auto& q : lab.requests()) asked |= has(q["path"].get<std::string>(), "search=0x" + fpr);
  EXPECT_TRUE(asked);
  remove_image(img);
  EXPECT_EQ(scratch_dirs(), 0);
}

// #include URLs naming private addresses (a name that resolves to one, an
// address literal, loopback): refused by the URL's own egress policy; the
// lab's private server receives nothing, and nothing is committed.
TEST_F(AttackReview4, IncludeUrlsReachNoPrivateOrLoopbackAddress) {
  NetLab lab;
  ASSERT_EQ(host("mkdir -p " + lab.dir() + "/files").status, 0);
  write_file(lab.dir() + "/files/a.yaml", "#cloud-config\nwrite_files:\n  - path: /etc/included\n    content: a\n");
  for (const std::string& url : {std::string("http://private.test/files/a.yaml"),
                                 std::string("http://") + NetLab::kPrivateAddr + "/files/a.yaml",
                                 std::string("http://127.0.0.1:80/files/a.yaml"), std::string("http://localhost/files/a.yaml"),
                                 std::string("http://x:y@") + NetLab::kPrivateAddr + "/files/a.yaml"}) {
    lab.clear_logs();
    std::string img = name("private");
    Outcome r = provision_in_lab(lab, img, "#include\n" + url + "\n");
    EXPECT_EQ(r.status, 125) << url;
    // (messages hide a password: x:***@)
    std::string shown = url.rfind("http://x:y@", 0) == 0 ? "http://x:***@" + url.substr(11) : url;
    EXPECT_TRUE(has(r.err, "#include: fetching " + shown + " failed")) << url << "\n" << r.err;
    for (const auto& q : lab.requests()) EXPECT_NE(q["addr"], NetLab::kPrivateAddr) << q.dump();
    EXPECT_NE(ultari({"image", "inspect", img}, test_image_options()).status, 0);
  }
  EXPECT_EQ(scratch_dirs(), 0);
  // Negative control: the same file from allowed.test is fetched and taken.
  lab.clear_logs();
  std::string ok = name("ok");
  Outcome r = provision_in_lab(lab, ok, "#include\nhttp://allowed.test/files/a.yaml\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(in(ok, "cat /etc/included").out, "a");
  remove_image(ok);
}

}  // namespace
}  // namespace ultari::test
