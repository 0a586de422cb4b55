"""Reading text in images with PP-OCR (the [ocr] extra's RapidOCR, its shipped models, for real)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from clipsearch.config import OcrConfig
from clipsearch.errors import ModelLoadError
from clipsearch.model.ocr import ReadResult, TextReader, describe, load_reader, reader_for, with_spaces
from tests.support.imagefiles import words_picture


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return load_reader(OcrConfig(threads=2))


def inside(point: tuple[int, int], box: tuple[tuple[int, int], ...], margin: int = 12) -> bool:
    xs, ys = [x for x, _ in box], [y for _, y in box]
    return min(xs) - margin <= point[0] <= max(xs) + margin and min(ys) - margin <= point[1] <= max(ys) + margin


def test_it_reads_english_and_chinese_lines_with_their_boxes_and_confidences(reader: TextReader) -> None:
    found = reader.read(words_picture("Grand opening\n北京发票", font="NotoSansCJK-Regular.ttc"))
    assert found.problem is None
    assert [line.text for line in found.lines] == ["Grand opening", "北京发票"]
    first, second = found.lines
    assert inside((25, 50), first.box) and not inside((25, 50), second.box)  # the top line is boxed at the top
    assert all(len(line.box) == 4 and 0.5 <= line.score <= 1 for line in found.lines)
    assert found.text == "Grand opening\n北京发票"


def test_a_picture_without_text_reads_as_no_lines_and_no_problem(reader: TextReader) -> None:
    found = reader.read(Image.new("RGB", (300, 200), (90, 140, 200)))
    assert found == ReadResult(found.lines, found.elapsed_s) and found.lines == () and found.problem is None


def test_a_huge_image_is_read_scaled_down_and_its_boxes_are_in_its_own_pixels(reader: TextReader) -> None:
    small = words_picture("Invoice total", size=(420, 160), font_size=36)
    huge = small.resize((4200, 1600))  # ten times larger: past max_side, scaled down to 2000 first
    small_box, huge_box = reader.read(small).lines[0].box, reader.read(huge).lines[0].box
    for (x, y), (big_x, big_y) in zip(small_box, huge_box, strict=True):
        assert abs(big_x - 10 * x) <= 60 and abs(big_y - 10 * y) <= 60


def test_a_reading_past_the_time_limit_gives_a_problem_and_the_next_reading_still_works() -> None:
    hurried = TextReader(load_reader(OcrConfig(threads=1)).engine, OcrConfig(timeout_s=0.001), "rapidocr")
    late = hurried.read(words_picture("Grand opening"))
    assert late.lines == () and late.problem == "text not read within 0.001 s"
    patient = TextReader(hurried.engine, OcrConfig(), "rapidocr")
    assert patient.read(words_picture("Grand opening")).text == "Grand opening"


def test_an_engine_failure_gives_a_problem_rather_than_an_exception(reader: TextReader) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("cannot crop a box of 0 pixels")

    failing = TextReader(broken, reader.config, reader.description)
    found = failing.read(words_picture("anything"))
    assert found.lines == () and found.problem == "text reading failed: cannot crop a box of 0 pixels"


def test_words_the_recogniser_ran_together_get_their_spaces_back() -> None:
    assert with_spaces("seminarfree") == "seminar free"
    assert with_spaces("templeclosed today") == "temple closed today"
    assert with_spaces("GRANDOPENING") == "GRAND OPENING"
    assert with_spaces("发票北京 specialcafe") == "发票北京 special cafe"


def test_known_words_and_short_runs_are_left_as_read() -> None:
    for text in ("notebook", "barbershop", "Starbucks", "sale", "abcd 42", "发票"):
        assert with_spaces(text) == text


def test_a_line_read_with_its_words_run_together_keeps_a_spaced_form_beside_it(reader: TextReader) -> None:
    together, apart = reader.read(words_picture("seminarfree\nclosed")).lines
    assert (together.text, together.spaced) == ("seminarfree", "seminar free")
    assert together.as_dict()["spaced"] == "seminar free"
    assert (apart.text, apart.spaced) == ("closed", None) and "spaced" not in apart.as_dict()


def test_each_stage_runs_on_the_threads_it_is_given() -> None:
    engine = load_reader(OcrConfig(threads=2)).engine
    sessions = (engine.text_det.infer.session, engine.text_cls.infer.session, engine.text_rec.session.session)
    assert [session._sess_options.intra_op_num_threads for session in sessions] == [2, 2, 2]


def test_the_description_names_the_engine_its_version_and_its_model_files(reader: TextReader) -> None:
    assert reader.description.startswith("rapidocr 1.4.")
    for name in ("ch_PP-OCRv4_det_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"):
        assert name in reader.description


def test_without_the_extra_loading_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    with pytest.raises(ModelLoadError, match=r"\[ocr\] extra .*pip install 'clipsearch\[ocr\]'"):
        load_reader(OcrConfig())


@pytest.mark.parametrize(("settings", "field"), [
    ({"detection_side": 8}, "ocr_detection_side"),
    ({"max_side": 100}, "ocr_max_side"),
    ({"detection_min_score": 1.0}, "ocr_detection_min_score"),
    ({"recognition_min_score": -0.1}, "ocr_recognition_min_score"),
    ({"recognition_model": Path("/nonexistent/rec.onnx")}, "ocr_recognition_model"),
    ({"threads": 0}, "ocr_threads"),
    ({"timeout_s": 0}, "ocr_timeout_s"),
])
def test_settings_that_cannot_work_are_refused_naming_the_setting(settings: dict[str, object], field: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        load_reader(OcrConfig(**settings))  # type: ignore[arg-type]
    assert refused.value.field == field


def test_a_model_file_that_is_not_onnx_is_refused_as_a_load_error(tmp_path: Path) -> None:
    broken = tmp_path / "det.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load the OCR models") as refused:
        load_reader(OcrConfig(detection_model=broken))
    assert refused.value.field == "ocr"
    assert "(det.onnx, ch_ppocr_mobile_v2.0_cls_infer.onnx, ch_PP-OCRv4_rec_infer.onnx)" in \
        describe(OcrConfig(detection_model=broken))


def test_each_process_loads_one_reader_per_settings() -> None:
    assert reader_for(OcrConfig(threads=1)) is reader_for(OcrConfig(threads=1))
    assert reader_for(OcrConfig(threads=1)) is not reader_for(OcrConfig(threads=1, timeout_s=5))


def test_settings_survive_the_manifests_record() -> None:
    config = OcrConfig(detection_side=960, recognition_model=Path("/models/rec.onnx"), threads=3)
    record = config.as_record("rapidocr 1.4.4 (…)")
    assert record["engine"] == "rapidocr 1.4.4 (…)" and record["settings"]["recognition_model"] == "/models/rec.onnx"
    assert OcrConfig.from_record(record) == config
    assert OcrConfig.from_record({"settings": {"detection_side": 640, "from_a_newer_version": 1}}) == \
        OcrConfig(detection_side=640)
