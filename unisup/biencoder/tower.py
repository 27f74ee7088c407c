"""One tower of the bi-encoder, and the on-disk layout of a trained bi-encoder.

A tower is a Hugging Face encoder, mean pooling over the attention mask, an optional
linear projection, and L2 normalization; scores are dot products of unit vectors.

A bi-encoder folder holds ``biencoder.json`` plus one folder per distinct tower, each tower
also a sentence-transformers folder, and the root one sentence-transformers model whose
Router sends queries to the query tower and documents to the item tower:

    model/
      biencoder.json        {"query_tower": "query_tower", "item_tower": "item_tower", ...}
      README.md             the model card (unisup.model_card)
      modules.json, router_config.json, config_sentence_transformers.json
      query_tower/          HF save_pretrained (config, weights, tokenizer) + tower.json,
                            modules.json, sentence_bert_config.json, 1_Pooling/ (mean),
                            [2_Dense/ (the bias-free projection, its only copy)], N_Normalize/
      item_tower/           same; absent when the towers share weights (both name one folder)

``SentenceTransformer(model)`` gives ``encode_query`` / ``encode_document``;
``SentenceTransformer(model / "query_tower")`` one tower. The Router reads the towers'
folders, so no weight is stored twice.

With a frozen item tower (``training.freeze_item_tower``) the manifest's ``frozen_item_tower``
records the start encoder's fingerprint and the digest of its weights: the catalog's item
embeddings are then the start encoder's, shared through the content-keyed embedding cache
(:func:`unisup.encoders.cached_encode`) by training, the dense channel and the index. With
``training.item_adapter`` the frozen tower has a trained square projection (its head, in
``2_Dense/``), which training and the index apply to the cached vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unisup.encoders import encoder_cache_key, mean_pool
from unisup.model_card import biencoder_card

MANIFEST = "biencoder.json"
FROZEN_ITEM_TOWER = "frozen_item_tower"
TOWER_CONFIG = "tower.json"
DENSE_FOLDER = "2_Dense"
PROJECTION_FILE = f"{DENSE_FOLDER}/model.safetensors"
ST_PACKAGE = "sentence_transformers"
ST_MODULES = {
    "transformer": f"{ST_PACKAGE}.base.modules.transformer.Transformer",
    "pooling": f"{ST_PACKAGE}.sentence_transformer.modules.pooling.Pooling",
    "dense": f"{ST_PACKAGE}.base.modules.dense.Dense",
    "normalize": f"{ST_PACKAGE}.base.modules.normalize.Normalize",
    "router": f"{ST_PACKAGE}.base.modules.router.Router",
}
ST_MODEL_CONFIG = {
    "model_type": "SentenceTransformer",
    "prompts": {"query": "", "document": ""},
    "default_prompt_name": None,
    "similarity_fn_name": "cosine",
}


def project(projection: nn.Linear | None, pooled: torch.Tensor) -> torch.Tensor:
    """Projection and L2 normalization of unit pooled vectors (identity without a projection).
    Normalizing before a linear map does not change the direction after it, so this applies as
    well to cached encoder vectors."""
    if projection is None:
        return pooled
    return nn.functional.normalize(projection(pooled), dim=-1)


class Tower(nn.Module):
    """Encoder + mean pooling + optional projection + L2 normalization."""

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int = 64, projection_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        hidden = encoder.config.hidden_size
        self.projection = nn.Linear(hidden, projection_dim, bias=False) if projection_dim else None

    @classmethod
    def from_pretrained(
        cls, path: str | Path, max_length: int = 64, projection_dim: int | None = None, seed: int = 0
    ) -> Tower:
        """A fresh tower on an HF encoder folder (e.g. the packaged MiniLM)."""
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(seed)
        return cls(
            AutoModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path)), max_length, projection_dim
        )

    def add_identity_adapter(self) -> Tower:
        """Give the tower a square projection initialized to the identity (its vectors unchanged
        until it is trained): the item adapter of a frozen item tower."""
        hidden = self.encoder.config.hidden_size
        self.projection = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(hidden))
        return self

    @property
    def dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.encoder.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        """The encoder's unit-norm mean-pooled vectors, before the projection."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """:func:`project` with this tower's projection: ``head(pool(x)) == forward(x)``."""
        return project(self.projection, pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask, **extra))

    @torch.inference_mode()
    def apply_head(self, pooled: np.ndarray) -> np.ndarray:
        """:meth:`head` on float32 unit vectors (e.g. the cached embeddings of the frozen encoder)."""
        if self.projection is None:
            return pooled
        weight = self.projection.weight.detach().float().cpu().numpy()
        out = pooled @ weight.T
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "encoding",
        with_head: bool = True,
    ) -> np.ndarray:
        """Unit-norm float32 embeddings, batched by length to limit padding; ``with_head=False``
        stops before the projection (the encoder's pooled vectors)."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        texts = list(texts)
        out = np.zeros((len(texts), self.dim if with_head else self.encoder.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx]).items()}
            vectors = self(**batch) if with_head else self.pool(**batch)
            out[idx] = vectors.float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, path: str | Path) -> None:
        """HF ``save_pretrained`` of encoder and tokenizer, plus tower.json and the projection."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        config = {
            "max_length": self.max_length,
            "pooling": "mean",
            "normalize": True,
            "dim": self.dim,
            "projection_dim": self.projection.out_features if self.projection is not None else None,
        }
        (path / TOWER_CONFIG).write_text(json.dumps(config, indent=1))
        modules = self._write_sentence_transformers_modules(path)
        _write_json(path / "modules.json", modules)
        _write_json(path / "sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": False})
        _write_json(path / "config_sentence_transformers.json", ST_MODEL_CONFIG)
        if self.projection is not None:
            weight = self.projection.weight.detach().cpu().contiguous()
            save_file({"linear.weight": weight}, str(path / PROJECTION_FILE))

    def _write_sentence_transformers_modules(self, path: Path) -> list[dict]:
        """The configs of the tower's sentence-transformers modules (Transformer at the root, mean
        Pooling, the projection as a bias-free identity Dense, Normalize); returns modules.json."""
        hidden = self.encoder.config.hidden_size
        stages = [
            ("transformer", "", None),
            ("pooling", "1_Pooling", {"embedding_dimension": hidden, "pooling_mode": "mean"}),
        ]
        if self.projection is not None:
            dense = {
                "in_features": hidden,
                "out_features": self.projection.out_features,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
            stages.append(("dense", DENSE_FOLDER, dense))
        stages.append(("normalize", f"{len(stages)}_Normalize", {}))
        for _, folder, config in stages[1:]:
            (path / folder).mkdir(exist_ok=True)
            _write_json(path / folder / "config.json", config)
        return [
            {"idx": i, "name": str(i), "path": folder, "type": ST_MODULES[kind]}
            for i, (kind, folder, _) in enumerate(stages)
        ]

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> Tower:
        """Load a tower written by :meth:`save`."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        config = json.loads((path / TOWER_CONFIG).read_text())
        tower = cls(
            AutoModel.from_pretrained(str(path)),
            AutoTokenizer.from_pretrained(str(path)),
            config["max_length"],
            config["projection_dim"],
        )
        if tower.projection is not None:
            tower.projection.weight.data.copy_(load_file(str(path / PROJECTION_FILE))["linear.weight"])
        return tower.to(device or "cpu").eval()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


