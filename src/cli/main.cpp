// `ultari`: a thin front end that turns command-line flags into a Spec and
// hands it to the engine.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

#include "images/store.h"
#include "provision/provision.h"
#include "net/policy.h"
#include "pool/pool.h"
#include "sandbox/sandbox.h"
#include "isolation/identity.h"
#include "util/caller.h"
#include "util/error.h"

namespace {

constexpr int kExitUltariFailed = 125;

// "SRC[:DST]"; DST defaults to SRC.
ultari::Mount parse_bind(const std::string& arg, bool read_only) {
  ultari::Mount m;
  m.kind = ultari::Mount::Kind::Bind;
  m.read_only = read_only;
  auto colon = arg.find(':');
  m.source = arg.substr(0, colon);
  m.destination = colon == std::string::npos ? m.source : arg.substr(colon + 1);
  if (m.source.empty()) throw ultari::Error(std::string(read_only ? "--ro-bind" : "--bind") + " '" + arg + "' has no source");
  return m;
}

// "DST[:SIZE]": an empty tmpfs (counted against --memory).
ultari::Mount parse_tmpfs(const std::string& arg) {
  ultari::Mount m;
  m.kind = ultari::Mount::Kind::Tmpfs;
  m.read_only = false;
  auto colon = arg.find(':');
  m.destination = arg.substr(0, colon);
  if (colon != std::string::npos) m.tmpfs_size = ultari::parse_size(arg.substr(colon + 1));
  return m;
}

// "UID[:GID]"
void parse_user(const std::string& arg, ultari::Spec& spec) {
  auto number = [&](const std::string& t) -> unsigned {
    if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos || t.size() > 9)
      throw ultari::Error("--user '" + arg + "' must be UID[:GID] with numeric ids");
    return static_cast<unsigned>(std::stoul(t));
  };
  auto colon = arg.find(':');
  spec.identity.uid = number(arg.substr(0, colon));
  spec.identity.gid = colon == std::string::npos ? spec.identity.uid : number(arg.substr(colon + 1));
}

void write_report(const std::string& path, const ultari::Result& r) {
  if (path.empty()) return;
  std::string text = ultari::result_json(r);
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f || std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
    std::fprintf(stderr, "ultari: cannot write report %s\n", path.c_str());
  }
  if (f) std::fclose(f);
}

// The options that describe a sandbox, shared by `run` and `pool`.
struct SandboxFlags {
  ultari::Spec spec;
  std::string seccomp_profile, user, memory, pids, cpus, timeout, cpu_time, output_limit, tmp_size, nofile;
  std::vector<std::string> binds, ro_binds, tmpfs, envs;
  std::vector<std::string> nets, secrets, caps;
  std::string image;
  std::vector<ultari::UniqueFd> holds;  // the image's layers (and kernel layer), held while the sandbox runs
  std::vector<std::string> image_command;  // an imported image's Entrypoint + Cmd
  std::vector<std::string> image_warnings;  // what the image's defaults relax
  std::string net_policy, net_upstream, net_upstream_auth, net_ca;
  bool inspect_tls = false;
  bool no_boot = false;

  CLI::App* cmd_ = nullptr;

