"""The cheap evidence a teacher can see, and the ordinal teacher that reads only it.

:class:`PairFeaturizer` turns a (query, item record) pair into features that need no
training: the BM25 score of the item text (Lucene variant, the same tokenizer and
statistics as :class:`~unisup.channels.BM25Channel`) and its share of the query's
largest possible score, how much of the query (IDF-weighted) the full text, the title
and the product type cover, whether the item's brand is named in the query or another
catalog brand is, and the cosine of the packaged dense encoder between query and item
text, also relative to the query's best cosine over the catalog. Every feature is a
function of the pair and the catalog statistics alone, never of the other candidates,
so a pair gets the same features in any shard or batch.

The catalog's item embeddings are stored with the featurizer (keyed by a hash of the
text); an item text not among them is encoded on the fly, and the query's best cosine
is always taken over the stored catalog snapshot, so features never depend on what
was scored before.

:class:`FeatureTeacher` is an ordinal model over those features: standardized
features, one linear score and K-1 ordered thresholds (the same head as the
cross-encoders), fitted by L-BFGS on the class-weighted ordinal loss, then
temperature-scaled on validation. It is deterministic and takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from unisup.channels import bm25_tokenizer
from unisup.data.catalog import DEFAULT_FIELDS, item_texts, parse_record, row_text
from unisup.encoders import DenseEncoder, cached_encode
from unisup.errors import ArtifactMismatch
from unisup.teachers.ordinal import OrdinalHead, grade_probabilities, ordinal_loss

FEATURE_NAMES = (
    "cosine",
    "cosine_gap",
    "cosine_percentile",
    "bm25",
    "bm25_share",
    "title_bm25_share",
    "coverage",
    "title_coverage",
    "type_coverage",
    "brand_named",
    "other_brand_named",
    "query_terms",
    "has_type",
)
FEATURIZER_DIR = "featurizer"
FEATURE_TEACHER_CONFIG = "teacher.json"
FEATURE_HEAD_FILE = "feature_head.safetensors"
_WORDS = re.compile(r"\w+")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class PairFeaturizer:
    """Features of (query, item record) pairs; see the module docstring."""

    def __init__(
        self,
        document_frequency: dict[str, int],
        num_documents: int,
        average_length: float,
        brands: Sequence[str],
        encoder,
        item_keys: Sequence[str],
        item_vectors: np.ndarray,
        k1: float = 1.5,
        b: float = 0.75,
    ):
        self.document_frequency = dict(document_frequency)
        self.num_documents = int(num_documents)
        self.average_length = float(average_length)
        self.brands = sorted({b.lower() for b in brands if b and len(b) > 2})
        self._brand_pattern = (
            re.compile(r"\b(" + "|".join(re.escape(b) for b in self.brands) + r")\b") if self.brands else None
        )
        self.encoder = encoder
        self.k1, self.b = k1, b
        self.item_row = {key: i for i, key in enumerate(item_keys)}
        self.item_keys = list(item_keys)
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.catalog_size = len(self.item_keys)  # the catalog snapshot; items encoded later are not part of it
        self._tokenizer = bm25_tokenizer()
        self._queries: dict[str, tuple[list[str], np.ndarray, float, np.ndarray]] = {}

    # ------------------------------------------------------------ building and storing

    @classmethod
    def fit(cls, catalog, encoder, cache_dir: str | None = None, k1: float = 1.5, b: float = 0.75) -> PairFeaturizer:
        """Statistics and item embeddings of a catalog (pyarrow table), with a
        :class:`~unisup.encoders.DenseEncoder`; ``cache_dir`` is the embedding cache."""
        texts = item_texts(catalog)
        tokenizer = bm25_tokenizer()
        lengths, df = [], Counter()
        for tokens in _tokenize(tokenizer, texts):
            lengths.append(len(tokens))
            df.update(set(tokens))
        brands = catalog["brand"].to_pylist() if "brand" in catalog.column_names else []
        vectors = cached_encode(encoder, texts, cache_dir)  # the dense channel's cache: same texts, same order
        first = {}
        for row, text in enumerate(texts):
            first.setdefault(text_key(text), row)
        keys = list(first)
        vectors = vectors[list(first.values())]
        return cls(df, len(texts), float(np.mean(lengths)) if lengths else 1.0, brands, encoder, keys, vectors, k1, b)

    def save(self, path: str | Path) -> Path:
        """Write the statistics, the item embeddings and the encoder into a folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        stats = {
            "document_frequency": self.document_frequency,
            "num_documents": self.num_documents,
            "average_length": self.average_length,
            "brands": self.brands,
            "k1": self.k1,
            "b": self.b,
            "max_length": self.encoder.max_length,
            "item_keys": self.item_keys[: self.catalog_size],
        }
        (path / "statistics.json").write_text(json.dumps(stats))
        np.save(path / "item_vectors.npy", self.item_vectors[: self.catalog_size])
        self.encoder.model.save_pretrained(path / "encoder")
        self.encoder.tokenizer.save_pretrained(path / "encoder")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> PairFeaturizer:
        path = Path(path)
        stats = json.loads((path / "statistics.json").read_text())
        encoder = DenseEncoder(path / "encoder", max_length=stats["max_length"], device=device or "cpu")
        return cls(
            stats["document_frequency"],
            stats["num_documents"],
            stats["average_length"],
            stats["brands"],
            encoder,
            stats["item_keys"],
            np.load(path / "item_vectors.npy"),
            stats["k1"],
            stats["b"],
        )

    # ------------------------------------------------------------ features

    def idf(self, token: str) -> float:
        df = self.document_frequency.get(token, 0)
        return math.log(1.0 + (self.num_documents - df + 0.5) / (df + 0.5))

    def bm25(self, query_tokens: Sequence[str], item_tokens: Sequence[str]) -> float:
        """BM25 (Lucene variant) of a tokenized item text for tokenized query terms."""
        counts = Counter(item_tokens)
        norm = self.k1 * (1.0 - self.b + self.b * len(item_tokens) / self.average_length)
        return float(sum(self.idf(t) * counts[t] / (counts[t] + norm) for t in query_tokens if counts.get(t)))

    def coverage(self, query_tokens: Sequence[str], item_tokens: Sequence[str]) -> float:
        """IDF-weighted share of the query terms found in the tokens."""
        total = sum(self.idf(t) for t in query_tokens)
        present = set(item_tokens)
        return float(sum(self.idf(t) for t in query_tokens if t in present) / total) if total else 0.0

    def _query(self, query: str):
        if query not in self._queries:
            tokens = _tokenize(self._tokenizer, [query])[0]
            vector = self.encoder.encode([query])[0]
            catalog = self.item_vectors[: self.catalog_size]
            sims = np.sort(catalog @ vector) if self.catalog_size else np.zeros(1, np.float32)
            self._queries[query] = (tokens, vector, float(sims[-1]), sims)
        return self._queries[query]

    def item_vector_rows(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of the item embeddings for dense texts; texts not stored are encoded and added."""
        keys = [text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self.item_row}
        if missing:
            vectors = self.encoder.encode(list(missing.values()))
            for key in missing:
                self.item_row[key] = len(self.item_keys)
                self.item_keys.append(key)
            self.item_vectors = np.concatenate([self.item_vectors, vectors.astype(np.float32)])
        return np.array([self.item_row[k] for k in keys], dtype=np.int64)

    def features(self, queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """(n, len(FEATURE_NAMES)) float32 features of queries and JSON item records."""
        if len(queries) != len(items):
            raise ValueError(f"got {len(queries)} queries but {len(items)} items")
        records = [parse_record(item) for item in items]
        texts = [row_text(r, DEFAULT_FIELDS) for r in records]
        rows = self.item_vector_rows(texts)
        full = _tokenize(self._tokenizer, texts)
        titles = _tokenize(self._tokenizer, [str(r.get("title") or "") for r in records])
        types = _tokenize(self._tokenizer, [str(r.get("product_type") or "") for r in records])
        out = np.zeros((len(queries), len(FEATURE_NAMES)), dtype=np.float32)
        for i, (query, record) in enumerate(zip(queries, records)):
            tokens, vector, best, sims = self._query(query)
            cosine = float(self.item_vectors[rows[i]] @ vector)
            ideal = sum(self.idf(t) for t in tokens) or 1.0
            bm25 = self.bm25(tokens, full[i])
            lowered = " ".join(_WORDS.findall(query.lower()))
            brand = " ".join(_WORDS.findall(str(record.get("brand") or "").lower()))
            brand_named = bool(brand) and re.search(rf"\b{re.escape(brand)}\b", lowered) is not None
            other = (
                not brand_named
                and self._brand_pattern is not None
                and any(m != brand for m in self._brand_pattern.findall(lowered))
            )
            out[i] = (
                cosine,
                cosine - best,
                np.searchsorted(sims, cosine) / len(sims),
                bm25,
                bm25 / ideal,
                self.bm25(tokens, titles[i]) / ideal,
                self.coverage(tokens, full[i]),
                self.coverage(tokens, titles[i]),
                self.coverage(tokens, types[i]),
                float(brand_named),
                float(other),
                float(len(tokens)),
                float(bool(types[i])),
            )
        return out


def _tokenize(tokenizer, texts: Sequence[str]) -> list[list[str]]:
    if not texts:
        return []
    tokens = tokenizer.tokenize(list(texts), update_vocab=True, return_as="string", show_progress=False)
    return [[token for token in t if token] for t in tokens]  # an empty text gives [""]: no tokens


def featurizer_for(catalog, channels_cfg) -> PairFeaturizer:
    """The featurizer of a catalog with the dense channel's encoder settings and cache."""
    encoder = DenseEncoder(
        channels_cfg.dense_model or None, channels_cfg.dense_max_length, channels_cfg.dense_batch_size, device="cpu"
    )
    return PairFeaturizer.fit(
        catalog, encoder, channels_cfg.cache_dir or None, channels_cfg.bm25_k1, channels_cfg.bm25_b
    )


class FeatureScore(torch.nn.Module):
    """A linear score of standardized features (the feature part of an ordinal head)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.linear = torch.nn.Linear(len(mean), 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.scale)


class FeatureTeacher:
    """Ordinal teacher over :class:`PairFeaturizer` features; see the module docstring."""

    kind = "ordinal_features"

    def __init__(self, featurizer: PairFeaturizer, score: FeatureScore, head, temperature: float = 1.0, record=None):
        self.featurizer = featurizer
        self.score = score
        self.head = head  # an OrdinalHead whose score layer is unused: its thresholds order the grades
        self.num_grades = head.threshold_gaps.numel() + 2
        self.temperature = temperature
        self.record = dict(record or {})

    @classmethod
    def fit(
        cls,
        featurizer: PairFeaturizer,
        features: np.ndarray,
        grades: np.ndarray,
        num_grades: int,
        pair_weights: np.ndarray,
        l2: float,
        seed: int = 0,
        max_iterations: int = 500,
    ) -> FeatureTeacher:
        """Fit the score and thresholds by L-BFGS (a fixed iteration budget) on weighted ordinal loss + L2."""
        torch.manual_seed(seed)
        mean = features.mean(0)
        scale = np.where(features.std(0) > 1e-6, features.std(0), 1.0)
        score = FeatureScore(mean, scale)
        head = OrdinalHead(1, num_grades)
        torch.nn.init.zeros_(score.linear.weight)
        torch.nn.init.zeros_(score.linear.bias)
        x = torch.from_numpy(features.astype(np.float32))
        y = torch.from_numpy(grades.astype(np.int64))
        w = torch.from_numpy(pair_weights.astype(np.float32))
        params = [score.linear.weight, head.first_threshold, head.threshold_gaps]
        optimizer = torch.optim.LBFGS(params, max_iter=max_iterations, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = score(x) - head.thresholds()
            loss = ordinal_loss(logits, y, w) + l2 * (score.linear.weight**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(featurizer, score, head)

    def logits_of_features(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(features, dtype=np.float32))
            return (self.score(x) - self.head.thresholds()).numpy()

    def cumulative_logits(self, queries: Sequence[str], items: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Uncalibrated cumulative logits (n, K-1) of queries and JSON item records."""
        return self.logits_of_features(self.featurizer.features(list(queries), list(items)))

    def predict_probs(self, queries: Sequence[str], items: Sequence[str], batch_size: int = 64) -> np.ndarray:
        logits = torch.from_numpy(self.cumulative_logits(queries, items))
        return grade_probabilities(logits, self.temperature).numpy().astype(np.float32)

    def weights(self) -> dict[str, float]:
        """Weight of each standardized feature in the score."""
        return dict(zip(FEATURE_NAMES, self.score.linear.weight.detach().numpy().reshape(-1).round(4).tolist()))

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        self.featurizer.save(path / FEATURIZER_DIR)
        tensors = {f"score.{k}": v for k, v in self.score.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / FEATURE_HEAD_FILE))
        config = {
            "kind": self.kind,
            "num_grades": self.num_grades,
            "features": list(FEATURE_NAMES),
            "temperature": self.temperature,
            "record": self.record,
        }
        (path / FEATURE_TEACHER_CONFIG).write_text(json.dumps(config, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> FeatureTeacher:
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / FEATURE_TEACHER_CONFIG).read_text())
        if list(config["features"]) != list(FEATURE_NAMES):
            raise ArtifactMismatch(
                f"{path}: the teacher reads features {config['features']}, this version computes others"
            )
        tensors = load_file(str(path / FEATURE_HEAD_FILE))
        n = len(FEATURE_NAMES)
        score = FeatureScore(np.zeros(n), np.ones(n))
        score.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("score.")})
        head = OrdinalHead(1, config["num_grades"])
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        featurizer = PairFeaturizer.load(path / FEATURIZER_DIR, device)
        return cls(featurizer, score, head, config["temperature"], config.get("record"))
