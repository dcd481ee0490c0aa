// Review of 911caeb: the owners' range and the owners it hands out.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "isolation/identity.h"

namespace ultari::isolation {
namespace {

std::string write_subuid(const std::string& text) {
  char path[] = "/tmp/ultari-subuid-XXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  return path;
}

// docs/usage.md: two sandboxes share an owner only when more than 256 of
// one process are alive at once, or in containers with equal pids. With
// an "ultari-owners:START:COUNT" line, though, the owner is START +
// (pid*256 + counter) % COUNT: with COUNT = 65536 only pid % 256 counts,
// so two live supervisors whose pids differ by a multiple of 256 (e.g. two
// concurrent `ultari run`s) get the same owner and share every quota.
// OPEN today: fails (run with --gtest_also_run_disabled_tests).
TEST(IdentityReview6, DISABLED_LiveSupervisorsGetDistinctOwnersFromAConfiguredRange) {
  Identity id;
  id.rootful = true;
  id.owner_base = 3500000000U;
  id.owner_count = 65536;
  int report[2];
  ASSERT_EQ(pipe(report), 0);
  int release[2];
  ASSERT_EQ(pipe(release), 0);
  std::map<pid_t, uid_t> owners;  // live children: pid -> the owner it would use first
  std::vector<pid_t> children;
  pid_t first = -1, second = -1;
  for (int i = 0; i < 600 && first < 0; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(release[1]);  // the parent's close must reach every child as EOF
      uid_t owner = namespace_owner(id);
      if (write(report[1], &owner, sizeof owner) != sizeof owner) _exit(1);
      char c;
      if (read(release[0], &c, 1) < 0) _exit(1);  // stays alive until released
      _exit(0);
    }
    children.push_back(pid);
    uid_t owner = 0;
    ASSERT_EQ(read(report[0], &owner, sizeof owner), static_cast<ssize_t>(sizeof owner));
    for (const auto& [other, its] : owners)
      if (its == owner) first = other, second = pid;
    owners[pid] = owner;
  }
  close(release[1]);
  for (pid_t pid : children) waitpid(pid, nullptr, 0);
  close(release[0]);
  close(report[0]);
  close(report[1]);
  EXPECT_LT(first, 0) << "live processes " << first << " and " << second << " got the same owner "
                      << owners[first] << " (" << owners.size() << " processes)";
  // Control: the children did get owners from the range.
  for (const auto& [pid, owner] : owners) {
    EXPECT_GE(owner, id.owner_base);
    EXPECT_LT(owner, id.owner_base + id.owner_count);
  }
}

}  // namespace
}  // namespace ultari::isolation
