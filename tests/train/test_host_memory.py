"""Freed host buffers are reused between steps: fewer page faults per step in a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys, tempfile
import torch
import strata
import strata.train.host_memory as hm
if sys.argv[1] == "off":
    hm.keep_freed_buffers = lambda: False  # what the trainer did before
    import strata.train.trainer as tr
    tr.keep_freed_buffers = hm.keep_freed_buffers
g = torch.Generator().manual_seed(0)
x, y = torch.randn(5120, 784, generator=g), torch.randint(0, 10, (5120,), generator=g)
model = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                            torch.nn.Linear(1024, 10))

class Faults(strata.Callback):
    def on_fit_start(self, trainer):
        self.start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def on_fit_end(self, trainer, summary):
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.start

f = Faults()
with tempfile.TemporaryDirectory() as d:
    strata.fit(model, (x, y), epochs=1, batch_size=128, val_split=0, run_dir=d + "/run", device="cpu", verbose=0,
               callbacks=[f])
print(json.dumps({"faults": f.faults, "applied": hm.keep_freed_buffers()}))
"""


def faults(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds: Linux only")
def test_training_reuses_freed_host_buffers_instead_of_faulting_them_in_every_step():
    off, on = faults("off"), faults("on")
    assert on["applied"] and not off["applied"]
    # 40 steps of a 784-1024-1024-10 MLP: the gradients (3-4 MiB each) and activations freed each step
    assert on["faults"] < 0.6 * off["faults"], (on, off)
