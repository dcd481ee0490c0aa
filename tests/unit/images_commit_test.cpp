// The engine side of provisioning: a sandbox whose writable layer is on
// disk (Spec::upper_dir), committed as a layer (images::Store::commit) and
// run again from the result. Real sandboxes on the real kernel (the unit
// tests run as root in ctest); the build copies the archive module next to
// this program.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "images/store.h"
#include "sandbox/sandbox.h"
#include "unit_util.h"
#include "util/error.h"

namespace ultari::images {
namespace {

// (0755: the store's layers are read by the sandboxes' ids)
struct TempDir : unit::TempDir {
  TempDir() : unit::TempDir("commit", 0755) {}
};

int sh(const std::string& s) { return std::system(s.c_str()); }

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `script` in a sandbox over `layers` (and the writable layer `upper`);
// its stdout.
std::string run_in(const std::vector<std::string>& layers, const std::string& upper, const std::string& script,
                   const std::string& out_file) {
  Spec spec;
  for (const auto& l : layers) spec.layers.push_back(l);
  spec.upper_dir = upper;
  spec.process.argv = {"/bin/sh", "-c", script};
  spec.process.env = {"PATH=/bin"};
  spec.process.cwd = "/";
  int fd = open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  Io io;
  io.stdout_fd = fd;
  Result r = ultari::run(spec, io);
  close(fd);
  EXPECT_EQ(r.exit_code, 0) << r.error;
  return slurp(out_file);
}

TEST(ImagesCommit, AWritableLayerOnDiskBecomesALayer) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (rootful sandboxes)";
  TempDir t;
  std::string root = t.path + "/root";
  ASSERT_EQ(sh("mkdir -p " + root + "/bin " + root + "/etc " + root + "/opt/old && cp /usr/bin/busybox " + root +
               "/bin/ && ln -s busybox " + root + "/bin/sh && echo hello > " + root + "/etc/greeting && touch " + root +
               "/opt/old/x"),
            0);
  Store store(t.path + "/store", true, [] {
    isolation::Identity id = isolation::plan_identity(0, 0);
    return id.host_root_uid;
  }(), isolation::plan_identity(0, 0).host_root_gid);
  Image base = store.import("base", root);
  std::vector<std::string> base_dirs;
  for (const auto& l : base.layers) base_dirs.push_back(store.layer_path(l));

  // Changes: a new file, a deleted one (a whiteout), a directory replaced
  // (opaque).
  std::string scratch = store.scratch_dir();
  std::string out = t.path + "/out";
  run_in(base_dirs, scratch,
         "echo new > /etc/new && rm /etc/greeting && rm -r /opt/old && mkdir -p /opt/old && echo y > /opt/old/y && "
         "echo owned > /etc/owned",
         out);
  // Negative control: nothing of it reached the base layer.
  EXPECT_EQ(slurp(store.layer_path(base.layers[0]) + "/etc/greeting"), "hello\n");

