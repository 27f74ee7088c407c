"""A sponsored-search log simulator: queries, production retrieval, an ad auction, users.

This is a SIMULATOR. It writes request logs in the ``raw_logs`` schema with the biases
that unified supervision has to correct, over the catalog of a dataset:

* **Query stream.** The split's training queries (a configured share of traffic) and
  queries derived from the catalog (product type, brand + type, attribute + type),
  with Zipf head/tail frequencies, users, sessions and diurnal timestamps over N days.
  Validation and test queries are never issued.
* **Production retrieval.** BM25, dense (MiniLM) and attribute-match channels each
  retrieve their top ``channel_depth``; a request's candidates are the union, with
  each item's rank in each channel.
* **Ad marketplace.** Advertisers (brands) run campaigns over their items with bids
  and daily budgets; pacing throttles fast spenders; one generalized second-price
  auction per request ranks eligible candidates by bid x predicted CTR and fills
  ``num_slots`` slots; a campaign out of budget leaves the auction for the day.
* **Users.** A click needs the slot examined ((1/p) ** eta) and the ad attractive;
  attractiveness mixes true relevance with popularity, discount, a promotion badge and
  title appeal. Conversions follow clicks. Bots and malformed rows occur at set rates.
* **True relevance.** The human grade where the pair is judged, elsewhere
  :func:`oracle_grade` (a rule on product type, brand and attribute words; no model).

Days are independent shards (budgets reset daily, one random stream per day): a day
whose partition and stats exist is skipped on a rerun with the same parameters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from unisup import storage
from unisup.channels import (
    AttributeChannel,
    BM25Channel,
    DenseChannel,
    Ranking,
    catalog_facets,
    facet_tokens,
    mine_product_types,
)
from unisup.config import ChannelsConfig, Config, ConfigError, SimulatorConfig, to_dict
from unisup.data.catalog import item_texts
from unisup.data.dataset import Dataset, load_dataset
from unisup.data.tables import write_table
from unisup.encoders import DenseEncoder
from unisup.errors import ArtifactMismatch
from unisup.metrics import mean_metrics, per_query_metrics
from unisup.schemas import RAW_LOGS

log = logging.getLogger(__name__)

CHANNELS = ("bm25", "dense", "attribute")
PARAMETERS_FILE = "_simulation.json"
DAY_STATS_DIR = "_days"
SECONDS_PER_DAY = 86400
PACING_STEPS = 48
HUMAN_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/122.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/605.1.15 Version/17.3 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/122.0 Mobile Safari/537.36",
)
BOT_AGENTS = ("Mozilla/5.0 (compatible; AdsBot-Crawler/2.1)", HUMAN_AGENTS[0])
# Diurnal traffic: relative request rate per hour of day (UTC).
HOURLY_TRAFFIC = np.array([2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 9, 10, 9, 9, 9, 9, 10, 11, 12, 12, 10, 7, 4], dtype=float)
# Malformed-row kinds, named by the raw_logs rule reason each one breaks.
MALFORMED = (
    "missing event_id",
    "missing item_id",
    "impossible position",
    "click without an impression",
    "conversion without a click",
    "item_id not in the catalog",
    "duplicate event_id",
    "timestamp outside the window",
)


# ---------------------------------------------------------------- settings


def _from(low: float, high: float = math.inf):
    expected = f"a number from {low} to {high}" if math.isfinite(high) else f"a number of at least {low}"
    return lambda v: math.isfinite(v) and low <= v <= high, expected


def _above(low: float):
    return lambda v: math.isfinite(v) and v > low, f"a number above {low}"


_SETTINGS = {
    "seed": _from(0),
    "num_days": _from(1),
    "num_requests": _from(0),
    "num_derived_queries": _from(0),
    "judged_query_share": _from(0, 1),
    "zipf_exponent": _from(0),
    "num_users": _from(1),
    "requests_per_session": _from(1),
    "channel_depth": _from(1),
    "product_types": _from(1),
    "num_slots": _from(1, 32767),
    "items_per_campaign": _from(1),
    "bid_mean": _above(0),
    "bid_sigma": _from(0),
    "daily_budget_mean": _above(0),
    "daily_budget_sigma": _from(0),
    "reserve_price": _from(0),
    "pctr_noise": _from(0),
    "auction_jitter": _from(0),
    "position_bias": _from(0),
    "discount_share": _from(0, 1),
    "badge_share": _from(0, 1),
    "bot_share": _from(0, 1),
    "num_bot_users": _from(0),
    "bot_click_rate": _from(0, 1),
    "malformed_rate": _from(0, 1),
}


def check_settings(cfg: SimulatorConfig) -> None:
    """Every simulator setting usable, or a ConfigError naming the first bad key."""
    for key, (valid, expected) in _SETTINGS.items():
        value = getattr(cfg, key)
        if not valid(value):
            raise ConfigError(f"simulator.{key}={value!r}: expected {expected}")
    for key in ("attribute_weights", "click_weights", "conversion_weights"):
        for name, weight in getattr(cfg, key).items():
            if not math.isfinite(weight):
                raise ConfigError(f"simulator.{key}.{name}={weight!r}: expected a finite number")
    try:
        dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=cfg.num_days - 1)
    except (ValueError, OverflowError):
        raise ConfigError(
            f"simulator.start_date={cfg.start_date!r}: expected a date YYYY-MM-DD with "
            f"simulator.num_days={cfg.num_days} days from it before the year 10000"
        ) from None


# ---------------------------------------------------------------- true relevance


def oracle_grade(query: str, facets: dict[str, list[str]], title: str, num_grades: int = 4) -> int:
    """Rule-based true relevance of an unjudged (query, item) pair, on a 0-3 scale
    mapped to ``num_grades`` levels.

    Query words are matched against the item's words (title, brand, product type,
    attribute values). ``type_match``: the item's product type is in the query, or the
    query's last word is a word of the item's type. 3: every query word matches and
    the type matches; 2: the type matches and at least half the words; 1: the type
    matches or at least half the words; 0: otherwise.
    """
    words = [w for w in facet_tokens(query) if w not in ("for", "with", "and", "the", "a")]
    if not words:
        return 0
    item_words = set(facet_tokens(title))
    for phrases in facets.values():
        for phrase in phrases:
            item_words.update(phrase.split())
    coverage = sum(w in item_words for w in words) / len(words)
    type_words = facets.get("type", [""])[0].split() if facets.get("type") else []
    type_match = bool(type_words) and (set(type_words) <= set(words) or words[-1] in type_words)
    if coverage == 1.0 and type_match:
        grade = 3
    elif type_match and coverage >= 0.5:
        grade = 2
    elif type_match or coverage >= 0.5:
        grade = 1
    else:
        grade = 0
    return int(round(grade * (num_grades - 1) / 3))


# ---------------------------------------------------------------- the static world


@dataclass
class QueryCandidates:
    """One query's candidates: catalog rows, per-channel ranks (0 = not retrieved),
    true grades and per-pair click/conversion probabilities and predicted CTR."""

    items: np.ndarray
    ranks: np.ndarray
    grades: np.ndarray
    attractiveness: np.ndarray
    conversion: np.ndarray
    pctr: np.ndarray


@dataclass
class World:
    """Everything that does not change from day to day."""

    item_ids: list[str]
    price: np.ndarray
    bid: np.ndarray
    campaign: np.ndarray
    daily_budget: np.ndarray
    queries: list[str]
    judged: np.ndarray
    query_weight: np.ndarray
    candidates: list[QueryCandidates]
    user_weight: np.ndarray
    setup_seconds: float


def derived_queries(
    facets: list[dict[str, list[str]]], count: int, exclude: set[str], rng: np.random.Generator
) -> list[str]:
    """``count`` distinct queries built from catalog facets: "type", "brand type",
    "attribute type"; drawn with probability growing with their catalog support."""
    support: dict[str, int] = {}
    for item in facets:
        if not item["type"]:
            continue
        kind = item["type"][0]
        for text in [kind] + [f"{b} {kind}" for b in item["brand"]] + [f"{a} {kind}" for a in item["attribute"]]:
            support[text] = support.get(text, 0) + 1
    names = sorted(q for q in support if " ".join(q.split()) not in exclude)
    if not names:
        return []
    weights = np.sqrt(np.array([support[q] for q in names], dtype=float))
    chosen = rng.choice(len(names), size=min(count, len(names)), replace=False, p=weights / weights.sum())
    return [names[i] for i in sorted(chosen)]


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = np.zeros(n)
    weights[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum() if n else weights


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class _ItemTraits:
    """Per catalog item: what users react to besides relevance, and the price."""

    popularity: np.ndarray
    discount: np.ndarray
    badge: np.ndarray
    title_appeal: np.ndarray
    price: np.ndarray


def _item_traits(catalog: pa.Table, cfg: SimulatorConfig, rng: np.random.Generator) -> _ItemTraits:
    """Random popularity, discounts, promotion badges and title appeal; the catalog price (20 where unknown)."""
    n_items = catalog.num_rows
    popularity = rng.normal(size=n_items)
    discount = np.where(rng.random(n_items) < cfg.discount_share, rng.uniform(0.05, 0.5, n_items), 0.0)
    badge = (rng.random(n_items) < cfg.badge_share).astype(float)
    title_appeal = rng.normal(size=n_items)
    price = (
        np.array([float(p) if p is not None else np.nan for p in catalog["price"].to_pylist()])
        if "price" in catalog.column_names
        else np.full(n_items, np.nan)
    )
    return _ItemTraits(popularity, discount, badge, title_appeal, np.where(np.isfinite(price), price, 20.0))


def _campaigns(
    brands: list[str | None], price: np.ndarray, cfg: SimulatorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Advertisers are brands; each splits its items into campaigns. Returns each item's campaign and
    bid, and each campaign's daily budget."""
    campaign = np.zeros(len(brands), dtype=np.int64)
    by_brand: dict[str, list[int]] = {}
    for i, brand in enumerate(brands):
        by_brand.setdefault(brand or "(no brand)", []).append(i)
    next_campaign = 0
    for brand in sorted(by_brand):
        rows = by_brand[brand]
        for chunk in range(0, len(rows), cfg.items_per_campaign):
            campaign[rows[chunk : chunk + cfg.items_per_campaign]] = next_campaign
            next_campaign += 1
    campaign_bid = cfg.bid_mean * np.exp(cfg.bid_sigma * rng.normal(size=next_campaign))
    bid = (
        campaign_bid[campaign]
        * np.exp(0.2 * rng.normal(size=len(brands)))
        * (1 + 0.1 * np.log1p(price) / np.log1p(price).max())
    )
    daily_budget = cfg.daily_budget_mean * np.exp(cfg.daily_budget_sigma * rng.normal(size=next_campaign))
    return campaign, bid, daily_budget


