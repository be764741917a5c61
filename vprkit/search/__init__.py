"""Nearest neighbours over stored descriptors: exact blocked search, faiss indexes, k-means."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "QUERY_CHUNK": "vprkit.search.exact",
    "TILE_ELEMENTS": "vprkit.search.exact",
    "blocked_search": "vprkit.search.exact",
    "build_or_load": "vprkit.search.index",
    "exact_search": "vprkit.search.exact",
    "faiss_blocked_search": "vprkit.search.exact",
    "faiss_has_gpu": "vprkit.search.index",
    "full_fp32_matmul": "vprkit.search.exact",
    "index_path": "vprkit.search.index",
    "on_device": "vprkit.search.index",
    "search_device": "vprkit.search.exact",
    "set_nprobe": "vprkit.search.index",
    "torch_blocked_search": "vprkit.search.exact",
}
__all__ = [
    "QUERY_CHUNK",
    "TILE_ELEMENTS",
    "blocked_search",
    "build_or_load",
    "exact_search",
    "faiss_blocked_search",
    "faiss_has_gpu",
    "full_fp32_matmul",
    "index_path",
    "on_device",
    "search_device",
    "set_nprobe",
    "torch_blocked_search",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.search.exact import (
        QUERY_CHUNK,
        TILE_ELEMENTS,
        blocked_search,
        exact_search,
        faiss_blocked_search,
        full_fp32_matmul,
        search_device,
        torch_blocked_search,
    )
    from vprkit.search.index import (
        build_or_load,
        faiss_has_gpu,
        index_path,
        on_device,
        set_nprobe,
    )
