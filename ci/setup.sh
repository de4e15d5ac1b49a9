#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks, then this project (with its dev extra) into
# .venv. Safe to run again: each step checks first and does nothing when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker.io debootstrap iptables openssh-client util-linux)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ci/setup.sh: missing ${missing[*]}; run as root (or install them) first" >&2
        exit 3
    fi
    echo "[setup] installing ${missing[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # The distribution's docker service is not wanted: we run our own private dockerd.
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -e $stamp ]]; then
    echo "[setup] installing pytest-openshell[dev] into .venv"
    [[ -x .venv/bin/python ]] || "$python" -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/pytest-openshell --version 2>/dev/null || echo pytest-openshell)"
