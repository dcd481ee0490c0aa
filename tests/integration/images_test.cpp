// Images (issue 4, first part): `ultari image import|ls|inspect|rm|prune`
// and `ultari run --image`. Every test has a store of its own
// (ULTARI_DATA_DIR) and a small root made of a static busybox, packed the
// ways users bring roots: tar, tar.gz, tar.xz, tar.zst, a directory.
// Hostile archives are refused with the entry named and nothing kept;
// negative controls extract the same archives with a trusting extractor
// (Python's tarfile, fully_trusted) and show the harm they would do.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>
#include <thread>

#include "harness.h"

namespace ultari::test {
namespace {

using nlohmann::json;

std::string mkimage() { return std::string(ULTARI_TEST_DATA) + "/images/mkimage.py"; }
std::string mktar() { return std::string(ULTARI_TEST_DATA) + "/images/mktar.py"; }

int sh(const std::string& script) { return std::system(("set -e; " + script).c_str()); }

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> v;
  FILE* p = popen(("ls -A '" + dir + "' 2>/dev/null").c_str(), "r");
  char buf[512];
  while (p && fgets(buf, sizeof buf, p)) {
    std::string l = buf;
    if (!l.empty() && l.back() == '\n') l.pop_back();
    v.push_back(l);
  }
  if (p) pclose(p);
  return v;
}

class Images : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_ / "root";
    // A root: busybox (setuid, to see modes kept), a file of uid 1000, a
    // private directory, an absolute symlink.
    ASSERT_EQ(sh("mkdir -p " + root_ + "/bin " + root_ + "/etc " + root_ + "/home/u/private " + root_ + "/tmp && "
                 "cp /usr/bin/busybox " + root_ + "/bin/ && "
                 "for c in sh ls cat id echo stat touch sleep; do ln -s /bin/busybox " + root_ + "/bin/$c; done && "
                 "echo 'root:x:0:0:root:/root:/bin/sh' > " + root_ + "/etc/passwd && "
                 "echo hello > " + root_ + "/etc/greeting && chown 1000:1000 " + root_ + "/etc/greeting && "
                 "chown 1000:1000 " + root_ + "/home/u/private && chmod 700 " + root_ + "/home/u/private && "
                 "chmod 4755 " + root_ + "/bin/busybox && chmod 1777 " + root_ + "/tmp"),
              0);
  }

  Options opts(Options o = {}) const {
    o.env.push_back("ULTARI_DATA_DIR=" + data_);
    return o;
  }
  Outcome image(const std::vector<std::string>& args, Options o = {}) const {
    std::vector<std::string> a = {"image"};
    a.insert(a.end(), args.begin(), args.end());
    return ultari::test::ultari(a, opts(std::move(o)));
  }
  Outcome run(const std::string& name, const std::string& script, Options o = {}) const {
    return ultari::test::ultari({"run", "--image", name, "--", "/bin/sh", "-c", script}, opts(std::move(o)));
  }
  // Imports image `name`: a root of busybox with every applet, /etc/passwd
  // and /etc/group, and no /proc, /sys, /dev, /tmp or /root. The status.
  int import_busybox_base(const std::string& name) const {
    std::string base = dir_ / name;
    if (sh("mkdir -p " + base + "/bin " + base + "/etc && cp /usr/bin/busybox " + base + "/bin/ && "
           "for c in $(/usr/bin/busybox --list); do [ -e " + base + "/bin/$c ] || ln -s busybox " + base +
           "/bin/$c; done && echo 'root:x:0:0:root:/root:/bin/sh' > " + base + "/etc/passwd && "
           "echo 'root:x:0:' > " + base + "/etc/group") != 0)
      return -1;
    return image({"import", name, base}).status;
  }
  Outcome provision(const std::string& name, const std::string& user_data, const std::string& base = "bb") const {
    std::string file = dir_ / (name + ".yaml");
    write_file(file, user_data);
    Options o;
    o.timeout_s = 300;
    return image({"provision", "-q", name, "--from", base, "--user-data", file}, o);
  }
  std::string store() const { return data_ + "/images"; }
  std::vector<std::string> layers() const {
    std::vector<std::string> v;
    for (const auto& e : entries(store() + "/layers"))
      if (e.size() == 64) v.push_back(e);
    return v;
  }

  TempDir dir_;
  std::string root_;
  std::string data_ = dir_ / "data";
};

TEST_F(Images, TarballsOfEveryCompressionAndDirectoriesImportAndRun) {
  ASSERT_EQ(sh("tar -C " + root_ + " -cf " + (dir_ / "r.tar") + " . && "
               "tar -C " + root_ + " -czf " + (dir_ / "r.tar.gz") + " . && "
               "tar -C " + root_ + " -cJf " + (dir_ / "r.tar.xz") + " . && "
               "tar -C " + root_ + " --zstd -cf " + (dir_ / "r.tar.zst") + " ."),
            0);
  for (const char* f : {"r.tar", "r.tar.gz", "r.tar.xz", "r.tar.zst"}) {
    std::string name = std::string("img-") + std::string(f).substr(2);
    std::replace(name.begin(), name.end(), '.', '-');
    Outcome r = image({"import", name, dir_ / f});
    ASSERT_EQ(r.status, 0) << f << ": " << r.err;
  }
  // The same entries, however compressed: one layer in the store.
  EXPECT_EQ(layers().size(), 1u);
  // A directory, imported from an empty working directory: nothing is
  // written anywhere but the store (libarchive's directory walk changes the
  // working directory: relative writes once landed in the caller's).
  std::string cwd = dir_ / "cwd";
  ASSERT_EQ(sh("mkdir " + cwd + " && cd " + cwd + " && ULTARI_DATA_DIR=" + data_ + " " + ULTARI_BIN +
               " image import -q img-dir " + root_ + " >/dev/null"),
            0);
  EXPECT_TRUE(entries(cwd).empty());
  EXPECT_EQ(entries(root_ + "/bin").size(), 9u);  // the source as it was
  EXPECT_EQ(sh("cmp -s /usr/bin/busybox " + root_ + "/bin/busybox"), 0);
  EXPECT_LE(layers().size(), 2u);  // a directory is walked in another order: maybe a layer of its own

  for (const char* name : {"img-tar-gz", "img-dir"}) {
    Outcome r = run(name,
                    "id -u; cat /etc/greeting; stat -c '%u:%g %a' /etc/greeting /home/u/private /bin/busybox /tmp; "
                    "echo new > /etc/written; cat /etc/written; ls /usr 2>&1 | head -1");
    EXPECT_EQ(r.status, 0) << name << ": " << r.err;
    EXPECT_EQ(r.out, "0\nhello\n1000:1000 644\n1000:1000 700\n0:0 4755\n0:0 1777\nnew\n"
                     "ls: /usr: No such file or directory\n")
        << name;  // the image's root, not the host's
  }
  // Writes vanish with the sandbox; the layer on the host is untouched.
  Outcome again = run("img-tar-gz", "cat /etc/written 2>&1; echo done");
  EXPECT_EQ(again.out, "cat: can't open '/etc/written': No such file or directory\ndone\n");
  for (const auto& l : layers()) EXPECT_FALSE(exists(store() + "/layers/" + l + "/etc/written"));
  // Rootful: stored in the sandboxes' own ids (shifted), not as host root.
  struct stat top{}, st{};
  ASSERT_EQ(stat((store() + "/layers/" + layers()[0]).c_str(), &top), 0);
  ASSERT_EQ(stat((store() + "/layers/" + layers()[0] + "/etc/greeting").c_str(), &st), 0);
  EXPECT_GT(top.st_uid, 65535u);  // the sandboxes' root, not host root
  EXPECT_EQ(st.st_uid - top.st_uid, 1000u);
}

