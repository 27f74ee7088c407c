"""The ordinal cross-encoder teacher and its on-disk folder.

A teacher reads a (query, item text) pair through a transformer encoder, mean-pools
it into one relevance score ``s`` and compares it with K-1 ordered thresholds
(:class:`~unisup.teachers.ordinal.OrdinalHead`): the cumulative logits
``s - theta_k`` model P(grade > k). A calibration temperature divides the cumulative
logits.

A teacher may be **stacked** on a :class:`~unisup.teachers.features.FeatureTeacher`:
its score is then the feature teacher's linear score of the pair's features plus the
encoder's score, which starts at zero, and its thresholds start at the feature
teacher's. Before its first step it *is* the feature teacher; fine-tuning adds what
the encoder sees to that evidence. A stacked teacher reads JSON item records (the
features need each field) and builds its text from them.

A teacher folder holds the Hugging Face encoder + tokenizer (``save_pretrained``),
``ordinal_head.safetensors`` and ``teacher.json`` (grades, max length, item text
fields, temperature, training record), and a stacked one its feature teacher in
``features/``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unisup.data.catalog import parse_record, row_text
from unisup.encoders import mean_pool
from unisup.teachers.features import FeatureTeacher
from unisup.teachers.ordinal import OrdinalHead, grade_probabilities

TEACHER_CONFIG = "teacher.json"
HEAD_FILE = "ordinal_head.safetensors"
FEATURES_DIR = "features"


class OrdinalCrossEncoder(nn.Module):
    """Encoder + mean pooling + ordinal head; see the module docstring."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        num_grades: int,
        max_length: int,
        item_fields: Sequence[str] = ("title", "brand"),
        attributes: int = 0,
        temperature: float = 1.0,
        record: dict | None = None,
        features=None,
    ):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.num_grades = num_grades
        self.max_length = max_length
        self.item_fields = tuple(item_fields)
        self.attributes = attributes
        self.temperature = temperature
        self.record = dict(record or {})
        self.head = OrdinalHead(encoder.config.hidden_size, num_grades)
        self.features = features
        self.feature_score = None
        if features is not None:
            self.stack_on(features)

    def stack_on(self, features) -> None:
        """Start from a feature teacher: its score and thresholds, plus an encoder score of zero."""
        self.features = features
        self.feature_score = copy.deepcopy(features.score)
        nn.init.zeros_(self.head.score.weight)
        nn.init.zeros_(self.head.score.bias)
        with torch.no_grad():
            self.head.first_threshold.copy_(features.head.first_threshold)
            self.head.threshold_gaps.copy_(features.head.threshold_gaps)

    def item_text(self, item: str) -> str:
        """The text the encoder reads: the item itself, or built from a JSON record when stacked."""
        if self.features is None:
            return item
        return row_text(parse_record(item), self.item_fields, self.attributes)

    def pair_features(self, queries: Sequence[str], items: Sequence[str]) -> np.ndarray | None:
        """The stacked teacher's features of (query, item record) pairs; None when not stacked."""
        return None if self.features is None else self.features.featurizer.features(list(queries), list(items))

    @classmethod
    def from_encoder(
        cls,
        path: str | Path,
        num_grades: int,
        max_length: int,
        num_layers: int = 0,
        item_fields: Sequence[str] = ("title", "brand"),
        attributes: int = 0,
        seed: int = 0,
    ) -> OrdinalCrossEncoder:
        """A fresh teacher on an HF encoder folder, keeping its first ``num_layers`` layers (0 = all)."""
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(seed)
        encoder = AutoModel.from_pretrained(str(path))
        total = encoder.config.num_hidden_layers
        if num_layers < 0 or num_layers > total:
            raise ValueError(f"num_layers must be 0 (all) or 1..{total} for {path}, got {num_layers}")
        if num_layers:
            encoder.encoder.layer = encoder.encoder.layer[:num_layers]
            encoder.config.num_hidden_layers = num_layers
        return cls(encoder, AutoTokenizer.from_pretrained(str(path)), num_grades, max_length, item_fields, attributes)

    def tokenize(self, queries: Sequence[str], items: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(queries),
            list(items),
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        **extra: torch.Tensor,
    ) -> torch.Tensor:
        """Cumulative logits (n, K-1), before temperature; ``features`` of the pairs when stacked."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.head(mean_pool(hidden, attention_mask))
        if self.feature_score is not None:
            if features is None:
                raise ValueError("a stacked teacher needs the pairs' features")
            logits = logits + self.feature_score(features.to(logits.dtype))
        return logits

    @torch.inference_mode()
    def cumulative_logits(self, queries: Sequence[str], items: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Uncalibrated cumulative logits (n, K-1) of items (texts, or records when stacked)."""
        if len(queries) != len(items):
            raise ValueError(f"got {len(queries)} queries but {len(items)} item texts")
        return self.text_logits(
            queries, [self.item_text(t) for t in items], self.pair_features(queries, items), batch_size
        )

    @torch.inference_mode()
    def text_logits(
        self, queries: Sequence[str], texts: Sequence[str], features: np.ndarray | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """Uncalibrated cumulative logits (n, K-1) of item texts (with the pairs' features when stacked),
        batched by length to limit padding."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = np.zeros((len(queries), self.num_grades - 1), dtype=np.float32)
        order = np.argsort([-(len(q) + len(t)) for q, t in zip(queries, texts)], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {
                k: v.to(device) for k, v in self.tokenize([queries[i] for i in idx], [texts[i] for i in idx]).items()
            }
            if features is not None:
                batch["features"] = torch.from_numpy(features[idx]).to(device)
            out[idx] = self(**batch).float().cpu().numpy()
        self.train(was_training)
        return out

    def predict_probs(self, queries: Sequence[str], items: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated per-grade probabilities (n, K), float32."""
        logits = torch.from_numpy(self.cumulative_logits(queries, items, batch_size))
        return grade_probabilities(logits, self.temperature).numpy().astype(np.float32)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        tensors = dict(self.head.state_dict())
        if self.feature_score is not None:
            tensors.update({f"features.{k}": v for k, v in self.feature_score.state_dict().items()})
            self.features.save(path / FEATURES_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / HEAD_FILE))
        config = {
            "kind": "ordinal_cross_encoder",
            "num_grades": self.num_grades,
            "max_length": self.max_length,
            "item_fields": list(self.item_fields),
            "attributes": self.attributes,
            "temperature": self.temperature,
            "num_layers": self.encoder.config.num_hidden_layers,
            "stacked_on_features": self.features is not None,
            "record": self.record,
        }
        (path / TEACHER_CONFIG).write_text(json.dumps(config, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> OrdinalCrossEncoder:
        """Load a teacher folder written by :meth:`save`."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        config_path = path / TEACHER_CONFIG
        if not config_path.exists():
            raise FileNotFoundError(f"{path}: not a teacher folder ({TEACHER_CONFIG} missing)")
        config = json.loads(config_path.read_text())
        features = None
        if config.get("stacked_on_features"):
            features = FeatureTeacher.load(path / FEATURES_DIR, device)
        teacher = cls(
            AutoModel.from_pretrained(str(path)),
            AutoTokenizer.from_pretrained(str(path)),
            config["num_grades"],
            config["max_length"],
            config["item_fields"],
            config["attributes"],
            config["temperature"],
            config.get("record"),
            features,
        )
        tensors = load_file(str(path / HEAD_FILE))
        teacher.head.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("features.")})
        if teacher.feature_score is not None:
            teacher.feature_score.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("features.")})
        return teacher.to(device or "cpu").eval()


def load_teacher(path: str | Path, device: str | None = None):
    """Any teacher folder: an ordinal cross-encoder (stacked or not) or a feature teacher."""
    path = Path(path)
    config_path = path / TEACHER_CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{path}: not a teacher folder ({TEACHER_CONFIG} missing)")
    if json.loads(config_path.read_text()).get("kind") == FeatureTeacher.kind:
        return FeatureTeacher.load(path, device)
    return OrdinalCrossEncoder.load(path, device)
