// Attacks on `ultari image provision` (commit 5deb47c): a hostile BASE
// image, hostile build steps (what a package or a downloaded runcmd script
// does as root inside the build sandbox) and hostile image defaults, each
// against what the host does around the build: reading the base's
// os-release, the kernel layer, removing the kernel tree from the writable
// layer, committing the layer, applying the image's run defaults.
//
// Every test proves the attack fails, with a negative control showing the
// test would see it succeed. Most use a private store (ULTARI_DATA_DIR) with
// a base made of a static busybox; the setuid/xattr test uses the Debian
// test image (perl for raw system calls).
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "harness.h"

namespace ultari::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string release() {
  utsname u{};
  uname(&u);
  return u.release;
}

std::vector<std::string> xattr_names(const std::string& path) {
  std::vector<std::string> out;
  char buf[8192];
  ssize_t n = llistxattr(path.c_str(), buf, sizeof buf);
  for (ssize_t i = 0; i < n;) {
    std::string name(buf + i);
    out.push_back(name);
    i += static_cast<ssize_t>(name.size()) + 1;
  }
  return out;
}

class AttackProvision : public ::testing::Test {
 protected:
  std::string data() const { return dir_ / "data"; }
  Options opts(int timeout_s = 120) const {
    Options o;
    o.timeout_s = timeout_s;
    o.env.push_back("ULTARI_DATA_DIR=" + data());
    return o;
  }
  // A root of a static busybox (every applet), /etc/passwd and /etc/group
  // with root, os-release (ID=bbtest) in usr/lib linked from etc.
  std::string busybox_root(const std::string& name) {
    std::string r = dir_ / name;
    Outcome o = host("set -e; R=" + r +
                     "; mkdir -p $R/bin $R/etc $R/tmp $R/root $R/usr/lib && cp /usr/bin/busybox $R/bin/ && "
                     "for c in $(/usr/bin/busybox --list); do [ \"$c\" = busybox ] || ln -sf busybox \"$R/bin/$c\"; done && "
                     "printf 'root:x:0:0:root:/root:/bin/sh\\n' > $R/etc/passwd && printf 'root:x:0:\\n' > $R/etc/group && "
                     "printf 'ID=bbtest\\nVERSION_CODENAME=bbcode\\nVERSION_ID=1\\n' > $R/usr/lib/os-release && "
                     "ln -s ../usr/lib/os-release $R/etc/os-release && chmod 1777 $R/tmp && echo ok");
    EXPECT_EQ(o.out, "ok\n");
    return r;
  }
  bool import(const std::string& image, const std::string& root) {
    Outcome o = ultari({"image", "import", image, root}, opts());
    EXPECT_EQ(o.status, 0) << o.err;
    return o.status == 0;
  }
  bool import_busybox(const std::string& image = "bb") { return import(image, busybox_root("root-" + image)); }
  Outcome provision(const std::string& image, const std::string& base, const std::string& user_data,
                    std::vector<std::string> extra = {}, Options o = {}) {
    if (o.env.empty()) o = opts();
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    std::vector<std::string> args = {"image", "provision", image, "--from", base, "--user-data", file, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Outcome r = ultari(args, o);
    if (r.status == 0 && !r.out.empty()) {
      try {
        r.report = json::parse(r.out);
      } catch (const std::exception&) {
      }
    }
    return r;
  }
  Outcome in(const std::string& image, const std::string& script, std::vector<std::string> flags = {},
             Options o = {}) {
    if (o.env.empty()) o = opts();
    std::vector<std::string> args = {"run", "--image", image};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"--", "/bin/sh", "-c", script});
    return ultari(args, o);
  }
  // The top layer's directory of a provisioned image (its --json output).
  std::string top_layer(const json& image, const std::string& store = "") const {
    return (store.empty() ? data() : store) + "/images/layers/" + image["layers"][0].get<std::string>();
  }
  // The kernel layer of the private store ("" when none was made).
  std::string kernel_layer() const {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(data() + "/images/kernel", ec))
      if (e.path().filename().string().rfind("kernel-", 0) == 0 && !has(e.path().filename().string(), ".tmp") &&
          e.is_directory())
        return e.path().string();
    return "";
  }
  // Everything about a tree: names, types, sizes, modes, owners, contents.
  static std::string tree_digest(const std::string& dir) {
    return host("cd '" + dir + "' && find . -printf '%p %y %s %m %U %G %l\\n' | sort && "
                "find . -type f | sort | xargs -r sha256sum")
        .out;
  }
  int scratch_dirs() const {
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(data() + "/images/tmp", ec)) (void)e, ++n;
    return n;
  }
  TempDir dir_;
};

// --- 1. The base's os-release is read on the host ---------------------------

