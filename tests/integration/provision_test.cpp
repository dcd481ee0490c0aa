// `ultari image provision`: cloud-init user-data run in build sandboxes on
// a real Debian minbase root (built once per build directory from the
// host's mirror, with kmod), the result checked from inside sandboxes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Whether a process named `comm` descends from `root` (host pids).
bool descendant_named(pid_t root, const std::string& comm) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (read_file(e.path() / "comm") != comm + "\n") continue;
    pid_t p = std::stoi(name);
    for (int depth = 0; depth < 32 && p > 1; ++depth) {
      std::string stat = read_file("/proc/" + std::to_string(p) + "/stat");
      size_t paren = stat.rfind(')');
      if (paren == std::string::npos) break;
      std::istringstream in(stat.substr(paren + 2));
      char state = 0;
      pid_t parent = 0;
      in >> state >> parent;
      if (parent == root) return true;
      p = parent;
    }
  }
  return false;
}

class Provision : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { build_error_ = ensure_debian_test_image(); }
  void SetUp() override {
    if (!build_error_.empty()) GTEST_FAIL() << build_error_;
  }
  static std::string build_error_;

  // A name of this test process's own (tests run in parallel over one
  // store, which outlives a test run).
  std::string name(const std::string& suffix) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string("t-") + info->name() + "-" + suffix + "-" + std::to_string(getpid());
  }
  Outcome provision(const std::string& image, const std::string& user_data, std::vector<std::string> extra = {},
                    Options o = test_image_options(600)) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    std::vector<std::string> args = {"image", "provision", image, "--from", "minbase-kmod", "--user-data", file, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Outcome r = ultari(args, o);
    if (r.status == 0 && !r.out.empty()) r.report = json::parse(r.out);
    return r;
  }
  Outcome in(const std::string& image, const std::string& script, std::vector<std::string> flags = {}) {
    std::vector<std::string> args = {"run", "--image", image};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"--", "/bin/sh", "-c", script});
    return ultari(args, test_image_options());
  }
  json inspect(const std::string& image) {
    Outcome r = ultari({"image", "inspect", "--json", image}, test_image_options());
    return r.status == 0 ? json::parse(r.out) : json();
  }
  // Both indexes of the lab repository (make_lab_repo) arrived: apt knows
  // both packages, and said nothing amiss.
  void expect_lab_packages(const std::string& image) {
    EXPECT_EQ(in(image, "apt-cache show lab-tool lab-extra | grep ^Version").out, "Version: 1.0\nVersion: 2.0\n");
    std::string apt_output;
    json log = inspect(image);  // (named: a range over a temporary's member would dangle)
    for (const auto& m : log["provision_log"])
      if (m["module"] == "packages") apt_output = m["output"].get<std::string>();
    EXPECT_FALSE(has(apt_output, "W:") || has(apt_output, "Err:") || has(apt_output, "Failed")) << apt_output;
  }
  // Build directories in the store's tmp/ whose process is gone: what a
  // build that failed left behind (other tests' builds may be running).
  int scratch_dirs() {
    Outcome r = host("for d in $(ls " + test_image_store() +
                        "/images/tmp 2>/dev/null); do [ -d /proc/${d%%-*} ] || echo $d; done | wc -l");
    return std::stoi(r.out);
  }
  TempDir dir_;
};
std::string Provision::build_error_;

const char* const kTableCloth = R"UD(#cloud-config
users:
  - name: tablecloth
    gecos: TableCloth
    groups: [adm, sudo, audio, video, netdev]
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /bin/bash
write_files:
  - path: /etc/modprobe.d/nf_conntrack_ipv4.conf
    append: false
    content: |
      alias nf_conntrack_ipv4 nf_conntrack
packages:
  - locales
locale: ko_KR.UTF-8
runcmd:
  - modprobe nf_conntrack
  - modprobe nf_conntrack_netlink
  - depmod -a
  - modprobe nf_conntrack_ipv4
)UD";

