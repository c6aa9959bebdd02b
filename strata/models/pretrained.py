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


def encoder_from_run(run_dir: str, in_shape: tuple[int, ...], pretrained: bool) -> nn.Module:
    """The `.encoder` of the model of a finished run (its weights when `pretrained`)."""
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
    if not pretrained:  # the same architecture from fresh random weights: every layer's own initialisation
        for m in encoder.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return encoder


@dataclass(frozen=True)
class Config:
    in_shape: tuple[int, ...] = (1, 28, 28)  # filled from the data
    num_classes: int = 10  # filled from the data
    init_from: str = ""  # run folder whose model's encoder is used
    pretrained: bool = True  # with init_from: load its weights (false: same architecture, random weights)
    encoder: str = ""  # without init_from: the encoder's model name ('autoencoder', 'vae')
    encoder_options: dict = field(default_factory=dict)  # without init_from: that model's options
    freeze_encoder: bool = False  # train the head only; the encoder (and its BatchNorm statistics) stay fixed
    head_hidden: int = 0  # 0: a linear head; otherwise one hidden layer of this width
    dropout: float = 0.0  # on the features, before the head

    def __post_init__(self):
        check(bool(self.init_from) != bool(self.encoder), "[model] init_from",
              "give exactly one of init_from (a pretraining run folder) or encoder (a model name)")
        check(self.num_classes >= 2, "[model] num_classes", f"must be >= 2, got {self.num_classes}")
        check(self.head_hidden >= 0, "[model] head_hidden", f"must be >= 0, got {self.head_hidden}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")


@MODELS.register("encoder_classifier")
class EncoderClassifier(nn.Module):
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        if cfg.init_from:
            self.encoder = encoder_from_run(cfg.init_from, tuple(cfg.in_shape), cfg.pretrained)
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

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()  # frozen features: BatchNorm keeps its pretraining statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # (B, out_features) -> (B, num_classes)