// A base image is untrusted. Its etc/os-release (read on the host, as root,
// for the jinja instance data v1.distro...) must resolve inside the image's
// layers only: not through a relative symlink climbing out of the layer, an
// absolute one through a directory symlink of the layer, or a directory
// symlink on the way (etc -> /host/dir). The values land in the rendered
// user-data, so an unknown top-level key made of them shows up as a
// warning of --check (nothing else runs).
TEST_F(AttackProvision, ABaseImagesOsReleaseNeverReadsAHostFile) {
  std::string secret = dir_ / "host-secret";
  ASSERT_EQ(host("mkdir -p " + secret + " && printf 'ID=hostleak\\nVERSION_CODENAME=hostcode\\n' > " + secret +
                 "/os-release && chmod 700 " + secret)
                .status,
            0);
  std::string climb;
  for (int i = 0; i < 24; ++i) climb += "../";
  struct Base {
    std::string name, setup;
  };
  std::vector<Base> bases = {
      // etc/os-release -> ../../../..(out of the layer)/host-secret/os-release
      {"rel", "rm @R@/etc/os-release && ln -s " + climb.substr(0, climb.size() - 1) + secret + "/os-release @R@/etc/os-release"},
      // etc -> /host-secret (the layer's directory symlink, followed by lstat on the host)
      {"dir", "rm -rf @R@/etc && ln -s " + secret + " @R@/etc"},
      // etc/os-release -> /hostroot/host-secret/os-release, hostroot -> /
      {"abs", "rm @R@/etc/os-release && ln -s /hostroot" + secret + "/os-release @R@/etc/os-release && ln -s / @R@/hostroot"},
  };
  for (const auto& b : bases) {
    std::string root = busybox_root("root-" + b.name);
    std::string setup = b.setup;
    for (size_t p; (p = setup.find("@R@")) != std::string::npos;) setup.replace(p, 3, root);
    ASSERT_EQ(host(setup).status, 0) << setup;
    ASSERT_TRUE(import("base-" + b.name, root));
  }
  ASSERT_TRUE(import_busybox("base-ok"));
  const std::string tpl = "## template: jinja\n#cloud-config\nk{{ v1.distro }}x{{ v1.distro_release }}: 1\n";
  for (const auto& b : bases) {
    Outcome r = provision("t-" + b.name, "base-" + b.name, tpl, {"--check"});
    EXPECT_FALSE(has(r.out + r.err, "hostleak")) << b.name << ": the host's file was read:\n" << r.err;
    EXPECT_FALSE(has(r.out + r.err, "hostcode")) << b.name << ": the host's file was read:\n" << r.err;
  }
  // Negative control: the base's own os-release (a symlink inside the image)
  // is read, and its values show in the warning.
  Outcome ok = provision("t-ok", "base-ok", tpl, {"--check"});
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_TRUE(has(ok.err, "unknown key 'kbbtestxbbcode'")) << ok.err;
}

// --- 2/3. The host removes lib/modules/<release> from the writable layer -----

// Before the commit the host removes upper/lib/modules/<release> and
// upper/usr/lib/modules/<release> (the kernel layer's files copied up). A
// build step replaces /lib or /usr/lib/modules with a symlink to a host
// path: the removal must not go through it (host files, or the shared
// kernel layer of the store, deleted as root).
TEST_F(AttackProvision, TheKernelTreeRemovalNeverFollowsTheBuildsSymlinksOntoTheHost) {
  ASSERT_TRUE(import_busybox());
  const std::string rel = release();
  // Negative control: a real copy of the kernel tree in the layer is removed
  // (the removal runs, and these are its paths).
  Outcome c = provision("ctl", "bb",
                        "#cloud-config\nruncmd:\n  - modprobe nf_conntrack || true\n  - mkdir -p /usr/lib/modules/" + rel +
                            "/extra /lib/modules/" + rel + "/extra && echo x > /usr/lib/modules/" + rel + "/extra/f\n");
  ASSERT_EQ(c.status, 0) << c.err;
  std::string top = top_layer(c.report);
  EXPECT_TRUE(exists(top + "/usr/lib/modules")) << "the build's copy-up is in the layer";
  EXPECT_FALSE(exists(top + "/usr/lib/modules/" + rel));
  EXPECT_FALSE(exists(top + "/lib/modules/" + rel));
  std::string kernel = kernel_layer();
  ASSERT_FALSE(kernel.empty());
  ASSERT_TRUE(exists(kernel + "/lib/modules/" + rel + "/modules.builtin"));
  ASSERT_TRUE(exists(kernel + "/usr/lib/modules/" + rel + "/modules.builtin"));
  std::string kernel_before = tree_digest(kernel);

  // The host's files: /lib -> V/lib and /usr/lib/modules -> V/usrlib.
  TempDir victim;
  ASSERT_EQ(host("mkdir -p " + victim / "lib/modules/" + rel + " " + victim / "usrlib/" + rel + " && echo keep > " +
                 victim / "lib/modules/" + rel + "/keep && echo keep > " + victim / "usrlib/" + rel + "/keep")
                .status,
            0);
  Outcome a = provision("atk-host", "bb",
                        "#cloud-config\nruncmd:\n  - modprobe nf_conntrack || true\n"
                        "  - rm -rf /lib && ln -s " + victim / "lib" + " /lib\n"
                        "  - rm -rf /usr/lib/modules && ln -s " + victim / "usrlib" + " /usr/lib/modules\n");
  EXPECT_TRUE(exists(victim / "lib/modules/" + rel + "/keep")) << "host files removed through upper/lib:\n" << a.err;
  EXPECT_TRUE(exists(victim / "usrlib/" + rel + "/keep")) << "host files removed through upper/usr/lib/modules:\n" << a.err;
  if (a.status == 0) {  // the links were made (and are kept as links)
    std::error_code ec;
    EXPECT_EQ(fs::read_symlink(top_layer(a.report) + "/lib", ec).string(), victim / "lib");
  }

  // The store's kernel layer (shared by every build and run): the same trick.
  Outcome k = provision("atk-kernel", "bb",
                        "#cloud-config\nruncmd:\n  - modprobe nf_conntrack || true\n"
                        "  - rm -rf /lib && ln -s " + kernel + "/lib /lib\n"
                        "  - rm -rf /usr/lib/modules && ln -s " + kernel + "/usr/lib/modules /usr/lib/modules\n");
  EXPECT_TRUE(exists(kernel + "/lib/modules/" + rel + "/modules.builtin")) << "kernel layer poisoned:\n" << k.err;
  EXPECT_TRUE(exists(kernel + "/usr/lib/modules/" + rel + "/modules.builtin")) << "kernel layer poisoned:\n" << k.err;
  EXPECT_EQ(tree_digest(kernel), kernel_before);
}

