#!/usr/bin/env bash
# Installs everything Ultari needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

BUILD=(build-essential cmake pkg-config git python3 libseccomp-dev nlohmann-json3-dev libcli11-dev
       libnftables-dev libtomlplusplus-dev libhyperscan-dev libssl-dev libarchive-dev debootstrap
       libcap-dev libyaml-cpp-dev zlib1g-dev kmod libgtest-dev)
# Run-time tools the tests and benchmarks use: ip/netns, the rootless test user
# and its subordinate ids (newuidmap: rootless image stores keep owners),
# strace (a test counts the helper programs a command execs), peers for bench/ (bubblewrap, crun), hyperfine, python3 for the bench
# driver, and qemu + a Debian kernel + busybox for the cgroup v2 VM test;
# gnupg (gpg, gpg-agent): the apt key tests dearmour keys and sign a PPA's Release.
TEST=(iproute2 passwd uidmap strace python3 curl openssl libbenchmark-dev bubblewrap crun hyperfine busybox-static cpio qemu-system-x86 linux-image-cloud-amd64
      python3-yaml python3-jsonschema gnupg)

want=("${BUILD[@]}")
[ "${1:-}" = "--test" ] && want+=("${TEST[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