def _query_stream(
    dataset: Dataset, facets: list[dict[str, list[str]]], cfg: SimulatorConfig, rng: np.random.Generator
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The training queries of the split, then queries derived from the catalog: the queries, whether
    each is judged, and their Zipf traffic weights (``judged_query_share`` on the training ones)."""
    held_out = {" ".join(q.lower().split()) for s in ("validation", "test") for q in dataset.split[s]}
    train = sorted(q for q in dataset.split["train"] if " ".join(q.lower().split()) not in held_out)
    derived = derived_queries(facets, cfg.num_derived_queries, held_out | {q.lower() for q in train}, rng)
    judged = np.array([True] * len(train) + [False] * len(derived))
    share = cfg.judged_query_share if train and derived else (1.0 if train else 0.0)
    query_weight = np.concatenate(
        [share * _zipf(len(train), cfg.zipf_exponent, rng), (1 - share) * _zipf(len(derived), cfg.zipf_exponent, rng)]
    )
    return train + derived, judged, query_weight


def _production_rankings(
    catalog: pa.Table,
    facets: list[dict[str, list[str]]],
    popularity: np.ndarray,
    queries: list[str],
    cfg: SimulatorConfig,
    channels: ChannelsConfig,
    progress: bool,
) -> list[list[Ranking]]:
    """Per production channel (BM25, dense, attribute), each query's top ``channel_depth`` items."""
    ids, texts = catalog["product_id"].to_pylist(), item_texts(catalog)
    encoder = DenseEncoder(
        channels.dense_model or None, max_length=channels.dense_max_length, batch_size=channels.dense_batch_size
    )
    production = [
        BM25Channel(ids, texts, k1=channels.bm25_k1, b=channels.bm25_b),
        DenseChannel(ids, texts, encoder, cache_dir=channels.cache_dir, progress=progress),
        AttributeChannel(ids, facets, cfg.attribute_weights, popularity=popularity),
    ]
    return [channel.search(queries, cfg.channel_depth) for channel in production]


def _candidates(
    dataset: Dataset,
    queries: list[str],
    per_channel: list[list[Ranking]],
    facets: list[dict[str, list[str]]],
    traits: _ItemTraits,
    cfg: SimulatorConfig,
    num_grades: int,
    rng: np.random.Generator,
) -> list[QueryCandidates]:
    """Each query's candidates (the union of the channels' rankings) with their true grades, click and
    conversion probabilities and noisy predicted CTR."""
    ids, titles = dataset.catalog["product_id"].to_pylist(), dataset.catalog["title"].to_pylist()
    row_of = {item: i for i, item in enumerate(ids)}
    qrels = dataset.qrels("train")
    w = cfg.click_weights
    c = cfg.conversion_weights
    item_base = (
        w.get("popularity", 0) * traits.popularity
        + w.get("discount", 0) * traits.discount
        + w.get("badge", 0) * traits.badge
        + w.get("title", 0) * traits.title_appeal
    )
    candidates = []
    for qi, query in enumerate(queries):
        ranks: dict[int, np.ndarray] = {}
        for ci, rankings in enumerate(per_channel):
            for rank, (item, _) in enumerate(rankings[qi], start=1):
                ranks.setdefault(row_of[item], np.zeros(len(CHANNELS), dtype=np.int32))[ci] = rank
        items = np.array(sorted(ranks), dtype=np.int64)
        rank_matrix = np.stack([ranks[i] for i in items]) if len(items) else np.zeros((0, len(CHANNELS)), np.int32)
        human = qrels.get(query, {})
        grades = np.array(
            [
                human[ids[i]] if ids[i] in human else oracle_grade(query, facets[i], titles[i], num_grades)
                for i in items
            ],
            dtype=np.int8,
        )
        relevance = grades / max(num_grades - 1, 1)
        attract = _sigmoid(w.get("intercept", 0) + w.get("relevance", 0) * relevance + item_base[items])
        convert = _sigmoid(
            c.get("intercept", 0) + c.get("relevance", 0) * relevance + c.get("discount", 0) * traits.discount[items]
        )
        pctr = attract * np.exp(cfg.pctr_noise * rng.normal(size=len(items)))
        candidates.append(QueryCandidates(items, rank_matrix, grades, attract, convert, pctr))
    return candidates


def build_world(
    dataset: Dataset, cfg: SimulatorConfig, channels: ChannelsConfig, num_grades: int, progress: bool = False
) -> World:
    """Items, campaigns, the query stream's queries and every query's candidates."""
    start = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 0])
    catalog = dataset.catalog
    ids = catalog["product_id"].to_pylist()
    titles = catalog["title"].to_pylist()
    brands = catalog["brand"].to_pylist() if "brand" in catalog.column_names else [None] * len(ids)
    types = mine_product_types(titles, brands, cfg.product_types)
    facets = catalog_facets(catalog, types, cfg.attribute_keys)
    traits = _item_traits(catalog, cfg, rng)
    campaign, bid, daily_budget = _campaigns(brands, traits.price, cfg, rng)
    queries, judged, query_weight = _query_stream(dataset, facets, cfg, rng)
    per_channel = _production_rankings(catalog, facets, traits.popularity, queries, cfg, channels, progress)
    candidates = _candidates(dataset, queries, per_channel, facets, traits, cfg, num_grades, rng)
    user_weight = np.exp(rng.normal(size=max(cfg.num_users, 1)))
    return World(
        ids,
        traits.price,
        bid,
        campaign,
        daily_budget,
        queries,
        judged,
        query_weight,
        candidates,
        user_weight / user_weight.sum(),
        time.perf_counter() - start,
    )


