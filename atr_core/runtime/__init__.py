"""Runtime helpers used by every stage: storage (local, gs://, https), devices, CPU scheduling.

:mod:`.storage` opens, globs and fetches files with checksums and a cache, :mod:`.idle_pool` runs
work at idle priority, :mod:`.cpu_memory` keeps freed heap for reuse in CPU inference.
"""

from atr_core.runtime.storage import FetchError, expand_glob, fetch, is_remote, open_uri, sha256_file

__all__ = ["FetchError", "expand_glob", "fetch", "is_remote", "open_uri", "sha256_file"]
