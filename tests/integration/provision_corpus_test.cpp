// `ultari image provision --check` against cloud-init's own corpus and
// validator. The corpus is the example user-data Debian's cloud-init
// package ships (/usr/share/doc/cloud-init/examples), fetched once with
// `apt-get download cloud-init` into <build>/test-corpus (kept between runs,
// never installed on the host). The oracle is cloud-init 22.4's
// `cloud-init schema --config-file` verdict, repeated by
// tests/data/provision/corpus_oracle.py with python3-yaml and
// python3-jsonschema against the schema of the same package.
//
//   - every #cloud-config example: Ultari's verdict (exit 0 / 125) is the
//     oracle's (valid / invalid) but for kExpectedDifferences, each a
//     deliberate refusal of Ultari that must still be one; for the valid
//     ones every top-level key is in the plan or in a warning;
//   - every other example: a user script (#!) is taken (its plan is
//     scripts_user); an #include list is taken, its URLs listed (--check
//     fetches nothing); part handlers, a cloud-config archive holding a
//     made-up type and text that is no user-data format are refused, each
//     with its reason;
//   - type errors on the modules Ultari runs, plain scalars of the wrong
//     YAML type and YAML syntax errors: refused by both, Ultari naming the
//     line (and, where it gives one, the column) of the fault;
//   - unknown keys and modules Ultari does not run: warnings with the key
//     path and its line.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"

