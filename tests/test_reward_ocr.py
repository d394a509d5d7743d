"""OCR reward: hand-computed distances, recogniser plumbing (dotted path, failures, PaddleOCR 2.x / 3.x layouts)."""

import sys
import textwrap
import types
from typing import ClassVar

import pytest
import torch

from flowrl.rewards import make_reward
from flowrl.rewards.ocr import levenshtein, ocr_distance, ocr_score, paddle2_text, paddle3_text, quoted_target


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ("ab", "ba", 2),
    ],
)
def test_levenshtein(a, b, expected):
    assert levenshtein(a, b) == expected
    assert levenshtein(b, a) == expected


@pytest.mark.parametrize(
    ("recognised", "target", "distance", "score"),
    [
        ("Welcome to the CAFE today", "cafe", 0, 1.0),  # substring: extra text costs nothing
        ("H e L L o\nWorld", "Hello World", 0, 1.0),  # case and whitespace folded on both sides
        ("hallo", "hello", 1, 0.8),  # one substitution
        ("abcdxf", "abcdef", 1, 1 - 1 / 6),
        ("abxxxxxx", "abc", 3, 0.0),  # Levenshtein 6 (1 substitution + 5 deletions), capped at len("abc")
        ("", "hi", 2, 0.0),  # nothing recognised
        ("helo", "hello", 1, 0.8),  # one insertion
    ],
)
def test_distance_and_score(recognised, target, distance, score):
    assert ocr_distance(recognised, target) == distance
    assert ocr_score(recognised, target) == pytest.approx(score)


def test_quoted_target():
    assert quoted_target('a sign that says "Hello World" next to "Bye"') == "Hello World"
    assert quoted_target("a sign without quotes") is None
    assert quoted_target('an unclosed "quote') is None
    with pytest.raises(ValueError, match="empty"):
        ocr_score("anything", "  ")


FAKE_MODULE = '''
class Lookup:
    """Reads image k (filled with the value k / 10) as texts[k]; raises on an image listed in ``broken``."""

    def __init__(self, texts, broken=()):
        self.texts, self.broken, self.calls = texts, broken, []

    def __call__(self, images):
        self.calls.append(len(images))
        keys = [round(float(im.mean()) * 10) for im in images]
        if any(k in self.broken for k in keys):
            raise RuntimeError("recogniser crashed")
        return [self.texts[k] for k in keys]


def blank(images):
    return [""] * len(images)
'''


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    (tmp_path / "fake_ocr_module.py").write_text(textwrap.dedent(FAKE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fake_ocr_module"
    sys.modules.pop("fake_ocr_module", None)


def filled(*keys: int) -> torch.Tensor:
    return torch.stack([torch.full((3, 8, 8), k / 10) for k in keys])


def test_fake_recognizer_through_dotted_path(fake_module):
    texts = ["Hello World", "hallo", "", "the word HELLO here"]
    reward = make_reward("ocr", recognizer=f"{fake_module}:Lookup", recognizer_options={"texts": texts})
    out = reward(filled(0, 1, 2, 3), ['a "Hello World" sign', 'say "hello"', 'say "hello"', 'neon "hello"'])
    # "helloworld" exact; "hallo" vs "hello" 1 edit of 5; nothing read; substring
    assert torch.allclose(out["score"], torch.tensor([1.0, 0.8, 0.0, 1.0]))
    assert out["failed"].tolist() == [0.0, 0.0, 0.0, 0.0]
    plain = make_reward("ocr", recognizer=f"{fake_module}:blank")  # a function is the recogniser itself
    assert plain(filled(0), ['"x"'])["score"].tolist() == [0.0]
    with pytest.raises(ValueError, match="not a class"):
        make_reward("ocr", recognizer=f"{fake_module}:blank", recognizer_options={"texts": []})
    with pytest.raises(ValueError, match="module:callable"):
        make_reward("ocr", recognizer="no_colon_here")


def test_recognizer_failure_scores_zero_only_for_the_failing_image(fake_module):
    reward = make_reward(
        "ocr", recognizer=f"{fake_module}:Lookup", recognizer_options={"texts": ["cat", "cat", "cat"], "broken": [1]}
    )
    out = reward(filled(0, 1, 2), ['"cat"'] * 3)
    assert out["score"].tolist() == [1.0, 0.0, 1.0]
    assert out["failed"].tolist() == [0.0, 1.0, 0.0]


def test_prompt_without_quotes(fake_module):
    options = {"recognizer": f"{fake_module}:Lookup", "recognizer_options": {"texts": ["cat"]}}
    with pytest.raises(ValueError, match="a cat on a mat"):
        make_reward("ocr", **options)(filled(0, 0), ['"cat"', "a cat on a mat"])
    out = make_reward("ocr", missing_quotes="zero", **options)(filled(0, 0, 0), ['"cat"', "a cat on a mat", 'x "" y'])
    assert out["score"].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="missing_quotes"):
        make_reward("ocr", missing_quotes="skip", **options)


def test_missing_paddleocr_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "paddleocr", None)  # makes `import paddleocr` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'flowrl\[ocr\]'"):
        make_reward("ocr")


