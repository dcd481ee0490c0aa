// Third independent attack review: rootless `ultari image provision` and
// `ultari image build`, the chown no-op seccomp variant, apt.sources keys
// ($KEY_FILE, dearmour, binary env files). A hostile base image, hostile
// user-data and hostile build steps against what the host does around the
// build (remove_tree, remove_beneath, commit, the rootless store), and a
// SIGKILL of ultari in the middle of a rootless debootstrap.
//
// Every test proves the attack fails, with a negative control showing that
// the test would see it succeed.
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness.h"

namespace ultari::test {
namespace {

using nlohmann::json;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string release() {
  utsname u{};
  uname(&u);
  return u.release;
}

class AttackReview3 : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(host("chmod 755 " + dir_.path()).status, 0); }
  // A private store; rootless: owned by the rootless user.
  Options opts(bool rootless, int timeout_s = 120) {
    Options o = rootless ? rootless_options() : Options{};
    o.timeout_s = timeout_s;
    std::string store = dir_ / (rootless ? "user-store" : "root-store");
    if (rootless) host("mkdir -p " + store + " && chown " + kRootlessUser + " " + store);
    o.env.push_back("ULTARI_DATA_DIR=" + store);
    return o;
  }
  std::string store(bool rootless) const { return dir_ / (rootless ? "user-store" : "root-store"); }
  // A static busybox root with a fake apt-get (the probe then takes it for
  // an apt system) and os-release VERSION_CODENAME=`codename`.
  std::string busybox_root(const std::string& name, const std::string& codename = "bbcode") {
    std::string r = dir_ / name;
    Outcome o = host("set -e; R=" + r +
                     "; mkdir -p $R/bin $R/usr/bin $R/etc/apt/apt.conf.d $R/etc/apt/sources.list.d $R/tmp $R/root && "
                     "cp /usr/bin/busybox $R/bin/ && "
                     "for c in $(/usr/bin/busybox --list); do [ \"$c\" = busybox ] || ln -sf busybox \"$R/bin/$c\"; done && "
                     "printf '#!/bin/sh\\necho fake apt-get \"$@\"\\n' > $R/usr/bin/apt-get && chmod 755 $R/usr/bin/apt-get && "
                     "printf 'root:x:0:0:root:/root:/bin/sh\\n' > $R/etc/passwd && printf 'root:x:0:\\n' > $R/etc/group && "
                     "printf 'ID=debian\\nVERSION_CODENAME=%s\\nVERSION_ID=12\\n' '" + codename + "' > $R/etc/os-release && "
                     "chmod 1777 $R/tmp && chmod -R a+rX $R && echo ok");
    EXPECT_EQ(o.out, "ok\n");
    return r;
  }
  bool import(bool rootless, const std::string& image, const std::string& root) {
    // Rootless, the tree is the caller's: a store that keeps owners refuses
    // host root's files in a directory import.
    if (rootless) {
      EXPECT_EQ(host("chown -R " + std::string(kRootlessUser) + ": " + root).status, 0);
    }
    Outcome o = ultari({"image", "import", image, root, "-q"}, opts(rootless));
    EXPECT_EQ(o.status, 0) << o.err;
    return o.status == 0;
  }
  Outcome provision(bool rootless, const std::string& image, const std::string& base, const std::string& user_data,
                    int timeout_s = 120) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    Outcome r = ultari({"image", "provision", image, "--from", base, "--user-data", file, "--json", "-q"},
                       opts(rootless, timeout_s));
    if (r.status == 0 && !r.out.empty()) {
      try {
        r.report = json::parse(r.out);
      } catch (const std::exception&) {
      }
    }
    return r;
  }
  std::string top_layer(bool rootless, const json& image) const {
    return store(rootless) + "/images/layers/" + image["layers"][0].get<std::string>();
  }
  // "mode owner content" of the victim tree: what a follow would change.
  std::string victim_state(const std::string& victim) const {
    return host("stat -c '%a %U' " + victim + " " + victim + "/keep " + victim +
                "/00ultari-rootless-build; cat " + victim + "/keep")
        .out;
  }
  TempDir dir_;
};

// --- 1. What a build plants does not reach the host ---------------------------

