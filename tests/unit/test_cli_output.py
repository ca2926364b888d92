"""The CLI's pure parts: sizes, times, tables that fit, parsing, refs."""
import argparse
import datetime

import pytest

from chunkbackup.catalog import api
from chunkbackup.catalog import models
from chunkbackup.catalog import refs
from chunkbackup.cmd import cli
from chunkbackup.cmd import completion
from chunkbackup.cmd import output
from chunkbackup import operations

MiB = 2 ** 20
UTC = datetime.timezone.utc


@pytest.mark.parametrize('value,text', [
    (0, '0 B'), (1, '1 B'), (1023, '1023 B'), (1024, '1.0 KiB'),
    (1536, '1.5 KiB'), (64 * MiB, '64.0 MiB'), (MiB - 1, '1.0 MiB'),
    (3 * MiB + 4321, '3.0 MiB'), (2 ** 40, '1.0 TiB'),
    (5 * 2 ** 30 + 2 ** 29, '5.5 GiB'), (None, ''),
])
def test_human_size(value, text):
    assert output.human_size(value) == text


def test_human_rate_duration_fraction():
    assert output.human_rate(381.25 * MiB) == '381.2 MiB/s'
    assert output.human_duration(0.4213) == '0.42 s'
    assert output.human_duration(12.34) == '12.3 s'
    assert output.human_duration(245) == '4 min 05 s'
    assert output.human_duration(7380) == '2 h 03 min'
    assert output.human_fraction(0.125) == '12.5%'
    assert output.human_fraction(0.0001) == '<0.1%'
    assert output.human_fraction(0) == '0.0%'


def test_times_local_with_zone_and_iso_utc():
    moment = datetime.datetime(2026, 12, 3, 6, 14, 50, 123456)  # naive UTC
    cet = datetime.timezone(datetime.timedelta(hours=1), 'CET')
    assert output.local_time(moment, cet) == '2026-12-03 07:14:50 CET'
    assert output.iso_utc(moment) == '2026-12-03T06:14:50.123456Z'
    aware = moment.replace(tzinfo=cet)
    assert output.iso_utc(aware) == '2026-12-03T05:14:50.123456Z'
    unnamed = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert output.local_time(moment, unnamed).endswith(' +0530')


def test_time_column_puts_one_zone_in_the_title():
    cet = datetime.timezone(datetime.timedelta(hours=1), 'CET')
    times = [datetime.datetime(2026, 1, 1, 0, 0, 0), None]
    cells, zone = output.time_column(times, cet)
    assert cells == ['2026-01-01 01:00:00', ''] and zone == 'CET'


def test_time_column_with_two_zones_names_each():
    # Local time across a daylight-saving change: two zone names.
    import os
    import time
    old = os.environ.get('TZ')
    os.environ['TZ'] = 'Europe/Berlin'
    time.tzset()
    try:
        cells, zone = output.time_column([
            datetime.datetime(2026, 1, 1, 12), datetime.datetime(2026, 7, 1,
                                                                 12)])
    finally:
        if old is None:
            del os.environ['TZ']
        else:
            os.environ['TZ'] = old
        time.tzset()
    assert zone is None
    assert cells == ['2026-01-01 13:00:00 CET', '2026-07-01 14:00:00 CEST']


def test_shorten_keeps_the_end_of_paths_and_the_start_of_names():
    assert output.shorten('/dev/vg0/data', 9, 'end') == '\u2026vg0/data'
    assert output.shorten('a long name', 6, 'start') == 'a lon\u2026'
    assert output.shorten('short', 10) == 'short'


def _columns():
    return [output.Column('id', 'ID'),
            output.Column('path', 'Volume', shrink=3, minimum=12,
                          keep='end'),
            output.Column('name', 'Name', shrink=1, minimum=6),
            output.Column('size', 'Size', right=True)]