  void add_to(CLI::App* cmd) {
    cmd_ = cmd;
    cmd->add_option("--rootfs", spec.rootfs, "Directory used as the root (default: read-only view of the host's system)");
    cmd->add_option("--image", image, "Start from image NAME (ultari image ls); writes vanish with the sandbox");
    cmd->add_flag("--no-boot", no_boot,
                  "Skip the image's per-boot steps (bootcmd, boot hooks, per-boot scripts), which otherwise run as root "
                  "before the command");
    cmd->add_option("--workspace", spec.workspace, "Directory mounted read-write at /workspace (the working directory)");
    cmd->add_option("--bind", binds, "Bind SRC[:DST] read-write (repeatable)")->allow_extra_args(false);
    cmd->add_option("--ro-bind", ro_binds, "Bind SRC[:DST] read-only (repeatable)")->allow_extra_args(false);
    cmd->add_option("--tmpfs", tmpfs, "Empty tmpfs at DST[:SIZE] (repeatable)")->allow_extra_args(false);
    cmd->add_option("--env", envs, "Set KEY=VALUE inside (repeatable; the host environment is not inherited)")->allow_extra_args(false);
    cmd->add_option("--cwd", spec.process.cwd, "Working directory inside");
    cmd->add_option("--hostname", spec.hostname, "Hostname inside (default: sandbox)");
    cmd->add_option("--user", user, "UID[:GID] to run as inside (default 0)");
    cmd->add_option("--memory", memory, "Memory limit including swap, e.g. 512M (default 1G)");
    cmd->add_option("--pids", pids, "Maximum number of processes and threads (default 1024)");
    cmd->add_option("--cpus", cpus, "CPU limit in cores, fractional (e.g. 0.5)");
    cmd->add_option("--timeout", timeout, "Wall-clock limit, e.g. 10s, 500ms, 2m");
    cmd->add_option("--cpu-time", cpu_time, "CPU-time limit of the whole sandbox, e.g. 5s");
    cmd->add_option("--output-limit", output_limit, "Limit of stdout+stderr together, e.g. 1M");
    cmd->add_option("--tmp-size", tmp_size, "Size of the writable layer (root, /tmp, HOME; default 512M)");
    cmd->add_option("--nofile", nofile, "RLIMIT_NOFILE inside (default 1024)");
    cmd->add_option("--cap-add", caps,
                    "Keep capability NAME (e.g. CAP_CHOWN) for commands run as root inside, in the sandbox's user "
                    "namespace only; 'build' keeps what package managers need (repeatable)")
        ->allow_extra_args(false);
    cmd->add_option("--seccomp-profile", seccomp_profile, "Docker/OCI seccomp JSON profile instead of Ultari's default");
    cmd->add_option("--net", nets, "Network: none (default), open, or allow=NAME[,NAME...] (repeatable)")
        ->allow_extra_args(false);
    cmd->add_option("--net-policy", net_policy, "TOML egress policy file (allow, deny, ports, inspect_tls, [dlp], [[secret]])");
    cmd->add_option("--net-resolver", spec.network.resolver,
                    "IPv4 DNS server the host side resolves allowed names with (default: /etc/resolv.conf)");
    cmd->add_option("--audit", spec.network.audit_path,
                    "Network audit log (JSON lines; default <state dir>/audit/<sandbox id>.jsonl)");
    cmd->add_flag("--inspect-tls", inspect_tls,
                  "Terminate TLS with a CA made for this sandbox (trusted inside only): HTTPS is checked and scanned too");
    cmd->add_option("--secret", secrets,
                    "NAME=env:VAR@HOST[,HOST] or NAME=file:PATH@HOST: the sandbox sees a placeholder, requests to HOST "
                    "get the real value (needs --inspect-tls; repeatable)")
        ->allow_extra_args(false);
    cmd->add_option("--net-upstream", net_upstream,
                    "http://HOST:PORT: reach the web through this HTTP proxy (the policy is still decided here)");
    cmd->add_option("--net-upstream-auth", net_upstream_auth,
                    "env:VAR or file:PATH holding user:password for --net-upstream (never enters the sandbox)");
    cmd->add_option("--net-ca", net_ca, "Extra CA (PEM) trusted for upstream servers under --inspect-tls");
  }

