#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/capability.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <deque>
#include <map>
#include <sys/stat.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <tuple>

#include "isolation/channel.h"
#include "isolation/child.h"
#include "net/inspection.h"
#include "sandbox/sink.h"
#include "sandbox/state.h"
#include "util/caller.h"
#include "util/error.h"
#include "util/random.h"
#include "util/fd.h"
#include "util/memory.h"
#include "util/paths.h"
#include "util/process.h"

namespace ultari {

using Clock = std::chrono::steady_clock;
using isolation::Msg;
using isolation::MsgType;

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::Ok: return "ok";
    case Verdict::NonzeroExit: return "nonzero_exit";
    case Verdict::Signaled: return "signaled";
    case Verdict::Timeout: return "timeout";
    case Verdict::CpuTime: return "cpu_time";
    case Verdict::Oom: return "oom";
    case Verdict::OutputLimit: return "output_limit";
    case Verdict::SetupError: return "setup_error";
  }
  return "setup_error";
}

namespace {

int read_cap_last() {
  int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
  char buf[16] = {};
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
  if (fd >= 0) close(fd);
  return n > 0 ? std::atoi(buf) : 40;
}

// A build's writable layer on disk: upper/ and work/ under
// Spec::upper_dir, owned by the sandbox's root in the store's ids (`store`:
// the identity before any block). Rootful, it returns the layer's tree,
// made here, read-write, idmapped through `userns` (>= 0: from the store's
// ids to the sandbox's block) or not; rootless, nothing (the child mounts
// the path).
UniqueFd writable_layer_tree(const Sandbox::State& s, const Spec& spec, const isolation::Identity& store, int userns) {
  for (const char* sub : {"/upper", "/work"}) {
    std::string p = spec.upper_dir + sub;
    if (mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("writable layer " + p);
    if (store.rootful && chown(p.c_str(), store.host_root_uid, store.host_root_gid) != 0) throw_errno("chown " + p);
  }
  if (!store.rootful) return {};
  for (const auto& step : s.root.steps)
    if (step.op == filesystem::Step::Overlay && step.upper_path) return isolation::detached_tree(step.upper_path, false, userns);
  return {};
}

std::string env_value(const std::vector<std::string>& env, const std::string& key) {
  for (const auto& e : env)
    if (e.compare(0, key.size() + 1, key + "=") == 0) return e.substr(key.size() + 1);
  return {};
}

}  // namespace

namespace {

// Spec::capabilities as a mask; throws naming an unknown one.
uint64_t capability_mask(const std::vector<std::string>& names, int cap_last) {
  uint64_t mask = 0;
  for (const auto& name : names) {
    // Exactly a name: libcap alone would also take numbers, lower case
    // and trailing blanks.
    bool exact = name.size() > 4 && name.compare(0, 4, "CAP_") == 0 &&
                 std::all_of(name.begin() + 4, name.end(), [](char c) { return (c >= 'A' && c <= 'Z') || c == '_'; });
    cap_value_t cap = 0;
    if (!exact || cap_from_name(name.c_str(), &cap) != 0 || cap < 0 || cap > cap_last || cap > 63)
      throw Error("unknown capability '" + name + "' (names as in capabilities(7), e.g. CAP_CHOWN)");
    mask |= uint64_t{1} << cap;
  }
  return mask;
}

}  // namespace

Prepared prepare(const Spec& spec) {
  if (spec.seccomp.chown_noop && !spec.seccomp.profile_path.empty())
    throw Error("chown doing nothing is a variant of the default seccomp policy; a profile decides for itself");
  if (spec.seccomp.setid_files) {
    if (!spec.seccomp.profile_path.empty())
      throw Error("setid files are a variant of the default seccomp policy; a profile decides for itself");
    bool rw_bind = std::any_of(spec.mounts.begin(), spec.mounts.end(),
                               [](const Mount& m) { return m.kind == Mount::Kind::Bind && !m.read_only; });
    if (!spec.workspace.empty() || rw_bind)
      throw Error("setid files cannot be allowed with a workspace or a read-write bind: a setuid file would reach "
                  "the host");
  }
  if (spec.network.mode != NetworkSpec::Mode::None)
    for (const char* cap : {"CAP_NET_ADMIN", "CAP_NET_RAW"})
      if (std::find(spec.capabilities.begin(), spec.capabilities.end(), cap) != spec.capabilities.end())
        throw Error(std::string(cap) + " cannot be kept with a network (--net): the sandbox could remove the "
                    "netfilter rules that send its traffic to the gateway and hide its attempts from the audit");
  Prepared p;
  p.identity = isolation::plan_identity(spec.identity.uid, spec.identity.gid, spec.identity.subids);
  if (p.identity.rootful && spec.network.mode != NetworkSpec::Mode::None)
    p.gateway_range = isolation::gateway_range("/etc/subuid", p.identity);
  p.cache_dir = cache_dir();
  if (filesystem::uses_host_root(spec))
    p.host_root = filesystem::prepare_host_root(p.cache_dir, p.identity.host_root_uid, p.identity.host_root_gid);
  p.policy = seccomp::load_policy(spec.seccomp.profile_path, p.cache_dir + "/seccomp",
                                {.setid_files = spec.seccomp.setid_files, .chown_noop = spec.seccomp.chown_noop});
  p.cgroups = cgroups::detect();
  p.cap_last = read_cap_last();
  p.capabilities = capability_mask(spec.capabilities, p.cap_last);
  return p;
}

namespace {

std::string home_of(const Spec& spec) { return spec.identity.uid == 0 ? "/root" : "/home/sandbox"; }

// The ids the boot step runs as: root inside, unless a rootless sandbox
// maps only the command's ids (--user), which it then takes.
std::pair<uid_t, gid_t> boot_ids(const Spec& spec) {
  if (host_root() || in_store_namespace() || spec.identity.subids) return {0, 0};
  return {spec.identity.uid, spec.identity.gid};
}

// The command as init receives it (see isolation::CommandHead): everything
// checked and resolved here, so the child only splits strings.
std::string build_command(const Spec& spec) {
  const std::string home = home_of(spec);
  std::vector<std::string> env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                  "HOME=" + home, "LANG=C.UTF-8"};
  const char* term = std::getenv("TERM");
  env.push_back(std::string("TERM=") + (term && *term ? term : "dumb"));
  if (spec.network.mode != NetworkSpec::Mode::None)
    for (const auto& kv : net::Gateway::proxy_env()) env.push_back(kv);
  if (spec.network.mode != NetworkSpec::Mode::None && spec.network.inspect_tls)
    for (const auto& kv : net::trust_env()) env.push_back(kv);
  for (const auto& secret : spec.network.secrets) {
    if (secret.placeholder.empty()) throw Error("internal: secret " + secret.name + " has no placeholder");
    env.push_back(secret.name + "=" + secret.placeholder);
  }
  for (const auto& kv : spec.process.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("--env '" + kv + "' must be KEY=VALUE");
    std::string key = kv.substr(0, eq + 1);
    std::erase_if(env, [&](const std::string& e) { return e.compare(0, key.size(), key) == 0; });
    env.push_back(kv);
  }

