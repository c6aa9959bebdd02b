"""The `strata` command: parse -> build config -> call the library. No logic of its own.

Exit codes: 0 done; 2 bad input (usage, config, data, checkpoint, a full disk, a run whose loss stopped
being finite); 130 / 143 interrupted after saving; 1 a bug in strata (the traceback and a request to report it).
"""

from __future__ import annotations

import sys

try:
    import argparse
    import json
    import shlex
except KeyboardInterrupt:  # Ctrl-C while the command starts: one line, no traceback
    print("strata: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"strata: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {v}")
        return v

    return parse


def _positive_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {v}")
        return v

    return parse


def _top_p(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--top-p must be a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"--top-p must be in (0, 1], got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="strata", description="Define, train, evaluate, explain and use deep neural networks.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model from a TOML run config")
    t.add_argument("config", help="run config (TOML); see `strata recipes`")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set trainer.max_epochs=3")
    t.add_argument("--run-dir", help="run folder (default runs/<name>-<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last")
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    t.add_argument("--no-report", action="store_true",
                   help="do not write RUN_DIR/report.html when the run ends (`strata report RUN_DIR` writes it later)")

    e = sub.add_parser("evaluate", help="evaluate a trained run on its validation or test split")
    e.add_argument("run_dir")
    e.add_argument("--split", choices=["val", "test"], default="test")
    e.add_argument("--device")
    e.add_argument("--json", action="store_true")

    pr = sub.add_parser("predict", help="use a trained run on inputs: image files, sentences, .wav files")
    pr.add_argument("run_dir")
    pr.add_argument("inputs", nargs="*")
    pr.add_argument("--user", help="rating / ranking runs: the user's id, as in the ratings")
    pr.add_argument("--item", help="with --user: that item's predicted score")
    pr.add_argument("--top", type=_positive_int("--top"), help="with --user: how many items to recommend (10)")
    pr.add_argument("--device")
    pr.add_argument("--json", action="store_true")

    g = sub.add_parser("generate", help="generate text or images from a trained generative run")
    g.add_argument("run_dir")
    g.add_argument("--prompt")
    g.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"))
    g.add_argument("--temperature", type=_positive_float("--temperature"))
    g.add_argument("--top-k", type=_positive_int("--top-k"))
    g.add_argument("--top-p", type=_top_p)
    g.add_argument("--seed", type=int)
    g.add_argument("--n", type=_positive_int("--n"))
    g.add_argument("--class", dest="class_", type=int)
    g.add_argument("--steps", type=_positive_int("--steps"))
    g.add_argument("--guidance", type=float)
    g.add_argument("--interpolate", nargs=2, metavar=("A", "B"))
    g.add_argument("--out")
    g.add_argument("--out-dir")
    g.add_argument("--device")
    g.add_argument("--json", action="store_true")

    x = sub.add_parser("explain", help="which pixels or features of an input a run's output depends on")
    x.add_argument("run_dir")
    x.add_argument("inputs", nargs="*", help="images, table rows or files, sentences; a language model's prompt")
    x.add_argument("--prompt", help="language models: the text whose next token is explained")
    x.add_argument("--method", default="integrated_gradients",
                   help="integrated_gradients (default), gradient_x_input, saliency, occlusion, grad_cam (images); "
                        "text: integrated_gradients, gradient_x_input, attention (transformers' maps)")
    x.add_argument("--target", help="the class (index or name) or output to explain; default: the predicted one")
    x.add_argument("--steps", type=_positive_int("--steps"), default=32, help="integrated-gradients path steps")
    x.add_argument("--top", type=_positive_int("--top"), default=10, help="features listed for non-image inputs")
    x.add_argument("--out", help="heatmap PNG for image inputs (default RUN_DIR/explain.png); attention maps "
                                 "(default RUN_DIR/attention.png)")
    x.add_argument("--device")
    x.add_argument("--json", action="store_true")

    fe = sub.add_parser("features", help="what a trained network learned, layer by layer: filters, feature maps, "
                        "top-activating patches, linear-probe curve",
                        description="Draw the hierarchy of features of a trained run into RUN_DIR/features/: "
                        "filters.png (the first convolution's kernels), maps-<input>-<stage>.png (each stage's "
                        "strongest feature maps for an input), patches-<stage>.png (the test patches that excite "
                        "each stage's strongest channels most; rows = channels) and probe.png (the test accuracy of "
                        "a logistic regression on each stage's pooled features, layer 0 = the raw input). Models "
                        "without convolution (MLPs, RNNs, transformers) get the probe curve.")
    fe.add_argument("run_dir")
    fe.add_argument("--input", dest="inputs", action="append", metavar="FILE",
                    help="an image to draw feature maps for (repeatable; default: the first test image)")
    fe.add_argument("--layers", nargs="+", metavar="NAME",
                    help="module names (as in `strata summary`) to draw instead of the model's stages")
    fe.add_argument("--only", nargs="+", choices=["filters", "maps", "patches", "probe"],
                    help="draw only these parts (default: all the model has)")
    fe.add_argument("--no-probe", action="store_true", help="skip the probe curve (the slowest part)")
    fe.add_argument("--probe-examples", type=_positive_int("--probe-examples"), default=5000,
                    help="training examples for the probes (default 5000; test examples: 40%% as many)")
    fe.add_argument("--top", type=_positive_int("--top"), default=8, help="patches per channel (default 8)")
    fe.add_argument("--channels", type=_positive_int("--channels"), default=8,
                    help="strongest channels per stage in the patch grids (default 8)")
    fe.add_argument("--out", help="folder for the pictures (default RUN_DIR/features)")
    fe.add_argument("--device")
    fe.add_argument("--json", action="store_true")

    rp = sub.add_parser("report", help="one self-contained HTML page of a run: curves, metrics, errors, attributions")
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="the HTML file to write (default RUN_DIR/report.html)")
    rp.add_argument("--device")
    rp.add_argument("--json", action="store_true")

    s = sub.add_parser("summary", help="layers, output shapes and parameter counts of a config's model")
    s.add_argument("config")
    s.add_argument("--set", dest="overrides", action="append", default=[])
    s.add_argument("--json", action="store_true")

    r = sub.add_parser("recipes", help="the shipped run configs with their measured results")
    r.add_argument("--json", action="store_true")

    d = sub.add_parser("datasets", help="list, verify or download data sets")
    d.add_argument("action", choices=["list", "verify", "download"])
    d.add_argument("name", nargs="?")
    d.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="write a trained run as an ONNX or torch.export file, checked against torch")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    ex.add_argument("--out", help="the file to write (default RUN_DIR/export/model.onnx or model.pt2)")
    ex.add_argument("--which", choices=["best", "last"], default="best", help="the checkpoint to export")
    ex.add_argument("--inputs", nargs="+", metavar="INPUT",
                    help="real inputs to check the export on, as strata predict takes them (default: the run's "
                         "own data; needed for a run trained on arrays from Python: .npy files)")
    ex.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="serve trained runs over HTTP: a JSON API and a web page")
    sv.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=_positive_int("--max-batch"), default=32,
                    help="most inputs in one forward pass of the dynamic batcher")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long the batcher waits for more requests before running a batch")
    sv.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    sv.add_argument("--device")
    sv.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MiB (larger: 413)")
    sv.add_argument("--max-items", type=_positive_int("--max-items"), default=64,
                    help="most inputs (or samples) in one request")
    sv.add_argument("--timeout-s", type=float, default=30.0, help="longest a request may take (longer: 504)")
    sv.add_argument("--threads", type=_positive_int("--threads"),
                    help="torch threads for the forward passes (default: torch's, which follows OMP_NUM_THREADS)")

    q = sub.add_parser("quickstart", help="train a CNN on scikit-learn's digits, offline, in under a minute")
    q.add_argument("--run-dir")
    q.add_argument("--device")
    q.add_argument("--json", action="store_true")
    return p


