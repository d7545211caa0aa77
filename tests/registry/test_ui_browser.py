"""The MLflow UI in a real browser: a person can walk a family of variants there.

A short quickstart-like run (create, fine-tune, LoRA adapter, merge on the
`tiny` model) makes a family; `gpt2reg ui` serves it, and headless Chromium
(Debian's `chromium`, driven by Playwright) opens the experiment at the address
`gpt2reg ui` prints, the registered models page, a model version's page and its
link to the parent version, a variant's logged model, and the run page of a
variant with a parent and a child. Screenshots are saved to
`test-output/mlflow-ui/` at the repository root.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.registry.test_ui import UiServer

CHROMIUM = Path("/usr/bin/chromium")
# The machine may have no network: without these flags Chromium reaches out to Google's
# services at start-up and waits on them.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "test-output" / "mlflow-ui"
WAIT_MS = 180_000  # the UI's first load parses megabytes of JavaScript: slow on a busy machine


@pytest.fixture(scope="module")
def family(tmp_path_factory, text_file):
    """A home holding base/1 -> base-finetune/1 -> base-finetune-lora/1 -> base-finetune-lora-merge/1,
    served by `gpt2reg ui`; yields the registry and the server."""
    from registry import Registry

    home = tmp_path_factory.mktemp("ui-family")
    heldout = home.parent / "heldout.txt"
    heldout.write_text(text_file.read_text(encoding="utf-8")[:2000], encoding="utf-8")
    reg = Registry(home).init()
    server = UiServer(home)  # starts while the variants are made: MLflow's start-up overlaps the training
    try:
        training = {"data": [str(text_file)], "val_data": [str(heldout)], "steps": 2, "batch_size": 2, "seq_len": 32,
                    "checkpoint_every": 0}
        base = reg.create("base", config="tiny", seed=0)
        tuned = reg.run("finetune", base, **training)
        adapter = reg.run("lora", tuned, rank=2, **training)
        reg.run("merge", adapter)
        yield reg, server
    finally:
        server.stop()
        reg.close()


@pytest.fixture(scope="module")
def page(family):
    if not CHROMIUM.is_file():
        pytest.fail(f"the MLflow UI test needs Debian's Chromium at {CHROMIUM}: install it with "
                    "`apt-get install chromium` (CI does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the MLflow UI test needs Playwright: pip install -e '.[test]'")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            opened = browser.new_page(viewport={"width": 1400, "height": 900})
            opened.set_default_timeout(WAIT_MS)
            yield opened
        finally:
            browser.close()


def _screenshot(page, name: str) -> Path:
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _dismiss_announcements(page, wait_ms: int = 0) -> None:
    """Close what MLflow shows a new visitor over the page (the new model registry UI's
    announcement on the models page, the assistant panel), so the screenshots show the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    announcement = page.get_by_role("button", name="Try it now")
    try:
        announcement.wait_for(timeout=wait_ms) if wait_ms else None
        if announcement.is_visible():
            announcement.click()
    except PlaywrightTimeout:
        pass  # not announced to this visitor
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() == 1 and close.is_visible():
        close.click()


def test_the_registered_models_page_lists_every_variant(family, page):
    reg, server = family
    names = sorted({v.name for v in reg.list()})
    assert names == ["base", "base-finetune", "base-finetune-lora", "base-finetune-lora-merge"]
    assert server.registered_models() == names  # the API answers: the server is up
    page.goto(f"{server.url}/#/models")
    for name in names:
        page.get_by_role("link", name=name, exact=True).wait_for()
    _dismiss_announcements(page, wait_ms=15_000)  # it opens a moment after the table
    _screenshot(page, "registered-models.png")


def test_a_version_page_links_its_parent_and_the_link_opens_the_parent_version(family, page):
    reg, server = family
    server.registered_models()
    page.goto(f"{server.url}/#/models/base-finetune-lora-merge/versions/1")
    parent_link = page.get_by_role("link", name="base-finetune-lora/1", exact=True)
    parent_link.wait_for()
    assert parent_link.get_attribute("href") == "#/models/base-finetune-lora/versions/1"
    page.get_by_text("gpt2reg.operation", exact=True).wait_for()  # the tags naming operation and parent
    _dismiss_announcements(page)
    _screenshot(page, "version-with-parent-link.png")

    # MLflow opens a description's links in a new tab.
    with page.context.expect_page() as opened:
        parent_link.click()
    parent_page = opened.value
    try:
        parent_page.set_default_timeout(WAIT_MS)
        parent_page.wait_for_load_state()
        assert parent_page.url == f"{server.url}/#/models/base-finetune-lora/versions/1"
        # The adapter's own version page: its description links its own parent, the fine-tuned model.
        parent_page.get_by_role("link", name="base-finetune/1", exact=True).wait_for()
        parent_page.get_by_role("link", name="base-finetune-lora", exact=True).wait_for()  # the breadcrumb
    finally:
        parent_page.close()


