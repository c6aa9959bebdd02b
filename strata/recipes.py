"""The shipped recipes (recipes/*.toml) and the measured results in their header comments.

Header format: the first comment lines describe the run; a line `# result: ...` records what a full
run reached, on what machine, in how long, with which torch, and when.
"""

from __future__ import annotations

from pathlib import Path


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "recipes"


def list_recipes() -> list[dict]:
    folder = recipes_dir()
    out = []
    for path in sorted(folder.glob("*.toml")):
        desc, result = [], []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if text.lower().startswith("result:"):
                result.append(text.split(":", 1)[1].strip())
            elif result and text:
                result.append(text)
            elif text:
                desc.append(text)
        out.append({"file": str(path.relative_to(folder.parent)), "description": " ".join(desc),
                    "result": " ".join(result) or "not yet measured"})
    return out
