"""Predict with a model that `strata export` wrote, using only numpy and onnxruntime (no torch, no strata).

    python standalone_predict.py RUN_DIR/export/model.onnx digit.png           # an image classifier
    python standalone_predict.py RUN_DIR/export/model.onnx "age=41,job=admin"  # a table classifier or regressor

Prints what `strata predict RUN_DIR INPUT --json` prints under "predictions": one answer per input.
Images: 8-bit grayscale PNG files at the model's size (this short program neither resizes nor converts).
"""

import json
import struct
import sys
import zlib

import numpy as np
import onnxruntime as ort


def read_png_gray8(path):
    """(H, W) uint8 pixels of an 8-bit grayscale, non-interlaced PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, color, interlace) == (8, 0, 0), "expected an 8-bit grayscale, non-interlaced PNG"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, w + 1)
    out = np.zeros((h, w), dtype=np.int32)
    for y in range(h):  # undo each scanline's filter (one byte per pixel)
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros(w, dtype=np.int32)
        for x in range(w):
            left = out[y, x - 1] if x else 0
            corner = up[x - 1] if x else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = left
            elif f == 2:
                pred = up[x]
            elif f == 3:
                pred = (left + up[x]) // 2
            else:  # Paeth
                p = left + up[x] - corner
                pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up[x] if pb <= pc else corner
            out[y, x] = (line[x] + pred) % 256
    return out.astype(np.uint8)


def image_input(path, pre):
    x = read_png_gray8(path).astype(np.float32) / 255.0  # (H, W) in [0, 1]
    assert list(x.shape) == pre["size"], f"the model takes {pre['size']} pixels, the image has {list(x.shape)}"
    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    mine = "dark" if float(border.sum()) / border.size < 0.5 else "light"
    if pre["background"] and mine != pre["background"]:
        x = 1.0 - x  # light strokes on dark, or the reverse, as in training
    x = x[None, None]  # (1, C, H, W)
    if pre["normalize"]:
        x = (x - np.float32(pre["normalize"]["mean"][0])) / np.float32(pre["normalize"]["std"][0])
    return x


def table_input(row, pre):
    cells = dict(kv.split("=", 1) for kv in row.split(","))
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    blocks = []
    for c in pre["numeric"]:
        v = cells.get(c["name"], "")
        v = np.nan if v.lower() in pre["missing"] else float(v)
        blocks.append(np.nan_to_num(np.array([[(v - c["mean"]) / c["std"]]]), nan=0.0))
    for c in pre["categorical"]:
        v = cells.get(c["name"], "")
        code = c["values"].index(v) + 1 if v in c["values"] else 0  # 0: unseen or missing
        blocks.append(np.eye(len(c["values"]) + 1)[[code]])
    return np.concatenate(blocks, axis=1).astype(np.float32)  # (1, features)


def answer(out, post):
    if "class_names" not in post:  # a regression: the numbers, already in the target's units
        values = [round(float(v), post["round"]) for v in out]
        return {"prediction": values[0] if len(values) == 1 else values}
    logits = out
    p = np.exp(logits - logits.max())
    p = p / p.sum()
    order = np.argsort(-p, kind="stable")[: post["top_k"]]
    top = [{"label": post["class_names"][i], "index": int(i), "probability": round(float(p[i]), post["round"])}
           for i in order]
    return {"label": top[0]["label"], "probability": top[0]["probability"], "top": top}


def main(model_path, inputs):
    meta = json.load(open(model_path + ".json"))
    pre = meta["preprocess"]
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    results = []
    for item in inputs:
        x = image_input(item, pre) if pre["type"] == "image" else table_input(item, pre)
        (out,) = session.run(None, {meta["inputs"][0]["name"]: x})
        results.append(answer(out[0].astype(np.float64), meta["postprocess"]))
    print(json.dumps({"predictions": results}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
