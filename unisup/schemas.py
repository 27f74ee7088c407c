"""Arrow schemas of every artifact the pipeline passes, and their validation.

Each artifact is an :class:`ArtifactSchema`: typed columns plus row rules (business
rules). :func:`validate` is the one entry point: it conforms a table to its schema
(table-level problems raise :class:`DataValidationError` naming the artifact, file,
column and rows) and splits rows into accepted and quarantined, each quarantined row
carrying a reason, so that rows in = rows accepted + rows quarantined.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unisup.errors import UnisupError

QUARANTINE_REASON = "quarantine_reason"
SOURCE_ROW = "source_row"
MAX_ROWS_IN_MESSAGE = 5


class DataValidationError(UnisupError, ValueError):
    """Bad input: names the artifact, the file, the column, the rows and the rule."""

    def __init__(
        self,
        artifact: str,
        source: str,
        message: str,
        column: str | None = None,
        rows: Iterable[int] = (),
        rule: str | None = None,
    ):
        self.artifact = artifact
        self.source = source
        self.column = column
        self.rows = list(rows)
        self.rule = rule
        where = f"{artifact} ({source})"
        if column:
            where += f": column '{column}'"
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:MAX_ROWS_IN_MESSAGE])
            more = len(self.rows) - MAX_ROWS_IN_MESSAGE
            where += f", row{'s' if len(self.rows) > 1 else ''} {shown}"
            if more > 0:
                where += f" (and {more} more)"
        if rule:
            where += f" [rule: {rule}]"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, whether it must be present and may hold nulls."""

    name: str
    type: pa.DataType
    required: bool = True
    nullable: bool = False
    help: str = ""


@dataclass(frozen=True)
class RuleContext:
    """What row rules may need beyond the table itself."""

    num_grades: int = 4
    known_items: frozenset[str] | None = None
    window_start: np.datetime64 | None = None
    window_end: np.datetime64 | None = None  # exclusive
    max_position: int = 10


@dataclass(frozen=True)
class RowRule:
    """A business rule: ``bad_rows`` returns a boolean mask of the rows that break it."""

    name: str
    column: str
    reason: str
    bad_rows: Callable[[pa.Table, RuleContext], np.ndarray]


@dataclass(frozen=True)
class ArtifactSchema:
    """Columns and row rules of one artifact.

    ``dynamic_columns`` maps a name prefix (e.g. ``rank_``) to the type of any number
    of columns with that prefix (one per retrieval channel).
    """

    name: str
    columns: tuple[Column, ...]
    rules: tuple[RowRule, ...] = ()
    dynamic_columns: dict[str, pa.DataType] = field(default_factory=dict)
    help: str = ""

    def arrow_schema(self, dynamic: Iterable[str] = ()) -> pa.Schema:
        """The Arrow schema, with the given dynamic columns (e.g. ``rank_bm25``) appended."""
        fields = [pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns]
        for name in dynamic:
            fields.append(pa.field(name, self._dynamic_type(name), nullable=True))
        return pa.schema(fields)

    def _dynamic_type(self, name: str) -> pa.DataType:
        for prefix, dtype in self.dynamic_columns.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                return dtype
        raise KeyError(name)

    def dynamic_names(self, names: Iterable[str]) -> list[str]:
        """The column names among ``names`` that match a dynamic prefix, in order."""
        out = []
        for name in names:
            try:
                self._dynamic_type(name)
            except KeyError:
                continue
            out.append(name)
        return out


@dataclass
class Validated:
    """Result of :func:`validate`: accepted rows and quarantined rows with a reason each."""

    artifact: str
    source: str
    accepted: pa.Table
    quarantined: pa.Table
    rows_in: int

    def __post_init__(self) -> None:
        if self.rows_in != self.accepted.num_rows + self.quarantined.num_rows:
            raise AssertionError(
                f"{self.artifact} ({self.source}): rows in {self.rows_in} != accepted "
                f"{self.accepted.num_rows} + quarantined {self.quarantined.num_rows}"
            )

    def reason_counts(self) -> dict[str, int]:
        """Number of quarantined rows per reason."""
        if self.quarantined.num_rows == 0:
            return {}
        counts = pc.value_counts(self.quarantined[QUARANTINE_REASON]).to_pylist()
        return {c["values"]: c["counts"] for c in counts}


