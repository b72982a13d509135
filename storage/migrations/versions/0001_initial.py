"""initial schema: search, architecture, trial, trial_step, controller_checkpoint

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-23

"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001_initial"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "search",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("space_name", sa.String(length=200), nullable=True),
        sa.Column("space_text", sa.Text(), nullable=True),
        sa.Column("space_hash", sa.String(length=128), nullable=True),
        sa.Column("controller", sa.String(length=100), nullable=True),
        sa.Column("controller_config", sa.JSON(), nullable=True),
        sa.Column("task", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_search"),
        sa.UniqueConstraint("name", name="uq_search_name"),
    )
    op.create_table(
        "architecture",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("canonical_hash", sa.String(length=128), nullable=False),
        sa.Column("space_name", sa.String(length=200), nullable=True),
        sa.Column("ir_json", sa.JSON(), nullable=True),
        sa.Column("dsl_text", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_architecture"),
    )
    op.create_index(
        "ix_architecture_canonical_hash", "architecture", ["canonical_hash"], unique=True
    )
    op.create_table(
        "trial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("architecture_id", sa.Integer(), nullable=True),
        sa.Column("trial_index", sa.Integer(), nullable=False),
        sa.Column("assignment", sa.JSON(), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=True),
        sa.Column("config_hash", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("diverged_step", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("gpu", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("budget", sa.Float(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("wall_time_s", sa.Float(), nullable=True),
        sa.Column("reused_from_trial_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_trial"),
        sa.ForeignKeyConstraint(
            ["search_id"], ["search.id"], name="fk_trial_search_id_search", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["architecture_id"], ["architecture.id"], name="fk_trial_architecture_id_architecture"
        ),
        sa.ForeignKeyConstraint(
            ["reused_from_trial_id"], ["trial.id"],
            name="fk_trial_reused_from_trial_id_trial", ondelete="SET NULL",
        ),
        sa.UniqueConstraint("search_id", "trial_index", name="uq_trial_search_id_trial_index"),
    )
    op.create_index("ix_trial_search_id_status", "trial", ["search_id", "status"])
    op.create_index("ix_trial_search_id_objective", "trial", ["search_id", "objective"])
    op.create_index("ix_trial_objective", "trial", ["objective"])
    op.create_index("ix_trial_config_hash", "trial", ["config_hash"])
    op.create_index("ix_trial_architecture_id", "trial", ["architecture_id"])
    op.create_table(
        "trial_step",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("trial_id", "step", name="pk_trial_step"),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trial.id"], name="fk_trial_step_trial_id_trial", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "controller_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("n_told", sa.Integer(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_controller_checkpoint"),
        sa.ForeignKeyConstraint(
            ["search_id"], ["search.id"],
            name="fk_controller_checkpoint_search_id_search", ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_controller_checkpoint_search_id_id", "controller_checkpoint", ["search_id", "id"]
    )


def downgrade() -> None:
    op.drop_table("controller_checkpoint")
    op.drop_table("trial_step")
    op.drop_table("trial")
    op.drop_table("architecture")
    op.drop_table("search")