// The build writes its layer; after it the host removes pieces of it
// (remove_beneath: the rootless apt file, the engine's scaffolding, the
// kernel tree) and, when the build fails, the whole scratch (remove_tree,
// which opens up directories without owner rwx by chmod, as root on the
// rootful store since this change). Planted: symlinks to a victim directory
// where those paths are (etc/apt/apt.conf.d, lib/modules/<release>),
// a directory symlink inside a mode-0 setuid directory, a FIFO. The victim
// (mode 0500, holding a file named like the rootless apt file) must keep
// its modes and files, rootful and rootless, when the build succeeds and
// when it fails. Negative control: the committed layer holds the links,
// pointing at the victim (a follow would have reached it), and a chmod
// through one of them does change the victim.
const char* const kPlant =
    "#cloud-config\nruncmd:\n"
    "  - rm -rf /etc/apt/apt.conf.d && ln -s VICTIM /etc/apt/apt.conf.d\n"
    "  - mkdir -p /lib/modules && ln -s VICTIM /lib/modules/RELEASE\n"
    "  - mkdir -p /x/locked && ln -s VICTIM /x/locked/link && ln -s VICTIM /x/dirlink && mkfifo /x/fifo\n";

class Plant : public AttackReview3, public ::testing::WithParamInterface<bool> {};

TEST_P(Plant, LinksAndLockedDirectoriesAThatBuildPlantsNeverReachTheHost) {
  const bool rootless = GetParam();
  const std::string victim = dir_ / "victim";
  const passwd* pw = getpwnam(kRootlessUser);
  rootless_options();  // creates the user
  pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  // The victim is the caller's: rootless ultari could reach nothing else.
  ASSERT_EQ(host("mkdir " + victim + " && echo keep > " + victim + "/keep && echo k > " + victim +
                 "/00ultari-rootless-build && chmod 600 " + victim + "/keep " + victim +
                 "/00ultari-rootless-build && " + (rootless ? "chown -R " + std::string(kRootlessUser) + " " + victim + " && " : "") +
                 "chmod 500 " + victim)
                .status,
            0);
  const std::string before = victim_state(victim);
  ASSERT_TRUE(has(before, "500 ")) << before;
  ASSERT_TRUE(import(rootless, "bb", busybox_root("root")));
  std::string ud = kPlant;
  for (size_t p; (p = ud.find("VICTIM")) != std::string::npos;) ud.replace(p, 6, victim);
  for (size_t p; (p = ud.find("RELEASE")) != std::string::npos;) ud.replace(p, 7, release());

  // The failing build: the scratch is removed whole.
  // (A directory its owner cannot read fails a rootless commit: the
  // failing build only.)
  Outcome failed = provision(rootless, "planted-fail", "bb", ud + "  - chmod 6000 /x/locked /x\n  - exit 3\n");
  EXPECT_NE(failed.status, 0);
  EXPECT_EQ(victim_state(victim), before);
  EXPECT_EQ(host("ls -A " + store(rootless) + "/images/tmp").out, "") << "the failed build's scratch was left";

  // The succeeding build: pieces removed beneath, the rest committed.
  Outcome ok = provision(rootless, "planted", "bb", ud);
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(victim_state(victim), before);
  std::string layer = top_layer(rootless, ok.report);
  // Negative control: the links are there and lead to the victim.
  EXPECT_EQ(host("readlink " + layer + "/x/dirlink " + layer + "/etc/apt/apt.conf.d").out,
            victim + "\n" + victim + "\n");
  Outcome chmod_through = host(std::string(rootless ? "setpriv --reuid=" + std::to_string(pw->pw_uid) + " " : "") +
                               "chmod 700 " + layer + "/x/dirlink");
  EXPECT_EQ(chmod_through.status, 0);
  EXPECT_NE(victim_state(victim), before);
  EXPECT_EQ(host("ls -A " + store(rootless) + "/images/tmp").out, "");
}