  if (spec.process.argv.empty()) throw Error("no command given (usage: ultari run [OPTIONS] -- COMMAND [ARG...])");
  const std::string& cmd = spec.process.argv[0];
  if (cmd.empty()) throw Error("the command is an empty string");
  std::vector<std::string> candidates;
  if (cmd.find('/') != std::string::npos) {
    candidates.push_back(cmd);
  } else {
    std::string path = env_value(env, "PATH");
    size_t start = 0;
    while (start <= path.size()) {
      size_t end = path.find(':', start);
      if (end == std::string::npos) end = path.size();
      std::string dir = path.substr(start, end - start);
      candidates.push_back((dir.empty() ? "." : dir) + "/" + cmd);
      start = end + 1;
    }
  }

  std::string cwd = spec.process.cwd;
  if (cwd.empty()) cwd = spec.workspace.empty() ? home : "/workspace";
  if (cwd[0] != '/') throw Error("--cwd '" + cwd + "' must be an absolute path");

  isolation::CommandHead head;
  head.uid = spec.identity.uid;
  head.gid = spec.identity.gid;
  static_assert(RLIM_NLIMITS <= std::size(isolation::CommandHead{}.limits));
  for (int res = 0; res < RLIM_NLIMITS; ++res) {
    rlimit cur{};
    if (getrlimit(res, &cur) != 0) continue;
    head.limits[head.nlimits++] = {res, cur.rlim_cur, cur.rlim_max};
  }
  auto limit = [&head](int res, rlim_t soft, rlim_t hard) {
    for (uint32_t i = 0; i < head.nlimits; ++i)
      if (head.limits[i].resource == res) {
        // Root here may lack CAP_SYS_RESOURCE: never above the hard limit.
        hard = std::min<rlim_t>(hard, head.limits[i].hard);
        head.limits[i].soft = std::min(soft, hard);
        head.limits[i].hard = hard;
      }
  };
  // (RLIMIT_CORE is init's: see child.cpp, step 5)
  rlim_t nofile = spec.limits.nofile.value_or(kDefaultNofile);
  limit(RLIMIT_NOFILE, nofile, nofile);
  if (spec.limits.cpu_time) {
    // Per-process backstop; the cgroup poll enforces the whole tree.
    auto secs = static_cast<rlim_t>(spec.limits.cpu_time->count() / 1000 + 2);
    limit(RLIMIT_CPU, secs, secs + 1);
  }
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, 0);
  if (errno == 0) head.nice = nice;
  head.argc = static_cast<uint32_t>(spec.process.argv.size());
  head.envc = static_cast<uint32_t>(env.size());
  head.candc = static_cast<uint32_t>(candidates.size());
  const auto& boot = spec.process.boot;
  if (!boot.empty() && (boot[0].empty() || boot[0][0] != '/'))
    throw Error("the boot step's program '" + boot[0] + "' must be an absolute path");
  head.bootc = static_cast<uint32_t>(boot.size());
  if (!boot.empty()) std::tie(head.boot_uid, head.boot_gid) = boot_ids(spec);

  std::string blob(reinterpret_cast<const char*>(&head), sizeof head);
  auto add = [&blob](const std::string& v) {
    if (v.find('\0') != std::string::npos) throw Error("the command or environment holds a NUL byte");
    blob += v;
    blob += '\0';
  };
  add(cwd);
  for (const auto& a : spec.process.argv) add(a);
  for (const auto& e : env) add(e);
  for (const auto& c : candidates) add(c);
  for (const auto& a : boot) add(a);
  if (blob.size() > isolation::kMaxCommandBytes ||
      size_t{head.argc} + head.envc + head.candc + head.bootc + 1 > isolation::kMaxCommandStrings)
    throw Error("the command line and environment are too large (" + std::to_string(blob.size()) + " bytes)");
  return blob;
}

// An idmapped tree of `path`, or nothing (and a warning) when its
// filesystem cannot be idmapped (tmpfs before Linux 6.3, some network
// filesystems): the path is then mounted as it is and its files keep their
// host owners, which the sandbox sees as nobody.
UniqueFd idmapped_or_warn(Sandbox::State& s, const char* path, int userns, int at = -1) {
  try {
    return at >= 0 ? isolation::idmapped_tree(at, path, userns) : isolation::idmapped_tree(path, userns);
  } catch (const Error& e) {
    s.warnings.push_back(std::string(path) + " is mounted without id mapping (" + e.what() +
                         "): its files keep their host owners, which the sandbox sees as nobody");
    return UniqueFd();
  }
}