// --- 2. What a build makes: setuid files, file capabilities, devices, xattrs -

TEST_F(AttackProvision, SetuidFilesCapsDevicesAndOverlayXattrsFromABuildGiveNothing) {
  std::string error = ensure_debian_test_image();
  ASSERT_EQ(error, "");
  Options o = test_image_options(600);
  const std::string ud = R"UD(#cloud-config
write_files:
  - path: /usr/local/bin/setx
    permissions: '0755'
    content: |
      #!/usr/bin/perl
      # setx PATH NAME VALUE: setxattr(2); prints "NAME PATH ERRNO"
      my ($path, $name, $value) = @ARGV;
      $value = pack("H*", $value) if $value =~ s/^hex://;
      my $r = syscall(188, $path, $name, $value, length($value), 0);
      print "$name $path ", ($r < 0 ? $! + 0 : 0), "\n";
runcmd:
  - cp /usr/bin/perl /usr/local/bin/sperl && chmod 4755 /usr/local/bin/sperl
  - cp /usr/bin/perl /usr/local/bin/cperl && setx /usr/local/bin/cperl security.capability hex:0100000200202000000000000000000000000000 > /setcap-result
  - if mknod /null-copy c 1 3 2>/dev/null; then echo made; else echo refused; fi > /mknod-result
  - mkdir -p /xa/dir && echo f > /xa/file
  - |
    for n in user.test user.overlay.opaque user.overlay.redirect user.overlay.metacopy user.overlay.whiteout user.overlay.origin trusted.overlay.opaque trusted.overlay.redirect; do
      for p in /xa/dir /xa/file; do setx $p $n y; done
    done > /xattr-result
)UD";
  std::string file = dir_ / "suid.yaml";
  write_file(file, ud);
  Outcome r = ultari({"image", "provision", "atk-suid", "--from", "minbase-kmod", "--user-data", file, "--json"}, o);
  ASSERT_EQ(r.status, 0) << r.err;
  json img = json::parse(r.out);
  std::string store = test_image_store();
  std::string top = top_layer(img, store);

  // On the host: the setuid file is the sandboxes' root's (the shifted id),
  // the capability xattr is there (v3, that root's), all out of reach.
  std::string ids = read_file(store + "/images/ids");
  uid_t base = static_cast<uid_t>(std::stoul(ids.substr(0, ids.find(':'))));
  struct stat st{};
  ASSERT_EQ(lstat((top + "/usr/local/bin/sperl").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, base);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
  EXPECT_EQ(read_file(top + "/setcap-result"), "security.capability /usr/local/bin/cperl 0\n");
  auto caps = xattr_names(top + "/usr/local/bin/cperl");
  EXPECT_NE(std::find(caps.begin(), caps.end(), "security.capability"), caps.end());
  ASSERT_EQ(stat((store + "/images").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 077, 0u) << "the store is reachable by other users";
  EXPECT_EQ(st.st_uid, 0u);
  Outcome reach = host("setpriv --reuid=65534 --regid=65534 --clear-groups -- /bin/sh -c 'test -e " + top +
                       "/usr/local/bin/sperl && echo reached || echo denied'");
  EXPECT_EQ(reach.out, "denied\n");

  // No device node (CAP_MKNOD is not kept).
  EXPECT_EQ(read_file(top + "/mknod-result"), "refused\n");
  EXPECT_FALSE(exists(top + "/null-copy"));

  // Overlay's own xattrs cannot be set through the build's overlay: in the
  // committed layer they are escaped (user.overlay.overlay.*), so a later
  // mount never reads a redirect, metacopy, whiteout or opaque mark the
  // build made; trusted.* is refused. Negative control: user.test is there.
  for (const char* p : {"/xa/dir", "/xa/file"}) {
    auto names = xattr_names(top + p);
    EXPECT_NE(std::find(names.begin(), names.end(), "user.test"), names.end()) << p;
    for (const auto& n : names) {
      bool own = n.rfind("user.overlay.", 0) == 0 || n.rfind("trusted.overlay.", 0) == 0;
      EXPECT_FALSE(own && n.rfind("user.overlay.overlay.", 0) != 0) << p << ": " << n << " reached the layer";
    }
  }

  // A later run as an unprivileged user: no_new_privs makes the setuid bit
  // and the file capability nothing.
  Outcome u = ultari({"run", "--image", "atk-suid", "--user", "1000:1000", "--", "/bin/sh", "-c",
                      "/usr/local/bin/sperl -e 'print qq($< $>\\n)'; "
                      "/usr/local/bin/cperl -ne 'print if /^(CapPrm|CapEff|NoNewPrivs)/' /proc/self/status"},
                     test_image_options());
  EXPECT_EQ(u.out, "1000 1000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n") << u.err;
  // Negative control: inside, the file is setuid root.
  Outcome s = ultari({"run", "--image", "atk-suid", "--", "stat", "-c", "%a %u", "/usr/local/bin/sperl"},
                     test_image_options());
  EXPECT_EQ(s.out, "4755 0\n") << s.err;
}

// --- 4. Kernel modules -------------------------------------------------------

// modprobe words of runcmd reach the host's modprobe only when on the
// allowlist, normalised, never with path or glob characters; the kernel
// layer stays as made whatever a build or a run writes over it.
TEST_F(AttackProvision, ModprobeWordsReachOnlyTheAllowlistAndTheKernelLayerStaysReadOnly) {
  ASSERT_TRUE(import_busybox());
  Outcome r = provision("km", "bb", R"UD(#cloud-config
ultari:
  runcmd_strict: false
runcmd:
  - modprobe vfat || true
  - modprobe nf-conntrack-ftp || true
  - modprobe 'nf_conntrack_../../x' || true
  - modprobe nf_conntrack* || true
  - /sbin/modprobe -a nf_nat xfs || true
  - "true"
)UD");
  ASSERT_EQ(r.status, 0) << r.err;
  json km = r.report["provision_log"][0];
  ASSERT_EQ(km["module"], "kernel_modules") << r.out;
  EXPECT_EQ(km["not_in_kernel"].value("vfat", ""), "not on the allowlist") << km.dump();
  EXPECT_EQ(km["not_in_kernel"].value("xfs", ""), "not on the allowlist") << km.dump();
  std::set<std::string> named;
  for (const auto& [k, v] : km["not_in_kernel"].items()) named.insert(k);
  for (const auto& m : km.value("present", json::array())) named.insert(m.get<std::string>());
  for (const auto& n : named) EXPECT_EQ(n.find_first_of("./*-"), std::string::npos) << n;
  EXPECT_TRUE(named.count("nf_conntrack_ftp")) << km.dump();  // '-' read as '_' (as modprobe does)
  json mods = r.report["config"].value("kernel_modules", json::array());
  for (const auto& m : mods) EXPECT_TRUE(m != "vfat" && m != "xfs") << mods.dump();

  // A build and a run write over the kernel layer: their overlay takes it.
  const std::string scribble = "R=$(uname -r); echo pwned > /lib/modules/$R/modules.builtin && "
                               "rm -rf /usr/lib/modules/$R && touch /lib/modules/$R/planted && depmod -a 2>/dev/null; "
                               "cat /lib/modules/$R/modules.builtin";
  Outcome b = provision("kw", "bb", "#cloud-config\nultari:\n  kernel_modules: [nf_conntrack]\nruncmd:\n  - '" + scribble + "'\n");
  ASSERT_EQ(b.status, 0) << b.err;
  std::string kernel = kernel_layer();
  ASSERT_FALSE(kernel.empty());
  std::string digest = tree_digest(kernel);
  EXPECT_FALSE(has(digest, "planted"));
  Outcome s = in("kw", scribble);
  EXPECT_EQ(s.out, "pwned\n") << s.err;  // negative control: the writes happened (in the overlay)
  EXPECT_EQ(tree_digest(kernel), digest);
  EXPECT_TRUE(exists(kernel + "/usr/lib/modules/" + release() + "/modules.builtin"));
  // A hand-edited image naming a module off the allowlist: refused at run.
  std::string entry = data() + "/images/images/kw.json";
  json j = json::parse(read_file(entry));
  j["config"]["kernel_modules"] = json::array({"vfat"});
  write_file(entry, j.dump());
  Outcome v = in("kw", "true");
  EXPECT_EQ(v.status, 125);
  EXPECT_TRUE(has(v.err, "'vfat' is not on the allowlist")) << v.err;
}

// A run from an image with kernel modules holds its kernel layer; `image
// prune` removes the layers of other kernels (and of a module tree since
// changed) and half-made ones of dead processes, never the current layer
// nor one a sandbox holds (the unit test
// ProvisionKernel.PruneKeepsTheCurrentAndHeldLayersAndCountsWhatItFrees
// holds one of another kernel).
TEST_F(AttackProvision, PruneRemovesOldKernelLayersButNotTheCurrentOneNorAHeldOne) {
  ASSERT_TRUE(import_busybox());
  Outcome p = provision("kp", "bb", "#cloud-config\nultari:\n  kernel_modules: [nf_conntrack]\n");
  ASSERT_EQ(p.status, 0) << p.err;
  const std::string current = kernel_layer();
  ASSERT_FALSE(current.empty());
  const std::string cache = data() + "/images/kernel";
  // An old kernel's layer (a copy of this one under another name), and a
  // layer a process that is gone was making.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const std::string old = cache + "/kernel-00000000deadbeef";
  const std::string half = cache + "/kernel-00000000cafef00d.tmp-" + std::to_string(dead) + "-abcd";
  const std::string alive = cache + "/kernel-00000000feedf00d.tmp-" + std::to_string(getpid()) + "-abcd";
  ASSERT_EQ(host("cp -a " + current + " " + old + " && cp -a " + current + " " + half + " && mkdir " + alive +
                 " && echo ok").out, "ok\n");

  // A running sandbox of the image holds the current layer (shared lock).
  auto free_to_take = [&] { return host("flock -n -x " + current + ".lock true").status == 0; };
  setenv("ULTARI_DATA_DIR", data().c_str(), 1);
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  pid_t run = spawn_ultari({"run", "--image", "kp", "--", "/bin/sh", "-c", "echo up; exec sleep 60"}, out[1]);
  unsetenv("ULTARI_DATA_DIR");
  close(out[1]);
  char buf[8] = {};
  EXPECT_EQ(read(out[0], buf, 3), 3);
  close(out[0]);
  EXPECT_FALSE(free_to_take()) << "a running sandbox does not hold its kernel layer";
  kill(run, SIGTERM);
  waitpid(run, nullptr, 0);
  EXPECT_TRUE(free_to_take());  // control: the lock is free once it ends

  Outcome r = ultari({"image", "prune"}, opts());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "removed 1 kernel layers")) << r.out;
  EXPECT_FALSE(exists(old));
  EXPECT_FALSE(exists(half));
  EXPECT_TRUE(exists(alive));  // its process (this one) may still be making it
  EXPECT_TRUE(exists(current + "/usr/lib/modules/" + release() + "/modules.builtin"));
  rmdir(alive.c_str());
  // The image still runs, on the kept layer.
  Outcome s = in("kp", "ls /lib/modules/$(uname -r)/modules.builtin");
  EXPECT_EQ(s.status, 0) << s.err;
  // Negative control: a second prune has nothing of the kernel's left.
  Outcome again = ultari({"image", "prune"}, opts());
  EXPECT_FALSE(has(again.out, "kernel layers")) << again.out;
}

