// The user-data formats besides one #cloud-config: MIME multi-part (as
// Python's email module, `cloud-init devel make-mime` and Terraform's
// cloudinit_config write it), merging of cloud-config parts with
// cloud-init's mergers, YAML merge keys, gzip, scripts and boot hooks, and
// the refusals, each naming the part.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>
#include <zlib.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "provision/cloud_config.h"
#include "images/unpack.h"
#include "provision/mime.h"
#include "provision/pgp.h"
#include "unit_util.h"
#include "util/error.h"

namespace ultari::provision {
namespace {

using nlohmann::json;
using unit::error_of;
using unit::has;
using unit::kKeyFpr;
using unit::kOtherFpr;



std::string gzip(const std::string& data) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&z, data.size()) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string b64(const std::string& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t)in[i] << 16 | (uint8_t)in[i + 1] << 8 | (uint8_t)in[i + 2];
    for (int s = 18; s >= 0; s -= 6) out += k[(v >> s) & 63];
    if (out.size() % 77 == 76) out += "\n";
  }
  if (i + 1 == in.size()) {
    uint32_t v = (uint8_t)in[i] << 16;
    out += std::string{k[v >> 18], k[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t)in[i] << 16 | (uint8_t)in[i + 1] << 8;
    out += std::string{k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

// A multipart/mixed message of `parts` (each: its headers, a blank line,
// its body), as Python's email writes one.
std::string multipart(const std::vector<std::string>& parts, const std::string& boundary = "==XYZ==",
                      const std::string& nl = "\n") {
  std::string m = "Content-Type: multipart/mixed; boundary=\"" + boundary + "\"" + nl + "MIME-Version: 1.0" + nl + nl;
  for (const auto& p : parts) m += "--" + boundary + nl + p + nl;
  return m + "--" + boundary + "--" + nl;
}
std::string part(const std::string& type, const std::string& filename, const std::string& body,
                 const std::string& extra = "") {
  return "Content-Type: " + type + "; charset=\"us-ascii\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: 7bit\n" +
         (filename.empty() ? "" : "Content-Disposition: attachment; filename=\"" + filename + "\"\n") + extra + "\n" +
         body;
}

std::vector<std::string> runcmd_of(const CloudConfig& c) {
  std::vector<std::string> v;
  for (const auto& x : c.runcmd) v.push_back(x.describe());
  return v;
}

// --- MIME ----------------------------------------------------------------------

TEST(ProvisionUserData, MimePartsAreDecodedAndNamed) {
  const std::string script = "#!/bin/sh\necho \"caf\xc3\xa9\"\n";
  std::string m = multipart({
      part("text/cloud-config", "config.yaml", "#cloud-config\nhostname: box\n"),
      // base64, the file name in Content-Type's name (Python's get_filename falls back to it)
      "Content-Type: text/x-shellscript; name=\"s.sh\"\nContent-Transfer-Encoding: base64\n\n" + b64(script),
      // quoted-printable, RFC 2231 file name
      "Content-Type: text/x-shellscript\nContent-Transfer-Encoding: quoted-printable\n"
      "Content-Disposition: attachment; filename*=utf-8''z%20z.sh\n\n#!/bin/sh\necho a=3Db =\nc\n",
  });
  std::vector<MimePart> parts = parse_mime(m, {kMaxUserData});
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].type, "text/cloud-config");
  EXPECT_EQ(parts[0].filename, "config.yaml");
  EXPECT_EQ(parts[0].body, "#cloud-config\nhostname: box\n");
  EXPECT_EQ(parts[0].params.at("charset"), "us-ascii");
  EXPECT_EQ(parts[1].filename, "s.sh");
  EXPECT_EQ(parts[1].body, script);
  EXPECT_EQ(parts[2].filename, "z z.sh");
  EXPECT_EQ(parts[2].body, "#!/bin/sh\necho a=b c\n");

  CloudConfig c = parse_user_data(m);
  EXPECT_EQ(c.hostname, "box");
  ASSERT_EQ(c.scripts.size(), 2u);
  EXPECT_EQ(c.scripts[0].name, "s.sh");
  EXPECT_EQ(c.scripts[0].content, script);
  EXPECT_EQ(c.scripts[1].name, "zz.sh");  // cloud-init's clean_filename drops the blank
  ASSERT_EQ(c.parts.size(), 3u);
  EXPECT_EQ(c.parts[1].filename, "s.sh");
  EXPECT_EQ(c.parts[1].type, "text/x-shellscript");
  EXPECT_TRUE(c.warnings.empty()) << c.warnings[0];
}

TEST(ProvisionUserData, NestedMultipartCrlfPreambleAndEpilogue) {
  // Terraform's cloudinit_config writes \r\n; parts nest (multipart/alternative
  // inside multipart/mixed); preamble and epilogue are not parts.
  std::string inner = multipart({part("text/cloud-config", "", "#cloud-config\nruncmd: [inner]\n")}, "in-b", "\r\n");
  inner.replace(0, std::string("Content-Type: multipart/mixed").size(), "Content-Type: multipart/alternative");
  std::string m = "Content-Type: multipart/mixed; boundary=\"MIMEBOUNDARY\"\r\nMIME-Version: 1.0\r\n\r\n"
                  "This is a preamble: not a part.\r\n"
                  "--MIMEBOUNDARY\r\n" + inner + "\r\n"
                  "--MIMEBOUNDARY\r\nContent-Transfer-Encoding: 7bit\r\nContent-Type: text/x-shellscript\r\n"
                  "Mime-Version: 1.0\r\n\r\n#!/bin/bash\r\necho hi\r\n"
                  "--MIMEBOUNDARY--  \r\nepilogue: not a part\r\n";
  std::vector<MimePart> parts = parse_mime(m, {kMaxUserData});
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].body, "#cloud-config\nruncmd: [inner]\n");  // the line break before a delimiter is the delimiter's
  EXPECT_EQ(parts[1].body, "#!/bin/bash\r\necho hi");
  CloudConfig c = parse_user_data(m);
  EXPECT_EQ(runcmd_of(c), std::vector<std::string>{"inner"});
  ASSERT_EQ(c.scripts.size(), 1u);
  EXPECT_EQ(c.scripts[0].content, "#!/bin/bash\necho hi");  // dos2unix, as cloud-init
  EXPECT_EQ(c.scripts[0].name, "part-002");                 // cloud-init's name for a part without one
}

TEST(ProvisionUserData, BadMimeIsAnErrorAndNothingIsTaken) {
  auto err = [](const std::string& text) { return error_of([&] { parse_user_data(text); }); };
  // No boundary.
  EXPECT_TRUE(has(err("Content-Type: multipart/mixed\nMIME-Version: 1.0\n\n--x\n\n#!/bin/sh\n--x--\n"),
                  "has no boundary parameter"));
  // Not terminated (truncated): the closing delimiter is missing.
  std::string m = multipart({part("text/x-shellscript", "a.sh", "#!/bin/sh\ntrue\n")});
  std::string cut = m.substr(0, m.rfind("--==XYZ==--"));
  EXPECT_TRUE(has(err(cut), "its closing line '--==XYZ==--' is missing")) << err(cut);
  EXPECT_EQ(err(m), "");  // negative control: the whole message is fine
  // The boundary never appears.
  EXPECT_TRUE(has(err("Content-Type: multipart/mixed; boundary=b\nMIME-Version: 1.0\n\nhello\n"), "never appears"));
  // Bad base64 names the part.
  std::string bad = multipart({part("text/cloud-config", "a.yaml", "#cloud-config\n"),
                               "Content-Type: text/x-shellscript\nContent-Transfer-Encoding: base64\n"
                               "Content-Disposition: attachment; filename=\"b.sh\"\n\nIyEvYmluL3No*ZWNobw==\n"});
  EXPECT_TRUE(has(err(bad), "MIME part 2 (b.sh): its base64 body is not valid base64: '*'")) << err(bad);
  EXPECT_TRUE(has(err(multipart({"Content-Type: text/x-shellscript\nContent-Transfer-Encoding: base64\n\nIyEvYmluL3Nob\n"})),
                  "truncated"));
  EXPECT_TRUE(has(err(multipart({"Content-Type: text/x-shellscript\nContent-Transfer-Encoding: x-uuencode\n\nx\n"})),
                  "Content-Transfer-Encoding 'x-uuencode' is not supported"));
  // Limits: parts, nesting.
  std::vector<std::string> many(kMaxParts + 1, part("text/x-shellscript", "", "#!/bin/sh\n"));
  EXPECT_TRUE(has(err(multipart(many)), "more than 100 parts")) << err(multipart(many));
  std::vector<std::string> enough(kMaxParts, part("text/x-shellscript", "", "#!/bin/sh\n"));
  EXPECT_EQ(err(multipart(enough)), "");
  std::string deep = part("text/x-shellscript", "", "#!/bin/sh\n");
  for (int i = 0; i < kMaxMimeDepth + 1; ++i) deep = multipart({deep}, "b" + std::to_string(i));
  EXPECT_TRUE(has(err(deep), "nested more than 8 deep")) << err(deep);
}

