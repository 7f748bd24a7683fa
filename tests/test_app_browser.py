"""End to end: `ovss app` on a free local port with a tiny random CLIP, driven by a real headless Chromium
(Debian's /usr/bin/chromium through the playwright package; nothing is downloaded by a test tool).

Screenshots land in $OVSS_TEST_ARTIFACTS (default: <repo>/artifacts/app/)."""
from __future__ import annotations

import json
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO, "src", "ovss", "resources", "samples")
ARTIFACTS = os.environ.get("OVSS_TEST_ARTIFACTS") or os.path.join(REPO, "artifacts", "app")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
pytest.importorskip("gradio", reason="gradio is missing (pip install 'ovss[app]')")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from appserver import app_server  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real command line, offline, on empty caches: `ovss app --clip tiny-test --clip-weights random`."""
    with app_server(tmp_path_factory.mktemp("app_server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server["url"], wait_until="domcontentloaded")
    pg.wait_for_selector("#ovss-run")
    yield pg
    ctx.close()


def _shot(pg, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    pg.screenshot(path=path, full_page=True)
    return path


def _upload(pg, path: str) -> None:
    remove = pg.locator("#ovss-image button[aria-label='Remove Image']")
    if remove.count():
        remove.click()
    pg.locator("#ovss-image input[type=file]").set_input_files(path)
    pg.wait_for_selector(f"#ovss-image img[src$='{os.path.basename(path)}']")


def _choose(pg, elem_id: str, value: str) -> None:
    pg.locator(f"#{elem_id} input").click()
    pg.locator("ul[role=listbox] li", has_text=value).first.click()
    expect(pg.locator(f"#{elem_id} input")).to_have_value(value)


def _run(pg, expected: str) -> str:
    """Click Segment and wait for `expected` in the status box; returns the status text."""
    pg.locator("#ovss-run").click()
    pg.wait_for_function("t => document.querySelector('#ovss-status').innerText.includes(t)", arg=expected)
    return pg.locator("#ovss-status").inner_text()


def _table(pg) -> list[list[str]]:
    rows = pg.locator("#ovss-table [role=row]").all()
    out = [[c.inner_text().strip() for c in r.locator("[role=gridcell]").all()] for r in rows]
    return [r for r in out if r]


def test_segment_a_sample_and_see_overlay_table_and_downloads(page, server):
    _upload(page, os.path.join(SAMPLES, "frog.jpg"))
    page.locator("#ovss-classes textarea").fill("frog, water, turtle, snail")
    _choose(page, "ovss-method", "sclip")
    status = _run(page, "Done")
    assert "1024 x 1024 image, 4 classes, sclip on tiny-test" in status

    # the overlay: a real decoded image, 1024 high, wider than the photo by the legend column
    overlay = page.locator("#ovss-overlay img")
    expect(overlay).to_be_visible()
    size = overlay.evaluate("img => img.complete ? [img.naturalWidth, img.naturalHeight] : null")
    assert size is not None and size[1] == 1024 and size[0] > 1024
    lm = page.locator("#ovss-labels img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert lm == [1024, 1024]

    # the class table: every class, area in % summing to 100, scores in (0, 1]
    rows = _table(page)
    assert sorted(r[1] for r in rows) == ["frog", "snail", "turtle", "water"]
    assert sum(float(r[3]) for r in rows) == pytest.approx(100, abs=0.05)
    assert all(0 < float(r[4]) <= 1 for r in rows if float(r[3]) > 0)
    assert all(r[2].startswith("#") and len(r[2]) == 7 for r in rows)

    # downloads: the label PNG and the JSON, whose areas match the table
    links = page.locator("#ovss-files a")
    expect(links).to_have_count(2)
    hrefs = [links.nth(i).get_attribute("href") for i in range(2)]
    assert hrefs[0].endswith("frog_labels.png") and hrefs[1].endswith("frog.json")
    info = json.loads(page.request.get(hrefs[1]).body())
    assert info["classes"] == ["frog", "water", "turtle", "snail"] and info["method"] == "sclip"
    for r in rows:
        assert 100 * info["areas"].get(r[1], 0.0) == pytest.approx(float(r[3]), abs=0.006)
    png = page.request.get(hrefs[0])
    assert png.ok and png.body()[:8] == b"\x89PNG\r\n\x1a\n"

    shot = _shot(page, "app_result.png")
    assert os.path.getsize(shot) > 10_000

    # a second run with the same classes reuses the model and the text embeddings
    status = _run(page, "text embeddings: cached")
    assert "model: already loaded" in status


def test_bad_input_shows_a_message_and_the_app_keeps_serving(page, server, tmp_path):
    from PIL import Image
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"this is not a JPEG" * 50)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (1600, 1500)).save(huge)

    status = _run(page, "Error")
    assert "no image: upload one" in status
    _upload(page, os.path.join(SAMPLES, "horses_1024.jpg"))
    status = _run(page, "no classes")
    assert status.startswith("Error: no classes: type the class names")
    _shot(page, "app_error_no_classes.png")

    page.locator("#ovss-classes textarea").fill("horse, grass, sky")
    _upload(page, str(broken))
    assert "holiday.jpg: not a readable image" in _run(page, "not a readable image")
    _upload(page, str(huge))
    assert "1600 x 1500 = 2.4 megapixels; this app accepts up to 2.0" in _run(page, "too large")

    # weights missing offline: proxyclip needs DINO ViT-B/8, which this machine does not have
    _upload(page, os.path.join(SAMPLES, "horses_1024.jpg"))
    _choose(page, "ovss-method", "proxyclip")
    status = _run(page, "ovss weights download dino_vitb8")
    assert "[dino_vitb8] are not on this machine" in status
    _shot(page, "app_error_weights.png")
    assert "error" in (page.locator("#ovss-status").get_attribute("class") or "").split()

    text = page.locator("body").inner_text()
    assert "Traceback" not in text and 'File "' not in text
    assert page.locator("#ovss-overlay img").count() == 0       # no stale result next to an error

    _choose(page, "ovss-method", "clip")
    assert "3 classes, clip on tiny-test" in _run(page, "Done")
    expect(page.locator("#ovss-overlay img")).to_be_visible()


def test_advanced_panel_passes_edited_parameters(page, server):
    page.locator("#ovss-advanced").get_by_text("Advanced").click()
    row = page.locator("#ovss-params [role=row]", has=page.locator("[role=gridcell]", has_text="logit_scale"))
    expect(row.locator("[data-col='2']")).to_have_text("40.0")          # the default is shown
    row.locator("[data-col='1']").dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type("55")
    page.keyboard.press("Enter")
    _upload(page, os.path.join(SAMPLES, "bear_case.jpg"))
    page.locator("#ovss-classes textarea").fill("river; grass, lawn; bear")
    status = _run(page, "Done")
    assert "3 classes, clip on tiny-test, logit_scale=55.0" in status

    row = page.locator("#ovss-params [role=row]", has=page.locator("[role=gridcell]", has_text="slide_crop"))
    row.locator("[data-col='1']").dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type("big")
    page.keyboard.press("Enter")
    assert "advanced parameter slide_crop: expected an integer, got 'big'" in _run(page, "slide_crop")


def test_compare_tab_shows_a_grid_and_a_table(page, server):
    page.locator("#ovss-tab-compare-button, button[role=tab]:has-text('Compare')").first.click()
    remove = page.locator("#ovss-c-image button[aria-label='Remove Image']")
    if remove.count():
        remove.click()
    page.locator("#ovss-c-image input[type=file]").set_input_files(os.path.join(SAMPLES, "horses_1024.jpg"))
    page.wait_for_selector("#ovss-c-image img[src$='horses_1024.jpg']")
    page.locator("#ovss-c-classes textarea").fill("sky, hill, tree, horse, grass")
    boxes = page.locator("#ovss-c-methods label")
    for name in ("clip", "sclip", "naclip", "proxyclip"):    # proxyclip: no DINO weights offline -> a failed cell
        box = boxes.filter(has_text=name).first.locator("input")
        if not box.is_checked():
            box.check()
    for name in [t.strip() for t in boxes.all_inner_texts()]:
        if name not in ("clip", "sclip", "naclip", "proxyclip"):
            box = boxes.filter(has_text=name).first.locator("input")
            if box.is_checked():
                box.uncheck()
    page.locator("#ovss-c-run").click()
    page.wait_for_function("() => document.querySelector('#ovss-c-status').innerText.includes('methods ran')")
    status = page.locator("#ovss-c-status").inner_text()
    assert "3 of 4 methods ran" in status and "failed: proxyclip" in status
    grid = page.locator("#ovss-c-grid img")
    expect(grid).to_be_visible()
    w, h = grid.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert w > 2 * 360 and h > 2 * 200          # 2 x 2 cells + the legend
    rows = page.locator("#ovss-c-table [role=row]").all()
    cells = [[c.inner_text().strip() for c in r.locator("[role=gridcell]").all()] for r in rows]
    cells = [c for c in cells if c]
    assert sorted(c[0] for c in cells) == ["clip", "naclip", "proxyclip", "sclip"]
    failed = next(c for c in cells if c[0] == "proxyclip")
    assert "failed" in failed[2] and "ovss weights download dino_vitb8" in failed[2]
    assert all(float(c[1]) > 0 for c in cells if c[0] != "proxyclip")
    links = page.locator("#ovss-c-files a")
    expect(links).to_have_count(2)
    shot = _shot(page, "app_compare.png")
    assert os.path.getsize(shot) > 10_000
