"""Turn exceptions into one-paragraph messages for the page (the traceback goes to the server log)."""

from __future__ import annotations

import socket


class DemoInputError(ValueError):
    """Bad input from the page (empty prompt, size not a multiple of 8, ...)."""


class ModelLoadError(RuntimeError):
    """Loading a model failed; ``__cause__`` says why."""

    def __init__(self, model: str, long_clip: str | None = None):
        self.model = model
        self.long_clip = long_clip
        super().__init__(f"could not load {model}")


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


def _hub_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the Hub or the network did not give us the files".

    Matched by type, not by message text: ``huggingface_hub``'s errors (offline mode, not cached, missing, gated or
    private repo, HTTP errors), the project's :class:`~longclip_diffusion.sources.HubUnavailableError`, the
    standard library's connection and time-out errors, and the transport errors of the HTTP clients
    ``huggingface_hub`` uses (``httpx2`` from huggingface_hub 2.x, ``httpx`` before, ``requests`` before that).
    """
    import importlib

    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (
        ("huggingface_hub.errors", ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError")),
        ("longclip_diffusion.sources", ("HubUnavailableError",)),
        ("httpx2", ("TransportError", "TimeoutException")),
        ("httpx", ("TransportError", "TimeoutException")),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
    ):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        types.extend(getattr(found, name) for name in names if isinstance(getattr(found, name, None), type))
    return tuple(types)


def _causes(exc: BaseException | None):
    """``exc`` and the exceptions it was raised from or during (diffusers and transformers wrap Hub errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_hub_or_network(exc: BaseException) -> bool:
    """A Hub / network failure, here or anywhere in the chain of causes."""
    hub_errors = _hub_error_types()
    return any(isinstance(cause, hub_errors) for cause in _causes(exc))


def _own_message(exc: BaseException) -> str | None:
    """The message of the project's own one-line error for the Hub being unreachable, if that is the cause."""
    try:
        from longclip_diffusion.sources import HubUnavailableError
    except ImportError:
        return None
    for cause in _causes(exc):
        if isinstance(cause, HubUnavailableError):
            return _first_line(cause)
    return None


def friendly_error(exc: BaseException, *, model: str | None = None) -> str:
    """A message a visitor can act on; never a traceback."""
    if isinstance(exc, ModelLoadError) and exc.__cause__ is not None:
        cause = exc.__cause__
        if isinstance(cause, DemoInputError) or _is_out_of_memory(cause):
            return friendly_error(cause, model=exc.model)
        what = f"`{exc.model}`" + (f" with Long-CLIP `{exc.long_clip}`" if exc.long_clip else "")
        own = _own_message(cause)
        if own:
            return own
        if _is_hub_or_network(cause):
            return (
                f"Could not load the model {what}: it is not available locally and the Hugging Face Hub "
                "could not be reached (offline, or the id is wrong or gated). Use a local model folder, or "
                f"check the id and the network. Details: {_first_line(cause)}"
            )
        return (
            f"Could not load the model {what}. Check that the Hub id or local folder exists and holds "
            f"a diffusers model, and that the Long-CLIP checkpoint exists. Details: {_first_line(cause)}"
        )
    detail = _first_line(exc)
    if isinstance(exc, DemoInputError):
        return detail
    if _is_out_of_memory(exc):
        return (
            "Out of memory. Try a smaller image size, fewer images at once, or a smaller model "
            f"(SD 1.5 instead of SDXL). Details: {detail}"
        )
    where = f" `{model}`" if model else ""
    own = _own_message(exc)
    if own:
        return own
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
