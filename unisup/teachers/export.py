"""Export teachers into a Triton model repository (python backend).

    <repository>/
      README.md                the model card (unisup.model_card); Triton ignores files at the root
      <stage>/
        config.pbtxt           inputs query/item (BYTES), output probs (FP32, K),
                               max_batch_size, dynamic_batching, instance_group,
                               parameters python_paths and forward_batch_size
        1/
          model.py             copy of unisup/serving/templates/teacher_model.py
          teacher/             the teacher folder: HF encoder, tokenizer, ordinal head, teacher.json;
                               for a feature teacher its featurizer (statistics, catalog embeddings)

The same repository loads in the NGC Triton image and in the tritonserver binary
shipped inside nvidia-pytriton.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from unisup import storage
from unisup.config import ConfigError, DataConfig, TeachersConfig
from unisup.model_card import (
    LICENSE,
    MINILM,
    base_model_text,
    data_text,
    data_uris,
    is_packaged_minilm,
    markdown_table,
    model_card,
    model_index,
)
from unisup.serving import TEACHER_TEMPLATE, template
from unisup.teachers.audit import BASELINE, format_audit

VERSION = "1"
MODEL_CARD = "README.md"


def model_config(
    name: str,
    num_grades: int,
    max_batch_size: int,
    instance_count: int,
    instance_kind: str,
    max_queue_delay_us: int = 0,
    python_paths: str = "",
    forward_batch_size: int = 64,
) -> str:
    """The config.pbtxt text of one teacher stage."""
    if instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ConfigError(f"teachers.triton_instance_kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}")
    delay = f"\n  max_queue_delay_microseconds: {max_queue_delay_us}\n" if max_queue_delay_us else " "
    return f'''name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{ name: "query" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "item" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "probs" data_type: TYPE_FP32 dims: [ {num_grades} ] }}
]
dynamic_batching {{{delay}}}
instance_group [ {{ count: {instance_count} kind: {instance_kind} }} ]
parameters: {{ key: "python_paths" value: {{ string_value: "{python_paths}" }} }}
parameters: {{ key: "forward_batch_size" value: {{ string_value: "{forward_batch_size}" }} }}
'''


def export_repository(
    teachers: dict[str, Path], repository: str | Path, cfg: TeachersConfig, num_grades: int
) -> list[str]:
    """Write each teacher folder as a model of the Triton repository (local path or gs://).

    Returns the model names written. Other models already in the repository stay.
    """
    model_template = template(TEACHER_TEMPLATE)
    with tempfile.TemporaryDirectory(prefix="unisup-repo-") as tmp:
        local = Path(tmp) if storage.is_gcs(str(repository)) else Path(repository)
        for name, folder in teachers.items():
            model_dir = local / name
            if model_dir.exists():
                shutil.rmtree(model_dir)
            (model_dir / VERSION).mkdir(parents=True)
            shutil.copytree(folder, model_dir / VERSION / "teacher")
            shutil.copyfile(model_template, model_dir / VERSION / "model.py")
            (model_dir / "config.pbtxt").write_text(
                model_config(
                    name,
                    num_grades,
                    cfg.triton_max_batch_size,
                    cfg.triton_instance_count,
                    cfg.triton_instance_kind,
                    cfg.triton_max_queue_delay_us,
                    cfg.triton_python_paths,
                    cfg.triton_forward_batch_size,
                )
            )
        if storage.is_gcs(str(repository)):
            storage.upload_dir(local, str(repository))
    return list(teachers)


def write_model_card(
    repository: str | Path, report: dict, cfg: TeachersConfig, data: DataConfig, audit: dict | None = None
) -> None:
    """Write the repository's model card from the training ``report`` of ``train_teachers`` and,
    once run, the quality ``audit``."""
    card = teachers_card(report["stages"], cfg, data_uris(data), report["escalation"], audit)
    storage.write_text(storage.join(str(repository), MODEL_CARD), card)


def teachers_card(stages: dict[str, dict], cfg, data: dict, escalation: dict | None, audit: dict | None) -> str:
    """The card of a teachers' Triton repository: per stage its training record (``stages``, as
    ``train_teachers`` returns them), the configuration ``cfg`` (TeachersConfig), the data URIs,
    the escalation calibrated on validation and, when run, the quality audit."""
    kinds = {s.name: s for s in cfg.stages}
    encoders = {name: kinds[name].base_model for name in stages if kinds[name].kind != "ordinal_features"}
    rows = [
        [
            name,
            kinds[name].kind,
            "-" if name not in encoders else base_model_text(encoders[name]).split(" (")[0],
            f"{r['steps']}/{r['planned_steps']}",
            r["stop_reason"],
            r["best_epoch"],
            r["validation_nll_calibrated"],
            r["temperature"],
        ]
        for name, r in stages.items()
    ]
    front = {
        "library_name": "pytorch",
        "license": LICENSE,
        **({"base_model": MINILM} if any(is_packaged_minilm(p) for p in encoders.values()) else {}),
        "tags": ["cross-encoder", "ordinal-regression", "relevance-judgment", "triton", "product-search"],
        "pipeline_tag": "text-classification",
        "training": {
            "seed": cfg.seed,
            "stages": {n: {"steps": r["steps"], "best_epoch": r["best_epoch"]} for n, r in stages.items()},
        },
    }
    base = "\n".join(f"- {name}: {base_model_text(path)}" for name, path in encoders.items())
    budgets = "\n".join(
        f"- {name}: epochs {kinds[name].epochs}, max_steps {kinds[name].max_steps}, batch size {kinds[name].batch_size}"
        for name in encoders
    )
    sections = [
        (
            "Models",
            "Ordinal teachers grading (query, item) pairs, one Triton model (python backend) per stage; "
            f"the cascade escalates uncertain pairs to later stages.\n\nBase models:\n{base or '- none'}",
        ),
        (
            "Training data",
            data_text(data, [f"- seed {cfg.seed}, at most {cfg.max_train_pairs or 'all'} training pairs"]),
        ),
        (
            "Training",
            (f"Budgets:\n{budgets}\n\n" if budgets else "")
            + markdown_table(
                ["stage", "kind", "base model", "steps", "stop", "best epoch", "validation NLL", "temperature"], rows
            ),
        ),
        ("Escalation", f"Calibrated on validation: `{json.dumps(escalation)}`" if escalation else ""),
    ]
    if audit:
        labelers = [*audit["stages"].items(), ("cascade", audit["cascade"])]
        labelers += [(BASELINE, audit[BASELINE])] if BASELINE in audit else []
        front["model-index"] = model_index(
            "unisup-teachers",
            "text-classification",
            f"{audit['split']} split",
            [
                (key.replace("@", "_at_"), f"{who} {label}", stats.get(key))
                for who, stats in labelers
                for key, label in (("qwk", "QWK"), ("condensed_ndcg@10", "condensed nDCG@10"))
            ],
        )
        if "gate" in audit:
            front["audit_passed"] = audit["gate"]["passed"]
        sections.append(("Quality audit", format_audit(audit)))
    return model_card("unisup teachers", front, sections)
