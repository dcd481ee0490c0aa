// The same commands as a real unprivileged user: user namespace only, the
// caller is root inside, cgroup limits that were not delegated are named in
// a warning.
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "harness.h"

namespace ultari::test {
namespace {

const char* const kUser = kRootlessUser;

class Rootless : public ::testing::Test {
 protected:
  Options as_user() const { return rootless_options(); }
};

TEST_F(Rootless, RunsAsUnprivilegedUser) {
  Outcome host = sh("id -u", {}, as_user());
  (void)host;
  Outcome r = ultari({"run", "--report", "/dev/null", "--", "/bin/sh", "-c", "id -u; hostname; cat /proc/self/uid_map | wc -l"},
                 as_user());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "0\nsandbox\n1\n") << r.err;
}

TEST_F(Rootless, WarnsAboutLimitsItCannotEnforce) {
  Outcome r = ultari({"run", "--memory", "64M", "--", "/bin/true"}, as_user());
  EXPECT_EQ(r.status, 0) << r.err;
  // This host's cgroups are not delegated to the user: the warning says so.
  EXPECT_NE(r.err.find("memory limit is not enforced"), std::string::npos) << r.err;
  Outcome quiet = ultari({"run", "--quiet", "--memory", "64M", "--", "/bin/true"}, as_user());
  EXPECT_EQ(quiet.err, "");
}

TEST_F(Rootless, IsolationHolds) {
  TempDir dir;
  write_file(dir / "canary", "secret");
  Outcome r = ultari({"run", "--", "/bin/sh", "-c",
                  "ls " + dir / "canary" + " 2>/dev/null; ls /proc | grep -cE '^[0-9]+$'; "
                  "grep -E 'CapEff|NoNewPrivs' /proc/self/status | tr -s '\\t ' ' '; ls /sys/class/net"},
                 as_user());
  EXPECT_EQ(r.out.find("canary"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("CapEff: 0000000000000000\nNoNewPrivs: 1\nlo\n"), std::string::npos) << r.out << r.err;
}

TEST_F(Rootless, WorkspaceOwnedByTheCaller) {
  TempDir ws;
  const passwd* pw = getpwnam(kUser);
  ASSERT_NE(pw, nullptr);
  chown(ws.path().c_str(), pw->pw_uid, pw->pw_gid);
  Outcome r = ultari({"run", "--workspace", ws.path(), "--", "/bin/sh", "-c", "echo hi > f && pwd"}, as_user());
  EXPECT_EQ(r.out, "/workspace\n") << r.err;
  struct stat st{};
  ASSERT_EQ(stat((ws / "f").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, pw->pw_uid);
}

TEST_F(Rootless, TimeoutAndOutputLimitStillWork) {
  Outcome t = ultari({"run", "--timeout", "300ms", "--", "sleep", "10"}, as_user());
  EXPECT_EQ(t.status, 124) << t.err;
  Outcome o = ultari({"run", "--output-limit", "100", "--", "yes"}, as_user());
  EXPECT_EQ(o.status, 137) << o.err;
  EXPECT_EQ(o.out.size(), 100u);
}

}  // namespace
}  // namespace ultari::test