# ---------------------------------------------------------------- one day


@dataclass
class _Requests:
    timestamp_us: np.ndarray
    query: np.ndarray
    user: np.ndarray
    session: np.ndarray
    bot: np.ndarray


def _sessions(n: int, mean_size: float, gap_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Session index and offset (seconds from the session start) of ``n`` requests."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(1 + rng.poisson(max(mean_size - 1, 0)))
    if sizes:
        sizes[-1] -= sum(sizes) - n
    session = np.repeat(np.arange(len(sizes)), sizes)
    offsets = np.concatenate([np.cumsum(rng.exponential(gap_s, s)) - gap_s for s in sizes]) if n else np.zeros(0)
    return session, offsets, len(sizes)


def _day_requests(world: World, cfg: SimulatorConfig, n: int, day_start_us: int, rng: np.random.Generator) -> _Requests:
    n_bot = int(round(cfg.bot_share * n)) if cfg.num_bot_users > 0 else 0
    n_human = n - n_bot
    h_session, h_offset, h_count = _sessions(n_human, cfg.requests_per_session, 60.0, rng)
    b_session, b_offset, b_count = _sessions(n_bot, 40.0, 3.0, rng)
    hours = rng.choice(24, size=h_count + b_count, p=HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum())
    starts = (hours + rng.random(h_count + b_count)) * 3600.0
    seconds = np.concatenate([starts[h_session] + h_offset, starts[h_count + b_session] + b_offset])
    seconds = np.minimum(seconds, SECONDS_PER_DAY - 1e-3)
    session_user = np.concatenate(
        [
            rng.choice(len(world.user_weight), size=h_count, p=world.user_weight),
            rng.integers(0, max(cfg.num_bot_users, 1), size=b_count),
        ]
    )
    session = np.concatenate([h_session, h_count + b_session])
    bot = np.concatenate([np.zeros(n_human, bool), np.ones(n_bot, bool)])
    query = np.concatenate(
        [
            rng.choice(len(world.queries), size=n_human, p=world.query_weight),
            rng.integers(0, len(world.queries), size=n_bot),
        ]
    )
    order = np.argsort(seconds, kind="stable")
    return _Requests(
        (day_start_us + (seconds * 1e6).astype(np.int64))[order],
        query[order],
        session_user[session][order],
        session[order],
        bot[order],
    )


class _Marketplace:
    """One day of the ad marketplace: campaign spend against the daily budgets, pacing, and one
    generalized second-price auction per request."""

    def __init__(self, world: World, cfg: SimulatorConfig):
        n_campaigns = len(world.daily_budget)
        self.world, self.cfg = world, cfg
        self.spend = np.zeros(n_campaigns)
        self.pace = np.ones(n_campaigns)
        self.exhausted = np.zeros(n_campaigns, dtype=bool)
        self.examination = (1.0 / np.arange(1, cfg.num_slots + 1)) ** cfg.position_bias
        self.next_check = 1

    def update_pacing(self, elapsed: float) -> None:
        """At each of the day's PACING_STEPS, throttle the campaigns spending ahead of the clock
        (``elapsed``: the share of the day gone) and relax the others."""
        if self.cfg.pacing and elapsed * PACING_STEPS >= self.next_check:
            ahead = self.spend / self.world.daily_budget > elapsed
            self.pace = np.clip(np.where(ahead, self.pace * 0.7, self.pace * 1.3), 0.05, 1.0)
            self.next_check = int(elapsed * PACING_STEPS) + 1

    def serve(
        self, cand: QueryCandidates, bot: bool, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Auction one request's candidates into the slots, draw clicks and conversions, charge the
        clicks. Returns the shown candidates in slot order, and per candidate its position (0: not
        shown), click and conversion."""
        cfg, world = self.cfg, self.world
        n = len(cand.items)
        camp = world.campaign[cand.items]
        active = ~self.exhausted[camp]
        if cfg.pacing:
            active &= rng.random(n) < self.pace[camp]
        pctr = cand.pctr * np.exp(cfg.auction_jitter * rng.normal(size=n))
        score = world.bid[cand.items] * pctr
        eligible = np.flatnonzero(active & (score >= cfg.reserve_price))
        ranked = eligible[np.argsort(-score[eligible], kind="stable")]
        shown = ranked[: cfg.num_slots]
        position = np.zeros(n, dtype=np.int16)
        position[shown] = np.arange(1, len(shown) + 1)
        click = np.zeros(n, dtype=bool)
        if bot:
            click[shown] = rng.random(len(shown)) < cfg.bot_click_rate
        else:
            click[shown] = rng.random(len(shown)) < self.examination[: len(shown)] * cand.attractiveness[shown]
        conversion = click & (rng.random(n) < cand.conversion)
        if click.any():
            # Generalized second price: pay what keeps the slot, never more than the bid.
            next_score = np.append(score[ranked[1 : cfg.num_slots + 1]], cfg.reserve_price)[: len(shown)]
            cost = np.minimum(next_score / pctr[shown], world.bid[cand.items[shown]])
            clicked = click[shown]
            np.add.at(self.spend, camp[shown][clicked], cost[clicked])
            self.exhausted |= self.spend >= world.daily_budget
        return shown, position, click, conversion


def simulate_day(
    world: World, cfg: SimulatorConfig, day: int, n_requests: int, max_position: int = 10
) -> tuple[pa.Table, dict]:
    """Simulate one day's requests: auction, impressions, clicks, conversions; returns
    the day's raw-log table and its statistics."""
    rng = np.random.default_rng([cfg.seed, 1, day])
    date = dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=day)
    day_start_us = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp() * 1_000_000)
    requests = _day_requests(world, cfg, n_requests, day_start_us, rng)
    market = _Marketplace(world, cfg)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("request", "item", "position", "click", "conversion", "ranks")
    }
    judged_pairs: dict[str, dict[str, list[int]]] = {}  # judged query -> item -> [impressions, clicks]
    for r in range(n_requests):
        market.update_pacing((requests.timestamp_us[r] - day_start_us) / 1e6 / SECONDS_PER_DAY)
        cand = world.candidates[requests.query[r]]
        shown, position, click, conversion = market.serve(cand, requests.bot[r], rng)
        served = {
            "request": np.full(len(cand.items), r, dtype=np.int64),
            "item": cand.items,
            "position": position,
            "click": click,
            "conversion": conversion,
            "ranks": cand.ranks,
        }
        for key, values in served.items():
            parts[key].append(values)
        if world.judged[requests.query[r]]:
            pairs = judged_pairs.setdefault(world.queries[requests.query[r]], {})
            for i in shown:
                counts = pairs.setdefault(world.item_ids[cand.items[i]], [0, 0])
                counts[0] += 1
                counts[1] += int(click[i])
    rows = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    table, malformed = _day_table(world, cfg, date, requests, rows, rng, max_position)
    stats = {
        "date": date.isoformat(),
        "requests": n_requests,
        "bot_requests": int(requests.bot.sum()),
        "rows": table.num_rows,
        "impressions": int(sum(int((p > 0).sum()) for p in parts["position"])),
        "clicks": int(sum(int(c.sum()) for c in parts["click"])),
        "conversions": int(sum(int(c.sum()) for c in parts["conversion"])),
        "campaigns_exhausted": int(market.exhausted.sum()),
        "malformed": malformed,
        "judged_pairs": judged_pairs,
    }
    return table, stats


