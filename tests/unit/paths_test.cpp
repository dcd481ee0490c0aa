// Scoped lookups (openat2 RESOLVE_IN_ROOT / RESOLVE_BENEATH) on a busy
// machine: the kernel fails one that steps over ".." with EAGAIN when any
// rename or mount races with it. CI saw it: an image's etc/os-release (a
// link to ../usr/lib/os-release) read as missing while other tests mounted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "unit_util.h"
#include "util/openat2.h"
#include "util/paths.h"

namespace ultari {
namespace {

struct Tree {
  unit::TempDir dir{"paths"};
  std::string root = dir.path;
  Tree() {
    make_dirs(root + "/usr/lib", 0755);
    make_dirs(root + "/etc", 0755);
    std::ofstream(root + "/usr/lib/os-release") << "ID=debian\n";
    EXPECT_EQ(symlink("../usr/lib/os-release", (root + "/etc/os-release").c_str()), 0);
  }
};

// Renames a file back and forth until stopped: every rename moves the
// kernel's rename sequence count that a scoped ".." checks.
struct Renamer {
  std::atomic<bool> stop{false};
  std::thread thread;
  explicit Renamer(const std::string& dir) {
    std::ofstream(dir + "/a") << "x";
    thread = std::thread([this, dir] {
      std::string a = dir + "/a", b = dir + "/b";
      while (!stop) {
        rename(a.c_str(), b.c_str());
        rename(b.c_str(), a.c_str());
      }
    });
  }
  ~Renamer() {
    stop = true;
    thread.join();
  }
};

TEST(Openat2, ScopedLookupsOverDotDotSurviveRacingRenames) {
  Tree tree;
  int dir = open(tree.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  int raw_again = 0, retried_fail = 0, read_fail = 0;
  {
    Renamer renamer(tree.root);
    // Long enough that the renames race with lookups at least sometimes
    // on a 2-core machine; stops early once the race has been seen often.
    for (int i = 0; i < 200000 && raw_again < 50; ++i) {
      // Negative control: the bare syscall meets the race...
      int fd = static_cast<int>(syscall(SYS_openat2, dir, "etc/os-release", &how, sizeof how));
      if (fd >= 0) close(fd);
      else if (errno == EAGAIN) ++raw_again;
      // ...the retrying one and read_in_root never fail for it.
      fd = openat2_retrying(dir, "etc/os-release", how);
      if (fd >= 0) close(fd);
      else ++retried_fail;
      if (read_in_root(tree.root, "etc/os-release") != "ID=debian\n") ++read_fail;
    }
  }
  close(dir);
  EXPECT_GT(raw_again, 0) << "no lookup raced with a rename: the test proves nothing here";
  EXPECT_EQ(retried_fail, 0);
  EXPECT_EQ(read_fail, 0);
}

TEST(Openat2, OtherErrorsAreNotRetried) {
  Tree tree;
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT;
  int dir = open(tree.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  EXPECT_EQ(openat2_retrying(dir, "etc/missing", how), -1);
  EXPECT_EQ(errno, ENOENT);
  // A link out of the root resolves inside it: /usr/lib/os-release there.
  ASSERT_EQ(symlink("/../../../usr/lib/os-release", (tree.root + "/etc/up").c_str()), 0);
  EXPECT_EQ(read_in_root(tree.root, "etc/up"), "ID=debian\n");
  close(dir);
}

}  // namespace
}  // namespace ultari
