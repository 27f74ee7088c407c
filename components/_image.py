"""The versioned image constants every component and the Spark extraction run in (built by `make images`)."""

from unisup import __version__ as IMAGE_VERSION  # the one version string: a changed image is a new release

REGISTRY = "ghcr.io/unisup"
COMPONENTS_IMAGE = f"{REGISTRY}/components:{IMAGE_VERSION}"
TRAINER_IMAGE = f"{REGISTRY}/trainer:{IMAGE_VERSION}"
TRITON_IMAGE = f"{REGISTRY}/triton:{IMAGE_VERSION}"
SPARK_IMAGE = f"{REGISTRY}/spark:{IMAGE_VERSION}"
