// The egress policy, the name sniffers and the DNS messages: pure functions
// fed with crafted input (the integration tests drive the real network).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "net/dlp.h"
#include "net/dns.h"
#include "net/http_requests.h"
#include "net/policy.h"
#include "net/sniff.h"
#include "util/error.h"

namespace ultari::net {
namespace {

NetworkSpec allow(std::vector<std::string> a, std::vector<std::string> d = {}) {
  NetworkSpec p;
  p.mode = NetworkSpec::Mode::Allow;
  for (auto& n : a) p.allow.push_back(normalize_name(n, true));
  for (auto& n : d) p.deny.push_back(normalize_name(n, true));
  return p;
}

TEST(NetPolicy, ExactNamesCompareCaseInsensitivelyWithoutTrailingDot) {
  auto p = allow({"PyPI.org."});
  EXPECT_TRUE(decide(p, "pypi.org").allow);
  EXPECT_TRUE(decide(p, "PYPI.ORG.").allow);
  EXPECT_EQ(decide(p, "pypi.org").reason, "pypi.org");
  EXPECT_FALSE(decide(p, "files.pypi.org").allow);
  EXPECT_FALSE(decide(p, "pypi.org.evil.com").allow);
  EXPECT_FALSE(decide(p, "xpypi.org").allow);
  EXPECT_EQ(decide(p, "other.org").reason, "no-rule");
}

TEST(NetPolicy, WildcardMatchesSubdomainsNeverTheApex) {
  auto p = allow({"*.pythonhosted.org"});
  EXPECT_TRUE(decide(p, "files.pythonhosted.org").allow);
  EXPECT_TRUE(decide(p, "a.b.pythonhosted.org").allow);
  EXPECT_EQ(decide(p, "a.b.pythonhosted.org").reason, "*.pythonhosted.org");
  EXPECT_FALSE(decide(p, "pythonhosted.org").allow);
  EXPECT_FALSE(decide(p, "evilpythonhosted.org").allow);
}

TEST(NetPolicy, DenyWinsOverAllowAndOpen) {
  auto p = allow({"*.pypi.org"}, {"evil.pypi.org"});
  EXPECT_TRUE(decide(p, "good.pypi.org").allow);
  auto d = decide(p, "Evil.PyPI.org");
  EXPECT_FALSE(d.allow);
  EXPECT_EQ(d.reason, "evil.pypi.org");
  p.mode = NetworkSpec::Mode::Open;
  EXPECT_FALSE(decide(p, "evil.pypi.org").allow);
  EXPECT_TRUE(decide(p, "anything.example").allow);
}

TEST(NetPolicy, IpLiteralsNeverMatchADomainRule) {
  auto p = allow({"1.2.3.4", "*.0.0.10"});
  EXPECT_FALSE(decide(p, "1.2.3.4").allow);
  EXPECT_FALSE(decide(p, "10.0.0.10").allow);
  EXPECT_FALSE(decide(p, "::1").allow);
  // Negative control: the same rule matches a name.
  auto q = allow({"*.example"});
  EXPECT_TRUE(decide(q, "a.example").allow);
}

TEST(NetPolicy, BadNamesAreRefused) {
  for (const char* bad : {"*", "", "a..b", "*.", "a*.b", "*.*.b", "a b", "a/b", "-"}) {
    if (std::string(bad) == "-") continue;  // a single hyphen label is odd but harmless
    EXPECT_THROW(normalize_name(bad, true), Error) << bad;
  }
  EXPECT_THROW(normalize_name(std::string(64, 'a') + ".com", false), Error);
  EXPECT_THROW(normalize_name("*.x", false), Error);  // a wildcard where a name is expected
  EXPECT_EQ(normalize_name("*.X.", true), "*.x");
}

TEST(NetPolicy, NetOptionShorthand) {
  NetworkSpec p;
  apply_net_option(p, "allow=a.com,*.b.org");
  apply_net_option(p, "allow=c.net");
  EXPECT_EQ(p.mode, NetworkSpec::Mode::Allow);
  EXPECT_EQ(p.allow, (std::vector<std::string>{"a.com", "*.b.org", "c.net"}));
  EXPECT_THROW(apply_net_option(p, "open"), Error);
  EXPECT_THROW(apply_net_option(p, "allow=*"), Error);
  EXPECT_THROW(apply_net_option(p, "allow="), Error);
  EXPECT_THROW(apply_net_option(p, "bogus"), Error);
  apply_net_option(p, "none");
  EXPECT_EQ(p.mode, NetworkSpec::Mode::None);
  EXPECT_TRUE(p.allow.empty());
}

std::string write_temp(const std::string& content) {
  char path[] = "/tmp/ultari-policy-XXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  close(fd);
  return path;
}

TEST(NetPolicy, PolicyFile) {
  std::string path = write_temp("allow = [\"pypi.org\", \"*.pythonhosted.org\"]\ndeny = [\"Evil.PyPI.org.\"]\nports = [443, 8443]\n");
  NetworkSpec p;
  load_policy_file(p, path);
  std::remove(path.c_str());
  EXPECT_EQ(p.mode, NetworkSpec::Mode::Allow);
  EXPECT_EQ(p.allow, (std::vector<std::string>{"pypi.org", "*.pythonhosted.org"}));
  EXPECT_EQ(p.deny, (std::vector<std::string>{"evil.pypi.org"}));
  EXPECT_EQ(p.ports, (std::vector<uint16_t>{443, 8443}));
  EXPECT_TRUE(port_allowed(p, 8443));
  EXPECT_FALSE(port_allowed(p, 80));
}

std::string policy_error(const std::string& content) {
  std::string path = write_temp(content);
  NetworkSpec p;
  std::string what;
  try {
    load_policy_file(p, path);
  } catch (const Error& e) {
    what = e.what();
  }
  std::remove(path.c_str());
  return what;
}

TEST(NetPolicy, PolicyFileErrorsNameTheFileAndLine) {
  EXPECT_NE(policy_error("allow = [\"a.com\"]\nallow2 = 1\n").find(":2: unknown key 'allow2'"), std::string::npos);
  EXPECT_NE(policy_error("\n\nallow = [\"*\"]\n").find(":3:"), std::string::npos);
  EXPECT_NE(policy_error("allow = [\"*\"]\n").find("--net open"), std::string::npos);
  EXPECT_NE(policy_error("allow = [\"a.com\"\n").find(":"), std::string::npos);  // TOML syntax
  EXPECT_NE(policy_error("ports = [0]\n").find("port"), std::string::npos);
  EXPECT_NE(policy_error("ports = [\"80\"]\n").find("port"), std::string::npos);
  EXPECT_NE(policy_error("allow = \"a.com\"\n").find("list"), std::string::npos);
  EXPECT_NE(policy_error("[dlp]\naction = \"drop\"\n").find("dlp.action"), std::string::npos);
  EXPECT_NE(policy_error("[dlp]\nliterals = [\"abc\"]\n").find("fewer than 4"), std::string::npos);
  EXPECT_NE(policy_error("[dlp]\nmode = 1\n").find("dlp.mode"), std::string::npos);
  EXPECT_NE(policy_error("[[secret]]\nname = \"K\"\n").find("needs name and from"), std::string::npos);
  EXPECT_NE(policy_error("inspect_tls = \"yes\"\n").find("inspect_tls"), std::string::npos);
  // Negative control: a good file has no error.
  EXPECT_EQ(policy_error("allow = [\"a.com\"]\n"), "");
}

TEST(NetPolicy, OnlyPublicAddressesAreReachable) {
  auto pub = [](const char* a) {
    in_addr x;
    EXPECT_EQ(inet_pton(AF_INET, a, &x), 1);
    return is_public(x);
  };
  for (const char* a : {"0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "127.9.9.9", "169.254.169.254", "172.16.0.1",
                        "172.31.255.255", "192.168.1.1", "192.0.0.1", "198.18.0.1", "224.0.0.1", "255.255.255.255"})
    EXPECT_FALSE(pub(a)) << a;
  for (const char* a : {"1.1.1.1", "8.8.8.8", "172.32.0.1", "172.15.255.255", "100.128.0.1", "203.0.113.10", "93.184.216.34"})
    EXPECT_TRUE(pub(a)) << a;
}

// A ClientHello with the given server_name (and other extensions around it).
std::string client_hello(const std::string& sni) {
  std::string ext;
  auto u16 = [](std::string& s, size_t v) {
    s += static_cast<char>(v >> 8);
    s += static_cast<char>(v & 0xff);
  };
  u16(ext, 0x000a);  // supported_groups, before the name
  u16(ext, 4);
  ext += std::string("\x00\x02\x00\x1d", 4);
  if (!sni.empty()) {
    u16(ext, 0);
    u16(ext, sni.size() + 5);
    u16(ext, sni.size() + 3);
    ext += '\0';
    u16(ext, sni.size());
    ext += sni;
  }
  std::string body = std::string("\x03\x03", 2) + std::string(32, 'r');
  body += '\0';                                     // session id
  body += std::string("\x00\x02\x13\x01", 4);       // ciphers
  body += std::string("\x01\x00", 2);               // compression
  u16(body, ext.size());
  body += ext;
  std::string hs = "\x01";
  hs += '\0';
  u16(hs, body.size());
  hs += body;
  std::string rec = std::string("\x16\x03\x01", 3);
  u16(rec, hs.size());
  return rec + hs;
}

TEST(NetSniff, TlsServerName) {
  std::string hello = client_hello("Files.PythonHosted.org");
  Sniffed s = sniff(hello);
  EXPECT_EQ(s.kind, Sniffed::Kind::Tls);
  EXPECT_EQ(s.name, "Files.PythonHosted.org");
  // Incomplete: more is needed, at every cut.
  for (size_t cut = 1; cut < hello.size(); ++cut) EXPECT_EQ(sniff(hello.substr(0, cut)).kind, Sniffed::Kind::NeedMore) << cut;
  // Without the extension: TLS, no name.
  Sniffed none = sniff(client_hello(""));
  EXPECT_EQ(none.kind, Sniffed::Kind::Tls);
  EXPECT_EQ(none.name, "");
}

TEST(NetSniff, GarbageNeverReadsOutOfBounds) {
  // Random bytes and every corruption of a valid hello: the sniffer must
  // answer (under ASan/valgrind this also proves bounds).
  std::mt19937 rng(42);
  std::string hello = client_hello("a.example");
  for (int i = 0; i < 20000; ++i) {
    std::string m = hello;
    for (int k = 0; k < 3; ++k) m[rng() % m.size()] = static_cast<char>(rng());
    m.resize(rng() % (m.size() + 1));
    Sniffed s = sniff(m);
    EXPECT_LE(s.name.size(), m.size());
  }
}

TEST(NetSniff, HttpHost) {
  Sniffed s = sniff("GET /x HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  Example.com:8080 \r\n\r\nbody");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.name, "Example.com");
  EXPECT_EQ(s.method, "GET");
  EXPECT_EQ(s.target, "/x");
  EXPECT_EQ(s.head_len, std::string("GET /x HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  Example.com:8080 \r\n\r\n").size());
  EXPECT_EQ(sniff("GET / HTTP/1.1\r\nHost: a").kind, Sniffed::Kind::NeedMore);
  EXPECT_EQ(sniff("SSH-2.0-OpenSSH_9\r\n").kind, Sniffed::Kind::Other);
  EXPECT_EQ(sniff(std::string("\x00\x01", 2)).kind, Sniffed::Kind::Other);
  EXPECT_EQ(sniff("GET / HTTP/1.1\r\n\r\n").name, "");  // no Host
  EXPECT_EQ(strip_port("[2001:db8::1]:443"), "2001:db8::1");
  EXPECT_EQ(strip_port("a.com"), "a.com");
}

TEST(NetDns, QueryAndReply) {
  // dig-style query for Example.COM A with an EDNS OPT record after it.
  std::string q = std::string("\x12\x34\x01\x20\x00\x01\x00\x00\x00\x00\x00\x01", 12);
  q += std::string("\x07" "Example" "\x03" "COM" "\x00", 13);
  q += std::string("\x00\x01\x00\x01", 4);
  q += std::string("\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00", 11);
  auto* raw = reinterpret_cast<const uint8_t*>(q.data());
  auto parsed = dns::parse_query(raw, q.size());
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->name, "Example.COM");
  EXPECT_EQ(parsed->type, dns::kTypeA);
  EXPECT_EQ(parsed->id, 0x1234);
  in_addr a;
  inet_pton(AF_INET, "203.0.113.10", &a);
  std::string r = dns::reply(raw, *parsed, dns::kNoError, {a}, 60);
  ASSERT_EQ(r.size(), 12u + 17u + 16u);
  EXPECT_EQ(static_cast<uint8_t>(r[2]) & 0x80, 0x80);          // a response
  EXPECT_EQ(static_cast<uint8_t>(r[2]) & 0x01, 0x01);          // RD copied
  EXPECT_EQ(static_cast<uint8_t>(r[7]), 1);                    // one answer
  EXPECT_EQ(static_cast<uint8_t>(r[11]), 0);                   // no OPT echoed
  EXPECT_EQ(r.substr(r.size() - 4), std::string(reinterpret_cast<char*>(&a.s_addr), 4));
  std::string nx = dns::reply(raw, *parsed, dns::kNxDomain, {}, 0);
  EXPECT_EQ(static_cast<uint8_t>(nx[3]) & 0x0f, dns::kNxDomain);
  // Replies, compressed names and truncated messages are not queries.
  std::string reply_msg = q;
  reply_msg[2] = static_cast<char>(reply_msg[2] | 0x80);
  EXPECT_FALSE(dns::parse_query(reinterpret_cast<const uint8_t*>(reply_msg.data()), reply_msg.size()));
  std::string comp = q.substr(0, 12) + std::string("\xc0\x0c\x00\x01\x00\x01", 6);
  EXPECT_FALSE(dns::parse_query(reinterpret_cast<const uint8_t*>(comp.data()), comp.size()));
  for (size_t cut = 0; cut < 12 + 13 + 4; ++cut) EXPECT_FALSE(dns::parse_query(raw, cut)) << cut;
}

}  // namespace
}  // namespace ultari::net

