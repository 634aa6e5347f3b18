#!/usr/bin/env bash
# Sets up bodyserve on a fresh Debian/Ubuntu machine: system packages, the virtual environment
# with pinned dependencies, Anny's cache and Triton's backend folder. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
# redis-server: the local stack's broker; docker-compose: validates docker-compose.yml;
# EGL + Mesa: headless rendering with moderngl; libgomp1: torch on CPU.
APT_PACKAGES=(redis-server docker-compose libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libgomp1)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[triton,smplx,diffusion,dev]"
  touch "$stamp"
fi
"$VENV/bin/bodyserve" setup