TEST(ProvisionUserData, TypesUltariDoesNotRunAreRefusedNamingThePart) {
  struct Case {
    std::string part;
    std::string message;
  };
  std::vector<Case> cases = {
      {part("text/upstart-job", "", "#upstart-job\nstart on x\n"), "part 2 (part-002), text/upstart-job: upstart"},
      {part("text/cloud-config-archive", "", "#cloud-config-archive\n- type: foo/bar\n  content: x\n"),
       "'foo/bar' is not a type Ultari runs"},
      {part("text/x-shellscript-per-boot", "b.sh", "echo no shebang\n"), "a user script must start with '#!'"},
      {part("application/octet-stream", "blob", "xyz"),
       "'application/octet-stream' is not a type Ultari runs (text/cloud-config, text/x-shellscript, text/cloud-boothook, "
       "text/x-shellscript-per-boot, -per-instance, -per-once, text/jinja2), and no part handler (text/part-handler) "
       "comes before it"},
      {part("text/plain", "notes.txt", "just notes\n"), "part 2 (notes.txt), text/plain: it starts with none of"},
      {part("text/x-shellscript", "s.sh", "echo no shebang\n"),
       "part 2 (s.sh), text/x-shellscript: a user script must start with '#!'"},
      {part("text/cloud-boothook", "hook", "#cloud-boothook\necho no shebang\n"), "a boot hook must start with '#!'"},
      {part("text/jinja2", "t", "#cloud-config\n"), "a jinja template must start with the line '## template: jinja'"},
  };
  for (const auto& c : cases) {
    std::string m = multipart({part("text/cloud-config", "ok.yaml", "#cloud-config\nhostname: a\n"), c.part});
    std::string e = error_of([&] { parse_user_data(m); });
    EXPECT_TRUE(has(e, c.message)) << c.part << "\n--- got: " << e;
  }
  // A plain user-data: the same, without a part.
  EXPECT_TRUE(has(error_of([] { parse_user_data("hello\n"); }), "must start with '#cloud-config', '#!'"));
  // An empty part is skipped with a warning, as cloud-init skips it.
  CloudConfig c = parse_user_data(multipart({part("text/cloud-config", "", "#cloud-config\nhostname: a\n"),
                                             part("text/x-shellscript", "e.sh", "\n")}));
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_EQ(c.warnings[0], "user-data part 2 (e.sh): empty: ignored");
  EXPECT_TRUE(c.scripts.empty());
}

// Part handlers (text/part-handler) and the parts of other types after
// one go, in document order, to provisioning's part_handlers step (which
// knows what a handler takes only when it runs it); a part of such a type
// before any handler is refused, and so is a handler with nothing around it.
TEST(ProvisionUserData, PartHandlersAndThePartsAfterThemAreKeptInOrder) {
  const std::string handler = "#part-handler\r\ndef list_types():\r\n    return ['text/x-lab']\r\n";
  std::string early = error_of([&] {
    parse_user_data(multipart({part("text/x-lab", "early", "x"), part("text/part-handler", "h.py", handler)}));
  });
  EXPECT_TRUE(has(early, "part 1 (early), text/x-lab: 'text/x-lab' is not a type Ultari runs")) << early;
  EXPECT_TRUE(has(early, "no part handler (text/part-handler) comes before it")) << early;

  CloudConfig k = parse_user_data(multipart({part("text/part-handler", "h.py", handler),
                                             part("text/cloud-config", "", "#cloud-config\nhostname: a\n"),
                                             part("text/x-lab", "", "payload\r\n"), part("text/upstart-job", "u", "#upstart-job\n")}));
  ASSERT_EQ(k.handler_parts.size(), 3u);
  EXPECT_TRUE(k.handler_parts[0].handler);
  EXPECT_EQ(k.handler_parts[0].filename, "h.py");
  EXPECT_EQ(k.handler_parts[0].content, "#part-handler\ndef list_types():\n    return ['text/x-lab']\n");  // \r\n undone
  EXPECT_EQ(k.handler_parts[0].part, "user-data part 1 (h.py), text/part-handler");
  EXPECT_FALSE(k.handler_parts[1].handler);
  EXPECT_EQ(k.handler_parts[1].type, "text/x-lab");
  EXPECT_EQ(k.handler_parts[1].filename, "part-003");
  EXPECT_EQ(k.handler_parts[1].content, "payload\r\n");  // a payload as it is
  EXPECT_EQ(k.handler_parts[2].type, "text/upstart-job");  // a handler may take it
  EXPECT_EQ(k.hostname, "a");                               // the cloud-config still Ultari's
  // A plain user-data that is a part handler: it runs (its __begin__ and
  // __end__), as cloud-init runs it.
  CloudConfig alone = parse_user_data("#part-handler\ndef list_types(): return []\n");
  ASSERT_EQ(alone.handler_parts.size(), 1u);
  EXPECT_TRUE(alone.handler_parts[0].handler);
}

TEST(ProvisionUserData, ErrorsAndWarningsInAPartNameThePartAndTheLine) {
  std::string m = multipart({part("text/cloud-config", "a.yaml", "#cloud-config\nhostname: a\n"),
                             part("text/cloud-config", "b.yaml", "#cloud-config\nruncmd: [ls]\npackages: 5\n")});
  EXPECT_EQ(error_of([&] { parse_user_data(m); }),
            "user-data part 2 (b.yaml) line 3, column 11: 'packages' must be a list");
  std::string yaml = multipart({part("text/cloud-config", "a.yaml", "#cloud-config\nruncmd:\n  - ok\n bad: [\n")});
  EXPECT_TRUE(has(error_of([&] { parse_user_data(yaml); }), "user-data part 1 (a.yaml) line 4, column 2:"))
      << error_of([&] { parse_user_data(yaml); });
  // Warnings and each command's place, after the merge too.
  CloudConfig c = parse_user_data(
      multipart({part("text/cloud-config", "a.yaml", "#cloud-config\nntp: {}\nruncmd: [one]\n"),
                 part("text/cloud-config", "b.yaml", "#cloud-config\nmerge_how: 'list(append)+dict(recurse_array)+str()'\n"
                                                     "foo: 1\nruncmd:\n  - two\n")}));
  ASSERT_EQ(c.warnings.size(), 2u);
  EXPECT_EQ(c.warnings[0], "user-data part 1 (a.yaml) line 2: 'ntp' is a cloud-init module Ultari does not run: ignored");
  EXPECT_EQ(c.warnings[1], "user-data part 2 (b.yaml) line 3: unknown key 'foo': ignored");
  ASSERT_EQ(c.runcmd.size(), 2u);
  EXPECT_EQ(c.runcmd[0].where, "user-data part 1 (a.yaml) line 3");
  EXPECT_EQ(c.runcmd[1].where, "user-data part 2 (b.yaml) line 5");
  // A plain user-data keeps its plain places.
  CloudConfig plain = parse_user_data("#cloud-config\nruncmd:\n  - ls\n");
  EXPECT_EQ(plain.runcmd[0].where, "user-data line 3");
  EXPECT_EQ(error_of([] { parse_user_data("#cloud-config\npackages: 5\n"); }),
            "user-data line 2, column 11: 'packages' must be a list");
}

