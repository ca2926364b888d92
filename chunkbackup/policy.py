"""Retention policies: which backups to keep, and by which rule (restic's).

Pure: backups in (anything with ``id`` and ``created_at``), a decision per
backup out. The rules mean what restic's ``forget`` options mean:

- ``keep_last N``: the N newest backups.
- ``keep_hourly/daily/weekly/monthly/yearly N``: walking from the newest
  backup to the oldest, the newest backup of each hour (day, ISO week,
  month, year) that has one, for the N newest such periods. Periods are
  those of local time.
- ``keep_within DURATION`` (``1y5m7d2h``: years, months, days, hours):
  every backup made within DURATION before the newest backup (not before
  now: an idle volume keeps its backups).
- When a period rule finds fewer periods than it may keep, the oldest
  backup is kept too (restic 0.17: "oldest daily snapshot").

A backup kept by several rules names them all. Pinned backups are always
kept ("pinned"). A policy with no rule removes nothing: ``Policy.empty``
is for callers to refuse it.
"""
import dataclasses
import datetime
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

KEEP = 'keep'
REMOVE = 'remove'

_DURATION = re.compile(r'^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$')


class PolicyError(ValueError):
    """A policy that cannot be applied (a bad count or duration)."""


@dataclasses.dataclass(frozen=True)
class Duration:
    """restic's ``--keep-within`` duration: years, months, days, hours."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> 'Duration':
        match = _DURATION.match((text or '').strip())
        if not text or not match or not any(match.groups()):
            raise PolicyError(
                'duration %r is not valid: use numbers with y (years), m '
                '(months), d (days) and h (hours), in that order, e.g. '
                '1y5m7d2h or 36h' % text)
        return cls(*(int(g or 0) for g in match.groups()))

    def __str__(self) -> str:
        return ''.join('%d%s' % (n, unit) for n, unit in (
            (self.years, 'y'), (self.months, 'm'), (self.days, 'd'),
            (self.hours, 'h')) if n) or '0h'

    def before(self, when: datetime.datetime) -> datetime.datetime:
        """``when`` minus this duration, as Go's AddDate normalises it."""
        month_index = when.year * 12 + (when.month - 1) - (
            self.years * 12 + self.months)
        year, month = divmod(month_index, 12)
        # Day overflow rolls into the next month (31 March - 1m = 3 March).
        first = when.replace(year=year, month=month + 1, day=1)
        shifted = first + datetime.timedelta(days=when.day - 1 - self.days)
        return shifted - datetime.timedelta(hours=self.hours)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What to keep; a count of 0 means the rule is not used."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: Optional[Duration] = None

    def __post_init__(self) -> None:
        for name in ('keep_last', 'keep_hourly', 'keep_daily', 'keep_weekly',
                     'keep_monthly', 'keep_yearly'):
            value = getattr(self, name)
            if value is None or value < 0:
                raise PolicyError('--%s must be 0 or more, not %s'
                                  % (name.replace('_', '-'), value))

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_hourly or self.keep_daily
                    or self.keep_weekly or self.keep_monthly
                    or self.keep_yearly or self.keep_within)

    def describe(self) -> str:
        parts = ['--%s %d' % (name.replace('_', '-'), getattr(self, name))
                 for name in ('keep_last', 'keep_hourly', 'keep_daily',
                              'keep_weekly', 'keep_monthly', 'keep_yearly')
                 if getattr(self, name)]
        if self.keep_within:
            parts.append('--keep-within %s' % self.keep_within)
        return ' '.join(parts) or '(no rule)'

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            name: getattr(self, name)
            for name in ('keep_last', 'keep_hourly', 'keep_daily',
                         'keep_weekly', 'keep_monthly', 'keep_yearly')}
        out['keep_within'] = str(self.keep_within) if self.keep_within \
            else None
        return out

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'Policy':
        within = values.get('keep_within')
        return cls(**{k: int(values.get(k) or 0) for k in (
            'keep_last', 'keep_hourly', 'keep_daily', 'keep_weekly',
            'keep_monthly', 'keep_yearly')},
            keep_within=Duration.parse(within) if within else None)


@dataclasses.dataclass
class Decision:
    """What a policy does with one backup, and why."""

    backup: Any
    action: str  # KEEP or REMOVE
    reasons: List[str]

    @property
    def reason(self) -> str:
        return ', '.join(self.reasons)


def _local(when: datetime.datetime,
           tz: Optional[datetime.tzinfo]) -> datetime.datetime:
    """A catalog time (naive UTC) as local time (or in ``tz``)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(tz)


Bucketer = Callable[[datetime.datetime, int], Tuple[int, ...]]
_PERIODS: List[Tuple[str, str, Bucketer]] = [
    ('keep_last', 'last', lambda t, n: (n,)),
    ('keep_hourly', 'hourly', lambda t, n: (t.year, t.month, t.day, t.hour)),
    ('keep_daily', 'daily', lambda t, n: (t.year, t.month, t.day)),
    ('keep_weekly', 'weekly', lambda t, n: tuple(t.isocalendar()[:2])),
    ('keep_monthly', 'monthly', lambda t, n: (t.year, t.month)),
    ('keep_yearly', 'yearly', lambda t, n: (t.year,)),
]


def apply(policy: Policy, backups: Sequence[Any],
          pinned: Callable[[Any], bool] = lambda b: False,
          tz: Optional[datetime.tzinfo] = None) -> List[Decision]:
    """A decision for every backup, newest first (see the module doc)."""
    ordered = sorted(backups, key=lambda b: (b.created_at, b.id),
                     reverse=True)
    if not ordered:
        return []
    times = [_local(b.created_at, tz) for b in ordered]
    counts = {name: getattr(policy, name) for name, _, _ in _PERIODS}
    last_value: Dict[str, Optional[Tuple[int, ...]]] = {
        name: None for name, _, _ in _PERIODS}
    limit = (policy.keep_within.before(times[0])
             if policy.keep_within else None)
    decisions = []
    for number, (backup, when) in enumerate(zip(ordered, times)):
        reasons = []
        if pinned(backup):
            reasons.append('pinned')
        if limit is not None and when > limit:
            reasons.append('within %s' % policy.keep_within)
        is_oldest = number == len(ordered) - 1
        for name, label, bucket in _PERIODS:
            if counts[name] <= 0:
                continue
            value = bucket(when, number)
            if value != last_value[name]:
                reasons.append('%s snapshot' % label)
            elif is_oldest:
                # The rule has periods left but no older backups: the
                # oldest is kept too (restic 0.17), to keep the history
                # as long as the rule asked for.
                reasons.append('oldest %s snapshot' % label)
            else:
                continue
            last_value[name] = value
            counts[name] -= 1
        decisions.append(Decision(backup, KEEP if reasons else REMOVE,
                                  reasons))
    return decisions
