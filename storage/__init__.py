"""cellsearch results database (``nas.storage``): SQLAlchemy 2 models, Alembic
migrations and the query layer :class:`Store`.

The bottom of the stack: imports neither torch, Ray nor any other part of
``nas``; callers hand it hashes, JSON-able data and bytes.

    from nas.storage import Store
    with Store.open("runs/nas.db") as store:      # or $NAS_DB, or a postgresql+psycopg:// URL
        s = store.create_search("s1", space_name="quickstart", controller="random", ...)
        aid = store.get_or_create_architecture(graph_hash, space_name=..., ir_json=..., dsl_text=...)
        t = store.add_trial(s.id, architecture_id=aid, assignment=a, hyperparameters=hp,
                            config_hash=ch)
        store.start_trial(t.id, host="node1", gpu=0, attempt=1)
        store.finish_trial(t.id, status="completed", metrics={...}, objective=0.12)
        best = store.top("s1", k=5)
"""

from .engine import SchemaStatus, alembic_config, head_revisions, mask as mask_url, schema_status
from .errors import SchemaVersionError, StorageError
from .models import SEARCH_STATUSES, TERMINAL_TRIAL_STATUSES, TRIAL_STATUSES
from .records import ArchitectureRecord, CheckpointRecord, SearchRecord, TrialRecord
from .store import Store, upgrade_schema

__all__ = [
    "Store",
    "StorageError",
    "SchemaVersionError",
    "SchemaStatus",
    "schema_status",
    "upgrade_schema",
    "mask_url",
    "SearchRecord",
    "TrialRecord",
    "ArchitectureRecord",
    "CheckpointRecord",
    "SEARCH_STATUSES",
    "TRIAL_STATUSES",
    "TERMINAL_TRIAL_STATUSES",
    "alembic_config",
    "head_revisions",
]