// --- 5. An image's run defaults ------------------------------------------------

// An image may relax a run (egress, ports, limits above the defaults): a run
// of it must say so, since whoever runs it expects the defaults (no network,
// 1G, 1024 pids). An allow pattern the CLI refuses is refused with the
// CLI's reason, at provisioning or at the run.
TEST_F(AttackProvision, AnImagesDefaultsThatWeakenARunAreAnnouncedAndBadOnesRefused) {
  ASSERT_TRUE(import_busybox());
  struct Case {
    std::string image, ultari_key, must_mention;
  };
  std::vector<Case> cases = {
      {"atk-open", "  network:\n    open: true\n", "network"},
      {"atk-allow", "  network:\n    allow: [example.com]\n    ports: [25]\n", "network"},
      {"atk-big", "  limits:\n    memory: 100T\n    pids: 4000000\n", "memory"},
  };
  for (const auto& c : cases) {
    Outcome p = provision(c.image, "bb", "#cloud-config\nultari:\n" + c.ultari_key);
    ASSERT_EQ(p.status, 0) << p.err;
    Outcome r = in(c.image, "true");
    std::string said = r.err + (r.report.is_object() ? r.report.value("warnings", json::array()).dump() : "");
    EXPECT_TRUE(has(said, c.must_mention) && has(said, c.image))
        << c.image << ": a run weaker than the defaults, silently:\n" << said;
  }
  // Negative control: an image that relaxes nothing says nothing of it.
  ASSERT_EQ(provision("plain", "bb", "#cloud-config\nhostname: plain\n").status, 0);
  Outcome plain = in("plain", "hostname");
  EXPECT_EQ(plain.out, "plain\n") << plain.err;
  std::string plain_said = plain.err + (plain.report.is_object() ? plain.report.value("warnings", json::array()).dump() : "");
  EXPECT_FALSE(has(plain_said, "network") || has(plain_said, "memory")) << plain_said;

  // '*' is refused as on the CLI: by provisioning, or by the run.
  Outcome star = provision("star", "bb", "#cloud-config\nultari:\n  network:\n    allow: ['*']\n");
  if (star.status == 0) {
    Outcome r = in("star", "true");
    EXPECT_EQ(r.status, 125);
    EXPECT_TRUE(has(r.err, "'*' would allow every name")) << r.err;
  } else {
    EXPECT_EQ(star.status, 125);
    EXPECT_TRUE(has(star.err, "'*'")) << star.err;
  }
}

