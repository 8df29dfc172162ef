"""Dagster's PostgreSQL event log, holding one connection instead of opening one per write.

dagster-postgres gives every process a NullPool engine, so a run worker connects anew for each
event it stores: a backfill run over 120 windows stores thousands of events and spent more time
connecting than computing. Only the engine differs; tables, queries and config are dagster-postgres'.
"""

from __future__ import annotations

from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None, token_provider=None):
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        # one kept connection (plus overflow for concurrent threads), recycled hourly
        self._engine = create_pg_engine(
            postgres_url, token_provider, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=10,
            pool_recycle=3600, pool_pre_ping=True,
        )

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