// The issue's real case: a disposable banking environment on a minbase
// root with kmod.
TEST_F(Provision, TheTableClothCaseProvisionsAndItsSandboxesShowTheResult) {
  std::string img = name("tc");
  // (--no-cache: the store outlives a test run)
  Outcome r = provision(img, kTableCloth, {"--no-cache"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.report["cache_hit"], false);
  Outcome s = in(img,
                 "id tablecloth; getent passwd tablecloth | cut -d: -f5,7; cat /etc/modprobe.d/nf_conntrack_ipv4.conf; "
                 "stat -c '%U:%G %a' /etc/modprobe.d/nf_conntrack_ipv4.conf; cat /etc/default/locale; echo LANG=$LANG; "
                 "locale -a | grep -c ko_KR.utf8; dpkg-query -W -f='${Status}\\n' locales; "
                 "modprobe nf_conntrack && modprobe nf_conntrack_ipv4 && depmod -a && modprobe nf_conntrack_netlink && "
                 "echo modules-ok; test -d /sys/module/nf_conntrack && echo sysfs-ok; "
                 "cat /etc/sudoers.d/90-cloud-init-users | tail -1; stat -c '%U %a' /home/tablecloth");
  EXPECT_EQ(s.status, 0) << s.err;
  EXPECT_EQ(s.out,
            "uid=1000(tablecloth) gid=1001(tablecloth) groups=1001(tablecloth),4(adm),27(sudo),29(audio),44(video),"
            "1000(netdev)\n"
            "TableCloth:/bin/bash\nalias nf_conntrack_ipv4 nf_conntrack\nroot:root 644\nLANG=ko_KR.UTF-8\n"
            "LANG=ko_KR.UTF-8\n1\ninstall ok installed\nmodules-ok\nsysfs-ok\n"
            "tablecloth ALL=(ALL) NOPASSWD:ALL\ntablecloth 755\n")
      << s.err;
  // The log names each module in Ultari's order, with the runcmd items.
  json i = inspect(img);
  std::vector<std::string> modules;
  for (const auto& m : i["provision_log"]) modules.push_back(m["module"]);
  EXPECT_EQ(modules, (std::vector<std::string>{"kernel_modules", "write_files", "users", "packages", "locale", "runcmd"}))
      << i.dump();
  EXPECT_EQ(i["provision_log"].back()["items"].size(), 4u) << i.dump();
  EXPECT_EQ(i["parent"], "minbase-kmod");
  Outcome sum = host("sha256sum " + dir_ / (img + ".yaml") + " | cut -d' ' -f1");
  EXPECT_EQ(i["user_data_sha256"].get<std::string>() + "\n", sum.out);
  // Nothing of the host's kernel tree was committed into the image.
  for (const auto& layer : i["layers"]) {
    std::string top = test_image_store() + "/images/layers/" + layer.get<std::string>();
    EXPECT_FALSE(exists(top + "/usr/lib/modules") && exists(top + "/usr/lib/modules/" + host("uname -r").out));
    break;
  }

  // Negative control: the base has none of it, and its modprobe fails.
  Outcome base = ultari({"run", "--image", "minbase-kmod", "--", "/bin/sh", "-c",
                         "id tablecloth; modprobe nf_conntrack; echo rc=$?"},
                        test_image_options());
  EXPECT_TRUE(has(base.out + base.err, "no such user")) << base.out << base.err;
  EXPECT_TRUE(has(base.out, "rc=1")) << base.out << base.err;
}

TEST_F(Provision, EveryModuleRunsInOrderWithCloudInitsKeys) {
  std::string img = name("all");
  // A CA of the test's own for ca_certs.
  ASSERT_EQ(host("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + dir_ / "ca.key" + " -out " + dir_ / "ca.pem" +
                    " -days 2 -subj /CN=ultari-test-ca 2>/dev/null")
                .status,
            0);
  std::string pem = read_file(dir_ / "ca.pem");
  std::string indented;
  for (size_t p = 0; p < pem.size();) {
    size_t nl = pem.find('\n', p);
    indented += "        " + pem.substr(p, nl - p + 1);
    p = nl + 1;
  }
  // "gz+b64" of "zipped\n"
  std::string gz = host("printf 'zipped\\n' | gzip -c | base64 -w0").out;
  std::string user_data = std::string(R"UD(#cloud-config
bootcmd:
  - echo boot > /etc/boot-ran
  - [sh, -c, 'echo "argv $0" >> /etc/boot-ran', item]
write_files:
  - path: /etc/plain.txt
    content: "plain\n"
    permissions: '0600'
  - path: /etc/b64.txt
    encoding: b64
    content: aGVsbG8gYjY0Cg==
  - path: /etc/gz.txt
    encoding: gz+b64
    content: )UD") + gz + R"UD(
  - path: /etc/plain.txt
    append: true
    content: "more\n"
  - path: /home/alice/owned.txt
    owner: alice:devs
    permissions: '0640'
    defer: true
    content: "mine\n"
groups:
  - devs: [root]
  - empty
users:
  - default
  - name: alice
    uid: 2001
    primary_group: devs
    groups: [users]
    shell: /bin/sh
    lock_passwd: false
    hashed_passwd: "$6$salt$IxDD3jeSOb5eB1CX5LBsqZFVkJdido3OUILO5Ifz5iwMuTS4XMS130MTSuDDl3aCI6WouIL9AjRbLCelDCy.g."
    ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdummy alice@test"]
  - name: svc
    system: true
apt:
  conf: |
    APT::Install-Recommends "false";
  debconf_selections:
    tz: "tzdata tzdata/Areas select Asia"
  sources:
    extra:
      source: "deb $MIRROR $RELEASE-updates main"
package_update: true
packages:
  - jq
locale: ko_KR.UTF-8
timezone: Asia/Seoul
hostname: provisioned
ca_certs:
  trusted:
    - |
)UD" + indented + R"UD(runcmd:
  - cd /opt
  - echo "cwd $(pwd)" > /opt/runcmd.txt
  - [sh, -c, 'echo "argv item" >> /opt/runcmd.txt']
)UD";
  // apt sources name $MIRROR: the test gives the primary mirror (the base's).
  std::string mirror = in("minbase-kmod", "grep -hoE 'https?://[^ ]+' /etc/apt/sources.list | head -1").out;
  if (!mirror.empty() && mirror.back() == '\n') mirror.pop_back();
  ASSERT_FALSE(mirror.empty());
  user_data.replace(user_data.find("apt:\n"), 5, "apt:\n  primary:\n    - arches: [default]\n      uri: " + mirror + "\n");
  Outcome r = provision(img, user_data);
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome s = in(img,
                 "cat /etc/boot-ran; stat -c '%a %U' /etc/plain.txt; cat /etc/plain.txt /etc/b64.txt /etc/gz.txt; "
                 "stat -c '%U:%G %a' /home/alice/owned.txt; id alice; getent group devs | cut -d: -f1,4; "
                 "getent group empty | cut -d: -f1; id -u debian; id -nG debian | tr ' ' '\\n' | sort | xargs; getent passwd svc | cut -d: -f3 | "
                 "awk '{print ($1 < 1000) ? \"system\" : \"user\"}'; "
                 "getent shadow alice | cut -d: -f2 | cut -c1-7; getent shadow debian | cut -d: -f2 | cut -c1; "
                 "cat /etc/apt/apt.conf.d/94cloud-init-config; grep -c updates /etc/apt/sources.list.d/extra.list; "
                 "jq -n 1; readlink /etc/localtime; cat /etc/timezone; cat /etc/hostname; hostname; "
                 "openssl x509 -noout -subject -in /usr/local/share/ca-certificates/cloud-init-ca-cert-1.crt; "
                 "ls /etc/ssl/certs | grep -c cloud-init-ca-cert-1; cat /opt/runcmd.txt; echo LANG=$LANG");
  EXPECT_EQ(s.status, 0) << s.err;
  EXPECT_EQ(s.out,
            "boot\nargv item\n644 root\nplain\nmore\nhello b64\nzipped\nalice:devs 640\n"
            "uid=2001(alice) gid=1000(devs) groups=1000(devs),100(users)\ndevs:root\nempty\n1000\n"
            "adm audio cdrom debian dialout dip floppy netdev plugdev sudo video\nsystem\n$6$salt\n!\n"
            "APT::Install-Recommends \"false\";\n1\n"
            "1\n/usr/share/zoneinfo/Asia/Seoul\nAsia/Seoul\nprovisioned\nprovisioned\n"
            "subject=CN = ultari-test-ca\n1\ncwd /opt\nargv item\nLANG=ko_KR.UTF-8\n")
      << s.err;
  std::vector<std::string> modules;
  json log = inspect(img)["provision_log"];
  for (const auto& m : log) modules.push_back(m["module"]);
  EXPECT_EQ(modules, (std::vector<std::string>{"bootcmd", "write_files", "groups", "users", "apt", "packages", "locale",
                                               "timezone", "hostname", "ca_certs", "write_files (deferred)", "runcmd"}));
  // alice's own key, read as alice (the sandbox's root keeps no
  // capability to read her 0700 directory).
  Outcome keys = in(img, "cat ~/.ssh/authorized_keys; stat -c '%a %U' ~/.ssh ~/.ssh/authorized_keys",
                    {"--user", "2001:1000", "--env", "HOME=/home/alice"});
  EXPECT_EQ(keys.out, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdummy alice@test\n700 alice\n600 alice\n") << keys.err;
  // --hostname still wins over the image's.
  Outcome h = in(img, "hostname", {"--hostname", "mine"});
  EXPECT_EQ(h.out, "mine\n");
}

TEST_F(Provision, ASecondProvisionIsACacheHitThatRunsNothing) {
  std::string img = name("c");
  const std::string ud = "#cloud-config\nruncmd:\n  - date +%s%N > /stamp\n";
  Outcome first = provision(img, ud, {"--no-cache"});  // the store outlives a test run
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_EQ(first.report["cache_hit"], false);
  std::string stamp = in(img, "cat /stamp").out;
  ASSERT_FALSE(stamp.empty());
  Outcome again = provision(img, ud);
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(again.report["cache_hit"], true);
  EXPECT_EQ(again.report["id"], first.report["id"]);
  EXPECT_EQ(in(img, "cat /stamp").out, stamp);  // nothing ran again
  // Another name, same inputs: a hit pointing at the same layers.
  Outcome other = provision(name("c2"), ud);
  EXPECT_EQ(other.report["cache_hit"], true);
  EXPECT_EQ(other.report["layers"], first.report["layers"]);
  // Negative controls: --no-cache and --refresh build again; a new
  // variable is a new input.
  Outcome rebuilt = provision(img, ud, {"--no-cache"});
  ASSERT_EQ(rebuilt.status, 0) << rebuilt.err;
  EXPECT_EQ(rebuilt.report["cache_hit"], false);
  EXPECT_NE(in(img, "cat /stamp").out, stamp);
  Outcome refreshed = provision(img, ud, {"--refresh"});
  EXPECT_EQ(refreshed.report["cache_hit"], false);
  const std::string tpl = "## template: jinja\n#cloud-config\nruncmd:\n  - echo '{{ who }} on {{ v1.distro }} "
                          "{{ v1.distro_release }}' > /who\n";
  // (values of this process's own: the store outlives a test run)
  std::string pid = std::to_string(getpid());
  Outcome a = provision(name("j"), tpl, {"--var", "who=alice-" + pid});
  Outcome b = provision(name("j"), tpl, {"--var", "who=bob-" + pid});
  ASSERT_EQ(a.status, 0) << a.err;
  ASSERT_EQ(b.status, 0) << b.err;
  EXPECT_EQ(a.report["cache_hit"], false);
  EXPECT_EQ(b.report["cache_hit"], false);
  EXPECT_EQ(in(name("j"), "cat /who").out, "bob-" + pid + " on debian bookworm\n");
}

// cloud-init runs bootcmd, boot hooks and per-boot scripts at every boot:
// each sandbox started from the image runs them, as root, before its
// command, with their output in the sandbox's cloud-init-output.log.
TEST_F(Provision, PerBootStepsRunAtEverySandboxStart) {
  std::string img = name("b");
  const std::string ud = R"UD(#cloud-config
bootcmd:
  - echo bootcmd >> /var/tmp/boots; echo said-by-bootcmd
  - [sh, -c, 'id -u > /var/tmp/boot-uid; echo "$INSTANCE_ID" > /var/tmp/boot-instance']
  - '[ -z "$FAIL_BOOT" ] || exit 3'
  - '[ -z "$OOM_BOOT" ] || head -c 300M /dev/zero | tail -n 1'
  - '[ -z "$SLOW_BOOT" ] || sleep 100'
write_files:
  - path: /var/lib/cloud/scripts/per-boot/10-daemon
    permissions: '0755'
    content: |
      #!/bin/sh
      echo per-boot >> /var/tmp/boots
      # a daemon it leaves running for the command
      sleep 1000 &
runcmd:
  - echo runcmd >> /var/tmp/runs
)UD";
  Outcome p = provision(img, ud, {"--no-cache"});
  ASSERT_EQ(p.status, 0) << p.err;
  EXPECT_EQ(p.report["config"]["boot"], json({"/bin/sh", "/var/lib/cloud/ultari/boot"})) << p.out;
  const std::string look = "cat /var/tmp/boots /var/tmp/runs /var/tmp/boot-uid; "
                           "for c in /proc/[0-9]*/comm; do cat $c; done | grep -c '^sleep$'";
  // The image holds one boot (provisioning's); each start adds one more,
  // on a fresh copy: never a third.
  const std::string booted = "bootcmd\nper-boot\nbootcmd\nper-boot\nruncmd\n0\n1\n";
  for (int start = 0; start < 2; ++start) {
    Outcome r = in(img, look);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, booted) << r.err;
    EXPECT_EQ(r.report["boot"]["exit_code"], 0) << r.report.dump();
  }
  // As root, whoever the command runs as.
  Outcome as_user = in(img, "cat /var/tmp/boot-uid; id -u", {"--user", "1000"});
  EXPECT_EQ(as_user.out, "0\n1000\n") << as_user.err;
  // The boot step's output is the log's, not the command's.
  Outcome log = in(img, "cat /var/log/cloud-init-output.log; cat /var/tmp/boot-instance");
  EXPECT_TRUE(has(log.out, "said-by-bootcmd")) << log.out;
  EXPECT_TRUE(has(log.out, "ultari-")) << log.out;
  EXPECT_FALSE(has(log.err, "said-by-bootcmd")) << log.err;
  // A failing boot step is reported; the command runs after it.
  Outcome failed = in(img, "echo command-ran", {"--env", "FAIL_BOOT=1"});
  EXPECT_EQ(failed.status, 0) << failed.err;
  EXPECT_EQ(failed.out, "command-ran\n");
  EXPECT_EQ(failed.report["boot"]["exit_code"], 3) << failed.report.dump();
  EXPECT_TRUE(has(failed.err, "boot step")) << failed.err;
  // The OOM killer in the boot is not the command's: a command failing
  // after it is a nonzero exit, not an oom verdict.
  Outcome oom = in(img, "exit 3", {"--env", "OOM_BOOT=1", "--memory", "64M"});
  EXPECT_EQ(oom.status, 3) << oom.err;
  EXPECT_EQ(oom.report["verdict"], "nonzero_exit") << oom.report.dump();
  // Negative control: the same OOM in the command is the command's.
  Outcome own = in(img, "head -c 300M /dev/zero | tail -n 1; exit 3", {"--memory", "64M", "--no-boot"});
  EXPECT_EQ(own.report["verdict"], "oom") << own.report.dump();
  // The sandbox's timeout covers its boot.
  Outcome slow = in(img, "echo never", {"--env", "SLOW_BOOT=1", "--timeout", "1s"});
  EXPECT_EQ(slow.status, 124) << slow.err;
  EXPECT_EQ(slow.report["verdict"], "timeout");
  EXPECT_EQ(slow.out, "");
  EXPECT_TRUE(has(slow.err, "the boot step did not finish")) << slow.err;
  // A SIGINT during the boot ends the run there: the command never starts.
  {
    TempDir t;
    std::string out = t / "out", report = t / "report.json";
    int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    setenv("ULTARI_DATA_DIR", test_image_store().c_str(), 1);
    pid_t pid = spawn_ultari({"run", "--image", img, "--env", "SLOW_BOOT=1", "--timeout", "60s", "--report",
                              report, "--", "echo", "command-ran"},
                             fd);
    unsetenv("ULTARI_DATA_DIR");
    close(fd);
    bool booting = false;  // the boot's `sleep 100` runs
    for (int i = 0; i < 600 && !booting; ++i) {
      booting = descendant_named(pid, "sleep");
      if (!booting) usleep(20000);
    }
    EXPECT_TRUE(booting);
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << status;
    EXPECT_EQ(read_file(out), "");
    json rep = json::parse(read_file(report));
    EXPECT_EQ(rep["verdict"], "signaled") << rep.dump();
    EXPECT_EQ(rep["signal"], SIGINT) << rep.dump();
    EXPECT_TRUE(has(rep["warnings"].dump(), "the command never started")) << rep.dump();
  }
  // Negative controls: --no-boot runs none of it (what the image holds is
  // provisioning's one boot), and an image without boot steps has none.
  Outcome skipped = in(img, look, {"--no-boot"});
  EXPECT_EQ(skipped.out, "bootcmd\nper-boot\nruncmd\n0\n0\n") << skipped.err;
  EXPECT_TRUE(skipped.report["boot"].is_null()) << skipped.report.dump();
  Outcome plain = in("minbase-kmod", "true");
  EXPECT_EQ(plain.status, 0) << plain.err;
  EXPECT_TRUE(plain.report["boot"].is_null()) << plain.report.dump();
  // A provisioning on top of it with no boot steps of its own: cloud-init
  // would not run the old user-data's bootcmd, but per-boot scripts stay.
  std::string ud2 = dir_ / "b2.yaml";
  write_file(ud2, "#cloud-config\nruncmd:\n  - 'true'\n");
  Outcome child = ultari({"image", "provision", name("b2"), "--from", img, "--user-data", ud2, "--no-cache", "--json"},
                         test_image_options(600));
  ASSERT_EQ(child.status, 0) << child.err;
  EXPECT_EQ(json::parse(child.out)["config"]["boot"], json({"/bin/sh", "/var/lib/cloud/ultari/boot"})) << child.out;
  Outcome again = in(name("b2"), "cat /var/tmp/boots");
  EXPECT_EQ(again.out, "bootcmd\nper-boot\nper-boot\nper-boot\n") << again.err;
  // And one whose runcmd removes the last per-boot script: no boot step
  // is left, and nothing of the kept ones.
  write_file(ud2, "#cloud-config\nruncmd:\n  - rm /var/lib/cloud/scripts/per-boot/10-daemon\n");
  Outcome last = ultari({"image", "provision", name("b3"), "--from", name("b2"), "--user-data", ud2, "--no-cache",
                         "--json"},
                        test_image_options(600));
  ASSERT_EQ(last.status, 0) << last.err;
  EXPECT_FALSE(json::parse(last.out)["config"].contains("boot")) << last.out;
  Outcome gone = in(name("b3"), "ls /var/lib/cloud/ultari 2>/dev/null | wc -l; wc -l < /var/tmp/boots");
  EXPECT_EQ(gone.out, "0\n4\n") << gone.err;  // b2 held 3 lines, b3's build added one
  EXPECT_TRUE(gone.report["boot"].is_null()) << gone.report.dump();
  Outcome bad = ultari({"run", "--no-boot", "--", "true"}, test_image_options());
  EXPECT_EQ(bad.status, 125);
  EXPECT_TRUE(has(bad.err, "--no-boot needs --image")) << bad.err;
}

TEST_F(Provision, AFailingRuncmdItemFailsTheBuildAndCommitsNothing) {
  std::string img = name("f");
  int before = scratch_dirs();
  Outcome r = provision(img, "#cloud-config\nruncmd:\n  - echo hello\n  - echo oops >&2; exit 3\n  - touch /never\n");
  EXPECT_EQ(r.status, 125);
  EXPECT_TRUE(has(r.err, "runcmd[1]")) << r.err;
  EXPECT_TRUE(has(r.err, "echo oops >&2; exit 3")) << r.err;
  EXPECT_TRUE(has(r.err, "exit status 3")) << r.err;
  EXPECT_TRUE(has(r.err, "oops")) << r.err;
  EXPECT_TRUE(has(r.err, "line 4")) << r.err;
  EXPECT_EQ(ultari({"image", "inspect", img}, test_image_options()).status, 125);
  EXPECT_EQ(scratch_dirs(), before);
  // cloud-init's reading (runcmd_strict: false): only the last item counts.
  Outcome loose = provision(img, "#cloud-config\nultari:\n  runcmd_strict: false\nruncmd:\n  - 'false'\n  - 'true'\n");
  EXPECT_EQ(loose.status, 0) << loose.err;
  // A failing bootcmd or module fails too, naming itself.
  Outcome bad = provision(name("g"), "#cloud-config\ntimezone: Nowhere/Atlantis\n");
  EXPECT_EQ(bad.status, 125);
  EXPECT_TRUE(has(bad.err, "timezone")) << bad.err;
  EXPECT_TRUE(has(bad.err, "Nowhere/Atlantis")) << bad.err;
  EXPECT_EQ(ultari({"image", "inspect", name("g")}, test_image_options()).status, 125);
  // (Processes, cgroups and mounts left behind are counted by the serial
  // suite: other tests' sandboxes run in parallel with this one.)
}

