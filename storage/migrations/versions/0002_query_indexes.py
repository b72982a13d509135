"""query indexes: trial(status), trial(reused_from_trial_id), search(space_name)

Used by the query layer (`nas results`): listing trials by status across all
searches, filtering by search space, and finding the reuses of a trial (also the
foreign key's ON DELETE SET NULL, which PostgreSQL does not index by itself).

Revision ID: 0002_query_indexes
Revises: 0001_initial
Create Date: 2025-11-23

"""
from __future__ import annotations

from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002_query_indexes"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_trial_status", "trial", ["status"])
    op.create_index("ix_trial_reused_from_trial_id", "trial", ["reused_from_trial_id"])
    op.create_index("ix_search_space_name", "search", ["space_name"])


def downgrade() -> None:
    op.drop_index("ix_search_space_name", table_name="search")
    op.drop_index("ix_trial_reused_from_trial_id", table_name="trial")
    op.drop_index("ix_trial_status", table_name="trial")
