// The root recipe the supervisor builds: bad paths fail before anything is
// created, and the recipe has the steps the isolation promises rely on.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "filesystem/rootfs.h"
#include "unit_util.h"
#include "util/error.h"

namespace ultari::filesystem {
namespace {

using unit::TempDir;

Spec rootfs_spec(const std::string& root) {
  Spec spec;
  spec.rootfs = root;
  spec.process.argv = {"/bin/true"};
  return spec;
}

std::string error_of(const Spec& spec) {
  try {
    plan_root(spec, nullptr, "/root");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has_step(const RootPlan& plan, Step::Op op, const std::string& target) {
  return std::any_of(plan.steps.begin(), plan.steps.end(),
                     [&](const Step& s) { return s.op == op && s.target && target == s.target; });
}

TEST(RootPlan, BadPathsFailWithTheirName) {
  TempDir root, src;
  Spec spec = rootfs_spec(root.path);
  EXPECT_EQ(error_of(spec), "");  // negative control: the valid spec plans

  Spec missing = rootfs_spec("/nonexistent-root");
  EXPECT_NE(error_of(missing).find("/nonexistent-root"), std::string::npos);
  Spec whole_host = rootfs_spec("/");
  EXPECT_NE(error_of(whole_host).find("whole host"), std::string::npos);

  for (const char* dst : {"relative", "/", "/a/../etc", "/.."}) {
    Spec bad = spec;
    bad.mounts.push_back({Mount::Kind::Bind, src.path, dst, true, 0});
    EXPECT_NE(error_of(bad), "") << dst;
  }
  Spec missing_src = spec;
  missing_src.mounts.push_back({Mount::Kind::Bind, "/nonexistent-src", "/x", true, 0});
  EXPECT_NE(error_of(missing_src).find("/nonexistent-src"), std::string::npos);

  TempDir comma;
  std::string odd = comma.path + "/a,b";
  ASSERT_EQ(mkdir(odd.c_str(), 0755), 0);
  EXPECT_NE(error_of(rootfs_spec(odd)).find("overlayfs"), std::string::npos);
}

TEST(RootPlan, RecipeHasTheIsolationSteps) {
  TempDir root, ws;
  Spec spec = rootfs_spec(root.path);
  spec.workspace = ws.path;
  RootPlan plan = plan_root(spec, nullptr, "/root");
  EXPECT_TRUE(has_step(plan, Step::ProcInRoot, "/proc"));
  EXPECT_TRUE(has_step(plan, Step::SysfsInRoot, "/sys"));
  for (const char* p : {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"})
    EXPECT_TRUE(has_step(plan, Step::MaskInRoot, p)) << p;
  for (const char* p : {"/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq"})
    EXPECT_TRUE(has_step(plan, Step::ReadOnlyInRoot, p)) << p;
  for (const char* d : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"})
    EXPECT_TRUE(has_step(plan, Step::DeviceInRoot, d)) << d;
  EXPECT_TRUE(has_step(plan, Step::BindInRoot, "/workspace"));
  EXPECT_EQ(plan.steps.back().op, Step::PivotRoot);  // everything happens before pivot_root
  EXPECT_EQ(plan.host_fds.size(), plan.steps.size());
  // The writable layer is the size-limited staging tmpfs.
  ASSERT_EQ(plan.steps.front().op, Step::StagingTmpfs);
  EXPECT_NE(std::string(plan.steps.front().data).find("size=" + std::to_string(kDefaultTmpBytes)), std::string::npos);
}

TEST(RootPlan, ImageLayersStackTopFirst) {
  TempDir a, b, c;
  Spec spec;
  spec.process.argv = {"/bin/true"};
  spec.layers = {a.path, b.path, c.path};
  RootPlan plan = plan_root(spec, nullptr, "/root");
  auto overlay = std::find_if(plan.steps.begin(), plan.steps.end(), [](const Step& s) { return s.op == Step::Overlay; });
  ASSERT_NE(overlay, plan.steps.end());
  EXPECT_TRUE(overlay->lower_list);
  EXPECT_EQ(std::string(overlay->source), a.path + ":" + b.path + ":" + c.path);
  EXPECT_EQ(plan.lower_dirs, (std::vector<std::string>{a.path, b.path, c.path}));
  // No host system directory comes in with an image.
  EXPECT_FALSE(has_step(plan, Step::BindInRoot, "/usr"));
  // Trees made by the supervisor replace the paths, in the same order.
  plan.use_lower_trees({7, 8, 9});
  ASSERT_EQ(overlay->tree_count, 3u);
  EXPECT_EQ(overlay->tree_fds[2], 9);
  EXPECT_EQ(std::string(overlay->source), "/tmp/lower0:/tmp/lower1:/tmp/lower2");

  Spec both = spec;
  both.rootfs = a.path;
  EXPECT_NE(error_of(both).find("exclude each other"), std::string::npos);
  Spec missing = spec;
  missing.layers.push_back("/nonexistent-layer");
  EXPECT_NE(error_of(missing).find("/nonexistent-layer"), std::string::npos);
  Spec many = spec;
  many.layers.assign(kMaxLayers + 1, a.path);
  EXPECT_NE(error_of(many).find("at most"), std::string::npos);
  many.layers.resize(kMaxLayers);
  EXPECT_EQ(error_of(many), "");  // negative control: the limit itself plans
}

}  // namespace
}  // namespace ultari::filesystem
