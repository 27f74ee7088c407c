"""KFP component that checks a given raw-log location before the run reads it (unisup.logs)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def locate_logs(logs_uri: str, metrics: Output[Metrics]) -> str:
    """Fail early, naming the location, when ``logs_uri`` holds no ``date=YYYY-MM-DD``
    Parquet partition; otherwise return it (with the dates found as metrics)."""
    from unisup.logs import partitions
    from unisup.schemas import DataValidationError

    found = partitions(logs_uri)
    if not found:
        raise DataValidationError("raw_logs", logs_uri, "no Parquet log files under this prefix")
    dates = sorted({date for date, _ in found})
    metrics.log_metric("files", len(found))
    metrics.log_metric("days", len(dates))
    metrics.metadata["first_date"], metrics.metadata["last_date"] = dates[0], dates[-1]
    return logs_uri