INSTANTIATE_TEST_SUITE_P(AttackReview3, Plant, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Rootless" : "Rootful"; });

// --- 2. Setuid files of a rootless build ------------------------------------

// A rootless build may set setuid bits (setid_files, as dpkg does) and its
// chown does nothing: the file keeps the caller as its owner, never root,
// and it lives in the caller's 0700 store, which another host user cannot
// enter. Negative control: the caller reaches it, and it is setuid.
TEST_F(AttackReview3, ASetuidFileOfARootlessBuildIsTheCallersAndReachesNoOtherUser) {
  ASSERT_TRUE(import(true, "bb", busybox_root("root")));
  Outcome r = provision(true, "suid", "bb",
                        "#cloud-config\nruncmd:\n  - cp /bin/busybox /bin/suid && chown 0:0 /bin/suid && "
                        "chmod 6755 /bin/suid\n");
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string file = top_layer(true, r.report) + "/bin/suid";
  const passwd* pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  struct stat st{};
  ASSERT_EQ(lstat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, pw->pw_uid);  // not root: the chown did nothing
  EXPECT_NE(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 06000, 06000u);  // it is setuid (what makes the test meaningful)
  EXPECT_EQ(host("stat -c %a " + store(true) + "/images " + store(true) + "/images/layers").out, "700\n700\n");
  // Another user (nobody) cannot reach it.
  EXPECT_TRUE(has(host("setpriv --reuid=65534 --regid=65534 --clear-groups stat " + file + " 2>&1").out,
                  "Permission denied"));
  // Negative control: the caller can.
  EXPECT_EQ(host("setpriv --reuid=" + std::to_string(pw->pw_uid) + " --regid=" + std::to_string(pw->pw_gid) +
                 " --clear-groups stat -c %a " + file)
                .out,
            "6755\n");
}

// --- 3. Substitutions that never end ----------------------------------------

// VULNERABILITY (fixed): the build replaced $KEY_FILE in a source line with
// the key's path, again and again while the line still held "$KEY_FILE":
// a source `filename: $KEY_FILE.list` gives the key the path
// /etc/apt/cloud-init.gpg.d/$KEY_FILE.gpg, which holds it again, so ultari
// (on the host, outside every limit of the build) looped and grew the line
// forever. The same held for $MIRROR/$RELEASE/..., where a hostile base's
// os-release (VERSION_CODENAME=$RELEASE) or apt.primary's uri held the
// name. Now each is replaced once. Negative control: plain names are
// replaced (the key path in signed-by, the codename).
TEST_F(AttackReview3, ASubstitutionThatHoldsItsOwnNameDoesNotHangTheHost) {
  const std::string key = read_file(std::string(ULTARI_TEST_DATA) + "/provision/keys/test.asc");
  std::string indented;
  for (size_t s = 0, e; (e = key.find('\n', s)) != std::string::npos; s = e + 1)
    indented += "        " + key.substr(s, e - s) + "\n";
  auto ud = [&](const std::string& filename, const std::string& source, const std::string& primary) {
    return "#cloud-config\napt:\n" +
           (primary.empty() ? std::string() : "  primary:\n    - arches: [default]\n      uri: '" + primary + "'\n") +
           "  sources:\n    repo:\n      source: '" + source + "'\n      filename: '" + filename +
           "'\n      key: |\n" + indented;
  };
  ASSERT_TRUE(import(false, "bb", busybox_root("root")));
  ASSERT_TRUE(import(false, "hostile", busybox_root("root-hostile", "$RELEASE")));
  auto listed = [&](const Outcome& r, const std::string& file) {
    return r.report.is_object() ? host("cat " + top_layer(false, r.report) + "/etc/apt/sources.list.d/" + file).out
                                : "(no image: status " + std::to_string(r.status) + ") " + r.err;
  };
  auto timed = [&](const std::string& image, const std::string& base, const std::string& text) {
    auto start = std::chrono::steady_clock::now();
    Outcome r = provision(false, image, base, text, 40);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(35)) << image << " hung";
    return r;
  };

  // Negative control: the substitutions work.
  Outcome plain = timed("plain", "bb", ud("third.list", "deb [signed-by=$KEY_FILE] http://m/ $RELEASE main", ""));
  EXPECT_EQ(listed(plain, "third.list"), "deb [signed-by=/etc/apt/cloud-init.gpg.d/third.gpg] http://m/ bbcode main\n");
  if (plain.report.is_object()) {
    EXPECT_EQ(host("wc -c < " + top_layer(false, plain.report) + "/etc/apt/cloud-init.gpg.d/third.gpg").out, "238\n");
  }

  Outcome own = timed("own", "bb", ud("$KEY_FILE.list", "deb [signed-by=$KEY_FILE] http://m/ x main", ""));
  EXPECT_EQ(listed(own, "\\$KEY_FILE.list"), "deb [signed-by=/etc/apt/cloud-init.gpg.d/$KEY_FILE.gpg] http://m/ x main\n");
  Outcome base = timed("codename", "hostile", ud("r.list", "deb http://m/ $RELEASE main", ""));
  EXPECT_EQ(listed(base, "r.list"), "deb http://m/ $RELEASE main\n");
  Outcome mirror = timed("mirror", "bb", ud("m.list", "deb $MIRROR x main", "http://m/$MIRROR"));
  EXPECT_EQ(listed(mirror, "m.list"), "deb http://m/$MIRROR x main\n");
  // The key's path is put in last: a file name holding $RELEASE stays as
  // it is in signed-by (it is the key file's real name).
  Outcome named = timed("named", "bb", ud("$RELEASE.list", "deb [signed-by=$KEY_FILE] http://m/ $RELEASE main", ""));
  EXPECT_EQ(listed(named, "\\$RELEASE.list"),
            "deb [signed-by=/etc/apt/cloud-init.gpg.d/$RELEASE.gpg] http://m/ bbcode main\n");
  if (named.report.is_object()) {
    EXPECT_EQ(host("wc -c < " + top_layer(false, named.report) + "/etc/apt/cloud-init.gpg.d/\\$RELEASE.gpg").out, "238\n");
  }
}