// Until provisioning makes images of several layers, one is put together
// by hand: a layer that changes a file, over the base.
TEST_F(Images, LayersStackTopFirst) {
  ASSERT_EQ(image({"import", "base", root_}).status, 0);
  std::string top = dir_ / "top";
  ASSERT_EQ(sh("mkdir -p " + top + "/etc && echo from-top > " + top + "/etc/greeting && echo only-top > " + top + "/etc/extra"), 0);
  ASSERT_EQ(image({"import", "top", top}).status, 0);
  json b = json::parse(image({"inspect", "base", "--json"}).out), t = json::parse(image({"inspect", "top", "--json"}).out);
  json stack = {{"name", "stack"}, {"id", std::string(64, 'a')}, {"layers", {t["layers"][0], b["layers"][0]}}};
  write_file(store() + "/images/stack.json", stack.dump());
  Outcome r = run("stack", "cat /etc/greeting /etc/extra; id -u; ls /bin/busybox");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "from-top\nonly-top\n0\n/bin/busybox\n") << r.err;
  // The layers (stored in the image store's fixed range) are shown to a
  // sandbox that maps a block of ids of its own, not that range.
  Outcome maps = run("stack", "cat /proc/self/uid_map /proc/self/gid_map; stat -c %u:%g /home/u/private");
  std::istringstream words(maps.out);
  long u_in = -1, u_out = -1, u_count = -1, g_in = -1, g_out = -1, g_count = -1;
  std::string owner;
  words >> u_in >> u_out >> u_count >> g_in >> g_out >> g_count >> owner;
  EXPECT_EQ(u_count, 65536) << maps.out;
  EXPECT_EQ(g_count, 65536) << maps.out;
  EXPECT_NE(u_out, std::stol(host("cut -d: -f1 " + store() + "/ids").out)) << maps.out;  // not the store's range
  EXPECT_EQ(owner, "1000:1000") << maps.out;  // the base layer's owner, through the idmapped layer
  EXPECT_FALSE(has(maps.err, "shares its ids")) << maps.err;
  // Negative control: the base alone has its own greeting and no extra.
  EXPECT_EQ(run("base", "cat /etc/greeting; ls /etc/extra 2>&1").out,
            "hello\nls: /etc/extra: No such file or directory\n");
}

// A root without /tmp gets a fresh one (1777, root's) in the sandbox's own
// writable layer; a root with one keeps it as it is. Negative control: the
// image itself is not changed (a second run finds no file of the first).
TEST_F(Images, ARootWithoutTmpGetsAFreshOneAndOneWithItKeepsIt) {
  std::string bare = dir_ / "bare";
  ASSERT_EQ(sh("mkdir -p " + bare + "/bin && cp /usr/bin/busybox " + bare + "/bin/ && "
               "for c in sh stat touch ls; do ln -s /bin/busybox " + bare + "/bin/$c; done"), 0);
  ASSERT_EQ(image({"import", "bare", bare}).status, 0);
  Outcome r = run("bare", "stat -c '%a %u:%g' /tmp && touch /tmp/x && ls /tmp");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "1777 0:0\nx\n");
  EXPECT_EQ(run("bare", "ls -A /tmp").out, "");
  ASSERT_EQ(sh("chmod 700 " + root_ + "/tmp"), 0);
  ASSERT_EQ(image({"import", "own", root_}).status, 0);
  EXPECT_EQ(run("own", "stat -c %a /tmp").out, "700\n");
}

// Provisioning commits what the user-data changed and nothing the build's
// sandboxes needed: on a base without /proc, /sys, /dev, /tmp and /root the
// layer holds /opt only, and the boot steps kept for every start
// (/var/lib/cloud/ultari). /tmp is shared by the build's modules (bootcmd
// leaves a file that runcmd reads: the control that the build had a /tmp),
// and /root stays when the user-data put something there.
TEST_F(Images, ProvisioningCommitsTheUserDatasChangesOnly) {
  ASSERT_EQ(import_busybox_base("bb"), 0);
  auto layer_of = [&](const std::string& name) {
    return store() + "/layers/" + json::parse(image({"inspect", name, "--json"}).out)["layers"][0].get<std::string>();
  };
  Outcome r = provision("p1",
                        "#cloud-config\nwrite_files:\n  - path: /opt/x\n    content: hi\n"
                        "bootcmd:\n  - echo boot > /tmp/from-boot\nruncmd:\n  - cat /tmp/from-boot > /opt/seen\n");
  ASSERT_EQ(r.status, 0) << r.err;
  std::string layer = layer_of("p1");
  EXPECT_EQ(sh("cd " + layer + " && test \"$(find . | sort | tr '\\n' ' ')\" = '. ./opt ./opt/seen ./opt/x ./var ./var/lib "
               "./var/lib/cloud ./var/lib/cloud/ultari ./var/lib/cloud/ultari/boot ./var/lib/cloud/ultari/bootcmd '"),
            0)
      << entries(layer).size();
  EXPECT_EQ(read_file(layer + "/opt/seen"), "boot\n");
  EXPECT_EQ(run("p1", "cat /opt/x; stat -c %a /tmp").out, "hi1777\n");
  r = provision("p2", "#cloud-config\nruncmd:\n  - mkdir /root/.cfg\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(entries(layer_of("p2")), std::vector<std::string>{"root"});
}

// Was MISSING: the build's watcher saw bytes only, and a build that makes
// millions of empty files takes inodes, not bytes. The store here is a
// tmpfs with 130000 inodes (2 GiB: the byte margin is 1 GiB); the inode
// margin (100000) leaves about 30000. 40000 files stop the build, nothing
// kept; 1000 go through (the control).
TEST_F(Images, ABuildThatMakesTooManyFilesIsStopped) {
  ASSERT_EQ(sh("mkdir -p " + data_ + " && mount -t tmpfs -o nr_inodes=130000,size=2g tmpfs " + data_), 0);
  struct Unmount {
    std::string path;
    ~Unmount() { std::system(("umount -l " + path).c_str()); }
  } unmount{data_};
  ASSERT_EQ(import_busybox_base("bb"), 0);
  Outcome r = provision("many", "#cloud-config\nruncmd:\n  - mkdir /m && cd /m && seq 40000 | xargs touch\n");
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("made more than"), std::string::npos) << r.err;
  EXPECT_NE(image({"inspect", "many"}).status, 0);
  EXPECT_EQ(entries(store() + "/tmp"), std::vector<std::string>{});
  Outcome ok = provision("few", "#cloud-config\nruncmd:\n  - mkdir /m && cd /m && seq 1000 | xargs touch\n");
  EXPECT_EQ(ok.status, 0) << ok.err;
}

