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
  EXPECT_EQ(origin_of(url), "http://host.test:8080");
  EXPECT_EQ(origin_of("https://h.test"), "https://h.test");
  EXPECT_EQ(host_of(url), "host.test");
  EXPECT_EQ(port_of(url, 80), 8080);
  // A user alone is a token: hidden too.
  EXPECT_EQ(redacted("https://TOKEN@host.test/"), "https://***@host.test/");
  // A password with an unencoded '/', '?' or '#' ends the authority early:
  // still hidden (and an '@' in a path hides the host: erring on hiding).
  EXPECT_EQ(redacted("https://alice:s3cr#t@files.test/x"), "https://***@files.test/x");
  EXPECT_EQ(redacted("https://alice:a/b@files.test/x"), "https://***@files.test/x");
  EXPECT_EQ(redacted("http://host.test/a:b@c"), "http://***@c");
  // Negative controls: URLs without '@' are unchanged.
  EXPECT_EQ(redacted("http://host.test:8080/a/b?c=d"), "http://host.test:8080/a/b?c=d");
  EXPECT_EQ(without_userinfo("http://host.test/a@b"), "http://host.test/a@b");
}

}  // namespace
}  // namespace ultari
