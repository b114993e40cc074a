#!/usr/bin/env bash
# A ComfyUI checkout and a venv for it with this repository installed, for tests/comfyui.
#
#   bash tests/comfyui/setup_comfyui.sh [MIRROR] [CHECKOUT] [VENV]
#
# MIRROR    a ComfyUI git repository (bare or not) to check out from      (LONGCLIP_COMFYUI_MIRROR)
# CHECKOUT  where ComfyUI is; used as it is when it already has main.py  (LONGCLIP_COMFYUI_PATH)
# VENV      ComfyUI's venv; made when absent                              (LONGCLIP_COMFYUI_VENV)
# PYTHON    the interpreter the venv is made from (default python3)
# Arguments win over the variables; the fallbacks are this project's workplace paths (/work/...). Nothing of ComfyUI is
# ever committed here. Exits 0 with a message, doing nothing, when there is neither a checkout nor a mirror.
# Every run installs ComfyUI's requirements and this checkout (editable, with all its dependencies) into the venv, and
# then checks from another folder that the installed library imports. Afterwards:
#   LONGCLIP_COMFYUI_PATH=$CHECKOUT LONGCLIP_COMFYUI_PYTHON=$VENV/bin/python python -m pytest tests/comfyui
set -euo pipefail

MIRROR=${1:-${LONGCLIP_COMFYUI_MIRROR:-/work/.mirror/Comfy-Org+ComfyUI/repo}}
CHECKOUT=${2:-${LONGCLIP_COMFYUI_PATH:-/work/comfyui}}
VENV=${3:-${LONGCLIP_COMFYUI_VENV:-/work/comfyui-venv}}
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}

# 1. Checkout, file by file from the mirror's HEAD (a fetched snapshot may lack some large blobs; those are skipped).
if [[ ! -f "$CHECKOUT/main.py" ]]; then
  [[ -d "$MIRROR/.git" ]] && MIRROR=$MIRROR/.git
  if ! git --git-dir="$MIRROR" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    echo "setup_comfyui: no ComfyUI checkout at $CHECKOUT and no mirror at $MIRROR; nothing to do (ComfyUI tests will skip)."
    exit 0
  fi
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

# 2. Venv: the README's CPU torch, ComfyUI's requirements minus the packages that pull another torch build.
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
grep -vEi '^(torch|torchvision|torchaudio|kornia|spandrel)([<>=~! ;\[]|$)' "$CHECKOUT/requirements.txt" \
  | grep -vE '^\s*(#|$)' >"$VENV/requirements-comfyui.txt"
"$VENV/bin/python" -m pip install -q torch==2.13.0 -r "$VENV/requirements-comfyui.txt" torchsde requests pydantic-settings

# 3. This checkout, always (a check like `python -c "import longclip_diffusion"` run from the repository passes on the
#    source folder alone, without the dependencies). torch==2.13.0 is already there, so no other torch build comes.
if [[ -n "${LONGCLIP_CI_LOCK:-}" ]]; then  # .ci/run: editable builds of one checkout take turns (shared egg-info)
  flock "$LONGCLIP_CI_LOCK" "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT"
else
  "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT"
fi
installed=$(cd / && "$VENV/bin/python" -c "import ftfy, longclip_diffusion.pipelines as p; print(p.__file__)")
if [[ "$installed" != "$REPO_ROOT"/* ]]; then
  echo "setup_comfyui: ComfyUI's venv imports longclip_diffusion from $installed, not from $REPO_ROOT" >&2
  exit 1
fi
echo "setup_comfyui: ready. LONGCLIP_COMFYUI_PATH=$CHECKOUT LONGCLIP_COMFYUI_PYTHON=$VENV/bin/python"