def _malform(columns: dict, max_position: int, cfg: SimulatorConfig, rng: np.random.Generator) -> dict[str, int]:
    """Break a ``malformed_rate`` share of the rows of ``columns`` in place, each in one of the
    MALFORMED ways; returns how many rows each way broke."""
    event_id, item_id = columns["event_id"], columns["item_id"]
    position, impression, timestamp = columns["position"], columns["impression"], columns["timestamp"]
    click, conversion = columns["click"], columns["conversion"]
    n = len(event_id)
    malformed = {reason: 0 for reason in MALFORMED}
    if cfg.malformed_rate <= 0 or n <= 1:
        return malformed
    hit = np.flatnonzero(rng.random(n) < cfg.malformed_rate)
    hit = hit[(hit > 0) & ~np.isin(hit - 1, hit)]  # a duplicate copies a clean previous row
    for row, kind in zip(hit.tolist(), rng.integers(0, len(MALFORMED), size=len(hit)).tolist(), strict=False):
        reason = MALFORMED[kind]
        malformed[reason] += 1
        if reason == "missing event_id":
            event_id[row] = None
        elif reason == "missing item_id":
            item_id[row] = None
        elif reason == "impossible position":
            impression[row], position[row] = True, max_position + 5
        elif reason == "click without an impression":
            impression[row], position[row], click[row], conversion[row] = False, 0, True, False
        elif reason == "conversion without a click":
            click[row], conversion[row] = False, True
        elif reason == "item_id not in the catalog":
            item_id[row] = f"unknown-{item_id[row]}"
        elif reason == "duplicate event_id":
            event_id[row] = event_id[row - 1]
        else:
            timestamp[row] -= 400 * SECONDS_PER_DAY * 1_000_000
    return malformed


