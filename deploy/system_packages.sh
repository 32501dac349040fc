#!/usr/bin/env bash
# Debian packages the test suite uses: a real Prometheus server (monitoring tests), docker-compose
# (checks deploy/ compose files offline) and Fashion-MNIST (real product images). Installed only
# when missing, and only where apt-get can run; elsewhere the tests that need them say why they skip.
set -uo pipefail
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else
    echo "system_packages: cannot install ${missing[*]} (not root, no sudo); tests needing them will skip" >&2
    exit 0
fi
echo "system_packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
    || echo "system_packages: apt-get failed for ${missing[*]}; tests needing them will skip" >&2
exit 0