def encoder_digest(tower: Tower) -> str:
    """A content hash of a tower's encoder weights (names, dtypes, shapes and values), the
    projection left out: what stays the start encoder's in a frozen item tower."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        if name.startswith("projection."):
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FrozenItemEncoder:
    """The frozen encoder of an item tower as an encoder for :func:`unisup.encoders.cached_encode`:
    keyed as the start encoder it is (folder fingerprint and max tokens), the key the dense channel
    gives the same encoder, and encoded in batches of a fixed size (batch composition moves the
    last bits). Its vectors stop before the tower's head; :meth:`catalog_vectors` applies it."""

    def __init__(self, tower: Tower, start_fingerprint: str, batch_size: int):
        self.tower = tower
        self.start_fingerprint = start_fingerprint
        self.batch_size = batch_size

    @property
    def fingerprint(self) -> str:
        return encoder_cache_key(self.start_fingerprint, self.tower.max_length)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return self.tower.encode(
            texts, batch_size=self.batch_size, progress=progress, desc="frozen item tower", with_head=False
        )

    def catalog_vectors(self, texts: Sequence[str], cache_dir: str | Path | None, progress: bool = False) -> np.ndarray:
        """The item tower's vectors of ``texts``: the cached frozen-encoder vectors through its head
        (the item adapter when it has one)."""
        from unisup.encoders import cached_encode

        return self.tower.apply_head(cached_encode(self, list(texts), cache_dir, progress))

    def record(self) -> dict:
        """The manifest entry (``frozen_item_tower``) of this tower."""
        return {
            "start_fingerprint": self.start_fingerprint,
            "weights_digest": encoder_digest(self.tower),
            "max_length": self.tower.max_length,
            "batch_size": self.batch_size,
            "item_adapter": self.tower.projection is not None,
        }


