"""A real browser drives the demo: headless Debian Chromium via Playwright, tiny random models, localhost only.

Needs /usr/bin/chromium and the playwright package (`bash .ci/install-browser.sh`); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from longclip_diffusion.demo.examples import EXAMPLES
from longclip_diffusion.prompts import count_tokens

TINY_SIZE = 64  # pixels; the tiny VAE halves it
CHROMIUM = Path(os.environ.get("LONGCLIP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
STEPS = 6
TIMEOUT_MS = 120_000  # generation on a busy 2-core CPU; the tiny models need a few seconds

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: run `bash .ci/install-browser.sh` (Debian chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed: run `bash .ci/install-browser.sh`"
)

LONG_PROMPT = (
    "A lighthouse keeper's cottage on a windswept cliff at sunset, oil painting. The cottage has a red door, "
    "white walls, a slate roof with a crooked chimney and a small garden of lavender and poppies. A brown "
    "dog sleeps on the doorstep next to a pair of muddy boots. Below the cliff, waves crash on black rocks "
    "and three seagulls circle above a fishing boat with an orange sail. FINALWORDS a purple umbrella "
    "leaning against the garden gate and a copper kettle steaming on the windowsill."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tiny_sd_folder):
    """The demo with the real loader on a tiny local SD folder, served on 127.0.0.1:<free port>."""
    from longclip_diffusion.demo.app import build_demo, launch_demo
    from longclip_diffusion.demo.models import load_models

    def slowed_down(spec):
        """The real loader, with a UNet slow enough (0.2 s a step) for the progress bar to be seen."""
        models = load_models(spec, device="cpu")
        models.long_clip.unet.register_forward_pre_hook(lambda module, args: time.sleep(0.2))
        return models

    demo = build_demo(slowed_down, base=str(tiny_sd_folder), long_clip="stretch")
    port = _free_port()
    launch_demo(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def _set_text(box, value: str) -> None:
    """Type ``value`` and leave the box, so the page has it before the next click."""
    box.fill(value)
    box.press("Tab")
    sync_api.expect(box).to_have_value(value)


def test_long_prompt_to_two_images_in_a_real_browser(server, tmp_path):
    expected = count_tokens(LONG_PROMPT, limit=77)
    assert expected.num_tokens > 77 and "FINALWORDS" in expected.dropped_text

    outside = []  # requests that tried to leave localhost (aborted)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)

            def guard(route):
                host = urlparse(route.request.url).hostname
                if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(server, wait_until="domcontentloaded")
            prompt = page.locator("#prompt textarea")
            prompt.wait_for()

            # 1. Example prompts are one click away and update the counter.
            label, example, _ = EXAMPLES[1]
            page.get_by_role("button", name=label).click()
            sync_api.expect(prompt).to_have_value(example)
            sync_api.expect(page.locator("#token-counter .token-count")).to_have_text(
                f"{count_tokens(example).num_tokens} tokens"
            )

            # 2. The live counter shows the count and strikes through what CLIP drops.
            prompt.fill(LONG_PROMPT)
            counter = page.locator("#token-counter")
            sync_api.expect(counter.locator(".token-count")).to_have_text(f"{expected.num_tokens} tokens")
            struck = counter.locator("del.clip-dropped")
            sync_api.expect(struck).to_contain_text("FINALWORDS")
            assert struck.inner_text().strip() == expected.dropped_text.strip()
            decoration = struck.evaluate("e => getComputedStyle(e).textDecorationLine")
            assert "line-through" in decoration

            # 3. Small, fast settings for the tiny model.
            _set_number(page, "steps", STEPS)
            _set_number(page, "width", TINY_SIZE)
            _set_number(page, "height", TINY_SIZE)
            _set_number(page, "seed", 42)

            # 4. A missing model is one line in the page (before any loading), and the server keeps serving.
            page.get_by_text("Model", exact=True).click()
            base = page.locator("#base textarea, #base input").first
            good_base = base.input_value()
            missing = str(Path(good_base).resolve().parent / "no-such-model")
            _set_text(base, missing)
            page.locator("#generate").click()
            status = page.locator("#status .status:not(.running)")
            sync_api.expect(status).to_have_text(
                f"Base model: no such file or folder: {missing} (check the path, or give a Hub id such as owner/model).",
                timeout=TIMEOUT_MS,
            )
            sync_api.expect(status).to_have_class(re.compile(r"\berror\b"))
            _set_text(base, good_base)

            # 5. Generate: a progress bar while it runs, then both images, labelled, same seed.
            page.locator("#generate").click()
            sync_api.expect(page.locator("#status")).not_to_contain_text("no such file")  # old message gone
            sync_api.expect(page.locator("#longclip-image")).to_contain_text(
                re.compile(rf"(Long-CLIP|stock CLIP): step \d/{STEPS}"), timeout=TIMEOUT_MS
            )
            page.screenshot(path=str(tmp_path / "progress.png"), full_page=True)
            for elem_id in ("longclip-image", "stock-image"):
                sync_api.expect(page.locator(f"#{elem_id} img")).to_be_visible(timeout=TIMEOUT_MS)
            status = page.locator("#status .status.ok")
            sync_api.expect(status).to_contain_text(f"Long-CLIP and stock CLIP: seed 42, {STEPS} steps")
            sync_api.expect(page.locator("#longclip-image")).to_contain_text("Long-CLIP (248 tokens) · seed 42")
            sync_api.expect(page.locator("#stock-image")).to_contain_text("Stock CLIP (77 tokens) · seed 42")
            for elem_id in ("longclip-image", "stock-image"):
                width = page.locator(f"#{elem_id} img").evaluate("img => img.naturalWidth")
                assert width == TINY_SIZE

            # 6. Picking Flux: the counter says T5 reads the prompt on both sides; the guidance takes Flux's default,
            # the custom base folder and size stay.
            page.locator("#family").get_by_label("Flux").check()
            sync_api.expect(counter).to_contain_text("T5 also reads the prompt, up to 512 T5 tokens")
            sync_api.expect(page.locator("#guidance input[type=number]")).to_have_value("3.5")
            sync_api.expect(base).to_have_value(good_base)
            sync_api.expect(page.locator("#width input[type=number]")).to_have_value(str(TINY_SIZE))

            screenshot = tmp_path / "demo.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            keep = os.environ.get("LONGCLIP_DEMO_SCREENSHOT")
            if keep:
                shutil.copy(screenshot, keep)
            print(f"screenshot: {screenshot}")
        finally:
            browser.close()
    assert not [url for url in outside if not re.match(r"https?://(127\.0\.0\.1|localhost)", url)], outside
