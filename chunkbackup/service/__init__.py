"""The ``chunkbackup-backup`` service: queued jobs, schedules, retention.

- :mod:`chunkbackup.service.schedules`: the schedules, from
  ``[schedule:<name>]`` sections and the catalog's ``schedules`` table, and
  which kind of backup each run makes.
- :mod:`chunkbackup.service.retention`: after each scheduled backup,
  deleting whole expired chains.
- :mod:`chunkbackup.service.runner`: ``BackupService``, the loop that
  claims due schedules and queued jobs and runs them, and the shutdown.
- :mod:`chunkbackup.service.metrics`: the Prometheus metrics.

Several services on several hosts can share one catalog: see
:mod:`chunkbackup.catalog.workers` (heartbeats, leases, takeovers).

This module holds the ``[backup_service]`` options and how long a shutdown
may take. Record states change only through
:mod:`chunkbackup.catalog.states`.
"""
from oslo_config import cfg
from oslo_log import log as logging

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

GROUP = 'backup_service'

# After the grace period, how long cancelled operations get to stop and
# remove what they wrote (the engine looks every cancel_check_interval).
CANCEL_WAIT = 30
# What oslo.service's own shutdown alarm must leave us on top of that.
SHUTDOWN_MARGIN = 10

OPTS = [
    cfg.StrOpt('backend',
               default='threading',
               choices=[
                   ('threading', 'Native threads (the default, and where '
                                 'oslo.service is taking its users); '
                                 'oslo.service runs the service in a '
                                 'cotyledon worker process (cotyledon and '
                                 'futurist come with chunkbackup). There '
                                 'SIGHUP restarts the worker gracefully '
                                 'instead of reloading in place.'),
                   ('eventlet', 'Green threads; the process is '
                                'monkey-patched. eventlet is deprecated '
                                'and warns so at start.')],
               help='oslo.service backend of chunkbackup-backup. Read once '
                    'at start (a reload does not change it).'),
    cfg.IntOpt('max_concurrent_operations',
               default=2,
               min=1,
               mutable=True,
               help='How many backups (queued jobs and scheduled backups '
                    'together) run at once. Each one uses the engine\'s own '
                    'threads and about objects_in_flight x 12 MiB of '
                    'memory, whatever the object size.'),
    cfg.FloatOpt('poll_interval',
                 default=5.0,
                 min=0.05,
                 mutable=True,
                 help='Seconds between looks at the job queue and the '
                      'schedules. A finished operation also starts the next '
                      'look at once. Schedules are [schedule:NAME] sections '
                      '(options volume, interval in seconds, full_every, '
                      'retain_full, and optionally container, volume_id, '
                      'enabled) and the catalog\'s schedules (chunkbackup '
                      'schedule-set).'),
    cfg.IntOpt('shutdown_grace_period',
               default=60,
               min=0,
               mutable=True,
               help='On SIGTERM, seconds that running operations get to '
                    'finish. Those still running are then cancelled: each '
                    'gets up to %d more seconds to stop and remove the '
                    'objects it wrote, and its backup ends in error. '
                    '[DEFAULT] graceful_shutdown_timeout is raised to fit '
                    'if it is shorter.' % CANCEL_WAIT),
    cfg.FloatOpt('lease_seconds',
                 default=30.0,
                 min=1.0,
                 help='How long a worker\'s hold on its running jobs, '
                      'backups, restores, deletes and volumes lasts '
                      'without renewal. Its heartbeat renews them every '
                      'third of this; when a worker (on any host sharing '
                      'the catalog) misses its heartbeats for longer, '
                      'another worker takes its work over: its backups end '
                      'error with their objects removed, its restores '
                      'release their backups, its jobs are re-queued. A '
                      'worker that finds its own lease lapsed stops the '
                      'operation. Keep it well above the catalog\'s '
                      'failover time and the hosts\' clock difference. '
                      'Read at start.'),
    cfg.IntOpt('job_attempts',
               default=3,
               min=1,
               mutable=True,
               help='How many times a queued job is run when its worker '
                    'stops (its lease expires) during the run; after the '
                    'last one it ends failed with the reason.'),
    cfg.PortOpt('metrics_port',
                help='Serve Prometheus metrics (operations, bytes, '
                     'durations, storage retries and errors, queue depth, '
                     'leases taken over, last successful backup per '
                     'schedule) at http://metrics_host:PORT/metrics. '
                     'Unset: no metrics. Each worker needs a port of its '
                     'own on a host. Read at start.'),
    cfg.HostAddressOpt('metrics_host',
                       default='0.0.0.0',
                       help='Address the metrics server listens on.'),
]

CONF.register_opts(OPTS, group=GROUP)


def ensure_shutdown_timeout(conf: cfg.ConfigOpts = CONF) -> None:
    """Make oslo.service's shutdown alarm leave time for our shutdown.

    oslo.service ends the process with status 1 when
    ``[DEFAULT] graceful_shutdown_timeout`` passes after SIGTERM; that must
    not cut the grace period and the cancellation short.
    """
    needed = (conf[GROUP].shutdown_grace_period + CANCEL_WAIT +
              SHUTDOWN_MARGIN)
    current = conf.graceful_shutdown_timeout
    if not current or current >= needed:
        return
    location = conf.get_location('graceful_shutdown_timeout')
    if location is None or not location.location.is_user_controlled:
        # oslo.service's default: ours follows from the grace period.
        conf.set_default('graceful_shutdown_timeout', needed)
        return
    LOG.warning('[DEFAULT] graceful_shutdown_timeout = %(cur)d is shorter '
                'than [%(g)s] shutdown_grace_period + %(c)d s of '
                'cancellation + %(m)d s; using %(new)d.',
                {'cur': current, 'g': GROUP, 'c': CANCEL_WAIT,
                 'm': SHUTDOWN_MARGIN, 'new': needed})
    conf.set_override('graceful_shutdown_timeout', needed)
