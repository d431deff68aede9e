#!/usr/bin/env bash
# Set up a fresh machine for wmsynth: system libraries, uv, and the locked virtualenv at .venv.
# Idempotent; `make` calls it whenever uv.lock or pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never   # use the machine's Python 3.12 (.python-version); nothing to download

# 1. System libraries: open3d needs libusb-1.0; FFmpeg's libraries let torchcodec (lerobot's video decoder) load.
missing=()
ldconfig -p | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
ldconfig -p | grep -q 'libavcodec.so' || missing+=(ffmpeg)
command -v g++ >/dev/null || missing+=(g++)   # pybullet builds from source on Python 3.12
# Headless chromium only for the slow report test (`WMSYNTH_SLOW_TESTS=1 make setup`; tests/test_report.py).
if [ "${WMSYNTH_SLOW_TESTS:-0}" = 1 ]; then command -v chromium >/dev/null || missing+=(chromium); fi
if ((${#missing[@]})); then
  echo "bootstrap: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. uv, in a private tool venv unless one of the right version is on PATH.
PY=$(command -v python3.12 || command -v python3)
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || {
  echo "bootstrap: Python 3.12 is required (lerobot 0.6.1); found $("$PY" --version)" >&2; exit 1; }
UV=$(command -v uv || true)
if [ -z "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  if [ ! -x .tools/uv/bin/uv ]; then
    "$PY" -m venv .tools/uv
    .tools/uv/bin/pip install -q "uv==$UV_VERSION"
  fi
  UV=.tools/uv/bin/uv
fi

# 3. The locked environment (runtime + dev dependencies), exactly as uv.lock says.
"$UV" sync --frozen --compile-bytecode
