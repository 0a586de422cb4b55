"""The search page in a real browser: Debian's Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from clipsearch.quality.reading import read_truth
from clipsearch.store.bundle import load_bundle
from clipsearch.store.ocr_text import readable_text
from tests.support.browser import CHROMIUM, chromium
from tests.support.serving import LIMITS, serve

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install '.[dev]')")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); browser tests not run",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture()
def page(browser: Any, server_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.goto(server_url)
    sync_api.expect(opened.locator("#info")).to_contain_text("30 images")
    yield opened
    context.close()


def status(page: Any) -> Any:
    return page.locator("#status")


def test_a_text_search_shows_result_cards_with_thumbnails(page: Any) -> None:
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("12 results")
    cards = page.locator(".card")
    sync_api.expect(cards).to_have_count(12)
    first_image = cards.first.locator("img")
    sync_api.expect(first_image).to_have_attribute("src", f"/items/{cards.first.get_attribute('data-id')}/image")
    page.wait_for_function("document.querySelector('.card img').naturalWidth > 0")
    sync_api.expect(cards.first.locator(".score")).to_contain_text("score ")


def test_an_uploaded_image_finds_itself_first(page: Any, corpus_dir: Path) -> None:
    page.set_input_files("#query-file", str(corpus_dir / "images" / "picture_000.png"))
    sync_api.expect(status(page)).to_contain_text("results in")
    sync_api.expect(page.locator("#image-query")).to_be_visible()
    first = page.locator(".card").first
    sync_api.expect(first.locator(".source")).to_contain_text("picture_000.png")
    sync_api.expect(first.locator(".caption")).to_have_text("caption of picture 0")


def test_clicking_a_result_searches_for_more_like_it(page: Any) -> None:
    page.fill("#query-text", "anything")
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("results in")
    chosen = page.locator(".card").nth(3)
    chosen_id = chosen.get_attribute("data-id")
    chosen.locator("button.thumb").click()
    sync_api.expect(page.locator("#image-query-label")).to_have_text(f"More like item {chosen_id}")
    sync_api.expect(page.locator(".card").first).to_have_attribute("data-id", chosen_id)
    sync_api.expect(page.locator(".card").first.locator(".score")).to_have_text("score 1.000")


def test_an_image_query_can_be_refined_with_weighted_text(page: Any, corpus_dir: Path) -> None:
    page.set_input_files("#query-file", str(corpus_dir / "images" / "picture_002.png"))
    sync_api.expect(status(page)).to_contain_text("results in")
    sync_api.expect(page.locator("#text-weight")).to_be_visible()
    with page.expect_request(lambda request: request.url.endswith("/search") and request.method == "POST") as sent:
        page.fill("#query-text", "at night")
        page.press("#query-text", "Enter")
    body = sent.value.post_data_json
    assert [sorted(term) for term in body["queries"]] == [["image_b64", "weight"], ["text", "weight"]]
    assert body["queries"][1] == {"text": "at night", "weight": 0.5}
    sync_api.expect(status(page)).to_contain_text("results in")


def test_why_shows_a_heatmap_over_the_result(page: Any) -> None:
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("results in")
    card = page.locator(".card").first
    card.locator("button.why").click()
    overlay = card.locator(".explanation img")
    sync_api.expect(overlay).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    page.wait_for_function("document.querySelector('.explanation img').naturalWidth >= 224")
    sync_api.expect(card.locator("button.why")).to_have_attribute("aria-expanded", "true")
    card.locator("button.why").click()
    sync_api.expect(card.locator(".explanation")).to_have_count(0)


def test_a_refined_image_query_shows_each_parts_share_of_the_score(page: Any, corpus_dir: Path) -> None:
    page.set_input_files("#query-file", str(corpus_dir / "images" / "picture_002.png"))
    sync_api.expect(status(page)).to_contain_text("results in")
    page.fill("#query-text", "at night")
    page.press("#query-text", "Enter")
    sync_api.expect(page.locator(".card").first.locator(".shares")).to_contain_text("image ")
    sync_api.expect(page.locator(".card").first.locator(".shares")).to_contain_text("“at night”")


def test_typed_labels_show_on_each_image_result(page: Any) -> None:
    page.fill("#labels", "noise, a cat")
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("results in")
    sync_api.expect(page.locator(".card").first.locator(".labels")).to_contain_text("%")


def test_texts_can_be_found_instead_of_images(page: Any) -> None:
    page.check("input[name=target][value=text]")
    page.fill("#query-text", "a sentence about thing number 4")
    page.press("#query-text", "Enter")
    sync_api.expect(page.locator(".card").first.locator(".snippet")).to_have_text("a sentence about thing number 4")


def test_matching_by_words_or_both_shows_where_each_result_was_found(page: Any) -> None:
    page.check("input[name=target][value=text]")
    page.fill("#query-text", "thing number 4")
    page.check("input[name=mode][value=keyword]")
    first = page.locator(".card").first
    sync_api.expect(first.locator(".snippet")).to_have_text("a sentence about thing number 4")
    sync_api.expect(first.locator(".ranks")).to_have_text("words #1")
    page.check("input[name=mode][value=hybrid]")
    sync_api.expect(page.locator(".card").first.locator(".ranks")).to_contain_text("meaning #")


def test_an_invalid_upload_shows_the_servers_error(page: Any) -> None:
    page.set_input_files("#query-file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                                "buffer": b"these are notes, not a picture"}])
    sync_api.expect(status(page)).to_have_text(
        "Search failed: file: not an image in an accepted format (JPEG, PNG, WEBP, BMP, GIF)")
    sync_api.expect(status(page)).to_have_class("error")
    sync_api.expect(page.locator(".card")).to_have_count(0)


def test_a_filter_chip_narrows_the_results_and_removing_it_widens_them_again(page: Any) -> None:
    page.fill("#query-text", "a photo of noise")
    page.fill("#filter-input", "number>=9")
    page.press("#filter-input", "Enter")
    chip = page.locator("#filter-chips .chip")
    sync_api.expect(chip).to_have_text("number >= 9 ×")
    sync_api.expect(status(page)).to_contain_text("7 results of 7 matching items")
    captions = page.locator(".card .caption").all_text_contents()
    assert len(captions) == 7 and all(int(caption.rsplit(" ", 1)[1]) >= 9 for caption in captions)
    chip.click()
    sync_api.expect(status(page)).to_contain_text("12 results in")


def test_a_negated_filter_and_a_value_typed_as_text_both_work(page: Any) -> None:
    page.fill("#query-text", "a photo of noise")
    page.fill("#filter-input", "number!=0, number!=3")
    page.click("#add-filter")
    sync_api.expect(page.locator("#filter-chips .chip")).to_have_count(2)
    sync_api.expect(status(page)).to_contain_text("of 28 matching items")


def test_more_results_loads_the_next_page_until_there_are_no_more(page: Any) -> None:
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(page.locator(".card")).to_have_count(12)
    page.click("#more")
    sync_api.expect(page.locator(".card")).to_have_count(24)
    page.click("#more")
    sync_api.expect(page.locator(".card")).to_have_count(30)
    sync_api.expect(page.locator("#more")).to_be_hidden()
    ids = page.eval_on_selector_all(".card", "cards => cards.map(card => card.dataset.id)")
    assert len(set(ids)) == 30


def test_a_question_over_the_results_answers_each_image_and_can_keep_one_answer(page: Any) -> None:
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("12 results")
    page.fill("#ask-question", "is there a red circle?")
    page.click("#ask-button")
    answers = page.locator(".card .answer")
    sync_api.expect(answers).to_have_count(12)
    said = [re.fullmatch(r"answer: (.*) \(\d+%\)", line).group(1)  # type: ignore[union-attr]
            for line in answers.all_inner_texts()]
    page.fill("#ask-keep", said[0])
    page.press("#ask-keep", "Enter")
    kept = said.count(said[0])
    sync_api.expect(page.locator(".card")).to_have_count(kept)
    sync_api.expect(page.locator(".card .answer").first).to_contain_text(said[0])
    if kept < 12:
        sync_api.expect(status(page)).to_contain_text(f"({12 - kept} dropped by their answer)")


def test_hiding_duplicates_collapses_them_into_their_best_result(page: Any) -> None:
    # The tiny model's random weights see all noise pictures as near-copies (cosine above 0.94).
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(page.locator(".card")).to_have_count(12)
    page.check("#dedup")
    sync_api.expect(page.locator(".card").first.locator(".duplicates")).to_contain_text("near-duplicate")
    assert page.locator(".card").count() < 12


def test_sort_by_orders_the_results_by_metadata_and_a_min_score_cuts_them(page: Any) -> None:
    page.fill("#order-by", "number")
    page.select_option("#order-direction", "asc")
    page.fill("#query-text", "a photo")
    page.press("#query-text", "Enter")
    sync_api.expect(page.locator(".card")).to_have_count(12)
    # Every third picture has a number (0, 3, 6, …); the odd ones are in nested/.
    assert page.locator(".card .source").all_text_contents()[:4] == [
        "images/picture_000.png", "nested/picture_003.png", "images/picture_006.png", "nested/picture_009.png"]
    page.fill("#min-score", "1.5")
    page.dispatch_event("#min-score", "change")
    sync_api.expect(status(page)).to_contain_text("No results: 0 items match")
    sync_api.expect(page.locator(".card")).to_have_count(0)


def test_an_empty_search_asks_for_input_instead_of_calling_the_server(page: Any) -> None:
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("Type something")


def test_the_page_fits_a_phone_and_a_screenshot_is_kept(browser: Any, server_url: str) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800}, device_scale_factor=2)
    phone = context.new_page()
    phone.goto(server_url)
    phone.fill("#query-text", "a photo of noise")
    phone.press("#query-text", "Enter")
    sync_api.expect(status(phone)).to_contain_text("results in")
    # The screenshot shows the first screen: its pictures loaded (those far below load lazily, on scrolling).
    phone.wait_for_function("[...document.querySelectorAll('.card img')]"
                            ".every(img => img.complete || img.getBoundingClientRect().top > innerHeight)")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    ARTIFACTS.mkdir(exist_ok=True)
    phone.screenshot(path=str(ARTIFACTS / "web-page-phone.png"), full_page=False)
    context.close()


def test_a_browser_that_prefers_chinese_gets_the_page_in_chinese(browser: Any, server_url: str) -> None:
    context = browser.new_context(locale="zh-CN")
    chinese = context.new_page()
    chinese.goto(server_url)
    sync_api.expect(chinese.locator("#info")).to_contain_text("30 张图片")
    sync_api.expect(chinese.locator("#search-button")).to_have_text("搜索")
    sync_api.expect(chinese.locator("#query-text")).to_have_attribute("placeholder", "描述你要找的内容…")
    assert chinese.evaluate("document.documentElement.lang") == "zh-Hans"
    chinese.fill("#query-text", "左边的红色圆形")
    chinese.press("#query-text", "Enter")
    sync_api.expect(status(chinese)).to_contain_text("12 个结果")
    sync_api.expect(chinese.locator(".card").first.locator(".why")).to_have_text("为什么？")
    ARTIFACTS.mkdir(exist_ok=True)
    chinese.screenshot(path=str(ARTIFACTS / "web-page-chinese.png"))
    context.close()


def test_the_language_switch_changes_the_whole_page_at_once_and_is_remembered(page: Any) -> None:
    sync_api.expect(page.locator("#search-button")).to_have_text("Search")
    page.fill("#query-text", "a photo of noise")
    page.press("#query-text", "Enter")
    sync_api.expect(status(page)).to_contain_text("12 results")
    page.select_option("#language", "zh")
    sync_api.expect(page.locator("#search-button")).to_have_text("搜索")
    sync_api.expect(page.locator("#info")).to_contain_text("30 张图片")
    sync_api.expect(status(page)).to_contain_text("12 个结果")
    sync_api.expect(page.locator(".card").first.locator(".score")).to_contain_text("得分 ")
    page.reload()
    sync_api.expect(page.locator("#drop-help")).to_contain_text("选择文件")
    assert page.locator("#language").input_value() == "zh"
    page.select_option("#language", "en")
    sync_api.expect(page.locator("#drop-help")).to_contain_text("choose a file")


def test_every_message_has_both_languages_and_every_message_used_exists() -> None:
    static = Path(__file__).resolve().parents[2] / "app" / "static"
    english_part, chinese_part = (static / "i18n.js").read_text(encoding="utf-8").split("\n  zh: {")
    key = re.compile(r'^    "([\w.]+)":', flags=re.MULTILINE)
    english, chinese = key.findall(english_part), key.findall(chinese_part)
    assert len(english) > 60 and english == chinese
    used = set(re.findall(r'data-i18n(?:-[a-z-]+)?="([\w.]+)"', (static / "index.html").read_text(encoding="utf-8")))
    used |= set(re.findall(r'\bt\("([\w.]+)"', (static / "app.js").read_text(encoding="utf-8")))
    assert len(used) > 50 and used <= set(english), used - set(english)


def test_every_control_has_a_label(page: Any) -> None:
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, button')].filter(el =>
        !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim()
        && !el.closest('label')).map(el => el.id || el.name)""")
    assert unlabelled == []