// --- merging --------------------------------------------------------------------

TEST(ProvisionUserData, CloudConfigPartsMergeAsCloudInitMergesThem) {
  const std::string a = "#cloud-config\nhostname: first\nruncmd: [one]\npackages: [a]\napt:\n  conf: A\n";
  const std::string b_body = "hostname: second\nruncmd: [two]\napt:\n  http_proxy: 'http://p:3128'\n";
  // cloud-init's default for parts, dict(replace)+list()+str(): a later
  // part's key replaces the earlier one's whole value.
  CloudConfig def = parse_user_data(multipart({part("text/cloud-config", "a", a),
                                               part("text/cloud-config", "b", "#cloud-config\n" + b_body)}));
  EXPECT_EQ(runcmd_of(def), std::vector<std::string>{"two"});
  EXPECT_EQ(def.hostname, "second");
  EXPECT_EQ(def.packages.size(), 1u);  // only in the first: kept
  EXPECT_EQ(def.apt.conf, "");         // apt replaced as a whole
  EXPECT_EQ(def.apt.http_proxy, "http://p:3128");
  EXPECT_EQ(def.parts[1].note, "merge dict(replace)+list(replace)+str()");

  // list(append)+dict(recurse_array)+str(), in the second part (the part's
  // own mergers say how it merges into the parts before it): lists append,
  // mappings merge key by key, an existing string stays (no_replace).
  const std::string how = "merge_how: 'list(append)+dict(recurse_array)+str()'\n";
  CloudConfig app = parse_user_data(multipart({part("text/cloud-config", "a", a),
                                               part("text/cloud-config", "b", "#cloud-config\n" + how + b_body)}));
  EXPECT_EQ(runcmd_of(app), (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(app.hostname, "first");
  EXPECT_EQ(app.apt.conf, "A");
  EXPECT_EQ(app.apt.http_proxy, "http://p:3128");
  EXPECT_TRUE(app.warnings.empty()) << app.warnings[0];  // merge_how is no module

  // Negative control: the parts read alone.
  EXPECT_EQ(runcmd_of(parse_user_data("#cloud-config\n" + how + b_body)), std::vector<std::string>{"two"});
  EXPECT_EQ(runcmd_of(parse_user_data(a)), std::vector<std::string>{"one"});

  // The same by the Merge-Type header, and in the dictionary form.
  CloudConfig hdr = parse_user_data(multipart(
      {part("text/cloud-config", "a", a),
       part("text/cloud-config", "b", "#cloud-config\n" + b_body, "Merge-Type: list(append)+dict(recurse_array)+str()\n")}));
  EXPECT_EQ(runcmd_of(hdr), (std::vector<std::string>{"one", "two"}));
  CloudConfig xhdr = parse_user_data(multipart(
      {part("text/cloud-config", "a", a),
       part("text/cloud-config", "b", "#cloud-config\n" + b_body, "X-Merge-Type: list(prepend)+dict(recurse_list)\n")}));
  EXPECT_EQ(runcmd_of(xhdr), (std::vector<std::string>{"two", "one"}));
  CloudConfig dict_form = parse_user_data(multipart(
      {part("text/cloud-config", "a", a),
       part("text/cloud-config", "b",
            "#cloud-config\nmerge_how:\n  - name: list\n    settings: [append]\n  - name: dict\n"
            "    settings: [no_replace, recurse_list]\n" + b_body)}));
  EXPECT_EQ(runcmd_of(dict_form), (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(dict_form.hostname, "first");

  // dict(replace,recurse_list)? replace wins: the value is replaced.
  CloudConfig rep = parse_user_data(multipart(
      {part("text/cloud-config", "a", a),
       part("text/cloud-config", "b", "#cloud-config\nmerge_how: dict(replace)+list(append)\n" + b_body)}));
  EXPECT_EQ(runcmd_of(rep), std::vector<std::string>{"two"});
  EXPECT_EQ(rep.hostname, "second");
  // str(append) joins strings under dict(recurse_str).
  CloudConfig str = parse_user_data(multipart(
      {part("text/cloud-config", "a", "#cloud-config\napt:\n  conf: 'A;'\n"),
       part("text/cloud-config", "b", "#cloud-config\nmerge_how: dict(recurse_str)+str(append)\napt:\n  conf: 'B;'\n")}));
  EXPECT_EQ(str.apt.conf, "A;B;");
  // allow_delete: a null removes the key.
  CloudConfig del = parse_user_data(multipart(
      {part("text/cloud-config", "a", a),
       part("text/cloud-config", "b", "#cloud-config\nmerge_how: dict(allow_delete)\npackages: null\n")}));
  EXPECT_TRUE(del.packages.empty());
  EXPECT_EQ(runcmd_of(del), std::vector<std::string>{"one"});
}

TEST(ProvisionUserData, MergeFormsCloudInitLacksAreRefused) {
  auto with = [](const std::string& how) {
    return error_of([&] {
      parse_user_data(multipart({part("text/cloud-config", "a", "#cloud-config\nruncmd: [one]\n"),
                                 part("text/cloud-config", "b.yaml", "#cloud-config\n" + how + "\nruncmd: [two]\n")}));
    });
  };
  EXPECT_TRUE(has(with("merge_how: 'deep(x)+dict()'"), "'deep' is not one of cloud-init's mergers")) << with("merge_how: 'deep(x)+dict()'");
  EXPECT_TRUE(has(with("merge_how: 'list(extend)+dict()'"), "'extend' is not an option of list()"));
  EXPECT_TRUE(has(with("merge_how: 'list(append)'"), "names no dict() merger"));
  EXPECT_TRUE(has(with("merge_how: 'list(append'"), "is not of the form name(option,...)"));
  EXPECT_TRUE(has(with("merge_how: 5"), "user-data part 2 (b.yaml) line 2, column 12: 'merge_how' must be a string"))
      << with("merge_how: 5");
  // Appending a mapping to a list is refused (cloud-init would append its keys).
  std::string e = error_of([] {
    parse_user_data(multipart({part("text/cloud-config", "a", "#cloud-config\nruncmd: [one]\n"),
                               part("text/cloud-config", "b", "#cloud-config\nmerge_how: dict(recurse_dict)+list(append)\n"
                                                              "runcmd: {a: b}\n")}));
  });
  EXPECT_TRUE(has(e, "'runcmd': cannot append a mapping to a list")) << e;
  EXPECT_EQ(with("merge_how: 'list(append)+dict(recurse_array)+str()'"), "");  // negative control
}

// --- YAML merge keys -------------------------------------------------------------

TEST(ProvisionUserData, YamlMergeKeysMergeAsPyYamlDoes) {
  // yaml-cpp 0.7 keeps "<<" as a plain key (the reason for this).
  YAML::Node raw = YAML::Load("a: &a {x: 1}\nb:\n  <<: *a\n");
  EXPECT_TRUE(raw["b"]["<<"].IsDefined());

  CloudConfig c = parse_cloud_config(
      "#cloud-config\n"
      "x-user: &user {shell: /bin/sh, gecos: From anchor, lock_passwd: false}\n"
      "x-more: &more {gecos: From more, homedir: /home/more}\n"
      "users:\n"
      "  - <<: *user\n"  // a mapping
      "    name: alice\n"
      "    shell: /bin/bash\n"  // an explicit key wins
      "  - <<: [*more, *user]\n"  // a list: the earlier mapping wins
      "    name: bob\n");
  ASSERT_EQ(c.users.size(), 2u);
  EXPECT_EQ(c.users[0].name, "alice");
  EXPECT_EQ(c.users[0].shell, "/bin/bash");
  EXPECT_EQ(c.users[0].gecos, "From anchor");
  EXPECT_FALSE(c.users[0].lock_passwd);
  EXPECT_EQ(c.users[1].gecos, "From more");
  EXPECT_EQ(c.users[1].homedir, "/home/more");
  EXPECT_EQ(c.users[1].shell, "/bin/sh");
  // "<<" never shows as an unknown key; the anchors' own keys do.
  ASSERT_EQ(c.warnings.size(), 2u);
  EXPECT_TRUE(has(c.warnings[0], "'x-user'")) << c.warnings[0];
  EXPECT_TRUE(has(c.warnings[1], "'x-more'")) << c.warnings[1];

  // At the top level, nested, and through a merged mapping's own merge key.
  CloudConfig top = parse_cloud_config(
      "#cloud-config\nx-base: &base {hostname: base, runcmd: [a]}\nx-mid: &mid {<<: *base, locale: C.UTF-8}\n"
      "<<: *mid\nhostname: mine\n");
  EXPECT_EQ(top.hostname, "mine");
  EXPECT_EQ(top.locale, "C.UTF-8");
  EXPECT_EQ(runcmd_of(top), std::vector<std::string>{"a"});

  // A quoted '<<' is a key like any other (PyYAML: str, not merge).
  CloudConfig quoted = parse_cloud_config("#cloud-config\nx: &x {hostname: q}\n'<<': *x\n");
  EXPECT_EQ(quoted.hostname, "");
  EXPECT_TRUE(has(quoted.warnings.back(), "unknown key '<<'")) << quoted.warnings.back();
  // What cannot be merged is an error at its place.
  EXPECT_EQ(error_of([] { parse_cloud_config("#cloud-config\nusers:\n  - <<: 5\n    name: a\n"); }),
            "user-data line 3, column 9: '<<' (a YAML merge key) takes a mapping or a list of mappings");
  EXPECT_TRUE(has(error_of([] { parse_cloud_config("#cloud-config\na: &a {x: 1}\nb:\n  <<: [*a, [1]]\n"); }),
                  "user-data line 4, column 12: '<<'"));
}

TEST(ProvisionUserData, AliasesAreWalkedOnce) {
  // A billion-laughs document: nine levels of ten aliases (10^9 leaves
  // when walked as a tree) is checked in no time, each node once.
  std::string y = "#cloud-config\nx0: &a0 [lol]\n";
  for (int i = 1; i < 10; ++i) {
    y += "x" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int k = 0; k < 10; ++k) y += std::string(k ? ", " : "") + "*a" + std::to_string(i - 1);
    y += "]\n";
  }
  CloudConfig c = parse_cloud_config(y);
  EXPECT_EQ(c.warnings.size(), 10u);
}

// --- gzip, scripts, templates -------------------------------------------------------

TEST(ProvisionUserData, GzipUserDataAndPartsAreUnpacked) {
  const std::string cc = "#cloud-config\nhostname: zipped\n";
  CloudConfig c = parse_user_data(gzip(cc));
  EXPECT_EQ(c.hostname, "zipped");
  EXPECT_EQ(c.canonical, cc);  // the cache sees what runs
  EXPECT_EQ(c.parts[0].note, "gzip");
  // Terraform's cloudinit_config with gzip: the whole MIME gzip'd; and a
  // part of a gzip type (cloud-init's DECOMP_TYPES), base64 in the MIME.
  std::string m = multipart({part("text/cloud-config", "a", cc),
                             "Content-Type: application/x-gzip\nContent-Transfer-Encoding: base64\n"
                             "Content-Disposition: attachment; filename=\"s.sh.gz\"\n\n" +
                                 b64(gzip("#!/bin/sh\necho zipped\n"))});
  CloudConfig g = parse_user_data(gzip(m));
  EXPECT_EQ(g.hostname, "zipped");
  ASSERT_EQ(g.scripts.size(), 1u);
  EXPECT_EQ(g.scripts[0].content, "#!/bin/sh\necho zipped\n");
  EXPECT_EQ(g.parts[1].type, "text/x-shellscript");
  // Damaged and truncated data is an error.
  std::string z = gzip(cc);
  EXPECT_TRUE(has(error_of([&] { parse_user_data(z.substr(0, z.size() - 12)); }), "user-data: gzip data is truncated"));
  z[z.size() - 8] ^= 0x55;  // its CRC
  EXPECT_TRUE(has(error_of([&] { parse_user_data(z); }), "gzip data is damaged")) << error_of([&] { parse_user_data(z); });
}

TEST(ProvisionUserData, AGzipBombIsStoppedAtTheLimit) {
  // 64 MiB of zeros in about 64 KiB: refused, decompression stops at 16 MiB.
  std::string bomb = gzip(std::string(64u << 20, '\0'));
  ASSERT_LT(bomb.size(), 100u << 10);
  EXPECT_TRUE(has(error_of([&] { parse_user_data(bomb); }), "decompresses to more than 16777216 bytes"));
  EXPECT_TRUE(has(error_of([&] { gunzip(bomb, 1u << 20); }), "more than 1048576 bytes"));
  EXPECT_EQ(gunzip(bomb, 64u << 20).size(), 64u << 20);  // negative control: within its limit it unpacks
  // In a part, the limit is what is left of the total.
  std::string m = multipart({"Content-Type: application/gzip\nContent-Transfer-Encoding: base64\n\n" + b64(bomb)});
  EXPECT_TRUE(has(error_of([&] { parse_user_data(m); }), "user-data part 1 (part-001), application/gzip: gzip data decompresses"))
      << error_of([&] { parse_user_data(m); });
}

TEST(ProvisionUserData, APlainScriptIsOneUserScript) {
  CloudConfig c = parse_user_data("#!/bin/sh\r\necho hi > /hi\r\n");
  ASSERT_EQ(c.scripts.size(), 1u);
  EXPECT_EQ(c.scripts[0].name, "part-001");
  EXPECT_EQ(c.scripts[0].content, "#!/bin/sh\necho hi > /hi\n");
  EXPECT_EQ(c.scripts[0].part, "user-data");
  EXPECT_TRUE(c.runcmd.empty());
  EXPECT_EQ(c.parts[0].type, "text/x-shellscript");
  // A boot hook: its first line off.
  CloudConfig h = parse_user_data("#cloud-boothook\n#!/bin/sh\necho early\n");
  ASSERT_EQ(h.boothooks.size(), 1u);
  EXPECT_EQ(h.boothooks[0].content, "#!/bin/sh\necho early\n");
  EXPECT_TRUE(h.scripts.empty());
}

TEST(ProvisionUserData, ScriptsRunInFileNameOrderAndALaterNameWins) {
  CloudConfig c = parse_user_data(multipart({
      part("text/x-shellscript", "20-b.sh", "#!/bin/sh\necho b\n"),
      part("text/x-shellscript", "10-a.sh", "#!/bin/sh\necho a\n"),
      part("text/x-shellscript", "../20-b.sh", "#!/bin/sh\necho b2\n"),  // cleaned: .._20-b.sh
      part("text/x-shellscript", "10-a.sh", "#!/bin/sh\necho a2\n"),
  }));
  ASSERT_EQ(c.scripts.size(), 3u);
  EXPECT_EQ(c.scripts[0].name, ".._20-b.sh");
  EXPECT_EQ(c.scripts[1].name, "10-a.sh");
  EXPECT_EQ(c.scripts[1].content, "#!/bin/sh\necho a2\n");
  EXPECT_EQ(c.scripts[2].name, "20-b.sh");
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_TRUE(has(c.warnings[0], "'10-a.sh' comes again in part 4 (10-a.sh)")) << c.warnings[0];
}

TEST(ProvisionUserData, TemplatePartsAreRendered) {
  json vars = {{"v1", {{"distro", "debian"}}}, {"who", "bob"}};
  std::string m = multipart({
      part("text/jinja2", "t.yaml", "## template: jinja\n#cloud-config\nhostname: {{ v1.distro }}-box\n"),
      part("text/x-shellscript", "s.sh", "## template: jinja\n#!/bin/sh\necho {{ who }}\n"),
      part("text/cloud-config", "c.yaml", "## template: jinja\nruncmd: ['{{ who }}']\n"),
  });
  CloudConfig c = parse_user_data(m, vars);
  EXPECT_TRUE(c.templated);
  EXPECT_EQ(c.hostname, "debian-box");
  ASSERT_EQ(c.scripts.size(), 1u);
  EXPECT_EQ(c.scripts[0].content, "#!/bin/sh\necho bob\n");
  EXPECT_EQ(runcmd_of(c), std::vector<std::string>{"bob"});
  EXPECT_EQ(c.parts[0].type, "text/cloud-config");
  EXPECT_EQ(c.parts[0].note, "jinja, merge dict(replace)+list(replace)+str()");
  // The rendered text is what the cache key sees: other values, another key.
  CloudConfig other = parse_user_data(m, {{"v1", {{"distro", "ubuntu"}}}, {"who", "bob"}});
  EXPECT_NE(other.canonical, c.canonical);
  // An undefined name: the part and the line in it.
  std::string e = error_of([&] { parse_user_data(m, {{"v1", {{"distro", "x"}}}}); });
  EXPECT_EQ(e.rfind("user-data part 2 (s.sh) line 3:", 0), 0u) << e;
  EXPECT_FALSE(parse_user_data(multipart({part("text/cloud-config", "", "#cloud-config\n")})).templated);
}

// --- interoperability --------------------------------------------------------------

// The MIME Python's email module writes (what `cloud-init devel make-mime`
// and most tools produce): generated by python3 here.
TEST(ProvisionUserData, PythonEmailModuleOutputIsRead) {
  const char* script = R"PY(
import gzip, sys
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.mime.application import MIMEApplication
outer = MIMEMultipart()
a = MIMEText("#cloud-config\nruncmd:\n  - echo one\nhostname: py\n", "cloud-config")
a.add_header("Content-Disposition", "attachment", filename="a.yaml")
outer.attach(a)
inner = MIMEMultipart("alternative")
b = MIMEText("#cloud-config\nmerge_how: 'list(append)+dict(recurse_array)+str()'\nruncmd:\n  - echo caf\u00e9\n", "cloud-config", "utf-8")
b.add_header("Content-Disposition", "attachment", filename="b.yaml")
inner.attach(b)
outer.attach(inner)
c = MIMEApplication(gzip.compress(b"#!/bin/sh\necho zipped\n"), "gzip")
c.add_header("Content-Disposition", "attachment", filename="zipped.sh")
outer.attach(c)
d = MIMEText("#cloud-boothook\n#!/bin/sh\necho hook\n", "cloud-boothook")
outer.attach(d)
sys.stdout.write(outer.as_string())
)PY";
  char path[] = "/tmp/ultari-mime-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, script, strlen(script)), static_cast<ssize_t>(strlen(script)));
  close(fd);
  FILE* p = popen(("/usr/bin/python3 " + std::string(path)).c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string m;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) m.append(buf, n);
  int status = pclose(p);
  unlink(path);
  ASSERT_EQ(status, 0) << m;
  ASSERT_TRUE(has(m, "Content-Transfer-Encoding: base64")) << m;  // the utf-8 and gzip parts

  CloudConfig c = parse_user_data(m);
  EXPECT_EQ(runcmd_of(c), (std::vector<std::string>{"echo one", "echo caf\xc3\xa9"}));
  EXPECT_EQ(c.hostname, "py");
  ASSERT_EQ(c.scripts.size(), 1u);
  EXPECT_EQ(c.scripts[0].name, "zipped.sh");
  EXPECT_EQ(c.scripts[0].content, "#!/bin/sh\necho zipped\n");
  ASSERT_EQ(c.boothooks.size(), 1u);
  EXPECT_EQ(c.boothooks[0].content, "#!/bin/sh\necho hook\n");
  ASSERT_EQ(c.parts.size(), 4u);
  EXPECT_EQ(c.parts[1].filename, "b.yaml");
  EXPECT_EQ(c.parts[2].type, "text/x-shellscript");
  EXPECT_EQ(c.parts[2].note, "gzip");
  EXPECT_EQ(c.parts[3].filename, "part-004");
  EXPECT_TRUE(c.warnings.empty()) << c.warnings[0];
}

const std::string kArmoredKey = unit::test_key("test.asc");

std::string with_key(const std::string& key, const std::string& source = "deb [signed-by=$KEY_FILE] http://m/ x main",
                     const std::string& name = "repo.list") {
  std::string indented;
  std::istringstream lines(key);
  for (std::string l; std::getline(lines, l);) indented += "        " + l + "\n";
  return "#cloud-config\napt:\n  sources:\n    " + name + ":\n      source: \"" + source + "\"\n      key: |\n" + indented;
}

// apt keys are dearmoured as `gpg --dearmor` does (cloud-init runs it):
// the packets, checked against the armour's CRC-24; the key file's stem
// and the source file's name follow cloud-init.
TEST(ProvisionUserData, AptKeysAreDearmouredAndNamedAsCloudInitNamesThem) {
  CloudConfig c = parse_user_data(with_key(kArmoredKey));
  ASSERT_EQ(c.apt.sources.size(), 1u);
  const AptSource& s = c.apt.sources[0];
  EXPECT_EQ(s.keyring, base64_decode("mDMEaxA26BYJKwYBBAHaRw8BAQdATHLUNb2BXl40SlfNDxq4q1J9OnC62xFsUJgNIjausde0JVVsdGFyaSBUZXN0IEtleSA8dGVzdEB1bHRhcmkuaW52YWxpZD6IkAQTFggAOBYhBOqHXIXJRdpSl/UawEcx1c1Oft6mBQJrEDboAhsDBQsJCAcCBhUKCQgLAgQWAgMBAh4BAheAAAoJEEcx1c1Oft6mMg4BAKHN05ozzNqmlIIK8T17X7reD2XQ5NYEocjxza3FHsAPAQDw1nk4z3B4LWLYnl569lwupCIu9KvBFhpvh5lu/cuNCg=="));
  EXPECT_EQ(s.keyring.size(), 238u);  // what gpg --export wrote
  EXPECT_EQ(s.filename, "repo.list");  // not repo.list.list
  EXPECT_EQ(s.key_stem, "repo");
  CloudConfig named = parse_user_data(with_key(kArmoredKey, "deb http://m/ x main", "other"));
  EXPECT_EQ(named.apt.sources[0].filename, "other.list");
  EXPECT_EQ(named.apt.sources[0].key_stem, "other");

  auto err = [](const std::string& text) { return error_of([&] { parse_user_data(text); }); };
  EXPECT_EQ(err(with_key(kArmoredKey)), "");  // negative control for the refusals below
  // One character of the body changed: the checksum says so.
  std::string damaged = kArmoredKey;
  size_t at = damaged.find("mDMEaxA26");
  damaged[at + 1] = damaged[at + 1] == 'A' ? 'B' : 'A';
  EXPECT_TRUE(has(err(with_key(damaged)), "its armour checksum does not match")) << err(with_key(damaged));
  // Without the checksum line the key is taken (it is optional).
  std::string unchecked = kArmoredKey;
  unchecked.erase(unchecked.find("\n=Z8yc"), 6);
  EXPECT_EQ(parse_user_data(with_key(unchecked)).apt.sources[0].keyring, s.keyring);
  EXPECT_TRUE(has(err(with_key("not a key at all")), "is not an ASCII-armoured key")) << err(with_key("x"));
  EXPECT_TRUE(has(err("#cloud-config\napt:\n  sources:\n    r:\n      source: 'deb [signed-by=$KEY_FILE] http://m/ x "
                      "main'\n"),
                  "uses $KEY_FILE, but the source has no 'key'"));
  // Key IDs: a fingerprint or a long ID, never a short one; key servers
  // as gpg names them.
  auto keyid = [](const std::string& id, const std::string& server = "") {
    return "#cloud-config\napt:\n  sources:\n    r:\n      keyid: '" + id + "'\n" +
           (server.empty() ? "" : "      keyserver: '" + server + "'\n");
  };
  EXPECT_TRUE(has(err(keyid("ABCD1234")), "is a short key ID")) << err(keyid("ABCD1234"));
  EXPECT_TRUE(has(err(keyid("ABCD")), "neither a fingerprint")) << err(keyid("ABCD"));
  EXPECT_TRUE(has(err(keyid("0xZZCD1234ABCD1234")), "is not a key ID")) << err(keyid("0xZZCD1234ABCD1234"));
  const std::string fpr = "EA87 5C85 C945 DA52 97F5  1AC0 4731 D5CD 4E7E DEA6";
  CloudConfig k = parse_user_data(keyid(fpr));
  EXPECT_EQ(k.apt.sources[0].keyid, "EA875C85C945DA5297F51AC04731D5CD4E7EDEA6");
  EXPECT_EQ(k.apt.sources[0].keyserver_url, "http://keyserver.ubuntu.com:11371");
  EXPECT_EQ(parse_user_data(keyid("0x4731D5CD4E7EDEA6", "hkps://keys.openpgp.org")).apt.sources[0].keyserver_url,
            "https://keys.openpgp.org:443");
  EXPECT_EQ(parse_user_data(keyid(fpr, "pgp.mit.edu:80")).apt.sources[0].keyserver_url, "http://pgp.mit.edu:80");
  EXPECT_TRUE(has(err(keyid(fpr, "ldap://x")), "not 'ldap://'")) << err(keyid(fpr, "ldap://x"));
  EXPECT_TRUE(has(err(keyid(fpr, "a b")), "is not a key server's host name")) << err(keyid(fpr, "a b"));
}

// ppa:OWNER[/NAME]: the names kept for provisioning (which makes the deb
// line), Launchpad's name rules enforced; a key server may be given without
// a keyid (the fingerprint comes from Launchpad).
TEST(ProvisionUserData, PpaSourcesAreLaunchpadNames) {
  auto ppa = [](const std::string& source, const std::string& more = "") {
    return "#cloud-config\napt:\n  sources:\n    tools:\n      source: '" + source + "'\n" + more;
  };
  auto err = [](const std::string& text) { return error_of([&] { parse_user_data(text); }); };
  AptSource s = parse_user_data(ppa("ppa:lab-owner/tools+x.1")).apt.sources[0];
  EXPECT_EQ(s.ppa_owner, "lab-owner");
  EXPECT_EQ(s.ppa_name, "tools+x.1");
  EXPECT_EQ(s.source, "");  // made at provisioning, from the base's release
  EXPECT_EQ(s.keyid, "");
  EXPECT_EQ(s.keyserver_url, "");
  EXPECT_EQ(parse_user_data(ppa("ppa:deadsnakes")).apt.sources[0].ppa_name, "ppa");
  for (const char* bad : {"ppa:", "ppa:/x", "ppa:Owner/x", "ppa:o/x y", "ppa:o/../x", "ppa:o/-x", "ppa:o/x/y"})
    EXPECT_TRUE(has(err(ppa(bad)), "is not ppa:OWNER/NAME")) << bad << ": " << err(ppa(bad));
  EXPECT_EQ(err(ppa("ppa:o/x")), "");  // control
  AptSource k = parse_user_data(ppa("ppa:o/x", "      keyserver: 'hkps://keys.example.org'\n")).apt.sources[0];
  EXPECT_EQ(k.keyserver_url, "https://keys.example.org:443");
  EXPECT_EQ(k.keyid, "");
  // Not a PPA: a key server still needs a keyid.
  EXPECT_TRUE(has(err("#cloud-config\napt:\n  sources:\n    r:\n      source: 'deb http://m/ x main'\n"
                      "      keyserver: 'keys.example.org'\n"),
                  "is given, but no 'keyid'"));
}

const std::string kOtherKey = unit::test_key("other.asc");

// What a key server answers is cut to the one key the ID names, checked
// against its v4 fingerprint as gpg computes it (the fingerprints above are
// gpg's own); an answer without it, or with two, is refused.
TEST(ProvisionUserData, AKeyServersAnswerKeepsOnlyTheKeyTheIdNames) {
  std::unique_ptr<images::Unpacker> u = images::load_unpacker();
  auto sha1 = [&](const std::string& d) { return u->sha1(d); };
  const std::string a = pgp::dearmor(kArmoredKey), b = pgp::dearmor(kOtherKey);
  EXPECT_EQ(pgp::select_key(a, kKeyFpr, sha1), a);
  EXPECT_EQ(pgp::select_key(a + b, kKeyFpr, sha1), a);  // the other key is dropped
  EXPECT_EQ(pgp::select_key(a + b, kOtherFpr, sha1), b);
  EXPECT_EQ(pgp::select_key(b + a, pgp::normalize_key_id("0x4731 D5CD 4E7E DEA6"), sha1), a);  // a long ID
  EXPECT_TRUE(has(error_of([&] { pgp::select_key(b, kKeyFpr, sha1); }), std::string("(it holds ") + kOtherFpr))
      << error_of([&] { pgp::select_key(b, kKeyFpr, sha1); });
  EXPECT_TRUE(has(error_of([&] { pgp::select_key(a + a, kKeyFpr, sha1); }), "holds 2 keys"));
  EXPECT_TRUE(has(error_of([&] { pgp::select_key(a.substr(0, a.size() - 3), kKeyFpr, sha1); }), "cut short"));
  EXPECT_TRUE(has(error_of([&] { pgp::select_key("plain text", kKeyFpr, sha1); }), "not an OpenPGP packet header"));
}

// Scripts by frequency go to their own lists (cloud-init's
// /var/lib/cloud/scripts/per-*), a later part of the same name replacing
// the earlier.
TEST(ProvisionUserData, ScriptsPerBootInstanceAndOnceAreCollectedByFrequency) {
  CloudConfig c = parse_user_data(multipart({part("text/x-shellscript-per-boot", "b.sh", "#!/bin/sh\necho boot\n"),
                                             part("text/x-shellscript-per-instance", "i.sh", "#!/bin/sh\necho i\n"),
                                             part("text/x-shellscript-per-once", "o.sh", "#!/bin/sh\necho o\n"),
                                             part("text/x-shellscript-per-boot", "b.sh", "#!/bin/sh\necho again\n"),
                                             part("text/x-shellscript", "u.sh", "#!/bin/sh\necho user\n")}));
  ASSERT_EQ(c.per_boot.size(), 1u);
  EXPECT_EQ(c.per_boot[0].content, "#!/bin/sh\necho again\n");
  ASSERT_EQ(c.per_instance.size(), 1u);
  EXPECT_EQ(c.per_instance[0].name, "i.sh");
  ASSERT_EQ(c.per_once.size(), 1u);
  ASSERT_EQ(c.scripts.size(), 1u);  // the plain script stays a user script
  EXPECT_EQ(c.scripts[0].name, "u.sh");
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_TRUE(has(c.warnings[0], "its script file name 'b.sh' comes again")) << c.warnings[0];
}

// #cloud-config-archive: its entries are parts where it stands, typed by
// `type` or by how they start (else text/cloud-config), as cloud-init's
// _explode_archive makes them.
TEST(ProvisionUserData, ACloudConfigArchiveIsExplodedIntoParts) {
  const std::string archive =
      "#cloud-config-archive\n"
      "- |\n  #cloud-config\n  hostname: first\n  runcmd: [one]\n"
      "- type: text/cloud-config\n  merge-type: 'list(append)+dict(recurse_array)+str()'\n"
      "  content: 'runcmd: [two]'\n"
      "- filename: setup.sh\n  content: |\n    #!/bin/sh\n    echo hi\n"
      "- type: text/x-shellscript-per-boot\n  filename: b.sh\n  launch-index: 1\n  content: \"#!/bin/sh\\ntrue\\n\"\n";
  CloudConfig c = parse_user_data(archive);
  ASSERT_EQ(c.parts.size(), 4u);
  EXPECT_EQ(c.parts[0].type, "text/cloud-config");
  EXPECT_EQ(c.parts[0].filename, "part-001");
  EXPECT_EQ(c.parts[1].type, "text/cloud-config");  // no header needed with a type
  EXPECT_EQ(c.parts[2].type, "text/x-shellscript");
  EXPECT_EQ(c.parts[2].filename, "setup.sh");
  EXPECT_EQ(c.hostname, "first");
  ASSERT_EQ(c.runcmd.size(), 2u);  // the second part appended by its Merge-Type
  EXPECT_EQ(c.runcmd[1].shell, "two");
  ASSERT_EQ(c.scripts.size(), 1u);
  EXPECT_EQ(c.scripts[0].name, "setup.sh");
  ASSERT_EQ(c.per_boot.size(), 1u);
  // The same archive as a MIME part.
  EXPECT_EQ(parse_user_data(multipart({part("text/cloud-config-archive", "a", archive)})).parts.size(), 4u);

  auto err = [](const std::string& text) { return error_of([&] { parse_user_data(text); }); };
  EXPECT_TRUE(has(err("#cloud-config-archive\nhostname: x\n"), "must be a YAML list of parts"));
  EXPECT_TRUE(has(err("#cloud-config-archive\n- [a, b]\n"), "entry 1 (line 2): an entry is a string or a mapping"));
  EXPECT_TRUE(has(err("#cloud-config-archive\n- '#cloud-config-archive\n\n  - x'\n"), "an archive inside an archive"))
      << err("#cloud-config-archive\n- '#cloud-config-archive\n\n  - x'\n");
  EXPECT_TRUE(has(err("#cloud-config-archive\n- content: {a: b}\n"), "'content' must be a string"));
}

// #cloud-config-jsonp: an RFC 6902 patch of what the parts before it made,
// as cloud-init applies it with python's jsonpatch (the cases follow the
// RFC's appendix A).
TEST(ProvisionUserData, JsonPatchPartsPatchTheMergedCloudConfig) {
  const std::string base = "#cloud-config\nhostname: h\npackages: [a, b, c]\nruncmd: [x]\n";
  auto with = [&](const std::string& patch) {
    return parse_user_data(multipart({part("text/cloud-config", "c.yaml", base),
                                      part("text/cloud-config-jsonp", "p.json", "#cloud-config-jsonp\n" + patch)}));
  };
  auto names = [](const CloudConfig& c) {
    std::string out;
    for (const auto& p : c.packages) out += p.name + " ";
    return out;
  };
  EXPECT_EQ(names(with(R"([{"op": "add", "path": "/packages/1", "value": "q"}])")), "a q b c ");       // A.2
  EXPECT_EQ(names(with(R"([{"op": "add", "path": "/packages/-", "value": "z"}])")), "a b c z ");      // A.16
  EXPECT_EQ(names(with(R"([{"op": "remove", "path": "/packages/0"}])")), "b c ");                     // A.4
  EXPECT_EQ(names(with(R"([{"op": "replace", "path": "/packages/2", "value": "r"}])")), "a b r ");    // A.5
  EXPECT_EQ(names(with(R"([{"op": "move", "from": "/packages/0", "path": "/packages/2"}])")), "b c a ");  // A.7
  EXPECT_EQ(names(with(R"([{"op": "copy", "from": "/packages/0", "path": "/packages/-"}])")), "a b c a ");
  CloudConfig added = with(R"([{"op": "add", "path": "/timezone", "value": "UTC"}, {"op": "remove", "path": "/runcmd"}])");
  EXPECT_EQ(added.timezone, "UTC");  // A.1, A.3
  EXPECT_TRUE(added.runcmd.empty());
  CloudConfig moved = with(R"([{"op": "move", "from": "/hostname", "path": "/fqdn"}])");  // A.6
  EXPECT_EQ(moved.hostname, "");
  EXPECT_EQ(moved.fqdn, "h");
  // A.8: a passing test changes nothing; the patch is taken whole.
  EXPECT_EQ(names(with(R"([{"op": "test", "path": "/packages/0", "value": "a"}, {"op": "remove", "path": "/packages/0"}])")),
            "b c ");
  // A.10 nested; ~1 is '/' (A.14).
  CloudConfig nested = with(R"([{"op": "add", "path": "/write_files", "value": [{"path": "/etc/a~b", "content": "x"}]},
                               {"op": "add", "path": "/write_files/0/permissions", "value": "0600"}])");
  ASSERT_EQ(nested.write_files.size(), 1u);
  EXPECT_EQ(nested.write_files[0].path, "/etc/a~b");
  EXPECT_EQ(nested.write_files[0].permissions, 0600u);
  // A plain jsonp user-data patches an empty config.
  EXPECT_EQ(parse_user_data("#cloud-config-jsonp\n[{\"op\": \"add\", \"path\": \"/hostname\", \"value\": \"j\"}]\n").hostname,
            "j");

  auto err = [&](const std::string& patch) { return error_of([&] { with(patch); }); };
  EXPECT_EQ(err(R"([{"op": "test", "path": "/hostname", "value": "h"}])"), "");  // negative control
  EXPECT_TRUE(has(err(R"([{"op": "test", "path": "/hostname", "value": "other"}])"), "operation 1 ('test' /hostname): the test failed"));  // A.9
  EXPECT_TRUE(has(err(R"([{"op": "add", "path": "/nothere/x", "value": 1}])"), "no member 'nothere'"));  // A.12
  EXPECT_TRUE(has(err(R"([{"op": "remove", "path": "/packages/7"}])"), "no element '7'"));
  EXPECT_TRUE(has(err(R"([{"op": "replace", "path": "/timezone", "value": "UTC"}])"), "no member 'timezone'"));
  EXPECT_TRUE(has(err(R"([{"op": "move", "from": "/packages", "path": "/packages/0"}])"), "cannot move into itself"));
  EXPECT_TRUE(has(err(R"([{"op": "frob", "path": "/a"}])"), "'frob' is not an operation"));
  EXPECT_TRUE(has(err(R"({"op": "add"})"), "a JSON patch is a list of operations"));
  EXPECT_TRUE(has(err(R"([{"op": "add", "path": "hostname", "value": 1}])"), "is not a JSON pointer"));
  EXPECT_TRUE(has(err(R"([{"op": "replace", "path": "", "value": [1]}])"), "the patched cloud-config is no mapping"));
  EXPECT_TRUE(has(err(R"([{"op": "add", "path": "/packages/01", "value": "q"}])"), "no element '01'"));
  // The patch gets the checks of any cloud-config's YAML: depth, above all.
  std::string deep = "1";
  for (int i = 0; i < 300; ++i) deep = "[" + deep + "]";
  EXPECT_TRUE(has(err(R"([{"op": "add", "path": "/x", "value": )" + deep + "}]"), "nested too deeply"));
  // The patched config is checked like any other: a wrong type is named.
  EXPECT_TRUE(has(err(R"([{"op": "replace", "path": "/packages", "value": 5}])"), "packages")) 
      << err(R"([{"op": "replace", "path": "/packages", "value": 5}])");
}

// #include lists: without a fetcher their URLs are listed (what --check
// shows); with one, each URL's content is user-data of its own whose parts
// stand where the list stood, as cloud-init's _do_include attaches them.
TEST(ProvisionUserData, IncludeListsAreListedOrFollowed) {
  const std::string list =
      "#include\n# a comment\nhttp://example.test/a.yaml\n\n#include-once https://example.test/b.sh\n";
  CloudConfig listed = parse_user_data(list);
  EXPECT_EQ(listed.includes, (std::vector<std::string>{"http://example.test/a.yaml", "https://example.test/b.sh"}));
  ASSERT_EQ(listed.parts.size(), 1u);
  EXPECT_EQ(listed.parts[0].type, "text/x-include-url");

  std::map<std::string, std::string> web = {
      {"http://example.test/a.yaml", "#cloud-config\nhostname: from-a\nruncmd: [a]\n"},
      {"https://example.test/b.sh", "#!/bin/sh\necho b\n"},
      {"http://example.test/nested", "#include\nhttp://example.test/a.yaml\n"},
      {"http://example.test/loop", "#include http://example.test/loop\n"},
  };
  std::vector<std::string> asked;
  Fetcher fetch = [&](const std::string& url) {
    asked.push_back(url);
    auto it = web.find(url);
    if (it == web.end()) throw Error("#include: fetching " + url + " failed (404)");
    return it->second;
  };
  std::string m = multipart({part("text/cloud-config", "first.yaml", "#cloud-config\nruncmd: [first]\n"),
                             part("text/x-include-url", "urls", list)});
  CloudConfig c = parse_user_data(m, nlohmann::json::object(), fetch);
  EXPECT_EQ(asked, (std::vector<std::string>{"http://example.test/a.yaml", "https://example.test/b.sh"}));
  EXPECT_TRUE(c.includes.empty());
  EXPECT_EQ(c.hostname, "from-a");
  ASSERT_EQ(c.runcmd.size(), 1u);  // parts merge with dict(replace): the included part's runcmd wins
  EXPECT_EQ(c.runcmd[0].shell, "a");
  ASSERT_EQ(c.scripts.size(), 1u);
  ASSERT_EQ(c.parts.size(), 3u);
  EXPECT_TRUE(has(c.parts[1].note, "from http://example.test/a.yaml")) << c.parts[1].note;
  EXPECT_EQ(c.parts[2].filename, "part-003");
  // Nested lists are followed; a loop stops at the depth limit.
  asked.clear();
  EXPECT_EQ(parse_user_data("#include http://example.test/nested\n", nlohmann::json::object(), fetch).hostname, "from-a");
  EXPECT_EQ(asked.size(), 2u);
  auto err = [&](const std::string& text) { return error_of([&] { parse_user_data(text, nlohmann::json::object(), fetch); }); };
  EXPECT_TRUE(has(err("#include http://example.test/loop\n"), "nested more than 4 deep"));
  EXPECT_TRUE(has(err("#include http://example.test/missing\n"), "fetching http://example.test/missing failed (404)"));
  EXPECT_TRUE(has(error_of([] { parse_user_data("#include\nfile:///etc/shadow\n"); }), "is not an http:// or https:// URL"));
  EXPECT_TRUE(has(error_of([] { parse_user_data("#include\n# nothing\n"); }), "names no URL"));
}

// write_files[].source: an http(s) URI and headers, checked as read.
TEST(ProvisionUserData, WriteFilesSourcesAreReadAndChecked) {
  CloudConfig c = parse_user_data(
      "#cloud-config\nwrite_files:\n  - path: /a\n    content: fallback\n"
      "    source:\n      uri: https://example.test/a\n      headers: {Authorization: 'Bearer t', X-One: '1'}\n");
  ASSERT_EQ(c.write_files.size(), 1u);
  EXPECT_EQ(c.write_files[0].source_uri, "https://example.test/a");
  EXPECT_EQ(c.write_files[0].source_headers,
            (std::vector<std::pair<std::string, std::string>>{{"Authorization", "Bearer t"}, {"X-One", "1"}}));
  EXPECT_TRUE(c.write_files[0].has_content);
  EXPECT_FALSE(parse_user_data("#cloud-config\nwrite_files:\n  - path: /a\n    source: {uri: 'http://e.test/'}\n")
                   .write_files[0]
                   .has_content);
  auto err = [](const std::string& source) {
    return error_of([&] { parse_user_data("#cloud-config\nwrite_files:\n  - path: /a\n    source: " + source + "\n"); });
  };
  EXPECT_EQ(err("{uri: 'http://e.test/'}"), "");  // negative control
  EXPECT_TRUE(has(err("{uri: 'file:///etc/shadow'}"), "must be an http:// or https:// URL"));
  EXPECT_TRUE(has(err("{headers: {a: b}}"), ".source.uri' is missing"));
  EXPECT_TRUE(has(err("'http://e.test/'"), "must be a mapping")) << err("'http://e.test/'");
  EXPECT_TRUE(has(err("{uri: 'http://e.test/', headers: {'a b': c}}"), "is not a header name"));
  EXPECT_TRUE(has(err("{uri: 'http://e.test/', headers: {a: \"x\\ny\"}}"), "holds a line break"));
  EXPECT_TRUE(has(err("{uri: 'http://e.test/', headers: {a: \"x\\0y\"}}"), "holds a line break or a NUL"));
  EXPECT_TRUE(has(err("{uri: \"http://e.test/\\0x\"}"), "must be an http:// or https:// URL"));
  for (const char* name : {"Host", "content-length", "Transfer-Encoding", "CONNECTION"})
    EXPECT_TRUE(has(err(std::string("{uri: 'http://e.test/', headers: {") + name + ": x}}"), "is the fetcher's to set"))
        << name;
  // An unknown key is a warning naming it, as everywhere.
  CloudConfig w = parse_user_data("#cloud-config\nwrite_files:\n  - path: /a\n    source: {uri: 'http://e.test/', method: post}\n");
  ASSERT_EQ(w.warnings.size(), 1u);
  EXPECT_TRUE(has(w.warnings[0], "write_files[0].source.method")) << w.warnings[0];
}

TEST(ProvisionUserData, APlainCloudConfigIsReadAsBefore) {
  const std::string text = "#cloud-config\nhostname: a\n";
  CloudConfig c = parse_user_data(text);
  EXPECT_EQ(c.canonical, text);  // the cache keys of existing images stay
  ASSERT_EQ(c.parts.size(), 1u);
  EXPECT_EQ(c.parts[0].type, "text/cloud-config");
  EXPECT_EQ(c.parts[0].filename, "part-001");
  // "mime-version:" inside a cloud-config does not make it MIME (no header
  // at the top: the whole is the body, as in Python's email).
  CloudConfig inside = parse_user_data("#cloud-config\nwrite_files:\n  - path: /m\n    content: 'MIME-Version: 1.0'\n");
  EXPECT_EQ(inside.write_files.at(0).content, "MIME-Version: 1.0");
  EXPECT_TRUE(inside.warnings.empty());
  // merge_how in a plain cloud-config is checked and no module.
  EXPECT_TRUE(parse_user_data("#cloud-config\nmerge_how: 'dict(recurse_array,no_replace)+list(append)'\n").warnings.empty());
}

}  // namespace
}  // namespace ultari::provision