// Rootful: a build runs in a block of ids of its own, as every sandbox
// does (so two builds, or a build and a sandbox, share no per-user kernel
// budget), while what it writes is stored in the image store's ids (its
// writable layer is an idmapped mount): the committed layer has the
// owners the build gave, and sandboxes from it see them. Control: the
// store's ids (the layer's root directory's owner) are what a build ran
// as before, and are not what this one ran as.
TEST_F(Provision, ARootfulBuildRunsInABlockOfItsOwnAndCommitsInTheStoresIds) {
  Outcome r = provision(name("block"), "#cloud-config\n"
                                       "runcmd:\n"
                                       "  - cat /proc/self/uid_map /proc/self/gid_map > /build-ids\n"
                                       "  - mkdir /owned && chown 5:6 /owned && touch /owned/f\n",
                        {"--no-cache"});
  ASSERT_EQ(r.status, 0) << r.err;
  json i = inspect(name("block"));
  const std::string layer = test_image_store() + "/images/layers/" + i["layers"][0].get<std::string>();
  struct stat root{}, owned{}, file{};
  ASSERT_EQ(stat(layer.c_str(), &root), 0);
  ASSERT_EQ(stat((layer + "/owned").c_str(), &owned), 0);
  ASSERT_EQ(stat((layer + "/owned/f").c_str(), &file), 0);
  EXPECT_EQ(owned.st_uid, root.st_uid + 5);
  EXPECT_EQ(owned.st_gid, root.st_gid + 6);
  EXPECT_EQ(file.st_uid, root.st_uid);
  std::istringstream ids(read_file(layer + "/build-ids"));
  uint64_t in_u = 1, out_u = 0, n_u = 0, in_g = 1, out_g = 0, n_g = 0;
  ids >> in_u >> out_u >> n_u >> in_g >> out_g >> n_g;
  EXPECT_EQ(in_u, 0u);
  EXPECT_EQ(n_u, 65536u);
  EXPECT_EQ(n_g, 65536u);
  EXPECT_NE(out_u, root.st_uid) << read_file(layer + "/build-ids");
  EXPECT_NE(out_g, root.st_gid) << read_file(layer + "/build-ids");
  // Not another range of the host's either: one of the sandboxes' blocks.
  EXPECT_GE(out_u, 2000065536u);
  EXPECT_EQ((out_u - 2000065536u) % 65536, 0u);
  EXPECT_EQ(in(name("block"), "stat -c %u:%g /owned; stat -c %u /owned/f").out, "5:6\n0\n");
}

TEST_F(Provision, BadUserDataIsRefusedBeforeAnythingRuns) {
  struct Case {
    std::string user_data;
    std::string message;
    std::vector<std::string> extra;
  };
  std::vector<Case> cases = {
      {"#cloud-config\nruncmd:\n  - ok\n bad: [\n", "user-data line 4, column 2: end of map not found"},
      {"#cloud-config\npackages: 5\n", "line 2, column 11: 'packages' must be a list"},
      {"#cloud-config\nwrite_files:\n  - path: ../../etc/passwd\n    content: x\n", "must be an absolute path"},
      {"#cloud-config\nwrite_files:\n  - path: /etc/../../x\n    content: x\n", "may not contain '..'"},
      {"#cloud-config\nwrite_files:\n  - path: /x\n    permissions: rwx\n", "octal"},
      {"#cloud-config\nwrite_files:\n  - path: /x\n    source: {uri: 'ftp://x'}\n", "must be an http:// or https:// URL"},
      {"#cloud-config\nusers:\n  - name: 'a:b'\n", "not a valid user or group name"},
      {"#cloud-config\nusers:\n  - name: x\n    gecos: \"a\\nroot::0:0::/:/bin/sh\"\n", "line break"},
      {"#cloud-config\nultari:\n  kernel_modules: [vfat]\n", "'vfat' is not on the allowlist"},
      {"#include ftp://example.com/user-data\n", "is not an http:// or https:// URL"},
      {"hello\n", "user-data must start with '#cloud-config', '#!'"},
      {"## template: jinja\n#cloud-config\nhostname: {{ nothere }}\n", "'nothere'"},
      {"#cloud-config\nhostname: x\n", "not a template", {"--var", "a=b"}},
  };
  int before = scratch_dirs();
  for (const auto& c : cases) {
    Outcome r = provision(name("bad"), c.user_data, c.extra);
    EXPECT_EQ(r.status, 125) << c.user_data;
    EXPECT_TRUE(has(r.err, c.message)) << c.user_data << "\n--- got: " << r.err;
  }
  EXPECT_EQ(ultari({"image", "inspect", name("bad")}, test_image_options()).status, 125);
  EXPECT_EQ(scratch_dirs(), before);
  // Warnings name the key path and its line; the build still goes on.
  Outcome w = provision(name("w"), "#cloud-config\nwrite_files:\n  - path: /etc/w\n    mode: '0600'\nntp:\n  enabled: true\n", {"--check"});
  EXPECT_EQ(w.status, 0) << w.err;
  EXPECT_TRUE(has(w.err, "user-data line 4: unknown key 'write_files[0].mode'")) << w.err;
  EXPECT_TRUE(has(w.err, "'ntp' is a cloud-init module Ultari does not run")) << w.err;
  // Negative control: the same without the stray keys has no warning.
  Outcome clean = provision(name("w"), "#cloud-config\nwrite_files:\n  - path: /etc/w\n", {"--check"});
  EXPECT_EQ(clean.err, "") << clean.err;
}

// A MIME multi-part user-data as cloud-init reads it (as `cloud-init devel
// make-mime` writes it): two cloud-config parts merged by the second's
// merge_how, a user script (base64) run after runcmd, a boot hook run
// first.
std::string mime_user_data(const std::string& script_name, const std::string& script) {
  auto b64 = [](const std::string& in) {
    static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < in.size(); i += 3) {
      uint32_t v = (uint8_t)in[i] << 16 | (i + 1 < in.size() ? (uint8_t)in[i + 1] << 8 : 0) |
                   (i + 2 < in.size() ? (uint8_t)in[i + 2] : 0);
      out += k[v >> 18];
      out += k[(v >> 12) & 63];
      out += i + 1 < in.size() ? k[(v >> 6) & 63] : '=';
      out += i + 2 < in.size() ? k[v & 63] : '=';
    }
    return out;
  };
  return "Content-Type: multipart/mixed; boundary=\"===============0123456789==\"\nMIME-Version: 1.0\n\n"
         "--===============0123456789==\n"
         "Content-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\n"
         "Content-Transfer-Encoding: 7bit\nContent-Disposition: attachment; filename=\"base.yaml\"\n\n"
         "#cloud-config\nwrite_files:\n  - path: /etc/mime/config\n    content: from-cloud-config\n"
         "runcmd:\n  - echo runcmd-1 >> /var/log/order\n\n"
         "--===============0123456789==\n"
         "Content-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\n"
         "Content-Transfer-Encoding: 7bit\nContent-Disposition: attachment; filename=\"more.yaml\"\n\n"
         "#cloud-config\nmerge_how: 'list(append)+dict(recurse_array)+str()'\n"
         "runcmd:\n  - echo runcmd-2 >> /var/log/order\n\n"
         "--===============0123456789==\n"
         "Content-Type: text/x-shellscript; charset=\"us-ascii\"\nMIME-Version: 1.0\n"
         "Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"" + script_name + "\"\n\n" +
         b64(script) + "\n"
         "--===============0123456789==\n"
         "Content-Type: text/cloud-boothook; charset=\"us-ascii\"\nMIME-Version: 1.0\n\n"
         "#cloud-boothook\n#!/bin/sh\nmkdir -p /var/log; echo boothook > /var/log/order\n\n"
         "--===============0123456789==--\n";
}

// A MIME user-data of parts (type, file name, content), boundary "PH".
std::string mime_parts(const std::vector<std::array<std::string, 3>>& parts) {
  std::string m = "Content-Type: multipart/mixed; boundary=\"PH\"\nMIME-Version: 1.0\n\n";
  for (const auto& [type, filename, content] : parts)
    m += "--PH\nContent-Type: " + type + "\nContent-Disposition: attachment; filename=\"" + filename + "\"\n\n" +
         content + "\n";
  return m + "--PH--\n";
}

// Part handlers, as cloud-init's walker runs them: imported with the
// image's python3 before any module, __begin__, each later part of a type
// they list, __end__; the modules (runcmd) see what they did. A handler that
// raises, one that claims a type Ultari runs, a part no handler takes and a
// base without python3 fail the build, naming it, and nothing is committed.
TEST_F(Provision, PartHandlersTakeThePartsOfTheirTypesBeforeTheModulesRun) {
  // A base with python3 (cached in the test store after the first run).
  Outcome py = provision("t-python3", "#cloud-config\npackages: [python3-minimal]\n");
  ASSERT_EQ(py.status, 0) << py.err;
  auto provision_on = [&](const std::string& image, const std::string& base, const std::string& user_data) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    return ultari({"image", "provision", image, "--from", base, "--user-data", file, "--no-cache", "-q"},
                  test_image_options(600));
  };
  const std::string handler =
      "#part-handler\nhandler_version = 2\n"
      "def list_types():\n    return ['text/x-lab-notes']\n"
      "def handle_part(data, ctype, filename, payload, frequency):\n"
      "    with open('/var/log/lab-handler.log', 'a') as log:\n"
      "        log.write('A %s %s %s %s\\n' % (ctype, filename, frequency, data))\n"
      "    if payload is not None:\n"
      "        with open('/etc/lab-' + filename, 'w') as f:\n"
      "            f.write(payload)\n";
  // A version-1 handler (no frequency argument) that takes the type over
  // for the parts after it, and one whose frequency cloud-init skips.
  const std::string later = "#part-handler\n"
                            "def list_types():\n    return ['text/x-lab-notes']\n"
                            "def handle_part(data, ctype, filename, payload):\n"
                            "    with open('/var/log/lab-handler.log', 'a') as log:\n"
                            "        log.write('B %s %s %r\\n' % (ctype, filename, payload))\n";
  const std::string once = "#part-handler\nfrequency = 'once'\n"
                           "def list_types():\n    return ['text/x-lab-once']\n"
                           "def handle_part(data, ctype, filename, payload, frequency):\n"
                           "    open('/var/log/lab-handler.log', 'a').write('C called\\n')\n";
  const std::string config = "#cloud-config\nruncmd:\n  - cp /etc/lab-notes.txt /ran-after\n";
  std::string img = name("ph");
  Outcome r = provision_on(img, "t-python3",
                           mime_parts({{"text/part-handler", "lab_handler.py", handler},
                                       {"text/cloud-config", "c.yaml", config},
                                       {"text/x-lab-notes", "notes.txt", "hello from a part"},
                                       {"text/part-handler", "later.py", later},
                                       {"text/part-handler", "once.py", once},
                                       {"text/x-lab-notes", "second.txt", "to B"},
                                       {"text/x-lab-once", "o.txt", "skipped"}}));
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome s = in(img, "cat /var/log/lab-handler.log; cat /ran-after; echo; "
                      "ls /var/lib/cloud/instance/handlers");
  EXPECT_EQ(s.out, "A __begin__ None once-per-instance None\n"
                   "A text/x-lab-notes notes.txt once-per-instance None\n"
                   "B __begin__ None None\n"
                   "B text/x-lab-notes second.txt 'to B'\n"
                   "A __end__ None once-per-instance None\n"
                   "B __end__ None None\n"
                   "hello from a part\n"
                   "part-handler-000.py\npart-handler-001.py\npart-handler-002.py\n")
      << s.err;
  json log = inspect(img);
  ASSERT_FALSE(log["provision_log"].empty());
  EXPECT_EQ(log["provision_log"][0]["module"], "part_handlers") << log.dump();
  EXPECT_TRUE(has(log["provision_log"][0].value("output", ""), "handled by part-handler-000")) << log.dump();

  // Hostile and broken ones: each fails the build, naming what failed.
  struct Case {
    std::string base, user_data, message;
  };
  const std::string raising = "#part-handler\ndef list_types():\n    return ['text/x-lab-notes']\n"
                              "def handle_part(data, ctype, filename, payload):\n"
                              "    if payload is not None:\n        raise ValueError('lab says no')\n";
  std::vector<Case> cases = {
      {"t-python3",
       mime_parts({{"text/part-handler", "raising.py", raising}, {"text/x-lab-notes", "n", "x"}}),
       "ValueError: lab says no"},
      {"t-python3",
       mime_parts({{"text/part-handler", "greedy.py",
                    "#part-handler\ndef list_types():\n    return ['text/cloud-config', 'text/x-lab-notes']\n"},
                   {"text/x-lab-notes", "n", "x"}}),
       "lists text/cloud-config, which Ultari runs itself"},
      {"t-python3", mime_parts({{"text/part-handler", "h.py", handler}, {"text/x-other", "o", "x"}}),
       "no part handler before user-data part 2 (o), text/x-other takes text/x-other"},
      {"minbase-kmod", mime_parts({{"text/part-handler", "h.py", handler}, {"text/x-lab-notes", "n", "x"}}),
       "the image has no python3"},
  };
  for (const auto& c : cases) {
    std::string bad = name("ph-bad");
    Outcome b = provision_on(bad, c.base, c.user_data);
    EXPECT_EQ(b.status, 125) << c.message;
    EXPECT_TRUE(has(b.err, "part_handlers failed")) << b.err;
    EXPECT_TRUE(has(b.err, c.message)) << b.err;
    EXPECT_NE(ultari({"image", "inspect", bad}, test_image_options()).status, 0);
  }
  // cloud-init's leniency on request: the raising handler logged, the
  // build goes on.
  Outcome lenient = provision_on(name("ph-lenient"), "t-python3",
                                 mime_parts({{"text/part-handler", "raising.py", raising},
                                             {"text/cloud-config", "c.yaml", "#cloud-config\nultari:\n  runcmd_strict: false\n"},
                                             {"text/x-lab-notes", "n", "x"}}));
  EXPECT_EQ(lenient.status, 0) << lenient.err;
  std::string lenient_log;
  json lenient_image = inspect(name("ph-lenient"));
  for (const auto& m : lenient_image["provision_log"])
    if (m["module"] == "part_handlers") lenient_log = m.value("output", "");
  EXPECT_TRUE(has(lenient_log, "ValueError: lab says no")) << lenient_log;
  EXPECT_TRUE(has(lenient_log, "raised in handle_part for text/x-lab-notes")) << lenient_log;
  EXPECT_EQ(scratch_dirs(), 0);
}

