"""Triton python-backend model of the bi-encoder's query tower
(copied to ``<repo>/<name>/<version>/model.py`` by ``unisup.biencoder.export``).

Input ``query`` (BYTES, raw query text), output ``embedding`` (FP32, unit-norm vector).
The tower's files are in the ``query_tower/`` folder beside this file. The python
backend stub ignores PYTHONPATH, so the folders holding ``unisup`` and its dependencies
are added to ``sys.path`` from the ``UNISUP_PYTHONPATH`` environment variable and the
``python_paths`` parameter of ``config.pbtxt`` (both ':'-separated). The work is done by
:class:`unisup.biencoder.export.QueryEncoderService`, one forward pass per dynamic batch.
"""

import json
import os
import site
import sys
from pathlib import Path

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton, e.g. by tooling that inspects the repository
    pb_utils = None

PATH_ENV = "UNISUP_PYTHONPATH"


def extend_sys_path(parameter: str) -> list[str]:
    """Put the configured folders (and their .pth files) first on sys.path; returns what was added."""
    before = list(sys.path)
    for folder in f"{os.environ.get(PATH_ENV, '')}:{parameter}".split(":"):
        if folder and folder not in sys.path:
            site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    return added


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        extend_sys_path(config.get("parameters", {}).get("python_paths", {}).get("string_value", ""))
        from unisup.biencoder.export import EMBEDDING_OUTPUT, QUERY_INPUT, TOWER_FOLDER, QueryEncoderService

        self.names = (QUERY_INPUT, EMBEDDING_OUTPUT)
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.service = QueryEncoderService(version_dir / TOWER_FOLDER, device)

    def execute(self, requests):
        query, embedding = self.names
        arrays = [pb_utils.get_input_tensor_by_name(r, query).as_numpy() for r in requests]
        try:
            outputs = self.service.embed_batches(arrays)
        except Exception as err:  # every request of the batch gets the error, the server keeps running
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(err).__name__}: {err}")) for _ in requests
            ]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(embedding, out)]) for out in outputs]