# ---------------------------------------------------------------- row-rule helpers


def _mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _missing(column: str) -> Callable[[pa.Table, RuleContext], np.ndarray]:
    def bad(table: pa.Table, _: RuleContext) -> np.ndarray:
        col = table[column]
        missing = pc.is_null(col)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            missing = pc.or_(missing, pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), False))
        return _mask(missing)

    return bad


def _duplicated(*columns: str) -> Callable[[pa.Table, RuleContext], np.ndarray]:
    """Marks every occurrence after the first of a key (the first one is kept)."""

    def bad(table: pa.Table, _: RuleContext) -> np.ndarray:
        if table.num_rows == 0:
            return np.zeros(0, dtype=bool)
        keys = table.select(list(columns)).to_pandas()
        return keys.duplicated(keep="first").to_numpy()

    return bad


def _outside(column: str, low_of: Callable[[RuleContext], float], high_of: Callable[[RuleContext], float]):
    def bad(table: pa.Table, ctx: RuleContext) -> np.ndarray:
        col = table[column]
        out = pc.or_(pc.less(col, low_of(ctx)), pc.greater(col, high_of(ctx)))
        return _mask(out)

    return bad


def _unknown_item(column: str) -> Callable[[pa.Table, RuleContext], np.ndarray]:
    def bad(table: pa.Table, ctx: RuleContext) -> np.ndarray:
        if ctx.known_items is None:
            return np.zeros(table.num_rows, dtype=bool)
        known = pa.array(sorted(ctx.known_items), type=pa.string())
        present = pc.is_in(table[column].cast(pa.string()), value_set=known)
        return ~_mask(present) & ~_mask(pc.is_null(table[column]))

    return bad


def _negative(column: str) -> Callable[[pa.Table, RuleContext], np.ndarray]:
    return lambda table, _: _mask(pc.less(table[column], 0))


def _grade_rule(column: str) -> RowRule:
    return RowRule(
        f"{column}_in_scale",
        column,
        f"{column} outside the grade scale",
        _outside(column, lambda c: 0, lambda c: c.num_grades - 1),
    )


def _rule_missing(column: str) -> RowRule:
    return RowRule(f"{column}_present", column, f"missing {column}", _missing(column))


# ---------------------------------------------------------------- the artifacts

STR = pa.string()

CATALOG = ArtifactSchema(
    "catalog",
    (
        Column("product_id", STR, help="unique item id"),
        Column("title", STR, help="display title"),
        Column("name", STR, required=False, nullable=True),
        Column("brand", STR, required=False, nullable=True),
        Column("description", STR, required=False, nullable=True),
        Column("price", pa.float64(), required=False, nullable=True),
        Column("date_released", STR, required=False, nullable=True),
        Column("ean", STR, required=False, nullable=True),
        Column("image_url", STR, required=False, nullable=True),
        Column("attributes", STR, required=False, nullable=True, help="JSON object as text"),
        Column("category", STR, required=False, nullable=True),
    ),
    rules=(
        _rule_missing("product_id"),
        RowRule("product_id_unique", "product_id", "duplicate product_id", _duplicated("product_id")),
        _rule_missing("title"),
        RowRule("price_non_negative", "price", "negative price", _negative("price")),
    ),
    help="One row per item of the catalog.",
)

QUERIES = ArtifactSchema(
    "queries",
    (
        Column("query", STR),
        Column("split", STR, help="train | validation | test"),
    ),
    rules=(
        _rule_missing("query"),
        RowRule("query_unique", "query", "duplicate query", _duplicated("query")),
        RowRule(
            "split_known",
            "split",
            "split not one of train, validation, test",
            lambda t, _: ~_mask(pc.is_in(t["split"], value_set=pa.array(["train", "validation", "test"]))),
        ),
    ),
)

