// Fourth independent review (apt keys by keyid, #include lists, archives,
// JSON patches): attacks at the level of the functions that take the
// hostile input (a key server's answer, what an #include URL holds, the
// user-data's patches). Each test asserts that the attack fails and carries
// a negative control that shows the probe can tell.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "images/unpack.h"
#include "provision/cloud_config.h"
#include "provision/pgp.h"
#include "util/error.h"
#include "unit_util.h"

namespace ultari {
namespace {

using provision::CloudConfig;
using provision::parse_user_data;
namespace pgp = provision::pgp;
using unit::error_of;
using unit::has;
using unit::kKeyFpr;
using unit::kOtherFpr;




// ---------------------------------------------------------------- key server

// A hostile key server answers the ID's key followed by a key of its own
// sent as a secret-key block (tag 5; the packets are the other key's, their
// tag changed): gpg's import starts a new keyblock there, and Sequoia's sqv
// (apt's verifier since apt 2.9) reads such a block in a keyring as a
// certificate of its own, so kept with the ID's key it would let apt trust
// the server's key. Only the ID's key is kept, whichever packet format
// (old, new) the secret key's header uses.
TEST(Review4, AKeyServerCannotSlipASecretKeyBlockIntoTheKeptKey) {
  std::unique_ptr<images::Unpacker> u = images::load_unpacker();
  auto sha1 = [&](const std::string& d) { return u->sha1(d); };
  const std::string a = pgp::dearmor(unit::test_key("test.asc")), b = pgp::dearmor(unit::test_key("other.asc"));
  ASSERT_EQ(static_cast<unsigned char>(b[0]), 0x98);  // old format, tag 6, one-octet length
  std::string secret_old = b, secret_new = "\xC5" + b.substr(1);
  secret_old[0] = static_cast<char>(0x94);  // old format, tag 5
  for (const auto& s : {secret_old, secret_new}) {
    EXPECT_EQ(pgp::select_key(a + s, kKeyFpr, sha1), a);
    EXPECT_EQ(pgp::select_key(s + a, kKeyFpr, sha1), a);
    // The secret block is no public key: the other ID is not found in it.
    EXPECT_TRUE(has(error_of([&] { pgp::select_key(a + s, kOtherFpr, sha1); }), "holds no key " + std::string(kOtherFpr)));
  }
  // Negative control: packets that belong to a key block (a user ID, tag
  // 13, new format) after the key are kept with it: the probe sees what is
  // appended to the key it keeps.
  const std::string uid = std::string("\xCD\x05") + "x <y>";
  EXPECT_EQ(pgp::select_key(a + uid, kKeyFpr, sha1), a + uid);
  EXPECT_EQ(pgp::select_key(a + b, kKeyFpr, sha1), a);
  // Inside the key's block, what no public keyring holds is dropped: a
  // secret subkey (tag 7), compressed data (8), a trust packet (12).
  for (char tag : {'\xC7', '\xC8', '\xCC'}) {
    const std::string odd = std::string(1, tag) + "\x03" "abc";
    EXPECT_EQ(pgp::select_key(a + odd + uid, kKeyFpr, sha1), a + uid) << static_cast<int>(static_cast<unsigned char>(tag));
  }
}

// Malformed answers: lengths past the end, huge lengths, a five-octet
// length of 4 GiB, a partial length, an indeterminate one, a key packet of
// length 0: errors, never a crash or a read past the data.
TEST(Review4, MalformedKeyServerAnswersAreErrors) {
  std::unique_ptr<images::Unpacker> u = images::load_unpacker();
  auto sha1 = [&](const std::string& d) { return u->sha1(d); };
  for (const std::string& bad : {std::string("\xC6\xFF\xFF\xFF\xFF\xFF", 6), std::string("\xC6\xFF\x00\x00", 4),
                                 std::string("\x9A\xFF\xFF\xFF\xFF\x04", 6), std::string("\xC6\xE0\x04", 3),
                                 std::string("\x9B\x04", 2), std::string("\xC6\xC0", 2), std::string("\x99\x01", 2)})
    EXPECT_FALSE(error_of([&] { pgp::select_key(bad, kKeyFpr, sha1); }).empty());
  EXPECT_TRUE(has(error_of([&] { pgp::select_key(std::string("\xC6\x00", 2), kKeyFpr, sha1); }), "a key of version 0"));
  // Negative control: the well-formed key is taken.
  EXPECT_EQ(pgp::select_key(pgp::dearmor(unit::test_key("test.asc")), kKeyFpr, sha1).size(),
            pgp::dearmor(unit::test_key("test.asc")).size());
}

// keyserver values that are no plain host, or that smuggle a path, a
// user, a second scheme or shell text: refused when the user-data is read.
TEST(Review4, KeyserverValuesThatAreNoHostAreRefused) {
  auto ud = [](const std::string& server) {
    return "#cloud-config\napt:\n  sources:\n    r:\n      keyid: 'EA875C85C945DA5297F51AC04731D5CD4E7EDEA6'\n"
           "      keyserver: '" + server + "'\n";
  };
  for (const char* bad : {"http://a.test/x", "http://u@a.test", "http://a.test:0", "http://a.test:99999",
                                 "http://a.test:1x", "hkp://a.test$(id)", "a.test;id", "http://[::1]:80", "file:///etc",
                                 "http://a.test:80:80", "-x.test", "http://*.test", "a..b", "a.test#x", "a.test?x"})
    EXPECT_FALSE(error_of([&] { parse_user_data(ud(bad)); }).empty()) << bad;
  // Negative control: a host and port are taken.
  CloudConfig c = parse_user_data(ud("hkp://keys.example.test:8080"));
  EXPECT_EQ(c.apt.sources[0].keyserver_url, "http://keys.example.test:8080");
  EXPECT_EQ(c.apt.sources[0].keyserver_host, "keys.example.test");
}

// ---------------------------------------------------------------- #include

// Every URL is a build sandbox of its own. URLs whose answers make no part
// (an empty #cloud-config-archive) never reach the 100-part limit, so
// without a limit of their own a user-data of 16 MiB of URLs (or nested
// lists fanning out) kept the host fetching for days. At most 100 URLs are
// fetched in all, nested lists included.
TEST(Review4, IncludeListsFetchAtMostAHundredUrlsInAll) {
  int fetches = 0;
  provision::Fetcher empty_archive = [&](const std::string&) {
    ++fetches;
    return std::string("#cloud-config-archive\n[]\n");
  };
  std::string flat = "#include\n";
  for (int i = 0; i < 1000; ++i) flat += "http://allowed.test/files/e" + std::to_string(i) + "\n";
  std::string e = error_of([&] { parse_user_data(flat, nlohmann::json::object(), empty_archive); });
  EXPECT_TRUE(has(e, "more than 100 URLs")) << e;
  EXPECT_EQ(fetches, 100);

  // Nested: 10 URLs each answering a list of 20.
  fetches = 0;
  provision::Fetcher fan = [&](const std::string& url) {
    ++fetches;
    if (has(url, "/list")) {
      std::string l = "#include\n";
      for (int i = 0; i < 20; ++i) l += "http://allowed.test/files/e" + std::to_string(i) + "\n";
      return l;
    }
    return std::string("#cloud-config-archive\n[]\n");
  };
  std::string nested = "#include\n";
  for (int i = 0; i < 10; ++i) nested += "http://allowed.test/list" + std::to_string(i) + "\n";
  e = error_of([&] { parse_user_data(nested, nlohmann::json::object(), fan); });
  EXPECT_TRUE(has(e, "more than 100 URLs")) << e;
  EXPECT_LE(fetches, 100);

  // Negative control: 100 URLs in all (5 lists of 19, and the 5) are
  // fetched, and their parts taken.
  fetches = 0;
  provision::Fetcher ok = [&](const std::string& url) {
    ++fetches;
    if (has(url, "/list")) {
      std::string l = "#include\n";
      for (int i = 0; i < 19; ++i) l += "http://allowed.test/files/e" + std::to_string(i) + "\n";
      return l;
    }
    return std::string(fetches % 10 == 0 ? "#cloud-config\nruncmd: ['true']\n" : "#cloud-config-archive\n[]\n");
  };
  std::string five = "#include\n";
  for (int i = 0; i < 5; ++i) five += "http://allowed.test/list" + std::to_string(i) + "\n";
  EXPECT_EQ(error_of([&] { parse_user_data(five, nlohmann::json::object(), ok); }), "");
  EXPECT_EQ(fetches, 100);
}

// URLs are data: shell text, option-like text and control characters in
// an #include line are either refused or kept as one URL (they go to the
// fetch script in the environment, never into its text).
TEST(Review4, IncludeUrlsAreCheckedAndKeptWhole) {
  for (const char* bad : {"#include\n-o /etc/x http://a.test/\n", "#include\nhttp://a.test/ -o /x\n",
                                 "#include\nhttp://a.test/\"x\n", "#include\nhttp://a.test/\\x\n",
                                 "#include\nfile:///etc/passwd\n", "#include\ngopher://a.test/\n",
                                 "#include\n  # only a comment\n"})
    EXPECT_FALSE(error_of([&] { parse_user_data(bad); }).empty()) << bad;
  // Negative control: a URL with shell text in its path is one URL, as given.
  CloudConfig c = parse_user_data("#include\nhttp://a.test/$(touch${IFS}/tmp/x);`id`\n");
  ASSERT_EQ(c.includes.size(), 1u);
  EXPECT_EQ(c.includes[0], "http://a.test/$(touch${IFS}/tmp/x);`id`");
}

// What an #include fetched cannot be an #include of more than 4 levels.
TEST(Review4, SelfIncludingListsStopAtTheDepthLimit) {
  int fetches = 0;
  provision::Fetcher loop = [&](const std::string&) {
    ++fetches;
    return std::string("#include\nhttp://allowed.test/files/self\n");
  };
  std::string e = error_of([&] { parse_user_data("#include http://allowed.test/files/self\n", nlohmann::json::object(), loop); });
  EXPECT_TRUE(has(e, "nested more than 4 deep")) << e;
  EXPECT_EQ(fetches, 4);
  // Negative control: a list fetched at depth 3 that holds a cloud-config is taken.
  fetches = 0;
  provision::Fetcher three = [&](const std::string&) {
    return std::string(++fetches < 3 ? "#include\nhttp://allowed.test/files/n\n" : "#cloud-config\nruncmd: ['true']\n");
  };
  EXPECT_EQ(parse_user_data("#include http://allowed.test/files/n\n", nlohmann::json::object(), three).runcmd.size(), 1u);
}

// ---------------------------------------------------------------- archives

// Archives: aliases (a billion laughs), nested archives, entries of the
// wrong shape, more than 100 entries: errors or bounded, never a blow-up.
TEST(Review4, HostileArchivesFailCleanly) {
  std::string laughs = "#cloud-config-archive\n- &a 'lol'\n";
  for (int i = 0; i < 200; ++i) laughs += "- *a\n";
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(has(error_of([&] { parse_user_data(laughs); }), "more than 100 parts"));
  std::string nested = "#cloud-config-archive\n- &x [a, b]\n- [*x, *x]\n";
  EXPECT_TRUE(has(error_of([&] { parse_user_data(nested); }), "a string or a mapping"));
  EXPECT_TRUE(has(error_of([&] { parse_user_data("#cloud-config-archive\n- '#cloud-config-archive\n\n  []'\n"); }),
                  "an archive inside an archive"));
  EXPECT_TRUE(has(error_of([&] { parse_user_data("#cloud-config-archive\n- {content: [1]}\n"); }), "must be a string"));
  EXPECT_TRUE(has(error_of([&] { parse_user_data("#cloud-config-archive\n{a: b}\n"); }), "a YAML list"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  // Negative control: an archive of two parts is taken.
  CloudConfig c = parse_user_data("#cloud-config-archive\n- '#cloud-config\n\n  runcmd: [a]'\n- {content: '#!/bin/sh\n\n  true'}\n");
  EXPECT_EQ(c.runcmd.size(), 1u);
  EXPECT_EQ(c.scripts.size(), 1u);
}

// ---------------------------------------------------------------- JSON patch

std::string patch(const std::string& ops) {
  return "Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n--B\nContent-Type: text/cloud-config\n\n"
         "#cloud-config\nruncmd: [a, b]\nwrite_files: [{path: /x, content: y}]\n--B\nContent-Type: "
         "text/cloud-config-jsonp\n\n" + ops + "\n--B--\n";
}

// Odd pointers and operations: huge indices, '-' anywhere but the end of
// an add, a move into itself, a pointer into a scalar, '~' escapes, the
// whole document removed: errors naming the operation.
TEST(Review4, HostileJsonPatchesFailCleanly) {
  for (const char* ops :
       {R"([{"op": "add", "path": "/runcmd/99999999999999999999999", "value": "x"}])",
        R"([{"op": "add", "path": "/runcmd/4294967297", "value": "x"}])",
        R"([{"op": "add", "path": "/runcmd/3", "value": "x"}])",
        R"([{"op": "add", "path": "/runcmd/-1", "value": "x"}])",
        R"([{"op": "add", "path": "/runcmd/01", "value": "x"}])",
        R"([{"op": "add", "path": "/runcmd/-/x", "value": "x"}])",
        R"([{"op": "remove", "path": "/runcmd/-"}])",
        R"([{"op": "replace", "path": "/runcmd/-", "value": "x"}])",
        R"([{"op": "move", "from": "/runcmd", "path": "/runcmd/0"}])",
        R"([{"op": "move", "from": "", "path": "/x"}])",
        R"([{"op": "move", "from": "/runcmd/-", "path": "/x"}])",
        R"([{"op": "copy", "from": "/nothing", "path": "/x"}])",
        R"([{"op": "add", "path": "/runcmd/0/x", "value": "x"}])",
        R"([{"op": "add", "path": "/a~2", "value": "x"}])",
        R"([{"op": "add", "path": "a", "value": "x"}])",
        R"([{"op": "remove", "path": ""}])",
        R"([{"op": "add", "path": "/x"}])",
        R"([{"op": "test", "path": "/runcmd", "value": ["a"]}])",
        R"([{"op": "nope", "path": "/x"}])",
        R"({"op": "add", "path": "/x", "value": 1})",
        R"([{"op": "add", "path": "", "value": [1]}])"})
    EXPECT_FALSE(error_of([&] { parse_user_data(patch(ops)); }).empty()) << ops;
  // Negative control: the same kinds of operation, well formed, apply.
  CloudConfig c = parse_user_data(patch(
      R"([{"op": "add", "path": "/runcmd/-", "value": "c"}, {"op": "move", "from": "/runcmd/0", "path": "/runcmd/1"},
          {"op": "copy", "from": "/runcmd/0", "path": "/runcmd/0"}, {"op": "test", "path": "/runcmd/3", "value": "c"}])"));
  ASSERT_EQ(c.runcmd.size(), 4u);
  EXPECT_EQ(c.runcmd[0].shell, "b");
  EXPECT_EQ(c.runcmd[1].shell, "b");
  EXPECT_EQ(c.runcmd[2].shell, "a");
}

// Size attacks through a patch: copies that double a mapping (every copy
// shares the nodes it copies, so 60 copies make a tree of 2^60 nodes),
// YAML aliases in a patch's values, values nested thousands deep. The
// read must stay bounded in time (and not overflow the stack).
TEST(Review4, JsonPatchesCannotBlowUpTheHost) {
  std::string doubling = "[{\"op\": \"add\", \"path\": \"/write_files/0/x\", \"value\": {}}";
  for (int i = 0; i < 60; ++i)
    doubling += ", {\"op\": \"copy\", \"from\": \"/write_files/0/x\", \"path\": \"/write_files/0/x/k" + std::to_string(i) + "\"}";
  doubling += "]";
  std::string aliases = "[{\"op\": \"add\", \"path\": \"/write_files/0/x\", \"value\": &a0 [lol]}";
  std::string v = "*a0";
  for (int i = 1; i < 60; ++i) {
    aliases += ", {\"op\": \"add\", \"path\": \"/y" + std::to_string(i) + "\", \"value\": &a" + std::to_string(i) +
               " [*a" + std::to_string(i - 1) + ", *a" + std::to_string(i - 1) + "]}";
  }
  aliases += ", {\"op\": \"add\", \"path\": \"/write_files/0/z\", \"value\": *a59}]";
  std::string deep = "[{\"op\": \"add\", \"path\": \"/write_files/0/x\", \"value\": " + std::string(100000, '[') +
                     std::string(100000, ']') + "}]";
  for (const auto& ops : {doubling, aliases, deep}) {
    auto t0 = std::chrono::steady_clock::now();
    std::string e = error_of([&] { parse_user_data(patch(ops)); });
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << ops.substr(0, 200) << "\n" << e;
  }
  // Negative control: the doubling with 3 copies reads, and the patch is
  // seen (write_files[0] has a key x: an unknown one, a warning).
  std::string three = "[{\"op\": \"add\", \"path\": \"/write_files/0/x\", \"value\": {}}";
  for (int i = 0; i < 3; ++i)
    three += ", {\"op\": \"copy\", \"from\": \"/write_files/0/x\", \"path\": \"/write_files/0/x/k" + std::to_string(i) + "\"}";
  three += "]";
  CloudConfig c = parse_user_data(patch(three));
  std::string warnings;
  for (const auto& w : c.warnings) warnings += w + "\n";
  EXPECT_TRUE(has(warnings, "x")) << warnings;
}

}  // namespace
}  // namespace ultari
