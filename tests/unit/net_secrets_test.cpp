// --secret / [[secret]] parsing and checks, placeholders, the sandbox's trust
// bundle, and the request-head rewriting that swaps placeholders.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "net/http_requests.h"
#include "net/inspection.h"
#include "net/policy.h"
#include "util/error.h"

namespace ultari::net {
namespace {

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/ultari-secret-test-XXXXXX";
    int fd = mkstemp(tmpl);
    path = tmpl;
    if (write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) std::abort();
    close(fd);
  }
  ~TempFile() { unlink(path.c_str()); }
};

NetworkSpec allowing(const std::string& names) {
  NetworkSpec p;
  apply_net_option(p, "allow=" + names);
  p.inspect_tls = true;
  return p;
}

TEST(NetSecrets, OptionShorthandParses) {
  NetworkSpec p = allowing("api.example.com");
  apply_secret_option(p, "API_KEY=env:MY_KEY@API.example.com.,*.example.org");
  ASSERT_EQ(p.secrets.size(), 1u);
  EXPECT_EQ(p.secrets[0].name, "API_KEY");
  EXPECT_EQ(p.secrets[0].from, "env:MY_KEY");
  EXPECT_EQ(p.secrets[0].hosts, (std::vector<std::string>{"api.example.com", "*.example.org"}));
  // A file path may hold '@': the last one separates the hosts.
  apply_secret_option(p, "TOKEN=file:/run/a@b/token@api.example.com");
  EXPECT_EQ(p.secrets[1].from, "file:/run/a@b/token");
  EXPECT_NO_THROW(validate(p));
}

TEST(NetSecrets, BadOptionsNameTheProblem) {
  struct Case {
    std::string value, mention;
  };
  for (const auto& c : std::vector<Case>{{"API_KEY=x", "API_KEY=x"},
                                         {"API_KEY=env:X", "API_KEY=env:X"},
                                         {"1KEY=env:X@a.com", "1KEY"},
                                         {"K-Y=env:X@a.com", "K-Y"},
                                         {"KEY=plain@a.com", "env:VARIABLE or file:PATH"},
                                         {"KEY=env:@a.com", "env:VARIABLE or file:PATH"},
                                         {"KEY=env:X@", "no host"},
                                         {"KEY=env:X@*", "*"}}) {
    NetworkSpec p = allowing("a.com");
    try {
      apply_secret_option(p, c.value);
      ADD_FAILURE() << c.value << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.mention), std::string::npos) << c.value << ": " << e.what();
    }
  }
}

TEST(NetSecrets, ValidateWantsInspectionAnAllowedHostAndUniqueNames) {
  NetworkSpec p = allowing("a.com");
  apply_secret_option(p, "K=env:X@a.com");
  EXPECT_NO_THROW(validate(p));
  p.inspect_tls = false;
  EXPECT_THROW(validate(p), Error);
  p.inspect_tls = true;
  apply_secret_option(p, "K=env:Y@a.com");
  EXPECT_THROW(validate(p), Error);  // twice
  NetworkSpec q = allowing("a.com");
  apply_secret_option(q, "K=env:X@b.com");
  EXPECT_THROW(validate(q), Error);  // b.com is not allowed
  NetworkSpec r = allowing("a.com");
  r.deny = {"a.com"};
  apply_secret_option(r, "K=env:X@a.com");
  EXPECT_THROW(validate(r), Error);  // denied wins
  NetworkSpec none;
  none.inspect_tls = true;
  EXPECT_THROW(validate(none), Error);  // no network
  NetworkSpec ca = allowing("a.com");
  ca.inspect_tls = false;
  ca.ca_file = "/etc/ssl/certs/ca-certificates.crt";
  EXPECT_THROW(validate(ca), Error);  // --net-ca without inspection
}

