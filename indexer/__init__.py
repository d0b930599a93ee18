"""indexer: watch the workspace, chunk files / READMEs / commits, precompute their KV into a tiered store,
and retrieve context chunks per completion request. See README "Indexer and KV store"."""

from indexer.chunker import Chunk, Chunker
from indexer.config import IndexerConfig, StoreConfig
from indexer.indexer import Indexer, IndexStats, UpdateResult
from indexer.keys import ChunkKey, chunk_key
from indexer.precompute import Priority, Progress
from indexer.retrieval import RetrievalConfig, RetrievalRequest, Retriever
from indexer.store import KVStore, TieredStore, make_store

__all__ = [
    "Chunk",
    "ChunkKey",
    "Chunker",
    "IndexStats",
    "Indexer",
    "IndexerConfig",
    "KVStore",
    "Priority",
    "Progress",
    "RetrievalConfig",
    "RetrievalRequest",
    "Retriever",
    "StoreConfig",
    "TieredStore",
    "UpdateResult",
    "chunk_key",
    "make_store",
]