  // Throws ultari::Error naming the bad value.
  ultari::Spec build() {
    std::optional<ultari::images::Image> img;
    std::optional<ultari::images::Store> store;
    if (!image.empty()) {
      if (!spec.rootfs.empty()) throw ultari::Error("--image and --rootfs exclude each other");
      // Rootless, from a store that keeps owners: the sandbox's namespace is
      // made in the store's (whose holder maps the ids once for all runs:
      // no newuidmap/newgidmap per start).
      if (!ultari::host_root())
        if (auto sub = ultari::images::Store::rootless_subids())
          ultari::isolation::enter_store_namespace(*sub, ultari::images::Store::default_dir());
      store = ultari::images::Store::open_default();
      img = store->get(image);
      holds = store->hold(*img);
      spec.identity.subids = store->keeps_subids();
      for (const auto& id : img->layers) spec.layers.push_back(store->layer_path(id));
    }
    for (const auto& b : binds) spec.mounts.push_back(parse_bind(b, false));
    for (const auto& b : ro_binds) spec.mounts.push_back(parse_bind(b, true));
    for (const auto& t : tmpfs) spec.mounts.push_back(parse_tmpfs(t));
    spec.process.env = envs;
    spec.seccomp.profile_path = seccomp_profile;
    for (const auto& c : caps) {
      if (c == "build") spec.capabilities.insert(spec.capabilities.end(), std::begin(ultari::kBuildCapabilities),
                                                 std::end(ultari::kBuildCapabilities));
      else spec.capabilities.push_back(c);
    }
    if (!user.empty()) parse_user(user, spec);
    auto& l = spec.limits;
    if (!memory.empty()) l.memory_bytes = ultari::parse_size(memory);
    if (!pids.empty()) l.pids = ultari::parse_size(pids);
    if (!cpus.empty()) l.cpus = ultari::parse_cpus(cpus);
    if (!timeout.empty()) l.wall_timeout = ultari::parse_duration(timeout);
    if (!cpu_time.empty()) l.cpu_time = ultari::parse_duration(cpu_time);
    if (!output_limit.empty()) l.output_bytes = ultari::parse_size(output_limit);
    if (!tmp_size.empty()) l.tmp_bytes = ultari::parse_size(tmp_size);
    if (!nofile.empty()) l.nofile = ultari::parse_size(nofile);
    for (const auto& n : nets) ultari::net::apply_net_option(spec.network, n);
    if (!net_policy.empty()) ultari::net::load_policy_file(spec.network, net_policy);
    if (inspect_tls) spec.network.inspect_tls = true;
    for (const auto& s : secrets) ultari::net::apply_secret_option(spec.network, s);
    if (!net_upstream.empty()) spec.network.upstream = net_upstream;
    if (!net_upstream_auth.empty()) spec.network.upstream_auth = net_upstream_auth;
    if (!net_ca.empty()) spec.network.ca_file = net_ca;
    if (spec.network.mode == ultari::NetworkSpec::Mode::None &&
        (!spec.network.resolver.empty() || !spec.network.audit_path.empty()))
      throw ultari::Error("--net-resolver and --audit need a network (--net allow=... or --net open)");
    ultari::net::validate(spec.network);
    if (no_boot && !img) throw ultari::Error("--no-boot needs --image (only an image has per-boot steps)");
    if (img) {
      // The image's defaults (hostname, LANG, limits, network, kernel
      // modules; an imported image's Env, WorkingDir, User) where no flag
      // says otherwise.
      std::vector<std::string> given;
      for (auto [flag, field] : {std::pair<const char*, const char*>{"--hostname", "hostname"}, {"--memory", "memory"},
                                 {"--pids", "pids"}, {"--cpus", "cpus"}, {"--timeout", "timeout"},
                                 {"--cpu-time", "cpu_time"}, {"--output-limit", "output_limit"},
                                 {"--tmp-size", "tmp_size"}, {"--nofile", "nofile"}, {"--net", "net"},
                                 {"--net-policy", "net"}})
        if (cmd_ && cmd_->count(flag)) given.push_back(field);
      for (const auto& e : envs) given.push_back("env:" + e.substr(0, e.find('=')));
      if (cmd_ && cmd_->count("--cwd")) given.push_back("cwd");
      if (cmd_ && cmd_->count("--user")) given.push_back("user");
      if (no_boot) given.push_back("boot");
      ultari::provision::apply_image_config(*img, store->dir() + "/kernel", spec, given, image_warnings, holds);
      ultari::net::validate(spec.network);
      image_command.clear();
      for (const char* key : {"entrypoint", "cmd"})
        if (img->config.contains(key))
          for (const auto& a : img->config[key].get<std::vector<std::string>>()) image_command.push_back(a);
    }
    // (after the image's defaults: they are checked the same way)
    if (spec.hostname.empty() || spec.hostname.size() > 64) throw ultari::Error("--hostname must be 1 to 64 characters");
    if (l.memory_bytes && *l.memory_bytes < (4u << 20)) throw ultari::Error("--memory must be at least 4M");
    if (l.pids && *l.pids < 2) throw ultari::Error("--pids must be at least 2 (init and the command)");
    return spec;
  }
};

