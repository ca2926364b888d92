"""The options of the Swift driver: declared, read and validated once."""
import dataclasses
from typing import Any, Optional, Tuple

from oslo_config import cfg

from chunkbackup.drivers import options
from chunkbackup import exception

CONF = cfg.CONF

GROUP = 'backup_swift'

OPTS = [
    cfg.StrOpt('auth_mode',
               default='single_user',
               choices=[('single_user', 'Log in with [backup_swift] user and '
                                        'key.'),
                        ('per_user', 'Use the token and the service catalog '
                                     'of the request (inside cinder-backup: '
                                     'backups go to the user\'s account).')],
               help='Whose credentials reach Swift. Cinder\'s default is '
                    'per_user; standalone use needs single_user.'),
    cfg.StrOpt('auth_url',
               help='Identity endpoint for single_user mode: the tempauth / '
                    'v1 URL (e.g. http://swift:8080/auth/v1.0) or the '
                    'Keystone v3 URL (e.g. https://keystone:5000/v3). '
                    'Unset means the identity endpoint of each request\'s '
                    'service catalog (keystone_catalog_info), as Cinder '
                    'does.'),
    cfg.StrOpt('keystone_catalog_info',
               default='identity:Identity Service:publicURL',
               help='single_user mode without auth_url: the catalog entry '
                    'of the identity service in the request\'s service '
                    'catalog, as <service_type>:<service_name>:'
                    '<endpoint_type> (region_name picks the region).'),
    cfg.StrOpt('auth_version',
               default='1',
               choices=[('1', 'Swift v1 auth (tempauth, swauth).'),
                        ('3', 'Keystone v3.')],
               help='Auth protocol of auth_url.'),
    cfg.StrOpt('user',
               help='User name for single_user mode (v1: account:user).'),
    cfg.StrOpt('key',
               secret=True,
               help='Key or password of user.'),
    cfg.StrOpt('project_name',
               help='Keystone v3 project to scope to.'),
    cfg.StrOpt('project_domain_name',
               help='Keystone v3 domain of project_name (e.g. Default).'),
    cfg.StrOpt('user_domain_name',
               help='Keystone v3 domain of user (e.g. Default).'),
    cfg.StrOpt('region_name',
               help='Region of the object-store endpoint to use, when the '
                    'service catalog has several.'),
    cfg.StrOpt('interface',
               default='public',
               choices=['public', 'internal', 'admin'],
               help='Which object-store endpoint of the Keystone catalog to '
                    'use (auth_version = 3).'),
    cfg.StrOpt('url',
               help='per_user mode: Swift URL to which the project id of '
                    'the request is appended (e.g. '
                    'http://swift:8080/v1/AUTH_). Unset means the endpoint '
                    'from the request\'s service catalog (catalog_info).'),
    cfg.StrOpt('catalog_info',
               default='object-store:swift:publicURL',
               help='per_user mode without url: the catalog entry to use, '
                    'as <service_type>:<service_name>:<endpoint_type>.'),
    cfg.BoolOpt('service_auth',
                default=False,
                help='Send an X-Service-Token header with every request, '
                     'made from the service credentials of cinder-backup\'s '
                     '[service_user] section (send_service_user_token = '
                     'true and its auth options), so a user token that '
                     'expires during a long backup is still accepted by '
                     'a Swift configured for service tokens. Needs '
                     'cinder-backup.'),
    cfg.StrOpt('container',
               default='volumebackups',
               help='Container for backups that do not name one.'),
    cfg.BoolOpt('create_container',
                default=True,
                help='Create a missing container. When false a missing '
                     'container is an error (for accounts where containers '
                     'are created by an administrator).'),
    cfg.StrOpt('storage_policy',
               help='Storage policy of the containers this driver creates. '
                    'An existing container keeps its own policy.'),
    options.object_size_opt(50 * options.MiB),
    cfg.StrOpt('availability_zone',
               default='nova',
               help='Availability zone written into object names '
                    '(az_<zone>), as Cinder does with '
                    'storage_availability_zone.'),
    cfg.StrOpt('ca_certificate_file',
               help='CA bundle to verify Swift and Keystone TLS '
                    'certificates. Unset means the system bundle.'),
    cfg.BoolOpt('insecure',
                default=False,
                help='Do not verify TLS certificates (tests only).'),
    cfg.FloatOpt('timeout',
                 default=60.0,
                 min=0.1,
                 help='Seconds to wait to connect to Swift or Keystone and '
                      'for each read of an answer.'),
]

