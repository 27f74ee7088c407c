"""Triton python-backend model of one teacher stage (copied to ``<repo>/<stage>/1/model.py``).

Inputs ``query`` and ``item`` (BYTES: the raw item text, or the JSON item record that feature
and stacked stages read), output ``probs`` (FP32, K per-grade probabilities). The teacher's
files (any kind: cross-encoder, feature teacher) are in the ``teacher/`` folder beside this file.
The python backend stub ignores PYTHONPATH, so the folders holding ``unisup`` and its
dependencies are added to ``sys.path`` from the ``UNISUP_PYTHONPATH`` environment
variable and the ``python_paths`` parameter of ``config.pbtxt`` (both ':'-separated);
the ``forward_batch_size`` parameter sets the pairs per forward pass.
The work is done by :class:`unisup.teachers.serving.TeacherService`.
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
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        extend_sys_path(parameters.get("python_paths", ""))
        from unisup.teachers.serving import ITEM_INPUT, PROBS_OUTPUT, QUERY_INPUT, TeacherService

        self.names = (QUERY_INPUT, ITEM_INPUT, PROBS_OUTPUT)
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.service = TeacherService(
            Path(args["model_repository"]) / args["model_version"] / "teacher",
            device,
            int(parameters.get("forward_batch_size") or 64),
        )

    def execute(self, requests):
        query, item, probs = self.names
        arrays = [
            (
                pb_utils.get_input_tensor_by_name(r, query).as_numpy(),
                pb_utils.get_input_tensor_by_name(r, item).as_numpy(),
            )
            for r in requests
        ]
        try:
            outputs = self.service.score_batches(arrays)
        except Exception as err:  # every request of the batch gets the error, the server keeps running
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(err).__name__}: {err}")) for _ in requests
            ]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(probs, out)]) for out in outputs]