TEST_F(Provision, MimeUserDataRunsItsCloudConfigPartsAndItsScripts) {
  std::string img = name("mime");
  const std::string script = "#!/bin/sh\nset -e\ncp /etc/mime/config /etc/mime/seen-by-script\n"
                             "echo \"script $0\" >> /var/log/order\necho \"INSTANCE_ID=$INSTANCE_ID\"\n";
  std::string ud = mime_user_data("setup.sh", script);
  // --check reads it rootless-ready: the parts and the plan.
  Outcome check = provision(img, ud, {"--check"});
  ASSERT_EQ(check.status, 0) << check.err;
  std::vector<std::string> plan = check.report["plan"].get<std::vector<std::string>>();
  EXPECT_EQ(plan, (std::vector<std::string>{"boothooks", "write_files", "runcmd", "scripts_user"})) << check.out;
  ASSERT_EQ(check.report["parts"].size(), 4u) << check.out;
  EXPECT_EQ(check.report["parts"][2]["filename"], "setup.sh");
  EXPECT_EQ(check.report["parts"][2]["type"], "text/x-shellscript");
  EXPECT_EQ(check.report["parts"][1]["note"], "merge dict(no_replace,recurse_list)+list(append)+str()");

  Outcome r = provision(img, ud, {"--no-cache"});
  ASSERT_EQ(r.status, 0) << r.err;
  // Both parts took effect, in cloud-init's order: the boot hook first,
  // runcmd (merged: both parts' items), then the script, which saw the
  // file of the cloud-config part. The script's file is not in the image.
  // (--no-boot: the boot hook runs again at every start, and starts the
  // file anew)
  Outcome s = in(img, "cat /var/log/order; cat /etc/mime/seen-by-script; echo; ls /tmp | grep -c ultari-script",
                 {"--no-boot"});
  std::vector<std::string> lines;
  for (size_t pos = 0; pos < s.out.size();) {
    size_t eol = s.out.find('\n', pos);
    lines.push_back(s.out.substr(pos, eol - pos));
    pos = eol == std::string::npos ? s.out.size() : eol + 1;
  }
  ASSERT_EQ(lines.size(), 6u) << s.out << s.err;
  EXPECT_EQ(lines[0], "boothook");
  EXPECT_EQ(lines[1], "runcmd-1");
  EXPECT_EQ(lines[2], "runcmd-2");
  EXPECT_TRUE(lines[3].rfind("script /tmp/ultari-script.", 0) == 0 && lines[3].ends_with("/setup.sh")) << lines[3];
  EXPECT_EQ(lines[4], "from-cloud-config");
  EXPECT_EQ(lines[5], "0");
  // Without --no-boot the boot hook ran again at the start, as root.
  Outcome booted = in(img, "cat /var/log/order", {"--user", "1000"});
  EXPECT_EQ(booted.out, "boothook\n") << booted.err;
  json i = inspect(img);
  std::vector<std::string> modules;
  for (const auto& m : i["provision_log"]) modules.push_back(m["module"]);
  EXPECT_EQ(modules, (std::vector<std::string>{"boothooks", "write_files", "runcmd", "scripts_user"})) << i.dump();
  EXPECT_EQ(i["provision_log"].back()["items"][0]["script"], "setup.sh") << i.dump();
  EXPECT_EQ(i["provision_log"].back()["items"][0]["status"], 0) << i.dump();
  // Negative control: the base has none of it.
  Outcome base = ultari({"run", "--image", "minbase-kmod", "--", "/bin/sh", "-c", "cat /var/log/order /etc/mime/config"},
                        test_image_options());
  EXPECT_NE(base.status, 0);
  EXPECT_EQ(base.out, "");
}

TEST_F(Provision, AFailingScriptPartFailsTheBuildAndCommitsNothing) {
  std::string img = name("mimefail");
  int before = scratch_dirs();
  Outcome r = provision(img, mime_user_data("fail.sh", "#!/bin/sh\necho oops >&2\nexit 7\n"));
  EXPECT_EQ(r.status, 125);
  EXPECT_TRUE(has(r.err, "scripts_user: script 'fail.sh' (user-data part 3 (fail.sh)) failed: exit status 7")) << r.err;
  EXPECT_TRUE(has(r.err, "oops")) << r.err;
  EXPECT_EQ(ultari({"image", "inspect", img}, test_image_options()).status, 125);
  EXPECT_EQ(scratch_dirs(), before);
  // A plain script as the whole user-data: one user script, the same way.
  Outcome plain = provision(img, "#!/bin/sh\necho plain-oops\nexit 4\n");
  EXPECT_EQ(plain.status, 125);
  EXPECT_TRUE(has(plain.err, "scripts_user: script 'part-001' (user-data) failed: exit status 4")) << plain.err;
  EXPECT_TRUE(has(plain.err, "plain-oops")) << plain.err;
  // Negative control: the same script succeeding commits the image.
  Outcome ok = provision(img, "#!/bin/sh\necho plain > /plain\n");
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(in(img, "cat /plain").out, "plain\n");
}

TEST_F(Provision, KernelModulesComeFromTheAdministratorsAllowlist) {
  TempDir conf;
  write_file(conf / "config.toml", "[kernel_modules]\nallow = [\"nf_nat\"]\n");
  Options o = test_image_options(600);
  o.env.push_back("ULTARI_CONFIG=" + conf / "config.toml");
  const std::string ud = "#cloud-config\nultari:\n  kernel_modules: [nf_conntrack]\n";
  Outcome refused = provision(name("k"), ud, {}, o);
  EXPECT_EQ(refused.status, 125);
  EXPECT_TRUE(has(refused.err, "'nf_conntrack' is not on the allowlist")) << refused.err;
  EXPECT_TRUE(has(refused.err, conf / "config.toml")) << refused.err;
  // The default allowlist has the conntrack family: a sandbox of the image
  // finds the module (built in here, or loaded by the host).
  Outcome ok = provision(name("k"), ud);
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(ok.report["config"]["kernel_modules"], json::array({"nf_conntrack"})) << ok.out;
  // (the first run of an image with modules may make the kernel layer)
  ASSERT_EQ(in(name("k"), "true").status, 0);
  const std::string before_run = dir_ / "before-run";
  write_file(before_run, "");
  Outcome s = in(name("k"), "modprobe nf_conntrack && echo ok; depmod -a && echo depmod-ok; "
                            "modprobe no_such_module_here 2>&1 | grep -c 'not found'");
  EXPECT_EQ(s.out, "ok\ndepmod-ok\n1\n") << s.err;
  // depmod inside wrote to the sandbox's overlay, not the kernel layer.
  Outcome layer = host("find " + test_image_store() + "/images/kernel -newer " + before_run +
                          " -name modules.dep | wc -l");
  EXPECT_EQ(layer.out, "0\n");
  // A bad configuration file is an error naming it.
  write_file(conf / "config.toml", "[kernel_modules]\nallow = [\"*\"]\n");
  Outcome bad = provision(name("k2"), ud, {}, o);
  EXPECT_EQ(bad.status, 125);
  EXPECT_TRUE(has(bad.err, "bare '*'")) << bad.err;
}

