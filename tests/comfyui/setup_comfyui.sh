#!/usr/bin/env bash
# Recreate a ComfyUI checkout and its venv from the fetched bare mirror, for tests/comfyui.
#
#   bash tests/comfyui/setup_comfyui.sh [MIRROR] [CHECKOUT] [VENV]
#
# Defaults: MIRROR=/work/.mirror/Comfy-Org+ComfyUI/repo  CHECKOUT=/work/comfyui  VENV=/work/comfyui-venv
# (or LONGCLIP_COMFYUI_MIRROR / LONGCLIP_COMFYUI_PATH / LONGCLIP_COMFYUI_VENV).
# Exits 0 with a message, doing nothing, when the mirror is absent. Afterwards run the tests with
#   LONGCLIP_COMFYUI_PATH=$CHECKOUT LONGCLIP_COMFYUI_PYTHON=$VENV/bin/python pytest tests/comfyui
set -euo pipefail

MIRROR=${1:-${LONGCLIP_COMFYUI_MIRROR:-/work/.mirror/Comfy-Org+ComfyUI/repo}}
CHECKOUT=${2:-${LONGCLIP_COMFYUI_PATH:-/work/comfyui}}
VENV=${3:-${LONGCLIP_COMFYUI_VENV:-/work/comfyui-venv}}
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3.11}

if ! git --git-dir="$MIRROR" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  echo "setup_comfyui: no ComfyUI mirror at $MIRROR; nothing to do (ComfyUI tests will skip)."
  exit 0
fi

# 1. Checkout, file by file (the snapshot lacks some large blobs; those are skipped).
if [[ ! -f "$CHECKOUT/main.py" ]]; then
  mkdir -p "$CHECKOUT"
  missing=0
  while IFS=$'\t' read -r meta path; do
    read -r mode type sha <<<"$meta"
    [[ "$type" == blob ]] || continue
    mkdir -p "$CHECKOUT/$(dirname "$path")"
    if git --git-dir="$MIRROR" cat-file blob "$sha" >"$CHECKOUT/$path" 2>/dev/null; then
      [[ "$mode" == 100755 ]] && chmod +x "$CHECKOUT/$path"
    else
      rm -f "$CHECKOUT/$path"; missing=$((missing + 1))
    fi
  done < <(git --git-dir="$MIRROR" ls-tree -r HEAD)
  git --git-dir="$MIRROR" rev-parse HEAD >"$CHECKOUT/.mirror-commit"
  echo "setup_comfyui: checked out $(cat "$CHECKOUT/.mirror-commit") into $CHECKOUT ($missing blobs missing, skipped)"
fi

# 2. Venv: CPU torch, ComfyUI's requirements minus the packages that pull another torch build.
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, aiohttp, safetensors, torchsde" 2>/dev/null; then
  "$VENV/bin/pip" install -q torch==2.13.0
  grep -vEi '^(torch|torchvision|torchaudio|kornia|spandrel)([<>=~! ;\[]|$)' "$CHECKOUT/requirements.txt" \
    | grep -vE '^\s*(#|$)' >"$VENV/requirements-comfyui.txt"
  "$VENV/bin/pip" install -q -r "$VENV/requirements-comfyui.txt" torchsde requests pydantic-settings
fi
# 3. Our library (editable), once its pyproject.toml exists.
if [[ -f "$REPO_ROOT/pyproject.toml" ]] && ! "$VENV/bin/python" -c "import longclip_diffusion" 2>/dev/null; then
  "$VENV/bin/pip" install -q -e "$REPO_ROOT"  # torch==2.13.0 is already there, so no other torch build is pulled
fi
echo "setup_comfyui: ready. LONGCLIP_COMFYUI_PATH=$CHECKOUT LONGCLIP_COMFYUI_PYTHON=$VENV/bin/python"
