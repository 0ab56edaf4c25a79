"""The live storefront in a real headless Chromium (Debian's chromium and chromium-driver), closing the
loop: the page shows a shopper's list, a click sends a `cart` event into the input topic, the job ranks a
new list, `streamrec serve` follows it and pushes it to the page (server-sent events). The items' titles,
brands and prices come from a catalog topic the service follows.

Saves test-results/storefront.png once the new list is on the page (a test run never
rewrites tracked files; docs/storefront.png, which docs/serve.md shows, is a copy of one).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from streamrec.kafka_io import consume, produce, replay
from streamrec.lab.local.serve_process import ServeProcess, get_json
from tests.conftest import _missing
from tests.support.job_fixtures import generated_log
from udfs.artifact import load_artifact
from udfs.catalog import CatalogItem, catalog_key, encode_catalog_item

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-results" / "storefront.png"


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        _missing("Chromium is missing: `make browser` (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_click_on_the_page_produces_an_event_and_the_new_list_arrives(kafka_broker, unique_topic, kafka_jobs,
                                                                       fixture_artifact, browser, tmp_path):
    from selenium.webdriver.common.by import By

    topics = {f: unique_topic(f.split("_")[0]) for f in ("input_topic", "output_topic", "dlq_topic", "late_topic")}
    job = kafka_jobs(topics)
    events = generated_log(300, seed=5)
    replay(events, kafka_broker.bootstrap, topics["input_topic"])
    shopper = events[-1].user_id

    def shopper_listed() -> bool:
        assert job.poll() is None, "job died"
        return any(r.value["user_id"] == shopper for r in consume(
            kafka_broker.bootstrap, topics["output_topic"], timeout_s=2, group_id="t-" + topics["output_topic"]))

    _wait(shopper_listed, 240, f"the job's list for shopper {shopper}")

    # the service's own catalog topic (the job's stays as it is): a title, brand and price per item
    catalog_topic = unique_topic("catalog")
    known = load_artifact(fixture_artifact).tables.item_category
    produce(kafka_broker.bootstrap, catalog_topic, [
        (catalog_key(item).encode(), encode_catalog_item(CatalogItem(
            item_id=item, category_id=category, brand=f"Brand {category}", price=5.0 + sum(map(ord, str(item))) % 40,
            stock=None, title=f"Product {item}", updated_at=1_700_000_000_000))) for item, category in known.items()])
    serve = ServeProcess(kafka_broker.bootstrap, topics["input_topic"], topics["output_topic"],
                         tmp_path / "serve.sqlite", tmp_path / "serve.log", artifact=fixture_artifact,
                         settings={"kafka": {"catalog_topic": catalog_topic}, "serve": {"accept_events": True}})
    serve.start()
    try:
        _wait(lambda: get_json(f"{serve.base}/healthz")[1]["catalog"]["items"] == len(known), 60, "the catalog")
        browser.get(f"{serve.base}/?user={shopper}")
        listed = browser.find_element(By.ID, "list")
        _wait(lambda: listed.get_attribute("data-seq") not in ("", "trending"), 30, "the shopper's list on the page")
        _, body = get_json(f"{serve.base}/v1/users/{shopper}/recommendations")
        first_seq = listed.get_attribute("data-seq")
        assert first_seq == str(body["seq"]) and body["known"]
        cards = browser.find_elements(By.CSS_SELECTOR, "#list .card")
        assert len(cards) == len(body["items"])
        assert [c.find_element(By.CLASS_NAME, "why").text for c in cards] == [i["because"] for i in body["items"]]
        listed_items = [i for i in body["items"] if i["item_id"] in known]
        assert listed_items, "no listed item is in the catalog"
        shown = {c.get_attribute("data-item"): c for c in cards}
        for item in listed_items:
            card = shown[str(item["item_id"])]
            assert item["title"] == f"Product {item['item_id']}"
            assert card.find_element(By.CLASS_NAME, "title").text == item["title"]
            assert card.find_element(By.CLASS_NAME, "brand").text == item["brand"]
            assert card.find_element(By.CLASS_NAME, "price").text == f"{item['price']:.2f}"

        clicked = cards[1].get_attribute("data-item")
        cards[1].find_element(By.CLASS_NAME, "act-cart").click()
        _wait(lambda: listed.get_attribute("data-seq") not in (first_seq, ""), 120,
              "the list the job made after the click")
        _, after = get_json(f"{serve.base}/v1/users/{shopper}/recommendations")
        assert after["seq"] > int(first_seq)
        assert after["trigger"]["behavior"] == "cart" and str(after["trigger"]["item_id"]) == clicked
        meta = browser.find_element(By.ID, "meta").text
        assert f"cart of item {clicked}" in meta and after["model_version"] in meta
        assert "sent cart of item " + clicked in browser.find_element(By.ID, "log").text
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
    finally:
        serve.stop()
    assert job.poll() is None, "job died"
