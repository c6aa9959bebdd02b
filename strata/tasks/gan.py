"""Generative adversarial training (Goodfellow et al., "Generative Adversarial Nets", 2014) with the
non-saturating generator loss the paper recommends in practice:

    L_D = -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) = softplus(-D(x)) + softplus(D(G(z)))
    L_G = -log sigmoid(D(G(z)))                          = softplus(-D(G(z)))

Each batch runs two phases through the Task contract: `training_step` yields
Loss("discriminator", L_D) and then Loss("generator", L_G); the Trainer steps the matching optimiser
after each, and each phase's backward pass fills only its own optimiser's gradients. Because
training_step is a generator,
the generator phase runs after the discriminator has stepped (as in DCGAN's reference loop).

Optimisers: both start from [optimizer]; `d_lr`, `g_lr` and `betas` in [task] override it per net.
DCGAN's settings are Adam, lr 2e-4, betas (0.5, 0.999) (the recipes set them).

Validation reports the two losses on held-out images and how often D is right; with
`val_samples > 0` and a judge (`judge_run`, or the cached default judge) it also reports
val/frechet, the judge's Frechet distance (strata/metrics/judge.py), a better monitor for picking
the best checkpoint than any GAN loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strata.config import check
from strata.errors import StrataError
from strata.export.graph import ExportGraph, Outputs, batch_only
from strata.tasks import TASKS
from strata.tasks import _imagegen as G
from strata.tasks.base import Loss, Task


@dataclass(frozen=True)
class Config:
    num_classes: int = 10  # from the data set
    d_lr: float = 0.0  # discriminator learning rate; 0: [optimizer] lr
    g_lr: float = 0.0  # generator learning rate; 0: [optimizer] lr
    betas: tuple[float, ...] = ()  # Adam betas for both nets; empty: [optimizer] betas
    label_smoothing: float = 0.0  # one-sided: D's target for real images is 1 - label_smoothing
    val_samples: int = 0  # > 0: samples judged at each validation (val/frechet, val/share_min)
    eval_samples: int = 10000  # samples judged by `strata evaluate`
    eval_batch: int = 500
    judge_run: str = ""  # a classify run on the same data set; "" uses (or trains) the cached judge

    def __post_init__(self):
        check(self.d_lr >= 0 and self.g_lr >= 0, "[task] d_lr / g_lr", f"must be >= 0, got {self.d_lr} / {self.g_lr}")
        check(len(self.betas) in (0, 2) and all(0 <= b < 1 for b in self.betas), "[task] betas",
              f"must be two numbers in [0, 1) (or left out), got {list(self.betas)}")
        check(0 <= self.label_smoothing < 0.5, "[task] label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        check(self.val_samples >= 0, "[task] val_samples", f"must be >= 0, got {self.val_samples}")
        check(self.eval_samples >= 2, "[task] eval_samples", f"must be >= 2, got {self.eval_samples}")
        check(self.eval_batch >= 1, "[task] eval_batch", f"must be >= 1, got {self.eval_batch}")


@TASKS.register("gan")
class GAN(Task):
    Config = Config

    def __init__(self, cfg: Config, model, info: dict):
        super().__init__(cfg, model, info)
        self.model = G.build_image_model(model, info, cfg.num_classes, "gan")
        if not (hasattr(self.model, "generator") and hasattr(self.model, "discriminator")):
            raise StrataError(f"task 'gan' needs a model with .generator and .discriminator such as 'dcgan', "
                              f"got '{model.name}'")
        self.conditional = bool(getattr(self.model.cfg, "conditional", False))
        self.class_names = info.get("class_names") or [str(i) for i in range(info.get("num_classes", 0))]
        self._val_real: list[torch.Tensor] = []
        self._val_gen: torch.Generator | None = None
        self._judge = None

    def configure_optimizers(self, cfg):
        def tuned(lr: float):
            changes = {"lr": lr or cfg.lr}
            if self.cfg.betas:
                changes["betas"] = tuple(self.cfg.betas)
            return dataclasses.replace(cfg, **changes)

        return {
            "discriminator": (list(self.model.discriminator.parameters()), tuned(self.cfg.d_lr)),
            "generator": (list(self.model.generator.parameters()), tuned(self.cfg.g_lr)),
        }

    def _labels(self, batch: dict) -> torch.Tensor | None:
        return G.batch_labels(batch, self.conditional, "GAN")

    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.model.discriminator
        d_real, d_fake = d(real, y).float(), d(fake, y).float()
        target = 1.0 - self.cfg.label_smoothing
        # softplus(-l) = -log sigmoid(l); with smoothing, BCE against the target instead.
        real_term = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, target))
                     if self.cfg.label_smoothing else F.softplus(-d_real).mean())
        return real_term + F.softplus(d_fake).mean(), d_real, d_fake

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict):
        real = batch["x"] * 2 - 1  # [0, 1] -> [-1, 1], the generator's tanh range
        b = real.shape[0]
        y = self._labels(batch)
        gen = self.model.generator

        z = torch.randn(b, self.model.cfg.latent_dim, device=real.device)
        fake = gen(z, y).detach()
        loss_d, d_real, d_fake = self._d_loss(real, fake, y)
        yield Loss("discriminator", loss_d, {"d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()})

        # Runs after the discriminator has stepped; the Trainer backpropagates this phase into G's
        # parameters only, so D's gradients stay untouched (D's batch-norm statistics still update, as in DCGAN).
        z = torch.randn(b, self.model.cfg.latent_dim, device=real.device)
        loss_g = F.softplus(-self.model.discriminator(gen(z, y), y).float()).mean()
        yield Loss("generator", loss_g)

    # --- evaluation ---------------------------------------------------------------------------
    def validation_start(self) -> None:
        self._val_gen = torch.Generator().manual_seed(1234)
        self._val_real = []

    def validation_step(self, batch: dict) -> dict:
        if self._val_gen is None:
            self.validation_start()
        x = batch["x"]
        b = x.shape[0]
        y = self._labels(batch)
        z = torch.randn(b, self.model.cfg.latent_dim, generator=self._val_gen).to(x.device, x.dtype)
        fake = self.model.generator(z, y)
        loss_d, d_real, d_fake = self._d_loss(x * 2 - 1, fake, y)
        loss_g = F.softplus(-d_fake).mean()
        quota = -(-self.cfg.val_samples // self.world_size())  # each process keeps its share
        if quota and sum(len(r) for r in self._val_real) < quota:
            self._val_real.append(x.detach().float().cpu())
        return {
            "loss": (loss_g * b, b),  # the generator's loss against the current D; not a quality measure
            "d_loss": (loss_d * b, b),
            "g_loss": (loss_g * b, b),
            "d_acc": (((d_real > 0).float().sum() + (d_fake < 0).float().sum()) / 2, b),
        }

    def validation_end(self) -> dict[str, float]:
        if not self.cfg.val_samples:
            return {}
        local = torch.cat(self._val_real) if self._val_real else torch.zeros(0, *self.info["in_shape"])
        real = self.gather(local)[: self.cfg.val_samples]  # every process's shard
        self._val_real = []
        if not len(real):
            return {}
        if self._judge is None:
            from strata.metrics.judge import resolve_judge

            # No data set name here, so only an explicit judge_run is used during training.
            if not self.cfg.judge_run:
                raise StrataError("[task] val_samples > 0 needs [task] judge_run: a classify run folder on the same "
                                  "data set (e.g. trained from recipes/mnist-cnn.toml)")
            self._judge = resolve_judge(self.cfg.judge_run, None, self.info,
                                        device=next(self.parameters()).device)
        from strata.metrics.judge import judge_samples

        n = len(real)
        labels = G.plan_labels(n, None, self.conditional, len(self.class_names))
        out = judge_samples(self._judge, G.draw(self.sample, n, labels, seed=0, batch=self.cfg.eval_batch),
                            real, self.class_names)
        keep = ("frechet", "share_min", "recognised")
        return {k: v for k, v in out.items() if k in keep}

    # --- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None, count: int, gen: torch.Generator) -> torch.Tensor:
        """count images (count, C, H, W) in [0, 1]; z drawn from `gen` on the CPU."""
        g = self.model.generator
        was_training = g.training
        g.eval()
        dev = next(g.parameters()).device
        z = torch.randn(count, self.model.cfg.latent_dim, generator=gen).to(dev)
        x = g(z, labels.to(dev) if labels is not None else None)
        g.train(was_training)
        return ((x.float() + 1) / 2).clamp(0, 1)

    def export_graph(self, batch: dict):
        """The generator: z (B, latent) [and class ids y (B,)] -> images in [0, 1]; z drawn from
        N(0, I), y the real batch's labels."""
        g = self.model.generator
        z = torch.randn(len(batch["x"]), self.model.cfg.latent_dim)
        y = self._labels(batch)
        args, names = ((z, y), ["z", "y"]) if self.conditional else ((z,), ["z"])
        return ExportGraph(Outputs(lambda *a: ((g(*a).float() + 1) / 2).clamp(0, 1), generator=g), args, names,
                           ["image"], "the DCGAN generator: latent z -> image in [0, 1]", batch_only(names),
                           preprocess={"type": "latent", "dim": self.model.cfg.latent_dim, "note": "z ~ N(0, I)",
                                       **({"y": {"class_names": self.class_names}} if self.conditional else {})},
                           postprocess={"image": "(B, C, H, W) in [0, 1]; x 255 for 8-bit pixels"})

    @torch.no_grad()
    def predict_step(self, batch: dict) -> list[dict]:
        """`strata predict` on images: how real the discriminator finds each one, sigmoid(D(x)) in
        [0, 1] (for a conditional D, under the class it finds most real)."""
        x = batch["x"] * 2 - 1
        d = self.model.discriminator
        if not self.conditional:
            return [{"realness": round(float(p), 6)} for p in torch.sigmoid(d(x).float())]
        k = len(self.class_names)
        scores = torch.stack([d(x, torch.full((len(x),), c, device=x.device)) for c in range(k)], 1)  # (B, K)
        best, idx = torch.sigmoid(scores.float()).max(1)
        return [{"realness": round(float(p), 6), "class": self.class_names[int(i)]} for p, i in zip(best, idx)]

    @torch.no_grad()
    def generate(self, request: dict, run_dir) -> dict:
        G.reject(request, {
            "steps": "--steps sets the sampling steps of a diffusion model; a GAN draws each image in one pass",
            "guidance": "--guidance is classifier-free guidance for conditional diffusion models; this is a GAN",
            "prompt": "--prompt is for language models; this is an image GAN",
            "interpolate": "--interpolate walks a VAE's latent space between two images; a GAN has no encoder",
        })
        self.eval()
        return G.generate(request, run_dir, self.sample, conditional=self.conditional, class_names=self.class_names,
                          what="GAN")

    @torch.no_grad()
    def evaluate_report(self, bundle, split: str, run_dir) -> dict[str, float]:
        self.eval()
        return G.evaluate(self.sample, bundle, split, run_dir, judge_run=self.cfg.judge_run, n=self.cfg.eval_samples,
                          info=self.info, conditional=self.conditional, batch=self.cfg.eval_batch,
                         device=next(self.parameters()).device)

    def summary_modules(self):
        return {"generator": self.model.generator, "discriminator": self.model.discriminator}