// Rootful: the workspace and bind sources are idmapped so that their owner
// is the sandbox's user inside, and what the sandbox writes there is stored
// as that owner on the host, not as the subordinate range.
void idmap_user_paths(Sandbox::State& s) {
  const auto& id = s.identity;
  std::map<std::pair<uid_t, gid_t>, UniqueFd> userns_by_owner;
  for (auto& step : s.root.steps) {
    if (step.op != filesystem::Step::BindInRoot || !step.user_path) continue;
    // The owner is read from the tree that is then mounted (one open): a
    // path swapped between a stat and the mount would pick whose ids are
    // mapped onto the sandbox's user.
    UniqueFd at = isolation::open_host_path(step.source);
    struct stat st{};
    if (fstat(at.get(), &st) != 0) throw_errno(std::string("bind source '") + step.source + "'");
    if (st.st_uid == 0 || st.st_gid == 0) {
      // Host root is never mapped in. Writable, a root-owned tree would let
      // the sandbox act as host root there (a setuid file opened up by an
      // ACL, a setuid binary moved where others can reach it); read-only,
      // it would read what only host root may (--ro-bind /etc: shadow).
      // Unmapped, its files are nobody's inside: only "other" bits apply.
      if (!step.read_only)
        s.warnings.push_back(std::string(step.source) +
                             " belongs to root: mounted without id mapping, so the sandbox cannot act as host root "
                             "there (it writes only where others may); give it to an unprivileged owner instead");
      continue;
    }
    auto& userns = userns_by_owner[{st.st_uid, st.st_gid}];
    if (!userns)
      userns = isolation::mapping_userns({{st.st_uid, id.host_root_uid + id.uid, 1}},
                                         {{st.st_gid, id.host_root_gid + id.gid, 1}});
    UniqueFd tree = idmapped_or_warn(s, step.source, userns.get(), at.get());
    if (!tree) continue;
    s.trees.push_back(std::move(tree));
    step.op = filesystem::Step::AttachInRoot;
    step.tree_fd = s.trees.back().get();
  }
  // A --rootfs tree appears shifted into the sandbox's range, so files owned
  // by host root are root's inside (and writable through the overlay).
  if (!s.spec.rootfs.empty()) {
    UniqueFd userns = isolation::mapping_userns(id.uid_map, id.gid_map);
    UniqueFd tree = idmapped_or_warn(s, s.root.lower_dirs.front().c_str(), userns.get());
    if (!tree) return;
    s.trees.push_back(std::move(tree));
    s.root.use_lower_tree(s.trees.back().get());
  }
}

void send_msg(int fd, const Msg& m) {
  if (send(fd, &m, sizeof m, MSG_NOSIGNAL) != sizeof m) throw_errno("control socket");
}

// Receives one message and, for Listener, the fd that comes with it.
// 1: a message, 0: the peer closed, -1: nothing queued.
int recv_msg(int fd, Msg& m, UniqueFd& passed) {
  iovec iov{&m, sizeof m};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  std::vector<UniqueFd> got;  // (every fd taken: more than one would be closed, not left open)
  take_fds(msg, got);
  if (n == 0) return 0;
  if (n != sizeof m) return -1;
  if (!got.empty()) passed = std::move(got.back());
  return 1;
}

}  // namespace

