"""CastellanKeys' one-line errors, with castellan's API replaced by a mock.

The real thing, against a real Barbican, is in
tests/functional/test_keymanager.py.
"""
import sys
from unittest import mock

from castellan.common import exception as cexc
from castellan.common.objects import private_key
from castellan.common.objects import symmetric_key
from keystoneauth1 import exceptions as ks_exc
from oslo_config import cfg
import pytest

from chunkbackup.crypto import keymanager
from chunkbackup.crypto import keys
from chunkbackup import opts  # noqa: F401 (registers [chunkbackup])

CONF = cfg.CONF
ENDPOINT = 'http://127.0.0.1:9311'


@pytest.fixture
def api(monkeypatch):
    from castellan import key_manager
    fake = mock.Mock()
    monkeypatch.setattr(key_manager, 'API', lambda conf: fake)
    keymanager.CastellanKeys()  # registers castellan's options
    CONF.set_override('barbican_endpoint', ENDPOINT, 'barbican')
    CONF.set_override('master_key_id', 'k-1', 'chunkbackup')
    yield fake
    CONF.clear_override('barbican_endpoint', 'barbican')
    CONF.clear_override('master_key_id', 'chunkbackup')


def _wrapped(error):
    """As castellan raises: KeyManagerError inside the client's except."""
    try:
        raise error
    except Exception as e:
        try:
            raise cexc.KeyManagerError(reason=e)
        except cexc.KeyManagerError as wrapped:
            return wrapped


def _one_line(excinfo):
    text = str(excinfo.value)
    assert '\n' not in text
    return text


def test_get_returns_the_key_and_caches_it(api):
    material = bytes(range(32))
    api.get.return_value = symmetric_key.SymmetricKey('AES', 256, material)
    source = keymanager.CastellanKeys()
    master = source.current()
    assert master.key_id == 'k-1'
    data = b'd' * 32
    assert master.unwrap(master.wrap(data)) == data
    assert source.get('k-1') is master
    assert api.get.call_count == 1
    assert material.hex() not in repr(master)


def test_create_makes_an_aes_256_key(api):
    api.create_key.return_value = 'new-id'
    api.get.return_value = symmetric_key.SymmetricKey('AES', 256, b'k' * 32)
    master = keymanager.CastellanKeys().create()
    assert master.key_id == 'new-id'
    kwargs = api.create_key.call_args.kwargs
    assert (kwargs['algorithm'], kwargs['length']) == ('AES', 256)
    assert kwargs['name'] == keymanager.KEY_NAME


def test_missing_key(api):
    api.get.side_effect = cexc.ManagedObjectNotFoundError(uuid='k-1')
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get('k-1')
    assert _one_line(e).startswith(
        'master key k-1 is not in the key manager at %s; check' % ENDPOINT)


def test_unreachable(api):
    api.get.side_effect = _wrapped(ks_exc.ConnectFailure(
        'Unable to establish connection to %s' % ENDPOINT))
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get('k-1')
    text = _one_line(e)
    assert text.startswith('cannot reach the key manager at %s' % ENDPOINT)
    assert 'barbican_endpoint' in text


def test_auth_failure(api):
    api.create_key.side_effect = _wrapped(ks_exc.Unauthorized('bad token'))
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().create()
    assert 'refused the credentials' in _one_line(e)
    assert 'auth_type' in str(e.value)


def test_forbidden_without_context(api):
    api.get.side_effect = cexc.Forbidden()
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get('k-1')
    assert 'refused the credentials' in _one_line(e)


@pytest.mark.parametrize('key', [
    symmetric_key.SymmetricKey('AES', 128, b'k' * 16),
    symmetric_key.SymmetricKey('HMACSHA256', 256, b'k' * 32),
    private_key.PrivateKey('RSA', 2048, b'not a key'),
])
def test_not_an_aes_256_key(api, key):
    api.get.return_value = key
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get('k-1')
    text = _one_line(e)
    assert 'is not a 256-bit symmetric (AES) key' in text
    assert '6b6b' not in text and 'kkkk' not in text


def test_other_failure(api):
    api.get.side_effect = _wrapped(RuntimeError('boom'))
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys().get('k-1')
    assert _one_line(e).startswith('the key manager at %s failed (' % ENDPOINT)


def test_castellan_not_installed(monkeypatch):
    for name in list(sys.modules):
        if name == 'castellan' or name.startswith('castellan.'):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'castellan', None)
    with pytest.raises(keys.KeyUnavailable) as e:
        keymanager.CastellanKeys()
    assert _one_line(e) == keymanager._MISSING
    assert 'chunkbackup[keymanager]' in str(e.value)
