"""Screenshots of each page type of the explorer for the README: ``python -m benchmarks.explorer_screenshots
[RUN] [--prefix NAME]`` serves RUN (default runs/demo) on 127.0.0.1, waits for every page's background jobs,
and writes docs/<prefix>_<page>.png with Debian's chromium (the browser tests' harness)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pages(ex) -> dict[str, str]:
    layer = ex.layers[min(2, len(ex.layers) - 1)]
    return {"model": "", "layer": f"layers/{layer}", "unit": f"layers/{layer}/units/3", "image": "images/t7",
            "codes": "codes", "images": "images"}


def main(argv: list[str] | None = None) -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.web.browser import browser, serving

    from convlens.web import create_app

    args = argparse.ArgumentParser()
    args.add_argument("run", nargs="?", default=str(ROOT / "runs" / "demo"))
    args.add_argument("--prefix", default="explorer")
    opts = args.parse_args(argv)
    app = create_app(opts.run)
    ex = app.state.explorer
    with serving(app) as url, browser() as context:
        page = context.new_page()
        for name, path in pages(ex).items():
            for _ in range(900):  # wait until the page has no job left
                page.goto(url + path)
                if page.locator(".job").count() == 0:
                    break
                time.sleep(1)
            if name == "image":  # start the occlusion map too
                button = page.locator("form[action*='occlusion'] button, button[data-occlusion]")
                if button.count():
                    button.first.click()
                    for _ in range(900):
                        time.sleep(1)
                        page.goto(url + path)
                        if page.locator(".job").count() == 0:
                            break
            page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
            page.wait_for_load_state("networkidle")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            out = ROOT / "docs" / f"{opts.prefix}_{name}.png"
            page.screenshot(path=str(out), full_page=False)
            print("wrote", out.relative_to(ROOT))


if __name__ == "__main__":
    main()