// A hand-edited (or damaged) images/<name>.json: a bad config value fails
// the run with an error naming the image, never a bare library exception,
// a crash, or a value silently changed (port 70000 is not port 4464).
TEST_F(AttackProvision, AHandEditedImageConfigFailsWithAnErrorNamingTheImage) {
  ASSERT_TRUE(import_busybox());
  ASSERT_EQ(provision("edited", "bb", "#cloud-config\nhostname: edited\n").status, 0);
  std::string entry = data() + "/images/images/edited.json";
  json original = json::parse(read_file(entry));
  for (const char* bad : {R"({"hostname": 5})", R"({"limits": {"memory_bytes": "lots"}})",
                          R"({"network": {"ports": [70000]}})", R"({"network": {"allow": "example.com"}})"}) {
    json j = original;
    j["config"] = json::parse(bad);
    write_file(entry, j.dump());
    Outcome r = in("edited", "echo ran");
    EXPECT_EQ(r.status, 125) << bad << ": " << r.out << r.err;
    EXPECT_TRUE(has(r.err, "edited")) << bad << ": " << r.err;
  }
  // Negative control: the entry as provisioned runs.
  write_file(entry, original.dump());
  EXPECT_EQ(in("edited", "hostname").out, "edited\n");
}

// --- 6. The cache ------------------------------------------------------------