def test_a_run_page_shows_the_lineage_picture_and_the_sample_generations(family, page):
    reg, server = family
    server.registered_models()
    tuned = reg.get("base-finetune/1")  # parent base/1, child base-finetune-lora/1
    page.goto(f"{server.url}/#/models/base-finetune/versions/1")
    page.get_by_role("link", name="base-finetune (finetune)").click()  # "Source run"
    page.wait_for_url(f"**/runs/{tuned.run_id}**")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("lineage", exact=True).click()
    page.get_by_text("lineage.png", exact=True).click()
    picture = page.get_by_alt_text("lineage/lineage.png")
    picture.wait_for()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=picture.element_handle())
    _dismiss_announcements(page)
    _screenshot(page, "run-with-lineage-picture.png")

    # The picture the page shows, as the server hands it out, is drawn with the parent and the child.
    artifact = f"{server.url}/get-artifact?run_uuid={tuned.run_id}&path=lineage/"
    with urllib.request.urlopen(artifact + "lineage.json", timeout=30) as answer:
        drawn = json.load(answer)
    assert {(e["parent"], e["child"]) for e in drawn["edges"]} == {
        ("base/1", "base-finetune/1"), ("base-finetune/1", "base-finetune-lora/1")}
    with urllib.request.urlopen(artifact + "lineage.png", timeout=30) as answer:
        png = answer.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (SCREENSHOTS / "lineage-of-base-finetune-1.png").write_bytes(png)
    print(f"lineage picture: {SCREENSHOTS / 'lineage-of-base-finetune-1.png'}")

    page.get_by_text("samples.json", exact=True).click()
    page.get_by_role("cell", name="The meaning of life is", exact=True).wait_for()  # shown as a table
    _screenshot(page, "run-with-sample-generations.png")


def test_the_experiment_opens_in_the_model_training_view(family, page):
    """The address `gpt2reg ui` prints opens the runs and their models, not MLflow 3's GenAI overview."""
    import re

    reg, server = family
    server.registered_models()
    printed = re.search(r"the registry's experiment: (\S+)", server.output(last=None))
    assert printed, server.output(last=None)[:3000]
    page.goto(printed.group(1))
    page.get_by_text("base-finetune (finetune)", exact=True).first.wait_for()  # a run, in the runs table
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    page.get_by_text("Models", exact=True).first.wait_for()  # the view's own pages: runs, models
    assert page.get_by_text("No data available for the selected time range").count() == 0  # not the GenAI overview
    _dismiss_announcements(page)
    _screenshot(page, "experiment-model-training-view.png")


def test_a_logged_model_shows_its_perplexity_and_its_data_sets(family, page):
    """A full variant is an MLflow logged model: its page lists its figures, each with the data set it was
    measured on (the training loss on the training text, the perplexity on the held-out text)."""
    reg, server = family
    server.registered_models()
    tuned = reg.get("base-finetune/1")
    (model,) = reg.tracker.logged_models_of(tuned.run_id)
    page.goto(f"{server.url}/#/experiments/{reg.tracker.experiment_id}/models/{model.model_id}")
    page.get_by_text("perplexity", exact=True).first.wait_for()
    assert str(tuned.metrics["perplexity"])[:5] in page.inner_text("body")  # its value (the page may round the tail)
    page.get_by_text("sample.txt", exact=False).first.wait_for()  # the training data set
    page.get_by_text("heldout.txt", exact=False).first.wait_for()  # the held-out one
    page.get_by_text("Model versions", exact=True).wait_for()
    assert "Model versions\nbase-finetune\nv1" in page.inner_text("body")  # the version made from it
    _dismiss_announcements(page)
    _screenshot(page, "logged-model-with-metrics-and-data-sets.png")


def test_a_version_page_shows_its_figures_and_its_logged_model(family, page):
    reg, server = family
    server.registered_models()
    tuned = reg.get("base-finetune/1")
    page.goto(f"{server.url}/#/models/base-finetune/versions/1")
    page.get_by_text("measured on", exact=True).wait_for()  # the description's table of figures
    page.get_by_role("cell", name="perplexity", exact=True).wait_for()
    page.get_by_role("cell", name=f"{tuned.metrics['perplexity']:,.4g}", exact=True).wait_for()
    page.get_by_text("Source Model", exact=False).first.wait_for()  # MLflow links the version to its logged model
    _dismiss_announcements(page)
    _screenshot(page, "version-with-figures.png")