std::unique_ptr<Sandbox> Sandbox::create(const Prepared& prepared, const Spec& spec) {
  auto st = std::make_unique<State>();
  State& s = *st;
  s.id = random_hex(6);
  s.spec = spec;
  net::fill_placeholders(s.spec.network);
  s.prepared = &prepared;
  s.policy = &prepared.policy;

  // The root's recipe checks every host path: bad input fails here, before
  // anything exists.
  s.root = filesystem::plan_root(spec, filesystem::uses_host_root(spec) ? &prepared.host_root : nullptr, home_of(spec));
  // Rootful: a block of ids of the sandbox's own (isolation::lease_block),
  // so that it shares no per-user kernel budget with another sandbox. What
  // is stored in the image store's ids (layers, the default root's
  // skeleton) is shown to it through idmapped mounts; a build's writable
  // layer (Spec::upper_dir) too, read-write: what the build writes is
  // stored in the store's ids, and becomes a layer as it is.
  s.identity = prepared.identity;
  std::vector<UniqueFd> store_trees;  // image layers, or the skeleton: read-only, in the sandbox's ids
  UniqueFd upper_tree;                // a build's writable layer, in the sandbox's ids
  const bool store_lowers = filesystem::uses_host_root(spec) || !spec.layers.empty();
  if (prepared.identity.rootful && prepared.identity.block_count > 0) {
    isolation::OwnerLease block = isolation::lease_block(prepared.identity);
    try {
      isolation::Identity own = isolation::for_block(prepared.identity, block.uid);
      if (store_lowers || !spec.upper_dir.empty()) {
        UniqueFd store_ids = isolation::mapping_userns({{prepared.identity.host_root_uid, own.host_root_uid, 65536}},
                                                       {{prepared.identity.host_root_gid, own.host_root_gid, 65536}});
        if (store_lowers)
          for (const auto& dir : s.root.lower_dirs) store_trees.push_back(isolation::detached_tree(dir, true, store_ids.get()));
        if (!spec.upper_dir.empty()) upper_tree = writable_layer_tree(s, spec, prepared.identity, store_ids.get());
      }
      s.identity = own;
      s.block_lease = std::move(block.lock);
    } catch (const isolation::IdmapUnsupported& e) {
      // Only a filesystem without idmapped mounts (tmpfs before Linux 6.3)
      // lets this sandbox keep the store's ids, shared with others like it
      // and with builds; any other failure fails the start.
      store_trees.clear();
      upper_tree.reset();
      s.warnings.push_back(std::string("the sandbox shares its ids with other sandboxes and with builds (and their "
                                       "per-user budgets): ") + e.what());
    }
  }
  if (prepared.identity.rootful && store_trees.empty() && !spec.layers.empty())
    for (const auto& dir : s.root.lower_dirs) store_trees.push_back(isolation::detached_tree(dir, true));
  const auto& id = s.identity;
  if (id.rootful) idmap_user_paths(s);
  if (id.helper_maps && spec.identity.uid != 0) {
    // Rootless with subordinate ids: the caller is root inside, and no
    // idmapped mount can make its files another uid's.
    for (const auto& step : s.root.steps) {
      struct stat st{};
      if (step.op == filesystem::Step::BindInRoot && step.user_path && !step.read_only &&
          stat(step.source, &st) == 0 && st.st_uid == id.host_root_uid)
        s.warnings.push_back(std::string(step.source) + " is yours, which is root inside (the image keeps owners in " +
                             "your subordinate ids): uid " + std::to_string(spec.identity.uid) +
                             " writes there only where others may");
    }
  }
  if (!spec.upper_dir.empty()) {
    // Rootful, the child gets the writable layer as a tree made here (it
    // may not be able to reach the path: the image store is root's).
    if (!upper_tree) upper_tree = writable_layer_tree(s, spec, prepared.identity, -1);
    if (upper_tree) {
      s.trees.push_back(std::move(upper_tree));
      s.root.use_upper_tree(s.trees.back().get());
    }
  }
  if (!store_trees.empty()) {
    // Image layers (or the skeleton) as detached trees: the child, an
    // unprivileged id, need not reach the store's directories.
    std::vector<int> fds;
    for (auto& tree : store_trees) {
      s.trees.push_back(std::move(tree));
      fds.push_back(s.trees.back().get());
    }
    if (spec.layers.empty()) s.root.use_lower_tree(fds.front());
    else s.root.use_lower_trees(fds);
  }
  // --inspect-tls and --secret: the CA and the secrets' values, read and
  // made now (a missing variable fails before anything exists); the CA's
  // certificate joins the sandbox's trust store.
  net::Inspection inspection;
  if (spec.network.mode != NetworkSpec::Mode::None) {
    inspection = net::prepare_inspection(s.spec.network, s.id);
    if (inspection.engine)
      s.root.add_file(net::kTrustBundle, net::trust_bundle(s.root.lower_dirs, inspection.ca.cert_pem));
  }

  // The cgroup exists before the child: limits are in force from its first
  // instruction.
  cgroups::Limits limits;
  limits.memory_bytes = spec.limits.memory_bytes.value_or(kDefaultMemoryBytes);
  limits.pids = spec.limits.pids.value_or(kDefaultPids);
  limits.cpus = spec.limits.cpus;
  s.cgroup.emplace(cgroups::Cgroup::create(prepared.cgroups, cgroups::make_group_name(), limits));
  for (const auto& what : s.cgroup->unenforced())
    s.warnings.push_back(what + " limit is not enforced: no usable cgroup controller for it (not delegated to this user?)");

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
  s.sock.reset(sv[0]);
  UniqueFd child_sock(sv[1]);
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd in_r(in[0]);
  s.in_w.reset(in[1]);
  if (pipe2(out, O_CLOEXEC) != 0) throw_errno("pipe");
  s.out.pipe.reset(out[0]);
  UniqueFd out_w(out[1]);
  if (pipe2(err, O_CLOEXEC) != 0) throw_errno("pipe");
  s.err.pipe.reset(err[0]);
  UniqueFd err_w(err[1]);

  auto& plan = s.plan;
  plan.sock = child_sock.get();
  std::vector<UniqueFd> tasks = s.cgroup->open_self_attach();
  for (const auto& fd : tasks) plan.cgroup_tasks.push_back(fd.get());
  plan.keep_fds = {child_sock.get(), in_r.get(), out_w.get(), err_w.get()};
  plan.keep_fds.insert(plan.keep_fds.end(), plan.cgroup_tasks.begin(), plan.cgroup_tasks.end());
  for (const auto& step : s.root.steps)
    if (step.tree_fd >= 0) plan.keep_fds.push_back(step.tree_fd);
  plan.keep_fds.insert(plan.keep_fds.end(), s.root.lower_tree_fds.begin(), s.root.lower_tree_fds.end());
  for (int fd : s.root.upper_fd)
    if (fd >= 0) plan.keep_fds.push_back(fd);  // rootful: the writable layer's tree
  std::sort(plan.keep_fds.begin(), plan.keep_fds.end());
  plan.keep_fds.erase(std::unique(plan.keep_fds.begin(), plan.keep_fds.end()), plan.keep_fds.end());
  plan.stdin_fd = in_r.get();
  plan.stdout_fd = out_w.get();
  plan.stderr_fd = err_w.get();
  plan.root = &s.root;
  std::tie(plan.argv_area, plan.argv_area_len) = ultari::argv_area();
  plan.hostname = spec.hostname.c_str();
  plan.become_root = id.setgroups;  // root inside, none of the caller's groups
  plan.setgroups_allowed = id.setgroups;
  plan.cap_last = prepared.cap_last;
  plan.keep_caps = prepared.capabilities;
  plan.filter.len = static_cast<unsigned short>(prepared.policy.kernel.size());
  plan.filter.filter = const_cast<sock_filter*>(prepared.policy.kernel.data());

  clone_args args{};
  args.flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_PIDFD;
  int pidfd = -1;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  int cg = s.cgroup->v2_fd();
  if (cg >= 0) {
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = static_cast<uint64_t>(cg);
  }
  s.started = Clock::now();
  // Rootful: the user namespace is created by a host uid of its own
  // (isolation::lease_owner), so the per-user kernel quotas charged to
  // a namespace's owner (inotify instances and watches, processes, message
  // queue bytes, pending signals) are this sandbox's alone: a sandbox can
  // exhaust neither root's nor another sandbox's.
  long pid;
  int clone_errno;
  {
    std::optional<isolation::CreatorScope> owner;
    if (id.rootful) {
      isolation::OwnerLease lease = isolation::lease_owner(id);
      s.owner_lease = std::move(lease.lock);  // held while the sandbox lives
      owner.emplace(lease.uid, id.host_root_gid, /*keep_caps=*/cg >= 0);  // CLONE_INTO_CGROUP writes to the group
    }
    pid = syscall(SYS_clone3, &args, sizeof args);
    clone_errno = errno;
    if (pid == 0) isolation::child_main(plan);
  }
  if (pid < 0) throw_errno("clone3 (creating the sandbox's namespaces)", clone_errno);
  s.pid = static_cast<pid_t>(pid);
  s.pidfd.reset(pidfd);
  child_sock.reset();
  in_r.reset();
  out_w.reset();
  err_w.reset();
  tasks.clear();

  // The child waits for these before it does anything.
  isolation::write_maps(s.pid, id);
  s.cgroup->attach(s.pid, cg >= 0, /*v1_joins_itself=*/true);
  // The network's namespace side is set up while init still waits for Go:
  // afterwards it makes itself non-dumpable, and joining the namespaces of
  // a non-dumpable process needs CAP_SYS_PTRACE, which a rootless caller
  // lacks (setns failed with EPERM whenever init got there first).
  std::optional<net::Endpoints> endpoints;
  if (spec.network.mode != NetworkSpec::Mode::None) endpoints = net::attach(s.pidfd.get());
  Msg go{};
  go.type = MsgType::Go;
  send_msg(s.sock.get(), go);
  // While the child builds its root: remove what SIGKILLed supervisors left
  // behind (cgroups, half-built skeletons). Never a reason to fail this run.
  try {
    cgroups::sweep_orphans(prepared.cgroups);
    if (filesystem::uses_host_root(spec)) filesystem::sweep_dead_builds(prepared.cache_dir);
  } catch (const std::exception&) {
  }
  // The network is served from here, set up from outside the sandbox
  // before its command can run (the command is sent after this returns).
  if (spec.network.mode != NetworkSpec::Mode::None) {
    inspection.unseal();  // init exists: the CA key and the values never were in its memory
    // What the sandbox makes the gateway do (relay, TLS, scanning) is
    // bounded like the sandbox: rootful, the gateway runs in a group of its
    // own with the sandbox's cpu and memory limits. Not in the sandbox's
    // group, whose kill or OOM would cut the audit short.
    const cgroups::Cgroup* gateway_group = nullptr;
    uid_t gateway_uid = 0;
    if (id.rootful) {
      // A uid of its own (isolation::lease_gateway), held while it lives.
      auto [base, count] = prepared.gateway_range;
      if (count == 0)  // prepared for a spec without a network
        std::tie(base, count) = isolation::gateway_range("/etc/subuid", prepared.identity);
      isolation::OwnerLease lease = isolation::lease_gateway(base, count);
      s.gateway_lease = std::move(lease.lock);
      gateway_uid = lease.uid;
      cgroups::Limits gl;
      gl.memory_bytes = limits.memory_bytes;
      gl.cpus = limits.cpus;
      gl.pids = net::Gateway::kMaxTasks;
      s.gateway_cgroup.emplace(cgroups::Cgroup::create(prepared.cgroups, cgroups::make_group_name(), gl));
      gateway_group = &*s.gateway_cgroup;
    }
    s.gateway = std::make_unique<net::Gateway>(spec.network, s.id, std::move(*endpoints), std::move(inspection),
                                               gateway_group, gateway_uid, s.gateway_lease.get());
  }
  return std::unique_ptr<Sandbox>(new Sandbox(std::move(st)));
}

