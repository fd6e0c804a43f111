"""Data: sources (offline builtins, local files), the packed mixture, eval sets; chat
sources and conversations for the instruction stage (``lp.data.chat*``)."""

from lp.data.chatmodule import ChatDataModule
from lp.data.datamodule import MixtureDataModule
from lp.data.sources import Source, build_source

__all__ = ["ChatDataModule", "MixtureDataModule", "Source", "build_source"]
