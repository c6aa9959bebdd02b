"""A classifier on the encoder of an autoencoder or VAE: learn features from unlabelled data first,
then learn the classes from a few labels.

This is the pretrain-then-fine-tune recipe of Hinton & Salakhutdinov (Science 2006) and of the
semi-supervised "M1" model of Kingma et al., "Semi-Supervised Learning with Deep Generative
Models", NeurIPS 2014 (a classifier on the VAE's posterior mean).

    [model]
    name = "encoder_classifier"
    init_from = "runs/mnist-vae"   # a finished 'reconstruct', 'vae' or 'contrastive' run: architecture + weights
    pretrained = true              # false: the same network from random weights (the baseline)
    freeze_encoder = false         # true: train only the head (a probe of the features)
    projection_layers = 1          # a contrastive run: also keep the first layer of its projection head
    probe_steps = 300              # train the head alone for 300 batches, then fine-tune all layers (LP-FT)

A contrastive run's projection head maps the encoder's features to the vectors its loss compares;
its hidden layer is a better place to start from than the encoder's output (SimCLRv2, Chen et al.,
"Big Self-Supervised Models are Strong Semi-Supervised Learners", NeurIPS 2020, fine-tunes "from the
middle" of the head; measured here, benchmarks/unlabelled_100labels.py: a linear probe at 100 MNIST
labels 96.22 % against 93.81 % on the encoder's output, LP-FT 96.80 % against 93.45 %). `projection_layers = 1` keeps the head's first linear layer and its activation
as part of the encoder; 0 (the default) keeps the encoder alone.

Fine-tuning all layers from a random head moves the pretrained features before the head is any good
("Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", Kumar et al.,
ICLR 2022). With `probe_steps = N` the first N training batches train the head alone on the fixed
encoder (a linear probe; BatchNorm keeps its statistics), and only then do all layers learn together:
LP-FT, what fastai's `fine_tune` and the Keras transfer-learning guide also do.

Without `init_from`, `encoder` + `encoder_options` name the encoder's model directly (random
weights). The encoder is any module with `out_features` that maps x -> (B, out_features); models
'autoencoder' and 'vae' expose theirs as `.encoder`.

The pretraining run folder must stay in place: this model reads its config (and, when
pretrained, its weights) whenever it is built, also when the classifier run is loaded later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from strata.config import check
from strata.errors import StrataError
from strata.models import MODELS, build_model
from strata.run_folder import RunFolder


class WithProjection(nn.Sequential):
    """An encoder followed by the first layers of a contrastive run's projection head."""

    def __init__(self, encoder: nn.Module, layers: list[nn.Module], out_features: int):
        super().__init__(encoder, *layers)
        self.out_features = out_features


def encoder_from_run(run_dir: str, in_shape: tuple[int, ...], pretrained: bool,
                     projection_layers: int = 0) -> nn.Module:
    """The `.encoder` of the model of a finished run (its weights when `pretrained`), followed by the
    first `projection_layers` layers of its projection head."""
    folder = RunFolder(run_dir)
    path = folder.path
    if not folder.is_run():
        raise StrataError(f"[model] init_from: {path} is not a strata run folder (no config.toml); give the "
                          "folder of a finished 'reconstruct', 'vae' or 'contrastive' run (the encoder classifier reads it "
                          "whenever it is built, so keep it in place)")
    info = folder.read_info()
    run_shape = tuple(info.get("in_shape", in_shape))
    if run_shape != tuple(in_shape):
        raise StrataError(f"[model] init_from: the run {path} was trained on inputs of shape {list(run_shape)}, "
                          f"this data set gives {list(in_shape)}; pretrain on the same kind of data")
    from strata.api import load_run

    model = getattr(load_run(path).task, "model", None)
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "out_features"):
        raise StrataError(f"[model] init_from: the model of run {path} has no encoder; use a run of model "
                          "'autoencoder' or 'vae', or of task 'contrastive'")
    if projection_layers:
        encoder = _with_projection(encoder, getattr(model, "projector", None), projection_layers, path)
    if not pretrained:  # the same architecture from fresh random weights: every layer's own initialisation
        for m in encoder.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return encoder


