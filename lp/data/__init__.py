"""Data: sources (offline builtins, local files), the packed mixture, eval sets."""

from lp.data.datamodule import MixtureDataModule
from lp.data.sources import Source, build_source

__all__ = ["MixtureDataModule", "Source", "build_source"]