JUDGMENTS = ArtifactSchema(
    "judgments",
    (
        Column("query", STR),
        Column("product_id", STR),
        Column("rating", pa.int8(), help="graded relevance, 0 (irrelevant) .. K-1"),
        Column("rater_1", pa.int8(), required=False, nullable=True),
        Column("rater_2", pa.int8(), required=False, nullable=True),
        Column("rater_3", pa.int8(), required=False, nullable=True),
    ),
    rules=(
        _rule_missing("query"),
        _rule_missing("product_id"),
        RowRule("rating_present", "rating", "missing rating", _missing("rating")),
        _grade_rule("rating"),
        _grade_rule("rater_1"),
        _grade_rule("rater_2"),
        _grade_rule("rater_3"),
        RowRule("product_known", "product_id", "product_id not in the catalog", _unknown_item("product_id")),
        RowRule(
            "pair_unique",
            "product_id",
            "duplicate (query, product_id) judgment",
            _duplicated("query", "product_id"),
        ),
    ),
    help="Graded human relevance judgments.",
)

# a query holding one of these (control characters, line and paragraph separators) is quarantined
QUERY_UNPRINTABLE = r"[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]"

RAW_LOGS = ArtifactSchema(
    "raw_logs",
    (
        Column("event_id", STR, nullable=True, help="unique per logged (request, item)"),
        Column("request_id", STR, nullable=True),
        Column("timestamp", pa.timestamp("us", tz="UTC"), nullable=True),
        Column("user_id", STR, nullable=True),
        Column("session_id", STR, nullable=True),
        Column("user_agent", STR, required=False, nullable=True),
        Column("query", STR, nullable=True),
        Column("item_id", STR, nullable=True),
        Column("position", pa.int16(), nullable=True, help="ad slot, 1-based; null = under-impression"),
        Column("impression", pa.bool_(), nullable=True),
        Column("click", pa.bool_(), nullable=True),
        Column("conversion", pa.bool_(), nullable=True),
        Column("price", pa.float64(), nullable=True),
        Column("bid", pa.float64(), nullable=True),
    ),
    rules=(
        _rule_missing("event_id"),
        _rule_missing("request_id"),
        _rule_missing("query"),
        RowRule(
            "query_printable",
            "query",
            "query holds a control character or a line break",
            lambda t, _: _mask(pc.match_substring_regex(t["query"], QUERY_UNPRINTABLE)),
        ),
        _rule_missing("item_id"),
        RowRule("timestamp_present", "timestamp", "missing timestamp", _missing("timestamp")),
        RowRule(
            "position_possible",
            "position",
            "impossible position",
            lambda t, c: _mask(
                pc.or_(
                    pc.fill_null(pc.or_(pc.less(t["position"], 1), pc.greater(t["position"], c.max_position)), False),
                    pc.xor(pc.is_null(t["position"]), pc.invert(pc.fill_null(t["impression"], False))),
                )
            ),
        ),
        RowRule(
            "click_needs_impression",
            "click",
            "click without an impression",
            lambda t, _: _mask(pc.and_(t["click"], pc.invert(pc.fill_null(t["impression"], False)))),
        ),
        RowRule(
            "conversion_needs_click",
            "conversion",
            "conversion without a click",
            lambda t, _: _mask(pc.and_(t["conversion"], pc.invert(pc.fill_null(t["click"], False)))),
        ),
        RowRule(
            "price_valid",
            "price",
            "price is negative or not a finite number",
            lambda t, _: _mask(pc.or_(pc.less(t["price"], 0), pc.invert(pc.is_finite(t["price"])))),
        ),
        RowRule("item_known", "item_id", "item_id not in the catalog", _unknown_item("item_id")),
        RowRule("event_id_unique", "event_id", "duplicate event_id", _duplicated("event_id")),
        RowRule(
            "timestamp_in_window",
            "timestamp",
            "timestamp outside the window",
            lambda t, c: _outside_window(t["timestamp"], c),
        ),
    ),
    dynamic_columns={"rank_": pa.int32()},
    help="Request logs: one row per (request, retrieved item); rank_<channel> holds the "
    "item's 1-based rank in each retrieval channel (null = not retrieved by it).",
)


