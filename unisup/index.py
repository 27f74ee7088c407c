"""FAISS index of the item tower: embed the catalog, build, measure recall, search.

An index folder holds:

    index/
      index.faiss     the FAISS index (CPU form; moved to the GPU at load when asked)
      ids.parquet     row i of the index -> product_id (column ``item_id``)
      index.json      factory, dimension, metric, size, build seconds, recall@10/@100
                      against exact search on a query sample, the model's fingerprint (the
                      content digest of its folder), the catalog (URI, content digest,
                      items), config

The factory, metric and search parameters are checked on an empty index of the item
tower's dimension before anything is embedded. The catalog is embedded in shards of
``shard_size`` items written to a local work folder keyed by the model fingerprint and a
hash of the item texts, each with its row count, size and SHA-256: a build that crashes
resumes from the shards already written, and recomputes a shard that no longer matches
its record (truncated or corrupt). Evaluation and promotion check an index against the
model and catalog they are given (:func:`check_index_matches`).

A model whose item tower is the frozen start encoder (``training.freeze_item_tower``, its
weights checked against the digest in the manifest) is not re-embedded: its catalog
embeddings come from the content-keyed embedding cache that training and the dense
channel fill (computed the same way when the cache is cold, so the vectors are identical
either way). Trainable indexes (IVF, PQ, SQ) are trained on a seeded sample of at most
``train_size`` vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from unisup import storage
from unisup.config import Config, ConfigError, IndexConfig, to_dict
from unisup.errors import ArtifactMismatch, InputError

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
METADATA_FILE = "index.json"
METRICS = ("inner_product", "l2")
RECALL_CUTOFFS = (10, 100)
log = logging.getLogger(__name__)


def _faiss_metric(metric: str) -> int:
    import faiss

    if metric not in METRICS:
        raise ConfigError(f"index.metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2


def _faiss_reason(err: RuntimeError) -> str:
    """The reason of a FAISS error without the C++ function and source location before it."""
    return re.sub(r"^Error in .* at \S+:\d+: ", "", str(err).strip())


def _empty_index(dimension: int, factory: str, metric: str):
    import faiss

    try:
        return faiss.index_factory(dimension, factory, _faiss_metric(metric))
    except RuntimeError as err:
        raise ConfigError(
            f"index.factory {factory!r} is not a valid FAISS factory string for dimension {dimension}: "
            f"{_faiss_reason(err)}"
        ) from None


def check_index_settings(cfg: IndexConfig, dimension: int) -> None:
    """Raise :class:`ConfigError` naming ``index.factory``, ``index.metric`` or ``index.search_params``
    unless they make an index of ``dimension``: tried on an empty throw-away index, before any work."""
    apply_search_params(_empty_index(dimension, cfg.factory, cfg.metric), cfg.search_params)


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _shard_record(path: Path, rows: int) -> dict:
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": storage.content_digest(str(path))}


def _shard_problem(path: Path, record_path: Path, rows: int) -> str | None:
    """Why the cached shard at ``path`` cannot be reused for ``rows`` texts; None when it can."""
    if not record_path.exists():
        return "no size and digest recorded for it"
    try:
        recorded = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return "its record is not valid JSON"
    if recorded.get("rows") != rows:
        return f"{recorded.get('rows')} rows recorded, {rows} expected"
    size = path.stat().st_size
    if size != recorded.get("bytes"):
        return f"{size} bytes, {recorded.get('bytes')} recorded"
    if storage.content_digest(str(path)) != recorded.get("sha256"):
        return "its SHA-256 is not the recorded one"
    return None


def _write_shard(path: Path, record_path: Path, vectors: np.ndarray) -> None:
    """Write the shard, then its record (rows, size, SHA-256), each atomically."""
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, vectors)
    record = _shard_record(tmp, len(vectors))
    tmp.replace(path)
    tmp_record = record_path.with_name(f".{record_path.name}.tmp")
    tmp_record.write_text(json.dumps(record))
    tmp_record.replace(record_path)


def embed_in_shards(
    encode, texts: Sequence[str], shard_dir: str | Path, shard_size: int, progress: bool = True
) -> np.ndarray:
    """Embed ``texts`` shard by shard with ``encode(texts) -> array``; shards already in
    ``shard_dir`` whose size and digest match their record are loaded, not recomputed
    (resume after a crash); any other is recomputed, with a warning. Returns all rows."""
    from tqdm.auto import tqdm

    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), shard_size)
    parts = []
    for number, start in enumerate(tqdm(starts, desc="embedding catalog shards", unit="shard", disable=not progress)):
        path = shard_dir / f"shard-{number:05d}.npy"
        record_path = path.with_suffix(".json")
        chunk = texts[start : start + shard_size]
        if path.exists():
            problem = _shard_problem(path, record_path, len(chunk))
            if problem is None:
                parts.append(np.load(path))
                continue
            log.warning("cached embedding shard %s is truncated or corrupt (%s): recomputing it", path, problem)
        vectors = np.ascontiguousarray(encode(chunk), dtype=np.float32)
        _write_shard(path, record_path, vectors)
        parts.append(vectors)
    if not parts:
        raise InputError("nothing to embed: the catalog is empty")
    return np.concatenate(parts)


def _to_gpu(index, use_gpu: bool):
    """The index on every GPU when asked and present; unchanged otherwise (and for HNSW,
    which faiss-gpu does not support)."""
    import faiss

    if not use_gpu or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except RuntimeError as err:  # e.g. HNSW has no GPU implementation
        log.warning("faiss index stays on the CPU: %s", err)
        return index, False


def build_faiss_index(
    vectors: np.ndarray, factory: str, metric: str, train_size: int, seed: int = 0, use_gpu: bool = True
):
    """A FAISS index of ``vectors`` from a factory string (trained on a seeded sample
    when the index needs training): (index in CPU form, whether it was built on a GPU)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index, on_gpu = _to_gpu(_empty_index(vectors.shape[1], factory, metric), use_gpu)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = (
            vectors
            if len(vectors) <= train_size
            else vectors[np.sort(rng.choice(len(vectors), train_size, replace=False))]
        )
        index.train(sample)
    index.add(vectors)
    return (faiss.index_gpu_to_cpu(index) if on_gpu else index), on_gpu


