"""Test harness for a real ComfyUI checkout: environment, a torchvision stand-in, the in-process worker, a server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
COMFYUI = os.environ.get("LONGCLIP_COMFYUI_PATH")
PYTHON = os.environ.get("LONGCLIP_COMFYUI_PYTHON")

# ComfyUI imports torchvision at start-up (and transformers imports it when it is findable), but there is no
# torchvision build for this CPU torch. The tests write this stand-in to a temporary folder put first on PYTHONPATH;
# it is never shipped. Every attribute is a placeholder that fails only when actually used.
_STAND_IN = '''
import enum


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _Missing:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision stand-in (ComfyUI tests): not available")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing
'''
_MODULES = ["", "transforms", "transforms/functional", "transforms/v2", "transforms/v2/functional", "io", "ops", "utils",
            "models", "datasets"]


def requires_comfyui():
    """Skip with a clear reason unless a ComfyUI checkout and its venv python are configured."""
    if not COMFYUI or not Path(COMFYUI, "main.py").is_file():
        pytest.skip("ComfyUI tests need LONGCLIP_COMFYUI_PATH=<ComfyUI checkout> (see tests/comfyui/setup_comfyui.sh)")
    if not PYTHON or not Path(PYTHON).is_file():
        pytest.skip("ComfyUI tests need LONGCLIP_COMFYUI_PYTHON=<python of ComfyUI's venv> (see setup_comfyui.sh)")


def write_torchvision_stand_in(folder: Path) -> Path:
    for module in _MODULES:
        package = folder / "torchvision" / module
        package.mkdir(parents=True, exist_ok=True)
        text = _STAND_IN + ('__version__ = "0.0.0+stand-in"\nfrom . import transforms  # noqa\n' if not module else "")
        (package / "__init__.py").write_text(text)
    return folder


def comfy_env(stand_in: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LONGCLIP_COMFYUI_PATH=COMFYUI)
    env["PYTHONPATH"] = os.pathsep.join([str(stand_in), str(REPO)])
    return env


def run_worker(workdir: Path, stand_in: Path, *scenarios: str, timeout: float = 900) -> dict:
    """Run scenarios of comfy_worker.py in ComfyUI's python; returns {scenario: result}."""
    process = subprocess.run(
        [PYTHON, str(HERE / "comfy_worker.py"), str(workdir), *scenarios],
        env=comfy_env(stand_in), capture_output=True, text=True, timeout=timeout, cwd=COMFYUI,
    )
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"worker failed (rc {process.returncode}):\n{process.stdout[-3000:]}\n{process.stderr[-6000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI headless on 127.0.0.1 with --cpu and a private base directory; stopped on exit."""

    def __init__(self, base: Path, stand_in: Path, log: Path):
        self.base, self.port, self.log = base, free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.stand_in = stand_in

    def __enter__(self):
        command = [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--disable-auto-launch",
                   "--database-url", "sqlite:///:memory:"]
        self.log_handle = open(self.log, "w")
        self.process = subprocess.Popen(command, cwd=COMFYUI, env=comfy_env(self.stand_in),
                                        stdout=self.log_handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited at start-up:\n{self.log.read_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(1)
        raise AssertionError(f"ComfyUI did not answer within 180 s:\n{self.log.read_text()[-4000:]}")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_handle.close()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def run_prompt(self, graph: dict, timeout: float = 300) -> dict:
        """POST an API-format graph and poll /history until it finishes (bounded)."""
        prompt_id = self.post("/prompt", {"prompt": graph, "client_id": "longclip-tests"})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                if history[prompt_id]["status"].get("status_str") in ("success", "error"):
                    return history[prompt_id]
            time.sleep(1)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log.read_text()[-4000:]}")