TEST_F(AttackProvision, VariablesThatWouldCollideWhenConcatenatedAreDifferentCacheKeys) {
  ASSERT_TRUE(import_busybox());
  const std::string tpl = "## template: jinja\n#cloud-config\nruncmd:\n  - echo same > /same\n";
  Outcome a = provision("v1", "bb", tpl, {"--var", "a=1", "--var", "b=2"});
  ASSERT_EQ(a.status, 0) << a.err;
  for (const auto& v : {std::string("a=1\nvar 1:b=1:2"), std::string("a=1=b=2"), std::string("a=1\nb=2")}) {
    Outcome b = provision("v2", "bb", tpl, {"--var", v});
    ASSERT_EQ(b.status, 0) << b.err;
    EXPECT_EQ(b.report["cache_hit"], false) << v;
  }
  // Negative control: the same variables (another order) are a hit.
  Outcome same = provision("v3", "bb", tpl, {"--var", "b=2", "--var", "a=1"});
  EXPECT_EQ(same.report["cache_hit"], true);
}

// The build sees the image's name (INSTANCE_ID; jinja's v1.instance_id is
// rendered into the key, this is not): a cache hit under another name must
// not give that image the first name's build.
// The build's INSTANCE_ID is not the image's name (a cache hit under
// another name would carry the first one's): it comes from the cache key,
// the same for every name of the same inputs.
TEST_F(AttackProvision, ACacheHitUnderAnotherNameDoesNotCarryTheFirstNamesInstanceId) {
  ASSERT_TRUE(import_busybox());
  const std::string ud = "#cloud-config\nruncmd:\n  - echo \"$INSTANCE_ID\" > /iid\n";
  ASSERT_EQ(provision("first", "bb", ud).status, 0);
  std::string first = in("first", "cat /iid").out;
  EXPECT_EQ(first.rfind("ultari-", 0), 0u) << first;
  EXPECT_EQ(first.find("first"), std::string::npos) << first;
  Outcome second = provision("second", "bb", ud);
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_EQ(second.report["cache_hit"], true);
  EXPECT_EQ(in("second", "cat /iid").out, first);
  // Negative control: other inputs, another id.
  ASSERT_EQ(provision("third", "bb", ud + "  - echo other\n").status, 0);
  EXPECT_NE(in("third", "cat /iid").out, first);
}

// --- 7. Resources of the build ---------------------------------------------

TEST_F(AttackProvision, BuildSandboxesHaveTheirMemoryAndPidsLimits) {
  ASSERT_TRUE(import_busybox());
  // The build's cgroup, read on the host while a step runs.
  write_file(dir_ / "sleep.yaml", "#cloud-config\nruncmd:\n  - sleep 3\n");
  Outcome cg = host("ULTARI_DATA_DIR=" + data() + " " + std::string(ULTARI_BIN) + " image provision slp --from bb --user-data " +
                    dir_ / "sleep.yaml" + " -q >/dev/null 2>&1 & P=$!; "
                    "for i in $(seq 100); do [ -n \"$(find /sys/fs/cgroup -maxdepth 3 -name \"ultari-$P-*\" | head -1)\" ] && break; sleep 0.05; done; "
                    "sleep 0.5; for d in $(find /sys/fs/cgroup -maxdepth 3 -name \"ultari-$P-*\"); do "
                    "for f in pids.max memory.max memory.limit_in_bytes; do [ -f $d/$f ] && echo $f $(cat $d/$f); done; done; wait $P");
  EXPECT_TRUE(has(cg.out, "pids.max 4096\n")) << cg.out;
  EXPECT_TRUE(has(cg.out, "memory.max 2147483648\n") || has(cg.out, "memory.limit_in_bytes 2147483648\n")) << cg.out;
  // A memory hog stops at --memory, named.
  Outcome m = provision("hog", "bb", "#cloud-config\nruncmd:\n  - x=$(head -c 314572800 /dev/zero | tr '\\0' a); echo ${#x}\n",
                        {"--memory", "64M"});
  EXPECT_EQ(m.status, 125);
  EXPECT_TRUE(has(m.err, "out of memory")) << m.err;
  EXPECT_EQ(scratch_dirs(), 0);
  // Negative control: 30 MB fits.
  Outcome fit = provision("fit", "bb", "#cloud-config\nruncmd:\n  - x=$(head -c 31457280 /dev/zero | tr '\\0' a); test ${#x} = 31457280\n",
                          {"--memory", "64M"});
  EXPECT_EQ(fit.status, 0) << fit.err;
}

