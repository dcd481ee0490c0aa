// What a sandbox can see of the host: each test checks a promise from inside
// and, as a negative control, that the same probe does see the thing when it
// is deliberately made visible (so the probe itself can fail).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdlib>

#include "harness.h"

namespace ultari::test {
namespace {

TEST(Isolation, RunsAndStreamsOutput) {
  Outcome r = sh("echo out; echo err >&2; exit 0");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_EQ(r.report["verdict"], "ok");
  EXPECT_EQ(r.report["stdout_bytes"], 4);
  EXPECT_EQ(r.report["stderr_bytes"], 4);
}

TEST(Isolation, StdinReachesTheCommand) {
  Options o;
  o.stdin_data = "hello from stdin\n";
  Outcome r = sh("cat", {}, o);
  EXPECT_EQ(r.out, "hello from stdin\n");
}

TEST(Isolation, HostnameIsSandboxByDefault) {
  EXPECT_EQ(sh("hostname").out, "sandbox\n");
  EXPECT_EQ(sh("hostname", {"--hostname", "judge-7"}).out, "judge-7\n");
}

TEST(Isolation, HostProcessesAreInvisible) {
  // A host process the sandbox must not see; the host itself sees it.
  pid_t host = fork();
  if (host == 0) {
    execl("/bin/sleep", "sleep", "30", nullptr);
    _exit(1);
  }
  ASSERT_TRUE(exists("/proc/" + std::to_string(host)));  // negative control
  Outcome r = sh("ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; cat /proc/1/comm");
  kill(host, SIGKILL);
  waitpid(host, nullptr, 0);
  // Inside: init (1), the shell (2) and its children only.
  EXPECT_EQ(r.out.substr(0, 4), "1 2 ") << r.out;
  EXPECT_EQ(r.out.find(" " + std::to_string(host) + " "), std::string::npos) << r.out;
}

TEST(Isolation, HostFilesAreInvisible) {
  TempDir dir;
  write_file(dir / "canary", "secret");
  const char* home = "/root";
  std::string ssh = std::string(home) + "/.ssh";
  bool made_ssh = mkdir(ssh.c_str(), 0700) == 0;
  std::string ssh_canary = ssh + "/ultari-canary-" + std::to_string(getpid());
  write_file(ssh_canary, "PRIVATE KEY");

  std::string probe = "for p in " + dir / "canary" + " " + ssh_canary +
                      " /etc/shadow /etc/gshadow /etc/ssh /etc/sudoers /home/* /work /var/cache/ultari; do "
                      "[ -e \"$p\" ] && echo \"visible $p\"; done; echo done";
  Outcome r = sh(probe);
  EXPECT_EQ(r.out, "done\n") << r.out << r.err;
  // Negative control: bound in on purpose, the same probe sees it.
  Outcome seen = sh("cat /mnt/canary", {"--ro-bind", dir.path() + ":/mnt"});
  EXPECT_EQ(seen.out, "secret");
  unlink(ssh_canary.c_str());
  if (made_ssh) rmdir(ssh.c_str());
  EXPECT_TRUE(exists("/etc/shadow"));  // the host has it; the sandbox does not
}

TEST(Isolation, EnvironmentIsNotInherited) {
  Options o;
  o.env = {"ULTARI_HOST_SECRET=hunter2", "AWS_SECRET_ACCESS_KEY=x"};
  Outcome r = sh("env | sort", {"--env", "FOO=bar", "--env", "LANG=C"}, o);
  EXPECT_EQ(r.out.find("hunter2"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("AWS_SECRET"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("FOO=bar\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("LANG=C\n"), std::string::npos) << r.out;  // --env replaces the default
  EXPECT_EQ(r.out.find("LANG=C.UTF-8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PATH=/usr/local/sbin:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("HOME=/root\n"), std::string::npos) << r.out;
}

TEST(Isolation, NetworkIsLoopbackOnly) {
  // A listener on the host's loopback: reachable from the host (negative
  // control), not from the sandbox, whose loopback is its own.
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(s, 4), 0);
  socklen_t len = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);  // negative control
  close(c);

  std::string py = "import socket\n"
                   "s=socket.socket()\n"
                   "s.settimeout(2)\n"
                   "try:\n  s.connect(('127.0.0.1'," + std::to_string(port) + "))\n  print('connected')\n"
                   "except OSError as e:\n  print('refused', e.errno)\n"
                   "import os\nprint(sorted(os.listdir('/sys/class/net')))\n";
  Outcome r = ultari({"run", "--", "python3", "-c", py});
  close(s);
  EXPECT_NE(r.out.find("refused 111"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.out.find("['lo']"), std::string::npos) << r.out;
}

TEST(Isolation, LoopbackWorksInside) {
  std::string py = "import socket\n"
                   "l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(1)\n"
                   "c=socket.create_connection(l.getsockname()); a,_=l.accept(); c.send(b'ping'); print(a.recv(4).decode())\n";
  Outcome r = ultari({"run", "--", "python3", "-c", py});
  EXPECT_EQ(r.out, "ping\n") << r.err;
}

TEST(Isolation, RootIsWritableAndWritesVanish) {
  Outcome first = sh("echo x > /etc/ultari-written && echo y > /tmp/t && echo z > /root/h && cat /etc/ultari-written");
  EXPECT_EQ(first.out, "x\n") << first.err;
  Outcome second = sh("ls /etc/ultari-written /tmp/t /root/h 2>&1 | wc -l; ls /tmp | wc -l");
  EXPECT_EQ(second.out, "3\n0\n") << second.out;
  EXPECT_FALSE(exists("/etc/ultari-written"));
}

TEST(Isolation, SystemDirectoriesAreReadOnly) {
  Outcome r = sh("touch /usr/bin/ultari-x 2>&1; touch /proc/sys/kernel/hostname 2>&1; touch /sys/x 2>&1; true");
  EXPECT_NE(r.out.find("/usr/bin/ultari-x': Read-only file system"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("/sys/x': Read-only file system"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("/proc/sys/kernel/hostname': "), std::string::npos) << r.out;
  EXPECT_FALSE(exists("/usr/bin/ultari-x"));
}

TEST(Isolation, MaskedProcPaths) {
  Outcome r = sh("for p in /proc/kcore /proc/keys /proc/timer_list /proc/interrupts /proc/sched_debug; do "
             "[ -e $p ] && echo \"$p $(head -c 64 $p | wc -c)\"; done; "
             "echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable; "
             "ls /sys/firmware | wc -l");
  if (exists("/proc/kcore")) {
    EXPECT_NE(r.out.find("/proc/kcore 0\n"), std::string::npos) << r.out;
  }
  EXPECT_NE(r.out.find("/proc/keys 0\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("/proc/interrupts 0\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("sysrq-writable"), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.ends_with("0\n")) << r.out;
  // Negative control: the host's own /proc/interrupts has content.
  EXPECT_GT(read_file("/proc/interrupts").size(), 0u);
}

TEST(Isolation, MinimalDev) {
  Outcome r = sh("ls /dev | tr '\\n' ' '; echo; echo hi > /dev/null && head -c 4 /dev/zero | wc -c; "
             "head -c 8 /dev/urandom | wc -c; echo x > /dev/full 2>/dev/null || echo full-ok; "
             "[ -e /dev/sda ] || [ -e /dev/vda ] || [ -e /dev/mem ] || [ -e /dev/kmsg ] || echo no-host-devices");
  EXPECT_EQ(r.out, "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \n4\n8\nfull-ok\nno-host-devices\n")
      << r.out << r.err;
}

TEST(Isolation, IdentityIsRootInsideUnprivilegedOutside) {
  Outcome r = sh("id -u; id -g; cat /proc/self/uid_map");
  EXPECT_EQ(r.out.substr(0, 4), "0\n0\n") << r.out;
  // Rootful: the sandbox's root is an unprivileged host uid, never 0.
  EXPECT_EQ(r.out.find("         0          0"), std::string::npos) << r.out;
  Outcome u = sh("id -u; id -g; echo $HOME; pwd; touch $HOME/f && echo home-writable", {"--user", "1000:1001"});
  EXPECT_EQ(u.out, "1000\n1001\n/home/sandbox\n/home/sandbox\nhome-writable\n") << u.out << u.err;
}

TEST(Isolation, CgroupTreeOfTheHostIsHidden) {
  Outcome r = sh("cat /proc/self/cgroup; ls /sys/fs/cgroup | wc -l");
  EXPECT_EQ(r.out.find("ultari-"), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.ends_with("0\n")) << r.out;
}

TEST(Isolation, WorkspaceIsWritableAndOwnedByItsOwner) {
  TempDir ws;
  chown(ws.path().c_str(), 1234, 1234);
  write_file(ws / "input.txt", "data\n");
  chown((ws / "input.txt").c_str(), 1234, 1234);
  Outcome r = sh("pwd; cat input.txt; echo result > out.txt; mkdir sub; ls -ln input.txt | awk '{print $3}'",
             {"--workspace", ws.path()});
  EXPECT_EQ(r.out, "/workspace\ndata\n0\n") << r.out << r.err;
  struct stat st{};
  ASSERT_EQ(stat((ws / "out.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 1234u);  // written as the workspace's owner on the host
  EXPECT_EQ(read_file(ws / "out.txt"), "result\n");
}

TEST(Isolation, BindAndRoBind) {
  TempDir a, b;
  write_file(a / "f", "A");
  chown(b.path().c_str(), 1234, 1234);  // a root-owned tree is not mapped writable
  Outcome r = sh("cat /data/f; echo w > /data/g 2>/dev/null || echo ro; echo w > /rw/g && echo rw",
             {"--ro-bind", a.path() + ":/data", "--bind", b.path() + ":/rw"});
  EXPECT_EQ(r.out, "Aro\nrw\n") << r.out << r.err;
  EXPECT_FALSE(exists(a / "g"));
}

TEST(Isolation, RootOwnedWritableTreeIsNotMappedToTheSandboxRoot) {
  TempDir root_owned, user_owned;
  chmod(root_owned.path().c_str(), 0755);
  chown(user_owned.path().c_str(), 1234, 1234);
  Outcome r = sh("touch /a/f 2>/dev/null || echo root-owned-read-only; touch /b/f && echo user-owned-writable",
                 {"--bind", root_owned.path() + ":/a", "--bind", user_owned.path() + ":/b"});
  EXPECT_EQ(r.out, "root-owned-read-only\nuser-owned-writable\n") << r.err;
  EXPECT_NE(r.err.find("belongs to root"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(root_owned / "f"));
}

TEST(Isolation, TmpfsOption) {
  Outcome r = sh("df -k /scratch | tail -1 | awk '{print $2}'; echo x > /scratch/f && cat /scratch/f; "
                 "head -c 2M /dev/zero > /scratch/big 2>/dev/null || echo full",
                 {"--tmpfs", "/scratch:1M"});
  EXPECT_EQ(r.out, "1024\nx\nfull\n") << r.err;
  EXPECT_EQ(ultari({"run", "--tmpfs", "/x:lots", "--", "true"}).status, 125);
}

TEST(Isolation, CwdOption) {
  EXPECT_EQ(sh("pwd", {"--cwd", "/tmp"}).out, "/tmp\n");
  EXPECT_EQ(sh("pwd").out, "/root\n");
}

TEST(Isolation, CustomRootfs) {
  TempDir root;
  for (const char* d : {"bin", "etc", "tmp"}) mkdir((root / d).c_str(), 0755);
  ASSERT_EQ(std::system(("cp /bin/busybox " + root / "bin/busybox").c_str()), 0);
  symlink("busybox", (root / "bin/sh").c_str());
  write_file(root / "etc/marker", "custom-root\n");
  Outcome r = ultari({"run", "--rootfs", root.path(), "--", "/bin/busybox", "sh", "-c",
                  "cat /etc/marker; /bin/busybox ls /usr 2>&1 | /bin/busybox head -1; echo x > /etc/new && echo writable"});
  EXPECT_EQ(r.out.substr(0, 12), "custom-root\n") << r.out << r.err;
  EXPECT_NE(r.out.find("writable"), std::string::npos) << r.out << r.err;
  EXPECT_FALSE(exists(root / "etc/new"));  // writes went to the sandbox's own layer
}

TEST(Isolation, EverydayProgramsWork) {
  // fork, threads, subprocess, git and a compiler, under the default policy.
  std::string script =
      "set -e; cd /tmp; python3 -c 'import subprocess, threading; "
      "t=threading.Thread(target=lambda: None); t.start(); t.join(); "
      "print(subprocess.run([\"echo\",\"sub\"],capture_output=True).stdout.decode().strip())'; "
      "git init -q repo && cd repo && git -c user.email=a@b -c user.name=n commit -q --allow-empty -m m && echo git-ok; "
      "printf '#include <stdio.h>\\nint main(){puts(\"cc-ok\");}' > h.c && cc -o h h.c && ./h";
  Outcome r = sh(script, {"--timeout", "60s"});
  EXPECT_EQ(r.out, "sub\ngit-ok\ncc-ok\n") << r.out << r.err;
  EXPECT_EQ(r.report["denied_syscalls"].size(), 0u) << r.report.dump();
}

}  // namespace
}  // namespace ultari::test
