// The URL helpers: user:password@ taken apart, dropped, and hidden.
#include <gtest/gtest.h>

#include "util/url.h"

namespace ultari {
namespace {

TEST(Url, UserinfoIsTakenApartPercentDecoded) {
  Userinfo u = userinfo_of("http://al%40ice:p%3Ass@host.test:8080/a@b?c=d@e");
  EXPECT_TRUE(u.present);
  EXPECT_EQ(u.user, "al@ice");
  EXPECT_EQ(u.password, "p:ss");
  Userinfo only_user = userinfo_of("https://bob@host.test/x");
  EXPECT_TRUE(only_user.present);
  EXPECT_EQ(only_user.user, "bob");
  EXPECT_EQ(only_user.password, "");
  // Negative controls: an '@' after the authority is no userinfo.
  EXPECT_FALSE(userinfo_of("http://host.test/a@b").present);
  EXPECT_FALSE(userinfo_of("http://host.test?q=a@b").present);
  EXPECT_FALSE(userinfo_of("not a url@all").present);
}

TEST(Url, WithoutUserinfoAndRedacted) {
  const std::string url = "http://user:secret@host.test:8080/path@x";
  EXPECT_EQ(without_userinfo(url), "http://host.test:8080/path@x");
  EXPECT_EQ(redacted(url), "http://user:***@host.test:8080/path@x");
  EXPECT_EQ(host_of(url), "host.test");
  EXPECT_EQ(port_of(url, 80), 8080);
  // A user alone has no secret to hide; URLs without userinfo are unchanged.
  EXPECT_EQ(redacted("http://user@host.test/"), "http://user@host.test/");
  EXPECT_EQ(redacted("http://host.test/a:b@c"), "http://host.test/a:b@c");
  EXPECT_EQ(without_userinfo("http://host.test/a@b"), "http://host.test/a@b");
}

}  // namespace
}  // namespace ultari
