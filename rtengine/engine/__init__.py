"""The engine: frame clock, chain, block adapter, offline render and live I/O."""

from .chain import Engine
from .adapter import BlockAdapter

__all__ = ["Engine", "BlockAdapter"]