namespace ultari::test {
namespace {

using nlohmann::json;

// Where the corpus is kept: <build>/test-corpus, <build> being the
// directory of the ultari binary under test.
std::string corpus_cache() {
  std::string bin = ULTARI_BIN;
  return bin.substr(0, bin.rfind('/')) + "/test-corpus";
}
const char* const kPython = "/usr/bin/python3";
std::string oracle_script() { return std::string(ULTARI_TEST_DATA) + "/provision/corpus_oracle.py"; }

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// sh -c SCRIPT with stderr joined to stdout.
struct Shell {
  int status = -1;
  std::string out;
};
Shell shell(const std::string& script) {
  Shell r;
  FILE* p = popen(("(" + script + ") 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return r;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

struct Corpus {
  std::string examples;  // the examples directory, .gz files unpacked
  std::string schema;    // schema-cloud-config-v1.json
  std::string version;   // of the cloud-init package
  std::string problem;   // why there is no corpus (the tests fail with it)
};

// Downloads and unpacks cloud-init once: under an flock of
// <cache>/lock, so that parallel test processes wait for the first one,
// and marked complete by <cache>/ready (written last).
const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus c;
    std::string dir = corpus_cache();
    c.examples = dir + "/examples";
    c.schema = dir + "/root/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json";
    if (shell("mkdir -p " + quote(dir)).status != 0) {
      c.problem = "cannot create " + dir;
      return c;
    }
    int lock = open((dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0 || flock(lock, LOCK_EX) != 0) {
      c.problem = "cannot lock " + dir + "/lock";
      if (lock >= 0) close(lock);
      return c;
    }
    if (!exists(dir + "/ready")) {
      // apt-get download needs the package lists: without them (a fresh
      // container) `apt-get update` once. No sandbox user: the directory
      // is root's.
      Shell r = shell("set -e; cd " + quote(dir) + "; rm -rf deb root examples ready; mkdir deb; cd deb; "
                      "apt-cache show cloud-init >/dev/null 2>&1 || apt-get update -q; "
                      "apt-get -q -o APT::Sandbox::User=root download cloud-init; cd ..; "
                      "dpkg-deb -x deb/cloud-init_*.deb root; "
                      "cp -r root/usr/share/doc/cloud-init/examples examples; "
                      "find examples -name '*.gz' -exec gunzip {} +; "
                      "test -s " + quote(c.schema) + "; "
                      "dpkg-deb -f deb/cloud-init_*.deb Version > version; touch ready");
      if (r.status != 0)
        c.problem = "could not get cloud-init's examples and schema into " + dir +
                    " (apt-get download cloud-init; dpkg-deb -x): exit " + std::to_string(r.status) + ":\n" + r.out;
    }
    close(lock);
    if (c.problem.empty()) {
      c.version = read_file(dir + "/version");
      if (!c.version.empty() && c.version.back() == '\n') c.version.pop_back();
    }
    return c;
  }();
  return c;
}

// The oracle's verdicts on `files`: {path: {valid, errors, deprecations, top}}.
json oracle(const std::vector<std::string>& files, std::string* problem) {
  TempDir t;
  std::string cmd = std::string(kPython) + " " + quote(oracle_script()) + " " + quote(corpus().schema);
  for (const auto& f : files) cmd += " " + quote(f);
  cmd += " > " + quote(t / "out.json") + " 2> " + quote(t / "err.txt");
  int st = std::system(cmd.c_str());
  try {
    json v = json::parse(read_file(t / "out.json"));
    if (st == 0 && v.size() == files.size()) return v;
  } catch (...) {
  }
  *problem = "the oracle failed (" + cmd + "): " + read_file(t / "err.txt");
  return json();
}

// Files under `dir` (recursively), sorted, relative to it.
std::vector<std::string> files_under(const std::string& dir) {
  Shell r = shell("cd " + quote(dir) + " && find . -type f | sed 's|^\\./||' | LC_ALL=C sort");
  std::vector<std::string> v;
  std::istringstream in(r.out);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

std::string first_line(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string l;
  std::getline(in, l);
  while (!l.empty() && (l.back() == '\r' || l.back() == ' ' || l.back() == '\t')) l.pop_back();
  return l;
}

// "user-data line L, column C: ..." -> (L, C); C is 0 when not given, L 0
// when there is no line at all.
std::pair<int, int> position(const std::string& err) {
  static const std::regex re("user-data line ([0-9]+)(, column ([0-9]+))?");
  std::smatch m;
  if (!std::regex_search(err, m, re)) return {0, 0};
  return {std::stoi(m[1]), m[3].matched ? std::stoi(m[3]) : 0};
}

// Differences of verdict between cloud-init's schema and Ultari that are
// Ultari's choice: the oracle takes the example, Ultari refuses it with an
// error containing `refusal`. Each must still be a difference (the test
// fails otherwise: then remove it). Checked by hand: with the refused part
// taken out, each of these examples is accepted.
struct Expected {
  const char* refusal;  // in Ultari's error
  const char* why;
};
const std::map<std::string, Expected> kExpectedDifferences = {
    // apt.sources entries name their keys by short key IDs (F430BBA5),
    // which anyone can give a key of theirs: Ultari fetches keys by
    // fingerprint or long ID only.
    {"cloud-config-apt.txt", {"is a short key ID", "short key IDs are refused"}},
    // users[5] is `snapuser: joe@joeuser.io`: `snap create-user` asks the
    // Ubuntu SSO for the account at boot; Ultari creates users it is given
    // a name for.
    {"cloud-config-user-groups.txt", {"'users[5]", "snapuser entries (no name) are refused"}},
    // write_files[0] is `encoding: b64` with content truncated by '...'
    // ("Content strings here are truncated for example purposes"):
    // cloud-init's base64.b64decode drops the dots and writes whatever is
    // left; Ultari refuses content that is not base64.
    {"cloud-config-write-files.txt", {"is not valid base64", "truncated base64 content is refused"}},
};

// Which plan entry a top-level key of a module Ultari runs leads to.
const std::map<std::string, std::string> kPlanOf = {
    {"bootcmd", "bootcmd"},          {"runcmd", "runcmd"},         {"write_files", "write_files"},
    {"users", "users"},              {"user", "users"},            {"groups", "groups"},
    {"apt", "apt"},                  {"packages", "packages"},     {"package_update", "packages"},
    {"apt_update", "packages"},      {"package_upgrade", "packages"}, {"apt_upgrade", "packages"},
    {"locale", "locale"},            {"timezone", "timezone"},     {"hostname", "hostname"},
    {"fqdn", "hostname"},            {"ca_certs", "ca_certs"},     {"ca-certs", "ca_certs"},
};

class ProvisionCorpus : public ::testing::Test {
 protected:
  // One private store per process with a tiny busybox image, BASE of every
  // --check (made on first use: a failure fails the test, not skips it).
  struct Store {
    TempDir dir;
    std::string problem;
  };
  static const Store& store() {
    if (!store_) {
      store_ = std::make_unique<Store>();
      std::string root = store_->dir / "root";
      Shell r = shell("set -e; mkdir -p " + root + "/bin; cp /usr/bin/busybox " + root + "/bin/; ln -s busybox " +
                      root + "/bin/sh");
      if (r.status != 0) {
        store_->problem = "cannot make the base root: " + r.out;
      } else {
        Outcome o = ultari::test::ultari({"image", "import", "-q", "base", root}, options(*store_));
        if (o.status != 0) store_->problem = "ultari image import base: " + o.err;
      }
    }
    return *store_;
  }
  static Options options(const Store& s) {
    Options o;
    o.env.push_back("ULTARI_DATA_DIR=" + (s.dir / "data"));
    return o;
  }
  static void TearDownTestSuite() { store_.reset(); }
  static Outcome check(const std::string& file) {
    return ultari::test::ultari(
        {"image", "provision", "corpus-check", "--from", "base", "--user-data", file, "--check", "--json"},
        options(store()));
  }
  void SetUp() override {
    ASSERT_TRUE(corpus().problem.empty()) << corpus().problem;
    ASSERT_TRUE(store().problem.empty()) << store().problem;
  }

  // A case written as YAML after the #cloud-config line (line 1): the line
  // and column of the fault (column 0: not checked) and what Ultari's error
  // must mention ("": nothing in particular).
  struct Case {
    const char* name;
    const char* yaml;
    int line;
    int column;
    const char* mention;
  };
  // Both must refuse every case: the oracle (any reason) and Ultari (exit
  // 125, one error line naming line/column of the fault and `mention`).
  void expect_refused_by_both(const std::vector<Case>& cases) {
    TempDir t;
    std::vector<std::string> files;
    for (const auto& c : cases) {
      files.push_back(t / (std::string(c.name) + ".yaml"));
      write_file(files.back(), std::string("#cloud-config\n") + c.yaml);
    }
    std::string problem;
    json verdicts = oracle(files, &problem);
    ASSERT_TRUE(problem.empty()) << problem;
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      std::string text = std::string("#cloud-config\n") + c.yaml;
      SCOPED_TRACE(std::string(c.name) + ":\n" + text);
      const json& v = verdicts[files[i]];
      EXPECT_FALSE(v["valid"].get<bool>()) << "cloud-init's schema takes it: the case is no fault";
      Outcome r = check(files[i]);
      EXPECT_EQ(r.status, 125) << "ultari accepted it: " << r.out << r.err;
      if (r.status != 125) continue;
      EXPECT_EQ(r.err.rfind("ultari: error: ", 0), 0u) << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      auto [line, column] = position(r.err);
      EXPECT_EQ(line, c.line) << r.err << "oracle: " << v["errors"].dump();
      if (c.column && column) {
        EXPECT_EQ(column, c.column) << r.err;
      }
      if (*c.mention) {
        EXPECT_TRUE(has(r.err, c.mention)) << "no '" << c.mention << "' in: " << r.err;
      }
    }
  }

  static std::unique_ptr<Store> store_;
};
std::unique_ptr<ProvisionCorpus::Store> ProvisionCorpus::store_;

TEST_F(ProvisionCorpus, OracleIsCloudInitsValidator) {
  // The oracle itself: $ref into $defs followed (write_files is
  // #/$defs/cc_write_files), deprecations only reported, unknown top-level
  // keys allowed (the schema has no additionalProperties there), a
  // document that is not a mapping refused.
  TempDir t;
  std::map<std::string, std::string> texts = {
      {"ref", "#cloud-config\nwrite_files: [{path: /a, append: maybe}]\n"},
      {"deprecated", "#cloud-config\nusers: [{name: a, sudo: false}]\nca-certs: {remove_defaults: true}\n"},
      {"unknown", "#cloud-config\npackagez: [a]\n"},
      {"list", "#cloud-config\n- a\n"},
      {"script", "#!/bin/sh\necho hi\n"},
  };
  std::vector<std::string> files;
  for (const auto& [name, text] : texts) {
    files.push_back(t / name);
    write_file(files.back(), text);
  }
  std::string problem;
  json v = oracle(files, &problem);
  ASSERT_TRUE(problem.empty()) << problem;
  EXPECT_FALSE(v[t / "ref"]["valid"].get<bool>());
  EXPECT_TRUE(has(v[t / "ref"]["errors"].dump(), "write_files.0.append")) << v[t / "ref"].dump();
  EXPECT_TRUE(v[t / "deprecated"]["valid"].get<bool>()) << v[t / "deprecated"].dump();
  EXPECT_EQ(v[t / "deprecated"]["deprecations"].size(), 2u) << v[t / "deprecated"].dump();
  EXPECT_TRUE(v[t / "unknown"]["valid"].get<bool>()) << v[t / "unknown"].dump();
  EXPECT_FALSE(v[t / "list"]["valid"].get<bool>());
  EXPECT_FALSE(v[t / "script"]["valid"].get<bool>());
}

TEST_F(ProvisionCorpus, CloudConfigExamplesGetCloudInitsVerdict) {
  const Corpus& c = corpus();
  std::vector<std::string> names, files;
  for (const auto& f : files_under(c.examples))
    if (first_line(c.examples + "/" + f) == "#cloud-config") {
      names.push_back(f);
      files.push_back(c.examples + "/" + f);
    }
  ASSERT_GE(files.size(), 20u) << "too few #cloud-config examples in cloud-init " << c.version;
  std::string problem;
  json verdicts = oracle(files, &problem);
  ASSERT_TRUE(problem.empty()) << problem;

  std::set<std::string> seen_differences;
  int valid = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string& name = names[i];
    SCOPED_TRACE(name + " (cloud-init " + c.version + ")");
    const json& v = verdicts[files[i]];
    bool oracle_valid = v["valid"].get<bool>();
    Outcome r = check(files[i]);
    ASSERT_TRUE(r.status == 0 || r.status == 125) << r.status << ": " << r.err;
    bool ultari_valid = r.status == 0;
    auto expected = kExpectedDifferences.find(name);
    if (expected != kExpectedDifferences.end()) {
      seen_differences.insert(name);
      EXPECT_TRUE(oracle_valid && !ultari_valid)
          << "no longer an expected difference (" << expected->second.why
          << "): remove it from kExpectedDifferences. oracle: " << v.dump() << "\nultari: " << r.status << " " << r.err;
      EXPECT_TRUE(has(r.err, expected->second.refusal))
          << "refused, but not for the reason listed (" << expected->second.why << "): " << r.err;
      continue;
    }
    EXPECT_EQ(ultari_valid, oracle_valid) << "cloud-init's schema says " << (oracle_valid ? "valid" : "invalid")
                                          << ": " << v["errors"].dump() << "\nultari: exit " << r.status << " "
                                          << r.err;
    if (!ultari_valid || !oracle_valid) continue;
    ++valid;

    // Nothing dropped without a word: each top-level key is in the plan
    // (unless its value asks for nothing) or in a warning with its line.
    json out;
    try {
      out = json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "--json output: " << e.what() << ": " << r.out;
      continue;
    }
    std::vector<std::string> plan = out["plan"].get<std::vector<std::string>>();
    std::vector<std::string> warnings = out["warnings"].get<std::vector<std::string>>();
    for (const auto& top : v["top"]) {
      std::string key = top[0].get<std::string>();
      int line = top[1].get<int>();
      bool empty = top[2].get<bool>();
      auto module = kPlanOf.find(key);
      if (module != kPlanOf.end()) {
        bool planned = std::any_of(plan.begin(), plan.end(),
                                   [&](const std::string& p) { return p.rfind(module->second, 0) == 0; });
        EXPECT_TRUE(planned || empty) << "'" << key << "' (line " << line << ") is not in the plan: "
                                      << out.dump();
        continue;
      }
      if (key == "ultari") continue;
      std::string at = "user-data line " + std::to_string(line) + ": ";
      bool warned = std::any_of(warnings.begin(), warnings.end(), [&](const std::string& w) {
        return w.rfind(at, 0) == 0 && has(w, "'" + key);
      });
      EXPECT_TRUE(warned) << "'" << key << "' (line " << line << ") is neither run nor warned about: "
                          << out.dump();
    }
  }
  EXPECT_GE(valid, 15) << "too few examples compared";
  for (const auto& [name, e] : kExpectedDifferences)
    EXPECT_TRUE(seen_differences.count(name)) << name << " is no #cloud-config example of cloud-init " << c.version
                                              << " any more: remove it from kExpectedDifferences";
}

TEST_F(ProvisionCorpus, OtherExamplesAreRunOrRefusedWithTheirReason) {
  // Scripts, #include, part handlers, cloud-config-archive, the seed's
  // meta-data: not #cloud-config, refused by cloud-init's schema check. A
  // user script is user-data Ultari runs (scripts_user), an #include list
  // names URLs it fetches at provisioning, a part handler alone runs its
  // __begin__ and __end__ (part_handlers); the others are refused, the
  // message saying why.
  const Corpus& c = corpus();
  std::vector<std::string> files;
  for (const auto& f : files_under(c.examples))
    if (first_line(c.examples + "/" + f) != "#cloud-config") files.push_back(c.examples + "/" + f);
  ASSERT_GE(files.size(), 8u) << "too few other examples in cloud-init " << c.version;
  std::string problem;
  json verdicts = oracle(files, &problem);
  ASSERT_TRUE(problem.empty()) << problem;
  std::set<std::string> kinds;
  for (const auto& f : files) {
    SCOPED_TRACE(f);
    std::string first = first_line(f);
    kinds.insert(first.substr(0, 12));
    EXPECT_FALSE(verdicts[f]["valid"].get<bool>()) << verdicts[f].dump();
    Outcome r = check(f);
    if (first.rfind("#!", 0) == 0) {
      ASSERT_EQ(r.status, 0) << r.out << r.err;
      json out = json::parse(r.out);
      EXPECT_EQ(out["plan"], json({"scripts_user"})) << r.out;
      EXPECT_EQ(out["parts"][0]["type"], "text/x-shellscript") << r.out;
      continue;
    }
    if (first.rfind("#part-handler", 0) == 0) {
      ASSERT_EQ(r.status, 0) << r.out << r.err;
      json out = json::parse(r.out);
      EXPECT_EQ(out["plan"], json({"part_handlers"})) << r.out;
      EXPECT_EQ(out["parts"][0]["type"], "text/part-handler") << r.out;
      continue;
    }
    if (first.rfind("#include", 0) == 0) {  // its URLs, fetched at provisioning (not by --check)
      ASSERT_EQ(r.status, 0) << r.out << r.err;
      json out = json::parse(r.out);
      EXPECT_EQ(out["includes"].size(), 2u) << r.out;
      for (const auto& u : out["includes"]) EXPECT_TRUE(u.get<std::string>().rfind("http", 0) == 0) << r.out;
      continue;
    }
    EXPECT_EQ(r.status, 125) << r.out << r.err;
    // an archive's entries are parts: both examples hold one of the made-up type foo/wark
    const char* reason = first.rfind("#cloud-config-archive", 0) == 0 ? "'foo/wark' is not a type Ultari runs"
                                                                       : "'#cloud-config'";
    EXPECT_TRUE(has(r.err, reason)) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  for (const char* kind : {"#cloud-confi", "#include", "#part-handle", "#!/bin/sh"})
    EXPECT_TRUE(kinds.count(kind)) << "no example starting with " << kind;
}

TEST_F(ProvisionCorpus, TypeErrorsInSupportedModulesNameTheirLine) {
  // Line 2 is always `hostname: box`: the fault is never on the first
  // line of the YAML.
  expect_refused_by_both({
      {"packages-int", "hostname: box\npackages: 5\n", 3, 11, "packages"},
      {"packages-list-of-one", "hostname: box\npackages:\n  - [a]\n", 4, 5, "packages[0]"},
      {"runcmd-string", "hostname: box\nruncmd: \"ls\"\n", 3, 9, "runcmd"},
      {"runcmd-nested-list", "hostname: box\nruncmd:\n  - [ls, [x]]\n", 4, 10, "runcmd[0]"},
      {"bootcmd-map", "hostname: box\nbootcmd:\n  - {a: b}\n", 4, 5, "bootcmd[0]"},
      {"write-files-map", "hostname: box\nwrite_files:\n  path: /a\n", 4, 3, "write_files"},
      {"write-files-no-path", "hostname: box\nwrite_files:\n  - content: x\n", 4, 5, "write_files[0].path"},
      {"write-files-append", "hostname: box\nwrite_files:\n  - path: /a\n    append: maybe\n", 5, 13,
       "write_files[0].append"},
      {"write-files-defer-quoted", "hostname: box\nwrite_files:\n  - path: /a\n    defer: \"true\"\n", 5, 12,
       "write_files[0].defer"},
      {"write-files-encoding", "hostname: box\nwrite_files:\n  - path: /a\n    encoding: rot13\n", 5, 15,
       "write_files[0].encoding"},
      {"users-name-list", "hostname: box\nusers:\n  - name: [x]\n", 4, 11, "users[0].name"},
      {"users-lock-passwd", "hostname: box\nusers:\n  - name: a\n    lock_passwd: maybe\n", 5, 18,
       "users[0].lock_passwd"},
      {"users-shell-list", "hostname: box\nusers:\n  - name: a\n    shell: [sh]\n", 5, 12,
       "users[0].shell"},
      {"groups-int", "hostname: box\ngroups: 5\n", 3, 9, "groups"},
      {"package-update", "hostname: box\npackage_update: sometimes\n", 3, 17, "package_update"},
      {"apt-upgrade", "hostname: box\napt_upgrade: [true]\n", 3, 14, "apt_upgrade"},
      {"locale-list", "hostname: box\nlocale: [a]\n", 3, 9, "locale"},
      {"timezone-map", "hostname: box\ntimezone: {a: b}\n", 3, 11, "timezone"},
      {"fqdn-list", "hostname: box\nfqdn: [a]\n", 3, 7, "fqdn"},
      {"ca-certs-trusted-int", "hostname: box\nca_certs:\n  trusted: 5\n", 4, 12, "ca_certs.trusted"},
      // A string where the schema wants a list: cloud-init does not split
      // it at commas (a key's from="a,b" option stays whole).
      {"ca-certs-trusted-string", "hostname: box\nca_certs:\n  trusted: '-----BEGIN CERTIFICATE-----'\n", 4, 12,
       "ca_certs.trusted"},
      {"users-ssh-keys-string",
       "hostname: box\nusers:\n  - name: a\n    ssh_authorized_keys: 'from=\"10.0.0.1,10.0.0.2\" ssh-ed25519 AAAA a@b'\n",
       5, 26, "users[0].ssh_authorized_keys"},
      {"ca-certs-remove-defaults", "hostname: box\nca_certs:\n  remove_defaults: 1\n", 4, 20,
       "ca_certs.remove_defaults"},
      {"apt-sources-list", "hostname: box\napt:\n  sources: [a]\n", 4, 12, "apt.sources"},
      {"apt-primary-map", "hostname: box\napt:\n  primary: {uri: 'http://x'}\n", 4, 12, "apt.primary"},
  });
}

TEST_F(ProvisionCorpus, PlainScalarsKeepTheirYamlType) {
  // YAML (1.1, PyYAML's, as cloud-init reads it) gives unquoted 5, 0644,
  // 2032-09-01 as an int or a date, not a string, and only
  // true/false/yes/no/on/off as booleans: where the schema wants a string
  // (or a boolean) these are type errors.
  expect_refused_by_both({
      {"timezone-int", "hostname: box\ntimezone: 5\n", 3, 11, "timezone"},
      {"users-int", "hostname: box\nusers: 5\n", 3, 8, "users"},
      {"user-int", "hostname: box\nuser: 5\n", 3, 7, "user"},
      {"runcmd-item-int", "hostname: box\nruncmd: [ls, 5]\n", 3, 14, "runcmd[1]"},
      {"write-files-owner-int", "hostname: box\nwrite_files:\n  - path: /a\n    owner: 5\n", 5, 12,
       "write_files[0].owner"},
      // cloud-init's runtime takes an int as the mode itself (420 ==
      // 0644); read as octal digits it would be 0420.
      {"write-files-permissions-int", "hostname: box\nwrite_files:\n  - path: /a\n    permissions: 420\n", 5, 18,
       "write_files[0].permissions"},
      {"write-files-permissions-unquoted-octal",
       "hostname: box\nwrite_files:\n  - path: /a\n    permissions: 0644\n", 5, 18, "write_files[0].permissions"},
      {"users-sudo-int", "hostname: box\nusers:\n  - name: a\n    sudo: 5\n", 5, 11, "users[0].sudo"},
      {"users-expiredate-date", "hostname: box\nusers:\n  - name: a\n    expiredate: 2032-09-01\n", 5, 17,
       "users[0].expiredate"},
      {"users-ssh-keys-int", "hostname: box\nusers:\n  - name: a\n    ssh_authorized_keys: 5\n", 5, 26,
       "users[0].ssh_authorized_keys"},
      {"package-upgrade-y", "hostname: box\npackage_upgrade: y\n", 3, 18, "package_upgrade"},
  });
}

TEST_F(ProvisionCorpus, YamlSyntaxErrorsNameTheirLine) {
  // The line is where the fault is: the bad indentation, the tab, the
  // opening quote that is never closed, the second document.
  expect_refused_by_both({
      {"bad-indentation", "hostname: box\npackages:\n  - a\n - b\nruncmd: [ls]\n", 5, 0, ""},
      {"bad-indentation-in-map", "hostname: box\nwrite_files:\n  - path: /a\n     content: x\n", 5, 0, ""},
      {"tab-indentation", "hostname: box\nruncmd:\n\t- ls\n", 4, 0, ""},
      {"tab-indentation-later", "hostname: box\nruncmd:\n  - ls\n\t- pwd\n", 5, 0, ""},
      {"unclosed-double-quote", "hostname: box\nruncmd:\n  - \"echo hi\n  - ls\n", 4, 0, ""},
      {"unclosed-single-quote", "hostname: box\nruncmd:\n  - 'echo hi\n", 4, 0, ""},
      {"unclosed-quote-in-flow", "hostname: box\nruncmd: ['ls]\npackages: [a]\n", 3, 0, ""},
      {"unclosed-quote-in-map", "hostname: box\nwrite_files:\n  - path: /etc/motd\n    content: \"hello\n", 5, 0, ""},
      {"two-documents", "hostname: box\nruncmd: [ls]\n---\nruncmd: [reboot]\n", 4, 0, ""},
  });
}

TEST_F(ProvisionCorpus, UnknownKeysAndModulesNotRunAreWarnings) {
  TempDir t;
  std::string file = t / "user-data";
  write_file(file,
             "#cloud-config\n"                 // 1
             "hostname: box\n"                 // 2
             "write_files:\n"                  // 3
             "  - path: /etc/a\n"              // 4
             "    content: x\n"                // 5
             "    mode: '0600'\n"              // 6
             "packagez: [curl]\n"              // 7
             "ntp:\n"                          // 8
             "  enabled: true\n"               // 9
             "  servers: [ntp.example.com]\n"  // 10
             "runcmd: [ls]\n");                // 11
  Outcome r = check(file);
  ASSERT_EQ(r.status, 0) << r.err;
  json out = json::parse(r.out);
  EXPECT_EQ(out["plan"], json({"write_files", "hostname", "runcmd"})) << out.dump();
  std::vector<std::string> w = out["warnings"].get<std::vector<std::string>>();
  ASSERT_EQ(w.size(), 3u) << out.dump();
  auto warned = [&](int line, const std::vector<std::string>& parts) {
    std::string at = "user-data line " + std::to_string(line) + ": ";
    return std::any_of(w.begin(), w.end(), [&](const std::string& s) {
      return s.rfind(at, 0) == 0 &&
             std::all_of(parts.begin(), parts.end(), [&](const std::string& p) { return has(s, p); });
    });
  };
  EXPECT_TRUE(warned(6, {"'write_files[0].mode'", "unknown key"})) << out.dump();
  EXPECT_TRUE(warned(7, {"'packagez'", "unknown key"})) << out.dump();
  EXPECT_TRUE(warned(8, {"'ntp'", "not run"})) << out.dump();
  // The same warnings on stderr, one line each.
  for (const auto& s : w) EXPECT_TRUE(has(r.err, "ultari: warning: " + s + "\n")) << r.err;
  // cloud-init's schema refuses the unknown write_files key, takes the rest.
  std::string problem;
  json v = oracle({file}, &problem);
  ASSERT_TRUE(problem.empty()) << problem;
  EXPECT_FALSE(v[file]["valid"].get<bool>());
  EXPECT_TRUE(has(v[file]["errors"].dump(), "'mode' was unexpected")) << v[file].dump();
}

}  // namespace
}  // namespace ultari::test