std::string human_size(uint64_t b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1000 && u < 4) v /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

// JSON for people and scripts; invalid UTF-8 (a build step's output in a
// provisioning log) becomes U+FFFD instead of an exception.
std::string dump(const nlohmann::json& j, int indent = 2) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json image_json(const ultari::images::Image& i, bool full) {
  nlohmann::json j = {{"name", i.name}, {"id", i.id}, {"layers", i.layers}, {"size", i.size}, {"created", i.created}};
  if (full) {
    j["parent"] = i.parent;
    j["source"] = i.source;
    j["user_data_sha256"] = i.user_data_sha256;
    j["cache_key"] = i.cache_key;
    j["provision_log"] = i.provision_log;
    j["config"] = i.config;
  }
  return j;
}

// Import progress: a bar on a terminal, a line per quarter otherwise.
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(isatty(2)), start_(std::chrono::steady_clock::now()) {}
  void operator()(uint64_t done, uint64_t total) {
    if (quiet_) return;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (total == 0) {
      if (tty_) std::fprintf(stderr, "\rimport: %s copied", human_size(done).c_str());
      return;
    }
    double f = std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
    if (tty_) {
      int width = 30, fill = static_cast<int>(f * width);
      double eta = f > 0.01 ? secs / f - secs : 0;
      std::fprintf(stderr, "\rimport [%.*s%*s] %3.0f%% %s of %s, layer 1 of 1, ETA %.0fs ", fill,
                   "##############################", width - fill, "", f * 100, human_size(done).c_str(),
                   human_size(total).c_str(), eta);
    } else {
      int quarter = static_cast<int>(f * 4);
      if (quarter > last_quarter_) {
        last_quarter_ = quarter;
        std::fprintf(stderr, "import: %d%% (%s of %s)\n", quarter * 25, human_size(done).c_str(), human_size(total).c_str());
      }
    }
  }
  void finish() {
    if (!quiet_ && tty_) std::fprintf(stderr, "\n");
  }

 private:
  bool quiet_, tty_;
  std::chrono::steady_clock::time_point start_;
  int last_quarter_ = 0;
};

// `ultari image import|ls|inspect|rm|prune`: the image store (images/store.h).
struct ImageCommands {
  CLI::App* image;
  CLI::App *import_cmd, *build, *provision, *ls, *inspect, *rm, *prune;
  std::string name, source, max_size;
  std::string from, user_data, step_timeout, build_memory, net_policy, net_upstream, net_upstream_auth, net_resolver;
  std::vector<std::string> vars, nets;
  bool no_cache = false, refresh = false, check = false;
  ultari::images::Store::DebianBuild debian;
  std::string include;
  bool json = false, quiet = false;