def _with_projection(encoder: nn.Module, projector, layers: int, path) -> nn.Module:
    linears = [i for i, m in enumerate(projector or []) if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise StrataError(f"[model] projection_layers: the run {path} has no projection head with hidden layers "
                          "to keep (a 'contrastive' run with projection_hidden > 0 has one); set projection_layers = 0")
    if layers > len(linears) - 1:
        raise StrataError(f"[model] projection_layers: the projection head of run {path} has {len(linears) - 1} "
                          f"hidden layer(s), so at most {len(linears) - 1} can be kept; got {layers}")
    end = linears[layers]  # up to (not including) the next linear layer: the kept layers and their activations
    kept = list(projector)[:end]
    return WithProjection(encoder, kept, kept[linears[layers - 1]].out_features)


@dataclass(frozen=True)
class Config:
    in_shape: tuple[int, ...] = (1, 28, 28)  # filled from the data
    num_classes: int = 10  # filled from the data
    init_from: str = ""  # run folder whose model's encoder is used
    pretrained: bool = True  # with init_from: load its weights (false: same architecture, random weights)
    encoder: str = ""  # without init_from: the encoder's model name ('autoencoder', 'vae')
    encoder_options: dict = field(default_factory=dict)  # without init_from: that model's options
    freeze_encoder: bool = False  # train the head only; the encoder (and its BatchNorm statistics) stay fixed
    probe_steps: int = 0  # LP-FT: the first this many training batches train the head alone, then all layers
    projection_layers: int = 0  # with init_from a contrastive run: keep this many layers of its projection head
    head_hidden: int = 0  # 0: a linear head; otherwise one hidden layer of this width
    dropout: float = 0.0  # on the features, before the head

    def __post_init__(self):
        check(bool(self.init_from) != bool(self.encoder), "[model] init_from",
              "give exactly one of init_from (a pretraining run folder) or encoder (a model name)")
        check(self.num_classes >= 2, "[model] num_classes", f"must be >= 2, got {self.num_classes}")
        check(self.head_hidden >= 0, "[model] head_hidden", f"must be >= 0, got {self.head_hidden}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.probe_steps >= 0, "[model] probe_steps", f"must be >= 0, got {self.probe_steps}")
        check(not (self.probe_steps and self.freeze_encoder), "[model] probe_steps",
              "the encoder is frozen throughout with freeze_encoder = true; give one of the two")
        check(self.projection_layers >= 0, "[model] projection_layers", f"must be >= 0, got {self.projection_layers}")
        check(not self.projection_layers or bool(self.init_from), "[model] projection_layers",
              "keeps layers of a contrastive run's projection head, so it needs init_from")


@MODELS.register("encoder_classifier")
class EncoderClassifier(nn.Module):
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        if cfg.init_from:
            self.encoder = encoder_from_run(cfg.init_from, tuple(cfg.in_shape), cfg.pretrained, cfg.projection_layers)
        else:
            model = build_model(cfg.encoder, dict(cfg.encoder_options), in_shape=tuple(cfg.in_shape))
            if not hasattr(model, "encoder"):
                raise StrataError(f"[model] encoder: model '{cfg.encoder}' has no encoder; use 'autoencoder' or 'vae'")
            self.encoder = model.encoder
        if hasattr(self.encoder, "drop_variance"):
            self.encoder.drop_variance()  # a VAE encoder: only the posterior mean is used
        d = self.encoder.out_features
        if cfg.head_hidden:
            head = [nn.Linear(d, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, cfg.num_classes)]
        else:
            head = [nn.Linear(d, cfg.num_classes)]
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), *head)
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        if cfg.probe_steps:  # training batches seen, kept in checkpoints so that a resumed run unfreezes on time
            self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self._seen = 0  # a Python copy of batches_seen, read from it only when a checkpoint is loaded

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()  # frozen features: BatchNorm keeps its pretraining statistics
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.cfg.probe_steps:
            self._seen = int(self.batches_seen)

    def _probe_phase(self) -> bool:
        """Whether this training batch is one of the first probe_steps (and count it)."""
        if not self.training or self._seen >= self.cfg.probe_steps:
            return False
        self._seen += 1
        self.batches_seen += 1
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._probe_phase():  # the encoder as a fixed feature extractor: no gradient, BatchNorm statistics kept
            self.encoder.eval()
            with torch.no_grad():
                features = self.encoder(x)
            self.encoder.train()
            return self.head(features)
        return self.head(self.encoder(x))  # (B, out_features) -> (B, num_classes)
