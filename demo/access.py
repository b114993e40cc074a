"""Which model sources the page may load: any (served on 127.0.0.1 only) or those the operator allowed at launch.

A page served beyond 127.0.0.1 (``--host``, ``--share``) must not open whatever path a visitor types into the model
fields (``/etc/shadow``, ``/root``): it loads only the Hub ids and folders/files the operator allowed, and refuses
every other value with the same message, without looking at the file system first (an existing and a missing path
are refused alike).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from longclip_diffusion.sources import looks_like_path

STRETCH = "stretch"  # Long-CLIP by stretching the base's own CLIP
KEEP = "none"  # keep the base's own text encoder (a base saved with a Long-CLIP in it)
NO_FILE = (STRETCH, KEEP)  # Long-CLIP "sources" that read no file: always allowed
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_local_only(host: str | None, share: bool) -> bool:
    """The page is reachable from this machine only (no ``--share``, bound to a loopback address)."""
    return not share and (host or "127.0.0.1") in LOCAL_HOSTS


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


class AllowedModels:
    """The allow-list: Hub ids by exact id; folders and files by real path, each folder with everything under it.

    ``restricted=False`` allows every source (the page is served to this machine only).
    """

    def __init__(self, sources: Iterable[str] = (), *, restricted: bool = False):
        self.sources: list[str] = []
        self.restricted = restricted
        self.allow(sources)

    def allow(self, sources: Iterable[str]) -> None:
        for source in sources:
            source = (source or "").strip()
            if source and source not in NO_FILE and source not in self.sources:
                self.sources.append(source)

    def restrict(self, extra: Iterable[str] = ()) -> None:
        """From now on load only the allowed sources (and ``extra``)."""
        self.allow(extra)
        self.restricted = True

    def permits(self, value: str) -> bool:
        if not self.restricted or value in NO_FILE or value in self.sources:
            return True
        if not looks_like_path(value) and not os.path.isabs(value):
            return False  # a Hub id must be one of the allowed ids, exactly
        wanted = _real(value)
        for source in self.sources:
            if not looks_like_path(source):
                continue
            allowed = _real(source)
            if wanted == allowed or wanted.startswith(allowed.rstrip(os.sep) + os.sep):
                return True
        return False

    def refusal(self, field: str) -> str:
        """The one message for every refused value (it names no path and says nothing of what exists)."""
        listed = ", ".join(self.sources) if self.sources else "none"
        return (
            f"{field}: this server loads only the models its operator allowed ({listed}; "
            "\"stretch\" or \"none\" for the Long-CLIP checkpoint). Pick one of them; the operator adds others "
            "with --allow-model."
        )
