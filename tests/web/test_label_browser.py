"""The labeling game in a real browser (Debian's chromium through Playwright): a scripted annotator plays 20
images with the keyboard only, then the results page shows the API's numbers; with 1,000 classes the filter
answers at once and example images load only when their class is on screen."""
from __future__ import annotations

import numpy as np
import pytest

import convlens
from tests.web.browser import browser, serving, watch_console

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def context():
    with browser() as ctx:
        yield ctx


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_a_keyboard_only_annotator_plays_20_images_and_the_results_page_agrees_with_the_api(demo_copy, context):
    from convlens.web import create_app

    for old in demo_copy.glob("labels.sqlite*"):  # a copy of a runs/demo someone played on: start empty
        old.unlink()
    run = convlens.load_run(demo_copy)
    names = list(run.class_names)
    truth = convlens.evaluate(run).labels.tolist()  # the scripted annotator peeks, to be right most of the time
    rng = np.random.default_rng(0)
    typed = {}
    with serving(create_app(demo_copy)) as url:
        page = context.new_page()
        errors = watch_console(page)
        page.goto(url + "label")
        page.keyboard.type("Kbd <i>Ada</i>")       # the name field has the focus
        page.keyboard.press("Tab")
        page.keyboard.press("Control+a")
        page.keyboard.type("20")
        page.keyboard.press("Enter")               # submits the form: the game opens
        page.wait_for_selector("#label-filter:focus")
        for step in range(20):
            image = page.get_attribute("#label-image", "src").rsplit("/", 1)[1]
            right = names[truth[int(image[1:])]]
            wrong = [n for n in names if n != right]
            picks = [right] if rng.random() < 0.7 else list(rng.choice(wrong, 2, replace=False))
            if step % 5 == 0:                      # a slip, taken back with Backspace
                page.keyboard.type(wrong[0][:3])
                page.keyboard.press("Enter")
                page.keyboard.press("Backspace")
            for name in picks:
                page.keyboard.type(name)
                page.keyboard.press("Enter")
            assert [t.replace("×", "").strip() for t in page.locator("#label-picks li").all_inner_texts()] == picks
            page.keyboard.press("Control+Enter")
            page.wait_for_selector("#label-next:focus")
            typed[image] = picks
            page.keyboard.press("Enter")           # the next image (or the end)
            if step < 19:
                page.wait_for_function("s => document.getElementById('label-image').src.split('/').pop() !== s", arg=image)
                page.wait_for_selector("#label-filter:focus")
        page.wait_for_selector("#label-done:not([hidden])")

        api = page.request.get(url + "api/label/results?annotator=" + "Kbd <i>Ada</i>").json()
        answers = page.request.get(url + "label/answers.json?annotator=Kbd <i>Ada</i>").json()["answers"]
        assert {a["image"]: a["labels"] for a in answers} == typed
        page.goto(url + "label/results?annotator=Kbd%20%3Ci%3EAda%3C%2Fi%3E")
        assert page.locator("h1").inner_text().endswith("Kbd <i>Ada</i>")  # shown as text, not markup
        assert api["n"] == 20
        for who in ("human", "cnn"):
            for k in (1, 5):
                assert page.locator(f".label-{who}-top{k}").inner_text() == _pct(api[who][f"top{k}_error"])
        for table, key, suffix in (("top5", "table", ""), ("top1", "table_top1", "_top1")):
            for cell, count in api[key].items():
                shown = page.locator(f"table[data-table='{table}'] td[data-cell='{cell}'] .label-cell-count").inner_text()
                assert int(shown) == count, (key, cell)
            assert page.locator(f".label-p[data-table='{table}']").inner_text() == f"p = {api['mcnemar_p' + suffix]:.3g}"
        assert errors == []
        page.close()


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A run with the 1,000 ImageNet classes (a tiny random net, so that it is fast) and a folder of 18 test images
    in three of them: no training split, so the examples are the test images that are not in the session."""
    from PIL import Image

    root = tmp_path_factory.mktemp("label1k")
    rng = np.random.default_rng(0)
    for c in ("tabby", "espresso", "goldfish"):
        (root / "photos" / c).mkdir(parents=True)
        for k in range(6):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / "photos" / c / f"{k}.png")
    return convlens.wrap("CONV3-8,RELU,GAP,FC-1000", root / "run", input_shape=(3, 32, 32),
                         class_names=list(convlens.imagenet_classes()), data=str(root / "photos"))


def test_a_thousand_classes_filter_at_once_and_examples_load_lazily(imagenet_like, context):
    from convlens.web import create_app

    with serving(create_app(imagenet_like.dir)) as url:
        page = context.new_page()
        errors = watch_console(page)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url) if "/label/png/" in r.url and "/images/" not in r.url else None)
        sid = page.request.post(url + "api/label/sessions", data={"annotator": "k", "n": 4}).json()["session"]
        examples = page.request.get(url + f"api/label/sessions/{sid}/examples").json()
        page.goto(url + f"label/sessions/{sid}")
        assert page.locator("#label-classes li").count() == 1000
        page.wait_for_function("document.getElementById('label-examples-source').textContent !== ''")
        page.wait_for_timeout(300)
        tabby = list(convlens.imagenet_classes()).index("tabby")
        assert examples["counts"][tabby] > 0
        assert not [u for u in requested if f"/{tabby}/" in u.split(sid, 1)[1]]  # off screen: not loaded
        ms = page.evaluate("""() => {
            const f = document.getElementById('label-filter'), t0 = performance.now();
            for (const q of ['t', 'ta', 'tab', 'tabb', 'tabby']) { f.value = q; f.dispatchEvent(new Event('input')); }
            return (performance.now() - t0) / 5; }""")
        assert ms < 100, f"filtering 1,000 classes took {ms:.1f} ms per keystroke"
        visible = page.locator("#label-classes li:not([hidden])").all_inner_texts()
        assert visible and all("tabby" in v.lower() for v in visible)
        page.wait_for_function(f"document.querySelectorAll('#label-class-{tabby} img').length === {examples['counts'][tabby]}")
        page.wait_for_timeout(300)
        assert [u for u in requested if f"/{tabby}/" in u.split(sid, 1)[1]]  # on screen: loaded
        assert len(requested) <= sum(examples["counts"])  # each example at most once
        page.keyboard.press("Enter")  # typing happened in the filter: Enter adds the highlighted class
        assert page.locator("#label-picks li").first.inner_text().startswith("tabby")
        assert errors == []
        page.close()
