"""Denoising diffusion: learn to predict the noise added to an image, then sample by removing it.

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", 2020 (DDPM). With a noise schedule
beta_1..beta_T, alpha_t = 1 - beta_t and alphabar_t = prod_{s<=t} alpha_s, the forward process has
the closed form

    q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)

so training draws t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps
and minimises |eps - eps_theta(x_t, t, y)|^2 (the "simple" loss). Schedules: "linear" (DDPM:
beta from 1e-4 to 0.02) and "cosine" (Nichol & Dhariwal, "Improved DDPM", 2021:
alphabar_t = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2), beta_t clipped at 0.999).

Sampling, both over an evenly spaced subsequence tau_1 > ... > tau_S of the T steps:
- "ddpm": ancestral sampling from the posterior q(x_{t'} | x_t, x_0) of the respaced chain
  (Nichol & Dhariwal's respacing; S = T is the original DDPM sampler);
- "ddim": Song, Meng & Ermon, "Denoising Diffusion Implicit Models", 2021, deterministic for eta = 0.
Class conditioning uses classifier-free guidance (Ho & Salimans, 2022): labels are dropped to the
null class with probability label_dropout during training, and sampling combines
eps = eps(x, null) + w (eps(x, y) - eps(x, null)); w = 1 is plain conditional sampling.
An exponential moving average of the weights (decay ema_decay) is kept for evaluation and sampling.

Images are mapped from [0, 1] to [-1, 1] for the model and back for output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from strata.config import check
from strata.errors import StrataError
from strata.export.graph import ExportGraph, batch_only
from strata.nn.ema import ema_copy, ema_update_
from strata.tasks import TASKS
from strata.tasks import _imagegen as G
from strata.tasks.base import Loss, Task


def make_betas(schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
               cosine_s: float = 0.008) -> torch.Tensor:
    """beta_1..beta_T in float64."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if schedule == "cosine":
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alphabar = f / f[0]
        return (1 - alphabar[1:] / alphabar[:-1]).clamp(max=0.999)
    raise StrataError(f"[task] schedule: must be 'linear' or 'cosine', got {schedule!r}")


def respaced(timesteps: int, steps: int) -> torch.Tensor:
    """steps evenly spaced step indices from T-1 down to 0 (distinct, since steps <= T)."""
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()


@dataclass(frozen=True)
class Config:
    num_classes: int = 10  # from the data set
    timesteps: int = 1000  # T: steps of the forward (noising) process
    schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = 1e-4  # linear schedule
    beta_end: float = 0.02
    cosine_s: float = 0.008  # cosine schedule offset
    label_dropout: float = 0.1  # conditional models: share of labels replaced by the null class
    ema_decay: float = 0.999
    sampler: Literal["ddim", "ddpm"] = "ddim"  # default for generate and evaluate
    sample_steps: int = 50  # default number of sampling steps (<= timesteps)
    eta: float = 0.0  # DDIM noise: 0 deterministic, 1 ~ ancestral
    guidance: float = 1.0  # default classifier-free guidance scale w (conditional models)
    eval_samples: int = 10000  # samples judged by `strata evaluate`
    eval_batch: int = 500
    judge_run: str = ""  # a classify run on the same data set; "" trains (once) and caches one

    def __post_init__(self):
        check(self.timesteps >= 2, "[task] timesteps", f"must be >= 2, got {self.timesteps}")
        check(0 < self.beta_start < self.beta_end < 1, "[task] beta_start / beta_end",
              f"need 0 < beta_start < beta_end < 1, got {self.beta_start} / {self.beta_end}")
        check(0 <= self.label_dropout < 1, "[task] label_dropout", f"must be in [0, 1), got {self.label_dropout}")
        check(0 <= self.ema_decay < 1, "[task] ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(1 <= self.sample_steps <= self.timesteps, "[task] sample_steps",
              f"must be between 1 and timesteps ({self.timesteps}), got {self.sample_steps}")
        check(0 <= self.eta <= 1, "[task] eta", f"must be in [0, 1], got {self.eta}")
        check(self.guidance >= 0, "[task] guidance", f"must be >= 0, got {self.guidance}")
        check(self.eval_samples >= 2, "[task] eval_samples", f"must be >= 2, got {self.eval_samples}")
        check(self.eval_batch >= 1, "[task] eval_batch", f"must be >= 1, got {self.eval_batch}")


