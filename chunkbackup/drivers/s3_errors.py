"""How the S3 driver's failures are classified (storage.errors kinds)."""
from typing import Optional

from botocore import exceptions as boto_exc

from chunkbackup.drivers import s3_options
from chunkbackup import storage
from chunkbackup.storage import errors

GROUP = s3_options.GROUP

# Error codes that say the credentials (or the user's rights) are wrong.
_AUTH_CODES = frozenset((
    'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied',
    'InvalidToken', 'ExpiredToken', 'TokenRefreshRequired',
    'AuthorizationHeaderMalformed', 'InvalidSecurity', 'AllAccessDisabled',
    'AccountProblem', '401', '403'))
# Error codes worth another attempt later, whatever the HTTP status.
_TRANSIENT_CODES = frozenset((
    'SlowDown', 'RequestTimeout', 'Throttling', 'ThrottlingException',
    'ThrottledException', 'RequestThrottled', 'TooManyRequests',
    'RequestLimitExceeded', 'ServiceUnavailable', 'InternalError',
    'OperationAborted', 'BandwidthLimitExceeded', 'PriorRequestNotComplete',
    'RequestTimeoutException', 'BadDigest'))
_TRANSIENT_STATUSES = frozenset((408, 429))
# botocore failures of the connection or transfer (refused, reset, timed
# out, cut short); its SSLError is one too but is classified apart.
_TRANSIENT_BOTO_ERRORS = (
    boto_exc.ConnectionError, boto_exc.HTTPClientError,
    boto_exc.IncompleteReadError)
_CREDENTIAL_ERRORS = (
    boto_exc.NoCredentialsError, boto_exc.PartialCredentialsError,
    boto_exc.CredentialRetrievalError)


def error_code(exc: boto_exc.ClientError) -> str:
    return str(exc.response.get('Error', {}).get('Code', ''))


def http_status(exc: boto_exc.ClientError) -> Optional[int]:
    return exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode')


def classify(exc: BaseException,
             options: s3_options.S3Options) -> errors.Classification:
    """(kind, reason) of a failure of boto3's client."""
    if isinstance(exc, boto_exc.ClientError):
        return _classify_client_error(exc, options)
    if isinstance(exc, boto_exc.SSLError):
        # A certificate that fails verification fails the same way.
        return errors.FATAL, '%s; check [%s] ca_bundle (or verify)' % (
            errors.describe(exc), GROUP)
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return errors.AUTH, '%s; set [%s] access_key/secret_key' % (
            errors.describe(exc), GROUP)
    if isinstance(exc, _TRANSIENT_BOTO_ERRORS):
        return errors.TRANSIENT, None
    return storage.classify_default(exc)


def _auth_advice(options: s3_options.S3Options) -> str:
    advice = ('check [%s] access_key/secret_key (access key %s at %s) '
              'and that this user may use the bucket'
              % (GROUP, options.access_key or '(from boto3\'s chain)',
                 options.endpoint_url or 'AWS'))
    if options.sse_customer_key:
        advice += (', and that [%s] sse_customer_key is the key the '
                   'objects were written with' % GROUP)
    return advice


def _classify_client_error(e: boto_exc.ClientError,
                           options: s3_options.S3Options
                           ) -> errors.Classification:
    code = error_code(e)
    status = http_status(e)
    message = e.response.get('Error', {}).get('Message') or ''
    reason = '%s (HTTP %s)%s' % (code or 'error', status,
                                 ': ' + message if message else '')
    if code == 'RequestTimeTooSkewed':
        return errors.FATAL, (
            '%s; the clock of this host differs too much from the '
            'server\'s: synchronise it (NTP)' % reason)
    if code in _AUTH_CODES or status in (401, 403):
        return errors.AUTH, '%s; %s' % (reason, _auth_advice(options))
    if code == 'NoSuchBucket':
        return errors.CONTAINER_NOT_FOUND, (
            '%s at %s; check [%s] endpoint_url and the bucket the '
            'backup names' % (reason, options.endpoint_url or 'AWS',
                              GROUP))
    if code == 'NoSuchKey' or status == 404:
        return errors.NOT_FOUND, reason
    if code == 'BadDigest':
        return errors.TRANSIENT, (
            '%s; the body reached the server damaged (its MD5 differs '
            'from the Content-MD5 we sent)' % reason)
    if code == 'InvalidDigest':
        return errors.FATAL, (
            '%s; the server does not accept our Content-MD5 header: set '
            '[%s] send_content_md5 = False for it' % (reason, GROUP))
    if code == 'InvalidBucketName':
        return errors.FATAL, ('%s; not a bucket name this server '
                              'accepts: %s' % (reason,
                                               s3_options.BUCKET_ADVICE))
    if code == 'BucketAlreadyExists':
        return errors.FATAL, ('%s; the bucket name is taken by another '
                              'account: set [%s] bucket to another name'
                              % (reason, GROUP))
    if (code in _TRANSIENT_CODES or (status or 0) >= 500 or
            status in _TRANSIENT_STATUSES):
        return errors.TRANSIENT, reason
    return errors.FATAL, reason