def _print(obj, as_json: bool, text: str | None = None):
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        print(text if text is not None else json.dumps(obj, indent=1, default=str))


# --- commands ---------------------------------------------------------------------------------


def cmd_train(a) -> int:
    from strata.api import train
    from strata.train.progress import Progress

    res = train(a.config, a.overrides, run_dir=a.run_dir, device=a.device, resume=a.resume,
                progress=Progress(enabled=not a.json) if a.json else None)
    if not a.no_report:
        from strata.report.html import report_after_training

        written = report_after_training(res.run_dir, device=a.device)
        if written:
            print(f"report: {written['out']} ({written['seconds']:.1f} s)", file=sys.stderr)
    if a.json:
        _print(res.summary, True)
    return 0


def cmd_evaluate(a) -> int:
    from strata.evaluate import evaluate_run

    out = evaluate_run(a.run_dir, a.split, device=a.device)
    _print(out, a.json, "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in out.items()))
    return 0


def cmd_predict(a) -> int:
    from strata.evaluate import predict_run, recommend_run

    request = {k: getattr(a, k) for k in ("user", "item", "top") if getattr(a, k) is not None}
    if request or not a.inputs:
        from strata.tasks._recommend import as_text

        out = recommend_run(a.run_dir, request, a.inputs, device=a.device)
        if "notice" in out and not a.json:
            print(f"strata: {out['notice']}", file=sys.stderr)
        _print(out, a.json, as_text(out))
        return 0
    results = predict_run(a.run_dir, a.inputs, device=a.device)
    if a.json:
        _print({"predictions": results}, True)
    else:
        from strata.evaluate import example_labels

        for inp, r in zip(example_labels(a.inputs, len(results)), results):
            main = r.get("label", r.get("text", r.get("translation", "")))
            extra = f" ({r['probability']:.1%})" if "probability" in r else ""
            print(f"{inp}: {main}{extra}" + "".join(f"  {k}={v}" for k, v in r.items()
                                                     if k not in ("label", "probability", "top", "text", "translation")))
    return 0


def cmd_generate(a) -> int:
    from strata.evaluate import generate_run

    keys = ["prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "n", "class_", "steps", "guidance",
            "interpolate", "out", "out_dir"]
    request = {k: getattr(a, k) for k in keys if getattr(a, k) is not None}
    out = generate_run(a.run_dir, request, device=a.device)
    _print(out, a.json, out.get("text") if isinstance(out.get("text"), str) else None)
    return 0


def cmd_explain(a) -> int:
    from strata.errors import StrataError
    from strata.evaluate import explain_run
    from strata.explain.text import tokens_text

    inputs = list(a.inputs) + ([a.prompt] if a.prompt is not None else [])
    if not inputs:
        raise StrataError("give the inputs to explain (images, table rows, sentences) or a language model's "
                          "--prompt TEXT")
    results = explain_run(a.run_dir, inputs, method=a.method, target=a.target, steps=a.steps, out=a.out,
                          top=a.top, device=a.device)
    if a.json:
        _print({"explanations": results}, True)
        return 0
    for r in results:
        gap = f", completeness gap {r['completeness_gap']:+.4f}" if "completeness_gap" in r else ""
        what = "attention received in the last layer" if r["method"] == "attention" else "attributions"
        print(f"{r['input']}: {r['target']} (score {r['score']:.4f}); {what} sum to {r['attribution_sum']:.4f}{gap}")
        if "tokens" in r:
            tokens_text(r["tokens"])
        for f in r.get("top", []):
            print(f"  feature {f['feature']}: {f['attribution']:+.4f}")
        if r["method"] == "attention":
            print(f"attention maps ({r['layers']} layers x {r['heads']} heads): {r['out']}")
    if results and "out" in results[0] and results[0]["method"] != "attention":
        print(f"heatmap: {results[0]['out']}")
    return 0


def cmd_features(a) -> int:
    from strata.explain.features import PARTS, features_run

    parts = a.only or ([p for p in PARTS if p != "probe"] if a.no_probe else None)
    out = features_run(a.run_dir, inputs=a.inputs, layers=a.layers, parts=parts, out=a.out,
                       probe_examples=a.probe_examples, channels=a.channels, top=a.top,
                       device=a.device)
    if a.json:
        _print(out, True)
        return 0
    for note in out["notes"]:
        print(f"strata: {note}", file=sys.stderr)
    print(f"stages: {', '.join(out['stages'])}")
    if "filters" in out:
        print(f"filters: {out['filters']}")
    for m in out.get("maps", []):
        print(f"feature maps of {m['layer']} for {m['input']}: {m['path']}")
    for p in out.get("patches", []):
        print(f"top patches of {p['layer']} ({p['patch'][0]}x{p['patch'][1]} px): {p['path']}")
    if "probe" in out:
        c = out["probe"]
        print(f"linear probes ({c['train_examples']:,} train / {c['test_examples']:,} test examples, "
              f"{c['seconds']:.1f} s): {c['path']}")
        wl, wk = (max(len(r[k]) for r in c["layers"]) for k in ("layer", "kind"))
        for i, r in enumerate(c["layers"]):
            print(f"  {i:>2} {r['layer']:<{wl}}  {r['kind']:<{wk}} {r['features']:>6,} features  {r['test_acc']:.2%}")
    return 0


def cmd_report(a) -> int:
    from strata.report.html import write_report

    out = write_report(a.run_dir, out=a.out, device=a.device)
    _print(out, a.json, f"report: {out['out']} ({out['bytes'] / 1024:.0f} KiB, {out['seconds']:.1f} s): "
                        + ", ".join(out["sections"]))
    return 0


def cmd_summary(a) -> int:
    from strata.evaluate import model_summary

    table, total = model_summary(a.config, a.overrides)
    if a.json:
        _print({"layers": table, "parameters": total}, True)
        return 0
    w = max([len(r["name"]) for r in table] + [5])
    print(f"{'layer':<{w}}  {'type':<20} {'output shape':<22} {'params':>10}")
    for r in table:
        print(f"{r['name']:<{w}}  {r['type']:<20} {str(r['output_shape']):<22} {r['params']:>10,}")
    print(f"total parameters: {total:,}")
    return 0


def cmd_recipes(a) -> int:
    from strata.recipes import list_recipes

    recipes = list_recipes()
    if a.json:
        _print({"recipes": recipes}, True)
        return 0
    for r in recipes:
        print(f"{r['file']}\n    {r['description']}\n    result: {r['result']}")
    return 0


def cmd_datasets(a) -> int:
    from strata.data import DATASETS
    from strata.data import download as dl

    names = [a.name] if a.name else DATASETS.names()
    if a.name:
        DATASETS.get(a.name)  # a clear error for an unknown name
    if a.action == "list":
        rows = [{"name": n, "description": DATASETS.get(n).description, "license": DATASETS.get(n).license,
                 "splits": DATASETS.get(n).splits, "files": len(DATASETS.get(n).files)} for n in names]
        _print({"datasets": rows}, a.json, "\n".join(f"{r['name']:<16} {r['description']}\n{'':<16} license: "
                                                      f"{r['license']}" for r in rows))
        return 0
    fn = dl.verify if a.action == "verify" else dl.download
    rows = {n: fn(n) for n in names}
    bad = any(f["status"] in ("missing", "corrupt", "failed") for fs in rows.values() for f in fs)
    if a.json:
        _print({"datasets": rows}, True)
    else:
        print(f"cache: {dl.cache_dir()}")
        for n, fs in rows.items():
            if not fs:
                print(f"{n}: nothing to download (ships with a package)")
            for f in fs:
                print(f"{n}: {f['path']}: {f['status']}" + (f"\n    {f['error']}" if f.get("error") else ""))
    return EXIT_BAD_INPUT if bad else 0


def cmd_export(a) -> int:
    from strata.export import export_run

    out = export_run(a.run_dir, fmt=a.format, out=a.out, which=a.which, inputs=a.inputs)
    shapes = ", ".join(f"{i['name']} ({', '.join('?' if d is None else str(d) for d in i['shape'])}) {i['dtype']}"
                       for i in out["inputs"])
    _print(out, a.json, f"{out['format']}: {out['out']} ({out['graph']})\n  inputs: {shapes}\n"
                        f"  checked: max |exported - torch| = {out['max_abs_diff']:.2e} "
                        f"on {out['checked_examples']} real inputs\n  preprocessing: {out['preprocessing']}")
    return 0


def cmd_serve(a) -> int:
    from strata.serve import serve

    serve(a.run_dirs, host=a.host, port=a.port, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
          batching=not a.no_batching, device=a.device, max_body_bytes=int(a.max_body_mb * 2**20),
          max_items=a.max_items, timeout_s=a.timeout_s, threads=a.threads)
    return 0


def cmd_quickstart(a) -> int:
    from strata.quickstart import quickstart

    out = quickstart(run_dir=a.run_dir, device=a.device, quiet=a.json)
    if a.json:
        _print(out, True)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "generate": cmd_generate,
            "explain": cmd_explain, "summary": cmd_summary, "features": cmd_features, "recipes": cmd_recipes,
            "datasets": cmd_datasets, "report": cmd_report,
            "export": cmd_export, "serve": cmd_serve, "quickstart": cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    try:
        import warnings

        warnings.formatwarning = lambda message, *a, **k: f"strata: warning: {message}\n"
        args = build_parser().parse_args(argv)
        from strata.errors import Interrupted, StrataError, storage_error
    except KeyboardInterrupt:
        print("strata: interrupted", file=sys.stderr)
        return 130
    try:
        return COMMANDS[args.command](args)
    except StrataError as e:
        if args.debug:
            raise
        print(f"strata {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:
        from strata.run_folder import RunFolder

        config, run_dir = (shlex.quote(str(p)) for p in (RunFolder(e.run_dir).config, e.run_dir))
        print(f"strata {args.command}: {e}. Resume with:\n  strata train {config} --run-dir {run_dir} --resume",
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"strata {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        error = storage_error(e) if isinstance(e, OSError) else None  # a full disk, a read-only folder
        if error is not None:
            print(f"strata {args.command}: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        import traceback

        traceback.print_exc()
        print(f"strata {args.command}: internal error ({type(e).__name__}): a bug in strata, not in your input; "
              "please report it with the command you ran and the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