TEST_F(Provision, AnImagesRunDefaultsApplyUnlessAFlagSaysOtherwise) {
  std::string img = name("d");
  Outcome r = provision(img, "#cloud-config\nhostname: defaults\nultari:\n  limits:\n    memory: 64M\n"
                             "  network:\n    allow: [deb.debian.org]\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.report["config"]["limits"]["memory_bytes"], 64u << 20) << r.out;
  // tail keeps a line with no end in memory: 100 MB of it is over 64M.
  const std::string script =
      "hostname; test -n \"$HTTP_PROXY\" && echo net; head -c 100M /dev/zero | tail -n 1 >/dev/null; echo tail=$?";
  Outcome s = in(img, script);
  EXPECT_EQ(s.out, "defaults\nnet\ntail=137\n") << s.err;  // killed by the memory limit
  // Flags win: memory, network and hostname.
  Outcome f = in(img, script, {"--memory", "512M", "--net", "none", "--hostname", "mine"});
  EXPECT_EQ(f.report["verdict"], "ok") << f.err << f.report.dump();
  EXPECT_EQ(f.out, "mine\ntail=0\n") << f.err;
}

TEST_F(Provision, HostileWriteFilesStayInsideTheBuildSandbox) {
  std::string marker = dir_ / "host-marker";
  write_file(marker, "host\n");
  // Symlinks planted by bootcmd towards the host's path, then written
  // through: they resolve inside the build sandbox's root.
  std::string ud = "#cloud-config\nbootcmd:\n  - mkdir -p " + dir_.path() + "\n  - ln -s " + marker +
                   " /etc/evil-link\n  - ln -s /proc/self/root" + marker + " /etc/evil-proc\n"
                   "write_files:\n  - path: /etc/evil-link\n    content: pwned\n"
                   "  - path: /etc/evil-proc\n    content: pwned-too\n    append: true\n"
                   "runcmd:\n  - cat " + marker + " > /opt-seen\n";
  Outcome r = provision(name("h"), ud);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(read_file(marker), "host\n");
  // Negative control: the writes happened, in the build's own copy of the
  // path (under /tmp, which the image does not keep: runcmd saw it).
  Outcome s = in(name("h"), "cat /opt-seen");
  EXPECT_EQ(s.out, "pwnedpwned-too") << s.err;
  // Writing into the kernel's files fails inside and changes nothing here.
  std::string host_name = host("hostname").out;
  Outcome k = provision(name("h2"), "#cloud-config\nwrite_files:\n  - path: /proc/sys/kernel/hostname\n    content: pwned\n");
  EXPECT_EQ(k.status, 125);
  EXPECT_TRUE(has(k.err, "write_files: /proc/sys/kernel/hostname")) << k.err;
  EXPECT_EQ(host("hostname").out, host_name);
  // A gzip bomb stops at the size limit.
  std::string bomb = host("head -c 80M /dev/zero | gzip -c | base64 -w0").out;
  Outcome b = provision(name("h3"), "#cloud-config\nwrite_files:\n  - path: /bomb\n    encoding: gz+b64\n    content: " + bomb + "\n");
  EXPECT_EQ(b.status, 125);
  EXPECT_TRUE(has(b.err, "larger than")) << b.err.substr(0, 400);
  // Negative control: a small gzip file is written.
  std::string small = host("printf 'ok\\n' | gzip -c | base64 -w0").out;
  Outcome g = provision(name("h4"), "#cloud-config\nwrite_files:\n  - path: /small\n    encoding: gz+b64\n    content: " + small + "\n");
  ASSERT_EQ(g.status, 0) << g.err;
  EXPECT_EQ(in(name("h4"), "cat /small").out, "ok\n");
}

// The writable layer is on the store's disk: a build that writes without
// end is stopped at --max-size (default: the free space less a margin).
TEST_F(Provision, ABuildThatFillsTheDiskIsStopped) {
  int before = scratch_dirs();
  Outcome r = provision(name("big"), "#cloud-config\nruncmd:\n  - head -c 400M /dev/zero > /big\n", {"--max-size", "50M"});
  EXPECT_EQ(r.status, 125);
  EXPECT_TRUE(has(r.err, "wrote more than 50 MiB")) << r.err;
  EXPECT_EQ(ultari({"image", "inspect", name("big")}, test_image_options()).status, 125);
  EXPECT_EQ(scratch_dirs(), before);
  // Negative control: within the limit the build goes through.
  Outcome ok = provision(name("big"), "#cloud-config\nruncmd:\n  - head -c 5M /dev/zero > /small\n", {"--max-size", "50M"});
  EXPECT_EQ(ok.status, 0) << ok.err;
}

// apt.sources with a key and `signed-by=$KEY_FILE`, cloud-init's way of
// adding a signed repository: the key is dearmoured (the bytes gpg
// --dearmor gives) into /etc/apt/cloud-init.gpg.d/, the source names it,
// and apt verifies the mirror with it. The mirror is the base's own,
// signed by Debian's keys that the base holds armoured.
TEST_F(Provision, AptSourcesWithAKeyFileVerifyTheMirrorWithThatKey) {
  json base = inspect("minbase-kmod");
  ASSERT_EQ(base["layers"].size(), 1u);
  std::string keys = test_image_store() + "/images/layers/" + base["layers"][0].get<std::string>() + "/etc/apt/trusted.gpg.d/";
  auto user_data = [&](const std::string& key_file) {
    std::ifstream in(keys + key_file);
    std::string indented;
    for (std::string l; std::getline(in, l);) indented += "        " + l + "\n";
    return "#cloud-config\napt:\n  sources_list: '# the signed source only'\n  sources:\n    signed.list:\n"
           "      source: 'deb [signed-by=$KEY_FILE] http://deb.debian.org/debian bookworm main'\n      key: |\n" +
           indented + "package_update: true\n";
  };
  auto packages_output = [&](const std::string& image) {
    json i = inspect(image);
    for (const auto& m : i["provision_log"])
      if (m["module"] == "packages") return m["output"].get<std::string>();
    return std::string("no packages module");
  };
  const std::string check =
      "cat /etc/apt/sources.list.d/signed.list; sha256sum < /etc/apt/cloud-init.gpg.d/signed.gpg; "
      "gpgv --status-fd 1 --keyring /etc/apt/cloud-init.gpg.d/signed.gpg /var/lib/apt/lists/*_InRelease 2>/dev/null | "
      "grep -c VALIDSIG";

  std::string good = name("good");
  Outcome r = provision(good, user_data("debian-archive-bookworm-stable.asc"), {"--no-cache"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(has(packages_output(good), "NO_PUBKEY")) << packages_output(good);
  Outcome dearmored = host("gpg --dearmor < " + keys + "debian-archive-bookworm-stable.asc | sha256sum");
  Outcome s = in(good, check);
  EXPECT_EQ(s.out, "deb [signed-by=/etc/apt/cloud-init.gpg.d/signed.gpg] http://deb.debian.org/debian bookworm main\n" +
                       dearmored.out + "1\n")
      << s.err;

  // Negative control: another key (Debian 11's release key) does not
  // verify this mirror: apt warns, and gpgv fails on the lists.
  std::string bad = name("bad");
  Outcome rb = provision(bad, user_data("debian-archive-bullseye-stable.asc"), {"--no-cache"});
  ASSERT_EQ(rb.status, 0) << rb.err;  // apt-get update only warns, as under cloud-init
  EXPECT_TRUE(has(packages_output(bad), "NO_PUBKEY")) << packages_output(bad);
  EXPECT_TRUE(has(in(bad, check).out, "\n0\n"));
}

// Two sources whose file names share a stem ("lab.list" and "lab") share
// one key file under cloud-init, which writes the second key over the
// first: the first source no longer verifies. Here a source whose key
// differs gets a file of its own (lab-lab.gpg), so each signed-by trusts
// its own key alone; the same key is shared ("again" and "again2").
TEST_F(Provision, AptSourcesWhoseKeyFilesCollideKeepTheirOwnKeys) {
  const std::string keys = std::string(ULTARI_TEST_DATA) + "/provision/keys/";
  auto indented = [&](const std::string& file) {
    std::ifstream in(keys + file);
    std::string out;
    for (std::string l; std::getline(in, l);) out += "        " + l + "\n";
    return out;
  };
  auto source = [&](const std::string& name, const std::string& suite, const std::string& key) {
    return "    " + name + ":\n      source: 'deb [signed-by=$KEY_FILE] http://allowed.test/debian " + suite +
           " main'\n      key: |\n" + indented(key);
  };
  std::string img = name("shared-key");
  Outcome r = provision(img,
                        "#cloud-config\napt:\n  sources:\n" + source("lab.list", "one", "test.asc") +
                            source("lab", "two", "other.asc") + source("again", "three", "test.asc") +
                            "    again2:\n      filename: again.list\n      source: 'deb [signed-by=$KEY_FILE] "
                            "http://allowed.test/debian four main'\n      key: |\n" + indented("test.asc"),
                        {"--no-cache"});
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome sums = host("gpg --dearmor < " + keys + "test.asc | sha256sum && gpg --dearmor < " + keys +
                      "other.asc | sha256sum");
  ASSERT_EQ(sums.status, 0) << sums.err;
  std::string test_sum = sums.out.substr(0, sums.out.find('\n') + 1), other_sum = sums.out.substr(test_sum.size());
  Outcome s = in(img, "cat /etc/apt/sources.list.d/lab.list; sha256sum < /etc/apt/cloud-init.gpg.d/lab.gpg; "
                      "sha256sum < /etc/apt/cloud-init.gpg.d/lab-lab.gpg; sha256sum < /etc/apt/cloud-init.gpg.d/again.gpg; "
                      "ls /etc/apt/cloud-init.gpg.d");
  EXPECT_EQ(s.out, "deb [signed-by=/etc/apt/cloud-init.gpg.d/lab.gpg] http://allowed.test/debian one main\n"
                   "deb [signed-by=/etc/apt/cloud-init.gpg.d/lab-lab.gpg] http://allowed.test/debian two main\n" +
                       test_sum + other_sum + test_sum + "again.gpg\nlab-lab.gpg\nlab.gpg\n")
      << s.err;
}

// apt keys by `keyid`, cloud-init's other way: the build fetches the key
// from the key server (here the lab's HTTP server on allowed.test, which
// answers HKP lookups from its keys/ directory) through its egress policy,
// and keeps it only when its fingerprint is the ID. The keys are the tests'
// own (tests/data/provision/keys).
TEST_F(Provision, AptKeysByIdComeFromTheKeyServerCheckedAgainstTheId) {
  NetLab lab;
  const std::string keys = std::string(ULTARI_TEST_DATA) + "/provision/keys/";
  const std::string test_fpr = "EA875C85C945DA5297F51AC04731D5CD4E7EDEA6", other_fpr = "44BA1FB14E04D7E89D9C155FDE0CC9B25BF5F9E4";
  // The server has test.asc under its own fingerprint, and (a server that
  // lies) test.asc again under other.asc's.
  ASSERT_EQ(host("mkdir -p " + lab.dir() + "/keys && cp " + keys + "test.asc " + lab.dir() + "/keys/ea875c85c945da5297f51ac04731d5cd4e7edea6.asc && cp " +
                 keys + "test.asc " + lab.dir() + "/keys/44ba1fb14e04d7e89d9c155fde0cc9b25bf5f9e4.asc")
                .status,
            0);
  auto user_data = [](const std::string& id) {
    return "#cloud-config\napt:\n  sources:\n    lab.list:\n"
           "      source: 'deb [signed-by=$KEY_FILE] http://allowed.test/debian bookworm main'\n"
           "      keyid: '" + id + "'\n      keyserver: 'http://allowed.test'\n";
  };
  auto provision_in_lab = [&](const std::string& image, const std::string& id) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data(id));
    return lab.ultari({"image", "provision", image, "--from", "minbase-kmod", "--user-data", file, "--net-resolver",
                       NetLab::kDnsAddr, "--no-cache", "-q"},
                      test_image_options(600));
  };

  std::string good = name("good");
  Outcome r = provision_in_lab(good, test_fpr);
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome dearmored = host("gpg --dearmor < " + keys + "test.asc | sha256sum");
  Outcome s = in(good, "cat /etc/apt/sources.list.d/lab.list; sha256sum < /etc/apt/cloud-init.gpg.d/lab.gpg");
  EXPECT_EQ(s.out, "deb [signed-by=/etc/apt/cloud-init.gpg.d/lab.gpg] http://allowed.test/debian bookworm main\n" +
                       dearmored.out)
      << s.err;
  std::string asked;
  for (const auto& q : lab.requests())
    asked += q["host"].get<std::string>() + " " + q["path"].get<std::string>() + "\n";
  EXPECT_TRUE(has(asked, " /pks/lookup?op=get&options=mr&search=0x" + test_fpr + "\n")) << asked;
  EXPECT_TRUE(has(asked, "allowed.test")) << asked;
  json log = inspect(good);
  EXPECT_EQ(log["provision_log"][0]["keys_fetched"][0]["keyid"], test_fpr) << log.dump();

  // Negative control: the server answers for other.asc's fingerprint with
  // another key: refused, naming both, and nothing is committed.
  std::string bad = name("bad");
  Outcome b = provision_in_lab(bad, other_fpr);
  EXPECT_EQ(b.status, 125);
  EXPECT_TRUE(has(b.err, "holds no key " + other_fpr + " (it holds " + test_fpr + ")")) << b.err;
  EXPECT_NE(ultari({"image", "inspect", bad}, test_image_options()).status, 0);
  EXPECT_EQ(scratch_dirs(), 0);
}

// text/x-shellscript-per-once/-boot/-instance parts, and scripts the
// user-data writes into /var/lib/cloud/scripts/per-*: run at provisioning
// (the image's one boot) in cloud-init's order (per-once, per-boot,
// per-instance, then runcmd), each directory in name order; a failing one
// fails the build naming it.
TEST_F(Provision, ScriptsPerOnceBootAndInstanceRunInCloudInitsOrder) {
  auto part = [](const std::string& type, const std::string& name, const std::string& body) {
    return "--XYZ\nContent-Type: " + type + "\nContent-Disposition: attachment; filename=\"" + name + "\"\n\n" + body +
           "\n";
  };
  auto user_data = [&](const std::string& instance_exit) {
    return "Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n" +
           part("text/cloud-config", "c.yaml",
                "#cloud-config\nwrite_files:\n  - path: /var/lib/cloud/scripts/per-instance/a-written.sh\n"
                "    permissions: '0755'\n    content: |\n      #!/bin/sh\n      echo instance-written >> /order\n"
                "      exit " + instance_exit + "\nruncmd:\n  - echo runcmd >> /order\n") +
           part("text/x-shellscript-per-boot", "b.sh", "#!/bin/sh\necho boot >> /order") +
           part("text/x-shellscript-per-instance", "z-part.sh", "#!/bin/sh\necho instance-part >> /order") +
           part("text/x-shellscript-per-once", "o.sh", "#!/bin/sh\necho once >> /order") + "--XYZ--\n";
  };
  std::string img = name("freq");
  Outcome check = provision(img, user_data("0"), {"--check"});
  ASSERT_EQ(check.status, 0) << check.err;
  EXPECT_EQ(check.report["plan"].get<std::vector<std::string>>(),
            (std::vector<std::string>{"write_files", "scripts_per_once", "scripts_per_boot", "scripts_per_instance",
                                      "runcmd"}))
      << check.out;
  Outcome r = provision(img, user_data("0"), {"--no-cache"});
  ASSERT_EQ(r.status, 0) << r.err;
  // (the last "boot": the sandbox's own boot ran the per-boot script again)
  Outcome s = in(img, "cat /order; ls /var/lib/cloud/scripts/per-boot /var/lib/cloud/scripts/per-instance");
  EXPECT_EQ(s.out,
            "once\nboot\ninstance-written\ninstance-part\nruncmd\nboot\n/var/lib/cloud/scripts/per-boot:\nb.sh\n\n"
            "/var/lib/cloud/scripts/per-instance:\na-written.sh\nz-part.sh\n")
      << s.err;

  // Negative control: the written per-instance script fails: so does the
  // build, naming it, and nothing is committed.
  std::string bad = name("freq-bad");
  Outcome f = provision(bad, user_data("3"), {"--no-cache"});
  EXPECT_EQ(f.status, 125);
  EXPECT_TRUE(has(f.err, "scripts_per_instance: /var/lib/cloud/scripts/per-instance/a-written.sh failed (exit status 3)"))
      << f.err;
  EXPECT_NE(ultari({"image", "inspect", bad}, test_image_options()).status, 0);
}

// #include lists: each URL fetched at provisioning in a build sandbox whose
// egress policy allows that URL's host alone (the lab's servers serve the
// files), nested lists followed, the parts they held run where the list
// stood. The modules that run later get no access to those hosts.
// cloud-init sends an #include URL's user:password@ as Basic
// authentication; the minbase image fetches with apt-helper, which gets
// them through an auth.conf entry (the request target never holds them:
// the gateway refuses that). The password shows nowhere.
TEST_F(Provision, IncludeUrlsWithAUserAndPasswordAuthenticate) {
  NetLab lab;
  ASSERT_EQ(host("mkdir -p " + lab.dir() + "/files").status, 0);
  write_file(lab.dir() + "/files/auth.yaml", "#cloud-config\nwrite_files:\n  - path: /etc/authed\n    content: authed\n");
  std::string file = dir_ / "auth.txt";
  write_file(file, "#include\nhttp://al%40ice:s3cr%3At@allowed.test/files/auth.yaml\n");
  std::string img = name("auth");
  Outcome r = lab.ultari({"image", "provision", img, "--from", "minbase-kmod", "--user-data", file, "--net-resolver",
                          NetLab::kDnsAddr, "--no-cache", "-q"},
                         test_image_options(600));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(in(img, "cat /etc/authed").out, "authed");
  std::vector<json> reqs = lab.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0]["path"], "/files/auth.yaml");
  std::string authorization;
  for (const auto& h : reqs[0]["headers"])
    if (h[0].get<std::string>() == "Authorization") authorization = h[1];
  EXPECT_EQ(authorization, "Basic " + host("printf 'al@ice:s3cr:t' | base64 -w0").out);
  json i = inspect(img);
  EXPECT_EQ(i["provision_log"][0]["urls"], json({"http://al%40ice:***@allowed.test/files/auth.yaml"})) << i.dump();
  EXPECT_FALSE(has(i.dump(), "s3cr")) << i.dump();
  // A failing fetch names the URL without the password.
  write_file(file, "#include\nhttp://al%40ice:s3cr%3At@allowed.test/files/missing.yaml\n");
  Outcome missing = lab.ultari({"image", "provision", name("auth-missing"), "--from", "minbase-kmod", "--user-data",
                                file, "--net-resolver", NetLab::kDnsAddr, "--no-cache", "-q"},
                               test_image_options(600));
  EXPECT_EQ(missing.status, 125);
  EXPECT_TRUE(has(missing.err, "http://al%40ice:***@allowed.test/files/missing.yaml")) << missing.err;
  EXPECT_FALSE(has(missing.err, "s3cr")) << missing.err;
}