def apply_search_params(index, search_params: str) -> None:
    """Set search-time parameters (``"nprobe=16"``, ``"efSearch=128"``) on the index."""
    import faiss

    if not search_params:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
    except RuntimeError as err:
        raise ConfigError(
            f"index.search_params {search_params!r} do not fit this index: {_faiss_reason(err)}"
        ) from None


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Row ids of the exact top ``k`` of each query (brute force)."""
    import faiss

    flat = faiss.IndexFlat(vectors.shape[1], _faiss_metric(metric))
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(vectors)))[1]


def recall_against_exact(index, exact_ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top k ∩ exact top k| / k."""
    k = min(k, exact_ids.shape[1])
    found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
    hits = [len(set(a[a >= 0]) & set(e[:k])) for a, e in zip(found, exact_ids, strict=True)]
    return float(np.mean(hits) / k)


@dataclass
class IndexBuild:
    """What :func:`build_index` wrote: the folder and its metadata."""

    path: str
    metadata: dict


def _recall_queries(
    query_texts: Sequence[str] | None, encode_queries, vectors: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    if query_texts:
        texts = list(dict.fromkeys(query_texts))
        if len(texts) > n:
            texts = [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]
        return encode_queries(texts), f"{len(texts)} queries encoded by the query tower"
    take = np.sort(rng.choice(len(vectors), min(n, len(vectors)), replace=False))
    return vectors[take], f"{len(take)} catalog vectors used as queries"


def _catalog_vectors(
    model_dir: Path, item_tower, texts: list[str], fingerprint: str, cfg: IndexConfig, cache_dir, progress: bool
) -> tuple[np.ndarray, str]:
    """The item tower's catalog vectors and where they came from: a frozen start-encoder tower's
    through the embedding cache (and its adapter), any other tower's embedded in resumable shards."""
    from unisup.biencoder.tower import frozen_item_encoder
    from unisup.encoders import embedding_cache_path

    frozen = frozen_item_encoder(model_dir, item_tower)
    if frozen is not None:
        cached = bool(cache_dir) and embedding_cache_path(frozen.fingerprint, texts, cache_dir).exists()
        source = f"frozen start encoder: {'from the embedding cache' if cached else 'embedded'}"
        return frozen.catalog_vectors(texts, cache_dir, progress), source
    shard_dir = Path(cfg.work_dir) / f"{fingerprint[:16]}-{_texts_digest(texts)}-{cfg.shard_size}"
    vectors = embed_in_shards(
        lambda chunk: item_tower.encode(chunk, batch_size=cfg.batch_size, progress=progress, desc="item tower batches"),
        texts,
        shard_dir,
        cfg.shard_size,
        progress,
    )
    return vectors, "embedded by the item tower"


def build_index(
    model_path: str,
    catalog: pa.Table,
    out_uri: str,
    cfg: IndexConfig,
    query_texts: Sequence[str] | None = None,
    progress: bool = True,
    extra_metadata: dict | None = None,
    embedding_cache_dir: str | Path | None = None,
) -> IndexBuild:
    """Embed the catalog with the item tower of the bi-encoder at ``model_path`` (a frozen
    start-encoder item tower through the cache in ``embedding_cache_dir``), build the
    configured FAISS index, measure its recall@10/@100 against exact search (on
    ``query_texts`` encoded by the query tower, or else on a sample of catalog vectors),
    and write the index folder to ``out_uri`` (local or gs://). The index settings are
    checked before anything is embedded."""
    from unisup.biencoder.tower import item_fields, load_biencoder
    from unisup.data.catalog import item_texts

    fingerprint = storage.content_digest(model_path)
    with storage.local_copy(model_path) as local_model:
        query_tower, item_tower = load_biencoder(local_model)
        check_index_settings(cfg, item_tower.dim)
        item_ids = catalog["product_id"].to_pylist()
        texts = item_texts(catalog, item_fields(local_model))  # the text the item tower was trained on
        start = time.perf_counter()
        vectors, item_embeddings = _catalog_vectors(
            local_model, item_tower, texts, fingerprint, cfg, embedding_cache_dir, progress
        )
        embed_seconds = time.perf_counter() - start
        log.info("catalog vectors: %s (%.1f s)", item_embeddings, embed_seconds)
        queries, query_source = _recall_queries(
            query_texts,
            lambda t: query_tower.encode(t, batch_size=cfg.batch_size),
            vectors,
            cfg.recall_queries,
            cfg.seed,
        )
    start = time.perf_counter()
    index, on_gpu = build_faiss_index(vectors, cfg.factory, cfg.metric, cfg.train_size, cfg.seed, cfg.use_gpu)
    build_seconds = time.perf_counter() - start
    apply_search_params(index, cfg.search_params)
    exact = exact_search(vectors, queries, max(RECALL_CUTOFFS), cfg.metric)
    recall = {f"recall@{k}": recall_against_exact(index, exact, queries, k) for k in RECALL_CUTOFFS}
    import faiss

    metadata = {
        "factory": cfg.factory,
        "dimension": int(vectors.shape[1]),
        "metric": cfg.metric,
        "search_params": cfg.search_params,
        "num_items": int(index.ntotal),
        "build_seconds": round(build_seconds, 4),
        "embed_seconds": round(embed_seconds, 4),
        "item_embeddings": item_embeddings,
        **recall,
        "recall_queries": query_source,
        "model_fingerprint": fingerprint,
        "model_uri": str(model_path),
        "faiss_version": faiss.__version__,
        "built_on_gpu": on_gpu,
        "config": to_dict(cfg),
        **(extra_metadata or {}),
    }
    write_index(index, item_ids, metadata, out_uri)
    return IndexBuild(str(out_uri), metadata)


def catalog_record(catalog_uri: str, items: int | None = None) -> dict:
    """What an index records of its catalog: the URI, the content digest and the number of items."""
    return {"uri": catalog_uri, "digest": storage.content_digest(catalog_uri), "items": items}


def build_catalog_index(model_path: str, out_uri: str, cfg: Config, progress: bool = True) -> IndexBuild:
    """:func:`build_index` over the configured catalog (``data.catalog_uri``, recorded in the
    metadata), recall measured on the configured judgments' queries (``data.judgments_uri``),
    a frozen item tower's embeddings from ``channels.cache_dir``."""
    from unisup.data.dataset import load_catalog, load_judgments

    catalog = load_catalog(cfg.data.catalog_uri).accepted
    queries = sorted(
        set(load_judgments(cfg.data.judgments_uri, catalog, cfg.data.num_grades).accepted["query"].to_pylist())
    )
    return build_index(
        model_path,
        catalog,
        out_uri,
        cfg.index,
        queries,
        progress,
        {"catalog": catalog_record(cfg.data.catalog_uri, catalog.num_rows)},
        cfg.channels.cache_dir or None,
    )


def read_metadata(uri: str) -> dict:
    """The ``index.json`` of the index folder at ``uri``."""
    metadata_uri = storage.join(uri, METADATA_FILE)
    if not storage.exists(metadata_uri):
        raise InputError(f"{uri}: not an index folder ({METADATA_FILE} missing)")
    try:
        return json.loads(storage.read_text(metadata_uri))
    except json.JSONDecodeError as err:
        raise InputError(f"{metadata_uri}: not valid JSON: {err}") from None


def check_index_matches(index_uri: str, model_uri: str, model_digest: str, catalog: dict) -> dict:
    """The metadata of the index at ``index_uri`` once it is checked to be built by the model at
    ``model_uri`` (content digest ``model_digest``) on ``catalog`` (a :func:`catalog_record`, its
    items not compared when None); raises :class:`ArtifactMismatch` with both values otherwise."""
    metadata = read_metadata(index_uri)
    built_by = metadata.get("model_fingerprint")
    if built_by != model_digest:
        raise ArtifactMismatch(
            f"{index_uri}: the index was built by the model with digest {built_by or '(none recorded)'} "
            f"({metadata.get('model_uri', 'no URI recorded')}), not by {model_uri} (digest {model_digest})"
        )
    built_on = metadata.get("catalog") or {}
    if built_on.get("digest") != catalog["digest"] or catalog["items"] not in (None, built_on.get("items")):
        given = f"digest {catalog['digest']}" + (f", {catalog['items']} items" if catalog["items"] is not None else "")
        raise ArtifactMismatch(
            f"{index_uri}: the index was built on the catalog {built_on.get('uri', '(none recorded)')} "
            f"(digest {built_on.get('digest')}, {built_on.get('items')} items), not on {catalog['uri']} ({given})"
        )
    return metadata


def write_index(index, item_ids: Sequence[str], metadata: dict, out_uri: str) -> None:
    """Write the index folder (index, id map, metadata) to a local path or gs:// prefix."""
    import faiss

    from unisup.data.tables import write_table

    if index.ntotal != len(item_ids):
        raise ValueError(f"the index holds {index.ntotal} vectors but the id map {len(item_ids)} ids")
    with tempfile.TemporaryDirectory(prefix="unisup-index-") as tmp:
        faiss.write_index(index, str(Path(tmp) / INDEX_FILE))
        storage.upload_file(Path(tmp) / INDEX_FILE, storage.join(out_uri, INDEX_FILE))
    write_table(pa.table({"item_id": pa.array(list(item_ids), type=pa.string())}), storage.join(out_uri, IDS_FILE))
    storage.write_text(storage.join(out_uri, METADATA_FILE), json.dumps(metadata, indent=1))


class ItemIndex:
    """A loaded index folder: ``search(query_vectors, k)`` returns item ids and scores."""

    def __init__(self, index, item_ids: list[str], metadata: dict):
        self.index = index
        self.item_ids = item_ids
        self.metadata = metadata

    @classmethod
    def load(cls, uri: str, use_gpu: bool = False) -> ItemIndex:
        import faiss

        from unisup.data.tables import read_table

        metadata = read_metadata(uri)
        with storage.local_copy(storage.join(uri, INDEX_FILE)) as local:
            index = faiss.read_index(str(local))
        try:
            apply_search_params(index, metadata.get("search_params", ""))
        except ConfigError as err:
            raise InputError(f"{storage.join(uri, METADATA_FILE)}: {err}") from None
        index, _ = _to_gpu(index, use_gpu)
        item_ids = read_table(storage.join(uri, IDS_FILE))["item_id"].to_pylist()
        return cls(index, item_ids, metadata)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per query, the top ``k`` (item_id, score), best first."""
        k = min(k, len(self.item_ids))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [
            [(self.item_ids[r], float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
            for row_ids, row_scores in zip(rows, scores, strict=True)
        ]