namespace {

// Sends the command to init and switches the supervisor to the request's
// streams. Blocking sends: init reads them as soon as its setup is done; if
// init is gone (its setup failed), wait() reports why.
void give_command(Sandbox::State& s, const Io& io, const std::string& blob) {
  if (s.spec.limits.cpu_time && !s.cgroup->stats().cpu_known)
    s.warnings.push_back("cpu-time limit is enforced per process only (RLIMIT_CPU): no cgroup cpu accounting");
  s.io = io;
  s.out.dest.emplace(io.stdout_fd);
  s.out.dest_gone = io.stdout_fd < 0;
  s.err.dest.emplace(io.stderr_fd);
  s.err.dest_gone = io.stderr_fd < 0;
  s.started_command = true;
  s.started = Sandbox::State::Clock::now();
  Msg m{};
  m.type = MsgType::Command;
  m.value = static_cast<int64_t>(blob.size());
  bool sent = send(s.sock.get(), &m, sizeof m, MSG_NOSIGNAL) == sizeof m;
  for (size_t off = 0; sent && off < blob.size(); off += isolation::kCommandChunk) {
    size_t len = std::min(isolation::kCommandChunk, blob.size() - off);
    ssize_t n;
    do n = send(s.sock.get(), blob.data() + off, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    sent = n == static_cast<ssize_t>(len);
  }
  fcntl(s.in_w.get(), F_SETFL, O_NONBLOCK);
  if (io.stdin_fd < 0) s.in_w.reset();
  fcntl(s.out.pipe.get(), F_SETFL, O_NONBLOCK);
  fcntl(s.err.pipe.get(), F_SETFL, O_NONBLOCK);
}

}  // namespace

void Sandbox::exec(const Spec& request, const Io& io) {
  State& s = *s_;
  if (s.started_command) throw Error("the sandbox already ran its command");
  take_request_fields(s.spec, request);
  give_command(s, io, build_command(s.spec));
}

std::unique_ptr<Sandbox> Sandbox::start(const Prepared& prepared, const Spec& spec, const Io& io) {
  // The command is built (and checked) before anything exists, once.
  Spec filled = spec;
  net::fill_placeholders(filled.network);
  std::string blob = build_command(filled);
  auto sandbox = create(prepared, filled);
  give_command(sandbox->state(), io, blob);
  return sandbox;
}

namespace {
bool handle_control(Sandbox::State& s);
}

Sandbox::Status Sandbox::poll_setup() {
  State& s = *s_;
  if (!s.ended && s.sock) {
    pollfd p{s.sock.get(), POLLIN, 0};
    if (poll(&p, 1, 0) > 0 && !handle_control(s)) s.ended = true;
    pollfd d{s.pidfd.get(), POLLIN, 0};
    if (s.pidfd && poll(&d, 1, 0) > 0) s.ended = true;
  }
  if (s.ended || !s.setup_error.empty()) return Status::Failed;
  return s.ready ? Status::Ready : Status::Starting;
}

const std::string& Sandbox::setup_error() const { return s_->setup_error; }
int Sandbox::control_fd() const { return s_->sock.get(); }
int Sandbox::pidfd() const { return s_->pidfd.get(); }
Sandbox::State& Sandbox::state() { return *s_; }
std::unique_ptr<Sandbox> Sandbox::adopt(std::unique_ptr<State> state) {
  return std::unique_ptr<Sandbox>(new Sandbox(std::move(state)));
}

Sandbox::Sandbox(std::unique_ptr<State> state) : s_(std::move(state)) {}
Sandbox::~Sandbox() = default;
const std::string& Sandbox::id() const { return s_->id; }
void Sandbox::kill() { s_->kill_all(); }

namespace {

// Reads one buffer of the command's output (only when the previous one was
// passed on), counting it and enforcing the output limit on both streams
// together. After a short read the stream rests for a millisecond: a
// command writing a byte at a time must not cost the supervisor (whose CPU
// is not the sandbox's) a wake-up per byte.
void read_output(Sandbox::State& s, Sandbox::State::Output& o) {
  char buf[65536];
  ssize_t n = read(o.pipe.get(), buf, sizeof buf);
  if (n == 0) o.eof = true;
  if (n <= 0) return;
  if (static_cast<size_t>(n) < sizeof buf) o.next_read = Clock::now() + std::chrono::milliseconds(1);
  size_t accept = static_cast<size_t>(n);
  if (auto limit = s.spec.limits.output_bytes) {
    uint64_t used = s.out.bytes + s.err.bytes;
    uint64_t room = used >= *limit ? 0 : *limit - used;
    if (accept > room) {
      accept = static_cast<size_t>(room);
      if (!s.truncated) {
        s.truncated = true;
        if (!s.kill_reason) s.kill_reason = Verdict::OutputLimit;
        s.kill_all();
      }
    }
  }
  o.bytes += accept;
  if (!o.dest_gone) o.pending.append(buf, accept);
}

// Passes on what the caller takes now.
void write_output(Sandbox::State::Output& o) {
  while (!o.pending.empty()) {
    ssize_t w = o.dest->write_some(o.pending.data(), o.pending.size());
    if (w < 0) o.dest_gone = true, o.pending.clear();  // the reader went away
    if (w <= 0) return;
    o.pending.erase(0, static_cast<size_t>(w));
  }
}

// Moves the caller's stdin into the sandbox's pipe, a buffer at a time.
void pump_stdin(Sandbox::State& s, bool readable, bool writable) {
  if (readable && s.stdin_pending.empty() && !s.stdin_eof) {
    char buf[65536];
    ssize_t n = read(s.io.stdin_fd, buf, sizeof buf);
    if (n > 0) s.stdin_pending.assign(buf, static_cast<size_t>(n));
    else if (n == 0 || (errno != EAGAIN && errno != EINTR)) s.stdin_eof = true;
  }
  if (writable && !s.stdin_pending.empty()) {
    ssize_t n = write(s.in_w.get(), s.stdin_pending.data(), s.stdin_pending.size());
    if (n > 0) s.stdin_pending.erase(0, static_cast<size_t>(n));
    else if (n < 0 && errno == EPIPE) s.stdin_pending.clear(), s.stdin_eof = true;  // the sandbox closed it
  }
  if (s.stdin_eof && s.stdin_pending.empty()) s.in_w.reset();
}

// Handles every queued message; false once the child's end is closed.
bool handle_control(Sandbox::State& s) {
  Msg m{};
  UniqueFd passed;
  for (;;) {
    int rc = recv_msg(s.sock.get(), m, passed);
    if (rc <= 0) return rc < 0;
    switch (m.type) {
      case MsgType::SetupError:
        s.setup_error = std::string(m.step) + (m.detail[0] ? std::string(" ") + m.detail : "") + ": " +
                        (m.err == ELOOP ? "a component of the path is a symlink, which mount targets may not be"
                                        : std::strerror(m.err));
        s.kill_all();
        break;
      case MsgType::Listener:
        s.listener = std::move(passed);
        break;
      case MsgType::Ready:
        s.ready = true;
        break;
      case MsgType::ExecFailed:
        s.exec_errno = m.err;
        break;
      case MsgType::Exited:
        s.payload_status = static_cast<int>(m.value);
        break;
      case MsgType::BootExited:
        s.boot_status = static_cast<int>(m.value);
        s.boot_stopped_by = m.err;
        // What the OOM killer did so far was the boot's, not the command's.
        if (s.cgroup) s.oom_kills_in_boot = s.cgroup->stats().oom_kills;
        break;
      default:
        break;
    }
  }
}

UniqueFd make_timer(std::chrono::milliseconds first, std::chrono::milliseconds every) {
  UniqueFd t(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!t) throw_errno("timerfd_create");
  itimerspec its{};
  its.it_value.tv_sec = first.count() / 1000;
  its.it_value.tv_nsec = (first.count() % 1000) * 1000000;
  its.it_interval.tv_sec = every.count() / 1000;
  its.it_interval.tv_nsec = (every.count() % 1000) * 1000000;
  timerfd_settime(t.get(), 0, &its, nullptr);
  return t;
}

}  // namespace

Result Sandbox::wait() {
  State& s = *s_;
  if (!s.started_command) throw Error("wait() before exec(): the sandbox has no command");
  Result r;
  r.sandbox_id = s.id;
  if (s.listener && !s.notify) s.notify = std::make_unique<seccomp::Supervisor>(*s.policy, s.listener.release());

  UniqueFd deadline;
  if (s.spec.limits.wall_timeout) {
    auto left = *s.spec.limits.wall_timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - s.started);
    deadline = make_timer(std::max(left, std::chrono::milliseconds(1)), std::chrono::milliseconds(0));
  }
  // Periodic sampling: CPU time against --cpu-time, pids on v1 (no pids.peak).
  UniqueFd ticker = make_timer(std::chrono::milliseconds(20), std::chrono::milliseconds(50));

