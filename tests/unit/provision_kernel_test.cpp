// Kernel-module helpers of provisioning: names from configs and commands,
// the administrator's allowlist file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "provision/cloud_config.h"
#include "provision/kernel.h"
#include "util/error.h"
#include "unit_util.h"

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
  // [ppa]: where PPAs come from; trailing slashes dropped.
  std::ofstream(path) << "[ppa]\narchive = \"https://ppa.mirror.example/\"\napi = \"http://lp.mirror.example/1.0\"\n"
                         "keyserver = \"hkps://keys.mirror.example\"\n";
  HostConfig p = load_host_config();
  EXPECT_EQ(p.ppa_archive, "https://ppa.mirror.example");
  EXPECT_EQ(p.ppa_api, "http://lp.mirror.example/1.0");
  EXPECT_EQ(p.ppa_keyserver, "hkps://keys.mirror.example");
  EXPECT_EQ(HostConfig{}.ppa_api, "https://api.launchpad.net/1.0");  // the default
  for (const char* bad : {"[kernel_modules]\nallow = [\"*\"]\n", "[kernel_modules]\nallow = \"nf_nat\"\n",
                          "[kernel_modules]\nallowed = []\n", "[modules]\n", "[kernel_modules]\nallow = [\"a b\"]\n",
                          "[kernel_modules\n", "ppa = 1\n", "[ppa]\nmirror = \"https://x.example\"\n",
                          "[ppa]\narchive = \"ftp://x.example\"\n", "[ppa]\narchive = 7\n",
                          "[ppa]\narchive = \"https://user:pw@x.example\"\n", "[ppa]\napi = \"http://10.0.0.5/1.0\"\n",
                          "[ppa]\narchive = \"http://ppamirror/ppa\"\n", "[ppa]\nkeyserver = \"ldap://k.example\"\n",
                          "[ppa]\nkeyserver = \"localhost\"\n",
                          // (addresses in forms getaddrinfo reads: hex, octal, short, IPv4-mapped)
                          "[ppa]\narchive = \"http://0x7f.1/ppa\"\n", "[ppa]\narchive = \"http://0177.0.0.1/ppa\"\n",
                          "[ppa]\napi = \"http://127.1/1.0\"\n", "[ppa]\napi = \"http://10.0x10/1.0\"\n",
                          "[ppa]\napi = \"http://[::ffff:127.0.0.1]/1.0\"\n"}) {
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


// A host tree (this machine has the cloud kernel's, installed for the VM
// tests): the layer holds its modules too, so that `depmod -a` over it (as
// a build's runcmd runs it, in its overlay) still lists them and a later
// `modprobe` finds them. The host's files keep their owner. Control: the
// index files alone (what the layer held before) lose the modules at depmod.
TEST(ProvisionKernel, AHostTreesLayerKeepsItsModulesThroughDepmod) {
  namespace fs = std::filesystem;
  std::string release, tree;
  for (const auto& e : fs::directory_iterator("/lib/modules"))
    if (fs::exists(e.path() / "modules.dep") && fs::exists(e.path() / "kernel/net/netfilter/nf_conntrack_netlink.ko")) {
      release = e.path().filename();
      tree = e.path();
    }
  if (tree.empty()) GTEST_SKIP() << "no kernel tree with nf_conntrack_netlink.ko under /lib/modules";
  if (geteuid() != 0) GTEST_SKIP() << "needs root (the layer is chowned)";
  unit::TempDir cache("kernel", 0755);
  RunningKernel k{release, "test " + release, tree, true};
  const uid_t uid = 2000000000, gid = 2000000000;
  std::string layer = kernel_layer(cache.path, uid, gid, k).path;
  EXPECT_EQ(kernel_layer(cache.path, uid, gid, k).path, layer);  // made once
  const std::string mod = "/kernel/net/netfilter/nf_conntrack_netlink.ko";
  struct stat host{}, in_lib{}, in_usr{}, dir{};
  ASSERT_EQ(stat((tree + mod).c_str(), &host), 0);
  ASSERT_EQ(stat((layer + "/lib/modules/" + release + mod).c_str(), &in_lib), 0);
  ASSERT_EQ(stat((layer + "/usr/lib/modules/" + release + mod).c_str(), &in_usr), 0);
  ASSERT_EQ(stat((layer + "/usr/lib/modules/" + release + "/kernel/net").c_str(), &dir), 0);
  EXPECT_EQ(host.st_uid, 0u);  // never chowned through a link
  EXPECT_EQ(dir.st_uid, uid);
  EXPECT_EQ(in_lib.st_ino, in_usr.st_ino);
  if (host.st_dev == in_lib.st_dev) EXPECT_EQ(in_lib.st_ino, host.st_ino);  // a link: no space
  else EXPECT_EQ(in_lib.st_uid, uid);                                        // a copy, the sandbox's
  EXPECT_FALSE(fs::exists(layer + "/lib/modules/" + release + "/build"));   // no symlink into the host's headers

  // depmod over a copy of the layer's tree, as inside a sandbox.
  auto depmod_lists_it = [&](bool with_modules) {
    unit::TempDir work("depmod", 0755);
    std::string cmd = "cp -a " + layer + "/lib " + work.path + "/ && " +
                      (with_modules ? std::string("true") : "find " + work.path + " -name '*.ko*' -delete") +
                      " && depmod -b " + work.path + " " + release + " 2>&1 && grep -c '^kernel/net/netfilter/nf_conntrack_netlink.ko:' " +
                      work.path + "/lib/modules/" + release + "/modules.dep";
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[256];
    while (fgets(buf, sizeof buf, p)) out += buf;
    int status = pclose(p);
    return std::make_pair(status, out);
  };
  auto [status, out] = depmod_lists_it(true);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out, "1\n");
  auto [control_status, control_out] = depmod_lists_it(false);
  EXPECT_NE(control_status, 0) << control_out;
  EXPECT_EQ(control_out, "0\n");
}

