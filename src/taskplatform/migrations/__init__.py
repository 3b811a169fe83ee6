"""Alembic migrations of the SQL schema (tasks, queued_tasks, task_executions)."""
