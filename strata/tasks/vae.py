"""VAE training: maximise the evidence lower bound (ELBO), reported as a negative ELBO in nats per image.

    -ELBO(x) = E_q(z|x)[-log p(x|z)] + KL(q(z|x) || p(z))      (Kingma & Welling, ICLR 2014)
               \\_______ recon ______/   \\______ kl ______/

The reconstruction term is estimated with one sample of z, the KL term is exact (Gaussian
posterior, standard normal prior). Training minimises recon + beta * kl (beta-VAE, Higgins et al.,
ICLR 2017), with beta optionally ramped up from 0 over `kl_warmup_steps` (Bowman et al., 2016);
validation always reports the true bound (beta = 1): val/nelbo = val/recon + val/kl.

With the Bernoulli likelihood on MNIST grey levels in [0, 1], as in pytorch/examples' VAE, recon is
the binary cross-entropy summed over the 784 pixels.

`strata generate RUN_DIR --n 64 --out grid.png [--out-dir DIR] [--seed S]` samples z ~ N(0, I) and
decodes it (in bounded batches, through the helpers the GAN and diffusion tasks share);
`--interpolate a.png b.png` walks in a straight line between the two images' codes.
`strata evaluate RUN_DIR` adds the judge-classifier Frechet distance and class coverage of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from strata.config import check
from strata.errors import StrataError
from strata.export.graph import ExportGraph, Outputs, batch_only
from strata.models import build_model
from strata.models.vae import gaussian_kl
from strata.tasks import TASKS
from strata.tasks.base import Task

UNSUPPORTED = {  # generate options that mean nothing for a VAE, with the reason
    "class_": "--class needs a class-conditional model; this VAE is unconditional",
    "guidance": "--guidance is classifier-free guidance for conditional diffusion models; this is a VAE",
    "steps": "--steps sets the sampling steps of a diffusion model; a VAE decodes in one step",
    "prompt": "--prompt is for language models; this is an image VAE",
    "max_new_tokens": "--max-new-tokens is for language models; this is an image VAE",
}


@dataclass(frozen=True)
class Config:
    beta: float = 1.0  # weight of the KL term in the training loss
    kl_warmup_steps: int = 0  # ramp beta linearly from 0 over this many optimiser steps
    eval_samples: int = 10000  # samples judged by `strata evaluate`
    eval_batch: int = 500
    judge_run: str = ""  # a classify run on the same data set; "" uses (or trains) the cached judge

    def __post_init__(self):
        check(self.beta >= 0, "[task] beta", f"must be >= 0, got {self.beta}")
        check(self.kl_warmup_steps >= 0, "[task] kl_warmup_steps", f"must be >= 0, got {self.kl_warmup_steps}")
        check(self.eval_samples >= 2, "[task] eval_samples", f"must be >= 2, got {self.eval_samples}")
        check(self.eval_batch >= 1, "[task] eval_batch", f"must be >= 1, got {self.eval_batch}")


@TASKS.register("vae")
class VAETask(Task):
    Config = Config

    def __init__(self, cfg: Config, model, info: dict):
        super().__init__(cfg, model, info)
        if "in_shape" not in info:
            raise StrataError("task 'vae' needs an image data set that states its input shape (info['in_shape'])")
        self.model = build_model(model, in_shape=tuple(info["in_shape"]))
        if not all(hasattr(self.model, a) for a in ("encode", "decode", "nll", "mean_image")):
            raise StrataError(f"task 'vae' needs a variational model such as 'vae', got model '{model.name}'")
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(recon, kl) per image, in nats: (B,), (B,)."""
        out, mu, logvar = self.model(x)
        return self.model.nll(out, x), gaussian_kl(mu, logvar)

    def current_beta(self) -> float:
        if self.cfg.kl_warmup_steps == 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, float(self.steps_done) / self.cfg.kl_warmup_steps)

    # --- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict):
        from strata.tasks.base import Loss

        recon, kl = self.terms(batch["x"])
        beta = self.current_beta()
        loss = (recon + beta * kl).mean()
        yield Loss("main", loss, {"recon": recon.mean().detach(), "kl": kl.mean().detach()})

    def after_optimizer_step(self, name: str) -> None:
        self.steps_done += 1

    # --- evaluation --------------------------------------------------------------------------
    def validation_step(self, batch: dict) -> dict:
        recon, kl = self.terms(batch["x"])
        n = len(recon)
        return {
            "loss": ((recon + self.cfg.beta * kl).sum(), n),
            "nelbo": ((recon + kl).sum(), n),
            "recon": (recon.sum(), n),
            "kl": (kl.sum(), n),
        }

    # --- use ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_step(self, batch: dict) -> list[dict]:
        recon, kl = self.terms(batch["x"])
        mu, _ = self.model.encode(batch["x"])
        return [{"nelbo": round(float(r + k), 3), "recon": round(float(r), 3), "kl": round(float(k), 3),
                 "z_mean": [round(float(v), 4) for v in m]} for r, k, m in zip(recon, kl, mu)]

    def export_graph(self, batch: dict):
        """The decoder: z (B, latent) -> the image p(x|z) means, in [0, 1]. Checked on the posterior
        means of real images."""
        model = self.model
        mu, _ = model.encode(batch["x"])
        return ExportGraph(Outputs(lambda z: model.mean_image(model.decode(z)), model=model), (mu.detach(),), ["z"],
                           ["image"], "the VAE decoder: latent z -> image in [0, 1]", batch_only(["z"]),
                           preprocess={"type": "latent", "dim": model.cfg.latent,
                                       "note": "z ~ N(0, I) draws new images; an image's posterior mean rebuilds it"},
                           postprocess={"image": "(B, C, H, W) in [0, 1]; x 255 for 8-bit pixels"})

    def sampler(self, labels, count: int, generator: torch.Generator) -> torch.Tensor:
        """The shared image-generator interface (strata/tasks/_imagegen.py); a VAE ignores labels."""
        return self.model.sample(count, generator)

    @torch.no_grad()
    def generate(self, request: dict, run_dir) -> dict:
        from strata.tasks import _imagegen as G

        G.reject(request, UNSUPPORTED)
        if request.get("n") is not None:
            G._whole(request["n"], "--n")
        self.eval()
        if request.get("interpolate") is None:
            return G.generate(request, run_dir, self.sampler, conditional=False, class_names=[], what="VAE")
        return self.interpolate(request, run_dir)

    @torch.no_grad()
    def interpolate(self, request: dict, run_dir) -> dict:
        """Decode evenly spaced points on the straight line between two images' posterior means."""
        from strata.report.grid import load_image, save_grid, save_images

        paths = list(request["interpolate"])
        if len(paths) != 2:
            raise StrataError(f"--interpolate takes two image files (a.png b.png), got {len(paths)}")
        out, out_dir = request.get("out"), request.get("out_dir")
        if out is None and out_dir is None:
            out = Path(run_dir) / "interpolation.png"
        model = self.model
        dev = next(model.parameters()).device
        c, h, w = tuple(self.info["in_shape"])
        ends = torch.stack([load_image(p, c, (h, w)) for p in paths]).to(dev)  # (2, C, H, W)
        steps = request.get("n") or 10
        mu, _ = model.encode(ends)  # (2, latent)
        t = torch.linspace(0, 1, steps, device=dev).unsqueeze(1)  # (steps, 1)
        z = (1 - t) * mu[0] + t * mu[1]  # (steps, latent)
        frames = model.mean_image(model.decode(z)).cpu()  # (steps, C, H, W)
        row = torch.cat([ends[:1].cpu(), frames, ends[1:].cpu()])  # real a, the walk, real b
        result = {"interpolate": [str(p) for p in paths], "steps": steps}
        if out is not None:
            result["out"] = str(save_grid(row, out, nrow=len(row)))
        if out_dir is not None:
            save_images(frames, out_dir, prefix="step")
            result["out_dir"] = str(out_dir)
        return result

    @torch.no_grad()
    def evaluate_report(self, bundle, split: str, run_dir) -> dict[str, float]:
        """`strata evaluate`: samples judged like the GAN's and diffusion's (Frechet distance in a
        judge classifier's features, class coverage); see strata/metrics/judge.py."""
        from strata.tasks import _imagegen as G

        self.eval()
        return G.evaluate(self.sampler, bundle, split, run_dir, judge_run=self.cfg.judge_run, n=self.cfg.eval_samples,
                          info=self.info, conditional=False, batch=self.cfg.eval_batch)
