"""The JSON beside an exported model: everything a program needs to go from a raw input to the
model's inputs, and from its outputs to what `strata predict` answers, with only numpy and a runtime.

Fields
    strata_export   1 (the version of this layout); marks the file as strata's own
    format, model   "onnx" | "pt2", and the model file's name (in the same folder)
    task, model_name, describe   the run's task and [model] name; what the graph computes ("class logits")
    inputs          [{name, shape, dtype}]; null in a shape is a dynamic dimension (batch, sequence length)
    max_sequence_length   the longest sequence the graph takes (sequence models only; crop longer ones)
    outputs         [{name, shape, dtype}], as inputs
    preprocess      how a raw input becomes the inputs, by `type`:
      image   channels, size [H, W]; pixels: uint8 values / 255 -> [0, 1] (grayscale: PIL's "L",
              0.299 R + 0.587 G + 0.114 B); resize: to size, box filter when shrinking, bilinear when
              growing; background ("dark" | "light" | null) and invert: when the mean of an image's
              border pixels (first and last row and column) is < 0.5 it is dark, >= 0.5 light, and an
              image whose background differs from training's is inverted (x = 1 - x); normalize:
              {mean, std} per channel, x = (x - mean) / std, or null
      text    tokenizer: "char" | "bpe", tokenizer_file: the run's tokenizer.json as an object (char:
              {"chars"}: id = 4 + index of the character in chars, unknown characters -> unk_id; bpe:
              the Hugging Face `tokenizers` JSON), special_ids {pad, bos, eos, unk}; normalize: "sst"
              (lower case, Penn-Treebank tokens; see `sst_rule`) or null; prefix: text put before each
              sentence before encoding; padding: rows right-padded with pad to the longest, `lengths`
              holds each row's real token count; max_len: longer rows are cut (0: no cut)
      table   numeric [{name, mean, std}]: x = (value - mean) / std, missing -> 0; categorical
              [{name, values}]: code = 1 + index in values, 0 for unseen or missing; encoding "onehot"
              (a block of len(values) + 1 columns per categorical column after the numeric ones) or
              "index"; missing: the cell values read as missing (compared lower-cased)
      others  what the task says its inputs are (a latent vector, a noisy image and a step)
    postprocess     how the outputs become `strata predict`'s answer (e.g. softmax, class_names, top_k,
                    rounded to `round` digits; a threshold; units)
    checked         max_abs_diff against torch, tolerance, split, examples and the input shapes checked
    strata_version, torch_version, run (the run folder's name), checkpoint
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from strata.export.graph import SEQUENCE, ExportGraph

SST_RULE = ("lower-case; U+2019 -> \"'\"; a space either side of each of . , ! ? ; : ( ) \"; \"n't\" split off "
            "(\"don't\" -> \"do n't\"); 's 're 've 'll 'd 'm split off; runs of white space -> one space, trimmed")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _shapes(names, examples: list, dynamic: dict) -> list[dict]:
    out = []
    for i, (name, t) in enumerate(zip(names, examples)):
        shape = [None if d in dynamic.get(name, {}) else n for d, n in enumerate(t.shape)]
        out.append({"name": name, "shape": shape, "dtype": _dtype(t)})
    return out


def _text(info: dict, run_dir: Path) -> dict:
    from strata.data.tokenizers import ARTIFACT, BOS, EOS, PAD, UNK

    tokenizer = json.loads((run_dir / ARTIFACT).read_text(encoding="utf-8"))
    sst = info.get("normalize") == "sst"
    return {"type": "text", "tokenizer": info.get("tokenizer"), "tokenizer_file": tokenizer,
            "special_ids": {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK},
            "normalize": "sst" if sst else None, **({"sst_rule": SST_RULE} if sst else {}),
            "prefix": " " if sst else "", "padding": "right, with the pad id; `lengths` holds each row's real tokens",
            "max_len": info.get("max_len", 0)}


def _image(info: dict) -> dict:
    c, h, w = info["in_shape"]
    return {"type": "image", "channels": c, "size": [h, w], "pixels": "uint8 / 255",
            "grayscale": "PIL L: 0.299 R + 0.587 G + 0.114 B" if c == 1 else None,
            "resize": "to size: box filter when shrinking, bilinear when growing",
            "background": info.get("background"), "invert": "when the border mean is on the other side of 0.5",
            "normalize": info.get("normalize")}


def _table(info: dict) -> dict:
    from strata.data.tables import MISSING

    return {"type": "table", "numeric": info["numeric"], "categorical": info["categorical"],
            "encoding": info["encoding"], "missing": sorted(MISSING), "feature_names": info.get("feature_names"),
            "delimiter": info.get("delimiter", ",")}


def data_inputs(info: dict, run_dir: Path) -> dict:
    """How the run's data set turns a raw input into the model's input (info: the data's facts)."""
    kind = info.get("kind") or info.get("input")
    if kind == "image" and "in_shape" in info:
        return _image(info)
    if kind == "text" and (run_dir / "tokenizer.json").is_file():
        return _text(info, run_dir)
    if kind == "table" and "numeric" in info:
        return _table(info)
    return {"type": kind or "tensor", "note": "the model input as the data set's batches hold it",
            **{k: info[k] for k in ("in_shape", "standardize") if k in info}}


def describe(run, graph: ExportGraph, fmt: str, model_name: str, output_shapes: list, checked: dict) -> dict:
    """The preprocessing JSON of an export (see the module docstring)."""
    import strata

    dyn_out = {}
    for i, name in enumerate(graph.output_names):  # a dimension that differed between checks is dynamic
        sizes = {tuple(s[i]) for s in output_shapes}
        dims = [len({s[d] for s in sizes}) > 1 for d in range(len(next(iter(sizes))))]
        dyn_out[name] = {d: "dynamic" for d, moved in enumerate(dims) if moved}
    with torch.no_grad():
        outs = graph.module(*graph.args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {
        "strata_export": 1, "format": fmt, "model": model_name,
        "task": run.cfg.task.name, "model_name": run.cfg.model.name, "describe": graph.describe,
        "inputs": _shapes(graph.input_names, graph.args, graph.dynamic),
        "outputs": _shapes(graph.output_names, outs, dyn_out),
        "preprocess": graph.preprocess if graph.preprocess is not None else data_inputs(run.info, Path(run.run_dir)),
        "postprocess": graph.postprocess,
        **({"max_sequence_length": graph.sequence_range[1]} if any(
            SEQUENCE in d.values() for d in graph.dynamic.values()) else {}),
        "checked": checked,
        "strata_version": getattr(strata, "__version__", None), "torch_version": torch.__version__,
        "run": Path(run.run_dir).name, "checkpoint": Path(run.checkpoint).name if run.checkpoint else None,
    }
