// --net-upstream's pure parts: the URL, the credentials, the request heads
// sent to the proxy, the synthetic addresses (network_upstream_test.cpp
// drives a real proxy).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <set>
#include <string>

#include "net/policy.h"
#include "net/upstream.h"
#include "util/error.h"

namespace ultari::net {
namespace {

std::string error_of(const std::string& url) {
  try {
    parse_upstream(url);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NetUpstream, ParsesHttpHostPortOnly) {
  UpstreamUrl u = parse_upstream("http://proxy.corp.example:3128");
  EXPECT_EQ(u.host, "proxy.corp.example");
  EXPECT_EQ(u.port, 3128);
  u = parse_upstream("HTTP://10.0.0.1:8080/");
  EXPECT_EQ(u.host, "10.0.0.1");
  EXPECT_EQ(u.port, 8080);
  EXPECT_NE(error_of("https://p:1").find("http://HOST:PORT"), std::string::npos);
  EXPECT_NE(error_of("socks5://p:1").find("http://HOST:PORT"), std::string::npos);
  EXPECT_NE(error_of("http://p").find("port"), std::string::npos);
  EXPECT_NE(error_of("http://p:").find("port"), std::string::npos);
  EXPECT_NE(error_of("http://p:0").find("bad port"), std::string::npos);
  EXPECT_NE(error_of("http://p:65536").find("bad port"), std::string::npos);
  EXPECT_NE(error_of("http://p:12x").find("bad port"), std::string::npos);
  EXPECT_NE(error_of("http://user:pw@p:1").find("--net-upstream-auth"), std::string::npos);
  EXPECT_EQ(error_of("http://user:pw@p:1").find("pw@"), std::string::npos);  // the password is not echoed
  EXPECT_NE(error_of("http://p:1/path").find("no path"), std::string::npos);
  EXPECT_NE(error_of("http://:1").find("no host"), std::string::npos);
  EXPECT_NE(error_of("http://a b:1").find("bad host"), std::string::npos);
  EXPECT_NE(error_of("http://[::1]:1").find("bad host"), std::string::npos);
}

TEST(NetUpstream, BasicCredentialsAreRfc7617Base64) {
  // RFC 7617's example, and every padding length.
  EXPECT_EQ(basic_credentials("Aladdin:open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
  EXPECT_EQ(basic_credentials("a:b"), "Basic YTpi");
  EXPECT_EQ(basic_credentials("a:bc"), "Basic YTpiYw==");
  EXPECT_EQ(basic_credentials("a:bcd"), "Basic YTpiY2Q=");
  EXPECT_EQ(basic_credentials(std::string("u:\xff\xfe", 4)), "Basic dTr//g==");
  EXPECT_THROW(basic_credentials("no-colon"), Error);
}

TEST(NetUpstream, HeadsBecomeAbsoluteFormForTheFlowsHostAndPort) {
  std::string why;
  // The sandbox's proxy and connection headers go; Host is the flow's;
  // one request per proxy connection.
  std::string h = "GET /a?b=1 HTTP/1.1\r\nHost: X.com:80@other.test\r\nProxy-Authorization: Basic c2FuZGJveA==\r\n"
                  "proxy-connection: keep-alive\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nMax-Forwards: 0\r\n"
                  "Accept: */*\r\n\r\n";
  ASSERT_TRUE(to_proxy_form(h, "x.com", 80, "Basic bGFi", why)) << why;
  EXPECT_EQ(h, "GET http://x.com/a?b=1 HTTP/1.1\r\nHost: x.com\r\nAccept: */*\r\nProxy-Authorization: Basic bGFi\r\n"
               "Connection: close\r\n\r\n");
  // Another port is named; no credentials: none added.
  h = "POST /p HTTP/1.1\r\nHost: x.com:8080\r\n\r\n";
  ASSERT_TRUE(to_proxy_form(h, "x.com", 8080, "", why)) << why;
  EXPECT_EQ(h, "POST http://x.com:8080/p HTTP/1.1\r\nHost: x.com:8080\r\nConnection: close\r\n\r\n");
  // An absolute target keeps its path only: its authority is not the
  // proxy's to follow (another port, userinfo...).
  for (const char* target : {"http://x.com:22/q", "HTTP://x.com/q", "http://u@x.com:9/q"}) {
    h = std::string("GET ") + target + " HTTP/1.1\r\nHost: x.com\r\n\r\n";
    ASSERT_TRUE(to_proxy_form(h, "x.com", 80, "", why)) << target;
    EXPECT_EQ(h, "GET http://x.com/q HTTP/1.1\r\nHost: x.com\r\nConnection: close\r\n\r\n") << target;
  }
  h = "GET http://x.com?q HTTP/1.1\r\n\r\n";
  ASSERT_TRUE(to_proxy_form(h, "x.com", 80, "", why));
  EXPECT_EQ(h, "GET http://x.com/?q HTTP/1.1\r\nConnection: close\r\n\r\n");
  // What a proxy would take as more than a request to x.com:80.
  for (const char* bad : {"CONNECT x.com:443 HTTP/1.1\r\nHost: x.com\r\n\r\n", "OPTIONS * HTTP/1.1\r\nHost: x.com\r\n\r\n",
                          "GET x.com/ HTTP/1.1\r\n\r\n", "GET\r\n\r\n", "TRACE / HTTP/1.1\r\nMax-Forwards: 0\r\n\r\n",
                          "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"}) {
    h = bad;
    EXPECT_FALSE(to_proxy_form(h, "x.com", 80, "", why)) << bad;
    EXPECT_EQ(h, bad);
  }
  h = "CONNECT x.com:443 HTTP/1.1\r\n\r\n";
  EXPECT_FALSE(to_proxy_form(h, "x.com", 80, "", why));
  EXPECT_EQ(why, "http-connect");
  h = "TRACE / HTTP/1.1\r\n\r\n";
  EXPECT_FALSE(to_proxy_form(h, "x.com", 80, "", why));
  EXPECT_EQ(why, "http-trace");
}

TEST(NetUpstream, ConnectRequestsAndStatusLines) {
  EXPECT_EQ(connect_request("a.com", 443, ""), "CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n");
  EXPECT_EQ(connect_request("1.2.3.4", 22, "Basic x"),
            "CONNECT 1.2.3.4:22 HTTP/1.1\r\nHost: 1.2.3.4:22\r\nProxy-Authorization: Basic x\r\n\r\n");
  EXPECT_EQ(response_status("HTTP/1.1 200 Connection established"), 200);
  EXPECT_EQ(response_status("HTTP/1.0 407 Proxy Authentication Required"), 407);
  for (const char* bad : {"", "HTTP/1.1", "HTTP/2 200 OK", "SSH-2.0-OpenSSH", "HTTP/1.1 2x0 OK", "HTTP/1.1  200"})
    EXPECT_EQ(response_status(bad), -1) << bad;
}

TEST(NetUpstream, SyntheticAddressesAreDistinctAndNeverPublic) {
  std::set<uint32_t> seen;
  for (uint32_t n : {0u, 1u, 255u, 256u, 65535u, kSyntheticCount - 1}) {
    in_addr a = synthetic_address(n);
    EXPECT_FALSE(is_public(a)) << n;  // never a real destination
    EXPECT_TRUE(seen.insert(a.s_addr).second) << n;
  }
  char buf[INET_ADDRSTRLEN];
  in_addr first = synthetic_address(0), last = synthetic_address(kSyntheticCount - 1);
  EXPECT_STREQ(inet_ntop(AF_INET, &first, buf, sizeof buf), "198.18.0.1");
  EXPECT_STREQ(inet_ntop(AF_INET, &last, buf, sizeof buf), "198.19.255.254");
}

TEST(NetUpstream, PolicyFileTakesUpstreamAndChecksIt) {
  NetworkSpec p;
  p.mode = NetworkSpec::Mode::Allow;
  p.allow = {"a.com"};
  p.upstream = "http://proxy:3128";
  EXPECT_NO_THROW(validate(p));
  p.upstream_auth = "file:/etc/proxy-cred";
  EXPECT_NO_THROW(validate(p));
  p.upstream_auth = "/etc/proxy-cred";
  EXPECT_THROW(validate(p), Error);
  p.upstream_auth = "env:X";
  p.upstream.clear();
  EXPECT_THROW(validate(p), Error);  // auth without an upstream
  p.upstream = "http://proxy";
  EXPECT_THROW(validate(p), Error);
  p.upstream = "http://proxy:1";
  p.mode = NetworkSpec::Mode::None;
  EXPECT_THROW(validate(p), Error);

  char path[] = "/tmp/ultari-upstream-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  auto load = [&](const std::string& toml) {
    ASSERT_EQ(pwrite(fd, toml.data(), toml.size(), 0), static_cast<ssize_t>(toml.size()));
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(toml.size())), 0);
    NetworkSpec q;
    load_policy_file(q, path);
    EXPECT_EQ(q.upstream, "http://proxy:3128");
    EXPECT_EQ(q.upstream_auth, "env:PROXY_CRED");
  };
  load("allow = [\"a.com\"]\nupstream = \"http://proxy:3128\"\nupstream_auth = \"env:PROXY_CRED\"\n");
  // A bad URL names the file and its line.
  try {
    load("allow = [\"a.com\"]\n\nupstream = \"https://proxy:3128\"\n");
    ADD_FAILURE() << "accepted https://";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::string(path) + ":3"), std::string::npos) << e.what();
  }
  close(fd);
  unlink(path);
}

}  // namespace
}  // namespace ultari::net
