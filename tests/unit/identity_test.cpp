// Who owns a rootful sandbox's user namespace (the per-user quotas' key).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <string>
#include <tuple>

#include "isolation/identity.h"
#include "unit_util.h"

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

TEST(Identity, OwnersComeFromTheirOwnRange) {
  std::string none = write_subuid("alice:100000:65536\n");
  auto [base, count] = owner_range(none.c_str(), 2000000000);
  EXPECT_EQ(base, 3000000000U);
  EXPECT_EQ(count, 1U << 30);
  EXPECT_LE(uint64_t{base} + count, 0xfffffffeULL);  // (uid_t)-1 is never an owner
  std::string own = write_subuid("alice:100000:65536\nultari-owners:500000:1000\n");
  std::tie(base, count) = owner_range(own.c_str(), 2000000000);
  EXPECT_EQ(base, 500000U);
  EXPECT_EQ(count, 1000U);
  unlink(none.c_str());
  unlink(own.c_str());
}

TEST(Identity, AnOwnersRangeOverlappingTheSandboxIdsIsRefused) {
  std::string bad = write_subuid("ultari-owners:2000060000:100000\n");
  std::string err = unit::error_of([&] { owner_range(bad.c_str(), 2000000000); });
  EXPECT_TRUE(unit::has(err, "overlaps the sandboxes' ids")) << err;
  // Control: the same range right after the sandbox ids is fine.
  std::string ok = write_subuid("ultari-owners:2000065536:100000\n");
  EXPECT_EQ(owner_range(ok.c_str(), 2000000000).first, 2000065536U);
  unlink(bad.c_str());
  unlink(ok.c_str());
}

TEST(Identity, OwnersDifferPerSandboxOfAProcess) {
  Identity id;
  id.rootful = true;
  id.owner_base = 3000000000U;
  id.owner_count = 1U << 30;
  std::set<uid_t> seen;
  for (int i = 0; i < 256; ++i) {
    uid_t owner = namespace_owner(id);
    EXPECT_GE(owner, id.owner_base);
    EXPECT_LT(owner, id.owner_base + id.owner_count);
    seen.insert(owner);
  }
  EXPECT_EQ(seen.size(), 256u);
  // The 257th wraps around onto the first: more than 256 alive at once share.
  EXPECT_EQ(seen.count(namespace_owner(id)), 1u);
}

}  // namespace
}  // namespace ultari::isolation