// An apt source whose URL holds user:password@ (a private mirror): apt
// sends them as Basic authentication, the request target holds the path
// alone, so the gateway lets the requests through; the provisioning log
// shows no password.
// A repository in the lab (<lab>/repo) with two indexes, main and contrib,
// holding lab-tool 1.0 and lab-extra 2.0: apt fetches them on one
// kept-alive connection, after the Release file.
void make_lab_repo(const NetLab& lab) {
  const std::string dists = lab.dir() + "/repo/dists/bookworm/";
  ASSERT_EQ(host("mkdir -p " + dists + "main/binary-amd64 " + dists + "contrib/binary-amd64").status, 0);
  write_file(dists + "main/binary-amd64/Packages",
             "Package: lab-tool\nVersion: 1.0\nArchitecture: all\nFilename: pool/lab-tool_1.0_all.deb\nSize: 1\n"
             "Description: a package of the lab\n");
  write_file(dists + "contrib/binary-amd64/Packages",
             "Package: lab-extra\nVersion: 2.0\nArchitecture: all\nFilename: pool/lab-extra_2.0_all.deb\nSize: 1\n"
             "Description: another package of the lab\n");
  Outcome sums = host("cd " + dists + " && sha256sum main/binary-amd64/Packages contrib/binary-amd64/Packages && "
                      "stat -c %s main/binary-amd64/Packages contrib/binary-amd64/Packages");
  ASSERT_EQ(sums.status, 0);
  std::istringstream words(sums.out);
  std::string sum1, file1, sum2, file2, size1, size2;
  words >> sum1 >> file1 >> sum2 >> file2 >> size1 >> size2;
  write_file(dists + "Release", "Suite: bookworm\nCodename: bookworm\nArchitectures: amd64\nComponents: main contrib\n"
                                "Date: Thu, 03 Dec 2026 00:00:00 UTC\nSHA256:\n " + sum1 + " " + size1 + " " + file1 +
                                    "\n " + sum2 + " " + size2 + " " + file2 + "\n");
}

// `ppa:OWNER/NAME`, as add-apt-repository makes it: the PPA's archive for
// the base's Ubuntu release, signed-by its own key, whose fingerprint
// Launchpad's API gives and which the key server must hold under it. Here
// Launchpad, the archive and the key server are the lab's (the [ppa]
// settings of the host configuration point there), the base is the test
// image saying it is Ubuntu noble, and the archive's InRelease is signed
// by a key made for the test: apt checks it.
TEST_F(Provision, APpaSourceIsTheArchiveOfTheBasesUbuntuReleaseSignedByTheKeyLaunchpadNames) {
  NetLab lab;
  TempDir gnupg;
  const std::string gpg = "GNUPGHOME=" + gnupg.path() + " gpg --batch --quiet ";
  struct Agent {  // gpg starts an agent for the secret key: ended with the test
    std::string home;
    ~Agent() { host("GNUPGHOME=" + home + " gpgconf --kill all"); }
  } agent{gnupg.path()};
  ASSERT_EQ(host("chmod 700 " + gnupg.path() + " && " + gpg +
                 "--passphrase '' --quick-gen-key 'Ultari PPA test <ppa@lab.test>' ed25519 sign never 2>&1")
                .status,
            0);
  std::string fpr = host(gpg + "--with-colons --list-keys | awk -F: '/^fpr/ {print $10; exit}'").out;
  ASSERT_EQ(fpr.size(), 41u) << fpr;
  fpr.pop_back();
  std::string lower = host("printf %s " + fpr + " | tr A-F a-f").out;
  const std::string dists = lab.dir() + "/repo/ppa/lab-owner/tools/ubuntu/dists/noble/";
  ASSERT_EQ(host("mkdir -p " + dists + "main/binary-amd64 " + lab.dir() + "/keys " + lab.dir() + "/lp").status, 0);
  write_file(dists + "main/binary-amd64/Packages",
             "Package: ppa-tool\nVersion: 3.0\nArchitecture: all\nFilename: pool/ppa-tool_3.0_all.deb\nSize: 1\n"
             "Description: a package of the lab's PPA\n");
  Outcome sums = host("cd " + dists + " && printf ' %s %s main/binary-amd64/Packages\\n' "
                      "$(sha256sum < main/binary-amd64/Packages | cut -d' ' -f1) $(stat -c %s main/binary-amd64/Packages)");
  write_file(dists + "Release", "Suite: noble\nCodename: noble\nArchitectures: amd64\nComponents: main\n"
                                "Date: Thu, 03 Dec 2026 00:00:00 UTC\nSHA256:\n" + sums.out);
  ASSERT_EQ(host(gpg + "--clearsign -o " + dists + "InRelease " + dists + "Release && " + gpg + "--armor --export " +
                 fpr + " > " + lab.dir() + "/keys/" + lower + ".asc")
                .status,
            0);
  auto launchpad_names = [&](const std::string& f) {
    write_file(lab.dir() + "/lp/lab-owner_tools.json", "{\"signing_key_fingerprint\": \"" + f + "\"}");
  };
  launchpad_names(fpr);
  std::string conf = dir_ / "config.toml";
  write_file(conf, "[ppa]\narchive = \"http://allowed.test/repo/ppa\"\napi = \"http://allowed.test/lp/1.0/\"\n"
                   "keyserver = \"http://allowed.test\"\n");
  Options o = test_image_options(600);
  o.env.push_back("ULTARI_CONFIG=" + conf);
  auto provision_in_lab = [&](const std::string& image, const std::string& base, const std::string& user_data) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    return lab.ultari({"image", "provision", image, "--from", base, "--user-data", file, "--net-resolver",
                       NetLab::kDnsAddr, "--no-cache", "-q"},
                      o);
  };
  // The base: the test image with an Ubuntu os-release.
  std::string base = name("noble");
  Outcome b = provision_in_lab(base, "minbase-kmod",
                               "#cloud-config\nruncmd:\n  - printf 'ID=ubuntu\\nVERSION_CODENAME=noble\\n"
                               "UBUNTU_CODENAME=noble\\n' > /usr/lib/os-release\n");
  ASSERT_EQ(b.status, 0) << b.err;
  const std::string ppa = "#cloud-config\napt:\n  sources_list: '# the PPA only'\n  sources:\n    tools:\n"
                          "      source: ppa:lab-owner/tools\npackage_update: true\n";
  std::string img = name("ppa");
  Outcome r = provision_in_lab(img, base, ppa);
  std::string asked;
  for (const auto& q : lab.requests()) asked += q["path"].get<std::string>() + "\n";
  ASSERT_EQ(r.status, 0) << r.err << asked;
  Outcome s = in(img, "cat /etc/apt/sources.list.d/tools.list; apt-cache show ppa-tool | grep ^Version");
  EXPECT_EQ(s.out, "deb [signed-by=/etc/apt/cloud-init.gpg.d/tools.gpg] http://allowed.test/repo/ppa/lab-owner/tools/"
                   "ubuntu noble main\nVersion: 3.0\n")
      << s.err;
  EXPECT_TRUE(has(asked, "/lp/1.0/%7elab-owner/%2barchive/ubuntu/tools\n") ||  // apt-helper's quoting
              has(asked, "/lp/1.0/~lab-owner/+archive/ubuntu/tools\n"))
      << asked;
  EXPECT_TRUE(has(asked, "/pks/lookup?op=get&options=mr&search=0x" + fpr + "\n")) << asked;
  EXPECT_TRUE(has(asked, "/repo/ppa/lab-owner/tools/ubuntu/dists/noble/InRelease\n")) << asked;
  json log = inspect(img), fetched = json::array();
  for (const auto& m : log["provision_log"])
    if (m["module"] == "apt") fetched = m.value("keys_fetched", json::array());
  EXPECT_EQ(fetched.dump(), json::array({{{"source", "tools"}, {"ppa", "lab-owner/tools"},
                                          {"fingerprint_from", "http://allowed.test/lp/1.0/~lab-owner/+archive/ubuntu/tools"}},
                                         {{"source", "tools"}, {"keyid", fpr}, {"from", "http://allowed.test:80"}}})
                                .dump())
      << log.dump();

  // Negative control: Launchpad names another key (the key server has it):
  // that key is fetched, and apt refuses the archive signed by the PPA's.
  const std::string other_fpr = "44BA1FB14E04D7E89D9C155FDE0CC9B25BF5F9E4";
  ASSERT_EQ(host("cp " + std::string(ULTARI_TEST_DATA) + "/provision/keys/other.asc " + lab.dir() +
                 "/keys/44ba1fb14e04d7e89d9c155fde0cc9b25bf5f9e4.asc").status,
            0);
  launchpad_names(other_fpr);
  Outcome wrong = provision_in_lab(name("ppa-wrong"), base, ppa);
  EXPECT_EQ(wrong.status, 125);
  EXPECT_TRUE(has(wrong.err, "NO_PUBKEY") || has(wrong.err, "not signed")) << wrong.err;
  // Launchpad's answer without a fingerprint: refused, naming it.
  write_file(lab.dir() + "/lp/lab-owner_tools.json", "{\"name\": \"tools\"}");
  Outcome none = provision_in_lab(name("ppa-none"), base, ppa);
  EXPECT_EQ(none.status, 125);
  EXPECT_TRUE(has(none.err, "apt.sources.tools (ppa:lab-owner/tools): Launchpad's answer")) << none.err;
  // A base that is not Ubuntu: refused before anything is fetched.
  launchpad_names(fpr);
  size_t asked_before = lab.requests().size();
  Outcome debian = provision_in_lab(name("ppa-debian"), "minbase-kmod", ppa);
  EXPECT_EQ(debian.status, 125);
  EXPECT_TRUE(has(debian.err, "ppa:lab-owner/tools is built for Ubuntu's releases, and the base (debian bookworm)"))
      << debian.err;
  EXPECT_EQ(lab.requests().size(), asked_before);
  // A base whose release is no release name (words for apt's options): refused.
  std::string odd = name("odd");
  ASSERT_EQ(provision_in_lab(odd, "minbase-kmod",
                             "#cloud-config\nruncmd:\n  - printf 'ID=ubuntu\\nUBUNTU_CODENAME=\"noble [trusted=yes]\"\\n' "
                             "> /usr/lib/os-release\n")
                .status,
            0);
  Outcome injected = provision_in_lab(name("ppa-odd"), odd, ppa);
  EXPECT_EQ(injected.status, 125);
  EXPECT_TRUE(has(injected.err, "the base's Ubuntu release 'noble??trusted?yes?' is not a release name")) << injected.err;
  EXPECT_EQ(scratch_dirs(), 0);
}

TEST_F(Provision, AptSourcesWithAUserAndPasswordAuthenticate) {
  NetLab lab;
  make_lab_repo(lab);
  std::string file = dir_ / "apt-auth.yaml";
  write_file(file, "#cloud-config\napt:\n  sources_list: '# the private source only'\n  sources:\n    private.list:\n"
                   "      source: 'deb [trusted=yes] http://al%40ice:s3cr%3At@allowed.test/repo bookworm main contrib'\n"
                   "package_update: true\n");
  std::string img = name("apt-auth");
  Outcome r = lab.ultari({"image", "provision", img, "--from", "minbase-kmod", "--user-data", file, "--net-resolver",
                          NetLab::kDnsAddr, "--no-cache", "-q"},
                         test_image_options(600));
  ASSERT_EQ(r.status, 0) << r.err;
  std::string expected = "Basic " + host("printf 'al@ice:s3cr:t' | base64 -w0").out, seen;
  int authed = 0, requests = 0;
  for (const auto& q : lab.requests()) {
    std::string authorization;
    for (const auto& h : q["headers"])
      if (h[0].get<std::string>() == "Authorization") authorization = h[1];
    seen += q["path"].get<std::string>() + " " + authorization + "\n";
    ++requests;
    authed += authorization == expected;
  }
  EXPECT_EQ(authed, requests) << seen;  // every request authenticated
  for (const char* f : {"Release ", "main/binary-amd64/Packages ", "contrib/binary-amd64/Packages "})
    EXPECT_TRUE(has(seen, std::string("/repo/dists/bookworm/") + f)) << seen;
  expect_lab_packages(img);
  EXPECT_FALSE(has(seen, "s3cr")) << seen;  // never in a request target
  json i = inspect(img);
  EXPECT_FALSE(has(i.dump(), "s3cr")) << i.dump();
  EXPECT_FALSE(has(r.err, "s3cr")) << r.err;
}

