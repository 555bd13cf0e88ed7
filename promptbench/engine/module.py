"""The one LightningModule: drives any :class:`~promptbench.methods.Method` through train/val/test."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from promptbench.methods import Method


def classification_metrics(num_classes: int) -> MetricCollection:
    """Top-1 accuracy (the papers' metric), macro-F1 and balanced accuracy (macro recall)."""
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        "balanced_acc": MulticlassRecall(num_classes, average="macro"),
    })


class PromptModule(L.LightningModule):
    """Generic train / val / test over a method. ``eval_sets`` maps test-set name → class names."""

    def __init__(self, method: Method, optim_cfg: Any, max_epochs: int, train_classnames: list[str],
                 eval_sets: dict[str, list[str]]):
        super().__init__()
        self.method = method
        self.optim_cfg = optim_cfg
        self.max_epochs = max_epochs
        self.train_classnames = list(train_classnames)
        self.eval_names = list(eval_sets)
        self.eval_classnames = dict(eval_sets)
        self.train_acc = MulticlassAccuracy(len(train_classnames))
        self.val_metrics = classification_metrics(len(train_classnames)).clone(prefix="val/")
        self.test_metrics = torch.nn.ModuleList(
            classification_metrics(len(eval_sets[n])).clone(prefix=f"{n}/") for n in self.eval_names
        )
        self._active_classes: list[str] | None = None
        #: per eval set: the test logits and labels of the last test run (promptbench.engine.trust reads them)
        self.test_outputs: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    # -- helpers ------------------------------------------------------------------------------------
    def _use_classes(self, names: list[str]) -> None:
        if self._active_classes != names:
            self.method.set_classnames(names)
            self._active_classes = list(names)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.method.needs_grad_at_test:
            with torch.enable_grad():
                return self.method(images).detach()
        return self.method(images)

    # -- steps --------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.method.on_train_start()

    def on_train_end(self) -> None:
        self.method.on_train_end()

    def on_train_epoch_end(self) -> None:
        self.method.on_train_epoch_end(int(self.current_epoch))

    def on_train_epoch_start(self) -> None:
        self._use_classes(self.train_classnames)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with self.method.training_mode():  # submodules the method runs in train mode (e.g. BERT dropout)
            out = self.method.training_loss(batch["image"], batch["label"])
        self.train_acc(out["logits"].detach(), batch["label"])
        size = batch["label"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=size)
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        if optimizers:  # the epoch's LR (mean over its steps when the schedule steps per iteration)
            self.log("train/lr", float(optimizers[0].param_groups[0]["lr"]), on_step=False, on_epoch=True,
                     batch_size=size)
        for key, value in out.items():
            if key not in ("loss", "logits") and torch.is_tensor(value) and value.dim() == 0:
                self.log(f"train/{key}", value, on_step=False, on_epoch=True, batch_size=size)
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        self._use_classes(self.train_classnames)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self._logits(batch["image"])
        self.val_metrics.update(logits, batch["label"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._use_classes(self.eval_classnames[self.eval_names[dataloader_idx]])
        logits = self._logits(batch["image"])
        self.test_metrics[dataloader_idx].update(logits, batch["label"])
        outputs = self.test_outputs.setdefault(self.eval_names[dataloader_idx], ([], []))
        outputs[0].append(logits.detach().float().cpu())
        outputs[1].append(batch["label"].detach().cpu())

    def on_test_epoch_start(self) -> None:
        self.test_outputs = {}

    def on_test_epoch_end(self) -> None:
        for metrics in self.test_metrics:
            self.log_dict(metrics.compute(), add_dataloader_idx=False)
            metrics.reset()

    def configure_optimizers(self):
        """The method decides (``Method.configure_optimization``); the engine never checks its name."""
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        return self.method.configure_optimization(self.optim_cfg, max_epochs=self.max_epochs, total_steps=total)
