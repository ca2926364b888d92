"""Options whose values a codec or memory cannot take fail at start-up,
in one line naming the option (issue 15, item 3)."""
from oslo_config import cfg
import pytest

from chunkbackup import compression
from chunkbackup.engine.options import EngineOptions
from chunkbackup import exception
from chunkbackup import opts

CONF = cfg.CONF
MiB = 2 ** 20


@pytest.mark.parametrize('algorithm,level', [
    ('zstd', 99), ('zstd', 23), ('zlib', 42), ('zlib', -1), ('gzip', 10),
    ('bz2', 0), ('bzip2', 10)])
def test_levels_a_codec_does_not_take_are_refused(algorithm, level):
    with pytest.raises(exception.InvalidConfiguration) as info:
        compression.Compressor(algorithm, level)
    assert ('[chunkbackup] compression_level = %d' % level
            in str(info.value)), info.value
    assert algorithm in str(info.value)
    with pytest.raises(exception.InvalidConfiguration):
        EngineOptions(object_size=MiB, compression_algorithm=algorithm,
                      compression_level=level)


@pytest.mark.parametrize('algorithm,level', [
    ('zstd', 22), ('zstd', -5), ('zstd', 1), ('zlib', 0), ('zlib', 9),
    ('bz2', 1), ('bz2', 9), ('none', 99)])
def test_levels_in_range_compress(algorithm, level):
    text = b'chunk of a volume ' * 20000
    label, body = compression.Compressor(algorithm, level).compress(text)
    assert compression.decompress(label, body, len(text)) == text


@pytest.mark.parametrize('size', [2 ** 30 + 32768, 4 * 2 ** 30,
                                  32 * 2 ** 30])
def test_object_size_has_an_upper_bound(size):
    with pytest.raises(exception.InvalidConfiguration) as info:
        EngineOptions(object_size=size, object_size_option='[backup_x] '
                                                           'object_size')
    assert '[backup_x] object_size = %d' % size in str(info.value)
    assert '1 GiB' in str(info.value)
    EngineOptions(object_size=2 ** 30)


@pytest.fixture
def overrides():
    done = []

    def set_(name, value, group):
        CONF.set_override(name, value, group)
        done.append((name, group))
    yield set_
    for name, group in done:
        CONF.clear_override(name, group)


def test_validate_checks_level_and_object_size_at_start(overrides):
    overrides('compression_algorithm', 'bz2', 'chunkbackup')
    overrides('compression_level', 0, 'chunkbackup')
    with pytest.raises(exception.InvalidConfiguration,
                       match=r'\[chunkbackup\] compression_level = 0 .*bz2'):
        opts.validate(CONF)
    overrides('compression_level', 9, 'chunkbackup')
    opts.validate(CONF)
    overrides('object_size', 4 * 2 ** 30, 'backup_posix')
    with pytest.raises(exception.InvalidConfiguration,
                       match=r'\[backup_posix\] object_size = 4294967296'):
        opts.validate(CONF)


def test_oslo_location_noise_is_left_out():
    error = ValueError(
        "Value for option object_size from LocationInfo(location=<Locations."
        "user: (4, True)>, detail='/etc/c.conf') is not valid: Should be "
        "greater than or equal to 1")
    line = opts.value_error('backup_posix', 'object_size', error)
    assert line == ('[backup_posix] object_size in /etc/c.conf is not '
                    'valid: should be greater than or equal to 1')
