"""moto's S3 server on 127.0.0.1: a lenient S3 endpoint for the S3 driver.

moto keeps its state in memory. By default it accepts any credentials; we
create an IAM user with an S3 policy and then switch on moto's IAM
authentication (``/moto-api/reset-auth``), so that requests are signed and
checked as on a real S3 and a wrong key is refused. moto does not check
Content-MD5; Swift's s3api is the strict second target. The server runs
from its own virtualenv (see ``server_venv``) in its own process group, and
only that group is stopped.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request

import boto3
from botocore import config as boto_config

from tests.functional import servers

PACKAGES = ['moto[s3,server]', 'flask', 'flask-cors']
START_TIMEOUT = 60.0
REGION = 'us-east-1'


@dataclasses.dataclass
class MotoServer:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    log_path: str
    data_dir: str


def _answers(endpoint: str) -> bool:
    """Whether the S3 API answers (ListBuckets), not just the socket."""
    try:
        with urllib.request.urlopen(endpoint + '/', timeout=2) as r:
            return b'ListAllMyBucketsResult' in r.read()
    except (OSError, urllib.error.URLError):
        return False


S3_POLICY = json.dumps({
    'Version': '2012-10-17',
    'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}],
})


def _enable_auth(endpoint: str, region: str):
    """Create a user allowed to use S3, then make moto check every request.

    Returns the user's (access key, secret key).
    """
    # moto does not authenticate yet: any key signs these.
    iam = boto3.session.Session().client(
        'iam', endpoint_url=endpoint, region_name=region,
        aws_access_key_id='bootstrap', aws_secret_access_key='bootstrap',
        config=boto_config.Config(retries={'total_max_attempts': 1}))
    iam.create_user(UserName='chunkbackup')
    key = iam.create_access_key(UserName='chunkbackup')['AccessKey']
    iam.put_user_policy(UserName='chunkbackup', PolicyName='s3-all',
                        PolicyDocument=S3_POLICY)
    # The body is the number of unauthenticated requests still allowed; a
    # form content type would make moto read an empty body.
    request = urllib.request.Request(
        endpoint + '/moto-api/reset-auth', data=b'0', method='POST',
        headers={'Content-Type': 'text/plain'})
    with urllib.request.urlopen(request, timeout=10) as r:
        r.read()
    return key['AccessKeyId'], key['SecretAccessKey']


@contextlib.contextmanager
def running_moto():
    """Start moto_server; yield a MotoServer; stop exactly what started."""
    bindir = servers.server_venv('moto', PACKAGES)
    data_dir = tempfile.mkdtemp(prefix='chunkbackup-moto-')
    log_path = os.path.join(data_dir, 'moto.log')
    tmp = os.path.join(data_dir, 'tmp')
    os.mkdir(tmp)
    port = servers.free_port()
    env = dict(os.environ)
    # moto spools large bodies to temporary files: keep them in our dir.
    env['TMPDIR'] = tmp
    proc = servers.start([os.path.join(bindir, 'moto_server'),
                          '-H', '127.0.0.1', '-p', str(port)],
                         log_path, env=env)
    endpoint = 'http://127.0.0.1:%d' % port
    try:
        servers.wait_for_port(port, proc, log_path, timeout=START_TIMEOUT)
        # The socket can accept before the WSGI app is ready.
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise servers.ServerError(
                    'moto_server on %s does not answer S3 requests; its '
                    'log:\n%s' % (endpoint, servers.tail(log_path)))
            time.sleep(0.1)
        try:
            access_key, secret_key = _enable_auth(endpoint, REGION)
        except Exception as e:
            raise servers.ServerError(
                'could not set up an authenticated user on moto_server at '
                '%s (%s); its log:\n%s'
                % (endpoint, e, servers.tail(log_path)))
        yield MotoServer(endpoint=endpoint, access_key=access_key,
                         secret_key=secret_key, region=REGION,
                         log_path=log_path, data_dir=data_dir)
    finally:
        servers.stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