def test_a_locked_server_asks_for_the_key_and_then_works(browser: Any, bundle_path: Path) -> None:
    from app.settings import Settings
    from tests.support.serving import serve

    with serve(Settings(bundle_path=bundle_path, device="cpu", api_key="s3cret")) as url:  # type: ignore[call-arg]
        context = browser.new_context()
        locked = context.new_page()
        locked.goto(url)
        sync_api.expect(locked.locator("#key-form")).to_be_visible()
        locked.fill("#api-key", "s3cret")
        locked.click("#key-form button")
        sync_api.expect(locked.locator("#info")).to_contain_text("30 images")
        locked.fill("#query-text", "anything")
        locked.press("#query-text", "Enter")
        sync_api.expect(status(locked)).to_contain_text("results in")
        locked.wait_for_function("document.querySelector('.card img').naturalWidth > 0")
        context.close()


def test_a_fused_collection_offers_a_caption_weight_and_shows_each_parts_share(browser: Any,
                                                                               fused_bundle_path: Path) -> None:
    with serve(Settings(bundle_path=fused_bundle_path, device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url)
        sync_api.expect(page.locator("#caption-weight-label")).to_be_visible()
        sync_api.expect(page.locator("#caption-weight-value")).to_have_text("0.3")
        page.fill("#query-text", "caption of picture 9")
        page.press("#query-text", "Enter")
        sync_api.expect(page.locator(".card .fused").first).to_contain_text("image")
        page.locator("#caption-weight").fill("1")
        first = page.locator(".card").first
        sync_api.expect(first.locator(".caption")).to_have_text("caption of picture 9")
        sync_api.expect(first.locator(".fused")).to_have_text("image 0.000 + caption 1.000")
        context.close()


def test_a_picture_found_by_its_words_shows_them_marked_and_boxed(browser: Any, ocr_bundle_path: Path,
                                                                  signs_dir: Path) -> None:
    truth = next(truth for truth in read_truth(signs_dir) if truth.language == "en")
    with serve(Settings(bundle_path=ocr_bundle_path, device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.check("input[name=mode][value=keyword]")
        page.fill("#query-text", truth.key)
        page.press("#query-text", "Enter")
        first = page.locator(".card").first
        sync_api.expect(first.locator(".source")).to_contain_text(truth.path.name)
        sync_api.expect(first.locator(".ocr mark").first).to_have_text(re.compile(truth.key, re.IGNORECASE))
        sync_api.expect(first.locator(".ocr")).to_contain_text(truth.lines[-1].split()[-1])
        sync_api.expect(first.locator(".ocr-boxes polygon")).to_have_count(1)
        page.wait_for_function("document.querySelector('.card .ocr-boxes').getAttribute('viewBox') === '0 0 480 320'")
        first.screenshot(path=str(ARTIFACTS / "text-in-images-card.png"))
        context.close()


def test_a_collection_fused_with_read_text_offers_its_weight_beside_the_captions(browser: Any,
                                                                                 read_fused_bundle_path: Path) -> None:
    bundle = load_bundle(read_fused_bundle_path)
    try:
        sign = next(item for item in bundle.items if item.extra.get("ocr_text"))
        said = readable_text(sign.extra)
    finally:
        bundle.close()
    with serve(Settings(bundle_path=read_fused_bundle_path, device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url)
        sync_api.expect(page.locator("#caption-weight-value")).to_have_text("0.2")
        sync_api.expect(page.locator("#ocr-weight-value")).to_have_text("0.3")
        page.fill("#query-text", said)
        page.press("#query-text", "Enter")
        sync_api.expect(page.locator(".card .fused").first).to_contain_text("image")
        page.locator("#caption-weight").fill("0")
        page.locator("#ocr-weight").fill("1")  # what the images say, alone
        first = page.locator(".card").first
        sync_api.expect(first.locator(".source")).to_contain_text(Path(sign.uri).name)
        sync_api.expect(first.locator(".fused")).to_have_text("image 0.000 + ocr 1.000")
        context.close()


def test_the_collection_picker_searches_the_collection_chosen_and_the_address_keeps_it(
        browser: Any, bundle_path: Path, tmp_path: Path) -> None:
    import shutil

    from clipsearch.client import ClipSearchClient, NewText
    from tests.support.serving import ADMIN

    shutil.copytree(bundle_path, tmp_path / "collections" / "default")
    settings = Settings(data_dir=tmp_path / "collections", device="cpu", admin_key=ADMIN)  # type: ignore[call-arg]
    with serve(settings) as url, ClipSearchClient(url, admin_key=ADMIN) as admin:
        admin.create_collection("notes")
        with ClipSearchClient(url, admin_key=ADMIN, collection="notes") as notes:
            notes.add_texts([NewText("a note about the harbour"), NewText("a note about the hills")])
        context = browser.new_context()
        opened = context.new_page()
        opened.goto(url)
        sync_api.expect(opened.locator("#info")).to_contain_text("30 images")
        picker = opened.locator("#collection")
        sync_api.expect(picker).to_be_visible()
        assert picker.locator("option").all_inner_texts() == ["default", "notes"]
        picker.select_option("notes")
        sync_api.expect(opened.locator("#info")).to_contain_text("2 texts")
        assert opened.url.endswith("?collection=notes")
        opened.check("input[name=target][value=text]")
        opened.fill("#query-text", "harbour")
        opened.press("#query-text", "Enter")
        sync_api.expect(opened.locator(".card")).to_have_count(2)
        assert set(opened.locator(".card .snippet").all_inner_texts()) == {"a note about the harbour",
                                                                          "a note about the hills"}
        opened.reload()  # the address keeps the choice
        sync_api.expect(opened.locator("#info")).to_contain_text("2 texts")
        sync_api.expect(picker).to_have_value("notes")
        context.close()
