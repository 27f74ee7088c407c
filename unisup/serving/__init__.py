"""Serving on Triton: the python-backend ``model.py`` templates, shipped as package data, the
BYTES text codec (``codec``) and the launcher of a local tritonserver (``triton_server``), used
by the teachers' labeling and the query encoder's tests alike.

``templates/teacher_model.py`` serves a teacher stage and ``templates/query_encoder_model.py``
the trained query tower; the export code copies them into each model version folder, so an
installed package (no source tree) can write a Triton repository.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TEACHER_TEMPLATE = "teacher_model.py"
QUERY_ENCODER_TEMPLATE = "query_encoder_model.py"


def template(name: str) -> Path:
    """The path of one python-backend template inside the installed package."""
    path = Path(str(resources.files("unisup.serving").joinpath("templates", name)))
    if not path.is_file():
        raise FileNotFoundError(2, "python-backend template missing from the package", str(path))
    return path