def _request_columns(world: World, date: dt.date, requests: _Requests) -> dict[str, np.ndarray]:
    """Per request: its id, user id, session id, user agent and query."""
    users, bots = requests.user.tolist(), requests.bot.tolist()
    return {
        "request_id": np.array([f"{date.isoformat()}-{i:07d}" for i in range(len(requests.query))], dtype=object),
        "user_id": np.array(
            [f"b{u:03d}" if b else f"u{u:05d}" for u, b in zip(users, bots, strict=False)], dtype=object
        ),
        "session_id": np.array([f"{date.isoformat()}-s{s:06d}" for s in requests.session.tolist()], dtype=object),
        "user_agent": np.array(
            [
                BOT_AGENTS[u % 2] if b else HUMAN_AGENTS[u % len(HUMAN_AGENTS)]
                for u, b in zip(users, bots, strict=False)
            ],
            dtype=object,
        ),
        "query": np.array(world.queries, dtype=object)[requests.query],
    }


def _day_table(
    world: World,
    cfg: SimulatorConfig,
    date: dt.date,
    requests: _Requests,
    rows: dict[str, np.ndarray],
    rng: np.random.Generator,
    max_position: int,
) -> tuple[pa.Table, dict[str, int]]:
    """The day's raw-log table (one row per request and candidate), with malformed rows mixed in."""
    n = len(rows["request"])
    req = rows["request"].astype(np.int64)
    per_request = _request_columns(world, date, requests)
    within = np.arange(n) - np.searchsorted(req, req)  # index of the row within its request
    request_ids = per_request["request_id"].tolist()
    position = rows["position"].astype(np.int16)
    columns = {
        "event_id": [f"{request_ids[r]}-{j:03d}" for r, j in zip(req.tolist(), within.tolist(), strict=False)],
        "item_id": [world.item_ids[i] for i in rows["item"].tolist()],
        "position": position,
        "impression": position > 0,
        "click": rows["click"].astype(bool),
        "conversion": rows["conversion"].astype(bool),
        "timestamp": requests.timestamp_us[req].copy(),
    }
    malformed = _malform(columns, max_position, cfg, rng)
    arrays = {
        "event_id": pa.array(columns["event_id"], pa.string()),
        "timestamp": pa.array(columns["timestamp"], pa.timestamp("us", tz="UTC")),
        **{key: pa.array(per_request[key][req], pa.string()) for key in per_request},
        "item_id": pa.array(columns["item_id"], pa.string()),
        "position": pa.array(columns["position"], pa.int16(), mask=~columns["impression"]),
        "impression": pa.array(columns["impression"]),
        "click": pa.array(columns["click"]),
        "conversion": pa.array(columns["conversion"]),
        "price": pa.array(world.price[rows["item"]], pa.float64()),
        "bid": pa.array(np.round(world.bid[rows["item"]], 4), pa.float64()),
    }
    ranks = rows["ranks"].reshape(n, len(CHANNELS)) if n else np.zeros((0, len(CHANNELS)), np.int32)
    for c, name in enumerate(CHANNELS):
        arrays[f"rank_{name}"] = pa.array(ranks[:, c].astype(np.int32), pa.int32(), mask=ranks[:, c] == 0)
    schema = RAW_LOGS.arrow_schema([f"rank_{c}" for c in CHANNELS])
    return pa.Table.from_pydict(arrays, schema=schema), malformed