def frozen_item_encoder(path: str | Path, item_tower: Tower) -> FrozenItemEncoder | None:
    """The item tower of a bi-encoder folder as a :class:`FrozenItemEncoder` when the manifest
    records its encoder as the frozen start encoder and the weights are still that encoder's; else None."""
    record = json.loads((Path(path) / MANIFEST).read_text()).get(FROZEN_ITEM_TOWER)
    if not record:
        return None
    if record["weights_digest"] != encoder_digest(item_tower) or record["max_length"] != item_tower.max_length:
        return None
    return FrozenItemEncoder(item_tower, record["start_fingerprint"], record["batch_size"])


def save_biencoder(query_tower: Tower, item_tower: Tower, path: str | Path, metadata: dict | None = None) -> Path:
    """Write a bi-encoder folder; one tower folder when both towers are the same module."""
    path = Path(path)
    shared = query_tower is item_tower
    query_tower.save(path / "query_tower")
    if not shared:
        item_tower.save(path / "item_tower")
    manifest = {
        "query_tower": "query_tower",
        "item_tower": "query_tower" if shared else "item_tower",
        "shared": shared,
        "dim": query_tower.dim,
        **(metadata or {}),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))
    write_router(path, manifest["query_tower"], manifest["item_tower"])
    (path / "README.md").write_text(biencoder_card(manifest))
    return path


def write_router(path: Path, query_folder: str, item_folder: str) -> None:
    """Make the bi-encoder folder one sentence-transformers model: a Router whose "query" route is
    the query tower's modules and "document" route the item tower's, read from their folders."""
    types, structure = {}, {}
    for route, folder in (("query", query_folder), ("document", item_folder)):
        modules = json.loads((path / folder / "modules.json").read_text())
        ids = [f"{folder}/{m['path']}".rstrip("/") for m in modules]
        types.update(zip(ids, (m["type"] for m in modules)))
        structure[route] = ids
    router = {
        "types": types,
        "structure": structure,
        "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}},
    }
    _write_json(path / "router_config.json", router)
    _write_json(path / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": ST_MODULES["router"]}])
    _write_json(path / "config_sentence_transformers.json", ST_MODEL_CONFIG)


def load_biencoder(path: str | Path, device: str | None = None) -> tuple[Tower, Tower]:
    """(query tower, item tower) from a bi-encoder folder; the same object when shared."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path}: not a bi-encoder folder ({MANIFEST} missing)")
    manifest = json.loads(manifest_path.read_text())
    query = Tower.load(path / manifest["query_tower"], device)
    item = (
        query
        if manifest["item_tower"] == manifest["query_tower"]
        else Tower.load(path / manifest["item_tower"], device)
    )
    return query, item


def item_fields(path: str | Path) -> tuple[str, ...]:
    """The catalog fields the item tower of a bi-encoder folder reads: those it was trained on,
    else (an untrained encoder) the default item text fields."""
    from unisup.data.catalog import DEFAULT_FIELDS

    manifest = json.loads((Path(path) / MANIFEST).read_text())
    fields = manifest.get("training", {}).get("parameters", {}).get("item_fields")
    return tuple(fields) if fields else DEFAULT_FIELDS


def off_the_shelf_biencoder(path: str | Path, encoder_path: str | Path | None = None, max_length: int = 64) -> Path:
    """Write an untrained shared-weights bi-encoder folder around an encoder (default: the
    packaged MiniLM): the off-the-shelf baseline in the bi-encoder layout."""
    from unisup.encoders import packaged_minilm_path

    tower = Tower.from_pretrained(encoder_path or packaged_minilm_path(), max_length=max_length)
    return save_biencoder(tower, tower, path, {"trained": False, "encoder_path": str(encoder_path or "")})
