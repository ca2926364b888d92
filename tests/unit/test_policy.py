"""The retention arithmetic, with restic's documented examples as cases."""
import datetime
import types

import pytest

from chunkbackup import policy

UTC = datetime.timezone.utc


def _b(name, when):
    return types.SimpleNamespace(id=name, created_at=when)


def _kept(decisions):
    return sorted(d.backup.id for d in decisions if d.action == policy.KEEP)


def test_keep_daily_one_per_day_with_a_snapshot():
    # restic's forum example: days without a backup do not count.
    backups = [_b('a1', datetime.datetime(2023, 5, 1, 8)),
               _b('a2', datetime.datetime(2023, 5, 2, 8)),
               _b('a3', datetime.datetime(2023, 5, 2, 11)),
               _b('a4', datetime.datetime(2023, 5, 4, 9)),
               _b('a5', datetime.datetime(2023, 5, 5, 10))]
    got = policy.apply(policy.Policy(keep_daily=4), backups, tz=UTC)
    assert _kept(got) == ['a1', 'a3', 'a4', 'a5']
    assert [d.backup.id for d in got] == ['a5', 'a4', 'a3', 'a2', 'a1']
    assert got[3].action == policy.REMOVE and got[3].reasons == []
    assert got[0].reasons == ['daily snapshot']


def test_daily_backups_for_years_documented_policy():
    # restic's docs: daily backups, --keep-daily 7 --keep-weekly 5
    # --keep-monthly 12 keeps the 7 newest dailies, then 4 more
    # last-day-of-the-weeks (7 dailies include a week) and 11 or 12
    # last-day-of-the-months.
    start = datetime.datetime(2020, 1, 1, 12)
    backups = [_b('d%04d' % i, start + datetime.timedelta(days=i))
               for i in range(800)]
    got = policy.apply(policy.Policy(keep_daily=7, keep_weekly=5,
                                     keep_monthly=12), backups, tz=UTC)
    kept = [d for d in got if d.action == policy.KEEP]
    daily = [d for d in kept if 'daily snapshot' in d.reasons]
    weekly = [d for d in kept if 'weekly snapshot' in d.reasons]
    weekly_only = [d for d in weekly if 'daily snapshot' not in d.reasons]
    monthly = [d for d in kept if 'monthly snapshot' in d.reasons]
    assert len(daily) == 7 and len(weekly) == 5 and len(monthly) == 12
    # The 7 dailies span one or two ISO weeks.
    daily_weeks = {d.backup.created_at.isocalendar()[:2] for d in daily}
    assert len(weekly_only) == 5 - len(daily_weeks)
    assert len(kept) in range(7 + 3 + 10, 7 + 4 + 12 + 1)
    # Every weekly keeper is the newest backup of its ISO week: a Sunday.
    assert all(d.backup.created_at.isoweekday() == 7 for d in weekly_only)


def test_keep_last():
    backups = [_b('b%d' % i, datetime.datetime(2024, 1, 1, i))
               for i in range(5)]
    got = policy.apply(policy.Policy(keep_last=3), backups, tz=UTC)
    assert _kept(got) == ['b2', 'b3', 'b4']
    assert all(d.reasons == ['last snapshot'] for d in got[:3])


def test_keep_hourly():
    t = datetime.datetime(2024, 1, 1, 10)
    backups = [_b('x1', t), _b('x2', t + datetime.timedelta(minutes=30)),
               _b('x3', t + datetime.timedelta(hours=1, minutes=5)),
               _b('x4', t + datetime.timedelta(hours=3))]
    got = policy.apply(policy.Policy(keep_hourly=2), backups, tz=UTC)
    assert _kept(got) == ['x3', 'x4']


