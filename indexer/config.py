"""Settings of the indexer and its KV store (fixed for a workspace; per-request state lives elsewhere)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

# Tiers a store can be built from, fastest first (the order `TieredStore` reads them in).
TIERS = ("memory", "disk", "redis")
# Precompute threads at most: each holds a model forward's activations, and a worker per core is the default.
MAX_WORKERS = 64


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    tiers: tuple[str, ...] = ("memory", "disk")  # add "redis" to share chunks with a team or a fleet
    memory_bytes: int = 512 << 20  # hot chunks of the open files; a 512-token chunk of a 1.5B model is ~14 MiB
    disk_dir: Path | None = None  # None: <workspace>/.kvblend/cache (filled in by IndexerConfig)
    disk_bytes: int = 16 << 30  # least recently used entries beyond this are deleted
    mmap: bool = True  # disk reads of entries >= mmap_min_bytes map the file (fp16 tensors are views of the map)
    mmap_min_bytes: int = 256 << 10  # below this, mapping costs more than a copy (measured: README)
    fsync: bool = False  # rename is atomic against kill -9 without it; fsync only buys power-loss safety
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    redis_prefix: str = "kvblend:"  # every key is <prefix><fingerprint>@<token hash>
    redis_ttl_s: int = 7 * 24 * 3600  # maxmemory + allkeys-lru on the server bound its bytes; this the time since a use

    def __post_init__(self) -> None:
        unknown = [t for t in self.tiers if t not in TIERS]
        if unknown or not self.tiers:
            raise ValueError(f"unknown store tiers {unknown or self.tiers}: choose from {', '.join(TIERS)}")
        if "redis" in self.tiers and not self.redis_url:
            raise ValueError("the redis tier needs redis_url")
        if self.memory_bytes < 0 or self.disk_bytes < 0:
            raise ValueError(f"byte budgets must be >= 0, got {self.memory_bytes}, {self.disk_bytes}")


# gitignore-syntax patterns never indexed whatever the ignore files say (VCS data, our own cache, bulky
# generated files that are usually but not always ignored).
DEFAULT_IGNORES = (
    ".git/",
    ".hg/",
    ".svn/",
    ".kvblend/cache/",
    "__pycache__/",
    ".venv/",
    "node_modules/",
    "*.lock",
    "package-lock.json",
)


@dataclasses.dataclass(frozen=True)
class IndexerConfig:
    root: Path  # the workspace
    cache_dir: Path | None = None  # None: <root>/.kvblend/cache
    max_chunk_tokens: int = 512  # a chunk never exceeds this (its `<|file_sep|>path` header included)
    min_chunk_tokens: int = 48  # smaller units (an import block, a constant) join the next unit
    max_file_bytes: int = 1 << 20  # bigger files are generated or data, not context
    n_commits: int = 20  # the last K commits are indexed (message + bounded diff summary)
    commit_diff_lines: int = 40  # changed lines kept per commit summary
    debounce_s: float = 0.5  # the watcher waits this long after the last event before updating
    precompute: bool = True  # False: a chunk's KV is computed on its first use (batch eval touches a few)
    workers: int = 0  # precompute threads; 0: `default_workers` (one per torch thread on a CPU)
    shared_prefix: bool = False  # precompute behind `<|repo_name|>name\n` instead of alone at offset 0
    repo_name: str | None = None  # None: the root directory's name
    ignores: tuple[str, ...] = DEFAULT_IGNORES
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        root = Path(self.root).resolve()
        object.__setattr__(self, "root", root)
        if not root.is_dir():
            raise ValueError(f"workspace is not a directory: {root}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be in [0, {MAX_WORKERS}] (0: automatic), got {self.workers}")
        if self.max_chunk_tokens < 16 or self.min_chunk_tokens >= self.max_chunk_tokens:
            raise ValueError(f"need 16 <= min_chunk_tokens < max_chunk_tokens, got {self.min_chunk_tokens}, "
                             f"{self.max_chunk_tokens}")  # fmt: skip
        cache = Path(self.cache_dir) if self.cache_dir is not None else root / ".kvblend" / "cache"
        object.__setattr__(self, "cache_dir", cache)
        if self.store.disk_dir is None:
            object.__setattr__(self, "store", dataclasses.replace(self.store, disk_dir=cache / "kv"))
        if self.repo_name is None:
            object.__setattr__(self, "repo_name", root.name)