  explicit ImageCommands(CLI::App& app) {
    image = app.add_subcommand("image", "Manage images: import, build, ls, inspect, rm, prune");
    image->require_subcommand(1);
    import_cmd = image->add_subcommand("import", "Make image NAME from SOURCE: a directory or a rootfs tarball (tar, .gz, .xz, .zst, .bz2)");
    import_cmd->add_option("name", name, "NAME")->required();
    import_cmd->add_option("source", source, "SOURCE")->required();
    import_cmd->add_flag("-q,--quiet", quiet, "No progress");
    import_cmd->add_option("--max-size", max_size, "Most bytes the image may unpack to (default: the store's free space less a margin)");
    build = image->add_subcommand("build", "Make image NAME: a Debian root from a mirror (debootstrap)");
    build->add_option("name", name, "NAME")->required();
    build->add_option("--debian", debian.suite, "Debian suite (bookworm, trixie, ...)")->required();
    build->add_option("--variant", debian.variant, "debootstrap variant: minbase or buildd");
    build->add_option("--include", include, "Extra packages, comma-separated (e.g. kmod,locales)");
    build->add_option("--mirror", debian.mirror, "Mirror URL (default: the host's apt sources)");
    build->add_flag("-q,--quiet", quiet, "No progress");
    provision = image->add_subcommand(
        "provision", "Make image NAME: cloud-init user-data run on top of image BASE, kept as one layer");
    provision->add_option("name", name, "NAME")->required();
    provision->add_option("--from", from, "The base image")->required();
    provision->add_option("--user-data", user_data,
                          "cloud-init user-data: #cloud-config, a #! script, MIME multi-part, gzip'd or not, or "
                          "'## template: jinja'")
        ->required();
    provision->add_option("--var", vars, "KEY=VALUE for a jinja template (repeatable)")->allow_extra_args(false);
    provision->add_flag("--no-cache", no_cache, "Build although a cached layer matches the inputs");
    provision->add_flag("--refresh", refresh, "Build again although the inputs are unchanged (newer packages)");
    provision->add_option("--net", nets,
                          "Egress beyond the image's package mirrors: allow=NAME[,NAME...] or open (repeatable)")
        ->allow_extra_args(false);
    provision->add_option("--net-policy", net_policy, "TOML egress policy file for the build");
    provision->add_option("--net-upstream", net_upstream, "http://HOST:PORT: reach the mirrors through this proxy");
    provision->add_option("--net-resolver", net_resolver,
                          "IPv4 DNS server the host side resolves the build's allowed names with (default: "
                          "/etc/resolv.conf)");
    provision->add_option("--net-upstream-auth", net_upstream_auth, "env:VAR or file:PATH holding user:password");
    provision->add_option("--timeout", step_timeout, "Limit of each module's run (default 30m)");
    provision->add_option("--memory", build_memory, "Memory limit of the build sandboxes (default 2G)");
    provision->add_option("--max-size", max_size,
                          "Most the build may write to the store's disk (default: its free space less a margin)");
    provision->add_flag("--check", check, "Only read and check the user-data (and BASE): print the modules that would run");
    provision->add_flag("--json", json, "Print the image as JSON");
    provision->add_flag("-q,--quiet", quiet, "No progress");
    ls = image->add_subcommand("ls", "List images");
    ls->add_flag("--json", json, "A JSON list");
    inspect = image->add_subcommand("inspect", "Show image NAME");
    inspect->add_option("name", name, "NAME")->required();
    inspect->add_flag("--json", json, "As JSON");
    rm = image->add_subcommand("rm", "Remove image NAME (its layers stay until prune)");
    rm->add_option("name", name, "NAME")->required();
    rm->add_flag("--json", json, "Print what was removed as JSON");
    prune = image->add_subcommand("prune", "Remove layers no image uses (and no sandbox holds)");
    prune->add_flag("--json", json, "Print what was removed as JSON");
  }
  bool parsed() const { return image->parsed(); }

