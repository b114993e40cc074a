"""Where a model comes from: a local file or folder, or a Hub id — checked before any expensive loading.

- :func:`resolve_source`: an existing path → ``Path``; a path-looking argument that does not exist →
  ``FileNotFoundError("no such file or folder: …")``; anything else must be a valid Hub id (``ValueError`` if not),
  and the Hub must answer within seconds (:func:`check_hub_reachable`).
- :func:`check_hub_reachable`: one short request to the Hub endpoint (``LONGCLIP_HUB_TIMEOUT`` seconds, default 5)
  instead of a minute of retries inside ``from_pretrained``; raises :class:`HubUnavailableError` unless the repo is
  in the local cache. Skipped when ``HF_HUB_OFFLINE`` is set (the local cache is then used).
- :func:`detect_family`: ``"sd15"``, ``"sdxl"``, ``"sd3"`` or ``"flux"`` from a local folder's ``model_index.json``.

Only the standard library is imported at module level.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from .defaults import Family

HUB_TIMEOUT_ENV = "LONGCLIP_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 5.0
DEFAULT_ENDPOINT = "https://huggingface.co"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt", ".gguf")

# model_index.json `_class_name` fragments, most specific first (the SDXL class name contains the SD one).
_FAMILY_CLASS_FRAGMENTS: tuple[tuple[str, Family], ...] = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("Flux", "flux"),
    ("StableDiffusion", "sd15"),
)


class HubUnavailableError(ConnectionError):
    """A Hub id was given but the Hub does not answer (no network, offline mode not set)."""


def _is_true(value: str | None) -> bool:
    # Same reading as huggingface_hub.constants._is_true.
    return value is not None and value.upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: Hub ids come from the local cache only."""
    return _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def looks_like_path(value: str) -> bool:
    """A value meant as a local path: starts with ``.``, ``/`` or ``~``, has a backslash or more than one ``/``, or
    ends with a weights suffix such as ``.safetensors`` — none of which a Hub id (``owner/name``) has."""
    return (
        value.startswith((".", "/", "~"))
        or "\\" in value
        or value.count("/") > 1
        or value.lower().endswith(WEIGHT_SUFFIXES)
    )


def hub_timeout() -> float:
    """Seconds to wait for the Hub to answer (``LONGCLIP_HUB_TIMEOUT``, default 5)."""
    value = os.environ.get(HUB_TIMEOUT_ENV)
    if value is None:
        return DEFAULT_HUB_TIMEOUT
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"{HUB_TIMEOUT_ENV}={value!r}: expected a number of seconds > 0, e.g. 5.")
    return timeout


def in_local_cache(repo_id: str) -> bool:
    """A snapshot of ``repo_id`` is in the local Hugging Face cache (``HF_HUB_CACHE``)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def check_hub_reachable(repo_id: str, what: str = "--base") -> None:
    """Raise :class:`HubUnavailableError` unless the Hub answers within :func:`hub_timeout` seconds or ``repo_id``
    is in the local cache.

    Any HTTP answer counts as reachable (a missing or gated repo is reported by the loader itself); only a failed
    connection or a timeout does not. Nothing is checked with ``HF_HUB_OFFLINE`` set.
    """
    if hub_offline():
        return
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    timeout = hub_timeout()
    request = urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # the Hub answered
    except (urllib.error.URLError, OSError) as error:
        if in_local_cache(repo_id):
            return  # huggingface_hub falls back to the cached snapshot at once when the Hub is unreachable
        reason = getattr(error, "reason", error)
        raise HubUnavailableError(
            f"{what} {repo_id}: could not reach the Hugging Face Hub ({endpoint}) within {timeout:g} s ({reason}); "
            "give a local folder or file instead, or connect to the network — or set HF_HUB_OFFLINE=1 to load it "
            "from the local cache."
        ) from None


def resolve_source(value: str | os.PathLike, what: str = "--base", check_hub: bool = True) -> Path | str:
    """An existing local path (``Path``, ``~`` expanded) or a validated Hub id (``str``), checked before loading.

    Raises ``FileNotFoundError`` for a path-looking ``value`` that does not exist, ``ValueError`` for a value that is
    neither a path nor a valid Hub id, and :class:`HubUnavailableError` (with ``check_hub``) when the Hub does not
    answer. ``what`` names the argument in messages (``--base``, ``source``, ``long_clip``…).
    """
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if isinstance(value, os.PathLike) or looks_like_path(text):
        raise FileNotFoundError(
            f"{what}: no such file or folder: {text} (check the path, or give a Hub id such as owner/model)."
        )
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise ValueError(
            f"{what}: {text!r} is neither an existing file or folder nor a Hub id ({error}); give a local path or "
            "a Hub id such as owner/model."
        ) from None
    if check_hub:
        check_hub_reachable(text, what)
    return text


def detect_family(base: str | os.PathLike) -> Family | None:
    """The model family of a local diffusers folder, read from its ``model_index.json``; ``None`` when ``base`` is no
    such folder (e.g. a Hub id) or its pipeline class is none of SD 1.x/2.x, SDXL, SD3, Flux."""
    index = Path(base).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(class_name, str):
        return None
    return next((family for fragment, family in _FAMILY_CLASS_FRAGMENTS if fragment in class_name), None)
