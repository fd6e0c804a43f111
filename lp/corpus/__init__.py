"""Data: sources (offline builtins, local files), the packed mixture, eval sets; chat
sources and conversations for the instruction stage (``lp.corpus.chat.format*``)."""

from lp.corpus.chat.module import ChatDataModule
from lp.corpus.sources import Source, build_source
from lp.corpus.text import MixtureDataModule

__all__ = ["ChatDataModule", "MixtureDataModule", "Source", "build_source"]