// What `docker save`, `podman save` and OCI layouts hold: three layers,
// the second deleting a file (whiteout), the third making a directory
// opaque (mkimage.py).
TEST_F(Images, ImageArchivesKeepTheirLayersAndWhiteouts) {
  // A whiteout hides the name from lookups and listings alike.
  const std::string check = "cat /etc/added; ls /etc /opt/data; cat /etc/greeting 2>&1; ls /bin/busybox";
  const std::string want = "added\n/etc:\nadded\npasswd\n\n/opt/data:\nc\n"
                           "cat: can't open '/etc/greeting': No such file or directory\n/bin/busybox\n";
  std::set<std::string> ids;
  for (const char* fmt : {"docker", "oci", "oci-dir"}) {
    std::string out = dir_ / (std::string(fmt) + ".img");
    ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mkimage() + " " + fmt + " " + out + " " + root_), 0);
    Outcome imp = image({"import", std::string("img-") + fmt, out});
    ASSERT_EQ(imp.status, 0) << fmt << ": " << imp.err;
    json i = json::parse(image({"inspect", std::string("img-") + fmt, "--json"}).out);
    EXPECT_EQ(i["layers"].size(), 3u) << i.dump();
    ids.insert(i["id"].get<std::string>());
    Outcome r = run(std::string("img-") + fmt, check);
    EXPECT_EQ(r.out, want) << fmt << ": " << r.err;
    // The image's configuration: Entrypoint + Cmd without a command; Env,
    // WorkingDir and User unless a flag says otherwise.
    Outcome d = ultari::test::ultari({"run", "--image", std::string("img-") + fmt}, opts());
    EXPECT_EQ(d.out, "hello from /opt as 1000:1000\n") << fmt << ": " << d.err;
    Outcome f = ultari::test::ultari({"run", "--image", std::string("img-") + fmt, "--user", "0", "--cwd", "/etc",
                                      "--env", "GREETING=bye"},
                                     opts());
    EXPECT_EQ(f.out, "bye from /etc as 0:0\n") << fmt << ": " << f.err;
    // Ultari's own run defaults in the archive's config are not taken.
    EXPECT_FALSE(i["config"].contains("boot")) << i.dump();
    EXPECT_FALSE(i["config"].contains("hostname")) << i.dump();
    Outcome b = ultari::test::ultari({"run", "--image", std::string("img-") + fmt, "--", "/bin/sh", "-c",
                                      "ls /booted 2>/dev/null; hostname"},
                                     opts());
    EXPECT_EQ(b.out, "sandbox\n") << fmt << ": " << b.err;
    EXPECT_TRUE(b.report["boot"].is_null()) << b.report.dump();
  }

  EXPECT_EQ(ids.size(), 1u);  // the same layers, however they came
  EXPECT_EQ(layers().size(), 3u);
  // Negative control: the bottom layer alone still has what the upper ones
  // delete and hide.
  ASSERT_EQ(image({"import", "base", root_}).status, 0);
  EXPECT_EQ(run("base", "cat /etc/greeting; ls /opt 2>&1").out, "hello\nls: /opt: No such file or directory\n");
  // ... and a root without a configuration has no command to run.
  Outcome none = ultari::test::ultari({"run", "--image", "base"}, opts());
  EXPECT_EQ(none.status, 125);
  EXPECT_TRUE(has(none.err, "has no Entrypoint or Cmd")) << none.err;

  // Refused, nothing kept: a blob that does not match its digest, a
  // manifest that names a file outside the archive.
  size_t before = layers().size();
  // A host tarball a layer links to: it would become the image.
  ASSERT_EQ(sh("tar -C " + root_ + " -cf /tmp/ultari-hostlink.tar ."), 0);
  for (auto [fmt, bad, mention] : {std::tuple{"oci", "digest", "does not match its digest"},
                                   std::tuple{"docker", "escape", "leaves the archive"},
                                   std::tuple{"docker", "hostlink", "leaves the archive"}}) {
    std::string out = dir_ / (std::string(bad) + ".img");
    ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mkimage() + " " + fmt + " " + out + " " + root_ + " " + bad), 0);
    Outcome r = image({"import", "bad", out});
    EXPECT_EQ(r.status, 125) << bad;
    EXPECT_TRUE(has(r.err, mention)) << r.err;
    EXPECT_EQ(layers().size(), before);
    EXPECT_TRUE(entries(store() + "/tmp").empty());
  }
  EXPECT_FALSE(exists(store() + "/images/bad.json"));
  unlink("/tmp/ultari-hostlink.tar");
  // Negative control: a link that stays inside (docker save's shared
  // layers) is fine.
  std::string inner = dir_ / "inner.img";
  ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mkimage() + " docker " + inner + " " + root_ + " innerlink"), 0);
  Outcome in = image({"import", "inner", inner});
  EXPECT_EQ(in.status, 0) << in.err;
}

TEST_F(Images, ListInspectRemoveAndPrune) {
  ASSERT_EQ(image({"import", "a", root_}).status, 0);
  ASSERT_EQ(sh("echo other > " + root_ + "/etc/greeting"), 0);
  ASSERT_EQ(image({"import", "b", root_}).status, 0);
  Outcome ls = image({"ls", "--json"});
  ASSERT_EQ(ls.status, 0) << ls.err;
  json all = json::parse(ls.out);
  ASSERT_EQ(all.size(), 2u) << ls.out;
  for (const auto& i : all)
    for (const char* k : {"name", "id", "layers", "size", "created"}) EXPECT_TRUE(i.contains(k)) << k << ": " << i.dump();
  EXPECT_EQ(all[0]["name"], "a");
  EXPECT_GT(all[0]["size"].get<uint64_t>(), 1000u);
  json b = json::parse(image({"inspect", "b", "--json"}).out);
  for (const char* k : {"parent", "user_data_sha256", "provision_log"}) EXPECT_TRUE(b.contains(k)) << k;
  EXPECT_NE(all[0]["id"], all[1]["id"]);
  EXPECT_TRUE(has(image({"ls"}).out, "NAME")) << image({"ls"}).out;

  // A sandbox holds b's layer: removing the name and pruning keeps it
  // until the sandbox is gone.
  ASSERT_EQ(layers().size(), 2u);
  std::vector<std::string> argv = {"env", "ULTARI_DATA_DIR=" + data_, ULTARI_BIN, "run", "--image", "b", "--",
                                   "/bin/sh", "-c", "sleep 2; cat /etc/greeting"};
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execvp("env", a.data());
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  std::string b_id = json::parse(image({"inspect", "--json", "b"}).out)["id"];
  Outcome rm = image({"rm", "--json", "b"});
  ASSERT_EQ(rm.status, 0) << rm.err;
  EXPECT_EQ(json::parse(rm.out), json({{"name", "b"}, {"id", b_id}})) << rm.out;
  Outcome p1 = image({"prune"});
  EXPECT_EQ(p1.status, 0) << p1.err;
  EXPECT_TRUE(has(p1.out, "removed 0 layers")) << p1.out;
  EXPECT_TRUE(has(p1.out, "kept 1 unused layers a running sandbox still holds")) << p1.out;
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  Outcome p2 = image({"prune", "--json"});
  ASSERT_EQ(p2.status, 0) << p2.err;
  json pruned = json::parse(p2.out);
  ASSERT_EQ(pruned["removed"].size(), 1u) << p2.out;
  EXPECT_GT(pruned["bytes"].get<uint64_t>(), 0u) << p2.out;
  EXPECT_EQ(pruned["in_use"], json::array()) << p2.out;
  EXPECT_EQ(pruned["kernel_layers"]["removed"], 0) << p2.out;
  std::vector<std::string> left = layers();
  EXPECT_EQ(left.size(), 1u);
  EXPECT_EQ(std::find(left.begin(), left.end(), pruned["removed"][0].get<std::string>()), left.end())
      << "the removed layer is still there";
  // a is untouched and still runs.
  EXPECT_EQ(run("a", "cat /etc/greeting").out, "hello\n");
  // A damaged entry is removed all the same (--json: its id null).
  write_file(store() + "/images/broken.json", "{not json");
  Outcome broken = image({"rm", "--json", "broken"});
  EXPECT_EQ(broken.status, 0) << broken.err;
  EXPECT_EQ(broken.out, "{\n  \"id\": null,\n  \"name\": \"broken\"\n}\n") << broken.out;
  EXPECT_FALSE(exists(store() + "/images/broken.json"));
  // Unknown names: a clear error, exit 125.
  for (const auto& args : std::vector<std::vector<std::string>>{{"rm", "b"}, {"inspect", "b"}}) {
    Outcome r = image(args);
    EXPECT_EQ(r.status, 125);
    EXPECT_TRUE(has(r.err, "no image named 'b'")) << r.err;
  }
  Outcome r = run("b", "true");
  EXPECT_EQ(r.status, 125);
  EXPECT_TRUE(has(r.err, "no image named 'b'")) << r.err;
  EXPECT_EQ(r.report["verdict"], "setup_error");
}

