"""The standalone catalog of backups, jobs and schedules (SQLAlchemy)."""