def _outside_window(ts: pa.ChunkedArray, ctx: RuleContext) -> np.ndarray:
    values = ts.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False).astype("datetime64[us]")
    bad = np.zeros(len(values), dtype=bool)
    valid = ~np.isnat(values)
    if ctx.window_start is not None:
        bad |= valid & (values < np.datetime64(ctx.window_start, "us"))
    if ctx.window_end is not None:
        bad |= valid & (values >= np.datetime64(ctx.window_end, "us"))
    return bad


def _amount_rule(column: str) -> RowRule:
    """Quarantine a missing, NaN, infinite or negative count or rate."""

    def bad(table: pa.Table, _: RuleContext) -> np.ndarray:
        col = table[column]
        return ~_mask(pc.and_(pc.is_finite(col), pc.greater_equal(col, 0)))

    return RowRule(f"{column}_valid", column, f"{column} is missing, NaN, infinite or negative", bad)


def _not_above(column: str, other: str) -> RowRule:
    return RowRule(
        f"{column}_le_{other}",
        column,
        f"more {column} than {other}",
        lambda t, _: _mask(pc.greater(t[column], t[other])),
    )


ENGAGEMENT_COUNTS = ("impressions", "clicks", "conversions", "under_impressions", "n_channels")
ENGAGEMENT_RATES = ("ctr_debiased", "ctr_smoothed", "cvr_smoothed")

ENGAGEMENT = ArtifactSchema(
    "engagement",
    (
        Column("query", STR),
        Column("item_id", STR),
        Column("impressions", pa.int64()),
        Column("clicks", pa.int64()),
        Column("conversions", pa.int64()),
        Column("revenue", pa.float64()),
        Column("under_impressions", pa.int64(), help="retrieved but not shown"),
        Column(
            "ctr_debiased",
            pa.float64(),
            help="clicks / sum of examination propensities (may exceed 1: clicks per expected examination)",
        ),
        Column("ctr_smoothed", pa.float64(), help="Beta-smoothed position-debiased CTR (may exceed 1, as above)"),
        Column("cvr_smoothed", pa.float64(), help="Beta-smoothed conversions per click, 0..1"),
        Column("n_channels", pa.int8(), help="number of channels that retrieved the item"),
    ),
    rules=(
        _rule_missing("query"),
        _rule_missing("item_id"),
        RowRule("item_known", "item_id", "item_id not in the catalog", _unknown_item("item_id")),
        RowRule("pair_unique", "item_id", "duplicate (query, item_id)", _duplicated("query", "item_id")),
        *(_amount_rule(c) for c in ENGAGEMENT_COUNTS + ENGAGEMENT_RATES),
        _not_above("clicks", "impressions"),
        _not_above("conversions", "clicks"),
        RowRule(
            "cvr_smoothed_le_1",
            "cvr_smoothed",
            "cvr_smoothed above 1",
            lambda t, _: _mask(pc.greater(t["cvr_smoothed"], 1)),
        ),
    ),
    dynamic_columns={"best_rank_": pa.int32()},
    help="Per (query, item) engagement statistics; best_rank_<channel> per channel.",
)


def engagement_schema(columns: Iterable[str]) -> ArtifactSchema:
    """ENGAGEMENT with a rule per ``best_rank_<channel>`` column among ``columns``: ranks start at 1."""
    ranks = ENGAGEMENT.dynamic_names(columns)
    rules = tuple(RowRule(f"{c}_from_1", c, f"{c} below 1", lambda t, _, c=c: _mask(pc.less(t[c], 1))) for c in ranks)
    return dataclasses.replace(ENGAGEMENT, rules=ENGAGEMENT.rules + rules)