  sigset_t sigs;
  sigemptyset(&sigs);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&sigs, sig);
  sigset_t old;
  sigprocmask(SIG_BLOCK, &sigs, &old);
  UniqueFd sigfd(signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK));

  bool init_gone = false, notify_hup = false, sock_eof = false, trimmed = false;
  // Denied calls are answered at most this many per tick (5000/s): each
  // costs the supervisor, whose CPU no limit of the sandbox counts, so
  // threads looping on a denied call wait on the sandbox's clock instead.
  constexpr unsigned kNotifyPerTick = 250;
  unsigned notified = 0;
  while (!init_gone) {
    pollfd all[12];
    int n = 0;
    auto add = [&](int fd, short events = POLLIN) {
      if (fd < 0) return -1;
      all[n] = {fd, events, 0};
      return n++;
    };
    int i_pid = add(s.pidfd.get());
    int i_sock = sock_eof ? -1 : add(s.sock.get());
    // Per stream: read from the sandbox while nothing waits for the caller,
    // else wait until the caller can take more.
    int timeout_ms = -1;
    auto watch = [&](Sandbox::State::Output& o, int& in, int& out) {
      in = out = -1;
      if (!o.pending.empty()) {
        out = add(o.dest->poll_fd(), POLLOUT);
      } else if (!o.eof) {
        auto rest = std::chrono::ceil<std::chrono::milliseconds>(o.next_read - Clock::now()).count();
        if (rest <= 0) in = add(o.pipe.get());
        else timeout_ms = timeout_ms < 0 ? static_cast<int>(rest) : std::min(timeout_ms, static_cast<int>(rest));
      }
    };
    int i_out, i_outw, i_err, i_errw;
    watch(s.out, i_out, i_outw);
    watch(s.err, i_err, i_errw);
    int i_notify = s.notify && !notify_hup && notified < kNotifyPerTick ? add(s.notify->fd()) : -1;
    bool stdin_open = s.in_w && !s.stdin_eof;
    int i_in = stdin_open && s.stdin_pending.empty() ? add(s.io.stdin_fd) : -1;
    int i_inw = s.in_w && !s.stdin_pending.empty() ? add(s.in_w.get(), POLLOUT) : -1;
    int i_deadline = deadline ? add(deadline.get()) : -1;
    int i_tick = add(ticker.get());
    int i_sig = add(sigfd.get());
    if (poll(all, static_cast<nfds_t>(n), timeout_ms) < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll");
    }
    auto ready = [&](int i) { return i >= 0 && (all[i].revents & (POLLIN | POLLHUP | POLLERR)); };
    if (i_notify >= 0 && (all[i_notify].revents & POLLIN)) {
      try {
        ++notified;
        s.notify->handle_one();
      } catch (const Error& e) {
        s.warnings.push_back(std::string("seccomp supervisor: ") + e.what());
        notify_hup = true;
      }
    }
    // No task uses the filter any more: the listener stays readable (HUP).
    if (i_notify >= 0 && (all[i_notify].revents & (POLLHUP | POLLERR))) notify_hup = true;
    if (ready(i_sock) && !handle_control(s)) sock_eof = true;
    if (s.listener && !s.notify) s.notify = std::make_unique<seccomp::Supervisor>(*s.policy, s.listener.release());
    if (i_in >= 0 && all[i_in].revents & POLLNVAL) s.stdin_eof = true;
    if (ready(i_in) || (i_inw >= 0 && all[i_inw].revents)) pump_stdin(s, ready(i_in), i_inw >= 0);
    if (ready(i_out)) read_output(s, s.out);
    if (ready(i_err)) read_output(s, s.err);
    if (i_outw >= 0 && all[i_outw].revents) write_output(s.out);
    if (i_errw >= 0 && all[i_errw].revents) write_output(s.err);
    if (ready(i_deadline) && !s.kill_reason) {
      s.kill_reason = Verdict::Timeout;
      s.kill_all();
    }
    if (ready(i_tick)) {
      uint64_t expirations;
      if (read(ticker.get(), &expirations, sizeof expirations) < 0) {
      }
      notified = 0;
      s.cgroup->sample_pids();
      // A sandbox that runs on: keep the supervisor's footprint small.
      if (!trimmed && Clock::now() - s.started > std::chrono::milliseconds(300)) {
        trim_resident_code();
        trimmed = true;
      }
      if (s.spec.limits.cpu_time && !s.kill_reason) {
        auto st = s.cgroup->stats();
        if (st.cpu_known && st.cpu_usec / 1000 >= static_cast<uint64_t>(s.spec.limits.cpu_time->count())) {
          s.kill_reason = Verdict::CpuTime;
          s.kill_all();
        }
      }
    }
    if (ready(i_sig)) {
      signalfd_siginfo si{};
      while (read(sigfd.get(), &si, sizeof si) == sizeof si)
        syscall(SYS_pidfd_send_signal, s.pidfd.get(), si.ssi_signo, nullptr, 0);
    }
    if (ready(i_pid)) init_gone = true;
    // A sandbox made by another process (the warm pool) is torn down by its
    // owner: once the command's status and the end of its output are here,
    // the result is complete and init's exit (unmounting, freeing the
    // namespaces) is not waited for.
    if (s.pid <= 0 && s.payload_status && s.out.eof && s.err.eof && s.out.pending.empty() && s.err.pending.empty())
      init_gone = true;
  }
  s.ended = true;
  sigprocmask(SIG_SETMASK, &old, nullptr);
  // The sandbox's lifetime; passing on its last output may take longer.
  r.wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - s.started).count();

  // Init is gone, so is every process of the namespace: drain what is left.
  handle_control(s);
  // Passing on the last output may wait for the caller; the sandbox is gone.
  for (auto* o : {&s.out, &s.err}) {
    for (;;) {
      write_output(*o);
      if (!o->pending.empty()) {
        pollfd p{o->dest->poll_fd(), POLLOUT, 0};
        poll(&p, 1, -1);
        continue;
      }
      if (o->eof) break;
      pollfd p{o->pipe.get(), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) break;
      read_output(s, *o);
    }
  }
  rusage ru{};
  s.reap(&ru);
  if (s.gateway) {
    std::string error;
    r.network = s.gateway->finish(error);
    if (!error.empty()) s.warnings.push_back(error);
    if (s.gateway_cgroup) {  // the gateway is gone: its group's totals are final
      cgroups::Stats g = s.gateway_cgroup->stats();
      if (g.cpu_known) r.network->gateway_cpu_ms = g.cpu_usec / 1000;
      if (g.memory_known) r.network->gateway_peak_memory_bytes = g.peak_memory_bytes;
    }
  }

  cgroups::Stats cs = s.cgroup->stats();
  int64_t ru_cpu_us = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ll + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
  r.cpu_ms = (cs.cpu_known ? static_cast<int64_t>(cs.cpu_usec) : ru_cpu_us) / 1000;
  r.peak_memory_bytes = cs.memory_known ? cs.peak_memory_bytes : static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  r.peak_pids = std::max<uint64_t>(cs.peak_pids, 1);
  r.stdout_bytes = s.out.bytes;
  r.stderr_bytes = s.err.bytes;
  r.truncated = s.truncated;
  r.warnings = s.warnings;
  if (s.boot_status) {
    int b = *s.boot_status;
    r.boot_exit_code = WIFSIGNALED(b) ? 128 + WTERMSIG(b) : WEXITSTATUS(b);
    if (auto [uid, gid] = boot_ids(s.spec); uid != 0 || gid != 0)
      r.warnings.push_back("the boot step ran as " + std::to_string(uid) + ":" + std::to_string(gid) +
                           ", not as root: a rootless sandbox maps only the --user ids");
    if (s.boot_stopped_by) {
      r.warnings.push_back("signal " + std::to_string(s.boot_stopped_by) +
                           " ended the sandbox during its boot step: the command never started");
    } else if (*r.boot_exit_code != 0) {
      std::string step;
      for (const auto& a : s.spec.process.boot) step += (step.empty() ? "" : " ") + a;
      r.warnings.push_back("the boot step (" + step + ") failed with exit status " +
                           std::to_string(*r.boot_exit_code) + "; the command ran after it");
    }
  } else if (!s.spec.process.boot.empty() && s.setup_error.empty()) {
    r.warnings.push_back("the boot step did not finish (" + s.spec.process.boot.back() +
                         "): the command never started");
  }
  if (s.notify)
    for (const auto& [name, count] : s.notify->denied()) r.denied_syscalls.push_back({name, count});

  if (!s.setup_error.empty() || !s.payload_status) {
    r.verdict = Verdict::SetupError;
    r.exit_code = 125;
    r.error = s.setup_error.empty() ? "the sandbox ended before the command started" : "setup: " + s.setup_error;
    if (s.setup_error.empty() && (s.kill_reason || cs.oom_kills > 0)) {
      // Killed before init could report (a timeout during setup, or the OOM
      // killer chose init itself).
      r.verdict = s.kill_reason ? *s.kill_reason : Verdict::Oom;
      r.exit_code = r.verdict == Verdict::Timeout || r.verdict == Verdict::CpuTime ? 124 : 137;
      r.error.clear();
    } else if (s.setup_error.empty() && s.ready) {
      // Set up and given its command, init vanished without a report: it
      // was killed from outside (an administrator, a stopped pool).
      r.verdict = Verdict::Signaled;
      r.signal = SIGKILL;
      r.exit_code = 128 + SIGKILL;
      r.error = "the sandbox was killed from outside before its command ended";
    }
    return r;
  }
  int status = *s.payload_status;
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  if (s.kill_reason) {
    r.verdict = *s.kill_reason;
    r.exit_code = r.verdict == Verdict::OutputLimit ? 137 : 124;
    if (r.verdict == Verdict::OutputLimit) r.signal = SIGKILL;
  } else if (cs.oom_kills > s.oom_kills_in_boot && status != 0) {
    // The kernel's OOM killer ended a process and the command failed (a
    // shell reports its killed child as exit status 137).
    r.verdict = Verdict::Oom;
    r.exit_code = 137;
  } else if (WIFSIGNALED(status) && r.signal == SIGXCPU && s.spec.limits.cpu_time) {
    r.verdict = Verdict::CpuTime;
    r.exit_code = 124;
  } else if (WIFSIGNALED(status)) {
    r.verdict = Verdict::Signaled;
    r.exit_code = 128 + r.signal;
  } else {
    r.exit_code = WEXITSTATUS(status);
    r.verdict = r.exit_code == 0 ? Verdict::Ok : Verdict::NonzeroExit;
    if (s.exec_errno) {
      r.error = (s.exec_errno == ENOENT ? std::string("command not found: ")
                                        : std::string("cannot execute: ") + std::strerror(s.exec_errno) + ": ") +
                s.spec.process.argv[0];
    }
  }
  return r;
}

Result run(const Spec& spec, const Io& io) {
  Result r;
  try {
    Prepared prepared = prepare(spec);
    auto sandbox = Sandbox::start(prepared, spec, io);
    r = sandbox->wait();
    sandbox.reset();
  } catch (const std::exception& e) {
    r = Result{};
    r.verdict = Verdict::SetupError;
    r.exit_code = 125;
    r.error = e.what();
  }
  return r;
}

}  // namespace ultari
