// YAML merge keys in a cloud-config (PyYAML's, as cloud-init reads it;
// yaml-cpp 0.7 keeps "<<" as a key), and aliases walked once.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "provision/cloud_config.h"
#include "util/error.h"

namespace ultari::provision {
namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The message of the Error `f` throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> runcmd_of(const CloudConfig& c) {
  std::vector<std::string> v;
  for (const auto& x : c.runcmd) v.push_back(x.describe());
  return v;
}

// --- YAML merge keys -------------------------------------------------------------

TEST(ProvisionUserData, YamlMergeKeysMergeAsPyYamlDoes) {
  // yaml-cpp 0.7 keeps "<<" as a plain key (the reason for this).
  YAML::Node raw = YAML::Load("a: &a {x: 1}\nb:\n  <<: *a\n");
  EXPECT_TRUE(raw["b"]["<<"].IsDefined());

  CloudConfig c = parse_cloud_config(
      "#cloud-config\n"
      "x-user: &user {shell: /bin/sh, gecos: From anchor, lock_passwd: false}\n"
      "x-more: &more {gecos: From more, homedir: /home/more}\n"
      "users:\n"
      "  - <<: *user\n"  // a mapping
      "    name: alice\n"
      "    shell: /bin/bash\n"  // an explicit key wins
      "  - <<: [*more, *user]\n"  // a list: the earlier mapping wins
      "    name: bob\n");
  ASSERT_EQ(c.users.size(), 2u);
  EXPECT_EQ(c.users[0].name, "alice");
  EXPECT_EQ(c.users[0].shell, "/bin/bash");
  EXPECT_EQ(c.users[0].gecos, "From anchor");
  EXPECT_FALSE(c.users[0].lock_passwd);
  EXPECT_EQ(c.users[1].gecos, "From more");
  EXPECT_EQ(c.users[1].homedir, "/home/more");
  EXPECT_EQ(c.users[1].shell, "/bin/sh");
  // "<<" never shows as an unknown key; the anchors' own keys do.
  ASSERT_EQ(c.warnings.size(), 2u);
  EXPECT_TRUE(has(c.warnings[0], "'x-user'")) << c.warnings[0];
  EXPECT_TRUE(has(c.warnings[1], "'x-more'")) << c.warnings[1];

  // At the top level, nested, and through a merged mapping's own merge key.
  CloudConfig top = parse_cloud_config(
      "#cloud-config\nx-base: &base {hostname: base, runcmd: [a]}\nx-mid: &mid {<<: *base, locale: C.UTF-8}\n"
      "<<: *mid\nhostname: mine\n");
  EXPECT_EQ(top.hostname, "mine");
  EXPECT_EQ(top.locale, "C.UTF-8");
  EXPECT_EQ(runcmd_of(top), std::vector<std::string>{"a"});

  // A quoted '<<' is a key like any other (PyYAML: str, not merge).
  CloudConfig quoted = parse_cloud_config("#cloud-config\nx: &x {hostname: q}\n'<<': *x\n");
  EXPECT_EQ(quoted.hostname, "");
  EXPECT_TRUE(has(quoted.warnings.back(), "unknown key '<<'")) << quoted.warnings.back();
  // What cannot be merged is an error at its place.
  EXPECT_EQ(error_of([] { parse_cloud_config("#cloud-config\nusers:\n  - <<: 5\n    name: a\n"); }),
            "user-data line 3, column 9: '<<' (a YAML merge key) takes a mapping or a list of mappings");
  EXPECT_TRUE(has(error_of([] { parse_cloud_config("#cloud-config\na: &a {x: 1}\nb:\n  <<: [*a, [1]]\n"); }),
                  "user-data line 4, column 12: '<<'"));
}

TEST(ProvisionUserData, AliasesAreWalkedOnce) {
  // A billion-laughs document: nine levels of ten aliases (10^9 leaves
  // when walked as a tree) is checked in no time, each node once.
  std::string y = "#cloud-config\nx0: &a0 [lol]\n";
  for (int i = 1; i < 10; ++i) {
    y += "x" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int k = 0; k < 10; ++k) y += std::string(k ? ", " : "") + "*a" + std::to_string(i - 1);
    y += "]\n";
  }
  CloudConfig c = parse_cloud_config(y);
  EXPECT_EQ(c.warnings.size(), 10u);
}

}  // namespace
}  // namespace ultari::provision