// Behind a corporate proxy (--net-upstream, nothing else reachable): apt
// pipelines its requests on one connection, the gateway sends each to the
// proxy on a connection of its own (one request per proxy connection), and
// every index still arrives.
TEST_F(Provision, AptThroughAnUpstreamProxyFetchesEveryIndex) {
  NetLab lab;
  make_lab_repo(lab);
  std::string file = dir_ / "apt-proxy.yaml";
  write_file(file, "#cloud-config\napt:\n  sources_list: '# the lab source only'\n  sources:\n    lab.list:\n"
                   "      source: 'deb [trusted=yes] http://allowed.test/repo bookworm main contrib'\n"
                   "package_update: true\n");
  std::string img = name("apt-proxy");
  ASSERT_EQ(lab.corporate_network(true).status, 0);
  Outcome r = lab.ultari({"image", "provision", img, "--from", "minbase-kmod", "--user-data", file, "--net-upstream",
                          std::string("http://") + NetLab::kProxyAddr + ":" + std::to_string(NetLab::kProxyPort),
                          "--no-cache", "-q"},
                         test_image_options(600));
  ASSERT_EQ(lab.corporate_network(false).status, 0);
  ASSERT_EQ(r.status, 0) << r.err;
  std::string seen;
  for (const auto& q : lab.proxy_log()) seen += q.value("method", "") + " " + q.value("target", "") + "\n";
  for (const char* f : {"Release", "main/binary-amd64/Packages", "contrib/binary-amd64/Packages"})
    EXPECT_TRUE(has(seen, std::string("GET http://allowed.test/repo/dists/bookworm/") + f + "\n")) << seen;
  expect_lab_packages(img);
}

TEST_F(Provision, IncludeListsAreFetchedEachThroughAPolicyOfItsOwn) {
  NetLab lab;
  ASSERT_EQ(host("mkdir -p " + lab.dir() + "/files").status, 0);
  write_file(lab.dir() + "/files/a.yaml",
             "#cloud-config\nwrite_files:\n  - path: /etc/included\n    content: from-a\n"
             "runcmd:\n  - '! /usr/lib/apt/apt-helper download-file http://allowed.test/files/a.yaml /tmp/x'\n");
  write_file(lab.dir() + "/files/nested.txt", "#include\nhttp://allowed.test/files/a.yaml\n");
  write_file(lab.dir() + "/files/b.sh", "#!/bin/sh\necho b > /etc/b\n");
  auto provision_in_lab = [&](const std::string& image, const std::string& user_data, std::vector<std::string> extra = {}) {
    std::string file = dir_ / (image + ".txt");
    write_file(file, user_data);
    std::vector<std::string> args = {"image", "provision", image, "--from", "minbase-kmod", "--user-data", file,
                                     "--net-resolver", NetLab::kDnsAddr, "--no-cache", "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    return lab.ultari(args, test_image_options(600));
  };
  const std::string list = "#include\nhttp://allowed.test/files/nested.txt\nhttp://other.test/files/b.sh\n";
  std::string img = name("inc");
  Outcome r = provision_in_lab(img, list);
  ASSERT_EQ(r.status, 0) << r.err;
  Outcome s = in(img, "cat /etc/included; echo; cat /etc/b");
  EXPECT_EQ(s.out, "from-a\nb\n") << s.err;
  json i = inspect(img);
  EXPECT_EQ(i["provision_log"][0]["module"], "include") << i.dump();
  EXPECT_EQ(i["provision_log"][0]["urls"],
            json({"http://allowed.test/files/nested.txt", "http://allowed.test/files/a.yaml", "http://other.test/files/b.sh"}))
      << i.dump();
  std::string asked;
  for (const auto& q : lab.requests()) asked += q["path"].get<std::string>() + " ";
  EXPECT_EQ(asked, "/files/nested.txt /files/a.yaml /files/b.sh ");  // the runcmd item reached nothing

  // Negative controls: with allowed.test allowed to the modules, the same
  // runcmd item reaches it (and so fails, being negated); a URL that is
  // not there fails the build naming it. Nothing is committed.
  std::string open_img = name("inc-open");
  Outcome o = provision_in_lab(open_img, list, {"--net", "allow=allowed.test"});
  EXPECT_EQ(o.status, 125);
  EXPECT_TRUE(has(o.err, "runcmd[0]")) << o.err;
  std::string missing = name("inc-missing");
  Outcome m = provision_in_lab(missing, "#include http://allowed.test/files/not-there.yaml\n");
  EXPECT_EQ(m.status, 125);
  EXPECT_TRUE(has(m.err, "#include: fetching http://allowed.test/files/not-there.yaml failed")) << m.err;
  // A pattern is no host a fetch may be allowed: refused before any fetch.
  std::string pattern = name("inc-pattern");
  Outcome w = provision_in_lab(pattern, "#include http://*.test/files/b.sh\n");
  EXPECT_EQ(w.status, 125);
  EXPECT_TRUE(has(w.err, "names no host a policy can allow by name")) << w.err;
  for (const auto& n : {open_img, missing, pattern})
    EXPECT_NE(ultari({"image", "inspect", n}, test_image_options()).status, 0);

  EXPECT_EQ(scratch_dirs(), 0);
}

// The fetch takes the image's curl before its wget: the same source with
// its header and user:password@, on a busybox root with the host's curl
// (and its libraries) added. Negative control: without curl, wget fetches.
TEST_F(Provision, FetchesUseTheImagesCurlWhenItHasOne) {
  NetLab lab;
  std::string plain = dir_ / "bb", with_curl = dir_ / "bbcurl";
  const std::string busybox_root =
      "mkdir -p $R/bin $R/tmp $R/root $R/etc && cp /usr/bin/busybox $R/bin/ && "
      "for c in $(/usr/bin/busybox --list); do [ \"$c\" = busybox ] || ln -sf busybox \"$R/bin/$c\"; done && "
      "printf 'root:x:0:0:root:/root:/bin/sh\\n' > $R/etc/passwd && printf 'root:x:0:\\n' > $R/etc/group && "
      "chmod 1777 $R/tmp";
  ASSERT_EQ(host("set -e; R=" + plain + "; " + busybox_root + "; R=" + with_curl + "; " + busybox_root +
                 "; mkdir -p $R/usr/bin && cp /usr/bin/curl $R/usr/bin/ && "
                 "for l in $(ldd /usr/bin/curl | grep -o '/[^ ]*'); do cp --parents -L \"$l\" $R; done && "
                 "mkdir -p " + lab.dir() + "/files && printf fetched > " + lab.dir() + "/files/f.txt")
                .status,
            0);
  const std::string ud = "#cloud-config\nwrite_files:\n  - path: /etc/fetched\n"
                         "    source: {uri: 'http://u:p%40ss@allowed.test/files/f.txt', headers: {X-Token: t-1}}\n";
  std::string file = dir_ / "curl.yaml";
  write_file(file, ud);
  auto fetch_with = [&](const std::string& root) {
    std::string base = name(root.substr(root.rfind('/') + 1)), img = base + "-src";
    EXPECT_EQ(ultari({"image", "import", base, root, "-q"}, test_image_options()).status, 0);
    lab.clear_logs();
    Outcome r = lab.ultari({"image", "provision", img, "--from", base, "--user-data", file, "--net-resolver",
                            NetLab::kDnsAddr, "--no-cache", "-q"},
                           test_image_options(600));
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(in(img, "cat /etc/fetched").out, "fetched");
    std::string seen;
    for (const auto& q : lab.requests()) {
      seen += q["path"].get<std::string>();
      for (const auto& h : q["headers"])
        if (h[0] == "User-Agent" || h[0] == "X-Token" || h[0] == "Authorization")
          seen += " " + h[0].get<std::string>() + "=" + h[1].get<std::string>();
      seen += "\n";
    }
    return seen;
  };
  std::string curl = fetch_with(with_curl);
  EXPECT_TRUE(has(curl, "/files/f.txt ") && has(curl, " User-Agent=curl/") && has(curl, " X-Token=t-1") &&
              has(curl, " Authorization=Basic dTpwQHNz"))
      << curl;
  std::string wget = fetch_with(plain);
  EXPECT_TRUE(has(wget, " User-Agent=Wget") && has(wget, " X-Token=t-1") && has(wget, " Authorization=Basic dTpwQHNz"))
      << wget;
}

// write_files[].source (cloud-init 23.1): the URL's bytes written as they
// are, fetched at provisioning through a policy that allows that host
// alone, with the source's headers; the content is the fallback when the
// fetch fails. The base is busybox (its wget sends headers; a minbase root
// has only apt-helper, which cannot).
TEST_F(Provision, WriteFilesSourcesAreFetchedWithTheirHeaders) {
  NetLab lab;
  std::string root = dir_ / "bb";
  ASSERT_EQ(host("set -e; R=" + root + "; mkdir -p $R/bin $R/tmp $R/root $R/etc && cp /usr/bin/busybox $R/bin/ && "
                 "for c in $(/usr/bin/busybox --list); do [ \"$c\" = busybox ] || ln -sf busybox \"$R/bin/$c\"; done && "
                 "printf 'root:x:0:0:root:/root:/bin/sh\\n' > $R/etc/passwd && printf 'root:x:0:\\n' > $R/etc/group && "
                 "chmod 1777 $R/tmp && mkdir -p " + lab.dir() + "/files && printf 'bin\\000ary\\n' > " + lab.dir() +
                 "/files/blob.bin && printf authed > " + lab.dir() + "/files/auth.txt")
                .status,
            0);
  std::string base = name("bb");
  ASSERT_EQ(ultari({"image", "import", base, root, "-q"}, test_image_options()).status, 0);
  auto provision_in_lab = [&](const std::string& image, const std::string& user_data) {
    std::string file = dir_ / (image + ".yaml");
    write_file(file, user_data);
    return lab.ultari({"image", "provision", image, "--from", base, "--user-data", file, "--net-resolver",
                       NetLab::kDnsAddr, "--no-cache", "-q"},
                      test_image_options(600));
  };
  const std::string ud =
      "#cloud-config\nwrite_files:\n"
      "  - path: /etc/fetched.bin\n    permissions: '0600'\n"
      "    source: {uri: 'http://allowed.test/files/blob.bin', headers: {X-Token: lab-token-1}}\n"
      "  - path: /etc/fallback\n    content: fallback-text\n"
      "    source: {uri: 'http://allowed.test/files/not-there'}\n"
      "  - path: /etc/authed\n    source: {uri: 'http://u:p%40ss@allowed.test/files/auth.txt'}\n";
  std::string img = name("src");
  Outcome r = provision_in_lab(img, ud);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.err, "not-there failed")) << r.err;  // the fallback is said
  EXPECT_TRUE(has(r.err, "its content is written instead")) << r.err;
  Outcome s = in(img, "od -c /etc/fetched.bin | head -1; stat -c %a /etc/fetched.bin; cat /etc/fallback; echo");
  EXPECT_EQ(s.out, "0000000   b   i   n  \\0   a   r   y  \\n\n600\nfallback-text\n") << s.err;
  std::string token;
  for (const auto& q : lab.requests())
    if (q["path"] == "/files/blob.bin")
      for (const auto& h : q["headers"])
        if (h[0] == "X-Token") token = h[1];
  EXPECT_EQ(token, "lab-token-1");
  // user:password@ goes as Basic authentication (wget's header here), and
  // the log shows no password.
  std::string authorization;
  for (const auto& q : lab.requests())
    if (q["path"] == "/files/auth.txt")
      for (const auto& h : q["headers"])
        if (h[0] == "Authorization") authorization = h[1];
  EXPECT_EQ(authorization, "Basic dTpwQHNz");  // u:p@ss
  EXPECT_EQ(in(img, "cat /etc/authed").out, "authed");
  EXPECT_TRUE(has(inspect(img).dump(), "http://u:***@allowed.test/files/auth.txt"));
  EXPECT_FALSE(has(inspect(img).dump(), "p%40ss"));

  // A build whose policy carries a secret for another host still fetches
  // its sources: a fetch's own policy (the source's host alone) drops the
  // secrets, which name hosts it does not allow.
  std::string policy = dir_ / "secret.toml";
  write_file(policy, "allow = [\"other.test\"]\ninspect_tls = true\n[[secret]]\nname = \"LAB_TOKEN\"\n"
                     "from = \"env:LAB_TOKEN_VALUE\"\nhosts = [\"other.test\"]\n");
  std::string sec = name("src-secret");
  std::string sec_file = dir_ / (sec + ".yaml");
  write_file(sec_file, "#cloud-config\nwrite_files:\n  - path: /etc/fetched.bin\n"
                       "    source: {uri: 'http://allowed.test/files/blob.bin'}\n");
  Options with_secret = test_image_options(600);
  with_secret.env.push_back("LAB_TOKEN_VALUE=lab-secret-value-1");
  Outcome sr = lab.ultari({"image", "provision", sec, "--from", base, "--user-data", sec_file, "--net-policy", policy,
                           "--net-resolver", NetLab::kDnsAddr, "--no-cache", "-q"},
                          with_secret);
  EXPECT_EQ(sr.status, 0) << sr.err;

  // Negative control: without content to fall back on, a failing source
  // fails the build, naming the file and the URL.
  Outcome f = provision_in_lab(name("src-bad"),
                               "#cloud-config\nwrite_files:\n  - path: /etc/x\n"
                               "    source: {uri: 'http://allowed.test/files/not-there'}\n");
  EXPECT_EQ(f.status, 125);
  EXPECT_TRUE(has(f.err, "write_files: /etc/x")) << f.err;
  EXPECT_TRUE(has(f.err, "fetching http://allowed.test/files/not-there failed")) << f.err;
}

