// Review of 911caeb: the owners' range and the owners it hands out.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "isolation/identity.h"
#include "unit_util.h"

namespace ultari::isolation {
namespace {

// sscanf("%lu") takes "-1" as ULONG_MAX, and start + count then wrapped
// around under the "<= 0xffffffff" check: "ultari-owners:-1:2" gave the
// owners 0xffffffff ((uid_t)-1: setresuid(-1, -1, -1) changes nothing, the
// namespace stays root's) and 0 (root); "-4294967296:4294967306" gave
// 0..9 (root and system users). Such a line must be ignored (or refused),
// never yield root, (uid_t)-1 or low ids.
TEST(IdentityReview6, OwnersRangeNeverWrapsOntoRootOrMinusOne) {
  for (const char* line : {"ultari-owners:-1:2\n", "ultari-owners:-4294967296:4294967306\n",
                           "ultari-owners:4294967295:1\n", "ultari-owners:0:1000\n"}) {
    SCOPED_TRACE(line);
    std::string file = unit::temp_file("subuid", line);
    try {
      auto [base, count] = owner_range(file.c_str(), 2000000000);
      EXPECT_GT(base, 0u);
      EXPECT_GE(count, 1u);
      EXPECT_LE(uint64_t{base} + count, 0xffffffffULL);  // the last owner is at most 0xfffffffe
    } catch (const std::exception&) {
      // Refusing the line outright is fine too.
    }
    unlink(file.c_str());
  }
  // Control: a sane line is taken as it is.
  std::string ok = unit::temp_file("subuid", "ultari-owners:3500000000:65536\n");
  EXPECT_EQ(owner_range(ok.c_str(), 2000000000), (std::pair<uint32_t, uint32_t>{3500000000U, 65536U}));
  unlink(ok.c_str());
}

// With an "ultari-owners:START:COUNT" line the owner was START +
// (pid*256 + counter) % COUNT: with COUNT = 65536 only pid % 256 counted,
// so two live supervisors whose pids differ by a multiple of 256 (e.g. two
// concurrent `ultari run`s) got the same owner and shared every quota.
// Fixed: owners are leased (failed before with "live processes 27511 and
// 27767 got the same owner").
TEST(IdentityReview6, LiveSupervisorsGetDistinctOwnersFromAConfiguredRange) {
  std::string lock_path = unit::temp_file("owners");
  const char* lock = lock_path.c_str();
  Identity id = unit::owners(3500000000U, 65536);
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
      OwnerLease lease = lease_owner(id, lock);  // held until the child exits
      uid_t owner = lease.uid;
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
  unlink(lock);
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