# ---------------------------------------------------------------- the whole run


def _fingerprint(parameters: dict) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]


def day_partition(out_uri: str, date: str) -> str:
    """The Parquet file of one simulated day."""
    return storage.join(out_uri, f"date={date}", "part-00000.parquet")


def simulate_logs(
    dataset: Dataset,
    cfg: SimulatorConfig,
    channels: ChannelsConfig,
    num_grades: int = 4,
    relevance_threshold: int = 2,
    out_uri: str | None = None,
    progress: bool = False,
) -> dict:
    """Simulate ``cfg.num_days`` days of sponsored-search logs into ``out_uri``
    (``<out>/date=YYYY-MM-DD/part-00000.parquet``), with the parameters in
    ``<out>/_simulation.json``. Resumes: days already written are not redone.

    Returns the summary (also saved in ``_simulation.json``): parameters, counts,
    malformed rows by reason, and the bias report (:func:`bias_report`).
    """
    from tqdm.auto import tqdm

    check_settings(cfg)
    out = out_uri or cfg.out_uri
    parameters = {
        "simulator": to_dict(cfg),
        "channels": to_dict(channels),
        "num_grades": num_grades,
        "catalog_rows": dataset.catalog.num_rows,
        "train_queries": sorted(dataset.split["train"]),
        "channel_names": list(CHANNELS),
    }
    fingerprint = _fingerprint(parameters)
    params_uri = storage.join(out, PARAMETERS_FILE)
    if storage.exists(params_uri):
        previous = json.loads(storage.read_text(params_uri))
        if previous.get("fingerprint") != fingerprint:
            raise ArtifactMismatch(
                f"{out}: holds logs simulated with other parameters ({params_uri}); choose another output"
            )
    else:
        storage.write_text(params_uri, json.dumps({"fingerprint": fingerprint, "parameters": parameters}, indent=1))

    world = build_world(dataset, cfg, channels, num_grades, progress=progress)
    per_day = np.full(cfg.num_days, cfg.num_requests // cfg.num_days)
    per_day[: cfg.num_requests % cfg.num_days] += 1
    days, simulated, loop_seconds = [], 0, 0.0
    for day in tqdm(range(cfg.num_days), desc="simulating days", disable=not progress, unit="day"):
        date = (dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=day)).isoformat()
        stats_uri = storage.join(out, DAY_STATS_DIR, f"date={date}.json")
        if storage.exists(day_partition(out, date)) and storage.exists(stats_uri):
            days.append(json.loads(storage.read_text(stats_uri)))
            continue
        start = time.perf_counter()
        table, stats = simulate_day(world, cfg, day, int(per_day[day]))
        loop_seconds += time.perf_counter() - start
        simulated += int(per_day[day])
        write_table(table, day_partition(out, date))
        storage.write_text(stats_uri, json.dumps(stats))
        days.append(stats)

    totals = {
        k: sum(d[k] for d in days)
        for k in ("requests", "bot_requests", "rows", "impressions", "clicks", "conversions", "campaigns_exhausted")
    }
    malformed = {reason: sum(d["malformed"].get(reason, 0) for d in days) for reason in MALFORMED}
    summary = {
        "logs_uri": out,
        "dates": [d["date"] for d in days],
        **totals,
        "distinct_queries": len(world.queries),
        "judged_queries": int(world.judged.sum()),
        "malformed": malformed,
        "setup_seconds": round(world.setup_seconds, 2),
        "requests_simulated_now": simulated,
        "requests_per_second": round(simulated / loop_seconds, 1) if loop_seconds else None,
        "bias": bias_report(days, dataset.qrels("train"), relevance_threshold, seed=cfg.seed),
    }
    storage.write_text(
        params_uri, json.dumps({"fingerprint": fingerprint, "parameters": parameters, "summary": summary}, indent=1)
    )
    return summary


