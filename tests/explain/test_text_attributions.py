"""Token attributions on text runs trained on real data: a BiLSTM on SST-2 (layer integrated gradients
on the embedding sum to f(x) - f(pads), tokens line up with the tokenizer's pieces), a character GPT
on tiny Shakespeare (which earlier characters its next-character prediction rests on, attention maps);
printing on a terminal and as HTML; and the bad inputs of a text run, each a clear error."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from strata.cli import main
from strata.data.text import sst_normalize
from strata.data.tokenizers import load_tokenizer
from strata.errors import StrataError
from strata.evaluate import explain_run
from strata.explain.text import tokens_html, tokens_text

SENTENCES = ["A gripping, beautifully acted film.", "Dull and tedious; the jokes don't work."]


def test_token_attributions_are_complete_and_line_up_with_the_pieces(sst2_run):
    """With 32 steps the gap left to f(x) - f(pads) is under 2 % of it (a BiLSTM of this size: ~1e-3)."""
    res = explain_run(sst2_run.run_dir, SENTENCES, steps=32, device="cpu")
    tok = load_tokenizer(sst2_run.run_dir)
    task = sst2_run.task.eval()
    for sentence, r in zip(SENTENCES, res):
        ids = tok.encode(" " + sst_normalize(sentence))
        assert [t["token"] for t in r["tokens"]] == [tok.decode([i]) for i in ids]
        assert "".join(t["token"] for t in r["tokens"]) == " " + sst_normalize(sentence)
        assert r["target"] in ("negative", "positive") and r["method"] == "integrated_gradients"
        x = torch.tensor([ids])
        lengths = torch.tensor([len(ids)])
        j = task.class_names.index(r["target"])
        with torch.no_grad():
            f = float(task.explain_scores(x, lengths)[0, j])
            f0 = float(task.explain_scores(torch.zeros_like(x), lengths)[0, j])  # all pads: the baseline
        total = sum(t["attribution"] for t in r["tokens"])
        assert abs(r["score"] - f) < 1e-4 and abs(r["attribution_sum"] - total) < 1e-4
        assert abs(r["completeness_gap"] - (f - f0 - total)) < 1e-3
        assert abs(r["completeness_gap"]) < 0.02 * max(abs(f - f0), 0.1), (r["completeness_gap"], f - f0)
        assert [t["feature"] for t in r["top"]][0].endswith(")") and len(r["top"]) == min(10, len(ids))
    one = explain_run(sst2_run.run_dir, SENTENCES[:1], steps=32, device="cpu")[0]  # batching changes nothing
    assert [t["attribution"] for t in one["tokens"]] == pytest.approx([t["attribution"] for t in res[0]["tokens"]],
                                                                       abs=1e-5)


def test_gradient_x_input_on_tokens_and_a_chosen_target(sst2_run):
    pos, neg = explain_run(sst2_run.run_dir, SENTENCES[:1] * 2, method="gradient_x_input", target="positive",
                           device="cpu")[0], explain_run(sst2_run.run_dir, SENTENCES[:1], target="0", device="cpu")[0]
    assert pos["target"] == "positive" and neg["target"] == "negative" and "completeness_gap" not in pos
    assert len(pos["tokens"]) == len(neg["tokens"])


def test_the_cli_prints_coloured_tokens_on_a_terminal_and_plain_ones_in_a_pipe(sst2_run, capsys):
    assert main(["explain", str(sst2_run.run_dir), SENTENCES[0], "--top", "3"]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[1]  # the tokens, after the summary line
    assert line.startswith("a[")  # not a terminal: plain token[+0.123] pieces and line.count("[") == len(explain_run(sst2_run.run_dir, SENTENCES[:1])[0]["tokens"])
    assert out.count("  feature ") == 3
    assert main(["explain", str(sst2_run.run_dir), SENTENCES[1], "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["explanations"]
    assert {"input", "target", "score", "method", "attribution_sum", "completeness_gap", "top", "tokens"} <= set(r)

    console = Console(force_terminal=True, color_system="truecolor", record=True, width=200)
    tokens = [{"token": " good", "attribution": 0.5}, {"token": " bad", "attribution": -0.5},
              {"token": " film", "attribution": 0.0}]
    assert tokens_text(tokens, console) == " good bad film"
    ansi = console.export_text(styles=True)
    assert "48;2;255;64;64" in ansi and "48;2;64;64;255" in ansi and "48;2;255;255;255" in ansi  # red, blue, white


def test_tokens_html_colours_and_escapes():
    html = tokens_html([{"token": " <b>great</b>", "attribution": 1.0}, {"token": ' "&', "attribution": -0.25},
                        {"token": "x", "attribution": 0.0}])
    assert html.startswith('<span class="tokens">') and html.count('<span class="token"') == 3
    assert "&lt;b&gt;great&lt;/b&gt;" in html and "&quot;&amp;" in html and "<b>" not in html
    assert "rgb(255,64,64)" in html and "rgb(207,207,255)" in html and "rgb(255,255,255)" in html
    assert 'title="+1.0000"' in html and 'title="-0.2500"' in html


def test_a_language_model_explains_its_next_token(lm_run, tmp_path, capsys):
    """The next character after a prompt, attributed to the prompt's characters (LIG, pads as baseline)."""
    prompt = "ROMEO:\nWhat light through yo"  # 27 characters, within the context of 32
    (r,) = explain_run(lm_run.run_dir, [prompt], steps=32, device="cpu")
    assert "".join(t["token"] for t in r["tokens"]) == prompt
    task = lm_run.task.eval()
    tok = load_tokenizer(lm_run.run_dir)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        logits = task.model(ids)[0][0, -1]
        base = task.model(torch.zeros_like(ids))[0][0, -1]
    j = int(logits.argmax())
    assert r["target"] == tok.decode([j]) and abs(r["score"] - float(logits[j])) < 1e-4
    assert abs(r["completeness_gap"] - (float(logits[j] - base[j]) - r["attribution_sum"])) < 1e-3
    assert abs(r["completeness_gap"]) < 0.05 * abs(float(logits[j] - base[j])), r["completeness_gap"]
    assert main(["explain", str(lm_run.run_dir), "--prompt", prompt, "--target", "w", "--json"]) == 0
    (w,) = json.loads(capsys.readouterr().out)["explanations"]
    assert w["target"] == "w" and len(w["tokens"]) == len(prompt)


