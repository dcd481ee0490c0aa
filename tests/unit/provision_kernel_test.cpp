// Kernel-module helpers of provisioning: names from configs and commands,
// the administrator's allowlist file.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include "provision/cloud_config.h"
#include "provision/kernel.h"
#include "util/error.h"

namespace ultari::provision {
namespace {

TEST(ProvisionKernel, BuiltInModulesAreNamedAsKbuildNamesThem) {
  auto names = builtin_from_config(
      "CONFIG_NF_CONNTRACK=y\nCONFIG_NF_CT_NETLINK=y\n# CONFIG_MODULES is not set\nCONFIG_NF_NAT=m\n"
      "CONFIG_NETFILTER_XT_MATCH_CONNTRACK=y\nCONFIG_NETFILTER_XT_TARGET_MASQUERADE=y\nCONFIG_EXT4_FS=y\n");
  EXPECT_EQ(names, (std::set<std::string>{"nf_conntrack", "nf_conntrack_netlink", "xt_conntrack", "xt_MASQUERADE",
                                          "ext4"}));
  // A module (=m) is not built in; a comment is nothing.
  EXPECT_FALSE(names.count("nf_nat"));
  EXPECT_FALSE(names.count("modules"));
}

TEST(ProvisionKernel, ModprobeLinesNameTheirModules) {
  EXPECT_EQ(modprobe_names("modprobe nf_conntrack"), (std::vector<std::string>{"nf_conntrack"}));
  EXPECT_EQ(modprobe_names("/sbin/modprobe -v nf-conntrack hashsize=1024"), (std::vector<std::string>{"nf_conntrack"}));
  EXPECT_EQ(modprobe_names("modprobe -a a b; modprobe c&& modprobe -r d; echo modprobe"),
            (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(modprobe_names("depmod -a").empty());
  EXPECT_TRUE(modprobe_names("modprobe '$(evil)'").empty());
}

TEST(ProvisionKernel, TheAllowlistComesFromTheConfigFile) {
  char dir[] = "/tmp/ultari-kconf-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/config.toml";
  setenv("ULTARI_CONFIG", path.c_str(), 1);
  // A named file that is missing is an error (a typo must not mean "default").
  EXPECT_THROW(load_host_config(), Error);
  std::ofstream(path) << "[kernel_modules]\nallow = [\"nf_nat\", \"xt_*\"]\n";
  HostConfig c = load_host_config();
  EXPECT_TRUE(module_allowed(c, "nf_nat"));
  EXPECT_TRUE(module_allowed(c, "xt_conntrack"));
  EXPECT_FALSE(module_allowed(c, "nf_conntrack"));
  for (const char* bad : {"[kernel_modules]\nallow = [\"*\"]\n", "[kernel_modules]\nallow = \"nf_nat\"\n",
                          "[kernel_modules]\nallowed = []\n", "[modules]\n", "[kernel_modules]\nallow = [\"a b\"]\n",
                          "[kernel_modules\n"}) {
    std::ofstream(path) << bad;
    try {
      load_host_config();
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  unsetenv("ULTARI_CONFIG");
  unlink(path.c_str());
  rmdir(dir);
  // Without a file: the conntrack/NAT family only.
  HostConfig d;
  d.module_allow.assign(std::begin(kDefaultModuleAllow), std::end(kDefaultModuleAllow));
  EXPECT_TRUE(module_allowed(d, "nf_conntrack_netlink"));
  EXPECT_TRUE(module_allowed(d, "nf_nat_ftp"));
  EXPECT_FALSE(module_allowed(d, "vfat"));
}

TEST(ProvisionKernel, ModuleNamesAreKernelNames) {
  EXPECT_EQ(normalize_module("nf-conntrack"), "nf_conntrack");
  for (const char* bad : {"", "a b", "../x", "x;y", "$(x)"}) EXPECT_THROW(normalize_module(bad), Error) << bad;
}

}  // namespace
}  // namespace ultari::provision
