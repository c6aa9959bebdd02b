"""The README's Python programs run as they are written, so they cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_programs() -> list[str]:
    """The ```python blocks of the README's Python section, before the TOML route."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Python\n"):text.index("The TOML route in Python")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_python_programs_run(tmp_path):
    programs = python_programs()
    assert len(programs) == 4  # arrays, own module + DataLoader, own training step, load and predict
    script = tmp_path / "readme_programs.py"
    script.write_text("\n\n".join(programs), encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    figures = [float(line) for line in out.stdout.splitlines() if re.fullmatch(r"[0-9.]+", line.strip())]
    # the printed figures are the ones the README states, within their "about"
    assert figures[0] >= 0.95  # breast cancer: held-out accuracy
    assert figures[1] >= 0.90  # the digits ConvNet's test accuracy
    for run in ("cancer", "digits-convnet", "tiny-gan"):
        assert (tmp_path / "runs" / run / "summary.json").is_file()