TEST(NetSecrets, PolicyFileSecrets) {
  TempFile f(
      "allow = [\"api.anthropic.com\"]\ninspect_tls = true\n[[secret]]\nname = \"ANTHROPIC_API_KEY\"\n"
      "from = \"env:ANTHROPIC_API_KEY\"\nhosts = [\"api.anthropic.com\"]\n");
  NetworkSpec p;
  load_policy_file(p, f.path);
  EXPECT_TRUE(p.inspect_tls);
  ASSERT_EQ(p.secrets.size(), 1u);
  EXPECT_EQ(p.secrets[0].name, "ANTHROPIC_API_KEY");
  EXPECT_NO_THROW(validate(p));
  // A value in the file itself is refused (secrets never sit in policies).
  TempFile bad("allow = [\"a.com\"]\n[[secret]]\nname = \"K\"\nfrom = \"env:K\"\nhosts = [\"a.com\"]\nvalue = \"x\"\n");
  NetworkSpec q;
  try {
    load_policy_file(q, bad.path);
    ADD_FAILURE() << "value accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("secret.value"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(":6"), std::string::npos) << e.what();  // the line
  }
}

TEST(NetSecrets, PlaceholdersAreFreshAndKept) {
  NetworkSpec p = allowing("a.com");
  apply_secret_option(p, "A=env:X@a.com");
  apply_secret_option(p, "B=env:X@a.com");
  fill_placeholders(p);
  EXPECT_EQ(p.secrets[0].placeholder.rfind("ultari-secret-", 0), 0u);
  EXPECT_EQ(p.secrets[0].placeholder.size(), 14u + 32u);
  EXPECT_NE(p.secrets[0].placeholder, p.secrets[1].placeholder);
  std::string first = p.secrets[0].placeholder;
  fill_placeholders(p);
  EXPECT_EQ(p.secrets[0].placeholder, first);
}

TEST(NetSecrets, ValuesComeFromEnvironmentOrFileAndMustFitAHeader) {
  NetworkSpec p = allowing("a.com");  // inspect_tls: prepare_inspection would load the module
  p.inspect_tls = false;
  setenv("ULTARI_UNIT_SECRET", "v4lue", 1);
  TempFile file("from-file\n");
  apply_secret_option(p, "A=env:ULTARI_UNIT_SECRET@a.com");
  apply_secret_option(p, "B=file:" + file.path + "@a.com");
  fill_placeholders(p);
  Inspection in = prepare_inspection(p, "test");
  ASSERT_EQ(in.secrets.size(), 2u);
  EXPECT_EQ(in.secrets[0].value, "");  // sealed until the sandbox's init exists
  in.unseal();
  EXPECT_EQ(in.secrets[0].value, "v4lue");
  EXPECT_EQ(in.secrets[1].value, "from-file");  // one trailing newline dropped
  EXPECT_EQ(in.engine, nullptr);
  for (const std::string bad : {"env:ULTARI_UNIT_UNSET", "file:/nonexistent/x"}) {
    NetworkSpec q = allowing("a.com");
    q.inspect_tls = false;
    apply_secret_option(q, "C=" + bad + "@a.com");
    fill_placeholders(q);
    EXPECT_THROW(prepare_inspection(q, "test"), Error) << bad;
  }
  TempFile two_lines("a\nb\n");
  NetworkSpec q = allowing("a.com");
  q.inspect_tls = false;
  apply_secret_option(q, "C=file:" + two_lines.path + "@a.com");
  fill_placeholders(q);
  EXPECT_THROW(prepare_inspection(q, "test"), Error);
  unsetenv("ULTARI_UNIT_SECRET");
}