@TASKS.register("diffusion")
class Diffusion(Task):
    Config = Config

    def __init__(self, cfg: Config, model, info: dict):
        super().__init__(cfg, model, info)
        self.model = G.build_image_model(model, info, cfg.num_classes, "diffusion")
        if not hasattr(self.model, "null_class"):
            raise StrataError(f"task 'diffusion' needs a noise-prediction model such as 'unet', got '{model.name}'")
        self.conditional = self.model.null_class is not None
        self.class_names = info.get("class_names") or [str(i) for i in range(info.get("num_classes", 0))]
        self.shape = tuple(info["in_shape"])  # (C, H, W)
        # The EMA copy is a child module, so it is in state_dict() and every checkpoint carries it;
        # requires_grad=False keeps it out of the optimiser.
        self.ema = ema_copy(self.model)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

        betas = make_betas(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end, cfg.cosine_s)
        alphabar = torch.cumprod(1 - betas, dim=0)  # alphabar_t = prod_{s<=t} (1 - beta_s)
        # Rebuilt from the config, so not saved (persistent=False).
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphabar", alphabar.float(), persistent=False)
        self.alphabar_f64 = alphabar  # float64 on the CPU, for the samplers' coefficients
        self._val_gen: torch.Generator | None = None

    # --- the forward process ------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps"""
        ab = self.alphabar[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def _loss(self, net, x: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x0 = x * 2 - 1  # [0, 1] -> [-1, 1]
        eps = net(self.q_sample(x0, t, noise), t, y)
        return F.mse_loss(eps.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)

    def _labels(self, batch: dict) -> torch.Tensor | None:
        return G.batch_labels(batch, self.conditional, "diffusion model")

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict):
        x = batch["x"]
        b = x.shape[0]
        y = self._labels(batch)
        if y is not None and self.cfg.label_dropout > 0:
            drop = torch.rand(b, device=x.device) < self.cfg.label_dropout
            y = torch.where(drop, torch.full_like(y, self.model.null_class), y)
        t = torch.randint(0, self.cfg.timesteps, (b,), device=x.device)
        loss = self._loss(self.model, x, y, t, torch.randn_like(x)).mean()
        yield Loss("main", loss)

    @torch.no_grad()
    def after_optimizer_step(self, name: str) -> None:
        ema_update_(self.ema, self.model, self.cfg.ema_decay, self.ema_updates)
        self.ema_updates += 1

    def eval_module(self):
        return self.ema

    def summary_modules(self):
        return {"model": self.model}

    # --- evaluation: the EMA model's noise-prediction loss, with fixed noise -------------------
    def validation_start(self) -> None:
        self._val_gen = torch.Generator().manual_seed(1234)

    def validation_step(self, batch: dict) -> dict:
        x = batch["x"]
        b = x.shape[0]
        if self._val_gen is None:
            self.validation_start()
        t = torch.randint(0, self.cfg.timesteps, (b,), generator=self._val_gen).to(x.device)
        noise = torch.randn(x.shape, generator=self._val_gen).to(x.device, x.dtype)
        losses = self._loss(self.ema, x, self._labels(batch), t, noise)
        return {"loss": (losses.sum(), b)}

    # --- sampling -------------------------------------------------------------------------------
    def _eps(self, net, x: torch.Tensor, t: int, y: torch.Tensor | None, guidance: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if y is None or guidance == 1.0:
            return net(x, tt, y)
        if guidance == 0.0:
            return net(x, tt, None)
        null = torch.full_like(y, self.model.null_class)
        e = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]))  # one pass for both
        e_cond, e_uncond = e.chunk(2)
        return e_uncond + guidance * (e_cond - e_uncond)  # classifier-free guidance

    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None, count: int, gen: torch.Generator, steps: int | None = None,
               guidance: float | None = None, sampler: str | None = None, eta: float | None = None) -> torch.Tensor:
        """count images (count, C, H, W) in [0, 1] from the EMA model; all noise drawn from `gen`."""
        steps = steps or self.cfg.sample_steps
        guidance = self.cfg.guidance if guidance is None else guidance
        sampler = sampler or self.cfg.sampler
        eta = self.cfg.eta if eta is None else eta
        net = self.ema
        net.eval()
        dev = self.alphabar.device
        y = labels.to(dev) if labels is not None else None
        x = torch.randn((count, *self.shape), generator=gen).to(dev)  # x_T ~ N(0, I)
        ts = respaced(self.cfg.timesteps, steps).tolist()
        ab = self.alphabar_f64.tolist()  # python floats: exact, and fine on devices without float64
        for i, t in enumerate(ts):
            a_t = ab[t]
            a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
            last = i + 1 == len(ts)
            eps = self._eps(net, x, t, y, guidance).float()
            x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)  # predicted x_0, clipped to the data range
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)  # the noise consistent with the clipped x_0
            if sampler == "ddpm":
                # Posterior q(x_t' | x_t, x_0) of the respaced chain, with beta' = 1 - alphabar_t / alphabar_t':
                # mean = sqrt(ab') beta' / (1 - ab) x0 + sqrt(1 - beta') (1 - ab') / (1 - ab) x_t
                beta = 1 - a_t / a_prev
                mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
                var = beta * (1 - a_prev) / (1 - a_t)
                x = mean if last else mean + math.sqrt(var) * torch.randn(x.shape, generator=gen).to(dev)
            else:
                # DDIM: x_t' = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps + sigma z
                sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
                x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
                if sigma > 0 and not last:
                    x = x + sigma * torch.randn(x.shape, generator=gen).to(dev)
        return ((x + 1) / 2).clamp(0, 1)

    # --- use ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_step(self, batch: dict) -> list[dict]:
        """`strata predict` on images: the EMA model's noise-prediction error at 10 fixed steps with
        fixed noise, unconditionally (lower: the image looks more like the training data)."""
        x = batch["x"]
        gen = torch.Generator().manual_seed(0)
        steps = torch.linspace(0.05, 0.95, 10).mul(self.cfg.timesteps).long().tolist()
        total = torch.zeros(len(x), device=x.device)
        for t in steps:
            noise = torch.randn(x.shape[1:], generator=gen).to(x.device, x.dtype).expand_as(x)
            total += self._loss(self.ema, x, None, torch.full((len(x),), t, device=x.device), noise)
        return [{"denoising_error": round(float(v), 6)} for v in total / len(steps)]

    def export_graph(self, batch: dict):
        """The denoising step of the EMA U-Net: (x_t, t [, y]) -> predicted noise eps. Checked on real
        images noised to steps spread over the schedule; a sampler (DDIM, DDPM) runs it in a loop."""
        x = batch["x"]
        b = len(x)
        t = torch.linspace(0, self.cfg.timesteps - 1, b).long()
        x_t = self.q_sample(x * 2 - 1, t, torch.randn_like(x))
        y = self._labels(batch)
        args, names = ((x_t, t, y), ["x_t", "t", "y"]) if self.conditional else ((x_t, t), ["x_t", "t"])
        return ExportGraph(self.ema, args, names, ["eps"], "the U-Net's denoising step: (x_t, t) -> predicted noise",
                           batch_only(names),
                           preprocess={"type": "diffusion_step", "x_t": "noisy images in [-1, 1] (pixels x 2 - 1)",
                                       "t": f"step index 0..{self.cfg.timesteps - 1}",
                                       **({"y": {"class_names": self.class_names, "null_class": self.model.null_class}}
                                          if self.conditional else {})},
                           postprocess={"eps": "the predicted noise", "schedule": self.cfg.schedule,
                                        "timesteps": self.cfg.timesteps,
                                        "alphabar": [round(float(a), 10) for a in self.alphabar_f64]})

    def _sampling_options(self, request: dict) -> dict:
        G.reject(request, {
            "prompt": "--prompt is for language models; this is an image diffusion model",
            "interpolate": "--interpolate walks a VAE's latent space; a diffusion run has no encoder",
        })
        opts = {}
        steps = request.get("steps")
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.cfg.timesteps:
                raise StrataError(f"--steps must be a whole number from 1 to {self.cfg.timesteps} (the model was "
                                  f"trained with timesteps = {self.cfg.timesteps}), got {steps!r}")
            opts["steps"] = steps
        guidance = request.get("guidance")
        if guidance is not None:
            if not self.conditional:
                raise StrataError("--guidance is classifier-free guidance and needs a class-conditional model; this "
                                  "run was trained with [model] conditional = false. Drop --guidance")
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 50:
                raise StrataError(f"--guidance must be a number from 0 to 50 (1 = plain conditional, 2-4 typical), "
                                  f"got {guidance!r}")
            opts["guidance"] = float(guidance)
        sampler = request.get("sampler")
        if sampler is not None:
            if sampler not in ("ddim", "ddpm"):
                raise StrataError(f"--sampler must be 'ddim' or 'ddpm', got {sampler!r}")
            opts["sampler"] = sampler
        return opts

    @torch.no_grad()
    def generate(self, request: dict, run_dir) -> dict:
        opts = self._sampling_options(request)
        self.eval()

        def sample(labels, count, gen):
            return self.sample(labels, count, gen, **opts)

        extra = {"steps": opts.get("steps", self.cfg.sample_steps), "sampler": opts.get("sampler", self.cfg.sampler)}
        if self.conditional:
            extra["guidance"] = opts.get("guidance", self.cfg.guidance)
        return G.generate(request, run_dir, sample, conditional=self.conditional, class_names=self.class_names,
                          what="diffusion model", extra=extra)

    @torch.no_grad()
    def evaluate_report(self, bundle, split: str, run_dir) -> dict[str, float]:
        self.eval()
        out = G.evaluate(self.sample, bundle, split, run_dir, judge_run=self.cfg.judge_run, n=self.cfg.eval_samples,
                         info=self.info, conditional=self.conditional, batch=self.cfg.eval_batch,
                         device=next(self.parameters()).device)
        out["sample_steps"] = float(self.cfg.sample_steps)
        if self.conditional:
            out["guidance"] = self.cfg.guidance
        return out