def test_tables_fit_the_width_by_cutting_shrinkable_columns():
    rows = [{'id': 'abcd1234', 'path': '/srv/' + 'x' * 80 + '/disk.img',
             'name': 'n' * 40, 'size': '64.0 MiB'}]
    lines = output.render_table(rows, _columns(), 60)
    assert all(len(line) <= 60 for line in lines), lines
    assert lines[1].startswith('abcd1234  \u2026')  # path cut at its start
    assert 'disk.img' in lines[1] and lines[1].endswith('64.0 MiB')
    # Without a limit nothing is cut.
    wide = output.render_table(rows, _columns(), None)
    assert rows[0]['path'] in wide[1] and rows[0]['name'] in wide[1]


def test_fit_never_goes_below_minimums():
    widths = output.fit_widths([8, 100, 50, 8], _columns(), 10)
    assert widths == [8, 12, 6, 8]


def test_fields_wrap_long_values():
    lines = output.render_fields([('Error', 'word ' * 40), ('ID', 'x')], 50)
    assert all(len(line) <= 50 for line in lines)
    assert len(lines) > 3 and lines[-1].split() == ['ID', 'x']


def test_short_ids_stay_unique():
    ids = ['abcdef12-0000', 'abcdef12-1111', '99999999-2222']
    assert cli.short_id_length(ids) == 10
    assert cli.short_id_length(['abcdef12-0000', 'bbbb']) == 8
    assert cli.short_id_length([]) == 8


def test_parse_when_relative_and_local():
    now = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert cli.parse_when('2h', now) == datetime.datetime(2026, 12, 3, 10)
    assert cli.parse_when('1w', now) == datetime.datetime(2026, 11, 26, 12)
    assert cli.parse_when('2026-12-01T10:00Z') == datetime.datetime(
        2026, 12, 1, 10)
    assert cli.parse_when('2026-12-01 10:00+01:00') == datetime.datetime(
        2026, 12, 1, 9)
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_when('yesterday')


def test_parse_and_show_intervals():
    assert cli.parse_interval('3600') == 3600
    assert cli.parse_interval('30m') == 1800
    assert cli.parse_interval('1d') == 86400
    for bad in ('0', 'soon', '-5'):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_interval(bad)
    assert cli.human_interval(3600) == '1h'
    assert cli.human_interval(90000) == '1d 1h'


@pytest.mark.parametrize('argv', [
    ['--format', 'json', '--debug', 'backup-list'],
    ['backup-list', '--format', 'json', '--debug'],
    ['--format', 'json', 'backup-list', '--debug'],
])
def test_global_options_before_or_after_the_command(argv):
    args = cli.build_parser().parse_args(argv)
    assert args.format == 'json' and args.debug is True


def test_a_command_without_the_option_keeps_the_default():
    args = cli.build_parser().parse_args(['backup-list'])
    assert args.format == 'table' and args.debug is False


def test_incremental_modes():
    def parse(argv):
        return cli.build_parser().parse_args(cli.spelled_for_argparse(argv))
    assert parse(['backup-create', 'v']).incremental is None
    assert parse(['backup-create', 'v', '--incremental']).incremental == \
        'auto'
    assert parse(['backup-create', 'v',
                  '--incremental=strict']).incremental == 'strict'
    # The flag before the volume never takes the volume for its value.
    for argv in (['backup-create', '--incremental', 'v'],
                 ['backup-create', '--incremental=strict', 'v']):
        args = parse(argv)
        assert args.incremental in ('auto', 'strict')
        assert 'v' in vars(args).values(), vars(args)


def test_every_positional_has_help():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions
              if isinstance(a, argparse._SubParsersAction)]
    missing = ['%s %s' % (name, a.dest)
               for name, p in sub.choices.items() for a in p._actions
               if not a.option_strings and not a.help]
    assert not missing


def test_completion_knows_every_command_and_its_options():
    table = completion.commands(cli.build_parser())
    assert 'backup-restore' in table and 'completion' in table
    assert '--force' in table['backup-restore']
    assert '--format' in table['backup-list'] and '--version' in table['']
    assert '--since' in table['backup-list']