def simulate_configured_logs(cfg: Config, out_uri: str | None = None, progress: bool = False) -> dict:
    """:func:`simulate_logs` over the dataset, channels and grades of ``cfg``, its simulator settings
    checked before the catalog is loaded and embedded."""
    check_settings(cfg.simulator)
    return simulate_logs(
        load_dataset(cfg.data),
        cfg.simulator,
        cfg.channels,
        cfg.data.num_grades,
        cfg.data.relevance_threshold,
        out_uri=out_uri,
        progress=progress,
    )


def bias_report(
    days: list[dict], qrels: dict[str, dict[str, int]], relevance_threshold: int = 2, k: int = 10, seed: int = 0
) -> dict:
    """How far engagement is from relevance, on the judged pairs of the logged queries
    whose judged items do not all have the same grade.

    Ranks each logged training query's judged items by simulated CTR (clicks /
    impressions; never-shown items last), by click count, and at random (ties broken
    at random), and scores each ranking by nDCG@k against the human grades; the gap is
    nDCG of the human-grade ranking (the ideal, 1) minus nDCG of the CTR ranking.
    """
    counts: dict[str, dict[str, list[int]]] = {}
    for day in days:
        for query, pairs in day["judged_pairs"].items():
            for item, (imp, clk) in pairs.items():
                total = counts.setdefault(query, {}).setdefault(item, [0, 0])
                total[0] += imp
                total[1] += clk
    logged = {q: qrels[q] for q in sorted(counts) if q in qrels and len(set(qrels[q].values())) > 1}
    if not logged:
        return {"queries": 0}
    rng = np.random.default_rng(seed)
    rankings: dict[str, dict[str, list[str]]] = {"human_grade": {}, "ctr": {}, "clicks": {}, "random": {}}
    relevant_imp, irrelevant_imp, relevant_unseen, relevant_total = [], [], 0, 0
    for query, grades in logged.items():
        items = sorted(grades)
        tie = rng.random(len(items))
        imp = np.array([counts[query].get(i, [0, 0])[0] for i in items], dtype=float)
        clk = np.array([counts[query].get(i, [0, 0])[1] for i in items], dtype=float)
        ctr = np.divide(clk, imp, out=np.zeros_like(clk), where=imp > 0)
        rankings["human_grade"][query] = [items[i] for i in np.lexsort((tie, -np.array([grades[i] for i in items])))]
        rankings["ctr"][query] = [items[i] for i in np.lexsort((tie, -ctr))]
        rankings["clicks"][query] = [items[i] for i in np.lexsort((tie, -clk))]
        rankings["random"][query] = [items[i] for i in np.argsort(tie)]
        relevant = np.array([grades[i] >= relevance_threshold for i in items])
        relevant_imp.extend(imp[relevant])
        irrelevant_imp.extend(imp[~relevant])
        relevant_total += int(relevant.sum())
        relevant_unseen += int((relevant & (imp == 0)).sum())
    ndcg = {
        name: mean_metrics(per_query_metrics(r, logged, k=k, relevance_threshold=relevance_threshold))[f"ndcg@{k}"]
        for name, r in rankings.items()
    }
    return {
        "queries": len(logged),
        "judged_pairs": sum(len(g) for g in logged.values()),
        f"ndcg@{k}_by_human_grade": round(ndcg["human_grade"], 4),
        f"ndcg@{k}_by_ctr": round(ndcg["ctr"], 4),
        f"ndcg@{k}_by_clicks": round(ndcg["clicks"], 4),
        f"ndcg@{k}_random": round(ndcg["random"], 4),
        f"ndcg@{k}_gap_ctr_vs_human": round(ndcg["human_grade"] - ndcg["ctr"], 4),
        "mean_impressions_relevant": round(float(np.mean(relevant_imp)), 2) if relevant_imp else 0.0,
        "mean_impressions_irrelevant": round(float(np.mean(irrelevant_imp)), 2) if irrelevant_imp else 0.0,
        "relevant_never_shown_share": round(relevant_unseen / relevant_total, 4) if relevant_total else 0.0,
    }
