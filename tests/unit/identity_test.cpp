// Who owns a rootful sandbox's user namespace (the per-user quotas' key).
#include <gtest/gtest.h>
#include <signal.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "isolation/identity.h"
#include "unit_util.h"

namespace ultari::isolation {
namespace {

// A rootless caller's subordinate ids: its line (by name or uid) with
// enough ids for a sandbox's 0..65535, in both files.
TEST(Identity, SubordinateIdsAreTheCallersLineWithEnoughIds) {
  if (access("/usr/bin/newuidmap", X_OK) != 0 || access("/usr/bin/newgidmap", X_OK) != 0)
    GTEST_SKIP() << "uidmap is not installed";
  std::string name = getpwuid(geteuid())->pw_name, uid = std::to_string(geteuid());
  std::string sub = unit::temp_file("subuid", "alice:1:65536\n" + name + ":200000:1000\n" + name + ":300000:65535\n");
  std::string by_uid = unit::temp_file("subgid", uid + ":400000:70000\n");
  std::string why;
  auto ids = caller_subids(&why, sub.c_str(), by_uid.c_str());
  ASSERT_TRUE(ids) << why;
  EXPECT_EQ(ids->uid, geteuid());
  EXPECT_EQ(ids->uid_start, 300000U);  // the first line with 65535 ids or more
  EXPECT_EQ(ids->gid_start, 400000U);  // by uid
  // Negative: too few ids, or no line.
  std::string few = unit::temp_file("subgid", name + ":400000:65534\nalice:500000:65536\n");
  EXPECT_FALSE(caller_subids(&why, sub.c_str(), few.c_str()));
  EXPECT_EQ(why, few + " has no line for " + name + " with 65535 ids or more");
  for (const auto& f : {sub, by_uid, few}) unlink(f.c_str());
}

// Rootful sandboxes' blocks of ids: the "ultari-sandboxes" lines, else a
// default range between the image store's ids and the owners'.
TEST(Identity, SandboxBlocksComeFromTheirOwnRange) {
  Identity id;
  id.uid_map = {{0, 2000000000, 65536}};
  id.gid_map = {{0, 2000000000, 65536}};
  id.owner_base = 3000000000U;
  id.owner_count = 1U << 30;
  std::string none = unit::temp_file("subuid", "alice:100000:65536\n");
  std::string passwd = unit::temp_file("passwd", "root:x:0:0:root:/root:/bin/sh\n");
  plan_blocks(id, none.c_str(), none.c_str(), passwd.c_str());
  EXPECT_EQ(id.block_uid_base, 2000065536U);
  EXPECT_EQ(id.block_count, 15257U);
  EXPECT_LE(uint64_t{id.block_uid_base} + uint64_t{id.block_count} * 65536, 3000000000ULL);
  Identity b = for_block(id, 2);
  EXPECT_EQ(b.uid_map[0].outside, 2000065536U + 2 * 65536);
  EXPECT_EQ(b.host_root_gid, 2000065536U + 2 * 65536);
  // Lines of their own: the smaller count wins.
  std::string u = unit::temp_file("subuid", "ultari-sandboxes:500000000:655360\n");
  std::string g = unit::temp_file("subgid", "ultari-sandboxes:600000000:196608\n");
  plan_blocks(id, u.c_str(), g.c_str(), passwd.c_str());
  EXPECT_EQ(id.block_uid_base, 500000000U);
  EXPECT_EQ(id.block_gid_base, 600000000U);
  EXPECT_EQ(id.block_count, 3U);
  // Refused: over the store's ids, over the owners, a user inside.
  std::string store = unit::temp_file("subuid", "ultari-sandboxes:1999999000:655360\n");
  EXPECT_TRUE(unit::has(unit::error_of([&] { plan_blocks(id, store.c_str(), g.c_str(), passwd.c_str()); }),
                        "overlaps the image store's"));
  std::string owners = unit::temp_file("subuid", "ultari-sandboxes:2999990000:655360\n");
  EXPECT_TRUE(unit::has(unit::error_of([&] { plan_blocks(id, owners.c_str(), g.c_str(), passwd.c_str()); }),
                        "overlaps the sandboxes' owners"));
  // A line that cannot be used, or in one file only: named, not ignored.
  std::string small = unit::temp_file("subuid", "ultari-sandboxes:500000000:1000\n");
  EXPECT_TRUE(unit::has(unit::error_of([&] { plan_blocks(id, small.c_str(), g.c_str(), passwd.c_str()); }),
                        "unusable"));
  EXPECT_TRUE(unit::has(unit::error_of([&] { plan_blocks(id, u.c_str(), none.c_str(), passwd.c_str()); }),
                        "give the sandboxes' gids a range too"));
  unlink(small.c_str());
  std::string user = unit::temp_file("passwd", "mallory:x:500000007:100::/home/m:/bin/sh\n");
  EXPECT_TRUE(unit::has(unit::error_of([&] { plan_blocks(id, u.c_str(), g.c_str(), user.c_str()); }),
                        "mallory"));
  // A host group with a block's gid (its files would be the sandbox's);
  // control: the same group outside the range passes.
  std::string group = unit::temp_file("group", "staff:x:600000009:\n");
  std::string outside = unit::temp_file("group", "staff:x:600196608:\n");
  EXPECT_TRUE(unit::has(unit::error_of([&] { plan_blocks(id, u.c_str(), g.c_str(), passwd.c_str(), group.c_str()); }),
                        "group staff (gid 600000009)"));
  EXPECT_EQ(unit::error_of([&] { plan_blocks(id, u.c_str(), g.c_str(), passwd.c_str(), outside.c_str()); }), "");
  // The image store's range: users and groups checked as well.
  std::string in_store = unit::temp_file("passwd", "eve:x:2000000005:100::/home/e:/bin/sh\n");
  std::string group_in_store = unit::temp_file("group", "eve:x:2000065535:\n");
  EXPECT_TRUE(unit::has(unit::error_of([&] { check_store_range(2000000000, 2000000000, in_store.c_str(), outside.c_str()); }),
                        "user eve (uid 2000000005) is in the image store's range"));
  EXPECT_TRUE(unit::has(unit::error_of([&] { check_store_range(2000000000, 2000000000, passwd.c_str(), group_in_store.c_str()); }),
                        "group eve (gid 2000065535)"));
  EXPECT_EQ(unit::error_of([&] { check_store_range(2000000000, 2000000000, passwd.c_str(), outside.c_str()); }), "");
  for (const auto& f : {none, passwd, u, g, store, owners, user, group, outside, in_store, group_in_store}) unlink(f.c_str());
}

TEST(Identity, OwnersComeFromTheirOwnRange) {
  std::string none = unit::temp_file("subuid", "alice:100000:65536\n");
  auto [base, count] = owner_range(none.c_str(), 2000000000);
  EXPECT_EQ(base, 3000000000U);
  EXPECT_EQ(count, 1U << 30);
  EXPECT_LE(uint64_t{base} + count, 0xfffffffeULL);  // (uid_t)-1 is never an owner
  std::string own = unit::temp_file("subuid", "alice:100000:65536\nultari-owners:500000:1000\n");
  std::tie(base, count) = owner_range(own.c_str(), 2000000000);
  EXPECT_EQ(base, 500000U);
  EXPECT_EQ(count, 1000U);
  unlink(none.c_str());
  unlink(own.c_str());
}

TEST(Identity, AnOwnersRangeOverlappingTheSandboxIdsIsRefused) {
  std::string bad = unit::temp_file("subuid", "ultari-owners:2000060000:100000\n");
  std::string err = unit::error_of([&] { owner_range(bad.c_str(), 2000000000); });
  EXPECT_TRUE(unit::has(err, "overlaps the sandboxes' ids")) << err;
  // Control: the same range right after the sandbox ids is fine.
  std::string ok = unit::temp_file("subuid", "ultari-owners:2000065536:100000\n");
  EXPECT_EQ(owner_range(ok.c_str(), 2000000000).first, 2000065536U);
  unlink(bad.c_str());
  unlink(ok.c_str());
}

// An owner can signal and ptrace its sandbox's processes from the host
// (review6): a range holding a real user's uid is refused, naming the user.
TEST(Identity, AnOwnersRangeHoldingAUserIsRefused) {
  std::string subuid = unit::temp_file("subuid", "ultari-owners:3500000000:1000\n");
  std::string bad = unit::temp_file("subuid", "root:x:0:0:root:/root:/bin/bash\nmallory:x:3500000500:100::/home/m:/bin/sh\n");
  std::string err = unit::error_of([&] { owner_range(subuid.c_str(), 2000000000, bad.c_str()); });
  EXPECT_TRUE(unit::has(err, "user mallory (uid 3500000500)")) << err;
  // Control: the same users one uid past the range.
  std::string ok = unit::temp_file("subuid", "root:x:0:0:root:/root:/bin/bash\nmallory:x:3500001000:100::/home/m:/bin/sh\n");
  EXPECT_EQ(owner_range(subuid.c_str(), 2000000000, ok.c_str()).first, 3500000000U);
  unlink(subuid.c_str());
  unlink(bad.c_str());
  unlink(ok.c_str());
}

TEST(Identity, LiveLeasesNeverShareAnOwner) {
  std::string lock_path = unit::temp_file("owners");
  const char* lock = lock_path.c_str();
  Identity id = unit::owners(3500000000U, 8);
  std::vector<OwnerLease> held;
  std::set<uid_t> seen;
  for (int i = 0; i < 8; ++i) {
    held.push_back(lease_owner(id, lock));
    EXPECT_GE(held.back().uid, id.owner_base);
    EXPECT_LT(held.back().uid, id.owner_base + id.owner_count);
    seen.insert(held.back().uid);
  }
  EXPECT_EQ(seen.size(), 8u);  // all different while held
  // The range is used up: the next one is refused, naming it.
  std::string err = unit::error_of([&] { lease_owner(id, lock); });
  EXPECT_TRUE(unit::has(err, "no free owner uid")) << err;
  // A lease ended is free again (control: the refusal above was the range's).
  uid_t freed = held[3].uid;
  held.erase(held.begin() + 3);
  EXPECT_EQ(lease_owner(id, lock).uid, freed);
  unlink(lock);
}

// Each rootful gateway runs as a uid of its own, from a range that is
// neither the sandboxes' ids nor their owners' nor a user's.
TEST(Identity, GatewaysComeFromARangeOfTheirOwn) {
  Identity id = unit::owners(3000000000U, 1U << 30);
  id.host_root_uid = 2000000000;
  std::string none = unit::temp_file("subuid", "alice:100000:65536\n");
  std::string passwd = unit::temp_file("passwd", "root:x:0:0:root:/root:/bin/bash\n");
  auto [base, count] = gateway_range(none.c_str(), id, passwd.c_str());
  EXPECT_EQ(base, 4100000000U);
  EXPECT_EQ(count, 1U << 27);
  EXPECT_LE(uint64_t{base} + count, 0xfffffffeULL);
  std::string own = unit::temp_file("subuid", "ultari-gateways:600000:1000\n");
  EXPECT_EQ(gateway_range(own.c_str(), id, passwd.c_str()).first, 600000U);
  // Overlapping the sandboxes' ids, or the owners': refused.
  for (const char* line : {"ultari-gateways:1999999000:2000\n", "ultari-gateways:3999999000:10\n"}) {
    std::string bad = unit::temp_file("subuid", line);
    std::string err = unit::error_of([&] { gateway_range(bad.c_str(), id, passwd.c_str()); });
    EXPECT_TRUE(unit::has(err, "overlaps the sandboxes' ids")) << line << err;
    unlink(bad.c_str());
  }
  // Holding a user's uid: refused, naming the user (control: the range
  // without that user passed above).
  std::string user = unit::temp_file("passwd", "root:x:0:0:root:/root:/bin/bash\nmallory:x:600500:100::/m:/bin/sh\n");
  std::string err = unit::error_of([&] { gateway_range(own.c_str(), id, user.c_str()); });
  EXPECT_TRUE(unit::has(err, "user mallory (uid 600500) is in the ultari-gateways range")) << err;
  // Leases of the range never share a uid while held.
  std::string lock_path = unit::temp_file("gateways");
  OwnerLease a = lease_gateway(600000, 2, lock_path.c_str()), b = lease_gateway(600000, 2, lock_path.c_str());
  EXPECT_NE(a.uid, b.uid);
  EXPECT_TRUE(unit::has(unit::error_of([&] { lease_gateway(600000, 2, lock_path.c_str()); }), "no free gateway uid"));
  for (const auto& f : {none, passwd, own, user, lock_path}) unlink(f.c_str());
}

// Leases hold across processes (another supervisor, a pool), and end with
// their holder.
TEST(Identity, LeasesHoldAcrossProcessesAndEndWithTheHolder) {
  std::string lock_path = unit::temp_file("owners");
  const char* lock = lock_path.c_str();
  Identity id = unit::owners(3500000000U, 1);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  if (child == 0) {
    OwnerLease lease = lease_owner(id, lock);
    if (write(ready[1], "x", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  EXPECT_TRUE(unit::has(unit::error_of([&] { lease_owner(id, lock); }), "no free owner uid"));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_EQ(lease_owner(id, lock).uid, 3500000000U);
  close(ready[0]);
  close(ready[1]);
  unlink(lock);
}

}  // namespace
}  // namespace ultari::isolation
