"""Data, one package for both formats: text (sources, packing, ``MixtureDataModule``, the
base's own text) and chat (``lp.corpus.chat``: conversations for the instruction stage)."""

from lp.corpus.chat.module import ChatDataModule
from lp.corpus.sources import Source, build_source
from lp.corpus.text import MixtureDataModule

__all__ = ["ChatDataModule", "MixtureDataModule", "Source", "build_source"]
