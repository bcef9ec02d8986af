"""Trace store: HDF5 files for tensors, a SQL index for search. See "The trace store" in README.md.

from store import open_store, TraceQuery
with open_store("traces") as st:  # read-only; open_store(..., writable=True) to add
    page = st.query(TraceQuery(model="llava-hf/llava-1.5-7b-hf", text="red"))
    with st.open(page.items[0].trace_id) as tr:
        heat = tr.lm_attention[10, 3]  # [T, T] float32; rows are absolute query positions
"""

from ._codec import (
    LOG8_RELATIVE_ERROR,
    LOG8_ZERO_BELOW,
    SPARSE_THRESHOLD,
    Precision,
)
from ._index import Page, TraceQuery
from ._paths import DB_FILE, check_name
from ._store import (
    MAX_NOTE_LENGTH,
    GcReport,
    Problem,
    ReindexReport,
    TraceStore,
    open_store,
    reindex_store,
)
from ._stored import StoredTrace
from .errors import (
    CorruptTrace,
    FormatTooNew,
    IndexSchemaTooOld,
    InvalidName,
    InvalidQuery,
    InvalidTraceId,
    MissingData,
    StoreError,
    StoreFull,
    StoreOpenError,
    StoreReadOnly,
    TraceNotFound,
)
from .policy import PolicyCost, choose_policy, policy_costs, policy_of, policy_rows
from .schema import (
    FORMAT_VERSION,
    CrossAttention,
    GenerationSettings,
    ImageGeometry,
    Note,
    PatchMap,
    RecordingPolicy,
    Relevancy,
    RelevancyMode,
    SourceImage,
    Summaries,
    Tile,
    TokenRole,
    TokenTable,
    TopK,
    Trace,
    TraceInfo,
    answer_row,
    new_trace_id,
    utc_now,
)
from .views import AttentionView

__all__ = [
    "DB_FILE",
    "FORMAT_VERSION",
    "LOG8_RELATIVE_ERROR",
    "LOG8_ZERO_BELOW",
    "MAX_NOTE_LENGTH",
    "SPARSE_THRESHOLD",
    "AttentionView",
    "CorruptTrace",
    "CrossAttention",
    "FormatTooNew",
    "GcReport",
    "GenerationSettings",
    "ImageGeometry",
    "IndexSchemaTooOld",
    "InvalidName",
    "InvalidQuery",
    "InvalidTraceId",
    "MissingData",
    "Note",
    "Page",
    "PatchMap",
    "PolicyCost",
    "Precision",
    "Problem",
    "RecordingPolicy",
    "ReindexReport",
    "Relevancy",
    "RelevancyMode",
    "SourceImage",
    "StoreError",
    "StoreFull",
    "StoreOpenError",
    "StoreReadOnly",
    "StoredTrace",
    "Summaries",
    "Tile",
    "TokenRole",
    "TokenTable",
    "TopK",
    "Trace",
    "TraceInfo",
    "TraceNotFound",
    "TraceQuery",
    "TraceStore",
    "answer_row",
    "check_name",
    "choose_policy",
    "new_trace_id",
    "open_store",
    "policy_costs",
    "policy_of",
    "policy_rows",
    "reindex_store",
    "utc_now",
]