// Rootless: the caller's own store, a base imported by that user (the
// shared minbase as a tarball, its ids taken back out of the rootful
// store's range). A store that keeps owners (the caller has subordinate
// ids) provisions from its user namespace: the build sandboxes have the
// ids 0..65535, and the image keeps the owners the user-data gave.
TEST_F(Provision, ARootlessCallerProvisionsTheTableClothCaseInItsOwnStore) {
  Options o = rootless_options();
  o.timeout_s = 600;
  std::string store = dir_ / "store", tarball = dir_ / "base.tar";
  json base = inspect("minbase-kmod");
  ASSERT_EQ(base["layers"].size(), 1u) << base.dump();
  std::string ids = read_file(test_image_store() + "/images/ids");
  std::string uid_base = ids.substr(0, ids.find(':'));
  ASSERT_EQ(host("mkdir -p " + store + " && chown -R " + kRootlessUser + " " + store + " && chmod 755 " +
                 dir_.path() + " && tar -C " + test_image_store() + "/images/layers/" +
                 base["layers"][0].get<std::string>() + " --numeric-owner -cf - . | /usr/bin/python3 -c '"
                 "import sys, tarfile\n"
                 "b = " + uid_base + "\n"
                 "with tarfile.open(fileobj=sys.stdin.buffer, mode=\"r|\") as i, tarfile.open(\"" + tarball + "\", \"w\", format=tarfile.GNU_FORMAT) as o:\n"
                 "  for m in i:\n"
                 "    m.uid -= b; m.gid -= b; m.uname = m.gname = \"\"\n"
                 "    o.addfile(m, i.extractfile(m) if m.isreg() else None)\n"
                 "' && chmod 644 " + tarball)
                .status,
            0);
  o.env.push_back("ULTARI_DATA_DIR=" + store);
  Outcome imp = ultari({"image", "import", "base", tarball, "-q"}, o);
  ASSERT_EQ(imp.status, 0) << imp.err;
  ASSERT_TRUE(has(read_file(store + "/images/ids"), "subids ")) << read_file(store + "/images/ids");
  // The case, and one chown to another id.
  std::string file = dir_ / "tc.yaml";
  write_file(file, std::string(kTableCloth) + "  - touch /etc/owned && chown 1000:1000 /etc/owned\n");
  Outcome r = ultari({"image", "provision", "tc", "--from", "base", "--user-data", file}, o);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(has(r.err, "keeps no owners")) << r.err;

  Options run = o;
  run.timeout_s = 60;
  Outcome s = ultari({"run", "-q", "--image", "tc", "--", "/bin/sh", "-c",
                      "id tablecloth; cat /etc/modprobe.d/nf_conntrack_ipv4.conf; cat /etc/default/locale; "
                      "locale -a | grep -c ko_KR.utf8; dpkg-query -W -f='${Status}\\n' locales; "
                      "modprobe nf_conntrack && depmod -a && modprobe nf_conntrack_ipv4 && echo modules-ok; "
                      "stat -c '%U %a' /home/tablecloth /etc/owned; stat -c '%U:%G' /var/cache/apt/archives/partial; "
                      "test -e /etc/apt/apt.conf.d/00ultari-rootless-build || echo no-build-apt-conf"},
                     run);
  EXPECT_EQ(s.status, 0) << s.err;
  // The home and the chowned file keep their owners; apt's own directory
  // is its _apt user's (a one-id build could not give it one).
  EXPECT_EQ(s.out,
            "uid=1000(tablecloth) gid=1001(tablecloth) groups=1001(tablecloth),4(adm),27(sudo),29(audio),44(video),"
            "1000(netdev)\nalias nf_conntrack_ipv4 nf_conntrack\nLANG=ko_KR.UTF-8\n1\ninstall ok installed\n"
            "modules-ok\ntablecloth 755\ntablecloth 644\n_apt:root\nno-build-apt-conf\n")
      << s.err;
  // As tablecloth: its home is its own.
  Outcome as_tc = ultari({"run", "-q", "--image", "tc", "--user", "1000:1001", "--", "/bin/sh", "-c",
                          "touch /home/tablecloth/x && echo home-writable; touch /etc/x 2>/dev/null || echo etc-not"},
                         run);
  EXPECT_EQ(as_tc.out, "home-writable\netc-not\n") << as_tc.err;
  Outcome log = ultari({"image", "inspect", "--json", "tc"}, run);
  ASSERT_EQ(log.status, 0) << log.err;
  std::vector<std::string> modules;
  json inspected = json::parse(log.out);
  for (const auto& m : inspected["provision_log"]) modules.push_back(m["module"]);
  EXPECT_EQ(modules, (std::vector<std::string>{"kernel_modules", "write_files", "users", "packages", "locale", "runcmd"}));
  // Nothing of the build is left in the store's tmp/.
  EXPECT_EQ(host("ls -A " + store + "/images/tmp").out, "");

  // Reading and checking works rootless, with a MIME user-data's parts listed.
  write_file(file, mime_user_data("setup.sh", "#!/bin/sh\ntrue\n"));
  Outcome mime = ultari({"image", "provision", "x", "--from", "base", "--user-data", file, "--check"}, run);
  EXPECT_EQ(mime.status, 0) << mime.err;
  EXPECT_TRUE(has(mime.out, "modules in order: boothooks write_files runcmd scripts_user\n")) << mime.out;
  EXPECT_TRUE(has(mime.out, "part 3: \"setup.sh\" text/x-shellscript\n")) << mime.out;

  // A bootcmd: it runs at every start as root inside, --user or not (root
  // is mapped: the sandbox has the subordinate ids).
  write_file(file, "#cloud-config\nbootcmd:\n  - id -u >> /tmp/boot-ids\n");
  ASSERT_EQ(ultari({"image", "provision", "boots", "--from", "base", "--user-data", file, "-q"}, o).status, 0);
  Outcome as_user = ultari({"run", "--image", "boots", "--user", "1000:1000", "--", "/bin/sh", "-c",
                            "id -u; cat /tmp/boot-ids"},
                           run);
  EXPECT_EQ(as_user.status, 0) << as_user.err;
  EXPECT_EQ(as_user.out, "1000\n0\n") << as_user.err;
  EXPECT_FALSE(has(as_user.err, "the boot step ran as")) << as_user.err;
}

// In the store's user namespace the provisioning process is root with every
// capability over the caller's and its subordinate ids' files. The build's
// network gateway, which parses what the sandbox sends, keeps none of them.
TEST_F(Provision, ARootlessBuildsGatewayHasNoCapabilitiesInTheStoresNamespace) {
  Options o = rootless_options();
  o.timeout_s = 120;
  std::string store = dir_ / "store", tarball = dir_ / "base.tar";
  ASSERT_EQ(host("mkdir -p " + store + "/rootfs/bin && cp /usr/bin/busybox " + store + "/rootfs/bin/ && for c in sh "
                 "sleep; do ln -s busybox " + store + "/rootfs/bin/$c; done && tar -C " + store + "/rootfs -cf " +
                 tarball + " . && chmod 644 " + tarball + " && chown -R " + kRootlessUser + " " + store +
                 " && chmod 755 " + dir_.path())
                .status,
            0);
  o.env.push_back("ULTARI_DATA_DIR=" + store);
  ASSERT_EQ(ultari({"image", "import", "base", tarball, "-q"}, o).status, 0);
  ASSERT_TRUE(has(read_file(store + "/images/ids"), "subids ")) << read_file(store + "/images/ids");
  std::string file = dir_ / "u.yaml";
  write_file(file, "#cloud-config\nruncmd:\n  - sleep 5\n");
  Outcome r;
  std::thread t([&] {
    r = ultari({"image", "provision", "p", "--from", "base", "--user-data", file, "--net", "allow=example.test", "-q"}, o);
  });
  std::string gateway_caps, provision_caps;
  for (int i = 0; i < 100 && gateway_caps.empty(); ++i) {
    usleep(100 * 1000);
    std::string pid = host("pgrep -u " + std::string(kRootlessUser) + " -x ultari-net | head -1").out;
    if (pid.empty()) continue;
    pid.pop_back();
    gateway_caps = host("grep CapEff /proc/" + pid + "/status").out;
    // The provisioning process itself: named ultari (the gateway and the
    // build's processes share its command line, not its name).
    provision_caps = host("for p in $(pgrep -u " + std::string(kRootlessUser) + " -f 'ultari image provision p'); do "
                          "[ \"$(cat /proc/$p/comm)\" = ultari ] && grep CapEff /proc/$p/status && break; done").out;
  }
  t.join();
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(gateway_caps, "CapEff:\t0000000000000000\n");
  // Negative control: the process it came from has them (in that
  // namespace), so the check can see capabilities.
  EXPECT_EQ(provision_caps.substr(0, 8), "CapEff:\t");
  EXPECT_NE(provision_caps, "CapEff:\t0000000000000000\n");
}

// Rootless with a store that keeps no owners (its `ids` file says
// "caller", or the caller has no subordinate ids): the build sandboxes have
// one id (the caller, root inside), chown does nothing there, and the
// image's files are all root's, with a warning naming what lost its owner.
TEST_F(Provision, ARootlessOneOwnerStoreProvisionsWithOneId) {
  Options o = rootless_options();
  o.timeout_s = 300;
  std::string store = dir_ / "store", tarball = dir_ / "base.tar";
  json base = inspect("minbase-kmod");
  ASSERT_EQ(host("mkdir -p " + store + "/images && echo caller > " + store + "/images/ids && chown -R " +
                 kRootlessUser + " " + store + " && chmod 755 " + dir_.path() + " && tar -C " + test_image_store() +
                 "/images/layers/" + base["layers"][0].get<std::string>() + " --numeric-owner -cf " + tarball +
                 " . && chmod 644 " + tarball)
                .status,
            0);
  o.env.push_back("ULTARI_DATA_DIR=" + store);
  ASSERT_EQ(ultari({"image", "import", "base", tarball, "-q"}, o).status, 0);
  std::string file = dir_ / "u.yaml";
  write_file(file,
             "#cloud-config\nusers:\n  - name: tablecloth\n    shell: /bin/bash\nruncmd:\n"
             "  - touch /etc/owned && chown 1000:1000 /etc/owned\n");
  Outcome r = ultari({"image", "provision", "u", "--from", "base", "--user-data", file}, o);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.err, "a rootless build keeps no owners")) << r.err;
  EXPECT_TRUE(has(r.err, "the home of tablecloth")) << r.err;
  Options run = o;
  run.timeout_s = 60;
  Outcome s = ultari({"run", "-q", "--image", "u", "--", "/bin/sh", "-c",
                      "id -u tablecloth; stat -c '%U %a' /home/tablecloth /etc/owned"},
                     run);
  EXPECT_EQ(s.out, "1000\nroot 755\nroot 644\n") << s.err;
  // Negative control: in a sandbox from the base, the chown the build made
  // do nothing fails (one id).
  Outcome b = ultari({"run", "-q", "--image", "base", "--", "/bin/sh", "-c",
                      "touch /tmp/x; chown 1000:1000 /tmp/x; echo chown=$?"},
                     run);
  EXPECT_TRUE(has(b.err, "Invalid argument")) << b.err;
  EXPECT_TRUE(has(b.out, "chown=1")) << b.out;
  // A bootcmd, one id: with --user, the only id the sandbox maps is the
  // user's, and the boot step runs as that user, with a warning saying so.
  write_file(file, "#cloud-config\nbootcmd:\n  - id -u >> /tmp/boot-ids\n");
  ASSERT_EQ(ultari({"image", "provision", "boots", "--from", "base", "--user-data", file, "-q"}, o).status, 0);
  Outcome as_root = ultari({"run", "--image", "boots", "--", "cat", "/tmp/boot-ids"}, run);
  EXPECT_EQ(as_root.out, "0\n") << as_root.err;
  Outcome as_user = ultari({"run", "--image", "boots", "--user", "1000:1000", "--", "/bin/sh", "-c",
                            "id -u; cat /tmp/boot-ids"},
                           run);
  EXPECT_EQ(as_user.status, 0) << as_user.err;
  EXPECT_EQ(as_user.out, "1000\n1000\n") << as_user.err;
  EXPECT_TRUE(has(as_user.err, "the boot step ran as 1000:1000, not as root")) << as_user.err;
}

}  // namespace
}  // namespace ultari::test
