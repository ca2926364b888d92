"""Configuration of each driver against its real test server."""
import uuid


def store_lines(name, request, tmp_path=None):
    """The config lines of driver ``name`` (posix, swift, s3, gcs) on a
    fresh container or bucket of its session server.
    """
    bucket = 'cb-%s' % uuid.uuid4().hex[:12]
    if name == 'posix':
        lines = ['[backup_posix]']
        if tmp_path is not None:
            lines.append('path = %s' % (tmp_path / 'store'))
        return lines
    if name == 'swift':
        server = request.getfixturevalue('swift_server')
        return ['[backup_swift]', 'auth_mode = single_user',
                'auth_url = %s' % server.auth_url, 'auth_version = 1',
                'user = %s' % server.user, 'key = %s' % server.key,
                'container = %s' % bucket]
    if name == 's3':
        server = request.getfixturevalue('moto_server')
        return ['[backup_s3]', 'endpoint_url = %s' % server.endpoint,
                'access_key = %s' % server.access_key,
                'secret_key = %s' % server.secret_key,
                'region = %s' % server.region, 'addressing_style = path',
                'bucket = %s' % bucket]
    server = request.getfixturevalue('gcs_server')
    return ['[backup_google]', 'anonymous = true',
            'endpoint = %s' % server.endpoint,
            'project_id = %s' % server.project, 'bucket = %s' % bucket,
            'storage_class = STANDARD']