def test_several_rules_are_all_named():
    t = datetime.datetime(2024, 3, 10, 10)
    backups = [_b('old', t - datetime.timedelta(days=40)), _b('new', t)]
    got = policy.apply(policy.Policy(keep_last=1, keep_daily=1,
                                     keep_monthly=2), backups, tz=UTC)
    assert got[0].reasons == ['last snapshot', 'daily snapshot',
                              'monthly snapshot']
    assert got[1].reasons == ['monthly snapshot']


def test_keep_within_is_relative_to_the_newest_backup():
    # restic: within the duration before the latest snapshot, not now.
    t = datetime.datetime(2019, 6, 1, 12)
    backups = [_b('n', t), _b('n-1d', t - datetime.timedelta(days=1)),
               _b('n-3d', t - datetime.timedelta(days=3)),
               _b('n-2d1h', t - datetime.timedelta(days=2, hours=1))]
    got = policy.apply(policy.Policy(
        keep_within=policy.Duration.parse('2d')), backups, tz=UTC)
    assert _kept(got) == ['n', 'n-1d']
    assert got[0].reasons == ['within 2d']
    got = policy.apply(policy.Policy(
        keep_within=policy.Duration.parse('2d2h')), backups, tz=UTC)
    assert _kept(got) == ['n', 'n-1d', 'n-2d1h']


def test_duration_months_normalise_as_restic():
    # Go's AddDate: 31 March minus a month is "31 February", 3 March.
    d = policy.Duration.parse('1m')
    assert d.before(datetime.datetime(2023, 3, 31, 5)) == \
        datetime.datetime(2023, 3, 3, 5)
    assert policy.Duration.parse('1y5m7d2h') == policy.Duration(1, 5, 7, 2)
    assert str(policy.Duration.parse('36h')) == '36h'
    for bad in ('', '5', '2w', '1d2y', 'h'):
        with pytest.raises(policy.PolicyError):
            policy.Duration.parse(bad)


def test_the_oldest_is_kept_when_a_rule_has_periods_left():
    # restic 0.17: too few days for --keep-daily 10: the oldest stays.
    t = datetime.datetime(2024, 1, 3, 9)
    backups = [_b('c', t), _b('b', t - datetime.timedelta(hours=1)),
               _b('a', t - datetime.timedelta(hours=2))]
    got = policy.apply(policy.Policy(keep_daily=10), backups, tz=UTC)
    assert _kept(got) == ['a', 'c']
    assert got[-1].reasons == ['oldest daily snapshot']
    # Enough periods: no extra.
    got = policy.apply(policy.Policy(keep_daily=1), backups, tz=UTC)
    assert _kept(got) == ['c']


def test_buckets_are_local_time():
    backups = [_b('late', datetime.datetime(2024, 1, 1, 23, 30)),
               _b('early', datetime.datetime(2024, 1, 2, 0, 30))]
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    # UTC: two days; UTC+2: one day (01:30 and 02:30 on 2 January).
    assert _kept(policy.apply(policy.Policy(keep_daily=5), backups,
                              tz=UTC)) == ['early', 'late']
    got = policy.apply(policy.Policy(keep_daily=1), backups, tz=plus2)
    assert _kept(got) == ['early']


def test_pinned_backups_are_kept():
    backups = [_b('b%d' % i, datetime.datetime(2024, 1, 1, i))
               for i in range(4)]
    got = policy.apply(policy.Policy(keep_last=1), backups,
                       pinned=lambda b: b.id == 'b0', tz=UTC)
    assert _kept(got) == ['b0', 'b3']
    assert got[-1].reasons == ['pinned']


def test_bad_counts_and_empty_policy():
    with pytest.raises(policy.PolicyError):
        policy.Policy(keep_daily=-1)
    assert policy.Policy().empty
    assert not policy.Policy(keep_last=1).empty
    p = policy.Policy(keep_daily=7, keep_within=policy.Duration.parse('1d'))
    assert policy.Policy.from_dict(p.to_dict()) == p
    assert p.describe() == '--keep-daily 7 --keep-within 1d'
    assert policy.apply(p, []) == []
