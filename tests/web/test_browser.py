"""The explorer in a real browser (Debian's chromium through Playwright): pages open without console
errors, links and the keyboard walk model -> layer -> unit -> image, an upload, an occlusion job, the
image page's SmoothGrad and Integrated Gradients job started from the keyboard."""
from __future__ import annotations

import pytest

from tests.web.browser import browser, serving, watch_console

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(demo_copy):
    from convlens.web import create_app

    with serving(create_app(demo_copy)) as url, browser() as context:
        yield url, context


@pytest.fixture
def page(site):
    url, context = site
    page = context.new_page()
    page.errors = watch_console(page)
    page.base = url
    yield page
    page.close()


def test_the_model_page_opens_without_console_errors(page):
    page.goto(page.base)
    assert "GrammarNet" in page.title()
    assert page.locator("table.layers tbody tr").count() >= 5
    assert page.errors == []


def test_question_mark_opens_the_keyboard_help(page):
    page.goto(page.base)
    assert not page.locator("#help").is_visible()
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()
    assert page.errors == []


def test_an_unknown_page_is_a_404_page_in_the_browser(page):
    response = page.goto(page.base + "layers/conv33")
    assert response.status == 404
    assert "conv3" in page.content()


def test_the_image_pages_attribution_maps_by_keyboard(page):
    page.goto(page.base + "images/t5")
    cam = page.locator("#attribution img[alt^='Grad-CAM for']")
    cam.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=cam.element_handle())
    button = page.get_by_role("button", name="Compute SmoothGrad and Integrated Gradients", exact=False)
    button.focus()
    page.keyboard.press("Enter")  # the form's button: a job, its progress, then the page again with the maps
    ig = page.locator("#attribution img[alt^='Integrated Gradients for']")
    ig.wait_for(state="visible", timeout=120_000)
    assert "Completeness error" in page.locator("#map-ig").inner_text()
    assert page.errors == []
