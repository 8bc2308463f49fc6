"""The README's screenshots of the labeling game: ``python -m benchmarks.label_screenshots RUN`` (a fashion run:
``convlens train --data fashion --out runs/fashion``) copies RUN without its answers, lets a SCRIPTED annotator
answer 100 test images (right 85% of the time, else a confusable class; seconds drawn bimodal) and tag the
errors, then writes docs/label_game.png (/label with one label picked) and docs/label_results.png
(/label/results) with Debian's chromium. The answers illustrate the pages; they measure no person."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NEAR = {"t-shirt": ["shirt", "pullover"], "shirt": ["t-shirt", "coat", "pullover"], "pullover": ["coat", "shirt"],
        "coat": ["pullover", "shirt"], "dress": ["coat", "shirt"], "sneaker": ["sandal", "ankle boot"],
        "sandal": ["sneaker"], "ankle boot": ["sneaker", "sandal"], "bag": ["trouser"], "trouser": ["dress"]}
CATEGORIES = {"human_only_correct": ["fine-grained", "small-thin", "other"],
              "cnn_only_correct": ["fine-grained", "class-unawareness"],
              "both_wrong": ["fine-grained", "incorrect-annotation"]}


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.web.browser import browser, serving

    import convlens
    from convlens.web import create_app

    src = Path((argv or sys.argv[1:] or ["runs/fashion"])[0])
    dst = Path(tempfile.mkdtemp(prefix="label-shots-")) / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("labels.sqlite*", "results", "report"))
    run = convlens.load_run(dst)
    names = list(run.class_names)
    truth = convlens.evaluate(run).labels.tolist()
    rng = np.random.default_rng(7)
    with serving(create_app(dst)) as url, browser() as context:
        page = context.new_page()
        req = page.request
        sid = req.post(url + "api/label/sessions",
                       data={"annotator": "scripted annotator (not a person)", "n": 100}).json()["session"]
        while not (nxt := req.get(url + f"api/label/sessions/{sid}/next").json())["done"]:
            t = names[truth[int(nxt["image_id"][1:])]]
            labels = [t] if rng.random() < 0.85 else [str(rng.choice(NEAR.get(t, names)))]
            if rng.random() < 0.3:
                labels.append(str(rng.choice([n for n in NEAR.get(t, names) if n not in labels] or ["bag"])))
            seconds = float(rng.lognormal(0.7, 0.4) if rng.random() < 0.8 else rng.lognormal(2.2, 0.4))
            req.post(url + f"api/label/sessions/{sid}/answers",
                     data={"image_id": nxt["image_id"], "labels": labels, "seconds": seconds})
        review = req.get(url + f"api/label/sessions/{sid}/review").json()["answers"]
        req.post(url + f"api/label/sessions/{sid}/tags",
                 data={"tags": {a["image"]: str(rng.choice(CATEGORIES[a["cell"]])) for a in review}})
        game = req.post(url + "api/label/sessions", data={"annotator": "Ada", "n": 40, "seed": 1}).json()["session"]
        page.goto(url + f"label/sessions/{game}")
        page.wait_for_function("document.querySelectorAll('#label-classes img').length > 50")
        page.wait_for_timeout(800)
        page.keyboard.type("snea")
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
        page.screenshot(path=str(ROOT / "docs" / "label_game.png"))
        page.goto(url + "label/results")
        page.wait_for_function("[...document.querySelectorAll('details[open] img')].every(i => i.complete)")
        page.wait_for_timeout(300)
        page.screenshot(path=str(ROOT / "docs" / "label_results.png"))
    shutil.rmtree(dst.parent, ignore_errors=True)
    print("wrote docs/label_game.png and docs/label_results.png")


if __name__ == "__main__":
    main()