  Image top;
  top.name = "changed";
  top.source = "test";
  Image img = store.commit(top, base, scratch + "/upper");
  ASSERT_EQ(img.layers.size(), 2u);
  EXPECT_EQ(img.layers[1], base.layers[0]);
  EXPECT_EQ(img.parent, "base");
  EXPECT_EQ(store.get("changed").layers, img.layers);
  std::vector<std::string> dirs;
  for (const auto& l : img.layers) dirs.push_back(store.layer_path(l));
  std::string seen = run_in(dirs, "",
                            "cat /etc/new; cat /etc/greeting 2>&1; ls /opt/old; busybox stat -c '%u:%g' /etc/owned", out);
  EXPECT_EQ(seen, "new\ncat: can't open '/etc/greeting': No such file or directory\ny\n0:0\n");
  // On the host the committed files are the sandboxes' root's (shifted ids).
  struct stat st{};
  ASSERT_EQ(stat((store.layer_path(img.layers[0]) + "/etc/new").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, isolation::plan_identity(0, 0).host_root_uid);
  // The same changes committed again are the same layer.
  std::string again = store.scratch_dir();
  run_in(base_dirs, again,
         "echo new > /etc/new && rm /etc/greeting && rm -r /opt/old && mkdir -p /opt/old && echo y > /opt/old/y && "
         "echo owned > /etc/owned",
         out);
  top.name = "changed2";
  EXPECT_EQ(store.commit(top, base, again + "/upper").layers, img.layers);
}

TEST(ImagesCommit, DevicesInAWritableLayerAreRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  TempDir t;
  std::string root = t.path + "/root";
  ASSERT_EQ(sh("mkdir -p " + root + "/etc && echo x > " + root + "/etc/x"), 0);
  isolation::Identity id = isolation::plan_identity(0, 0);
  Store store(t.path + "/store", true, id.host_root_uid, id.host_root_gid);
  Image base = store.import("base", root);
  std::string upper = store.scratch_dir() + "/upper";
  ASSERT_EQ(mkdir(upper.c_str(), 0755), 0);
  ASSERT_EQ(chown(upper.c_str(), id.host_root_uid, id.host_root_gid), 0);
  // Negative control: a whiteout (0:0) is fine.
  std::string wh = upper + "/gone";
  ASSERT_EQ(mknod(wh.c_str(), S_IFCHR | 0, makedev(0, 0)), 0);
  ASSERT_EQ(chown(wh.c_str(), id.host_root_uid, id.host_root_gid), 0);
  Image top;
  top.name = "ok";
  EXPECT_NO_THROW(store.commit(top, base, upper));
  // A real device node never becomes part of a layer.
  std::string upper2 = store.scratch_dir() + "/upper";
  ASSERT_EQ(mkdir(upper2.c_str(), 0755), 0);
  ASSERT_EQ(chown(upper2.c_str(), id.host_root_uid, id.host_root_gid), 0);
  std::string null = upper2 + "/null";
  ASSERT_EQ(mknod(null.c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  top.name = "bad";
  try {
    store.commit(top, base, upper2);
    ADD_FAILURE() << "a device was committed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("device node"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(store.find("bad"));
}

// The same changes committed on top of themselves: overlayfs cannot stack
// a directory twice, and they change nothing, so the parent's stack is the
// image (found by bench/images: the run failed with ELOOP).
TEST(ImagesCommit, TheSameChangesAgainOnTopAddNoLayer) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  TempDir t;
  std::string root = t.path + "/root";
  ASSERT_EQ(sh("mkdir -p " + root + "/etc && echo x > " + root + "/etc/x"), 0);
  isolation::Identity id = isolation::plan_identity(0, 0);
  Store store(t.path + "/store", true, id.host_root_uid, id.host_root_gid);
  Image base = store.import("base", root);
  auto upper_with = [&](const std::string& name) {
    std::string upper = store.scratch_dir() + "/upper";
    EXPECT_EQ(sh("mkdir -p " + upper + "/etc && echo a > " + upper + "/etc/" + name + " && chown -R " +
                 std::to_string(id.host_root_uid) + ":" + std::to_string(id.host_root_gid) + " " + upper),
              0);
    return upper;
  };
  Image top;
  top.name = "a";
  Image a = store.commit(top, base, upper_with("a"));
  ASSERT_EQ(a.layers.size(), 2u);
  top.name = "a2";
  Image a2 = store.commit(top, a, upper_with("a"));
  EXPECT_EQ(a2.layers, a.layers);
  EXPECT_EQ(a2.size, a.size);
  // Negative control: other changes are a layer of their own.
  top.name = "b";
  EXPECT_EQ(store.commit(top, a, upper_with("b")).layers.size(), 3u);
  // The same changes deeper down would mean something: refused.
  Image b = store.get("b");
  top.name = "c";
  EXPECT_THROW(store.commit(top, b, upper_with("a")), Error);
}

}  // namespace
}  // namespace ultari::images
