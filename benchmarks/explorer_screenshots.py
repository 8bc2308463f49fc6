"""Screenshots of each page type of the explorer for the README: ``python -m benchmarks.explorer_screenshots
[RUN] [--prefix NAME] [--layer L --unit U]`` serves RUN (default runs/demo) on 127.0.0.1, waits for every page's background jobs,
and writes docs/<prefix>_<page>.png with Debian's chromium (the browser tests' harness)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pages(ex, layer: str | None = None, unit: int = 3) -> dict[str, str]:
    layer = layer or ex.layers[min(2, len(ex.layers) - 1)]
    return {"model": "", "layer": f"layers/{layer}", "unit": f"layers/{layer}/units/{unit}", "image": "images/t7",
            "codes": "codes", "images": "images"}


def _visit(page, url: str) -> bool:
    """Open ``url``; False when the navigation was aborted (the page reloads itself when a job ends)."""
    from playwright.sync_api import Error

    try:
        response = page.goto(url)
    except Error:
        return False
    if response is not None and response.status >= 500:
        raise RuntimeError(f"{url}: the server answered {response.status}")
    return True


def main(argv: list[str] | None = None) -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.web.browser import browser, serving

    from convlens.web import create_app

    args = argparse.ArgumentParser()
    args.add_argument("run", nargs="?", default=str(ROOT / "runs" / "demo"))
    args.add_argument("--prefix", default="explorer")
    args.add_argument("--layer", help="the layer and unit pages' layer (default: the third)")
    args.add_argument("--unit", type=int, default=3)
    opts = args.parse_args(argv)
    app = create_app(opts.run)
    ex = app.state.explorer
    with serving(app) as url, browser() as context:
        page = context.new_page()
        for name, path in pages(ex, opts.layer, opts.unit).items():
            for _ in range(900):  # wait until the page has no job left
                if _visit(page, url + path) and page.locator(".job").count() == 0:
                    break
                time.sleep(1)
            if name == "image":  # start the occlusion map too
                button = page.locator("form[action*='occlusion'] button, button[data-occlusion]")
                if button.count():
                    button.first.click()
                    for _ in range(900):
                        time.sleep(1)
                        if _visit(page, url + path) and page.locator(".job").count() == 0:
                            break
            page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
            page.wait_for_load_state("networkidle")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            out = ROOT / "docs" / f"{opts.prefix}_{name}.png"
            page.screenshot(path=str(out), full_page=False)
            print("wrote", out.relative_to(ROOT))


if __name__ == "__main__":
    main()