// The writable layer is on the store's disk: what a build may write there is
// limited (--max-size); without it a step writes what it likes.
TEST_F(AttackProvision, TheBuildsDiskWritesStopAtMaxSize) {
  ASSERT_TRUE(import_busybox());
  const std::string ud = "#cloud-config\nruncmd:\n  - dd if=/dev/zero of=/big bs=1M count=200 2>/dev/null\n";
  Outcome capped = provision("capped", "bb", ud, {"--max-size", "50M"});
  EXPECT_TRUE(has(capped.err, "provision: runcmd")) << "the build did not run:\n" << capped.err;
  EXPECT_EQ(capped.status, 125) << capped.out;
  EXPECT_TRUE(has(capped.err, "50")) << capped.err;  // names the limit
  EXPECT_EQ(ultari({"image", "inspect", "capped"}, opts()).status, 125);
  EXPECT_EQ(scratch_dirs(), 0);
  // Space taken in one call (fallocate), the step then idle: counted too.
  Outcome fa = provision("falloc", "bb", "#cloud-config\nruncmd:\n  - fallocate -l 1073741824 /big && sleep 3\n",
                         {"--max-size", "50M"});
  EXPECT_EQ(fa.status, 125) << fa.out;
  EXPECT_TRUE(has(fa.err, "--max-size")) << fa.err;
  EXPECT_EQ(scratch_dirs(), 0);
  // Negative control: without the flag, 200 MB is written and committed.
  Outcome big = provision("big", "bb", ud);
  ASSERT_EQ(big.status, 0) << big.err;
  EXPECT_GE(big.report["size"].get<uint64_t>(), 200ull << 20);

  // A build that writes beneath a path too long to name (mkdir and cd, a
  // level at a time) is stopped all the same, and its scratch removed.
  Outcome hidden = provision("hidden", "bb",
                             "#cloud-config\nruncmd:\n  - p=; for i in $(seq 150); do p=${p}aaaaaaaaaaaaaaaaaaaa/; done; "
                             "mkdir -p $p && cd $p && mkdir -p $p && dd if=/dev/zero of=${p}big bs=1M count=200 2>/dev/null\n",
                             {"--max-size", "50M"});
  EXPECT_EQ(hidden.status, 125) << hidden.err;
  EXPECT_TRUE(has(hidden.err, "--max-size")) << hidden.err;
  EXPECT_EQ(scratch_dirs(), 0);
}

// --- 8. Timeouts -------------------------------------------------------------

TEST_F(AttackProvision, ATimedOutStepFailsPromptlyNamesRuncmdAndLeavesNothing) {
  ASSERT_TRUE(import_busybox());
  write_file(dir_ / "slow.yaml", "#cloud-config\nruncmd:\n  - echo start\n  - sleep 37\n");
  auto start = std::chrono::steady_clock::now();
  Outcome r = ultari({"image", "provision", "slow", "--from", "bb", "--user-data", dir_ / "slow.yaml", "--timeout", "2s"},
                     opts());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.status, 125);
  EXPECT_LT(secs, 15.0);
  EXPECT_TRUE(has(r.err, "runcmd[1]")) << r.err;
  EXPECT_TRUE(has(r.err, "timed out after 2 s")) << r.err;
  EXPECT_EQ(ultari({"image", "inspect", "slow"}, opts()).status, 125);
  EXPECT_EQ(scratch_dirs(), 0);
  EXPECT_EQ(processes_matching("sleep 37"), 0);
  // The same, started here: its cgroups are gone when it is.
  setenv("ULTARI_DATA_DIR", data().c_str(), 1);
  pid_t pid = spawn_ultari({"image", "provision", "slow2", "--from", "bb", "--user-data", dir_ / "slow.yaml", "--timeout",
                            "2s", "-q"});
  unsetenv("ULTARI_DATA_DIR");
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 125) << status;
  EXPECT_EQ(groups_of(pid), 0);
  EXPECT_EQ(scratch_dirs(), 0);
  // Negative control: with time enough, the same user-data is committed.
  write_file(dir_ / "quick.yaml", "#cloud-config\nruncmd:\n  - echo start\n  - sleep 0.2\n");
  Outcome ok = ultari({"image", "provision", "quick", "--from", "bb", "--user-data", dir_ / "quick.yaml", "--timeout", "2s"},
                      opts());
  EXPECT_EQ(ok.status, 0) << ok.err;
}

// A base's own shell runs the fetch: it may print anything between the
// markers, whatever size check the fetch script makes. The host refuses an
// #include answer over the user-data limit before it decodes it. Control:
// a small answer through the same shell is taken.
TEST_F(AttackProvision, AFetchersAnswerIsBoundedOnTheHostWhateverTheBaseSays) {
  std::string root = busybox_root("root-liar");
  write_file(root + "/liar-sh",
             "#!/bin/busybox sh\n"
             "case \"$2\" in *ultari-fetch-begin*)\n"
             "  echo ultari-fetch-begin\n"
             "  case \"$F_URL\" in\n"
             "    *big*) head -c 20971520 /dev/zero | base64 -w0 ;;\n"
             "    *) printf '#cloud-config\\nwrite_files:\\n  - path: /small\\n    content: ok\\n' | base64 -w0 ;;\n"
             "  esac\n"
             "  echo; echo ultari-fetch-end; exit 0 ;;\n"
             "esac\n"
             "exec /bin/busybox sh \"$@\"\n",
             0755);
  ASSERT_EQ(host("R=" + root + "; rm $R/bin/sh && mv $R/liar-sh $R/bin/sh && echo ok").out, "ok\n");
  ASSERT_TRUE(import("liar", root));
  Outcome big = provision("liar-big", "liar", "#include\nhttp://example.com/big.yaml\n");
  EXPECT_EQ(big.status, 125);
  EXPECT_TRUE(has(big.err, "#include: http://example.com/big.yaml is larger than 16777216 bytes")) << big.err;
  EXPECT_EQ(scratch_dirs(), 0);
  Outcome small = provision("liar-small", "liar", "#include\nhttp://example.com/small.yaml\n");
  ASSERT_EQ(small.status, 0) << small.err;
  EXPECT_EQ(in("liar-small", "cat /small").out, "ok");
}