PROBS_SUM_TOLERANCE = 1e-3


def _probs_outside_0_1(table: pa.Table, _: RuleContext) -> np.ndarray:
    """Rows whose probs hold a null, NaN, infinite, negative or above-1 entry."""
    probs = table["probs"].combine_chunks()
    values = pc.list_flatten(probs)
    good = pc.and_(pc.is_finite(values), pc.and_(pc.greater_equal(values, 0), pc.less_equal(values, 1)))
    bad = np.zeros(len(probs), dtype=bool)
    bad[np.asarray(pc.list_parent_indices(probs))[~_mask(good)]] = True
    return bad


def _probs_not_summing_to_1(table: pa.Table, _: RuleContext) -> np.ndarray:
    probs = table["probs"].combine_chunks()
    values = np.nan_to_num(pc.list_flatten(probs).to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
    sums = np.bincount(np.asarray(pc.list_parent_indices(probs)), weights=values, minlength=len(probs))
    return np.abs(sums - 1.0) > PROBS_SUM_TOLERANCE


LABELS = ArtifactSchema(
    "labels",
    (
        Column("query", STR),
        Column("item_id", STR),
        Column("grade", pa.int8(), help="argmax or expected grade of the deciding stage"),
        Column("probs", pa.list_(pa.float32()), help="per-grade probabilities, K entries in 0..1 summing to 1"),
        Column("stage", STR, help="name of the cascade stage that decided"),
        Column(
            "stage_scores",
            pa.list_(pa.list_(pa.float32())),
            help="per-grade probabilities of every stage in cascade order; null where a stage did not run",
        ),
    ),
    rules=(
        _rule_missing("query"),
        _rule_missing("item_id"),
        RowRule("item_known", "item_id", "item_id not in the catalog", _unknown_item("item_id")),
        RowRule("grade_present", "grade", "missing grade", _missing("grade")),
        _grade_rule("grade"),
        RowRule("probs_present", "probs", "missing probs", _missing("probs")),
        RowRule(
            "probs_length",
            "probs",
            "probs does not have one entry per grade",
            lambda t, c: _mask(pc.not_equal(pc.list_value_length(t["probs"]), c.num_grades)),
        ),
        RowRule("probs_in_0_1", "probs", "probs not all finite and in 0..1", _probs_outside_0_1),
        RowRule(
            "probs_sum_to_1",
            "probs",
            f"probs do not sum to 1 (within {PROBS_SUM_TOLERANCE})",
            _probs_not_summing_to_1,
        ),
        RowRule("pair_unique", "item_id", "duplicate (query, item_id)", _duplicated("query", "item_id")),
    ),
    help="Relevance labels from the teacher cascade.",
)

TRAINING_LISTS = ArtifactSchema(
    "training_lists",
    (
        Column("query", STR, help="the list key: one list per query"),
        Column("item_id", STR),
        Column("target", pa.float32(), help="fused target t"),
        Column("grade", pa.int8(), nullable=True, help="teacher grade, null if unlabeled"),
        Column("prior", pa.float32(), help="multichannel prior, normalized per query"),
        Column("engagement", pa.float32(), help="engagement e, normalized within the query"),
        Column("clicked", pa.bool_()),
        Column("converted", pa.bool_()),
        Column(
            "source",
            STR,
            help="impression | under_impression | teacher | hard_negative | random",
        ),
    ),
    rules=(
        _rule_missing("query"),
        _rule_missing("item_id"),
        RowRule("item_known", "item_id", "item_id not in the catalog", _unknown_item("item_id")),
        RowRule("pair_unique", "item_id", "item twice in one list", _duplicated("query", "item_id")),
        RowRule(
            "target_finite",
            "target",
            "target is NaN or infinite",
            lambda t, _: ~_mask(pc.is_finite(t["target"])),
        ),
    ),
    help="Per-query candidate lists with fused targets (long format: one row per item).",
)

EVAL_RESULTS = ArtifactSchema(
    "eval_results",
    (
        Column("system", STR, help="candidate or baseline name"),
        Column(
            "baseline",
            STR,
            required=False,
            nullable=True,
            help="the system compared against (delta, CI and p-value are of system minus baseline); "
            "null on a system's own row (value with the CI of its mean)",
        ),
        Column("metric", STR, help="e.g. ndcg@10"),
        Column("slice", STR, help="all | head | tail"),
        Column("judged_by", STR, help="human | teacher | engagement"),
        Column("value", pa.float64()),
        Column("delta", pa.float64(), nullable=True, help="system minus the candidate's baseline"),
        Column("ci_low", pa.float64(), nullable=True),
        Column("ci_high", pa.float64(), nullable=True),
        Column("p_value", pa.float64(), nullable=True),
        Column("n_queries", pa.int64()),
    ),
    rules=(_rule_missing("system"), _rule_missing("metric")),
    help="Offline evaluation: one row per (system, metric, slice).",
)

AB_CONFIG = ArtifactSchema(
    "ab_config",
    (
        Column("experiment_id", STR),
        Column("version", pa.int64()),
        Column("created_at", pa.timestamp("us", tz="UTC")),
        Column("control_model_uri", STR),
        Column("control_index_uri", STR),
        Column("treatment_model_uri", STR),
        Column("treatment_index_uri", STR),
        Column("treatment_traffic", pa.float64(), help="share of traffic on the treatment, 0..1"),
        Column("start_time", pa.timestamp("us", tz="UTC")),
        Column("blessing", STR, help="the evaluation's blessing evidence, as JSON"),
    ),
    rules=(
        _rule_missing("experiment_id"),
        RowRule(
            "traffic_share",
            "treatment_traffic",
            "treatment_traffic outside 0..1",
            _outside("treatment_traffic", lambda c: 0.0, lambda c: 1.0),
        ),
    ),
    help="A versioned A/B experiment config.",
)

ARTIFACTS: dict[str, ArtifactSchema] = {
    s.name: s
    for s in (CATALOG, QUERIES, JUDGMENTS, RAW_LOGS, ENGAGEMENT, LABELS, TRAINING_LISTS, EVAL_RESULTS, AB_CONFIG)
}


# ---------------------------------------------------------------- validation


def conform(table: pa.Table, schema: ArtifactSchema, source: str) -> pa.Table:
    """Check the columns of ``table`` and cast them to the schema's types.

    Missing optional columns are added as nulls; columns the schema does not know are
    dropped. Raises :class:`DataValidationError` for an empty table, a missing required
    column, or values that cannot be cast (naming the rows).
    """
    if table.num_columns == 0:
        raise DataValidationError(schema.name, source, "the file is empty (no columns)")
    present = set(table.column_names)
    for col in schema.columns:
        if col.required and col.name not in present:
            raise DataValidationError(
                schema.name,
                source,
                f"required column is missing (found: {', '.join(table.column_names)})",
                column=col.name,
            )
    arrays, fields = [], []
    for col in schema.columns:
        if col.name in present:
            arrays.append(_cast_column(table[col.name], col.name, col.type, schema.name, source))
        else:
            arrays.append(pa.nulls(table.num_rows, col.type))
        fields.append(pa.field(col.name, col.type, nullable=True))
    for name in schema.dynamic_names(table.column_names):
        dtype = schema._dynamic_type(name)
        arrays.append(_cast_column(table[name], name, dtype, schema.name, source))
        fields.append(pa.field(name, dtype, nullable=True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


_INT_TEXT = re.compile(r"^\s*[-+]?\d+(\.0*)?\s*$")


def _cast_column(values: pa.ChunkedArray, name: str, dtype: pa.DataType, artifact: str, source: str) -> pa.ChunkedArray:
    if values.type == dtype:
        return values
    if pa.types.is_string(dtype) and (
        pa.types.is_integer(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type)
    ):
        return values.cast(dtype)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.utf8_trim_whitespace(values.cast(pa.string()))
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        if pa.types.is_integer(dtype):
            text = values.to_pylist()
            bad = [i for i, v in enumerate(text) if v is not None and not _INT_TEXT.match(v)]
            if bad:
                raise _cast_error(artifact, source, name, dtype, bad, text)
            values = pa.chunked_array([pa.array([None if v is None else int(float(v)) for v in text])])
    try:
        return values.cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = values.cast(pa.string()).to_pylist() if _castable_to_string(values.type) else None
    bad = []
    for i in range(len(values)):
        try:
            values.slice(i, 1).cast(dtype)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad.append(i)
    raise _cast_error(artifact, source, name, dtype, bad, text)


def _castable_to_string(dtype: pa.DataType) -> bool:
    return not (pa.types.is_list(dtype) or pa.types.is_struct(dtype))


def _cast_error(artifact, source, name, dtype, bad, text) -> DataValidationError:
    examples = ""
    if text is not None and bad:
        examples = " (got " + ", ".join(repr(text[i]) for i in bad[:MAX_ROWS_IN_MESSAGE]) + ")"
    return DataValidationError(
        artifact,
        source,
        f"values are not of type {dtype}{examples}",
        column=name,
        rows=[i + 1 for i in bad],
        rule="type",
    )


def validate(
    table: pa.Table,
    artifact: str | ArtifactSchema,
    source: str = "<table>",
    context: RuleContext | None = None,
    strict: bool = True,
    skip_rules: Iterable[str] = (),
) -> Validated:
    """Validate ``table`` as ``artifact``: schema first, then every row rule.

    With ``strict`` the first broken row rule raises :class:`DataValidationError`
    (rows counted from 1, header excluded). Otherwise breaking rows go to the
    quarantine table, with the reason of the first rule they break and their row
    number in the input (``source_row``, from 0).
    """
    schema = ARTIFACTS[artifact] if isinstance(artifact, str) else artifact
    ctx = context or RuleContext()
    if table.num_columns > 0 and table.num_rows == 0 and strict:
        raise DataValidationError(schema.name, source, "the file has a header but no rows")
    conformed = conform(table, schema, source)
    n = conformed.num_rows
    reasons = np.full(n, None, dtype=object)
    skipped = set(skip_rules)
    for rule in schema.rules:
        if rule.name in skipped:
            continue
        undecided = np.array([r is None for r in reasons], dtype=bool)
        if not undecided.any():
            break
        bad = rule.bad_rows(conformed, ctx) & undecided
        if not bad.any():
            continue
        if strict:
            rows = (np.flatnonzero(bad) + 1).tolist()
            sample = conformed[rule.column].take(pa.array(np.flatnonzero(bad)[:MAX_ROWS_IN_MESSAGE])).to_pylist()
            raise DataValidationError(
                schema.name,
                source,
                f"{rule.reason} (values: {', '.join(repr(v) for v in sample)})",
                column=rule.column,
                rows=rows,
                rule=rule.name,
            )
        reasons[bad] = rule.reason
    quarantine_mask = np.array([r is not None for r in reasons], dtype=bool)
    accepted = conformed.filter(pa.array(~quarantine_mask))
    index = np.flatnonzero(quarantine_mask)
    quarantined = (
        conformed.take(pa.array(index, type=pa.int64()))
        .append_column(QUARANTINE_REASON, pa.array(reasons[index].tolist(), type=pa.string()))
        .append_column(SOURCE_ROW, pa.array(index, type=pa.int64()))
    )
    return Validated(schema.name, source, accepted, quarantined, n)


def empty_quarantine(schema: ArtifactSchema, dynamic: Iterable[str] = ()) -> pa.Table:
    """An empty quarantine table of ``schema`` (its columns + reason + source row)."""
    arrow = schema.arrow_schema(dynamic)
    arrow = arrow.append(pa.field(QUARANTINE_REASON, pa.string())).append(pa.field(SOURCE_ROW, pa.int64()))
    return arrow.empty_table()
