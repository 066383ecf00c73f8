"""Retrieval: index building, the HTTP service (DESIGN §3) and its client (see docs/retrieval.md).

Modules: ``client`` (what every stage imports; no torch), ``server`` + ``batching`` (FastAPI app,
micro-batching), ``searchers`` (dense / BM25 / hybrid / reranker), ``dense`` + ``bm25`` +
``docstore`` + ``build`` (index folders), ``download`` (wiki-18), ``local`` (server in a thread).
Importing this package loads nothing heavy.
"""

from search_r1.retrieval.client import (
    AsyncRetrieverClient,
    Passage,
    RetrieverAuthError,
    RetrieverBadRequest,
    RetrieverClient,
    RetrieverError,
    RetrieverTimeout,
    RetrieverUnavailable,
)

__all__ = [
    "AsyncRetrieverClient",
    "Passage",
    "RetrieverAuthError",
    "RetrieverBadRequest",
    "RetrieverClient",
    "RetrieverError",
    "RetrieverTimeout",
    "RetrieverUnavailable",
]
