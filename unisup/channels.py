"""Retrieval channels over the catalog: lexical BM25, dense MiniLM, and their fusion.

A channel is fitted on item ids and texts and answers ``search(queries, k)`` with,
per query, the ranked list of ``(item_id, score)``. The same channels stand for the
production channels in the log simulator, feed the multichannel prior and serve as
baselines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from unisup.encoders import DenseEncoder, cached_encode, top_k_inner_product

if TYPE_CHECKING:
    import pyarrow as pa

Ranking = list[tuple[str, float]]
log = logging.getLogger(__name__)


class Channel(Protocol):
    name: str

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]: ...


# ---------------------------------------------------------------- lexical


def bm25_tokenizer():
    """The lexical tokenizer of BM25 here: lower case, English stopwords, Snowball English stemming."""
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stopwords="en", lower=True, stemmer=Stemmer.Stemmer("english"))


class BM25Channel:
    """Lexical BM25 (bm25s, Lucene variant, English stopwords, Snowball English stemming)."""

    name = "bm25"

    def __init__(self, item_ids: Sequence[str], texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.item_ids = list(item_ids)
        self.tokenizer = bm25_tokenizer()
        corpus = self.tokenizer.tokenize(list(texts), return_as="ids", show_progress=False)
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(corpus, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        tokens = self.tokenizer.tokenize(list(queries), return_as="ids", update_vocab=False, show_progress=False)
        k = min(k, len(self.item_ids))
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_docs, row_scores in zip(docs, scores):
            out.append([(self.item_ids[d], float(s)) for d, s in zip(row_docs, row_scores) if s > 0])
        return out


# ---------------------------------------------------------------- dense


class DenseChannel:
    """Exact inner-product search over cached item embeddings."""

    name = "dense"

    def __init__(
        self,
        item_ids: Sequence[str],
        texts: Sequence[str],
        encoder: DenseEncoder,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ):
        self.item_ids = list(item_ids)
        self.encoder = encoder
        self.item_vectors = cached_encode(encoder, texts, cache_dir, progress=progress)

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        vectors = self.encoder.encode(queries)
        idx, scores = top_k_inner_product(vectors, self.item_vectors, k)
        return [[(self.item_ids[i], float(s)) for i, s in zip(row_i, row_s)] for row_i, row_s in zip(idx, scores)]


# ---------------------------------------------------------------- fusion


def reciprocal_rank_fusion(
    per_channel: Sequence[list[Ranking]], k: int = 60, depth: int | None = None
) -> list[Ranking]:
    """Fuse per-channel rankings of the same queries: score = sum over channels of 1 / (k + rank)."""
    fused = []
    for rankings in zip(*per_channel):
        scores: dict[str, float] = {}
        for ranking in rankings:
            for rank, (item, _) in enumerate(ranking, start=1):
                scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        fused.append(ranked[:depth] if depth else ranked)
    return fused


class FusedChannel:
    """Reciprocal-rank fusion of other channels."""

    def __init__(self, channels: Sequence[Channel], k: int = 60, name: str = "rrf"):
        self.channels = list(channels)
        self.k = k
        self.name = name

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        return reciprocal_rank_fusion([c.search(queries, k) for c in self.channels], self.k, depth=k)


# ---------------------------------------------------------------- attribute match

_WORD = re.compile(r"[a-z][a-z0-9+\-]*")
FACET_STOPWORDS = frozenset(
    "a an and the for with of to in on by from or pc pcs set kit pack original compatible new "
    "black white grey gray silver blue red green yellow cyan magenta brown pink purple orange gold "
    "mm cm m ft in inch gb mb tb kg g w v mah hz ghz mhz x "
    "high low premium standard pixel dpi ppm matt glossy core window serie flat large format".split()
)


def facet_tokens(text: str) -> list[str]:
    """Lower-case word tokens with a light plural folding (cables -> cable)."""
    out = []
    for token in _WORD.findall(str(text).lower()):
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        out.append(token)
    return out


def mine_product_types(
    titles: Sequence[str], brands: Sequence[str | None], size: int, min_brands: int = 3
) -> list[str]:
    """The ``size`` most frequent product-type phrases (one or two words) in catalog titles.

    Candidates are runs of alphabetic title words that are neither stopwords, colours,
    units nor brand names; a phrase must occur with at least ``min_brands`` brands (so
    product lines such as "laserjet" are not types). Two-word phrases come first.
    """
    brand_words = {t for b in brands if b for t in facet_tokens(b)}
    df: dict[str, int] = {}
    seen_brands: dict[str, set[str]] = {}
    for title, brand in zip(titles, brands):
        words = [
            t if t.isalpha() and t not in FACET_STOPWORDS and t not in brand_words and len(t) > 2 else ""
            for t in facet_tokens(title)
        ]
        phrases = {w for w in words if w}
        phrases |= {f"{a} {b}" for a, b in zip(words, words[1:]) if a and b}
        for phrase in phrases:
            df[phrase] = df.get(phrase, 0) + 1
            seen_brands.setdefault(phrase, set()).add(brand or "")
    eligible = [p for p in df if len(seen_brands[p]) >= min_brands]
    ranked = sorted(eligible, key=lambda p: (-(p.count(" ") + 1), -df[p], p))
    bigrams = [p for p in ranked if " " in p][: size // 2]
    unigrams = [p for p in ranked if " " not in p][: size - len(bigrams)]
    return sorted(bigrams + unigrams, key=lambda p: (-df[p], p))


def catalog_facets(
    catalog: pa.Table, product_types: Sequence[str], attribute_keys: Sequence[str]
) -> list[dict[str, list[str]]]:
    """Per item: its brand, its product type (the first mined type phrase of its title,
    two-word phrases first) and the text values of ``attribute_keys``, all lower case."""
    import json

    two_word = {p for p in product_types if " " in p}
    one_word = set(product_types) - two_word
    titles = catalog["title"].to_pylist()
    brands = catalog["brand"].to_pylist() if "brand" in catalog.column_names else [None] * catalog.num_rows
    attrs = catalog["attributes"].to_pylist() if "attributes" in catalog.column_names else [None] * catalog.num_rows
    facets = []
    for title, brand, raw in zip(titles, brands, attrs):
        words = facet_tokens(title)
        item_type = next((f"{a} {b}" for a, b in zip(words, words[1:]) if f"{a} {b}" in two_word), None)
        item_type = item_type or next((w for w in words if w in one_word), None)
        values: list[str] = []
        if raw:
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = {}
            for key in attribute_keys:
                value = parsed.get(key)
                if isinstance(value, str) and 0 < len(facet_tokens(value)) <= 3:
                    values.append(" ".join(facet_tokens(value)))
        facets.append(
            {
                "brand": [" ".join(facet_tokens(brand))] if brand else [],
                "type": [item_type] if item_type else [],
                "attribute": sorted(set(values)),
            }
        )
    return facets


class AttributeChannel:
    """Structured match: an item scores the weights of its facets (brand, product type,
    attribute values) whose every word occurs in the query; popularity breaks ties.

    ``facets`` holds one ``{kind: [phrase, ...]}`` per item (see :func:`catalog_facets`);
    ``weights`` maps a kind to the score of one matched phrase of that kind.
    """

    name = "attribute"

    def __init__(
        self,
        item_ids: Sequence[str],
        facets: Sequence[dict[str, list[str]]],
        weights: dict[str, float],
        popularity: Sequence[float] | None = None,
    ):
        from scipy import sparse

        if len(facets) != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but {len(facets)} facet entries")
        self.item_ids = list(item_ids)
        self.phrases: list[tuple[str, ...]] = []
        phrase_index: dict[tuple[str, str], int] = {}
        rows, cols, values = [], [], []
        for item, item_facets in enumerate(facets):
            for kind, phrases in item_facets.items():
                weight = float(weights.get(kind, 0.0))
                for phrase in phrases:
                    tokens = tuple(facet_tokens(phrase))
                    if not tokens or weight == 0.0:
                        continue
                    key = (kind, " ".join(tokens))
                    if key not in phrase_index:
                        phrase_index[key] = len(self.phrases)
                        self.phrases.append(tokens)
                    rows.append(phrase_index[key])
                    cols.append(item)
                    values.append(weight)
        self.matrix = sparse.csr_matrix((values, (rows, cols)), shape=(len(self.phrases), len(self.item_ids)))
        self.by_token: dict[str, list[int]] = {}
        for index, tokens in enumerate(self.phrases):
            self.by_token.setdefault(tokens[0], []).append(index)
        pop = np.zeros(len(self.item_ids)) if popularity is None else np.asarray(popularity, dtype=np.float64)
        span = float(pop.max() - pop.min()) if len(pop) else 0.0
        self.tie_break = 1e-3 * (pop - pop.min()) / span if span > 0 else np.zeros(len(self.item_ids))

    def matched_phrases(self, query: str) -> list[int]:
        """Indices of the phrases whose every word is in the query."""
        words = set(facet_tokens(query))
        return [i for w in words for i in self.by_token.get(w, ()) if set(self.phrases[i]) <= words]

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        out = []
        for query in queries:
            matched = self.matched_phrases(query)
            if not matched:
                out.append([])
                continue
            row = self.matrix[matched].sum(axis=0).A1
            hits = np.flatnonzero(row > 0)
            scores = row[hits] + self.tie_break[hits]
            top = hits[np.lexsort((hits, -scores))][:k]
            out.append([(self.item_ids[i], float(row[i] + self.tie_break[i])) for i in top])
        return out
