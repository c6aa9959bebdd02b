"""`strata report RUN_DIR`: one self-contained HTML file that shows what a run learned and why it decides
what it does.

The page holds no external resource: every figure is a PNG inlined as a data: URL, the style sheet is
inline and there is no script, so the file can be mailed, archived or opened offline and shows the same.
Sections (strata/report/sections.py): the header (run, task, model, parameters, data, device, wall time,
torch, date), the resolved config, learning curves, the test metrics, then what the run's task
contributes (a classifier's confusion matrix, per-class precision and recall, its top losses with their
attributions and the feature hierarchy; a regression's predicted-vs-true scatter; a generator's sample
grid and judged figures; a language model's or translator's example outputs; a recommender's picks).

A run without a checkpoint (training stopped before its first save) still gets a report of what it has
(config, curves, metrics) with a note saying what is missing: the page is for looking at a run, and a
failed run is one a person wants to look at.

The file is written atomically; `--out` never replaces a file that is not a strata report, so a
mistyped name cannot overwrite a person's page.
"""

from __future__ import annotations

import base64
import html
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from strata.errors import StrataError
from strata.files import atomic_write
from strata.run_folder import RunFolder

GENERATOR = "strata report"  # the <meta name="generator"> that marks a file as a report strata may replace


@dataclass
class Section:
    title: str
    body: str  # HTML
    id: str = ""

    def __post_init__(self):
        self.id = self.id or "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


# --- small HTML builders ---------------------------------------------------------------------------
def esc(value) -> str:
    return html.escape(str(value), quote=True)


def png_img(png: bytes, alt: str, css_class: str = "", scale: int = 1) -> str:
    """An <img> holding the PNG bytes themselves (a data: URL); scale > 1 shows it that many times
    larger (small samples, with css_class "pixels" to keep them sharp)."""
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{css_class}"' if css_class else ""
    width = ""
    if scale > 1:
        import struct

        width = f' width="{struct.unpack(">I", png[16:20])[0] * scale}"'  # the IHDR chunk's width
    return f'<img{cls}{width} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def png_file(path, alt: str, css_class: str = "", scale: int = 1) -> str:
    return png_img(Path(path).read_bytes(), alt, css_class, scale)


def figure(img: str, caption: str = "", attrs: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure{' ' + attrs if attrs else ''}>{img}{cap}</figure>"


def number(v) -> str:
    """A figure as a person reads it: integers with separators, floats to 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def table(header: list[str], rows: list[list], table_id: str = "", numeric_from: int = 1) -> str:
    """A plain table; cells are escaped unless given as Raw. Columns from `numeric_from` on align right."""
    tid = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th{' class=num' if i >= numeric_from else ''}>{esc(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{cell(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Raw(str):
    """HTML that a table cell takes as it is."""


def cell(c) -> str:
    return c if isinstance(c, Raw) else number(c)


def note(text: str) -> str:
    """A sentence in a box: what is missing and how to get it (text is escaped; `code` spans kept)."""
    parts = esc(text).split("`")
    return '<p class="note">' + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + "</p>"


STYLE = """
:root { --ink: #1d232b; --muted: #5b6570; --line: #d9dee4; --tint: #f4f6f8; --accent: #1f6fb4; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #fff; }
header { background: var(--ink); color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 6px; font-size: 24px; font-weight: 600; }
header dl { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 0; font-size: 13px; }
header dt { color: #aab4bf; } header dd { margin: 0 0 0 4px; }
header dl div { display: flex; }
nav { padding: 8px 32px; border-bottom: 1px solid var(--line); font-size: 13px; background: var(--tint); }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
main { padding: 8px 32px 40px; max-width: 1180px; }
section { margin-top: 26px; }
h2 { font-size: 19px; font-weight: 600; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left; }
th { background: var(--tint); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.matrix td { text-align: center; min-width: 34px; border: 1px solid #fff; }
table.matrix th.row { text-align: right; }
figure { margin: 6px 14px 14px 0; display: inline-block; vertical-align: top; }
figure img { display: block; max-width: 100%; image-rendering: auto; border: 1px solid var(--line); }
figure img.pixels { image-rendering: pixelated; }
figcaption { font-size: 12px; color: var(--muted); max-width: 640px; }
.gallery { display: flex; flex-wrap: wrap; }
pre { background: var(--tint); padding: 10px 12px; overflow-x: auto; font-size: 12.5px; line-height: 1.4;
      border: 1px solid var(--line); }
pre.sample { white-space: pre-wrap; max-width: 900px; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 12px; max-width: 900px; }
.muted { color: var(--muted); font-size: 13px; }
code { background: var(--tint); padding: 0 3px; border-radius: 3px; }
p.sentence { max-width: 300px; margin: 0 0 4px; font-size: 14px; line-height: 1.7; }
.token { padding: 1px 0; border-radius: 2px; white-space: pre-wrap; }
"""


def page(title: str, facts: list[tuple[str, str]], sections: list[Section], footer: str) -> str:
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{GENERATOR}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} - strata report</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><dl>{dl}</dl></header><nav>{nav}</nav><main>{body}"
            f'<p class="muted">{esc(footer)}</p></main></body></html>\n')


# --- writing the file ------------------------------------------------------------------------------
def is_report(path: Path) -> bool:
    """A file strata wrote as a report (its generator mark near the top)."""
    try:
        with open(path, "rb") as f:
            return f'content="{GENERATOR}"'.encode() in f.read(4096)
    except OSError:
        return False


def check_target(out: Path) -> None:
    if out.is_dir():
        raise StrataError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    if not out.parent.is_dir():
        raise StrataError(f"--out {out}: the folder {out.parent} does not exist; create it first or choose "
                          "another --out")
    if out.exists() and not is_report(out):
        raise StrataError(f"--out {out} exists and is not a strata report; strata replaces only its own reports, "
                          "so nothing of yours is overwritten: choose another --out or move that file")


def write_report(run_dir, out=None, device: str | None = None) -> dict:
    """Write the run's report (default RUN_DIR/report.html); returns {out, seconds, bytes, sections}."""
    from strata.report.sections import build

    folder = RunFolder(run_dir).require()
    target = Path(out) if out is not None else folder.report
    check_target(target)
    t0 = time.perf_counter()
    title, facts, sections = build(folder, device)
    seconds = time.perf_counter() - t0
    text = page(title, facts, sections, f"written by `strata report` in {seconds:.1f} s on "
                                        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    atomic_write(target, text)
    return {"out": str(target), "seconds": round(time.perf_counter() - t0, 3), "bytes": len(text.encode()),
            "sections": [s.title for s in sections]}


def report_after_training(run_dir, device: str | None = None) -> dict | None:
    """The report `strata train` writes when a run ends; a report that fails warns and never fails the
    run that trained (the weights are saved; `strata report RUN_DIR` tries again). Only the main process
    of a distributed run writes it."""
    if os.environ.get("RANK", "0") != "0":
        return None
    try:
        return write_report(run_dir, device=device)
    except KeyboardInterrupt:
        warnings.warn(f"the run trained; its report was interrupted: `strata report {run_dir}` writes it")
        return None
    except Exception as e:  # noqa: BLE001: the training finished; a report failure must not undo that
        warnings.warn(f"the run trained, but its report could not be written ({type(e).__name__}: {e}); "
                      f"`strata report {run_dir}` tries again")
        return None