# References -----------------------------------------------------------------

@pytest.fixture
def session(tmp_path):
    catalog = api.Catalog('sqlite:///%s' % (tmp_path / 'catalog.sqlite'))
    s = catalog.session()
    yield s
    s.close()
    catalog.dispose()


def _backup(session, backup_id, name=None, status='available',
            volume='/vol/a', minute=0, volume_id=None):
    record = models.Backup(
        id=backup_id, volume_id=volume_id or operations.volume_id_of(volume),
        volume_path=volume, status=status, display_name=name,
        driver='posix', size=1, size_bytes=MiB,
        created_at=datetime.datetime(2026, 12, 1, 0, minute))
    session.add(record)
    session.commit()
    return record


def test_refs_ids_prefixes_names_latest(session):
    a = _backup(session, 'aaaa1111-0000', name='nightly', minute=1)
    b = _backup(session, 'aaaa2222-0000', minute=2, volume='/vol/b')
    c = _backup(session, 'cccc3333-0000', status='error', minute=3)
    assert api.get_backup(session, a.id) is a
    assert api.get_backup(session, 'aaaa1') is a
    assert api.get_backup(session, 'nightly') is a
    assert api.get_backup(session, 'latest') is b  # c failed
    assert api.get_backup(session, 'latest:/vol/a') is a
    assert api.get_backup(session, 'latest:' + a.volume_id) is a
    assert api.get_backup(session, 'cccc') is c
    with pytest.raises(refs.Ambiguous) as e:
        api.get_backup(session, 'aaaa')
    assert a.id in e.value.msg and b.id in e.value.msg
    with pytest.raises(refs.NotFound) as e:
        api.get_backup(session, 'aaa')
    assert 'at least 4' in e.value.msg
    with pytest.raises(refs.NoLatest):
        api.get_backup(session, 'latest:/vol/none')
    # A prefix is a prefix, not a pattern.
    with pytest.raises(refs.NotFound):
        api.get_backup(session, 'aa%1')


def test_a_name_that_is_also_a_prefix_is_ambiguous(session):
    a = _backup(session, 'beef0000-0000')
    b = _backup(session, 'dddd0000-0000', name='beef')
    with pytest.raises(refs.Ambiguous) as e:
        api.get_backup(session, 'beef')
    assert a.id in e.value.msg and b.id in e.value.msg


def test_list_filters_volume_path_status_time_limit(session):
    a = _backup(session, 'a1', minute=1)
    b = _backup(session, 'b2', minute=2, status='error')
    c = _backup(session, 'c3', minute=3, volume='/vol/b')
    d = _backup(session, 'd4', minute=4, volume_id='custom')
    ids = lambda rows: [r.id for r in rows]  # noqa: E731
    by_path = api.list_backups(session, volume='/vol/a')
    assert ids(by_path) == [a.id, b.id, d.id]
    assert ids(api.list_backups(session, volume='custom')) == [d.id]
    assert ids(api.list_backups(session, statuses=['error'])) == [b.id]
    since = datetime.datetime(2026, 12, 1, 0, 2)
    assert ids(api.list_backups(session, since=since)) == [b.id, c.id, d.id]
    assert ids(api.list_backups(session, before=since)) == [a.id]
    assert ids(api.list_backups(session, limit=2)) == [c.id, d.id]


def test_optional_columns_go_when_nothing_else_fits_or_they_are_empty():
    columns = _columns() + [output.Column('verify', 'Verify',
                                          optional=True),
                            output.Column('note', 'Note', optional=True)]
    rows = [{'id': 'abcd1234', 'path': '/p', 'name': 'n',
             'size': '1.0 MiB', 'verify': 'passed', 'note': None}]
    wide = output.render_table(rows, columns, 100)
    assert wide[0].split() == ['ID', 'Volume', 'Name', 'Size', 'Verify']
    narrow = output.render_table(rows, columns, 35)
    assert 'Verify' not in narrow[0] and all(len(x) <= 35 for x in narrow)