// Prune: the layers of other kernels go, with what they alone hold counted
// (not the host's files they link); the current layer and one a sandbox
// holds stay; a half-made layer goes once its process is gone. A layer
// pruned is made again by the next caller.
TEST(ProvisionKernel, PruneKeepsTheCurrentAndHeldLayersAndCountsWhatItFrees) {
  namespace fs = std::filesystem;
  if (geteuid() != 0) GTEST_SKIP() << "needs root (the layer is chowned)";
  unit::TempDir tree("kernel-tree", 0755), cache("kernel", 0755);
  fs::create_directories(tree.path + "/kernel/net");
  std::ofstream(tree.path + "/modules.dep") << "kernel/net/big.ko:\n";
  std::ofstream(tree.path + "/kernel/net/big.ko") << std::string(1 << 20, 'x');  // linked, not the layer's own
  auto kernel = [&](const std::string& id) { return RunningKernel{"9.9.9-test", id, tree.path, false}; };
  const uid_t uid = 2000000000, gid = 2000000000;
  std::string old_a = kernel_layer(cache.path, uid, gid, kernel("old a")).path;
  KernelLayer held = kernel_layer(cache.path, uid, gid, kernel("old b"));
  std::string current = kernel_layer(cache.path, uid, gid, kernel("now")).path;
  ASSERT_TRUE(old_a != held.path && old_a != current && held.path != current);
  EXPECT_EQ(kernel_layer_path(cache.path, uid, gid, kernel("now")), current);
  // A file that is old_a's own (a copy, as rootless layers hold): counted.
  std::ofstream(old_a + "/own") << std::string(64 << 10, 'y');
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const std::string half = cache.path + "/kernel-00000000cafef00d.tmp-" + std::to_string(dead) + "-abcd";
  const std::string making = cache.path + "/kernel-00000000feedf00d.tmp-" + std::to_string(getpid()) + "-abcd";
  fs::create_directories(half + "/lib");
  fs::create_directories(making);

  KernelPrune r = prune_kernel_layers(cache.path, current);
  EXPECT_EQ(r.removed, 1u);
  EXPECT_EQ(r.in_use, 1u);
  EXPECT_GE(r.bytes, 64u << 10);
  EXPECT_LT(r.bytes, 1u << 20) << "the host's linked module was counted as freed";
  EXPECT_FALSE(fs::exists(old_a));
  EXPECT_FALSE(fs::exists(old_a + ".lock"));
  EXPECT_TRUE(fs::exists(held.path + "/lib/modules/9.9.9-test/kernel/net/big.ko"));
  EXPECT_TRUE(fs::exists(current));
  EXPECT_FALSE(fs::exists(half));
  EXPECT_TRUE(fs::exists(making));
  EXPECT_TRUE(fs::exists(tree.path + "/kernel/net/big.ko"));  // the host's file stays

  // Control: once the hold ends, that layer goes too; the next caller of
  // it has it made again.
  held.hold.reset();
  KernelPrune second = prune_kernel_layers(cache.path, current);
  EXPECT_EQ(second.removed, 1u);
  EXPECT_EQ(second.in_use, 0u);
  EXPECT_FALSE(fs::exists(held.path));
  KernelLayer again = kernel_layer(cache.path, uid, gid, kernel("old b"));
  EXPECT_EQ(again.path, held.path);
  EXPECT_TRUE(fs::exists(again.path + "/usr/lib/modules/9.9.9-test/kernel/net/big.ko"));
  EXPECT_EQ(prune_kernel_layers(cache.path + "/missing", "").removed, 0u);  // no cache yet: nothing to do
}