// --- 9. Output ---------------------------------------------------------------

// Invalid UTF-8 and control characters in what is logged: the image's entry,
// inspect --json and ls --json stay JSON.
TEST_F(AttackProvision, InvalidUtf8InTheProvisioningLogKeepsTheStoreReadable) {
  ASSERT_TRUE(import_busybox());
  Outcome r = provision("u8", "bb", "## template: jinja\n#cloud-config\nruncmd:\n  - echo \"{{ x }}\" > /x\n",
                        {"--var", "x=\xff\xfe\x1b]0;title\x07"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_TRUE(r.report.is_object()) << r.out;
  EXPECT_NO_THROW(json::parse(read_file(data() + "/images/images/u8.json")));
  Outcome i = ultari({"image", "inspect", "--json", "u8"}, opts());
  EXPECT_EQ(i.status, 0) << i.err;
  EXPECT_NO_THROW(json::parse(i.out));
  Outcome l = ultari({"image", "ls", "--json"}, opts());
  EXPECT_EQ(l.status, 0) << l.err;
  EXPECT_NO_THROW(json::parse(l.out));
  EXPECT_EQ(ultari({"image", "inspect", "u8"}, opts()).status, 0);
  // Negative control: the bytes did reach the image.
  EXPECT_EQ(in("u8", "od -An -tx1 /x | head -1 | cut -c1-9").out, " ff fe 1b\n");
}

// A failing step's output (a downloaded script's) is shown in the error: one
// huge line, invalid UTF-8 and terminal escapes must not reach the
// operator's terminal whole.
TEST_F(AttackProvision, AFailingStepsHostileOutputIsBoundedAndEscapedInTheError) {
  ASSERT_TRUE(import_busybox());
  Outcome r = provision("noisy", "bb",
                        "#cloud-config\nruncmd:\n  - head -c 5000000 /dev/zero | tr '\\0' a; "
                        "printf '\\377\\376\\033]0;pwned\\007\\033[2J'; echo; echo the-end; exit 3\n");
  EXPECT_EQ(r.status, 125);
  EXPECT_TRUE(has(r.err, "runcmd[0]")) << r.err.substr(0, 300);
  EXPECT_TRUE(has(r.err, "the-end")) << r.err.substr(0, 300);  // negative control: the output's end is shown
  EXPECT_LT(r.err.size(), 64u << 10) << "the error holds " << r.err.size() << " bytes";
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << "a raw terminal escape reached stderr";
}

// --- 10. write_files targets --------------------------------------------------

TEST_F(AttackProvision, WriteFilesOnKernelAndDeviceTargetsFailCleanlyAndChangeNothingHere) {
  ASSERT_TRUE(import_busybox());
  struct stat before{};
  ASSERT_EQ(stat("/dev/null", &before), 0);
  std::string core = read_file("/proc/sys/kernel/core_pattern");
  struct Case {
    std::string path, owner, message;
  };
  std::vector<Case> cases = {
      {"/dev/null", "root:root", "write_files: /dev/null"},
      {"/proc/sys/kernel/core_pattern", "root:root", "write_files: /proc/sys/kernel/core_pattern"},
      {"/sys/kernel/mm/transparent_hugepage/enabled", "root:root", "write_files: /sys/kernel"},
      {"/etc/owned", "nobody:nogroup", "nobody:nogroup"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    Outcome r = provision("wf" + std::to_string(i), "bb",
                          "#cloud-config\nwrite_files:\n  - path: " + c.path + "\n    owner: " + c.owner +
                              "\n    permissions: '0600'\n    content: \"|/tmp/evil %p\"\n");
    EXPECT_EQ(r.status, 125) << c.path;
    EXPECT_TRUE(has(r.err, c.message)) << r.err;
    EXPECT_EQ(scratch_dirs(), 0);
  }
  struct stat after{};
  ASSERT_EQ(stat("/dev/null", &after), 0);
  EXPECT_EQ(after.st_mode, before.st_mode);
  EXPECT_EQ(after.st_rdev, before.st_rdev);
  EXPECT_EQ(after.st_uid, before.st_uid);
  EXPECT_EQ(read_file("/proc/sys/kernel/core_pattern"), core);
  // Negative control: a path of the image's own, owner resolved inside.
  Outcome ok = provision("wf-ok", "bb",
                         "#cloud-config\nwrite_files:\n  - path: /etc/owned\n    owner: root:root\n    permissions: '0600'\n"
                         "    content: \"x\"\n");
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(in("wf-ok", "stat -c '%u:%g %a' /etc/owned").out, "0:0 600\n");
}

}  // namespace
}  // namespace ultari::test