TEST_F(Images, HostileArchivesAreRefusedAndLeaveNothing) {
  std::string victim = dir_ / "victim";
  ASSERT_EQ(sh("mkdir -p " + victim + " && echo secret > " + victim + "/target"), 0);
  struct Case {
    std::string kind, mention;
  };
  std::vector<Case> cases = {
      {"traversal", "'../evil'"},       {"absolute", "'/abs-evil'"},  {"device", "etc/evil-null"},
      {"symlink", "esc/pwned"},         {"hardlink", "'hl'"},         {"bigid", "etc/big"},
      {"garbage", "bad.tar"},
  };
  for (const auto& c : cases) {
    std::string tar = dir_ / (c.kind + "-bad.tar");
    if (c.kind == "garbage") tar = dir_ / "bad.tar";
    ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mktar() + " hostile " + c.kind + " " + tar + " " + victim), 0);
    Outcome r = image({"import", "evil", tar});
    EXPECT_EQ(r.status, 125) << c.kind << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.mention)) << c.kind << " should name " << c.mention << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(layers().empty()) << c.kind;
    EXPECT_TRUE(entries(store() + "/tmp").empty()) << c.kind;
    EXPECT_TRUE(entries(store() + "/images").empty()) << c.kind;
  }
  EXPECT_FALSE(exists(victim + "/pwned"));
  EXPECT_EQ(read_file(victim + "/target"), "secret\n");
  EXPECT_FALSE(exists(dir_ / "evil"));
  EXPECT_FALSE(exists("/abs-evil"));

  // Negative controls: a trusting extractor does the harm each archive aims at.
  std::string naive = dir_ / "naive/x";
  ASSERT_EQ(sh("mkdir -p " + naive), 0);
  ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mktar() + " naive " + (dir_ / "symlink-bad.tar") + " " + naive), 0);
  EXPECT_TRUE(exists(victim + "/pwned"));
  ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mktar() + " naive " + (dir_ / "traversal-bad.tar") + " " + naive), 0);
  EXPECT_TRUE(exists(dir_ / "naive/evil"));

  // Device nodes under dev/ are skipped (the sandbox has its own /dev); the
  // rest of that archive imports.
  std::string devdir = dir_ / "devdir.tar";
  ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mktar() + " hostile devdir " + devdir), 0);
  Outcome ok = image({"import", "devdir", devdir});
  EXPECT_EQ(ok.status, 0) << ok.err;
  ASSERT_EQ(layers().size(), 1u);
  EXPECT_TRUE(exists(store() + "/layers/" + layers()[0] + "/etc/ok"));
  EXPECT_FALSE(exists(store() + "/layers/" + layers()[0] + "/dev/null"));
}

TEST_F(Images, BadInputGetsAClearError) {
  ASSERT_EQ(image({"import", "a", root_}).status, 0);
  struct Case {
    std::vector<std::string> args;
    std::string mention;
  };
  std::vector<Case> cases = {
      {{"image", "import", "../x", root_}, "image name '../x'"},
      {{"image", "import", "a/b", root_}, "image name 'a/b'"},
      {{"image", "import", "x", dir_ / "missing.tar"}, "missing.tar"},
      {{"image", "import", "x", "/"}, "whole host"},
      {{"image", "import", "x", "/dev/null"}, "neither a directory nor an archive"},
      {{"run", "--image", "a", "--rootfs", root_, "--", "true"}, "exclude each other"},
      {{"run", "--image", "nope", "--", "true"}, "no image named 'nope'"},
  };
  for (const auto& c : cases) {
    Outcome r = ultari::test::ultari(c.args, opts());
    EXPECT_EQ(r.status, 125) << testing::PrintToString(c.args) << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.mention)) << testing::PrintToString(c.args) << ": " << r.err;
  }
  EXPECT_EQ(layers().size(), 1u);
  EXPECT_TRUE(entries(store() + "/tmp").empty());
}

TEST_F(Images, ConcurrentImportsOfTheSameRootShareOneLayer) {
  ASSERT_EQ(sh("tar -C " + root_ + " -czf " + (dir_ / "r.tgz") + " ."), 0);
  std::vector<pid_t> pids;
  for (int i = 0; i < 4; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      std::string name = "same" + std::to_string(i);
      setenv("ULTARI_DATA_DIR", data_.c_str(), 1);
      int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      execl(ULTARI_BIN, "ultari", "image", "import", name.c_str(), (dir_ / "r.tgz").c_str(), nullptr);
      _exit(127);
    }
    pids.push_back(pid);
  }
  for (pid_t p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  EXPECT_EQ(layers().size(), 1u);
  EXPECT_TRUE(entries(store() + "/tmp").empty());
  json all = json::parse(image({"ls", "--json"}).out);
  EXPECT_EQ(all.size(), 4u);
  for (const auto& i : all) EXPECT_EQ(i["layers"], all[0]["layers"]);
  EXPECT_EQ(run("same3", "cat /etc/greeting").out, "hello\n");
}

