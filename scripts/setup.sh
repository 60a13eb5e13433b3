#!/usr/bin/env bash
# Installs what Strait needs on a fresh Debian/Ubuntu machine (root): clang for the eBPF programs,
# iproute2 for the lab, curl and python3 used by the demo and tests, Prometheus (server and
# promtool) and Chromium for the observability tests, nginx as the backend of the L7 path tests,
# iperf3, wrk and HAProxy for the data path benchmark (benches/datapath.rs).
# Idempotent and quiet.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (the lab creates namespaces, cgroups and eBPF programs)" >&2
  exit 1
fi

need=()
command -v clang >/dev/null || need+=(clang llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || need+=(bpftool)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v ps >/dev/null || need+=(procps)
[ -e /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# bpffs holds the pinned maps and links that keep pods redirected while an agent restarts.
if ! grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf
fi
if ! grep -q ' cgroup2 ' /proc/mounts; then
  echo "setup: no cgroup v2 mount found; mount one: mount -t cgroup2 none /sys/fs/cgroup/unified" >&2
  exit 1
fi