namespace ultari::net {
namespace {

TEST(NetPolicy, DlpSection) {
  std::string path = write_temp("allow = [\"a.com\"]\n[dlp]\naction = \"log\"\nliterals = [\"my-own-secret-value\"]\n");
  NetworkSpec p;
  load_policy_file(p, path);
  std::remove(path.c_str());
  EXPECT_TRUE(p.dlp.enabled);
  EXPECT_FALSE(p.dlp.block);
  EXPECT_EQ(p.dlp.literals, (std::vector<std::string>{"my-own-secret-value"}));
  NetworkSpec q;
  std::string bare = write_temp("allow = [\"a.com\"]\n[dlp]\n");
  load_policy_file(q, bare);
  std::remove(bare.c_str());
  EXPECT_TRUE(q.dlp.enabled);
  EXPECT_TRUE(q.dlp.block);  // blocking unless told otherwise
  EXPECT_FALSE(NetworkSpec().dlp.enabled);
}

// Fake secrets of the shapes the built-in patterns know.
const std::vector<std::pair<std::string, std::string>> kSamples = {
    {"private-key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow..."},
    {"private-key", "-----BEGIN OPENSSH PRIVATE KEY-----"},
    {"aws-access-key-id", "key=AKIAIOSFODNN7EXAMPLE&x"},
    {"github-token", "token ghp_0123456789abcdefghijABCDEFGHIJ012345"},
    {"slack-token", "xoxb-123456789012-abcdefABCDEF"},
    {"anthropic-api-key", "x-api-key: sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345"},
    {"google-api-key", "AIzaSyA1234567890abcdefghijklmnopqrstuv"},
    {"stripe-secret-key", "sk_live_0123456789abcdefghijklmn"},
};

TEST(NetDlp, FindsEachBuiltinPatternAndNothingInPlainText) {
  Dlp dlp({});
  for (const auto& [name, sample] : kSamples) {
    auto s = dlp.open();
    auto found = s->scan(sample.data(), sample.size());
    EXPECT_EQ(found, std::vector<std::string>{name}) << sample;
  }
  // Negative control: ordinary text and near misses.
  for (const std::string text : {"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n", "-----BEGIN PUBLIC KEY-----",
                                 "AKIA_not_a_key", "sk-ant-short", "just some words about private keys"}) {
    auto s = dlp.open();
    EXPECT_TRUE(s->scan(text.data(), text.size()).empty()) << text;
  }
}

TEST(NetDlp, ASecretSplitAcrossWritesIsFound) {
  Dlp dlp({});
  std::string sample = "body=-----BEGIN EC PRIVATE KEY-----\n";
  for (size_t cut = 1; cut < sample.size(); ++cut) {
    auto s = dlp.open();
    auto a = s->scan(sample.data(), cut);
    auto b = s->scan(sample.data() + cut, sample.size() - cut);
    a.insert(a.end(), b.begin(), b.end());
    EXPECT_EQ(a, std::vector<std::string>{"private-key"}) << cut;
  }
}

TEST(NetDlp, LiteralsMatchExactlyAndAreNotRegexes) {
  Dlp dlp({"my.secret*", "second-secret"});
  auto find = [&](const std::string& text) {
    auto s = dlp.open();
    return s->scan(text.data(), text.size());
  };
  EXPECT_EQ(find("x=my.secret*&y"), std::vector<std::string>{"literal-1"});
  EXPECT_TRUE(find("x=myXsecret&y").empty());  // '.' and '*' are not regex operators
  EXPECT_EQ(find("second-secret"), std::vector<std::string>{"literal-2"});
  // Each pattern is reported once per stream.
  auto s = dlp.open();
  EXPECT_EQ(s->scan("second-secret", 13).size(), 1u);
  EXPECT_TRUE(s->scan("second-secret", 13).empty());
}

}  // namespace
}  // namespace ultari::net