// Rootless, as the caller's subordinate ids allow: a store that keeps
// owners (the default when /etc/subuid has a range for the user and
// newuidmap is installed), or one whose files are all the caller's (its
// `ids` file says "caller").
void rootless_store_round(const TempDir& dir_, const std::string& root_, bool keeps_owners) {
  SCOPED_TRACE(keeps_owners ? "a store that keeps owners" : "a one-owner store");
  std::string data = dir_ / (keeps_owners ? "owners" : "one-owner");
  ASSERT_EQ(sh("mkdir -p " + data + "/images && chown -R " + std::string(kRootlessUser) + " " + data), 0);
  if (!keeps_owners) write_file(data + "/images/ids", "caller\n");
  auto as_user = [&](std::vector<std::string> args) {
    Options o = rootless_options();
    o.env.push_back("ULTARI_DATA_DIR=" + data);
    return ultari::test::ultari(args, o);
  };
  Outcome imp = as_user({"image", "import", "mine", dir_ / "r.tgz"});
  ASSERT_EQ(imp.status, 0) << imp.err;
  ASSERT_TRUE(exists(data + "/images/images/mine.json"));  // in the store it was given
  // Its directories are 0700 (they were made 0755 above), whoever made them.
  EXPECT_EQ(host("stat -c %a " + data + "/images " + data + "/images/layers " + data + "/images/images").out,
            "700\n700\n700\n");
  const passwd* pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  // The user's first subordinate uid and gid (useradd gave it a range).
  auto first = [](const char* file) {
    return host("sed -n 's/^" + std::string(kRootlessUser) + ":\\([0-9]*\\):.*/\\1/p' " + file + " | head -1").out;
  };
  std::string sub_uid = first("/etc/subuid"), sub_gid = first("/etc/subgid");
  ASSERT_FALSE(sub_uid.empty() || sub_gid.empty()) << "no subordinate ids for " << kRootlessUser;
  sub_uid.pop_back();
  sub_gid.pop_back();
  EXPECT_EQ(read_file(data + "/images/ids"), keeps_owners ? "subids " + std::to_string(pw->pw_uid) + ":" + sub_uid + " " +
                                                                std::to_string(pw->pw_gid) + ":" + sub_gid + "\n"
                                                          : "caller\n");
  json mine = json::parse(as_user({"image", "inspect", "mine", "--json"}).out);
  std::string layer = data + "/images/layers/" + mine["layers"][0].get<std::string>();
  struct stat st{};
  // On the host: uid 1000 inside is the first subordinate id + 999 (0 is
  // the caller), or the caller when the store keeps no owners.
  ASSERT_EQ(stat((layer + "/home/u/private").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, keeps_owners ? std::stoul(sub_uid) + 999 : pw->pw_uid);
  ASSERT_EQ(stat((layer + "/bin/busybox").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, pw->pw_uid);
  Outcome r = as_user({"run", "--image", "mine", "--", "/bin/sh", "-c",
                       "id -u; cat /etc/greeting; stat -c '%u:%g %a' /etc/greeting /home/u/private /bin/busybox"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, keeps_owners ? "0\nhello\n1000:1000 644\n1000:1000 700\n0:0 4755\n"
                                : "0\nhello\n0:0 644\n0:0 700\n0:0 755\n")
      << r.err;
  // As uid 1000: its own directory is its own only where owners are kept;
  // in a one-owner store every file is the user's (the one id it maps).
  Outcome u = as_user({"run", "--image", "mine", "--user", "1000", "--", "/bin/sh", "-c",
                       "id -u; ls -d /home/u/private >/dev/null && echo listed; touch /etc/mine 2>/dev/null && echo "
                       "wrote-etc; stat -c %u /bin/busybox"});
  EXPECT_EQ(u.status, 0) << u.err;
  EXPECT_EQ(u.out, keeps_owners ? "1000\nlisted\n0\n" : "1000\nlisted\nwrote-etc\n1000\n") << u.err;
  // Two layers, rootless (paths instead of trees made by the supervisor).
  std::string top = dir_ / (keeps_owners ? "top-owners" : "top-one");
  ASSERT_EQ(sh("mkdir -p " + top + "/etc && echo from-top > " + top + "/etc/greeting && chmod -R a+rX " + top), 0);
  // A directory of host root's: in the store's namespace its owner is no
  // id of the caller's (it would show as 65534): refused, naming it. A
  // one-owner store takes it (everything becomes the caller's anyway).
  Outcome foreign = as_user({"image", "import", "top", top});
  if (keeps_owners) {
    EXPECT_EQ(foreign.status, 125) << foreign.err;
    EXPECT_TRUE(has(foreign.err, "its owner is not one of your ids")) << foreign.err;
    EXPECT_TRUE(entries(data + "/images/tmp").empty());
    ASSERT_EQ(sh("chown -R " + std::string(kRootlessUser) + ": " + top), 0);
    Outcome own = as_user({"image", "import", "top", top});
    ASSERT_EQ(own.status, 0) << own.err;
  } else {
    ASSERT_EQ(foreign.status, 0) << foreign.err;
  }
  json t = json::parse(as_user({"image", "inspect", "top", "--json"}).out);
  // (with a kernel module: the run makes the store's kernel layer, of
  // copies, rootless)
  json stack = {{"name", "stack"}, {"id", std::string(64, 'a')}, {"layers", {t["layers"][0], mine["layers"][0]}},
                {"config", {{"kernel_modules", {"nf_conntrack"}}}}};
  write_file(data + "/images/images/stack.json", stack.dump());
  Outcome s2 = as_user({"run", "--image", "stack", "--", "/bin/sh", "-c", "cat /etc/greeting; ls /bin/busybox"});
  EXPECT_EQ(s2.out, "from-top\n/bin/busybox\n") << s2.err;
  std::vector<std::string> kernel_layers;
  for (const auto& e : entries(data + "/images/kernel"))
    if (e.rfind("kernel-", 0) == 0 && e.find('.') == std::string::npos) kernel_layers.push_back(e);
  ASSERT_EQ(kernel_layers.size(), 1u);
  const std::string current = data + "/images/kernel/" + kernel_layers[0], old = data + "/images/kernel/kernel-00000000deadbeef";
  ASSERT_EQ(sh("cp -a " + current + " " + old), 0);  // an older kernel's layer, the same owners
  // An image archive, rootless: whiteouts are 0:0 devices made in the
  // store's namespace, or, where the caller cannot make one, empty files
  // marked with xattrs, which kernels from 6.7 read.
  std::string oci = dir_ / "oci.img";
  ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mkimage() + " oci " + oci + " " + root_ + " && chmod 644 " + oci), 0);
  ASSERT_EQ(as_user({"image", "import", "oci", oci}).status, 0);
  Outcome s3 = as_user({"run", "--image", "oci", "--", "/bin/sh", "-c", "ls /etc /opt/data; cat /etc/greeting 2>&1"});
  EXPECT_EQ(s3.out, "/etc:\nadded\npasswd\n\n/opt/data:\nc\ncat: can't open '/etc/greeting': No such file or directory\n")
      << s3.err;
  // A build that writes into a directory its owner cannot read (the caller
  // has no privilege over it in a one-owner store) is stopped at
  // --max-size, and its scratch removed all the same.
  if (!keeps_owners) {
    write_file(dir_ / "hide.yaml", "#cloud-config\nruncmd:\n  - mkdir /hide && chmod 0 /hide && "
                                   "dd if=/dev/zero of=/hide/big bs=1M count=200 2>/dev/null\n", 0644);
    Outcome hidden = as_user({"image", "provision", "hidden", "--from", "mine", "--user-data", dir_ / "hide.yaml",
                              "--max-size", "50M", "-q"});
    EXPECT_EQ(hidden.status, 125) << hidden.err;
    EXPECT_TRUE(has(hidden.err, "--max-size")) << hidden.err;
    EXPECT_TRUE(entries(data + "/images/tmp").empty());
  }
  // rm and prune remove every layer, the subordinate ids' files too.
  for (const char* n : {"mine", "top", "stack", "oci"}) EXPECT_EQ(as_user({"image", "rm", n}).status, 0) << n;
  Outcome pr = as_user({"image", "prune"});
  EXPECT_EQ(pr.status, 0) << pr.err;
  EXPECT_EQ(sh("test -z \"$(ls -A " + data + "/images/layers)\""), 0) << host("ls -lA " + data + "/images/layers").out;
  // ...and the older kernel's layer, not the current one.
  EXPECT_TRUE(has(pr.out, "removed 1 kernel layers")) << pr.out;
  EXPECT_FALSE(exists(old));
  EXPECT_TRUE(exists(current));
}

// A rootless store that keeps owners unpacks as root of its user namespace
// (the caller and its subordinate ids): every hostile archive is refused
// there as it is rootful, although that root may write wherever the caller
// may (the victim is the caller's).
TEST_F(Images, ARootlessStoreThatKeepsOwnersRefusesHostileArchives) {
  ASSERT_EQ(sh("chmod 755 " + dir_.path()), 0);
  std::string data = dir_ / "owners", victim = dir_ / "victim";
  ASSERT_EQ(sh("mkdir -p " + data + " " + victim + " && echo secret > " + victim + "/target && chown -R " +
               std::string(kRootlessUser) + " " + data + " " + victim),
            0);
  Options o = rootless_options();
  o.env.push_back("ULTARI_DATA_DIR=" + data);
  struct Case {
    std::string kind, mention;
  };
  std::vector<Case> cases = {
      {"traversal", "'../evil'"}, {"absolute", "'/abs-evil'"}, {"device", "etc/evil-null"},
      {"symlink", "esc/pwned"},   {"hardlink", "'hl'"},        {"bigid", "etc/big"},
  };
  for (const auto& c : cases) {
    std::string tar = dir_ / (c.kind + "-bad.tar");
    ASSERT_EQ(sh(std::string("/usr/bin/python3 ") + mktar() + " hostile " + c.kind + " " + tar + " " + victim +
                 " && chmod 644 " + tar),
              0);
    Outcome r = ultari::test::ultari({"image", "import", "evil", tar}, o);
    EXPECT_EQ(r.status, 125) << c.kind << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.mention)) << c.kind << " should name " << c.mention << ": " << r.err;
    EXPECT_TRUE(entries(data + "/images/layers").empty()) << c.kind;
    EXPECT_TRUE(entries(data + "/images/tmp").empty()) << c.kind;
  }
  EXPECT_TRUE(has(read_file(data + "/images/ids"), "subids ")) << read_file(data + "/images/ids");
  EXPECT_FALSE(exists(victim + "/pwned"));
  // A victim only the store's namespace may write (a subordinate id's,
  // 0700): the extraction, root there, still never goes through the link.
  std::string sub = host("sed -n 's/^" + std::string(kRootlessUser) + ":\\([0-9]*\\):.*/\\1/p' /etc/subuid | head -1").out;
  ASSERT_FALSE(sub.empty());
  std::string owner = std::to_string(std::stoul(sub) + 999);
  std::string locked = dir_ / "locked", sub_tar = dir_ / "symlink-locked.tar";
  ASSERT_EQ(sh("mkdir -p " + locked + " && chown " + owner + ":" + owner + " " + locked + " && chmod 700 " + locked +
               " && /usr/bin/python3 " + mktar() + " hostile symlink " + sub_tar + " " + locked + " && chmod 644 " + sub_tar),
            0);
  Outcome l = ultari::test::ultari({"image", "import", "evil", sub_tar}, o);
  EXPECT_EQ(l.status, 125) << l.err;
  EXPECT_FALSE(exists(locked + "/pwned"));
  // Control: root of a namespace with the caller's subordinate ids may write there.
  EXPECT_EQ(sh("su " + std::string(kRootlessUser) + " -s /bin/sh -c 'unshare --map-auto --map-root-user touch " + locked +
               "/probe'"),
            0);
  EXPECT_TRUE(exists(locked + "/probe"));
  EXPECT_EQ(read_file(victim + "/target"), "secret\n");
  EXPECT_FALSE(exists(dir_ / "evil"));
  // Negative control: the caller may write the victim (a trusting extractor
  // run as the caller does the harm the archive aims at).
  std::string naive = dir_ / "naive/x";
  ASSERT_EQ(sh("mkdir -p " + naive + " && chown -R " + std::string(kRootlessUser) + " " + (dir_ / "naive")), 0);
  ASSERT_EQ(sh("su " + std::string(kRootlessUser) + " -s /bin/sh -c '/usr/bin/python3 " + mktar() + " naive " +
               (dir_ / "symlink-bad.tar") + " " + naive + "'"),
            0);
  EXPECT_TRUE(exists(victim + "/pwned"));

  // A store made for other subordinate ids is refused, naming both, and
  // changes nothing.
  std::string mark = read_file(data + "/images/ids");
  write_file(data + "/images/ids", "subids 1:5 1:5\n");
  Outcome other = ultari::test::ultari({"image", "ls"}, o);
  EXPECT_EQ(other.status, 125) << other.err;
  EXPECT_TRUE(has(other.err, "keeps its files' owners in the subordinate ids 1:5 1:5, yours are now " +
                                 mark.substr(7, mark.size() - 8)))
      << other.err;
  Outcome run = ultari::test::ultari({"run", "--image", "x", "--", "true"}, o);
  EXPECT_EQ(run.status, 125) << run.err;
  EXPECT_TRUE(has(run.err, "subordinate ids 1:5 1:5")) << run.err;
  EXPECT_EQ(read_file(data + "/images/ids"), "subids 1:5 1:5\n");
}

