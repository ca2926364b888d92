"""The job queue in the catalog: the CLI enqueues, the service runs."""
from typing import Optional

import sqlalchemy as sa

from chunkbackup.catalog import models

QUEUED = 'queued'
RUNNING = 'running'
DONE = 'done'
FAILED = 'failed'
CANCELLED = 'cancelled'


def enqueue(session, kind: str, params: dict) -> models.Job:
    job = models.Job(kind=kind, params=params, status=QUEUED,
                     created_at=models.utcnow())
    session.add(job)
    session.commit()
    return job


def claim(session, owner: str) -> Optional[models.Job]:
    """Take the oldest queued job, atomically (one worker gets it)."""
    while True:
        job = session.scalars(
            sa.select(models.Job).where(models.Job.status == QUEUED)
            .order_by(models.Job.id).limit(1)).first()
        if job is None:
            session.commit()
            return None
        taken = session.execute(
            sa.update(models.Job)
            .where(models.Job.id == job.id, models.Job.status == QUEUED)
            .values(status=RUNNING, owner=owner,
                    started_at=models.utcnow())).rowcount
        session.commit()
        if taken:
            session.refresh(job)
            return job


def finish(session, job: models.Job, status: str, error: str = None,
           backup_id: str = None) -> None:
    job.status = status
    job.error = error
    job.finished_at = models.utcnow()
    if backup_id:
        job.backup_id = backup_id
    session.commit()
