"""The hierarchy of features, as pictures: what a trained network computes, stage by stage.

- first_layer_filters: the first convolution's kernels drawn as images (edge and blob detectors).
- activation_maps: for one input, each stage's feature maps, strongest channels first.
- top_patches: for each stage, the test images' receptive-field crops that excite each of its
  strongest channels most (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
  Networks"). A unit's receptive field is measured, not derived: the support of the gradient of one
  unit with respect to random inputs, which holds for any path (residual, padding, pooling).
- the layer-wise linear-probe curve (strata/explain/probe.py), for images, sequences and tables.

`features_run` draws all of them for a run folder; `strata features RUN_DIR` and the HTML report call it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from strata.errors import StrataError
from strata.files import atomic_write
from strata.explain.layers import OUTPUT, Catch, Stage, conv2d_layers, named_stage, stages
from strata.explain.probe import draw_probe_curve, probe_curve, sample_batches

PARTS = ("filters", "maps", "patches", "probe")
DISPLAY_SIDE = 48  # filters, maps and patches are enlarged (nearest) to about this many pixels


def _enlarge(images: torch.Tensor, side: int = DISPLAY_SIDE) -> torch.Tensor:
    """(N, C, h, w) -> the same, enlarged by a whole factor so the longer side is about `side`."""
    k = max(1, round(side / max(images.shape[-2:])))
    return images.repeat_interleave(k, -2).repeat_interleave(k, -1)


def no_convolution(model_name: str) -> StrataError:
    return StrataError(f"this run's model ({model_name}) has no 2-d convolution, so it has no filters, feature "
                       "maps or patches to draw; its layer-wise probe curve is still available: "
                       "strata features RUN_DIR --only probe")


# ---------------------------------------------------------------------------------------------
# Filters


def first_layer_filters(model: torch.nn.Module) -> torch.Tensor:
    """The first Conv2d's kernels as (N, C, kh, kw) images in [0, 1], 0.5 for a zero weight and each
    kernel scaled by its largest |weight|; C = 1 (grey) or 3 (RGB: an RGB input's filters), other
    channel counts are averaged to grey."""
    convs = conv2d_layers(model)
    if not convs:
        raise no_convolution(type(model).__name__)
    w = convs[0][1].weight.detach().float().cpu()  # (N, C_in / groups, kh, kw)
    if w.shape[1] not in (1, 3):
        w = w.mean(1, keepdim=True)
    scale = w.flatten(1).abs().amax(1).clamp(min=1e-12)[:, None, None, None]
    return (0.5 + 0.5 * w / scale).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Activation maps for one input


def strongest_channels(act: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k channels of (B, C, h, w) activations with the largest mean, strongest first."""
    return act.float().mean((0, 2, 3)).argsort(descending=True)[:k]


def activation_maps(act: torch.Tensor, image: torch.Tensor, k: int = 15) -> torch.Tensor:
    """One input's (C, h, w) stage output and its (c, H, W) display image in [0, 1] -> a stack of
    panels for a grid: the input, then the k strongest channels' maps, each scaled to [0, 1]."""
    maps = act[strongest_channels(act[None], k)].float()  # (k, h, w)
    lo, hi = maps.flatten(1).amin(1), maps.flatten(1).amax(1)
    maps = ((maps - lo[:, None, None]) / (hi - lo).clamp(min=1e-12)[:, None, None])[:, None]  # (k, 1, h, w)
    H, W = image.shape[-2:]
    maps = F.interpolate(maps, size=(H, W), mode="nearest")  # the input's size, so the panels line up
    if image.shape[0] == 3:
        maps = maps.expand(-1, 3, -1, -1)
    return _enlarge(torch.cat([image[None].float(), maps]))


# ---------------------------------------------------------------------------------------------
# Top-activating patches


def _support(g: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the pixels with a nonzero gradient (B, C, H, W), or None."""
    seen = g.abs().sum((0, 1)) > 0  # (H, W)
    rows, cols = seen.any(1).nonzero()[:, 0], seen.any(0).nonzero()[:, 0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


class _Stop(Exception):
    """Ends a forward pass once the stage of interest has run."""


def _unit_boxes(model, stage: Stage, x: torch.Tensor):
    """The stage's map size (h, w), and the input boxes (see _support) of its centre unit and of the
    unit one down and right of it, by gradients of |activation| summed over channels and examples."""

    def stop(module, inputs, output):
        raise _Stop

    with Catch([stage], detach=False) as caught, torch.enable_grad():
        handle = stage.module.register_forward_hook(stop)  # after Catch's own hook
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        act = caught.outputs[stage.name]  # (B, C, h, w)
        h, w = act.shape[-2:]
        ci, cj = h // 2, w // 2
        boxes = []
        for i, j in ((ci, cj), (ci + 1, cj + 1)):
            if i < h and j < w:
                (g,) = torch.autograd.grad(act[:, :, i, j].abs().sum(), x, retain_graph=True)
                boxes.append(_support(g))
    return (h, w), (ci, cj), boxes


def receptive_field(model, stage: Stage, in_shape: tuple, samples: int = 8):
    """-> ((top, left, height, width) of the input box that the stage's unit (0, 0) sees (top and left
    may be negative: padding), the (row, col) stride between neighbouring units in input pixels).
    Measured: the box around every input pixel with a nonzero gradient of one unit over random inputs
    (one input can hide part of the field behind a max pool or a ReLU), on an input three times as
    large so that the border clips no field; a model that takes only its own size is measured on that."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    C, H, W = in_shape
    for scale in (3, 1):
        x = torch.randn(samples, C, scale * H, scale * W, device=device, requires_grad=True)
        try:
            (h, w), (ci, cj), boxes = _unit_boxes(model, stage, x)
            break
        except (RuntimeError, ValueError, IndexError, TypeError):  # a model fixed to its input size
            if scale == 1:
                raise
    if not boxes or boxes[0] is None:  # a unit that sees nothing (all dead): the whole image
        return (0, 0, H, W), (H / h, W / w)
    top, left, bottom, right = boxes[0]
    stride = (scale * H / h, scale * W / w)
    if len(boxes) == 2 and boxes[1] is not None:
        stride = (boxes[1][0] - top, boxes[1][1] - left) if scale > 1 or (top > 0 and left > 0) else \
            (boxes[1][2] - bottom, boxes[1][3] - right)
    return (top - round(ci * stride[0]), left - round(cj * stride[1]), bottom - top, right - left), stride


def crop(image: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """A (C, height, width) crop of (C, H, W); what falls outside the image is 0."""
    C, H, W = image.shape
    out = torch.zeros(C, height, width, dtype=image.dtype)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + height, H), min(left + width, W)
    if t1 > t0 and l1 > l0:
        out[:, t0 - top:t1 - top, l0 - left:l1 - left] = image[:, t0:t1, l0:l1]
    return out


def top_patches(model, stage: Stage, images: torch.Tensor, shown: torch.Tensor, channels: int = 8, k: int = 8,
                batch_size: int = 256) -> tuple[torch.Tensor, list[int]]:
    """(channels * k patches (N, C, rh, rw) in rows of k, the channel indices): for each of the stage's
    `channels` strongest channels (largest mean of each image's strongest response), the receptive
    fields of the k test images that excite it most, each image at its strongest position.
    `images` are the model's inputs, `shown` the same images for display in [0, 1]."""
    best, where = [], []
    with Catch([stage]) as caught, torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
            act = caught.outputs[stage.name].float()  # (B, C, h, w)
            flat = act.flatten(2)  # (B, C, h*w)
            v, j = flat.max(2)  # each image's strongest response per channel and where
            best.append(v.cpu())
            where.append(j.cpu())
    best, where = torch.cat(best), torch.cat(where)  # (N, C)
    h, w = act.shape[-2:]
    chosen = best.mean(0).argsort(descending=True)[:channels]
    (top, left, rh, rw), (sh, sw) = receptive_field(model, stage, tuple(images.shape[1:]))
    patches = []
    for c in chosen.tolist():
        for n in best[:, c].argsort(descending=True)[:k].tolist():
            i, j = divmod(int(where[n, c]), w)
            patches.append(crop(shown[n], top + round(i * sh), left + round(j * sw), rh, rw))
    return torch.stack(patches), chosen.tolist()


# ---------------------------------------------------------------------------------------------
# A run folder


def _display(x: torch.Tensor, info: dict) -> torch.Tensor:
    """Model inputs (B, C, H, W) -> images in [0, 1] (the data set's normalisation undone)."""
    stats = info.get("normalize")
    x = x.detach().float().cpu()
    if isinstance(stats, dict):
        shape = (1, -1, 1, 1)
        x = x * torch.tensor(stats["std"]).view(shape) + torch.tensor(stats["mean"]).view(shape)
    if x.shape[1] not in (1, 3):
        x = x.mean(1, keepdim=True)
    return x.clamp(0, 1)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "input"


def _out_folder(run_dir, out) -> Path:
    """RUN_DIR/features, or `out`: a new or empty folder, or one this command wrote before (it holds
    features.json), so nobody's files are overwritten."""
    from strata.run_folder import RunFolder

    if out is None:
        return RunFolder(run_dir).features
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StrataError(f"--out {out} is a file; give a folder for the pictures (new, or one `strata features` "
                          "wrote before)")
    if out.is_dir() and any(out.iterdir()) and not (out / "features.json").is_file():
        raise StrataError(f"--out {out} holds other files; strata features writes only into a new or empty "
                          "folder or one it wrote before (with features.json), so nothing there is overwritten")
    return out


def _inputs(run, files: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The user's input files, encoded as the run's data set encodes them, and their names."""
    from strata.data import DATASETS
    from strata.data.images import SUFFIXES

    kind = run.info.get("kind")
    for f in files:
        if kind == "image" and Path(f).suffix.lower() not in SUFFIXES:
            raise StrataError(f"--input {f}: this run reads images ({run.cfg.data.name}), and {Path(f).name} is not "
                              f"one; give PNG or JPEG files ({', '.join(SUFFIXES)})")
    if kind != "image":
        raise StrataError(f"--input: feature maps are drawn for image runs; this run reads "
                          f"{kind or run.cfg.data.name} data. Leave --input out for its probe curve")
    batch = DATASETS.get(run.cfg.data.name).encode_inputs(list(files), run.info, run.run_dir)
    return batch["x"], [Path(f).stem for f in files]


def features_run(run_dir, inputs: list[str] | None = None, layers: list[str] | None = None, parts=None,
                 out=None, probe_examples: int = 5000, max_features: int = 2048, channels: int = 8, top: int = 8,
                 patch_examples: int = 2000, device: str | None = None) -> dict:
    """Draw what a trained run (a run folder, or the Run strata.fit / strata.load return) computes,
    stage by stage, into RUN_DIR/features (or `out`):

    filters.png           the first convolution's kernels
    maps-<input>-<stage>.png   each stage's strongest feature maps for each input (default: the
                          first test image), the input first
    patches-<stage>.png   rows = the stage's `channels` strongest channels, columns = the `top` test
                          patches that excite each most
    probe.png             the linear-probe curve; its numbers are in the result and in features.json

    parts: which of PARTS to draw (default: all the model has; a model without convolution gets
    the probe only). layers: module names to draw instead of the model's stages. probe_examples:
    training examples for the probe (test examples: 40 % as many, at most the test split).
    Returns the paths written and the probe curve (also written to features.json)."""
    from strata.api import load_run
    from strata.data import load_data
    from strata.device import pick_device
    from strata.fitting import Run
    from strata.report.grid import save_grid

    unknown = [p for p in (parts or ()) if p not in PARTS]
    if unknown:
        raise StrataError(f"--only {unknown[0]}: unknown part; parts: {', '.join(PARTS)}")
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir, device=pick_device(device or "auto"))
    folder = _out_folder(run.run_dir, out)
    if run.cfg.data.name == "python":
        raise StrataError("this run was trained on arrays given in Python, which its folder does not keep; the "
                          "pictures are drawn from a data set's test split: train on a registered data set or a "
                          ".csv / .npz file (strata.fit(model, \"mnist\") or a path)")
    task, model = run.task.eval(), run.model.eval()
    dev = run.device
    has_conv = bool(conv2d_layers(model))
    asked = list(parts) if parts else [p for p in PARTS if has_conv or p == "probe"]
    if not has_conv and (inputs or set(asked) & {"filters", "maps", "patches"}):
        raise no_convolution(run.cfg.model.name)
    if inputs and "maps" not in asked:
        raise StrataError("--input is drawn as feature maps; add maps to --only (or leave --only out)")
    given = _inputs(run, inputs) if inputs else None  # a file of the wrong kind fails before the data loads
    bundle = load_data(run.cfg.data)
    test = bundle.test if bundle.test is not None and len(bundle.test) else bundle.val
    if test is None or not len(test):
        raise StrataError(f"data set '{run.cfg.data.name}' has no test or validation split to draw features from")
    bs = run.cfg.data.eval_batch_size or 2 * run.cfg.data.batch_size
    sample = next(sample_batches(test, min(bs, 8), bs, dev, bundle.collate))
    found = stages(model, lambda: task.validation_step(sample))
    chosen = [named_stage(model, n) for n in layers] if layers else found
    notes = []
    result = {"run_dir": str(run.run_dir), "out": str(folder), "stages": [s.name for s in found], "notes": notes}
    folder.mkdir(parents=True, exist_ok=True)

    if "filters" in asked:
        f = first_layer_filters(model)
        result["filters"] = str(save_grid(_enlarge(f), folder / "filters.png", nrow=math.ceil(math.sqrt(len(f)))))

    key = getattr(task, "input_key", "x")
    if {"maps", "patches"} & set(asked):
        with Catch(chosen) as caught, torch.no_grad():
            task.validation_step(sample)
        spatial = [s for s in chosen if caught.outputs.get(s.name) is not None and caught.outputs[s.name].dim() == 4]
        if not spatial:
            raise StrataError(f"none of the layers {', '.join(s.name for s in chosen)} gives feature maps "
                              "(B, C, H, W); name convolution stages with --layers")

    if "maps" in asked:
        x, names = given or (sample[key][:1].cpu(), ["test-0"])
        x = x.to(dev)
        with Catch(spatial) as caught, torch.no_grad():
            model(x)
        shown = _display(x, run.info)
        result["maps"] = []
        for i, name in enumerate(names):
            for s in spatial:
                path = folder / f"maps-{_slug(name)}-{_slug(s.name)}.png"
                save_grid(activation_maps(caught.outputs[s.name][i].cpu(), shown[i]), path, nrow=8)
                result["maps"].append({"input": inputs[i] if inputs else "the first test image", "layer": s.name,
                                       "path": str(path)})

    if "patches" in asked:
        xs = torch.cat([b[key] for b in sample_batches(test, patch_examples, bs, dev, bundle.collate, seed=1)])
        shown = _display(xs, run.info)
        result["patches"] = []
        for s in spatial:
            patches, chans = top_patches(model, s, xs, shown, channels=channels, k=top)
            path = save_grid(_enlarge(patches, 40), folder / f"patches-{_slug(s.name)}.png", nrow=top)
            result["patches"].append({"layer": s.name, "channels": chans, "patch": list(patches.shape[-2:]),
                                      "path": str(path)})
        result["patch_examples"] = len(xs)

    if "probe" in asked:
        if "y" not in sample or sample["y"].is_floating_point():
            if parts:
                raise StrataError(f"the probe curve needs class labels; this run's task ({run.cfg.task.name}) "
                                  "has none")
            notes.append(f"no probe curve: this run's task ({run.cfg.task.name}) has no class labels")
        else:
            n_test = min(len(test), max(1, round(0.4 * probe_examples)))
            curve = probe_curve(task, chosen, sample_batches(bundle.train, probe_examples, bs, dev, bundle.collate),
                                sample_batches(test, n_test, bs, dev, bundle.collate, seed=1),
                                max_features=max_features)
            curve["path"] = str(draw_probe_curve(curve, folder / "probe.png",
                                                 f"linear probes: {Path(run.run_dir).name} ({run.cfg.model.name})"))
            result["probe"] = curve
    atomic_write(folder / "features.json", json.dumps(result, indent=1))
    return result


__all__ = ["PARTS", "OUTPUT", "features_run", "first_layer_filters", "activation_maps", "top_patches",
           "receptive_field", "probe_curve"]