// The user namespace of a rootless store that keeps owners is held by one
// process per store (ultari-userns): the first command makes it, later
// ones join it instead of running newuidmap and newgidmap again; it keeps
// nothing of the caller's and leaves when idle. A namespace handed out on
// its socket by anything else is refused, whoever made it.
TEST_F(Images, ARootlessStoresNamespaceIsHeldOnceAndCheckedWhenJoined) {
  ASSERT_EQ(sh("tar -C " + root_ + " --numeric-owner -czf " + (dir_ / "r.tgz") + " . && chmod 644 " + (dir_ / "r.tgz")), 0);
  ASSERT_EQ(sh("chmod 755 " + dir_.path()), 0);
  const std::string data = dir_ / "held";
  const std::string store = data + "/images";
  ASSERT_EQ(sh("mkdir -p " + store + " && chown -R " + std::string(kRootlessUser) + " " + data + " && chmod 700 " + store), 0);
  const passwd* pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  auto as_user = [&](std::vector<std::string> args, std::string idle = "") {
    Options o = rootless_options();
    o.env.push_back("ULTARI_DATA_DIR=" + data);
    if (!idle.empty()) o.env.push_back("ULTARI_USERNS_IDLE_SECONDS=" + idle);
    return ultari::test::ultari(args, o);
  };
  // The holders of this store: ultari-userns processes with an fd of its
  // directory.
  auto holders = [&] {
    std::vector<pid_t> found;
    for (pid_t pid : pids_matching("ultari-userns")) {
      std::string fds = host("for f in /proc/" + std::to_string(pid) + "/fd/*; do readlink $f; done 2>/dev/null").out;
      if (has(fds, store + "\n")) found.push_back(pid);
    }
    return found;
  };
  // How many times one `ultari run` as the user executes newuidmap.
  const std::string bin = rootless_options().binary;
  auto helper_execs = [&](const std::string& idle) {
    const std::string log = dir_ / "execs";
    Outcome t = host("strace -f -qq -e trace=execve -o " + log + " /usr/bin/setpriv --reuid=" + std::to_string(pw->pw_uid) +
                     " --regid=" + std::to_string(pw->pw_gid) + " --init-groups --reset-env -- /usr/bin/env ULTARI_DATA_DIR=" +
                     data + " ULTARI_USERNS_IDLE_SECONDS=" + idle + " " + bin +
                     " run --quiet --image mine -- /bin/echo >/dev/null && grep -c 'execve(\"/usr/bin/newuidmap\"' " + log);
    return t.out;
  };
  Outcome imp = as_user({"image", "import", "mine", dir_ / "r.tgz"}, "30");
  ASSERT_EQ(imp.status, 0) << imp.err;
  std::vector<pid_t> first = holders();
  ASSERT_EQ(first.size(), 1u) << host("ps -eo pid,user,args | grep ultari").out;
  const std::string proc = "/proc/" + std::to_string(first[0]);
  // It is the user's, alone in its session, shows no host path nor the
  // caller's environment, and keeps no fd of the caller's: /dev/null on
  // 0-2, its socket, the store's directory, its namespace.
  EXPECT_EQ(host("stat -c %u " + proc + "/fd").out, "0\n");  // not dumpable: its /proc files are root's
  EXPECT_EQ(host("awk '/^Uid:/{print $2}' " + proc + "/status").out, std::to_string(pw->pw_uid) + "\n");
  std::string cmdline = read_file(proc + "/cmdline");
  EXPECT_EQ(cmdline.substr(0, 14), std::string("ultari-userns\0", 14));
  EXPECT_EQ(cmdline.find_first_not_of('\0', 13), std::string::npos) << cmdline;  // the rest wiped
  EXPECT_EQ(host("ps -o sid= -p " + std::to_string(first[0]) + " | tr -d ' '").out, std::to_string(first[0]) + "\n");
  EXPECT_FALSE(has(read_file(proc + "/environ"), "ULTARI_DATA_DIR"));
  std::string fds = host("for f in " + proc + "/fd/*; do readlink $f; done | sed 's/:\\[.*//' | sort | uniq -c | "
                         "awk '{print $1, $2}'").out;
  EXPECT_EQ(fds, "3 /dev/null\n1 " + store + "\n1 socket\n1 user\n") << fds;
  // The namespace maps the caller and its subordinate ids.
  std::string sub_uid = host("sed -n 's/^" + std::string(kRootlessUser) + ":\\([0-9]*\\):.*/\\1/p' /etc/subuid | head -1").out;
  ASSERT_FALSE(sub_uid.empty());
  sub_uid.pop_back();
  EXPECT_EQ(host("awk '{print $1, $2, $3}' " + proc + "/uid_map").out,
            "0 " + std::to_string(pw->pw_uid) + " 1\n1 " + sub_uid + " 65535\n");
  // Later commands join it: runs, an import, no second holder, and no
  // helper runs (a newuidmap that always fails would fail them).
  for (int i = 0; i < 2; ++i) {
    Outcome r = as_user({"run", "--image", "mine", "--", "/bin/sh", "-c", "stat -c '%u:%g' /etc/greeting; id -u"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "1000:1000\n0\n") << r.err;
  }
  EXPECT_EQ(as_user({"image", "ls"}).status, 0);
  EXPECT_EQ(holders(), first);
  EXPECT_EQ(helper_execs("30"), "0\n");  // (grep -c prints 0, and fails)
  EXPECT_EQ(holders(), first);
  // Negative control: with the holder gone, a run makes a new one, and runs
  // the helpers for it (strace waits for that holder to leave: idle 1 s).
  ASSERT_EQ(host("kill " + std::to_string(first[0])).status, 0);
  for (int i = 0; i < 50 && !holders().empty(); ++i) usleep(100000);
  EXPECT_EQ(helper_execs("1"), "1\n");
  // Idle: it leaves, and takes its socket along.
  ASSERT_EQ(as_user({"run", "--image", "mine", "--", "/bin/echo"}, "1").status, 0);
  std::vector<pid_t> idle = holders();
  ASSERT_EQ(idle.size(), 1u);
  for (int i = 0; i < 50 && host("kill -0 " + std::to_string(idle[0]) + " 2>/dev/null").status == 0; ++i) usleep(100000);
  EXPECT_NE(host("kill -0 " + std::to_string(idle[0]) + " 2>/dev/null; ps -o stat= -p " + std::to_string(idle[0]) +
                 " | grep -v Z").status, 0);
  EXPECT_FALSE(exists(store + "/userns.sock"));
  Outcome soon = as_user({"run", "--image", "mine", "--", "/bin/echo"}, "soon");
  EXPECT_EQ(soon.status, 125);
  EXPECT_TRUE(has(soon.err, "ULTARI_USERNS_IDLE_SECONDS='soon'")) << soon.err;
  // 0: no holder; the namespace is the command's own (the helpers run).
  Outcome own = as_user({"run", "--image", "mine", "--", "/bin/sh", "-c", "stat -c %u /etc/greeting"}, "0");
  EXPECT_EQ(own.out, "1000\n") << own.err;
  EXPECT_TRUE(holders().empty());
  EXPECT_FALSE(exists(store + "/userns.sock"));

  // First commands at once: one holder for all.
  {
    std::vector<std::thread> runs;
    std::vector<int> statuses(4, -1);
    for (int i = 0; i < 4; ++i)
      runs.emplace_back([&, i] { statuses[i] = as_user({"run", "--image", "mine", "--", "/bin/echo"}, "30").status; });
    for (auto& t : runs) t.join();
    EXPECT_EQ(statuses, std::vector<int>(4, 0));
    EXPECT_EQ(holders().size(), 1u);
  }

  // A stopped holder stops nobody: after 2 s without an answer it is
  // replaced.
  {
    std::vector<pid_t> stopped = holders();
    ASSERT_EQ(stopped.size(), 1u);
    kill(stopped[0], SIGSTOP);
    Outcome r = as_user({"run", "--image", "mine", "--", "/bin/sh", "-c", "cat /etc/greeting"}, "30");
    EXPECT_EQ(r.status, 0) << r.err;  // a hang would be the harness's timeout
    EXPECT_EQ(r.out, "hello\n") << r.err;
    std::vector<pid_t> now = holders();
    EXPECT_EQ(now.size(), 2u);  // the stopped one (still holding the old socket's fd) and the new one
    kill(stopped[0], SIGKILL);
    for (pid_t h : holders()) kill(h, SIGKILL);
  }

  // A warm pool (a process in the namespace) keeps the holder: later runs
  // join the namespace the pool is in, and so take its sandboxes. Once the
  // pool is gone, the holder leaves when idle.
  {
    const std::string pool_sock = data + "/pool.sock", report = data + "/pool-run.json";
    pid_t pool = fork();
    if (pool == 0) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      execl("/usr/bin/setpriv", "setpriv", ("--reuid=" + std::to_string(pw->pw_uid)).c_str(),
            ("--regid=" + std::to_string(pw->pw_gid)).c_str(), "--init-groups", "--reset-env", "--", "/usr/bin/env",
            ("ULTARI_DATA_DIR=" + data).c_str(), "ULTARI_USERNS_IDLE_SECONDS=1", bin.c_str(), "pool", "--socket",
            pool_sock.c_str(), "--size", "1", "--image", "mine", nullptr);
      _exit(127);
    }
    for (int i = 0; i < 100 && !exists(pool_sock); ++i) usleep(50000);
    ASSERT_TRUE(exists(pool_sock));
    sleep(3);  // three idle periods
    std::vector<pid_t> kept = holders();
    EXPECT_EQ(kept.size(), 1u);
    Outcome r = as_user({"run", "--pool", pool_sock, "--report", report, "--image", "mine", "--", "/bin/sh", "-c",
                         "cat /etc/greeting"}, "1");
    EXPECT_EQ(r.out, "hello\n") << r.err;
    EXPECT_EQ(json::parse(read_file(report)).value("warm", false), true) << read_file(report) << r.err;
    kill(pool, SIGTERM);
    waitpid(pool, nullptr, 0);
    for (int i = 0; i < 60 && !holders().empty(); ++i) usleep(100000);
    EXPECT_TRUE(holders().empty());
  }

  // Impostors on the socket, each sending a namespace of its own. None is
  // joined: a namespace not made from the caller's (host root's, a nested
  // one) leaves the command to a namespace of its own, with no word (a
  // container sharing $HOME has its own holder); one of the caller's that
  // is not the store's, or served from another pid namespace (as from a
  // sandbox), is replaced by a real holder, with a warning. Joining would
  // fail the run: the sandbox's maps need the store's ids. Control: an
  // impostor with exactly the store's maps, in the caller's own pid
  // namespace, passes (it is the caller's own process, as a holder is).
  const std::string fake = dir_ / "fake.py";
  write_file(fake,
             "import os, socket, sys\n"
             "os.umask(0o077)\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "p = sys.argv[1]\n"
             "os.path.exists(p) and os.unlink(p)\n"
             "s.bind(p); os.chmod(p, 0o777); s.listen(8); print('up', flush=True)\n"
             "ns = os.open('/proc/self/ns/user', os.O_RDONLY)\n"
             "while True:\n"
             "    c, _ = s.accept(); socket.send_fds(c, [b'n'], [ns]); c.close(); print('served', flush=True)\n");
  ASSERT_EQ(sh("chmod 644 " + fake), 0);
  std::string sub_gid = host("sed -n 's/^" + std::string(kRootlessUser) + ":\\([0-9]*\\):.*/\\1/p' /etc/subgid | head -1").out;
  ASSERT_FALSE(sub_gid.empty());
  sub_gid.pop_back();
  struct Impostor {
    std::string what, how, warning;  // warning: "" when left alone
    bool holder_after;               // a real holder made in its place
  };
  const std::string as = "setpriv --reuid " + std::string(kRootlessUser) + " --regid " + std::to_string(pw->pw_gid) +
                         " --clear-groups ";
  const std::string exact = "unshare --map-users=" + sub_uid + ",1,65535 --map-groups=" + sub_gid +
                            ",1,65535 --map-root-user ";
  const std::string py = "python3 " + fake + " " + store + "/userns.sock";
  std::vector<Impostor> impostors = {
      {"host root's namespace", py, "", false},
      {"a nested namespace of the user's", as + "unshare -U -r unshare -U -r " + py, "", false},
      {"the user's, other maps", as + "unshare -U -r " + py, "maps uids", true},
      {"the store's maps, another pid namespace", as + exact + "--pid --fork " + py, "another pid namespace", true},
      {"control: the store's maps, the caller's pid namespace", as + exact + py, "", false},
  };
  for (const auto& imp : impostors) {
    SCOPED_TRACE(imp.what);
    ASSERT_EQ(host("rm -f " + store + "/userns.sock").status, 0);
    for (pid_t h : holders()) kill(h, SIGKILL);
    const std::string out = dir_ / ("fake.out" + std::to_string(&imp - impostors.data()));
    pid_t pid = fork();
    if (pid == 0) {
      setsid();
      int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(o, 1);
      dup2(o, 2);
      execl("/bin/sh", "sh", "-c", ("exec " + imp.how).c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 100 && !has(read_file(out), "up"); ++i) usleep(50000);
    ASSERT_TRUE(has(read_file(out), "up")) << read_file(out);
    Outcome r = as_user({"run", "--image", "mine", "--", "/bin/sh", "-c", "cat /etc/greeting"}, "30");
    std::string served = read_file(out);
    std::vector<pid_t> after = holders();
    kill(-pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "hello\n") << r.err;
    EXPECT_TRUE(has(served, "served")) << served;  // it was asked
    if (imp.warning.empty()) EXPECT_FALSE(has(r.err, "replacing")) << r.err;
    else EXPECT_TRUE(has(r.err, "warning: replacing the holder") && has(r.err, imp.warning)) << r.err;
    EXPECT_EQ(after.size(), imp.holder_after ? 1u : 0u);
  }
  for (pid_t h : holders()) kill(h, SIGKILL);
  host("rm -f " + store + "/userns.sock");
}

TEST_F(Images, RootlessImportsAndRunsFromItsOwnStore) {
  ASSERT_EQ(sh("tar -C " + root_ + " --numeric-owner -czf " + (dir_ / "r.tgz") + " . && chmod 644 " + (dir_ / "r.tgz")), 0);
  ASSERT_EQ(sh("chmod 755 " + dir_.path()), 0);
  rootless_store_round(dir_, root_, true);
  rootless_store_round(dir_, root_, false);
  // Negative control: the root user's store does not see them.
  Outcome other = image({"ls", "--json"});
  EXPECT_EQ(json::parse(other.out).size(), 0u) << other.out;
}

}  // namespace
}  // namespace ultari::test