namespace ultari::net {
namespace {

// Feeds `stream` to a fresh follower in pieces of `step` bytes; "" when
// everything passed, else the reason it stopped.
std::string follow(const std::string& stream, size_t step = 0) {
  HttpRequests r("a.test");
  std::string why;
  if (step == 0) step = stream.size();
  for (size_t off = 0; off < stream.size(); off += step)
    if (!r.feed(stream.data() + off, std::min(step, stream.size() - off), why)) return why;
  return "";
}

TEST(NetHttpRequests, EveryRequestOfAConnectionIsChecked) {
  std::string ok1 = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
  std::string ok2 = "POST /x HTTP/1.1\r\nHost: A.Test:80\r\nContent-Length: 5\r\n\r\nhello";
  std::string chunked = "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "5;ext=1\r\nHost:\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n";
  std::string other = "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n";
  for (size_t step : {0, 1, 3, 7}) {
    EXPECT_EQ(follow(ok1 + ok2 + chunked + ok1, step), "") << step;
    // A later request for another host: refused, even after bodies that
    // contain what looks like headers.
    EXPECT_EQ(follow(ok1 + ok2 + chunked + other, step), "sni-mismatch") << step;
    EXPECT_EQ(follow(ok2 + other, step), "sni-mismatch") << step;
  }
}

TEST(NetHttpRequests, AmbiguousFramingIsRefused) {
  EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"), "http-smuggling");
  EXPECT_EQ(follow("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "http-smuggling");
  EXPECT_EQ(follow("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            "http-smuggling");
  EXPECT_EQ(follow("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n"), "http-smuggling");
  EXPECT_EQ(follow("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n"), "http-smuggling");
  EXPECT_EQ(follow("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), "http-smuggling");
  EXPECT_EQ(follow("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "unsupported-protocol");
  EXPECT_EQ(follow("\x16\x03\x01garbage\r\n\r\n"), "http-malformed");
  // Absolute form: the URL's host counts, userinfo tricks included.
  EXPECT_EQ(follow("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"), "");
  EXPECT_EQ(follow("GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"), "sni-mismatch");
  EXPECT_EQ(follow("GET http://a.test@b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"), "sni-mismatch");
  EXPECT_EQ(follow("GET https://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"), "sni-mismatch");
}

// apt sends every request through the proxy as http://user:pw@host/...: a
// kept-alive connection's later requests pass in origin form (RFC 9112: what
// an origin server is sent), so the userinfo never reaches the server, and
// the host after it is the one checked.
TEST(NetHttpRequests, LaterAbsoluteTargetsGoOnInOriginFormWithoutTheirUserinfo) {
  auto pass = [](const std::string& name, const std::string& stream, std::string& out) {
    HttpRequests r(name);
    std::string why;
    out.clear();
    for (char c : stream)  // byte by byte: the head is rewritten whole
      if (!r.feed(&c, 1, why, &out)) return why;
    return std::string();
  };
  std::string out;
  const std::string head = "GET http://al%40ice:pw@a.test/x?y=@z HTTP/1.1\r\nHost: a.test\r\n\r\n";
  EXPECT_EQ(pass("a.test", head + head, out), "");
  EXPECT_EQ(out, std::string("GET /x?y=@z HTTP/1.1\r\nHost: a.test\r\n\r\n") +
                     "GET /x?y=@z HTTP/1.1\r\nHost: a.test\r\n\r\n");
  EXPECT_EQ(pass("a.test", "GET HTTP://u@A.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n", out), "");
  EXPECT_EQ(out, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
  // A '?' ends the authority: the server gets it as a query, not a host.
  EXPECT_EQ(pass("a.test", "GET http://a.test?@b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", out), "");
  EXPECT_EQ(out, "GET /?@b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
  // The host after the '@' is the one checked; two '@' are refused.
  EXPECT_EQ(pass("a.test", "GET http://a.test@b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", out), "sni-mismatch");
  EXPECT_EQ(pass("a.test", "GET http://u@a.test@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", out), "sni-mismatch");
  EXPECT_EQ(out, "");
  // Without a way to drop it (no output buffer), a userinfo is refused.
  EXPECT_EQ(follow("GET http://u:pw@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"), "sni-mismatch");
  // A request without Host (HTTP/1.0) gets the target's host (the one
  // checked), its userinfo dropped; origin form keeps having none.
  EXPECT_EQ(pass("a.test", "GET http://u:pw@a.test:8080/x HTTP/1.0\r\nAccept: */*\r\n\r\n", out), "");
  EXPECT_EQ(out, "GET /x HTTP/1.0\r\nHost: a.test:8080\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(pass("a.test", "GET /x HTTP/1.0\r\n\r\n", out), "");
  EXPECT_EQ(out, "GET /x HTTP/1.0\r\n\r\n");
  // Origin form and an '@' in the path stay as they are.
  EXPECT_EQ(pass("a.test", "GET /p@q HTTP/1.1\r\nHost: a.test\r\n\r\n", out), "");
  EXPECT_EQ(out, "GET /p@q HTTP/1.1\r\nHost: a.test\r\n\r\n");
  // No name (through the proxy to an address): any host, framing still
  // followed, the userinfo still dropped.
  EXPECT_EQ(pass("", "GET http://u:pw@203.0.113.9/ HTTP/1.1\r\nHost: x.test\r\n\r\n", out), "");
  EXPECT_EQ(out, "GET / HTTP/1.1\r\nHost: x.test\r\n\r\n");
  EXPECT_EQ(pass("", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", out), "http-smuggling");
  std::string authority = "u:p@h.test:8080";
  EXPECT_TRUE(strip_userinfo(authority));
  EXPECT_EQ(authority, "h.test:8080");
  authority = "a@b@c";
  EXPECT_FALSE(strip_userinfo(authority));
  EXPECT_EQ(authority, "a@b@c");
}

TEST(NetHttpRequests, WebSocketFramesPassAfterAnUpgradeButHttpIsStillChecked) {
  std::string upgrade = "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
  std::string frames = std::string("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11) + "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n";
  EXPECT_EQ(follow(upgrade + frames), "");
  // The server ignored the upgrade and the client goes on with HTTP.
  EXPECT_EQ(follow(upgrade + "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n"), "sni-mismatch");
}

}  // namespace
}  // namespace ultari::net

namespace ultari::net {
namespace {

TEST(NetHttpRequests, BodiesCanPassUnseen) {
  HttpRequests r("a.test");
  std::string why;
  std::string head = "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n";
  ASSERT_TRUE(r.feed(head.data(), head.size(), why));
  EXPECT_EQ(r.unseen(), 1000u);
  r.skip(600);
  EXPECT_EQ(r.unseen(), 400u);
  r.skip(400);
  EXPECT_EQ(r.unseen(), 0u);
  // The next head is seen and checked again.
  std::string other = "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n";
  EXPECT_FALSE(r.feed(other.data(), other.size(), why));
  EXPECT_EQ(why, "sni-mismatch");
}

}  // namespace
}  // namespace ultari::net

// Findings of the network security review (tests/integration/
// attack_network_test.cpp): head tricks, upgrades, Transfer-Encoding, the
// audit log's growth.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "net/audit.h"

namespace ultari::net {
namespace {

// Feeds `stream` one byte at a time; the offset of the byte that was
// refused (and `why`), or npos.
size_t refused_at(const std::string& stream, std::string& why) {
  HttpRequests r("a.test");
  for (size_t off = 0; off < stream.size(); ++off)
    if (!r.feed(stream.data() + off, 1, why)) return off;
  return std::string::npos;
}

TEST(NetHttpRequests, BareLfOrCrInAHeadIsRefusedAsSoonAsItArrives) {
  for (size_t step : {0, 1, 3}) {
    EXPECT_EQ(follow("GET / HTTP/1.1\nHost: b.test\n\n", step), "http-smuggling") << step;
    EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost: a.test\nHost: b.test\r\n\r\n", step), "http-smuggling") << step;
    EXPECT_EQ(follow("GET / HTTP/1.1\r\nX-A: b\rHost: b.test\r\n\r\n", step), "http-smuggling") << step;
    EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost: a.test\r\n\n", step), "http-smuggling") << step;
    // The second request of a kept-alive connection too.
    EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET /b HTTP/1.1\nHost: b.test\r\n\r\n", step), "http-smuggling")
        << step;
    // A CR at the end of one write and its LF in the next is a CRLF; bare
    // LFs in a body are data.
    EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost: a.test\r\n\r\nPOST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\n\n\r\n\r", step),
              "")
        << step;
  }
  // Incrementally: the relay passes partial heads on, so the bare LF is
  // refused when it arrives, not when the head ends.
  std::string why;
  std::string lf = "GET / HTTP/1.1\r\nHost: a.test\r\nX: a\nHost: other.test\r\n\r\n";
  EXPECT_EQ(refused_at(lf, why), lf.find("a\n") + 1);
  EXPECT_EQ(why, "http-smuggling");
  std::string cr = "GET / HTTP/1.1\r\nX: a\rHost: other.test\r\n\r\n";
  EXPECT_EQ(refused_at(cr, why), cr.find("a\r") + 2);  // the CR is bare once the next byte is not a LF
  HttpRequests r("a.test");
  std::string first = "GET / HTTP/1.1\nHost: other.test";  // no end of head yet
  EXPECT_FALSE(r.feed(first.data(), first.size(), why));
  EXPECT_EQ(why, "http-smuggling");
  // With `out`, nothing of it is passed on.
  HttpRequests o("a.test");
  std::string out;
  EXPECT_FALSE(o.feed(first.data(), first.size(), why, &out));
  EXPECT_EQ(out, "");
}

TEST(NetSniff, BareLfOrCrIsNeverReadAsAValidHead) {
  // A server that ends lines at LF sees Host: other.test first.
  Sniffed s = sniff("GET /lf HTTP/1.1\nHost: other.test\r\nHost: a.test\r\n\r\n");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "http-smuggling");
  EXPECT_EQ(s.name, "other.test");
  EXPECT_EQ(s.method, "");  // the explicit proxy answers 400
  // No CRLFCRLF ever comes: Http (refused) at once, never NeedMore.
  s = sniff("GET / HTTP/1.1\nHost: other.test\n\n");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "http-smuggling");
  EXPECT_EQ(s.name, "other.test");
  s = sniff("GET / HTTP/1.1\r\nX-A: b\rHost: other.test:80\r\r");
  EXPECT_EQ(s.malformed, "http-smuggling");
  EXPECT_EQ(s.name, "other.test");
  EXPECT_EQ(sniff("GET / HTTP/1.1\r").kind, Sniffed::Kind::NeedMore);  // the LF may follow
  // Bare LFs in the body are not the head's.
  s = sniff("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\na\nb");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "");
  EXPECT_EQ(s.name, "a.test");
}

TEST(NetHttpRequests, ARequestStartsWithAMethodAndIsHttp1) {
  for (std::string lead : {" ", "\t", "\r\n", "\n"})
    EXPECT_EQ(follow(lead + "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), "http-malformed") << lead;
  // HTTP/0.9: refused when the request line ends, before the head does.
  EXPECT_EQ(follow("GET /http09\r\nHost: b.test\r\n\r\n"), "http-malformed");
  std::string why;
  EXPECT_EQ(refused_at("GET /http09\r\nHost: b.test\r\n\r\n", why), std::string("GET /http09\r\n").size() - 1);
  for (const char* line : {"GET / HTTP/2.0", "GET  / HTTP/1.1", "get / HTTP/1.1", "GET / http/1.1", "GET / HTTP/1.1 ",
                           "GET /a b HTTP/1.1", "GET\t/ HTTP/1.1", "GET / HTTP/1.10", "G@T / HTTP/1.1"})
    EXPECT_EQ(follow(std::string(line) + "\r\nHost: a.test\r\n\r\n"), "http-malformed") << line;
  // obs-fold: joined by some servers, a header of its own for others.
  EXPECT_EQ(follow("GET / HTTP/1.1\r\nX-A: b\r\n Host: b.test\r\n\r\n"), "http-malformed");
  // "Host :" is Host for some servers only.
  EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost: a.test\r\nHost : b.test\r\n\r\n"), "http-smuggling");
  EXPECT_EQ(follow("GET / HTTP/1.1\r\nHost\t: a.test\r\n\r\n"), "http-smuggling");
  // Longer than a head may be.
  EXPECT_EQ(follow("GET / HTTP/1.1\r\nX-Pad: " + std::string(kMaxHead, 'p') + "\r\nHost: a.test\r\n\r\n", 1000),
            "http-malformed");
  // What clients send still passes.
  for (const char* ok : {"GET / HTTP/1.1", "OPTIONS * HTTP/1.1", "GET /\xc3\xbc?q=1 HTTP/1.0", "M-SEARCH /x HTTP/1.1",
                         "GET http://a.test:80/x HTTP/1.1"})
    for (size_t step : {0, 1})
      EXPECT_EQ(follow(std::string(ok) + "\r\nHost: a.test\r\nUser-Agent: t\r\n\r\n", step), "") << ok << " " << step;
  EXPECT_EQ(follow("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1), "unsupported-protocol");
}

TEST(NetSniff, WhatStartsLikeHttpIsHttp) {
  // Leading whitespace, HTTP/0.9, a head longer than kMaxHead: HTTP the
  // transparent path must check (and HttpRequests refuses), not an opaque
  // protocol relayed by the name the sandbox resolved.
  for (std::string lead : {" ", "\t", "\r\n", "\r\n\r\n"}) {
    Sniffed s = sniff(lead + "GET /space HTTP/1.1\r\nHost: other.test\r\n\r\n");
    EXPECT_EQ(s.kind, Sniffed::Kind::Http) << lead;
    EXPECT_EQ(s.malformed, "http-malformed") << lead;
    EXPECT_EQ(s.name, "other.test") << lead;
  }
  Sniffed s = sniff("GET /http09\r\nHost: other.test\r\n\r\n");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "http-malformed");
  EXPECT_EQ(s.name, "other.test");
  EXPECT_EQ(sniff("GET /http09\r\n").malformed, "http-malformed");  // no need to wait for the rest
  s = sniff("GET / HTTP/1.1\r\nHost : other.test\r\n\r\n");
  EXPECT_EQ(s.malformed, "http-smuggling");
  EXPECT_EQ(s.name, "other.test");
  std::string big = "GET /big HTTP/1.1\r\nX-Pad: " + std::string(kMaxHead + 100, 'p');
  s = sniff(big);
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "http-malformed");
  EXPECT_EQ(sniff(big.substr(0, kMaxHead - 10)).kind, Sniffed::Kind::NeedMore);
  // Methods with '-' or '_' (WebDAV, SSDP), and method tokens longer than 16.
  s = sniff("VERSION-CONTROL /x HTTP/1.1\r\nHost: a.test\r\n\r\n");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "");
  EXPECT_EQ(s.method, "VERSION-CONTROL");
  EXPECT_EQ(s.name, "a.test");
  EXPECT_EQ(sniff("UPDATEREDIRECTREF /x HTTP/1.1\r\nHost: o.test\r\n\r\n").name, "o.test");
  // Still not HTTP, or not yet known.
  EXPECT_EQ(sniff("SSH-2.0-OpenSSH_9\r\n").kind, Sniffed::Kind::Other);
  EXPECT_EQ(sniff("hello world\r\n").kind, Sniffed::Kind::Other);
  EXPECT_EQ(sniff(" \x01").kind, Sniffed::Kind::Other);
  EXPECT_EQ(sniff("\r\n").kind, Sniffed::Kind::NeedMore);
  EXPECT_EQ(sniff("GE").kind, Sniffed::Kind::NeedMore);
  EXPECT_EQ(sniff("-GET / HTTP/1.1\r\n\r\n").kind, Sniffed::Kind::Other);
  // Valid requests parse as before.
  s = sniff("GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n");
  EXPECT_EQ(s.kind, Sniffed::Kind::Http);
  EXPECT_EQ(s.malformed, "");
  EXPECT_EQ(s.target, "/x");
}

// Lines a lenient server reads differently (the attack review of
// --net-upstream): a header name that is not a token, control characters
// in a value, a request line among a chunked body's trailers.
TEST(NetHttpRequests, HeaderAndTrailerLinesMustBeWellFormed) {
  std::string head = "POST / HTTP/1.1\r\nHost: a.test\r\n";
  EXPECT_EQ(follow(head + "Content-Length: 2\r\n\r\nok"), "");  // negative control
  for (const char* bad : {"Transfer-Encoding\v: chunked\r\n", "Transfer Encoding: chunked\r\n", "X(y): 1\r\n",
                          "X: a\x01b\r\n", "X: a\x7f\r\n", "NoColon\r\n"})
    EXPECT_NE(follow(head + bad + "Content-Length: 2\r\n\r\nok"), "") << bad;
  EXPECT_EQ(follow(head + "X: tab\tinside\r\nContent-Length: 2\r\n\r\nok"), "");
  std::string chunked = head + "Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n";
  EXPECT_EQ(follow(chunked + "X-Trailer: 1\r\n\r\n"), "");  // negative control: a real trailer
  EXPECT_NE(follow(chunked + "GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"), "");
  EXPECT_EQ(follow(chunked + "X\v: 1\r\n\r\n"), "http-smuggling");
}

TEST(NetHttpRequests, OnlyAWebSocketFrameStartsATunnelAfterAnUpgrade) {
  std::string upgrade = "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
  // A first frame is never a continuation (opcode 0): 0x00, 0x40, 0x80 and
  // 0xc0 are refused ('@' once ended every check for a lenient proxy).
  const std::set<int> frames = {0x01, 0x02, 0x81, 0x82, 0x88, 0x89, 0x8a, 0xc1, 0xc2};
  for (int b = 0; b < 256; ++b) {
    // An upper-case letter starts a request (checked: b.test is refused), a
    // frame a tunnel (what follows is not looked at), the rest is refused.
    std::string got = follow(upgrade + static_cast<char>(b) + "ET / HTTP/1.1\r\nHost: b.test\r\n\r\n");
    const char* want = b >= 'A' && b <= 'Z' ? "sni-mismatch" : frames.count(b) ? "" : "http-malformed";
    EXPECT_EQ(got, want) << "first byte 0x" << std::hex << b;
  }
  // The review's attack: the server ignored the upgrade, the next request
  // starts with a space.
  EXPECT_EQ(follow(upgrade + " GET /second HTTP/1.1\r\nHost: b.test\r\n\r\n"), "http-malformed");
  // After CONNECT (to a proxy), TLS may follow.
  EXPECT_EQ(follow("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n"), "");
  EXPECT_EQ(follow(upgrade + "\x16\x03\x01"), "http-malformed");
}

TEST(NetHttpRequests, TransferEncodingMustBeExactlyChunked) {
  std::string body = "\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  for (const char* te : {"xchunked", "chunkedx", "chunked, gzip", "gzip, chunked", "gzip,chunked", "chunked;q=1",
                         "\"chunked\"", "chunked chunked", "identity"})
    EXPECT_EQ(follow(std::string("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: ") + te + body), "http-smuggling") << te;
  for (const char* te : {"chunked", "Chunked", "CHUNKED", "chunked  ", "\tchunked"})
    EXPECT_EQ(follow(std::string("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: ") + te + body), "") << te;
}

struct AuditFile {
  std::string dir, path;
  AuditFile() {
    char t[] = "/tmp/ultari-audit-XXXXXX";
    dir = mkdtemp(t);
    path = dir + "/audit.jsonl";
  }
  ~AuditFile() { std::system(("rm -rf '" + dir + "'").c_str()); }
  std::vector<nlohmann::json> lines() const {
    std::vector<nlohmann::json> v;
    std::ifstream in(path);
    for (std::string l; std::getline(in, l);) v.push_back(nlohmann::json::parse(l));
    return v;
  }
  size_t size() const {
    struct stat st{};
    return stat(path.c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
  }
};

Record denied(int i) {
  Record r;
  r.kind = "dns";
  r.name = "x" + std::to_string(i) + ".flood";
  r.reason = "no-rule";
  return r;
}

TEST(NetAudit, DeniedRecordsAreRateLimitedButCounted) {
  AuditFile f;
  {
    AuditLog log(f.path, "sbx");
    for (int i = 0; i < 1000; ++i) log.write(denied(i));
    size_t written = f.lines().size();
    EXPECT_GE(written, 200u);
    EXPECT_LE(written, 215u);  // the burst, and what 50/s refilled meanwhile
    // Allowed records are never rate-limited.
    Record ok;
    ok.kind = "tls";
    ok.name = "a.test";
    ok.allow = true;
    ok.reason = "a.test";
    for (int i = 0; i < 300; ++i) log.write(ok);
    auto v = f.lines();
    ASSERT_EQ(v.size(), written + 1 + 300);  // + one rate-limited record before the first
    EXPECT_EQ(v[written]["kind"], "audit");
    EXPECT_EQ(v[written]["reason"], "rate-limited");
    EXPECT_EQ(v[written]["suppressed"], 1000 - written);
    for (const char* k : {"ts", "sandbox", "name", "addr", "port", "decision", "bytes_out", "bytes_in", "duration_ms"})
      EXPECT_TRUE(v[written].contains(k)) << k;
    EXPECT_EQ(v[written + 1]["decision"], "allow");
    // Tokens come back with time.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    log.write(denied(5000));
    EXPECT_EQ(f.lines().back()["name"], "x5000.flood");
    EXPECT_EQ(log.denied(), 1001u);
    EXPECT_EQ(log.allowed(), 300u);
    EXPECT_EQ(log.denied_names().size(), 256u);  // bounded as before
  }
}

TEST(NetAudit, SuppressedRecordsAreReportedWhenTheLogCloses) {
  AuditFile f;
  {
    AuditLog log(f.path, "sbx", AuditLimits{0.001, 2, 1 << 20});
    for (int i = 0; i < 10; ++i) log.write(denied(i));
    EXPECT_EQ(f.lines().size(), 2u);
  }
  auto v = f.lines();
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[2]["reason"], "rate-limited");
  EXPECT_EQ(v[2]["suppressed"], 8);
}

TEST(NetAudit, TheLogIsCappedWithOneFinalRecord) {
  AuditFile f;
  AuditLog log(f.path, "sbx", AuditLimits{50, 200, 64 << 10});
  Record ok;
  ok.kind = "http";
  ok.name = "a.test";
  ok.allow = true;
  ok.reason = "a.test";
  for (int i = 0; i < 2000; ++i) log.write(ok);
  for (int i = 0; i < 10; ++i) log.write(denied(i));
  EXPECT_LE(f.size(), 64u << 10);
  EXPECT_GT(f.size(), 60u << 10);
  auto v = f.lines();
  EXPECT_EQ(v.back()["kind"], "audit");
  EXPECT_EQ(v.back()["reason"], "truncated");
  for (size_t i = 0; i + 1 < v.size(); ++i) EXPECT_EQ(v[i]["decision"], "allow") << i;
  EXPECT_EQ(log.allowed(), 2000u);
  EXPECT_EQ(log.denied(), 10u);
}

}  // namespace
}  // namespace ultari::net

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "net/gateway.h"

namespace ultari::net {
namespace {

// What a process that may have run confine_gateway() can signal: one bit
// per attempt whose result was not the confined one (0: all as confined).
int signal_probe(pid_t victim, bool confined) {
  pid_t pid = fork();
  if (pid == 0) {
    if (confined) confine_gateway();
    int wrong = 0;
    auto refused = [](long rc) { return rc == -1 && errno == EPERM; };
    if (refused(kill(victim, 0)) != confined) wrong |= 1;                                  // another process
    if (refused(syscall(SYS_tgkill, victim, victim, 0)) != confined) wrong |= 2;          // its thread
    if (refused(syscall(SYS_pidfd_open, victim, 0)) != confined) wrong |= 4;              // a handle on it
    if (refused(kill(-1, 0)) != confined) wrong |= 8;                                      // everyone
    if (kill(getpid(), 0) != 0) wrong |= 16;                                               // itself: allowed
    if (syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), 0) != 0) wrong |= 32;          // raise's way
    int p[2];
    if (pipe(p) != 0) _exit(255);
    if (refused(fcntl(p[0], F_SETOWN, victim)) != confined) wrong |= 64;                  // SIGIO to it
    rlimit lim{};
    if (refused(prlimit(victim, RLIMIT_CPU, nullptr, &lim)) != confined) wrong |= 128;    // SIGXCPU to it
    if (refused(ioctl(p[0], TIOCSTI, "x")) != confined) wrong |= 256;                      // a terminal's input
    if (refused(setpriority(PRIO_PROCESS, static_cast<id_t>(victim), 0)) != confined) wrong |= 512;
    if (prlimit(0, RLIMIT_CPU, nullptr, &lim) != 0) wrong |= 1024;                         // its own: allowed
    _exit(wrong);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

// A gateway taken over must not signal other processes, nor have the
// kernel do it (SIGIO ownership, CPU limits), nor use a terminal: each
// rootful gateway has a uid of its own, but a rootless one shares the
// caller's. The victim is another process of this (root) test, which an
// unconfined process may reach: the negative control.
TEST(NetGateway, AConfinedGatewaySignalsNoOtherProcess) {
  pid_t victim = fork();
  if (victim == 0) {
    pause();
    _exit(0);
  }
  ASSERT_GT(victim, 0);
  EXPECT_EQ(signal_probe(victim, /*confined=*/true), 0);
  EXPECT_EQ(signal_probe(victim, /*confined=*/false), 0);  // control: the same calls pass unconfined
  kill(victim, SIGKILL);
  waitpid(victim, nullptr, 0);
}

}  // namespace
}  // namespace ultari::net
