"""The web page of `strata serve` (strata/serve/page.html) in a real browser: headless Chromium.

Against the real server (one `strata serve` of five runs, chosen with the page's run picker): an MNIST
CNN classifies an uploaded MNIST test digit, with probability bars and the explanation heatmap; a tiny
language model's text grows on the page as it streams; a tiny conditional DCGAN draws samples of a
class; a matrix factorisation lists a user's recommendations; a GRU classifies a spoken digit. Against
a scripted stand-in for the API (Playwright answers the page's requests): every run kind's panel
(text, table, time series, arrays too), what the page sends, and errors shown inline.
Every test also asserts the page logged no console errors and threw nothing.

STRATA_SCREENSHOT=1 writes docs/serve-page.png (the MNIST page with its prediction and heatmap)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import struct
import urllib.request
import wave
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "strata" / "serve" / "page.html"
SCREENSHOT = REPO / "docs" / "serve-page.png"
FAKE = "http://strata.test"  # the origin of the scripted API


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def upload(page, name: str, mime: str, data: bytes, selector: str = "#file-input") -> None:
    page.set_input_files(selector, files=[{"name": name, "mimeType": mime, "buffer": data}])


def wait_caption(browser_page, label: str) -> None:
    """Waits for the explanation of class `label` and its heatmap."""
    browser_page.page.wait_for_function(
        "l => document.querySelector('#explanation figcaption')?.textContent.includes(`“${l}”`)", arg=label)
    browser_page.wait_decoded("#heatmap")


# --- against the real server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(mnist_cnn_run, tiny_runs, serve_process):
    """One `strata serve` of the MNIST CNN and the tiny runs (lm, gan, ml, fsdd): the page's run picker."""
    with serve_process([mnist_cnn_run, *tiny_runs.values()]) as (url, _):
        yield url


def open_run(browser_page, url: str, name: str):
    page = browser_page.page
    page.goto(f"{url}/#run={name}")
    page.wait_for_function("n => document.querySelector('#run-name')?.textContent === n", arg=name)
    return page


def right_digit(url: str, digit_png) -> tuple[bytes, int]:
    """The first MNIST test digit the run classifies correctly (asked through the API)."""
    for i in range(20):
        png, label = digit_png(i)
        if api(url, "/runs/mnist-cnn/predict", {"inputs": [data_url(png)]})["predictions"][0]["label"] == str(label):
            return png, label
    pytest.fail("the MNIST run gets none of the first 20 test digits right")


def test_an_uploaded_digit_is_classified_and_explained(browser_page, server, digit_png):
    png, label = right_digit(server, digit_png)
    page = open_run(browser_page, server, "mnist-cnn")
    upload(page, "digit.png", "image/png", png)
    page.wait_for_selector("#prediction-label")
    assert page.text_content("#prediction-label").strip() == str(label)
    bars = page.locator("[data-testid=prob-bar]")
    assert bars.count() >= 3
    assert bars.first.get_attribute("data-label") == str(label)
    wait_caption(browser_page, str(label))
    browser_page.wait_decoded("#input-preview")
    assert page.text_content("#predict-error") == ""
    # clicking another class's bar explains that class
    other = bars.nth(1).get_attribute("data-label")
    bars.nth(1).click()
    wait_caption(browser_page, other)
    browser_page.assert_no_errors()
    if os.environ.get("STRATA_SCREENSHOT"):
        bars.first.click()
        wait_caption(browser_page, str(label))
        browser_page.save_screenshot(SCREENSHOT, down_to="#panels")


