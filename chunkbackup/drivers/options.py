"""What the options of every driver share.

Each driver declares its options once (``OPTS`` in ``[backup_<store>]``)
and reads them into a typed, frozen dataclass, validated once, by
``from_conf``: a wrong value fails when the driver is made, with an
``InvalidConfiguration`` that names the option.
"""
import dataclasses
from typing import ClassVar, Type, TypeVar

from oslo_config import cfg

from chunkbackup import exception
from chunkbackup import opts

MiB = 2 ** 20

T = TypeVar('T', bound='DriverOptions')


def object_size_opt(default: int) -> cfg.IntOpt:
    """``object_size``, declared alike in every driver's group."""
    return cfg.IntOpt(
        'object_size',
        default=default,
        min=1,
        help='Largest data object in bytes; a multiple of [chunkbackup] '
             'sha_block_size, at most 1 GiB. Memory use grows with it '
             '(see [chunkbackup] objects_in_flight).')


@dataclasses.dataclass(frozen=True)
class DriverOptions:
    """Base of the drivers' options; fields are named as the options."""

    GROUP: ClassVar[str] = ''

    object_size: int

    @classmethod
    def from_conf(cls: Type[T], conf_group: cfg.ConfigOpts.GroupAttr) -> T:
        """Read and validate ``conf_group`` (e.g. ``CONF[GROUP]``)."""
        values = {}
        for field in dataclasses.fields(cls):
            try:
                values[field.name] = conf_group[field.name]
            except (cfg.ConfigFileValueError, ValueError) as e:
                raise exception.InvalidConfiguration(
                    reason=opts.value_error(cls.GROUP, field.name, e))
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ``self.invalid(...)`` for values that do not fit together.
        """

    def invalid(self, reason: str) -> exception.InvalidConfiguration:
        return exception.InvalidConfiguration(
            reason='[%s] %s' % (self.GROUP, reason))

    @property
    def object_size_option(self) -> str:
        return '[%s] object_size' % self.GROUP