namespace ultari::test {
namespace {

// `ultari image build --debian`: a minbase Debian root with kmod, built
// once and kept under the build directory (the mirror is the host's).
class DebianImage : public ::testing::Test {
 protected:
  static Options opts(int timeout_s = 60) { return test_image_options(timeout_s); }
  static void SetUpTestSuite() { build_error_ = ensure_debian_test_image(); }
  void SetUp() override {
    if (!build_error_.empty()) FAIL() << build_error_;
  }
  static std::string build_error_;
};
std::string DebianImage::build_error_;

TEST_F(DebianImage, AMinbaseRootRunsWithItsPackages) {
  json i = json::parse(ultari::test::ultari({"image", "inspect", "--json", "minbase-kmod"}, opts()).out);
  EXPECT_TRUE(has(i["source"].get<std::string>(), "debootstrap --variant=minbase bookworm http")) << i.dump();
  const std::string script =
      "cat /etc/debian_version | cut -d. -f1; dpkg-query -W -f='${Status}\\n' kmod; cat /etc/hostname; "
      "cat /etc/resolv.conf | wc -c; ls /var/cache/apt/archives/*.deb 2>/dev/null | wc -l; "
      "ls /dev/console 2>&1 | head -1; id -u";
  Outcome r = ultari::test::ultari({"run", "--image", "minbase-kmod", "--", "/bin/sh", "-c", script}, opts());
  EXPECT_EQ(r.status, 0) << r.err;
  // The host's hostname and resolver are not baked in; no downloaded
  // packages are kept; /dev is the sandbox's own.
  EXPECT_EQ(r.out, "12\ninstall ok installed\nlocalhost\n0\n0\nls: cannot access '/dev/console': No such file or directory\n0\n")
      << r.err;
  // Negative control: the same script on the default root (the host's
  // system) says something else.
  Outcome host = ultari::test::ultari({"run", "--", "/bin/sh", "-c", script}, opts());
  EXPECT_NE(host.out, r.out);
}

TEST_F(DebianImage, BadBuildRequestsAreRefused) {
  struct Case {
    std::vector<std::string> args;
    std::string mention;
  };
  std::vector<Case> cases = {
      {{"image", "build", "x", "--debian", "book worm"}, "--debian 'book worm'"},
      {{"image", "build", "x", "--debian", "bookworm", "--variant", "huge"}, "--variant 'huge'"},
      {{"image", "build", "x", "--debian", "bookworm", "--include", "a;b"}, "'a;b'"},
      {{"image", "build", "x", "--debian", "bookworm", "--mirror", "ftp://x"}, "--mirror"},
      {{"image", "build", "x", "--debian", "no-such-suite", "--mirror", "http://127.0.0.1:9/debian"}, "debootstrap no-such-suite"},
  };
  for (const auto& c : cases) {
    Outcome r = ultari::test::ultari(c.args, opts(120));
    EXPECT_EQ(r.status, 125) << testing::PrintToString(c.args) << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.mention)) << testing::PrintToString(c.args) << ": " << r.err;
  }
  EXPECT_NE(ultari::test::ultari({"image", "inspect", "x"}, opts()).status, 0);
}