BOX = [[0, 0], [10, 0], [10, 5], [0, 5]]


def test_paddle2_layout():
    # ocr(img, cls=False): one entry per page; a page is None (nothing found) or a list of [box, (text, confidence)]
    result = [[[BOX, ("Hello", 0.98)], [BOX, ["World", 0.51]], [BOX, ("noise", 0.0)]]]
    assert paddle2_text(result) == "Hello World"
    assert paddle2_text(result, min_score=0.6) == "Hello"
    assert paddle2_text([None]) == ""
    assert paddle2_text(None) == ""


def test_paddle3_layout():
    # predict(img): one dict-like OCRResult per input with parallel rec_texts / rec_scores (and rec_polys, ...)
    results = [{"rec_texts": ["Hello", "World", "noise"], "rec_scores": [0.9, 0.7, 0.0], "rec_polys": [BOX] * 3}]
    assert paddle3_text(results) == "Hello World"
    assert paddle3_text(results, min_score=0.8) == "Hello"
    assert paddle3_text([{"rec_texts": [], "rec_scores": []}]) == ""


class FakePaddle:
    """Stands in for paddleocr.PaddleOCR: records constructor options and the arrays it is given."""

    instances: ClassVar[list] = []

    def __init__(self, **options):
        self.options, self.seen = options, []
        FakePaddle.instances.append(self)

    def ocr(self, img, cls):
        self.seen.append(img)
        return [[[BOX, ("Hello", 0.9)], [BOX, ("World", 0.8)]]]

    def predict(self, img):
        self.seen.append(img)
        return [{"rec_texts": ["Hello", "World"], "rec_scores": [0.9, 0.8]}]


@pytest.mark.parametrize("version", ["2.7.3", "3.0.1"])
def test_paddleocr_recognizer_with_either_api(monkeypatch, version):
    module = types.ModuleType("paddleocr")
    module.__version__, module.PaddleOCR = version, FakePaddle
    monkeypatch.setitem(sys.modules, "paddleocr", module)
    FakePaddle.instances.clear()
    reward = make_reward("ocr", recognizer_options={"lang": "en"})
    image = torch.zeros(2, 3, 4, 5)
    image[:, 0] = 1.0  # pure red
    out = reward(image, ['"hello world"', '"hello"'])
    assert out["score"].tolist() == [1.0, 1.0]
    (engine,) = FakePaddle.instances
    assert engine.options["lang"] == "en"
    assert ("use_textline_orientation" in engine.options) == version.startswith("3")
    assert len(engine.seen) == 2
    array = engine.seen[0]
    assert array.shape == (4, 5, 3) and array.dtype.name == "uint8"
    assert (array[..., 2] == 255).all() and (array[..., 0] == 0).all()  # BGR: red is the last channel