TEST(NetSecrets, HeadRewritingSwapsPlaceholdersInCompleteHeadsOnly) {
  HttpRequests r("a.com");
  r.on_head = [](std::string& head, std::string&) {
    for (size_t at = head.find("PH"); at != std::string::npos; at = head.find("PH", at + 4))
      head.replace(at, 2, "REAL");
    return true;
  };
  std::string why, out;
  // A head in two pieces: nothing passes until it is complete.
  std::string part1 = "POST /x?k=PH HTTP/1.1\r\nHost: a.com\r\nAuthorization: P";
  std::string part2 = "H\r\nContent-Length: 4\r\n\r\nPHPH";
  ASSERT_TRUE(r.feed(part1.data(), part1.size(), why, &out)) << why;
  EXPECT_EQ(out, "");
  ASSERT_TRUE(r.feed(part2.data(), part2.size(), why, &out)) << why;
  EXPECT_EQ(out,
            "POST /x?k=REAL HTTP/1.1\r\nHost: a.com\r\nAuthorization: REAL\r\nContent-Length: 4\r\n\r\nPHPH");  // body untouched
  // Negative control: a head for another host is refused, never passed.
  std::string other = "GET / HTTP/1.1\r\nHost: b.com\r\nX: PH\r\n\r\n";
  std::string out2;
  EXPECT_FALSE(r.feed(other.data(), other.size(), why, &out2));
  EXPECT_EQ(out2, "");
}

TEST(NetSecrets, SwapsOnlyInTheSecretsHeaders) {
  SecretValue key{"K", "PH", "VALUE", {"a.com"}, kSecretHeaders};
  SecretValue tok{"T", "TK", "TOKEN", {"a.com"}, {"x-token"}};
  std::string head =
      "GET /x?k=PH HTTP/1.1\r\nHost: a.com\r\nAuthorization: Bearer PH\r\nX-Api-Key: PHPH\r\n"
      "Origin: PH\r\nX-Token: TK PH\r\nauthorization2: PH\r\n\r\n";
  EXPECT_EQ(swap_secrets(head, {&key, &tok}),
            "GET /x?k=PH HTTP/1.1\r\nHost: a.com\r\nAuthorization: Bearer VALUE\r\nX-Api-Key: VALUEVALUE\r\n"
            "Origin: PH\r\nX-Token: TOKEN PH\r\nauthorization2: PH\r\n\r\n");
  // A header name that holds the placeholder is not its value.
  EXPECT_EQ(swap_secrets("GET / HTTP/1.1\r\nPH: x\r\n\r\n", {&key}), "GET / HTTP/1.1\r\nPH: x\r\n\r\n");
  // Growth is bounded: a head full of placeholders for a long value stops
  // being rewritten at 256 KiB.
  SecretValue big{"B", "PH", std::string(64 * 1024, 'v'), {"a.com"}, kSecretHeaders};
  std::string many = "GET / HTTP/1.1\r\nAuthorization: ";
  for (int i = 0; i < 100; ++i) many += "PH";
  many += "\r\n\r\n";
  EXPECT_LE(swap_secrets(many, {&big}).size(), 256u * 1024 + many.size());
}

TEST(NetSecrets, TrustBundleIsTheRootsBundleAndTheCa) {
  char tmpl[] = "/tmp/ultari-root-XXXXXX";
  std::string root = mkdtemp(tmpl);
  std::string dirs[] = {root + "/etc", root + "/etc/ssl", root + "/etc/ssl/certs"};
  for (const auto& d : dirs) mkdir(d.c_str(), 0755);
  EXPECT_EQ(trust_bundle({root}, "CA\n"), "CA\n");  // no bundle: the CA alone
  // A link out of the root is resolved inside it: the host's file never
  // comes in.
  std::string link = root + "/etc/ssl/certs/ca-certificates.crt";
  ASSERT_EQ(symlink("/etc/passwd", link.c_str()), 0);
  EXPECT_EQ(trust_bundle({root}, "CA\n"), "CA\n");
  unlink(link.c_str());
  std::ofstream(link) << "ROOTS";
  EXPECT_EQ(trust_bundle({root}, "CA\n"), "ROOTS\nCA\n");
  // Image layers: the top-most layer that has a bundle gives it.
  char top_tmpl[] = "/tmp/ultari-top-XXXXXX";
  std::string top = mkdtemp(top_tmpl);
  EXPECT_EQ(trust_bundle({top, root}, "CA\n"), "ROOTS\nCA\n");
  rmdir(top.c_str());
  unlink(link.c_str());
  for (int i = 2; i >= 0; --i) rmdir(dirs[i].c_str());
  rmdir(root.c_str());
}

}  // namespace
}  // namespace ultari::net
