// `ultari image provision NAME --from BASE --user-data FILE`: cloud-init
// user-data run in build sandboxes on top of BASE, the changes committed
// as one new layer (images::Store::commit), cached by the hash of (base
// layers, user-data after templating, variables).
//
// Each module runs in its own sandbox over the same writable layer on disk
// (Spec::upper_dir), as root inside with kBuildCapabilities and setid files
// allowed, in this order: boot hooks, bootcmd, write_files (not deferred),
// groups and users, apt, package_update/upgrade and packages, locale,
// timezone, hostname, ca_certs, write_files (deferred), runcmd, user
// scripts (scripts_user). The network of every
// step is the egress policy: the image's package mirrors (read from its
// apt sources or apk repositories) plus what the request allows.
#pragma once
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "images/store.h"
#include "provision/cloud_config.h"
#include "provision/kernel.h"
#include "spec/spec.h"

namespace ultari::provision {

struct Request {
  std::string name;             // the image to make (or move)
  std::string base;             // the image to start from
  std::string user_data;        // the file's text
  std::string user_data_label;  // its path, for messages and the image's source
  std::vector<std::pair<std::string, std::string>> vars;  // --var KEY=VALUE (jinja)
  bool no_cache = false;        // build although a cached layer matches
  bool refresh = false;         // the same, and say so (the inputs are unchanged)
  bool check_only = false;      // read and check the user-data only: nothing runs, nothing is stored
  NetworkSpec network;          // more egress than the mirrors (Allow or Open mode)
  std::chrono::milliseconds step_timeout{std::chrono::minutes(30)};
  uint64_t memory_bytes = 2ull << 30;  // each build sandbox's memory limit
  // The most the build may write to the store's disk (its writable layer);
  // 0: the store's free space less a margin (the larger of 1 GiB and 5 %).
  // Watched while each module runs: past it, the module is killed.
  uint64_t max_bytes = 0;
  std::function<void(const std::string&)> progress;  // one line per module started / done
};

struct Outcome {
  images::Image image;          // check_only: empty
  bool cache_hit = false;
  std::vector<std::string> plan;  // check_only: the modules that would run, in order
  std::vector<std::string> includes;  // check_only: the #include URLs (fetched at provisioning; their modules not in `plan`)
  std::vector<PartInfo> parts;     // what the user-data held (MIME parts; a plain user-data is one)
  std::vector<std::string> warnings;  // unknown keys, modules not run, ...
};

// Throws Error naming what failed (the module, the runcmd item with its
// output and exit status); nothing is committed then and nothing is left.
Outcome provision(images::Store& store, const Request& request);

// The run side of a provisioned image (`ultari run --image`): its
// defaults (hostname, env LANG, limits, network) go into `spec` where
// `explicit_fields` does not name them ("hostname", "memory", "pids",
// "cpus", "timeout", "cpu_time", "output_limit", "tmp_size", "nofile",
// "net", "env:LANG"); its kernel modules are made sure of on the host
// (allowlist) and the kernel layer is added under its layers, held (in
// `holds`) while the sandbox runs. Defaults that give a run more than
// Ultari's own (network, higher limits) add a warning naming them. Throws
// Error naming the image (damaged or refused values).
void apply_image_config(const images::Image& image, const std::string& cache_dir, Spec& spec,
                        const std::vector<std::string>& explicit_fields, std::vector<std::string>& warnings,
                        std::vector<UniqueFd>& holds);

// `ultari image prune`'s part for the kernel layers under `cache_dir` (the
// store's "kernel" directory): those of kernels or module trees no longer
// current, unless a sandbox holds them (kernel.h, prune_kernel_layers).
KernelPrune prune_kernel_cache(const std::string& cache_dir);

}  // namespace ultari::provision
