// The Spec: a complete, front-end-neutral description of one sandbox.
// Every front end (CLI flags, profile files, OCI config.json, HTTP API) only
// fills this struct; the engine only executes it.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ultari {

struct Mount {
  enum class Kind { Bind, Tmpfs };
  Kind kind = Kind::Bind;
  std::string source;       // host path (Bind); unused for Tmpfs
  std::string destination;  // absolute path inside the sandbox
  bool read_only = true;
  uint64_t tmpfs_size = 0;  // Tmpfs only, bytes (0 = kernel default)
};

struct IdentitySpec {
  // Identity inside the sandbox.
  uid_t uid = 0;
  gid_t gid = 0;
  // Rootless: ids 1..65535 inside are the caller's subordinate ids
  // (/etc/subuid, through newuidmap), not unmapped: an image from a store
  // that keeps owners (its files belong to those ids).
  bool subids = false;
};

struct LimitsSpec {
  std::optional<uint64_t> memory_bytes;   // includes swap
  std::optional<uint64_t> pids;
  std::optional<double> cpus;             // fractional cores
  std::optional<std::chrono::milliseconds> wall_timeout;
  std::optional<std::chrono::milliseconds> cpu_time;
  std::optional<uint64_t> output_bytes;   // stdout+stderr together
  uint64_t tmp_bytes = 0;                 // size of the writable layer (tmpfs)
  std::optional<uint64_t> nofile;         // RLIMIT_NOFILE inside
};

struct SeccompSpec {
  // Empty: Ultari's default policy. Otherwise a Docker/OCI JSON profile file.
  std::string profile_path;
  // Default policy only: allow setting setuid/setgid mode bits (a build
  // sandbox installing packages: sudo, passwd, ...). Refused together with
  // a workspace or a read-write bind, where such a file would reach the host
  // (the reason the default policy denies them).
  bool setid_files = false;
  // Default policy only: chown, fchown, lchown and fchownat answer 0 and
  // change nothing. For a sandbox with one id (a rootless build: the
  // caller, root inside), where dpkg, useradd and install(1) would fail
  // giving a file an owner that cannot exist there; its files keep the
  // caller's (a rootless image store keeps no owners anyway).
  bool chown_noop = false;
};

// Egress policy (src/net). Names are stored normalised: lower case, no
// trailing dot; a pattern "*.x" matches sub.x (any depth), never x itself.
struct NetworkSpec {
  enum class Mode { None, Allow, Open };
  Mode mode = Mode::None;             // None: loopback only
  std::vector<std::string> allow;     // Allow mode: names and *.suffix patterns
  std::vector<std::string> deny;      // wins over allow (and over Open)
  std::vector<uint16_t> ports{80, 443};  // TCP destination ports allowed
  std::string resolver;               // host-side DNS server (IPv4); empty: /etc/resolv.conf
  std::string audit_path;             // JSON lines; empty: <state dir>/audit/<id>.jsonl
  std::string ca_file;                // extra CA for upstream TLS checks (PEM, --inspect-tls)
  bool inspect_tls = false;           // terminate TLS with a CA made for this sandbox
  std::string upstream;               // "http://HOST:PORT": every connection goes through this proxy
  std::string upstream_auth;          // "env:VAR" or "file:PATH" holding user:password for it
  // A value the sandbox never sees: it holds `placeholder`, which the
  // gateway swaps for the real value in request heads to `hosts` only.
  struct Secret {
    std::string name;                 // the environment variable inside
    std::string from;                 // "env:VAR" or "file:PATH" (read on the host side)
    std::vector<std::string> hosts;   // names and *.suffix patterns
    std::vector<std::string> headers; // request headers it may go into (lower case); empty: the usual auth headers
    std::string placeholder;          // empty: made by the engine per sandbox
  };
  std::vector<Secret> secrets;
  struct Dlp {
    bool enabled = false;             // scan outgoing plaintext HTTP for secrets
    bool block = true;                // false: only log what was seen
    std::vector<std::string> literals;  // the user's own secrets, matched exactly
  } dlp;
};

struct ProcessSpec {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // KEY=VALUE, complete environment
  std::string cwd;               // absolute, inside the sandbox
  // Run first, to its end, as root inside (uid 0, gid 0, the sandbox's
  // capabilities) in "/", with the command's environment and streams;
  // then argv. An image's per-boot steps (cloud-init's boot hooks, bootcmd
  // and per-boot scripts: `ultari run --image`). Its exit status goes in
  // the result; the command runs whatever it is. Empty: nothing.
  // boot[0] is an absolute path.
  std::vector<std::string> boot;
};

struct Spec {
  // Root filesystem: empty = read-only view of the host's system directories.
  std::string rootfs;
  // Or image layers (host directories, top first) from the image store,
  // their files already in the sandbox's ids: used as they are.
  std::vector<std::string> layers;
  // The writable layer on disk, kept after the sandbox (provisioning
  // commits it as a layer): a host directory holding upper/ and work/,
  // owned by the sandbox's root. Empty: a tmpfs that vanishes with it.
  std::string upper_dir;
  std::string workspace;  // host dir mounted read-write at /workspace
  std::vector<Mount> mounts;
  std::string hostname = "sandbox";
  IdentitySpec identity;
  // Capabilities a command running as root inside keeps (names such as
  // "CAP_CHOWN"), in the sandbox's user namespace only: they act on what
  // that namespace owns (its files' ids, its processes), never on the
  // host. Empty (the default): none. A build sandbox (provisioning) keeps
  // a container-like set: kBuildCapabilities.
  std::vector<std::string> capabilities;
  LimitsSpec limits;
  SeccompSpec seccomp;
  NetworkSpec network;
  ProcessSpec process;
};

// Defaults applied when the caller leaves a limit unset: they protect the host
// from fork and memory bombs.
inline constexpr uint64_t kDefaultMemoryBytes = 1ull << 30;  // 1 GiB
inline constexpr uint64_t kDefaultPids = 1024;
inline constexpr uint64_t kDefaultTmpBytes = 512ull << 20;   // 512 MiB
inline constexpr uint64_t kDefaultNofile = 1024;

// What package managers and user tools need as root inside (Docker's
// default set less NET_RAW, MKNOD and AUDIT_WRITE).
inline constexpr const char* kBuildCapabilities[] = {
    "CAP_CHOWN",  "CAP_DAC_OVERRIDE", "CAP_FOWNER",           "CAP_FSETID",     "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID",       "CAP_SETPCAP",          "CAP_SETFCAP",    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT"};

// The parts of a Spec that may change per request when the sandbox was made
// ahead from another Spec (a warm pool): the process (argv, env, cwd) and
// the limits the supervisor enforces (timeout, cpu-time, output, nofile).
// Copies them from `from` into `into`.
void take_request_fields(Spec& into, const Spec& from);

// Parsers shared by front ends. They throw ultari::Error naming the bad value.
uint64_t parse_size(const std::string& text);                 // "512M", "1G", "100k", "4096"
std::chrono::milliseconds parse_duration(const std::string& text);  // "10s", "500ms", "2m", "1.5"
double parse_cpus(const std::string& text);

}  // namespace ultari