CONF.register_opts(OPTS, group=GROUP)


@dataclasses.dataclass(frozen=True)
class SwiftOptions(options.DriverOptions):
    GROUP = GROUP

    auth_mode: str
    auth_url: Optional[str]
    auth_version: str
    user: Optional[str]
    key: Optional[str] = dataclasses.field(repr=False)
    project_name: Optional[str]
    project_domain_name: Optional[str]
    user_domain_name: Optional[str]
    region_name: Optional[str]
    interface: str
    url: Optional[str]
    keystone_catalog_info: str
    catalog_info: str
    service_auth: bool
    container: str
    create_container: bool
    storage_policy: Optional[str]
    availability_zone: str
    ca_certificate_file: Optional[str]
    insecure: bool
    timeout: float

    def validate(self) -> None:
        for name in ('catalog_info', 'keystone_catalog_info'):
            value = getattr(self, name)
            if len(value.split(':')) != 3:
                raise self.invalid(
                    '%s = %r must have the form '
                    '<service_type>:<service_name>:<endpoint_type>'
                    % (name, value))

    @property
    def catalog_entry(self) -> Tuple[str, ...]:
        """(service_type, service_name, endpoint_type) of catalog_info."""
        return tuple(self.catalog_info.split(':'))

    def check_credentials(self, auth_url_from_catalog: bool = False
                          ) -> None:
        """single_user mode needs these (auth_url unless a request's
        catalog gives it).
        """
        wanted = ['user', 'key'] if auth_url_from_catalog else [
            'auth_url', 'user', 'key']
        if self.auth_version == '3':
            wanted += ['project_name', 'project_domain_name',
                       'user_domain_name']
        missing = [name for name in wanted if not getattr(self, name)]
        if missing:
            raise exception.InvalidConfiguration(
                reason='[%s] auth_mode = single_user with auth_version = %s '
                       'needs %s' % (GROUP, self.auth_version,
                                     ', '.join(missing)))

    def catalog_auth_url(self, context: Any) -> str:
        """single_user mode without auth_url: the identity endpoint of the
        request's service catalog (keystone_catalog_info, region_name).
        """
        service_type, _name, endpoint_type = \
            self.keystone_catalog_info.split(':')
        url = _catalog_endpoint(context, service_type, endpoint_type,
                                self.region_name)
        if not url:
            raise exception.InvalidConfiguration(
                reason='[%s] auth_url is unset and the service catalog of '
                       'the request has no %s endpoint of type %s%s; set '
                       'auth_url or keystone_catalog_info' % (
                           GROUP, endpoint_type, service_type,
                           ' in region %s' % self.region_name
                           if self.region_name else ''))
        return url

    def per_user_url(self, context: Any) -> str:
        """per_user mode: the Swift URL for the request's project."""
        if self.url:
            project = getattr(context, 'project_id', None)
            if not project:
                raise self.invalid('auth_mode = per_user needs a request '
                                   'context with a project id')
            return '%s%s' % (self.url, project)
        service_type, _name, endpoint_type = self.catalog_entry
        region = self.region_name
        # Matched by type only, as Cinder does: service names vary.
        for entry in getattr(context, 'service_catalog', None) or []:
            if entry.get('type') != service_type:
                continue
            for endpoint in entry.get('endpoints') or []:
                if region and region not in (endpoint.get('region'),
                                             endpoint.get('region_id')):
                    continue
                if endpoint.get(endpoint_type):
                    return endpoint[endpoint_type]
        raise exception.InvalidConfiguration(
            reason='the service catalog of the request has no %s endpoint '
                   'of type %s%s; set [%s] url or catalog_info' % (
                       endpoint_type, service_type,
                       ' in region %s' % region if region else '', GROUP))


def _catalog_endpoint(context, service_type: str, endpoint_type: str,
                      region: Optional[str]) -> Optional[str]:
    """The endpoint of a type in the request's catalog, in the region."""
    for entry in getattr(context, 'service_catalog', None) or []:
        if entry.get('type') != service_type:
            continue
        for endpoint in entry.get('endpoints') or []:
            if region and region not in (endpoint.get('region'),
                                         endpoint.get('region_id')):
                continue
            if endpoint.get(endpoint_type):
                return endpoint[endpoint_type]
    return None