// --- 4. A rootless debootstrap killed midway --------------------------------

// Rootless, debootstrap runs in its own user, pid and mount namespaces. A
// SIGKILL of ultari while it installs must leave no process of the build
// and no mount in the host's table; the next prune (or build, import, provision) of that user sweeps its
// directory from the store's tmp/. Controls: while it runs, its processes
// are there and one of them sees the target's /proc mounted (the host
// never does).
TEST_F(AttackReview3, ARootlessDebootstrapKilledMidwayLeavesNothing) {
  Options o = opts(true, 30);
  const passwd* pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  const std::string data = store(true), log = dir_ / "log";
  Outcome start = host("cd / && setpriv --reuid=" + std::to_string(pw->pw_uid) + " --regid=" +
                       std::to_string(pw->pw_gid) + " --init-groups --reset-env env PATH=/usr/bin:/bin HOME=" +
                       pw->pw_dir + " ULTARI_DATA_DIR=" + data + " setsid " + o.binary +
                       " image build k --debian bookworm --variant minbase >/dev/null 2>" + log + " & echo $!");
  ASSERT_EQ(start.status, 0);
  pid_t pid = std::stoi(start.out);
  ASSERT_TRUE(wait_for_text(log, pid, "Installing core packages")) << read_file(log);
  std::vector<pid_t> inside = pids_matching(data);
  ASSERT_FALSE(inside.empty());
  bool seen = false;
  for (pid_t p : inside)
    seen = seen || host("grep -c '" + data + ".*/proc' /proc/" + std::to_string(p) + "/mountinfo").out != "0\n";
  EXPECT_TRUE(seen) << "no process of the build shows the target's /proc";
  EXPECT_EQ(host("grep -c '" + data + "' /proc/self/mountinfo").out, "0\n");
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  size_t left = 1;
  for (int i = 0; i < 100 && left > 0; ++i) {
    usleep(100000);
    left = pids_matching(data).size();
  }
  EXPECT_EQ(left, 0u) << host("ps -ef | grep " + data).out;
  EXPECT_EQ(host("grep -c '" + data + "' /proc/self/mountinfo").out, "0\n");
  EXPECT_NE(host("ls -A " + data + "/images/tmp").out, "");  // control: the killed build's directory
  // ultari's pid names the directory: swept once it is reaped (by init).
  for (int i = 0; i < 100 && exists("/proc/" + std::to_string(pid)); ++i) usleep(100000);
  Outcome ls = ultari({"image", "prune"}, o);  // a store command that sweeps
  EXPECT_EQ(ls.status, 0) << ls.err;
  EXPECT_EQ(host("ls -A " + data + "/images/tmp").out, "");
}

}  // namespace
}  // namespace ultari::test