// A run that waited for a lock a prune held must not come away holding the
// lock file the prune unlinked (while another run has made the layer
// again under a new lock): its hold would be one no later prune sees.
TEST(ProvisionKernel, ARunThatWaitedForAPruneHoldsTheLockAtTheLayersName) {
  namespace fs = std::filesystem;
  if (geteuid() != 0) GTEST_SKIP() << "needs root (the layer is chowned)";
  unit::TempDir tree("kernel-tree", 0755), cache("kernel", 0755);
  std::ofstream(tree.path + "/modules.dep") << "";
  RunningKernel k{"9.9.9-test", "old c", tree.path, false};
  const uid_t uid = 2000000000, gid = 2000000000;
  std::string path = kernel_layer(cache.path, uid, gid, k).path;
  // The prune's part, by hand: the lock taken exclusively...
  UniqueFd pruner(open((path + ".lock").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(pruner);
  ASSERT_EQ(flock(pruner.get(), LOCK_EX), 0);
  KernelLayer waited;
  std::thread run([&] { waited = kernel_layer(cache.path, uid, gid, k); });
  // ...until the run waits for it (/proc/locks lists a blocked request on
  // this file: "-> FLOCK ... MAJ:MIN:INODE ...")...
  struct stat lock_file{};
  ASSERT_EQ(fstat(pruner.get(), &lock_file), 0);
  const std::string inode = ":" + std::to_string(lock_file.st_ino) + " ";
  bool blocked = false;
  for (int i = 0; i < 1000 && !blocked; ++i) {
    std::ifstream locks("/proc/locks");
    for (std::string line; std::getline(locks, line);)
      if (line.find("-> FLOCK") != std::string::npos && line.find(inode) != std::string::npos) blocked = true;
    if (!blocked) usleep(10000);
  }
  EXPECT_TRUE(blocked) << "the run never waited for the lock";
  // ...the layer moved away and the lock unlinked; another run makes the
  // layer again, under a new lock; then the prune lets go.
  ASSERT_EQ(rename(path.c_str(), (path + ".gone").c_str()), 0);
  ASSERT_EQ(unlink((path + ".lock").c_str()), 0);
  KernelLayer other = kernel_layer(cache.path, uid, gid, k);
  pruner.reset();
  run.join();
  ASSERT_EQ(waited.path, path);
  struct stat held{}, named{};
  ASSERT_EQ(fstat(waited.hold.get(), &held), 0);
  ASSERT_EQ(stat((path + ".lock").c_str(), &named), 0);
  EXPECT_EQ(held.st_ino, named.st_ino) << "the run holds the unlinked lock";
  EXPECT_GT(held.st_nlink, 0u);
  // So a prune sees the layer held, after the other run is gone too.
  other.hold.reset();
  EXPECT_EQ(prune_kernel_layers(cache.path, "").in_use, 1u);
  EXPECT_TRUE(fs::exists(path));
  remove_tree(path + ".gone");
}

}  // namespace
}  // namespace ultari::provision