def test_attention_maps_of_a_transformer_run(lm_run, tmp_path, capsys):
    from PIL import Image

    from strata.explain.attention import attention_maps

    tok = load_tokenizer(lm_run.run_dir)
    ids = torch.tensor(tok.encode("To be, or not"))
    maps = attention_maps(lm_run.task.eval(), ids)
    assert maps.shape == (2, 2, len(ids), len(ids))
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, len(ids)))
    assert (maps.triu(1) == 0).all()  # causal: no query looks ahead
    out = tmp_path / "att.png"
    assert main(["explain", str(lm_run.run_dir), "To be, or not", "--method", "attention", "--out", str(out)]) == 0
    assert "attention maps (2 layers x 2 heads)" in capsys.readouterr().out
    w, h = Image.open(out).size
    assert w > h > 300  # a 2 x 2 grid with the characters on the axes


@pytest.mark.parametrize("run,args,message", [
    ("lm", ["日本語のみ"], "is made only of characters this run's tokenizer never saw in training"),
    ("sst2", ["IMAGE"], "looks like a file; this is a text model; give a sentence"),
    ("sst2", ["a fine film", "--method", "grad_cam"], "--method grad_cam does not apply to text inputs; for this run "
                                                      "use one of integrated_gradients, gradient_x_input, attention"),
    ("sst2", ["a fine film", "--method", "attention"], "attention maps need a transformer run"),
    ("sst2", ["a fine film", "--target", "2"], "--target must be a score index 0..1 or a name (negative, positive)"),
    ("sst2", ["a fine film", "--target", "neutral"], "--target must be a score index 0..1"),
    ("lm", [], "give the inputs to explain"),
])
def test_bad_text_inputs_exit_2_with_the_fix(sst2_run, lm_run, tmp_path, capsys, run, args, message):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("L", (8, 8)).save(image)
    run_dir = (sst2_run if run == "sst2" else lm_run).run_dir
    args = [str(image) if a == "IMAGE" else a for a in args]
    assert main(["explain", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    if run == "lm" and args:
        with pytest.raises(StrataError, match="never saw in training"):
            explain_run(run_dir, args)


def test_a_transformer_classifier_with_a_cls_token(mirror, tmp_path, capsys):
    """A 1-layer encoder with [CLS] pooling on 600 SST-2 phrases, one epoch: token attributions stay
    complete (the learned pad embedding is the baseline) and the attention maps carry the [CLS] row."""
    from strata.api import train

    torch.set_num_threads(1)
    res = train({"name": "sst2-cls", "data": {"name": "sst2", "batch_size": 32, "limit": 600, "vocab_size": 400,
                                              "val_fraction": 0.01},
                 "model": {"name": "transformer_classifier", "n_layer": 1, "n_head": 2, "dim": 16,
                           "context_size": 32, "pooling": "cls", "dropout": 0.0},
                 "task": {"name": "sequence_classify"},
                 "trainer": {"max_epochs": 1, "progress": "off", "seed": 0, "device": "cpu"}},
                run_dir=tmp_path / "cls")
    (r,) = explain_run(res.run_dir, SENTENCES[:1], steps=64, device="cpu")
    assert abs(r["completeness_gap"]) < 0.05 * max(abs(r["attribution_sum"] + r["completeness_gap"]), 0.01), r
    out = tmp_path / "maps.png"
    (a,) = explain_run(res.run_dir, SENTENCES[:1], method="attention", out=out, device="cpu")
    assert (a["layers"], a["heads"], a["out"]) == (1, 2, str(out)) and out.is_file()
    assert [t["token"] for t in a["tokens"]] == [t["token"] for t in r["tokens"]]  # [CLS] is not a token shown
    assert all(0 <= t["attribution"] <= 1 for t in a["tokens"]) and a["attribution_sum"] <= 1 + 1e-6
    from strata.explain.attention import attention_maps

    ids = torch.tensor(load_tokenizer(res.run_dir).encode(" " + sst_normalize(SENTENCES[0])))
    maps = attention_maps(res.task.eval(), ids)
    assert maps.shape == (1, 2, len(ids) + 1, len(ids) + 1)  # the [CLS] position in front
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 2, len(ids) + 1))
