#!/usr/bin/env bash
# Install the Debian packages Sentinel's tests and benchmarks use (idempotent; needs root).
#   systemd-journal-remote   turns export-format fixtures into real .journal files
#   libsystemd-dev pkg-config gcc python3-dev  build systemd-python (journal reader)
#   fail2ban sshguard        peers for the side-by-side benchmarks
#   iptables ipset nftables iproute2  the firewall responders' tests (network namespaces)
#   tcpdump libpcap0.8       libpcap compiles the packet sensor's BPF filter
#   runuser (util-linux)     starts the test Elasticsearch as its own user
set -euo pipefail
packages=(python3-venv python3-dev systemd-journal-remote libsystemd-dev pkg-config gcc fail2ban sshguard
          iptables ipset nftables iproute2 tcpdump libpcap0.8)
missing=()
# node and npm: the OpenID provider of the revocation tests, and the Elasticsearch tarball's
# download (Debian's packages unless a newer node is already installed).
command -v npm >/dev/null || packages+=(nodejs npm)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The image's policy-rc.d keeps fail2ban/sshguard from starting; make sure of it here too.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
