"""Model catalog, loaders and the block-level Llama-family implementation."""

from edgeweave.models.cache import KVCache
from edgeweave.models.catalog import DEFAULT_MODEL, available, load, resolve
from edgeweave.models.checkpoint import LoadedModel, load_folder
from edgeweave.models.config import ModelConfig
from edgeweave.models.llama import BlockModel

__all__ = ["DEFAULT_MODEL", "BlockModel", "KVCache", "LoadedModel", "ModelConfig", "available",
           "load", "load_folder", "resolve"]