// Rootless: debootstrap runs in a user namespace where the caller is root,
// with chown doing nothing (one id). The root works like the rootful one:
// every package configured, the same checks from inside; its layer belongs
// to the caller alone. Nothing of the build outlives it.
// Rootless: debootstrap runs as root of the store's user namespace (the
// caller and its subordinate ids), so the root keeps its owners; in a store
// that keeps none (its `ids` file says "caller"), in a namespace of one id
// where chown does nothing.
TEST_F(DebianImage, ARootlessCallerBuildsADebianRootInItsOwnStore) {
  const passwd* pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  const uid_t uid = pw->pw_uid;
  const gid_t gid = pw->pw_gid;
  std::string sub_gid = host("sed -n 's/^" + std::string(kRootlessUser) + ":\\([0-9]*\\):.*/\\1/p' /etc/subgid | head -1").out;
  ASSERT_FALSE(sub_gid.empty());
  for (bool keeps_owners : {true, false}) {
    SCOPED_TRACE(keeps_owners ? "a store that keeps owners" : "a one-owner store");
    TempDir dir;
    std::string store = dir / "store";
    ASSERT_EQ(host("mkdir -p " + store + "/images && " + (keeps_owners ? "" : "echo caller > " + store + "/images/ids && ") +
                   "chown -R " + std::string(kRootlessUser) + " " + store + " && chmod 755 " + dir.path())
                  .status,
              0);
    Options o = rootless_options();
    o.timeout_s = 900;
    o.env.push_back("ULTARI_DATA_DIR=" + store);
    Outcome b = ultari::test::ultari({"image", "build", "deb", "--debian", "bookworm", "--variant", "minbase",
                                      "--include", "kmod", "-q"},
                                     o);
    ASSERT_EQ(b.status, 0) << b.err;
    o.timeout_s = 60;
    const std::string script =
        "cat /etc/debian_version | cut -d. -f1; dpkg-query -W -f='${Status}\\n' kmod; dpkg --audit; echo audit=$?; "
        "cat /etc/hostname; ls /var/cache/apt/archives/*.deb 2>/dev/null | wc -l; getent group utmp; id -u; "
        "stat -c '%U:%G' /var/cache/apt/archives/partial /var/log/wtmp";
    Outcome r = ultari::test::ultari({"run", "--image", "deb", "--", "/bin/sh", "-c", script}, o);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, std::string("12\ninstall ok installed\naudit=0\nlocalhost\n0\nutmp:x:43:\n0\n") +
                         (keeps_owners ? "root:root\nroot:utmp\n" : "root:root\nroot:root\n"))
        << r.err;

    // The layer on the host: utmp's group (43) is the first subordinate
    // gid + 42; in a one-owner store, everything is the caller's.
    json i = json::parse(ultari::test::ultari({"image", "inspect", "--json", "deb"}, o).out);
    std::string layer = store + "/images/layers/" + i["layers"][0].get<std::string>();
    EXPECT_EQ(host("stat -c %g " + layer + "/var/log/wtmp").out,
              keeps_owners ? std::to_string(std::stoul(sub_gid) + 42) + "\n" : std::to_string(gid) + "\n");
    if (!keeps_owners) {
      EXPECT_EQ(host("find " + layer + " ! -uid " + std::to_string(uid) + " -o ! -gid " + std::to_string(gid) +
                     " | wc -l")
                    .out,
                "0\n");
    }
    // Nothing left: the build's directory, its processes, its mounts.
    EXPECT_EQ(host("ls -A " + store + "/images/tmp").out, "");
    EXPECT_EQ(host("grep -c " + store + " /proc/self/mountinfo").out, "0\n");
    EXPECT_EQ(host("pgrep -u " + std::string(kRootlessUser) + " -f debootstrap | wc -l").out, "0\n");
  }
}

}  // namespace
// Was NOTED: debootstrap mounts /proc in its target and runs dpkg in a
// chroot there; a SIGKILLed `ultari image build` left the mounts in the
// host's table and the processes running. debootstrap now runs as pid 1 of
// its own pid and mount namespaces, killed when ultari dies. Controls: while
// it runs, its processes are there and its own mount table shows the
// target's /proc (the host's never does).
TEST_F(DebianImage, ABuildKilledMidwayLeavesNoProcessNorMount) {
  TempDir dir;
  std::string data = dir / "data", log = dir / "log";
  Outcome start = host("ULTARI_DATA_DIR=" + data + " setsid " + ULTARI_BIN +
                       " image build k --debian bookworm --variant minbase >/dev/null 2>" + log + " & echo $!");
  ASSERT_EQ(start.status, 0);
  pid_t pid = std::stoi(start.out);
  auto mounted_in = [&](const std::string& who) {
    return host("grep -c '" + data + ".*/proc' /proc/" + who + "/mountinfo").out;
  };
  // debootstrap mounts the target's /proc before "Installing core packages".
  ASSERT_TRUE(wait_for_text(log, pid, "Installing core packages")) << read_file(log);
  std::vector<pid_t> inside = pids_matching(data);
  ASSERT_FALSE(inside.empty());
  bool seen = false;
  for (pid_t p : inside) seen = seen || mounted_in(std::to_string(p)) != "0\n";
  EXPECT_TRUE(seen) << "no process of the build shows the target's /proc";
  EXPECT_EQ(mounted_in("self"), "0\n");
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int left = 1;
  for (int i = 0; i < 100 && left > 0; ++i) {
    usleep(100000);
    left = processes_matching(data);
  }
  EXPECT_EQ(left, 0) << host("ps -ef | grep " + data).out;
  EXPECT_EQ(host("cat /proc/[0-9]*/mountinfo 2>/dev/null | grep -c '" + data + "'").out, "0\n");
}

}  // namespace ultari::test
