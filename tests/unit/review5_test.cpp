// Fifth independent review (write_files[].source, the shared URL host/port
// reader, the upstream proxy's URL): attacks at the level of the functions
// that read the hostile input. Each test asserts that the attack fails and
// carries a negative control that shows the probe can tell.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "net/policy.h"
#include "net/upstream.h"
#include "provision/cloud_config.h"
#include "util/error.h"
#include "util/url.h"
#include "unit_util.h"

namespace ultari {
namespace {

using provision::CloudConfig;
using provision::parse_user_data;
using unit::error_of;
using unit::has;



// ------------------------------------------------------------- url.h

// host_of/port_of read what curl and wget read as the host and port: the
// last '@' of the authority ends the user:password (busybox wget and curl
// agree), '/', '?' and '#' end the authority, an IPv6 literal is no name.
// Whatever they mis-read would become the fetch's only allowed host.
TEST(Review5, UrlHostAndPortAreTheOnesTheFetchersUse) {
  struct Case {
    const char* url;
    const char* host;
    uint16_t port;
  };
  const std::vector<Case> cases = {
      {"http://allowed.test/files/a", "allowed.test", 80},           // negative control
      {"https://allowed.test/files/a", "allowed.test", 443},         // negative control
      {"http://allowed.test:8080/files/a", "allowed.test", 8080},    // negative control
      {"http://a.test:80@evil.test/", "evil.test", 80},              // user:password@, not a port
      {"http://a.test:80@evil.test:8080/", "evil.test", 8080},
      {"http://u@a.test@evil.test/", "evil.test", 80},               // several '@': the last
      {"http://allowed.test/x@evil.test:81/", "allowed.test", 80},   // '@' in the path
      {"http://allowed.test/?q=@evil.test:81", "allowed.test", 80},  // '@' in the query
      {"http://allowed.test?@evil.test:81", "allowed.test", 80},
      {"http://allowed.test#@evil.test:81", "allowed.test", 80},     // '@' in the fragment
      {"http://evil.test\\@a.test/", "a.test", 80},                  // (refused as a source: backslash)
      {"http://[::1]:80/", "", 80},                                  // IPv6 literal: no name
      {"http://u:p@[2001:db8::1]:8080/", "", 8080},
      {"http://allowed.test:/", "allowed.test", 0},                  // empty port: none
      {"http://allowed.test:0/", "allowed.test", 0},
      {"http://allowed.test:65536/", "allowed.test", 0},
      {"http://allowed.test:+80/", "allowed.test", 0},
      {"http://allowed.test:-1/", "allowed.test", 0},
      {"http://allowed.test:80:81/", "allowed.test", 81},            // curl refuses it; wget's host is "allowed.test:80"
      {"http://allowed.test:123456/", "allowed.test", 0},
      {"http://allowed.test: 80/", "allowed.test", 0},
      {"no-scheme.test/a", "", 80},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(host_of(c.url), c.host) << c.url;
    EXPECT_EQ(port_of(c.url, std::string(c.url).rfind("https://", 0) == 0 ? 443 : 80), c.port) << c.url;
  }
  EXPECT_EQ(port_number("65535"), 65535);  // negative control
  EXPECT_EQ(port_number("00080"), 80);
  EXPECT_EQ(port_number("000000080"), 0);  // more than 5 digits
  EXPECT_EQ(port_number("99999999999999999999999"), 0);  // no std::out_of_range
  EXPECT_EQ(port_number(""), 0);
}

// Whatever host_of returns becomes a policy's only allowed name: it must
// never be a pattern, an empty name or a list. fetch_alone refuses an
// empty host and one with '*', then net::validate what is not one plain name.
TEST(Review5, AUrlHostCannotBecomeAWiderPolicy) {
  auto validate_host = [](const std::string& url) {
    return error_of([&] {
      std::string host = host_of(url);
      if (host.empty() || host.find('*') != std::string::npos) throw Error("names no host");  // as fetch_alone
      NetworkSpec only;
      only.mode = NetworkSpec::Mode::Allow;
      only.allow = {host_of(url)};
      only.ports = {80};
      net::validate(only);
    });
  };
  EXPECT_EQ(validate_host("http://allowed.test/"), "");  // negative control
  for (const char* url : {"http://*.test/", "http://*/", "http://[::1]/", "http://u@/", "http://allowed.test,other.test/",
                          "http://allowed.test%2cother.test/", "http://allowed.test;other.test/", "http://.test/",
                          "http://allowed..test/", "http://allowed.test\x01/"})
    EXPECT_FALSE(validate_host(url).empty()) << url;
  // An allowed name matches itself alone (not a suffix, not another host).
  NetworkSpec only;
  only.mode = NetworkSpec::Mode::Allow;
  only.allow = {host_of("http://user@allowed.test:80/")};
  only.ports = {80};
  EXPECT_TRUE(net::decide(only, "allowed.test").allow);  // negative control
  EXPECT_FALSE(net::decide(only, "other.test").allow);
  EXPECT_FALSE(net::decide(only, "evil.allowed.test").allow);
  EXPECT_FALSE(net::decide(only, "203.0.113.10").allow);
}

// ------------------------------------------------------------ upstream

// parse_upstream now reads its port with port_number: what it took and
// refused before, it takes and refuses now.
TEST(Review5, TheUpstreamProxysUrlIsReadAsBefore) {
  net::UpstreamUrl u = net::parse_upstream("http://proxy.test:3128");  // negative control
  EXPECT_EQ(u.host, "proxy.test");
  EXPECT_EQ(u.port, 3128);
  EXPECT_EQ(net::parse_upstream("HTTP://10.0.0.1:65535/").port, 65535);
  for (const char* bad : {"http://proxy.test:0", "http://proxy.test:65536", "http://proxy.test:", "http://proxy.test",
                          "http://proxy.test:+3128", "http://proxy.test:3128x", "http://proxy.test:99999999999999999999",
                          "http://:3128", "http://[::1]:3128", "http://u:p@proxy.test:3128", "http://a.test:80@b.test:3128",
                          "http://proxy.test:3128/path", "http://proxy.test:3128?q", "https://proxy.test:3128",
                          "http://pro xy.test:3128", "http://proxy.test:80:3128"})
    EXPECT_FALSE(error_of([&] { net::parse_upstream(bad); }).empty()) << bad;
  // The credentials are never echoed.
  EXPECT_FALSE(has(error_of([] { net::parse_upstream("http://alice:s3cret@proxy.test:3128"); }), "s3cret"));
}

// ------------------------------------------------------ write_files source

std::string source_error(const std::string& source) {
  return error_of([&] { parse_user_data("#cloud-config\nwrite_files:\n  - path: /a\n    source: " + source + "\n"); });
}

// A source's URL cannot carry what would make it an option, a second
// request, shell text or a host the tools read differently.
TEST(Review5, ASourceUrlCannotInjectOrHideItsHost) {
  EXPECT_EQ(source_error("{uri: 'http://allowed.test/files/a?x=1#y'}"), "");  // negative control
  for (const char* uri : {"'-http://allowed.test/'", "'--output=/etc/passwd'", "' http://allowed.test/'",
                          "\"http://allowed.test/\\r\\nHost: other.test\"", "\"http://allowed.test/\\nhttp://other.test/\"",
                          "'http://evil.test\\@allowed.test/'", "'http://allowed.test/ -O /etc/passwd'",
                          "\"http://allowed.test/'$(id)'\"", "'ftp://allowed.test/'", "'file:///etc/shadow'",
                          "'HTTP://allowed.test/'", "'http:/allowed.test/'"})
    EXPECT_FALSE(source_error(std::string("{uri: ") + uri + "}").empty()) << uri;
  std::string longest = "'http://allowed.test/" + std::string(4096, 'a') + "'";
  EXPECT_TRUE(has(source_error("{uri: " + longest + "}"), "must be an http:// or https:// URL"));
}

// A header's name cannot be an option, another header or a curl @file;
// its value cannot end the header line (CR, LF or CR LF).
TEST(Review5, ASourceHeaderCannotInjectAnotherHeaderOrAnOption) {
  CloudConfig ok = parse_user_data(  // negative control: values as they are, '-', '$', '@' included
      "#cloud-config\nwrite_files:\n  - path: /a\n    source:\n      uri: http://allowed.test/\n"
      "      headers: {X-A: '-o /etc/passwd', X-B: '$(id) `id` @/etc/shadow', X-C: 'caf\xc3\xa9'}\n");
  ASSERT_EQ(ok.write_files.size(), 1u);
  EXPECT_EQ(ok.write_files[0].source_headers,
            (std::vector<std::pair<std::string, std::string>>{
                {"X-A", "-o /etc/passwd"}, {"X-B", "$(id) `id` @/etc/shadow"}, {"X-C", "caf\xc3\xa9"}}));
  for (const char* headers :
       {"{'X: y': z}", "{'@/etc/shadow': z}", "{'X-A:': z}", "{'X A': z}", "{'': z}", "{'X\\nY': z}",
        "{\"X\\r\": z}", "{'caf\xc3\xa9': z}", "{'X;': z}", "{X-A: \"v\\r\\nHost: other.test\"}", "{X-A: \"v\\rw\"}",
        "{X-A: \"v\\nX-B: w\"}"})
    EXPECT_FALSE(source_error(std::string("{uri: 'http://allowed.test/', headers: ") + headers + "}").empty())
        << headers;
  std::string long_name(257, 'a');
  EXPECT_TRUE(has(source_error("{uri: 'http://allowed.test/', headers: {" + long_name + ": v}}"), "is not a header name"));
  EXPECT_EQ(source_error("{uri: 'http://allowed.test/', headers: {" + long_name.substr(1) + ": v}}"), "");
}

}  // namespace
}  // namespace ultari
