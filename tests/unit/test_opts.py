"""Options: every one is listed, documented and in the sample config."""
import configparser
import os
import re

from chunkbackup import opts

SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', 'etc',
                      'chunkbackup', 'chunkbackup.conf.sample')


def test_every_option_has_help():
    for group, options in opts.list_opts():
        for opt in options:
            assert opt.help and len(opt.help) > 20, (group, opt.name)


def test_sample_config_lists_every_option():
    """The committed sample is current: run 'tox -e genconfig' if not."""
    with open(SAMPLE) as f:
        text = f.read()
    sections = {}
    current = None
    for line in text.splitlines():
        header = re.match(r'^\[(.+)\]$', line)
        if header:
            current = sections.setdefault(header.group(1), set())
            continue
        option = re.match(r'^#?([a-z_0-9]+) = ', line)
        if option and current is not None:
            current.add(option.group(1))
    for group, options in opts.list_opts():
        for opt in options:
            assert opt.name in sections.get(group, ()), (
                '[%s] %s is missing from %s: run tox -e genconfig'
                % (group, opt.name, SAMPLE))
    configparser.ConfigParser(interpolation=None).read_string(
        text.replace('%%', '%'))


def test_secrets_are_secret():
    names = {'key', 'secret_key', 'connection', 'sse_customer_key',
             'password'}
    for group, options in opts.list_opts():
        for opt in options:
            if opt.name in names:
                assert opt.secret, (group, opt.name)


def test_option_modules_name_every_driver_group():
    """chunkbackup.drivers.OPTION_MODULES lists the options of every
    driver module (a new driver's options would be missing from
    start-up checks and the sample otherwise), without the client
    libraries.
    """
    import importlib
    import pkgutil
    import sys

    import chunkbackup.drivers

    listed = dict(opts.list_opts())
    for info in pkgutil.iter_modules(chunkbackup.drivers.__path__):
        module = importlib.import_module('chunkbackup.drivers.' + info.name)
        if hasattr(module, 'GROUP') and hasattr(module, 'OPTS'):
            assert module.GROUP in listed, module.__name__
            assert ({o.name for o in module.OPTS} <=
                    {o.name for o in listed[module.GROUP]}), module.__name__
    # The listed modules themselves stay light.
    for name in chunkbackup.drivers.OPTION_MODULES:
        source = sys.modules[name].__file__
        with open(source) as f:
            text = f.read()
        for heavy in ('import boto3', 'from google.cloud', 'swiftclient'):
            assert heavy not in text, (name, heavy)
