"""A walk through the explorer in a real browser (Debian's chromium through Playwright), as a newcomer does it:
clicks from the model to a layer, a unit and an image, the keyboard between units and layers, an upload, an
occlusion job waited for in the page; then every page type on a model of one's own wrapped with ``convlens
wrap`` (a 1-channel, non-square net), without console errors."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.web.browser import browser, serving, watch_console
from tests.web.test_image_pages import wrapped_gray_run

pytestmark = pytest.mark.slow
JOB_WAIT_MS = 180_000  # a job page reloads itself when its job ends


def _settled(page) -> None:
    """Wait until the page shows no running job (it reloads itself when one ends)."""
    page.wait_for_load_state("load")
    page.wait_for_function("document.querySelectorAll('.job').length === 0", timeout=JOB_WAIT_MS)
    page.wait_for_load_state("load")


@pytest.fixture(scope="module")
def site(demo_copy, tmp_path_factory):
    from convlens.web import create_app

    run = tmp_path_factory.mktemp("walk") / "demo"
    shutil.copytree(demo_copy, run)  # jobs write results: a copy of the module's own
    with serving(create_app(run)) as url, browser() as context:
        yield url, context, run


@pytest.fixture
def page(site):
    url, context, run = site
    page = context.new_page()
    page.errors = watch_console(page)
    page.base, page.run = url, run
    yield page
    page.close()


def test_click_from_the_model_to_a_layer_a_unit_and_an_image(page):
    page.goto(page.base)
    page.locator("table.layers a[href$='layers/conv3']").first.click()
    page.wait_for_url(re.compile(r"/layers/conv3$"))
    _settled(page)
    page.locator("a[href$='layers/conv3/units/3']").first.click()
    page.wait_for_url(re.compile(r"/layers/conv3/units/3$"))
    _settled(page)
    assert page.locator("text=Top 9 patches").count() >= 1
    link = page.locator("a[href*='images/t']").first
    image_id = re.search(r"images/(t\d+)", link.get_attribute("href")).group(1)
    link.click()
    page.wait_for_url(re.compile(f"/images/{image_id}$"))
    _settled(page)
    assert page.locator("#occlusion").count() == 1
    assert page.errors == []


def test_the_keyboard_moves_between_units_and_layers(page):
    page.goto(page.base + "layers/conv2/units/5")
    _settled(page)
    for key, url in (("ArrowRight", r"/layers/conv2/units/6$"), ("ArrowLeft", r"/layers/conv2/units/5$"),
                     ("]", r"/layers/conv3$"), ("u", r":\d+/$")):  # a unit's ] opens the next layer, u the model
        page.keyboard.press(key)
        page.wait_for_url(re.compile(url))
        _settled(page)  # a page that ran a job reloads itself when it ends: the next key goes to the new page
    assert page.errors == []


def test_an_upload_opens_its_image_page(page, tmp_path):
    rng = np.random.default_rng(3)
    picture = tmp_path / "mine.png"
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(picture)
    page.goto(page.base + "images")
    page.set_input_files("#upload-file", str(picture))
    page.locator("#upload-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/images/u[0-9a-f]+$"))
    new = page.url.rsplit("/", 1)[1]
    assert (page.run / "uploads" / f"{new}.png").is_file()
    assert page.locator("h1").inner_text().endswith(new)
    assert np.asarray(Image.open(page.run / "uploads" / f"{new}.png")).shape == (64, 64, 3)  # the demo's input
    assert page.errors == []


def test_an_occlusion_job_is_waited_for_in_the_page(page):
    page.goto(page.base + "images/t11")
    _settled(page)
    page.get_by_role("button", name=re.compile("Compute the occlusion map")).click()
    _settled(page)
    shown = page.locator("#occlusion img[alt^='probability of']")
    assert shown.count() == 1
    shown.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown.element_handle())
    assert any(p.name.startswith("occlusion") and p.suffix == ".json" for p in (page.run / "results").iterdir())
    assert page.errors == []


def test_every_page_type_of_a_wrapped_user_model(site, tmp_path):
    from convlens.web import create_app

    run = wrapped_gray_run(tmp_path, per_class=6)
    paths = ["", "layers/conv1", "layers/conv2/units/3", "images", "images/t4", "codes", "label"]
    context = site[1]  # the module's browser (Playwright's sync API runs one at a time)
    with serving(create_app(run)) as url:
        page = context.new_page()
        errors = watch_console(page)
        for path in paths:
            response = page.goto(url + path)
            assert response.status == 200, path
            _settled(page)
            assert page.locator("h1").count() >= 1, path
        page.close()
        assert errors == []