# Records every length #stream-output's text takes, as the page writes it (one record per change).
RECORD_LENGTHS = """() => {
  window.lengths = [];
  const out = document.querySelector('#stream-output');
  new MutationObserver(() => window.lengths.push([out.textContent.length, out.dataset.state]))
    .observe(out, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


def test_the_openapi_page_renders_offline_with_every_endpoint(browser_page, server):
    page = browser_page.page
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(server) and
            not r.url.startswith("data:") else None)
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    assert "/runs/{name}/predict" in paths and "/runs/{name}/generate/stream" in paths and "/info" in paths
    assert external == []
    browser_page.assert_no_errors()


def test_language_model_text_streams_onto_the_page(browser_page, server):
    page = open_run(browser_page, server, "lm")
    page.fill("#prompt", "ROMEO:")
    # 2,000 tokens (the server's cap): the tiny model takes over a second, so the page receives the text in
    # many reads; 300 came out in 0.2 s and Chromium could read them in one
    page.fill("#max-tokens", "2000")
    page.evaluate(RECORD_LENGTHS)
    page.click("#generate-button")
    page.wait_for_selector("#stream-output[data-state=done]", timeout=60_000)
    assert page.text_content("#stream-output").strip() and page.text_content("#stream-prompt") == "ROMEO:"
    lengths = page.evaluate("window.lengths")
    growing = {n for n, state in lengths if state == "streaming" and n > 0}
    assert len(growing) >= 2, f"the text did not grow in steps while streaming: {lengths[:20]}"
    assert page.text_content("#lm-error") == "" and page.text_content("#lm-status").startswith("Done")
    browser_page.assert_no_errors()


def test_a_conditional_gan_draws_samples_of_the_chosen_class(browser_page, server):
    page = open_run(browser_page, server, "gan")
    assert page.locator("#run-select option").all_text_contents()[0].startswith("mnist-cnn")
    page.select_option("#gen-class", "3")
    page.fill("#gen-n", "4")
    page.click("#draw-button")
    browser_page.wait_decoded("[data-testid=sample]")
    assert page.locator("[data-testid=sample]").count() == 4
    assert page.get_attribute("[data-testid=sample]", "alt") == "sample 1 of class 3"
    assert page.text_content("#generate-error") == ""
    browser_page.assert_no_errors()


def test_ratings_and_audio_runs(browser_page, server, session_mirror):
    from strata.data import DATASETS

    page = open_run(browser_page, server, "ml")
    page.fill("#user-id", "1")
    page.fill("#top-n", "5")
    page.press("#user-id", "Enter")
    page.wait_for_selector("[data-testid=recommendation]")
    assert page.locator("[data-testid=recommendation]").count() == 5
    page.select_option("#run-select", "fsdd")
    wav = DATASETS.get("fsdd").recordings()[0]  # a recording of a spoken digit
    upload(page, wav.name, "audio/wav", wav.read_bytes())
    page.wait_for_selector("#prediction-label")
    assert page.text_content("#prediction-label") in list("0123456789")
    assert page.locator("[data-testid=prob-bar]").count() >= 3
    assert page.get_attribute("#audio-preview", "src").startswith("data:audio/")
    assert page.text_content("#predict-error") == ""
    browser_page.assert_no_errors()


def test_a_sentence_is_classified_and_its_tokens_coloured(browser_page, server):
    page = open_run(browser_page, server, "sst")
    page.fill("#text-input", "a gripping, beautifully acted film")
    page.press("#text-input", "Enter")
    page.wait_for_selector("#prediction-label")
    assert page.text_content("#prediction-label") in ("positive", "negative", "0", "1")
    page.wait_for_selector("#explain-tokens span")
    shown = "".join(page.locator("#explain-tokens span").all_text_contents()).replace(" ", "")
    assert shown == "agripping,beautifullyactedfilm"  # every piece of the sentence, coloured by its attribution
    browser_page.assert_no_errors()


# --- against a scripted API: the other run kinds ------------------------------------------------

class FakeApi:
    """Answers the page's requests in the browser: `/` is page.html, `/info` is `info`, and
    POST /runs/NAME/ACTION is answers[ACTION] (a dict, a (status, dict) pair, or a list of dicts sent
    as server-sent events); requests are kept."""

    def __init__(self, page, info: dict, answers: dict):
        self.info, self.answers, self.requests = info, answers, []
        page.route(FAKE + "/**", self.handle)
        page.goto(FAKE + "/")

    def handle(self, route):
        path = route.request.url[len(FAKE):]
        if path == "/":
            return route.fulfill(body=PAGE.read_text(encoding="utf-8"), content_type="text/html; charset=utf-8")
        if path == "/info":
            return route.fulfill(json=self.info)
        action = path.split("/", 3)[3]
        self.requests.append((path, json.loads(route.request.post_data or "null")))
        answer = self.answers[action]
        if isinstance(answer, list):  # a stream of server-sent events, one per dict
            events = "".join(f"data: {json.dumps(e)}\n\n" for e in answer)
            return route.fulfill(body=events, content_type="text/event-stream")
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return route.fulfill(status=status, json=body)


LIMITS = {"max_body_bytes": 2_000_000, "max_items": 64, "timeout_s": 30, "max_batch": 32, "batching": True}


def run_info(name: str, task: str, input: str, actions: list[str], **facts) -> dict:
    base = {"name": name, "task": task, "input": input, "actions": actions, "class_names": None,
            "input_shape": None, "image": None, "columns": None, "generate": None}
    return {**base, **facts}


def classified(*pairs) -> dict:
    top = [{"label": k, "index": i, "probability": p} for i, (k, p) in enumerate(pairs)]
    return {"predictions": [{"label": top[0]["label"], "probability": top[0]["probability"], "top": top}]}


def test_text_classifier_enter_predicts(browser_page):
    info = {"runs": [run_info("sst2", "sequence_classify", "text", ["predict"], class_names=["negative", "positive"])],
            "limits": LIMITS}
    fake = FakeApi(browser_page.page, info, {"predict": classified(("positive", 0.91), ("negative", 0.09))})
    page = browser_page.page
    assert page.is_hidden("#run-picker")  # one run: no picker
    page.fill("#text-input", "a gripping, funny film")
    page.press("#text-input", "Enter")
    page.wait_for_selector("#prediction-label")
    assert page.text_content("#prediction-label") == "positive"
    assert page.locator("[data-testid=prob-bar]").count() == 2
    assert fake.requests == [("/runs/sst2/predict", {"inputs": ["a gripping, funny film"]})]
    assert page.locator("#explanation *").count() == 0  # no "explain" action: no explanation asked for
    browser_page.assert_no_errors()


# Dispatches a drop (on the drop zone) or a paste (on the page) of a file made from base64 bytes.
DROP_OR_PASTE = """([how, b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type}));
  if (how === 'drop') document.querySelector('#drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
  else document.body.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
}"""


def test_an_image_can_be_dropped_or_pasted_and_oversized_files_are_refused(browser_page):
    from PIL import Image

    info = {"runs": [run_info("digits", "classify", "image", ["predict"], class_names=list("0123456789"),
                              image={"channels": 1, "height": 28, "width": 28})],
            "limits": {**LIMITS, "max_body_bytes": 20_000}}
    fake = FakeApi(browser_page.page, info, {"predict": classified(("3", 0.6), ("5", 0.3), ("8", 0.1))})
    page = browser_page.page
    buf = io.BytesIO()
    Image.new("L", (28, 28), 90).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    page.wait_for_selector("#drop-zone")  # the panel is built once /info has answered
    for how in ("drop", "paste"):
        page.evaluate(DROP_OR_PASTE, [how, png, f"{how}.png", "image/png"])
        page.wait_for_function("n => document.querySelectorAll('[data-testid=prob-bar]').length === 3")
        assert fake.requests[-1][1] == {"inputs": ["data:image/png;base64," + png]}
        page.evaluate("() => document.querySelector('#result').replaceChildren()")
    noise = Image.frombytes("L", (200, 200), os.urandom(40_000))  # a PNG of ~40 KB, over the 20 KB limit
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    upload(page, "big.png", "image/png", buf.getvalue())
    page.wait_for_function("() => document.querySelector('#predict-error').textContent.includes('up to 20 KiB')")
    page.evaluate(DROP_OR_PASTE, ["drop", base64.b64encode(b"%PDF-1.4").decode(), "notes.pdf", "application/pdf"])
    assert "not an image" in page.text_content("#predict-error")
    assert len(fake.requests) == 2  # neither the big file nor the PDF was sent
    browser_page.assert_no_errors()


LM_RUN = run_info("lm", "language_model", "none", ["generate", "stream"], generate={
    "kind": "text", "conditional": False, "class_names": [], "defaults": {"max_new_tokens": 200, "temperature": 1.0}})


def test_a_stream_is_joined_and_an_error_inside_it_is_shown(browser_page):
    answers = {"generate/stream": [{"text": "Wh"}, {"text": "at, "}, {"text": "ho!"}, {"done": True, "seed": 7}]}
    fake = FakeApi(browser_page.page, {"runs": [LM_RUN], "limits": LIMITS}, answers)
    page = browser_page.page
    page.fill("#prompt", "ROMEO:")
    page.fill("#temperature", "")  # left out: the run's default
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#stream-output[data-state=done]")
    assert page.text_content("#stream-output") == "What, ho!" and page.text_content("#lm-status") == "Done: seed 7."
    assert fake.requests[0] == ("/runs/lm/generate/stream", {"prompt": "ROMEO:", "max_new_tokens": 200})
    answers["generate/stream"] = [{"text": "Wh"}, {"error": "timed out after 30 s; ask for fewer tokens", "done": True}]
    page.click("#generate-button")
    page.wait_for_selector("#stream-output[data-state=failed]")
    assert page.text_content("#lm-error") == "timed out after 30 s; ask for fewer tokens"
    assert page.is_disabled("#stop-button") and page.is_enabled("#generate-button")
    browser_page.assert_no_errors()


def test_a_translation_run_translates(browser_page):
    info = {"runs": [run_info("eng-fra", "seq2seq", "text", ["predict"])], "limits": LIMITS}
    fake = FakeApi(browser_page.page, info, {"predict": {"predictions": [{"translation": "j'ai froid ."}]}})
    page = browser_page.page
    assert page.text_content("#predict-button") == "Translate"
    page.fill("#text-input", "I am cold.")
    page.click("#predict-button")
    page.wait_for_selector("#prediction-value")
    assert page.text_content("#prediction-value") == "j'ai froid ."
    assert fake.requests == [("/runs/eng-fra/predict", {"inputs": ["I am cold."]})]
    browser_page.assert_no_errors()


def wav_bytes(seconds: float = 0.2, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 9))) for i in range(int(seconds * rate))))
    return buf.getvalue()


def test_audio_upload_previews_and_predicts(browser_page):
    info = {"runs": [run_info("fsdd", "sequence_classify", "audio", ["predict"], class_names=list("0123456789"))],
            "limits": LIMITS}
    fake = FakeApi(browser_page.page, info, {"predict": classified(("7", 0.8), ("1", 0.15), ("3", 0.05))})
    page = browser_page.page
    wav = wav_bytes()
    upload(page, "seven.wav", "audio/wav", wav)
    page.wait_for_selector("#prediction-label")
    assert page.text_content("#prediction-label") == "7"
    assert page.get_attribute("#audio-preview", "src").startswith("data:audio/")
    sent = fake.requests[0][1]["inputs"][0]
    assert base64.b64decode(sent.split(",", 1)[1]) == wav  # the file as a data URL
    browser_page.assert_no_errors()


TABLE_RUN = run_info("houses", "regress", "table", ["predict", "explain"], columns=[
    {"name": "rooms", "type": "number", "choices": None},
    {"name": "city", "type": "category", "choices": ["Lyon", "Paris"]},
    {"name": "area", "type": "number", "choices": None}])


def test_table_form_from_columns_and_a_pasted_csv_row(browser_page):
    explained = {"explanations": [{"target": "output 0", "score": 312.5, "top": [
        {"feature": "area", "attribution": 120.0}, {"feature": "city=Lyon", "attribution": -31.5}]}]}
    fake = FakeApi(browser_page.page, {"runs": [TABLE_RUN], "limits": LIMITS},
                   {"predict": {"predictions": [{"prediction": 312.5}]}, "explain": explained})
    page = browser_page.page
    assert page.locator("#table-form input[type=number]").count() == 2
    assert page.locator("#table-form select option").all_text_contents() == ["—", "Lyon", "Paris"]
    page.fill("#csv-row", "area,city,rooms\n81.5,Lyon,3")  # a header line maps the values to the columns
    page.click("#csv-fill")
    assert page.input_value("#col-0") == "3" and page.input_value("#col-1") == "Lyon"
    page.click("#predict-button")
    page.wait_for_selector("[data-testid=feature]")
    assert page.text_content("#prediction-value") == "312.5"
    assert fake.requests[0][1] == {"inputs": [{"rooms": 3, "city": "Lyon", "area": 81.5}]}
    assert page.locator("[data-testid=feature]").all_text_contents()[0].startswith("area")
    browser_page.assert_no_errors()


def test_errors_are_shown_inline_and_name_the_field(browser_page):
    error = (400, {"error": "inputs[0].area: must be a finite number, got inf", "field": "inputs[0].area"})
    FakeApi(browser_page.page, {"runs": [TABLE_RUN], "limits": LIMITS}, {"predict": error})
    page = browser_page.page
    page.click("#predict-button")  # nothing filled in: nothing sent
    assert "fill in the columns" in page.text_content("#predict-error")
    page.fill("#col-2", "7")
    page.fill("#csv-row", "1,2")  # two values for three columns
    page.click("#csv-fill")
    assert "reads 3 columns" in page.text_content("#predict-error")
    page.click("#predict-button")
    page.wait_for_function("() => document.querySelector('#predict-error').textContent.includes('finite number')")
    assert page.get_attribute("#predict-error", "role") == "alert"
    assert page.get_attribute("#col-2", "aria-invalid") == "true"
    browser_page.assert_no_errors("status of 400")  # Chromium logs the 400 itself


def test_image_generator_draws_samples_of_a_class(browser_page, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (28, 28), 200).save(buf, format="PNG")
    gen = {"kind": "image", "conditional": True, "class_names": list("0123456789"),
           "defaults": {"n": 16, "seed": 0, "guidance": 2.0, "steps": 50}}
    info = {"runs": [run_info("ddpm", "diffusion", "none", ["generate"], generate=gen)], "limits": LIMITS}
    fake = FakeApi(browser_page.page, info, {"generate": {"images": [data_url(buf.getvalue())] * 4}})
    page = browser_page.page
    page.select_option("#gen-class", "3")
    page.fill("#gen-guidance", "3")
    page.fill("#gen-n", "4")
    page.click("#draw-button")
    page.wait_for_selector("[data-testid=sample]")
    assert page.locator("[data-testid=sample]").count() == 4
    browser_page.wait_decoded("[data-testid=sample]")
    assert fake.requests[0][1] == {"class": "3", "guidance": 3, "steps": 50, "n": 4, "seed": 0}
    browser_page.assert_no_errors()


def test_ratings_run_lists_recommendations_and_the_picker_switches_runs(browser_page):
    recs = {"user": "42", "top": [{"item": "50", "title": "Star Wars (1977)", "rating": 4.71},
                                  {"item": "181", "title": "Return of the Jedi (1983)", "rating": 4.52}]}
    info = {"runs": [run_info("ml-mf", "rating", "ratings", ["recommend"]), TABLE_RUN], "limits": LIMITS}
    fake = FakeApi(browser_page.page, info, {"recommend": recs})
    page = browser_page.page
    assert page.is_visible("#run-select")  # two runs: a picker
    page.fill("#user-id", "42")
    page.fill("#top-n", "2")
    page.press("#user-id", "Enter")
    page.wait_for_selector("[data-testid=recommendation]")
    assert page.locator("[data-testid=recommendation]").all_text_contents()[0].startswith("Star Wars (1977)")
    assert fake.requests == [("/runs/ml-mf/recommend", {"user": "42", "top": 2})]
    page.select_option("#run-select", "houses")
    page.wait_for_selector("#table-form")
    assert page.text_content("#run-name") == "houses" and page.locator("#recommend-form").count() == 0
    browser_page.assert_no_errors()


def test_array_input_is_checked_as_json_before_it_is_sent(browser_page):
    info = {"runs": [run_info("arr", "regress", "array", ["predict"], input_shape=[2, 2])], "limits": LIMITS}
    fake = FakeApi(browser_page.page, info, {"predict": {"predictions": [{"prediction": [0.5, 1.5, 1.0]}]}})
    page = browser_page.page
    page.fill("#text-input", "[[1, 2], [3")
    page.click("#predict-button")
    assert "not valid JSON" in page.text_content("#predict-error") and fake.requests == []
    page.fill("#text-input", "[[1, 2], [3, 4]]")
    page.click("#predict-button")
    page.wait_for_selector("svg.spark")  # a list of numbers is drawn as a line
    assert fake.requests == [("/runs/arr/predict", {"inputs": [[[1, 2], [3, 4]]]})]
    assert page.text_content("#predict-error") == ""
    browser_page.assert_no_errors()


EVERY_KIND = [
    run_info("digits", "classify", "image", ["predict", "explain"], class_names=list("0123456789"),
             image={"channels": 1, "height": 28, "width": 28}),
    run_info("sst2", "sequence_classify", "text", ["predict"], class_names=["negative", "positive"]),
    run_info("fsdd", "sequence_classify", "audio", ["predict"], class_names=list("0123456789")),
    TABLE_RUN,
    run_info("etth1", "regress", "timeseries", ["predict", "explain"]),
    run_info("arr", "regress", "array", ["predict"]),
    run_info("ml", "rating", "ratings", ["recommend"]),
    run_info("gan", "gan", "image", ["predict", "generate"], generate={
        "kind": "image", "conditional": True, "class_names": ["a", "b"], "defaults": {"n": 16, "seed": 0}}),
    LM_RUN,
]

# Form controls without a label, and ids used twice: both should be empty.
UNLABELLED_AND_DUPLICATES = """() => {
  const controls = [...document.querySelectorAll('input, select, textarea')];
  const unlabelled = controls.filter(c => !c.labels.length && !c.getAttribute('aria-label')).map(c => c.id || c.name);
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  return [unlabelled, ids.filter((id, i) => ids.indexOf(id) !== i)];
}"""


def test_every_run_kind_has_its_panel_with_labelled_controls(browser_page):
    FakeApi(browser_page.page, {"runs": EVERY_KIND, "limits": LIMITS}, {})
    page = browser_page.page
    panels = {"digits": ["#drop-zone"], "sst2": ["#text-input"], "fsdd": ["#drop-zone"], "houses": ["#table-form"],
              "etth1": ["#csv-file"], "arr": ["#text-input"], "ml": ["#recommend-form"],
              "gan": ["#gen-class", "#drop-zone"], "lm": ["#prompt", "#stream-output"]}
    for name, selectors in panels.items():
        page.select_option("#run-select", name)
        page.wait_for_function("n => document.querySelector('#run-name')?.textContent === n", arg=name)
        for selector in selectors:
            assert page.locator(selector).count() == 1, (name, selector)
        assert page.evaluate(UNLABELLED_AND_DUPLICATES) == [[], []], name
        assert page.title() == f"{name} · strata serve"
    browser_page.assert_no_errors()
