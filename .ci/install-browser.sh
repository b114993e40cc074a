#!/usr/bin/env bash
# Installs a headless browser for the demo's browser test:
# Debian's chromium (apt) and Playwright's Python client (PyPI), into PYTHON's environment.
# No browser download: Playwright is pointed at /usr/bin/chromium.
# Idempotent: each part is skipped when it is already there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

if [ -x /usr/bin/chromium ]; then
    echo "install-browser: /usr/bin/chromium already present"
else
    echo "install-browser: installing Debian chromium"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y chromium
fi

# Playwright goes into the Python that runs the tests: PYTHON (e.g. a venv's bin/python), else python3 on PATH.
PYTHON="${PYTHON:-python3}"
if "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install-browser: playwright already installed in $PYTHON"
else
    echo "install-browser: installing the playwright Python package into $PYTHON"
    "$PYTHON" -m pip install --quiet playwright
    "$PYTHON" -c "import playwright.sync_api"
fi