  int run_provision(ultari::images::Store& store) {
    ultari::provision::Request req;
    req.name = name;
    req.base = from;
    std::ifstream in(user_data, std::ios::binary);
    if (!in) throw ultari::Error("--user-data '" + user_data + "': cannot be read");
    std::stringstream ss;
    ss << in.rdbuf();
    req.user_data = ss.str();
    req.user_data_label = user_data;
    for (const auto& v : vars) {
      auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0) throw ultari::Error("--var '" + v + "' must be KEY=VALUE");
      std::string key = v.substr(0, eq);
      bool ok = std::isalpha(static_cast<unsigned char>(key[0])) || key[0] == '_';
      for (char c : key) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
      if (!ok || key == "v1") throw ultari::Error("--var '" + key + "': a name of letters, digits and '_' (not v1)");
      req.vars.emplace_back(key, v.substr(eq + 1));
    }
    req.no_cache = no_cache;
    req.refresh = refresh;
    req.check_only = check;
    for (const auto& n : nets) ultari::net::apply_net_option(req.network, n);
    if (!net_policy.empty()) ultari::net::load_policy_file(req.network, net_policy);
    if (!net_upstream.empty()) req.network.upstream = net_upstream;
    if (!net_upstream_auth.empty()) req.network.upstream_auth = net_upstream_auth;
    if (!net_resolver.empty()) req.network.resolver = net_resolver;
    if (!step_timeout.empty()) req.step_timeout = ultari::parse_duration(step_timeout);
    if (!build_memory.empty()) req.memory_bytes = ultari::parse_size(build_memory);
    if (!max_size.empty()) {
      req.max_bytes = ultari::parse_size(max_size);
      if (req.max_bytes == 0) throw ultari::Error("--max-size must be more than 0");
    }
    auto start = std::chrono::steady_clock::now();
    if (!quiet)
      req.progress = [](const std::string& line) { std::fprintf(stderr, "provision: %s\n", line.c_str()); };
    ultari::provision::Outcome out = ultari::provision::provision(store, req);
    for (const auto& w : out.warnings) std::fprintf(stderr, "ultari: warning: %s\n", w.c_str());
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (check) {
      if (json) {
        nlohmann::json parts = nlohmann::json::array();
        for (const auto& p : out.parts)
          parts.push_back({{"index", p.index}, {"filename", p.filename}, {"type", p.type}, {"note", p.note}});
        std::printf("%s\n", dump(nlohmann::json({{"plan", out.plan}, {"parts", parts}, {"warnings", out.warnings},
                                                  {"includes", out.includes}}))
                                 .c_str());
      } else {
        std::printf("user-data OK: %zu warnings; modules in order:", out.warnings.size());
        for (const auto& m : out.plan) std::printf(" %s", m.c_str());
        std::printf("\n");
        // (escaped like the parts' names: a URL is the user-data's text)
        for (const auto& u : out.includes)
          std::printf("include (fetched at provisioning; its modules are not in this plan): %s\n",
                      dump(nlohmann::json(u)).c_str());
        // Parts are named as the user-data names them: shown escaped (dump).
        for (const auto& p : out.parts) {
          std::string note = p.note.empty() ? "" : " (" + p.note + ")";
          std::printf("part %zu: %s %s%s\n", p.index, dump(nlohmann::json(p.filename)).c_str(), p.type.c_str(),
                      note.c_str());
        }
      }
    } else if (json) {
      nlohmann::json j = image_json(out.image, true);
      j["cache_hit"] = out.cache_hit;
      std::printf("%s\n", dump(j).c_str());
    } else {
      std::printf("%s %s\n", out.image.name.c_str(), out.image.id.c_str());
      if (!quiet)
        std::fprintf(stderr, "provision: %s in %.2f s\n", out.cache_hit ? "cached layer used" : "done", secs);
    }
    std::fflush(stdout);
    return 0;
  }

  int run() {
    try {
      // A rootless store that keeps owners is changed (and read) from its
      // user namespace, where the caller's subordinate ids are its own.
      if (!ultari::host_root())
        if (auto sub = ultari::images::Store::rootless_subids())
          ultari::isolation::enter_store_namespace(*sub, ultari::images::Store::default_dir());
      auto store = ultari::images::Store::open_default();
      if (import_cmd->parsed()) {
        Progress progress(quiet);
        uint64_t max = max_size.empty() ? 0 : ultari::parse_size(max_size);
        if (!max_size.empty() && max == 0) throw ultari::Error("--max-size must be more than 0");
        auto img = store.import(name, source, [&progress](uint64_t d, uint64_t t) { progress(d, t); }, "", max);
        progress.finish();
        std::printf("%s %s\n", img.name.c_str(), img.id.c_str());
      } else if (build->parsed()) {
        for (size_t pos = 0; pos < include.size();) {
          size_t comma = include.find(',', pos);
          std::string p = include.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
          if (!p.empty()) debian.include.push_back(p);
          pos = comma == std::string::npos ? include.size() : comma + 1;
        }
        bool tty = isatty(2);
        auto img = store.build_debian(name, debian, [this, tty](const std::string& line) {
          if (quiet) return;
          // debootstrap's own progress: "I: Retrieving ...", "I: Unpacking ...".
          if (tty) std::fprintf(stderr, "\rbuild: %-70.70s", line.c_str());
          else std::fprintf(stderr, "build: %s\n", line.c_str());
        });
        if (!quiet && tty) std::fprintf(stderr, "\n");
        std::printf("%s %s\n", img.name.c_str(), img.id.c_str());
      } else if (provision->parsed()) {
        return run_provision(store);
      } else if (ls->parsed()) {
        auto all = store.list();
        if (json) {
          nlohmann::json j = nlohmann::json::array();
          for (const auto& i : all) j.push_back(image_json(i, false));
          std::printf("%s\n", dump(j).c_str());
        } else {
          std::printf("%-24s %-12s %6s %10s  %s\n", "NAME", "ID", "LAYERS", "SIZE", "CREATED");
          for (const auto& i : all)
            std::printf("%-24s %-12s %6zu %10s  %s\n", i.name.c_str(), i.id.substr(0, 12).c_str(), i.layers.size(),
                        human_size(i.size).c_str(), i.created.c_str());
        }
      } else if (inspect->parsed()) {
        auto i = store.get(name);
        nlohmann::json j = image_json(i, true);
        if (json) {
          std::printf("%s\n", dump(j).c_str());
        } else {
          std::printf("name:     %s\nid:       %s\ncreated:  %s\nsize:     %s\nsource:   %s\nparent:   %s\nlayers:\n",
                      i.name.c_str(), i.id.c_str(), i.created.c_str(), human_size(i.size).c_str(), i.source.c_str(),
                      i.parent.empty() ? "-" : i.parent.c_str());
          for (const auto& l : i.layers) std::printf("  %s\n", l.c_str());
          if (!i.user_data_sha256.empty()) std::printf("user-data sha256: %s\n", i.user_data_sha256.c_str());
          if (!i.config.empty()) std::printf("run defaults: %s\n", dump(i.config, -1).c_str());
          if (!i.provision_log.empty()) std::printf("provisioning log:\n");
          for (const auto& m : i.provision_log) {
            std::printf("  %-22s %6.1f s  %s\n", m.value("module", "").c_str(), m.value("ms", 0) / 1000.0,
                        m.value("summary", "").c_str());
            if (m.contains("items"))
              for (const auto& it : m["items"])
                std::printf("      [exit %d] %s\n", it.value("status", -1), it.value("item", "").c_str());
          }
        }
      } else if (rm->parsed()) {
        std::string id = store.remove(name);
        if (json) std::printf("%s\n", dump({{"name", name}, {"id", id.empty() ? nlohmann::json() : nlohmann::json(id)}}).c_str());
      } else if (prune->parsed()) {
        auto r = store.prune();
        nlohmann::json out = {{"removed", r.removed}, {"bytes", r.bytes}, {"in_use", r.in_use}};
        if (!json) {
          std::printf("removed %zu layers, %s\n", r.removed.size(), human_size(r.bytes).c_str());
          std::fflush(stdout);  // (said before the kernel layers' part, which may fail)
        }
        ultari::provision::KernelPrune k;
        try {
          k = ultari::provision::prune_kernel_cache(store.dir() + "/kernel");
        } catch (const std::exception& e) {
          if (json) {
            out["kernel_layers"] = {{"error", e.what()}};
            std::printf("%s\n", dump(out).c_str());
          }
          throw;
        }
        out["kernel_layers"] = {{"removed", k.removed}, {"bytes", k.bytes}, {"in_use", k.in_use}, {"left", k.left}};
        if (json) {
          std::printf("%s\n", dump(out).c_str());
        } else {
          if (k.removed)
            std::printf("removed %zu kernel layers of old kernels or module trees, %s\n", k.removed,
                        human_size(k.bytes).c_str());
          if (k.left) std::printf("could not remove %zu old kernel layers wholly (a later prune tries again)\n", k.left);
          if (!r.in_use.empty() || k.in_use)
            std::printf("kept %zu unused layers a running sandbox still holds\n", r.in_use.size() + k.in_use);
        }
      }
      std::fflush(stdout);
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ultari: error: %s\n", e.what());
      return kExitUltariFailed;
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{"Ultari: run untrusted code in a disposable, fully isolated Linux sandbox"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ultari 0.1.0");

  SandboxFlags run_flags, pool_flags;
  std::string report_path, pool_socket, serve_socket;
  std::vector<std::string> command;
  bool quiet = false;
  size_t pool_size = 4;

  // Only the subcommand asked for is built: CLI11 makes every option a heap
  // object, and building all of them was a measurable part of a start.
  // Help, version and mistakes see every subcommand.
  std::string_view asked = argc > 1 ? argv[1] : "";
  bool all = asked != "run" && asked != "pool" && asked != "image";

  CLI::App* run = nullptr;
  if (all || asked == "run") {
    run = app.add_subcommand("run", "Run COMMAND in a new sandbox");
    run_flags.add_to(run);
    run->add_option("--pool", pool_socket,
                    "Take the sandbox from the warm pool at SOCKET when it matches (default: $ULTARI_POOL); "
                    "otherwise start one")->envname("ULTARI_POOL");
    run->add_option("--report", report_path, "Write the JSON result to FILE");
    run->add_flag("-q,--quiet", quiet, "Print no warnings");
    run->add_option("command", command, "COMMAND [ARG...] (with --image: default the image's Entrypoint and Cmd)");
    run->positionals_at_end(true);
  }

  CLI::App* pool = nullptr;
  if (all || asked == "pool") {
    pool = app.add_subcommand("pool", "Keep sandboxes ready for `ultari run --pool SOCKET` (until SIGTERM)");
    pool_flags.add_to(pool);
    pool->add_option("--socket", serve_socket, "Unix socket to serve (created with mode 0600)")->required();
    pool->add_option("--size", pool_size, "Sandboxes kept ready (default 4)");
  }

  std::optional<ImageCommands> images;
  if (all || asked == "image") images.emplace(app);

  // For options that are not repeatable the last one wins (like docker).
  for (CLI::App* sub : {run, pool})
    if (sub)
      for (CLI::Option* opt : sub->get_options())
        if (opt->get_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "ultari: %s\n", e.what());
    return kExitUltariFailed;
  }

  if (images && images->parsed()) return images->run();

  if (pool && pool->parsed()) {
    try {
      ultari::Spec spec = pool_flags.build();
      if (spec.network.mode != ultari::NetworkSpec::Mode::None)
        throw ultari::Error("a pool keeps sandboxes without network only (--net none); runs with --net start cold");
      return ultari::pool::serve(spec, {serve_socket, pool_size});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ultari: error: %s\n", e.what());
      return kExitUltariFailed;
    }
  }

  ultari::Result result;
  try {
    ultari::Spec spec = run_flags.build();
    spec.process.argv = command.empty() ? run_flags.image_command : command;
    if (spec.process.argv.empty())
      throw ultari::Error(run_flags.image.empty() ? "no command: give it after --"
                                                  : "no command: give it after --; image " + run_flags.image +
                                                        " has no Entrypoint or Cmd");
    std::optional<ultari::Result> warm;
    if (!pool_socket.empty()) {
      std::string why;
      warm = ultari::pool::run(pool_socket, spec, {}, why);
      if (!warm) result.warnings.push_back("pool " + pool_socket + " not used: " + why);
    }
    if (warm) {
      result = std::move(*warm);
    } else {
      auto warnings = std::move(result.warnings);
      result = ultari::run(spec);
      result.warnings.insert(result.warnings.begin(), warnings.begin(), warnings.end());
    }
    result.warnings.insert(result.warnings.begin(), run_flags.image_warnings.begin(), run_flags.image_warnings.end());
  } catch (const std::exception& e) {
    result.verdict = ultari::Verdict::SetupError;
    result.exit_code = kExitUltariFailed;
    result.error = e.what();
  }
  if (!quiet)
    for (const auto& w : result.warnings) std::fprintf(stderr, "ultari: warning: %s\n", w.c_str());
  if (!result.error.empty()) std::fprintf(stderr, "ultari: error: %s\n", result.error.c_str());
  write_report(report_path, result);
  // Everything is written and every sandbox resource released; skipping
  // the static destructors saves a measurable part of a warm start.
  std::fflush(nullptr);
  _exit(result.exit_code);
}
