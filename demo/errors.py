"""Turn exceptions into one-paragraph messages for the page (the traceback goes to the server log)."""

from __future__ import annotations


class DemoInputError(ValueError):
    """Bad input from the page (empty prompt, size not a multiple of 8, ...)."""


_MAX_DETAIL = 400


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 1] + "…"


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _is_hub_or_network(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    hub = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "RepositoryNotFoundError",
        "GatedRepoError",
        "RevisionNotFoundError",
        "EntryNotFoundError",
        "HfHubHTTPError",
        "ConnectionError",
        "ConnectError",
        "Timeout",
        "TimeoutException",
    }
    return bool(names & hub)


def friendly_error(exc: BaseException, *, model: str | None = None) -> str:
    """A message a visitor can act on; never a traceback."""
    detail = _first_line(exc)
    if isinstance(exc, DemoInputError):
        return detail
    if _is_out_of_memory(exc):
        return (
            "Out of memory. Try a smaller image size, fewer images at once, or a smaller model "
            f"(SD 1.5 instead of SDXL). Details: {detail}"
        )
    where = f" `{model}`" if model else ""
    if _is_hub_or_network(exc):
        return (
            f"Could not load the model{where}: it is not available locally and the Hugging Face Hub "
            "could not be reached (offline, or the id is wrong / gated). Use a local model folder, or "
            f"check the id and the network. Details: {detail}"
        )
    if isinstance(exc, (FileNotFoundError, OSError)):
        return (
            f"Could not load the weights{where}. Check that the Hub id or local folder exists and "
            f"holds a diffusers model. Details: {detail}"
        )
    if type(exc).__name__ == "CheckpointError" or isinstance(exc, ValueError):
        return f"Invalid input or checkpoint: {detail}"
    return f"Generation failed ({type(exc).__name__}): {detail}"
