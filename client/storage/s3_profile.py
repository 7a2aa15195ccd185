"""Whether S3 can be reached without botocore: the configurations whose credentials, endpoint and client settings
botocore would resolve to static values, read here the way botocore reads them. Anything else (roles, SSO,
credential processes, instance or container credentials, endpoint discovery, unknown settings) returns None and
`S3Storage` uses botocore, so the standard AWS credential chain keeps working."""
from __future__ import annotations

import configparser
import os
import re
from typing import Any, Dict, NamedTuple, Optional

from .s3_http import Credentials

# AWS_* variables that change nothing botocore would do differently from what the fast path does, given static
# credentials (those of instances, containers and web identities come after the environment's keys in the chain).
_ENV_ALWAYS_OK = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCOUNT_ID",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_DATA_PATH", "AWS_PAGER", "AWS_EXECUTION_ENV",
    "AWS_CA_BUNDLE",
}
_ENV_AFTER_STATIC_KEYS = ("AWS_EC2_METADATA_", "AWS_METADATA_SERVICE_", "AWS_CONTAINER_")
_ENV_AFTER_ENV_KEYS = {"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME"}
# Profile settings the fast path honours or that do not matter to it (retries are always set by our config).
_PROFILE_OK = {
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token", "region", "output",
    "retry_mode", "max_attempts",
}
_CLIENT_PARAMS_OK = {"endpoint_url", "verify", "region_name", "config"}
_CLIENT_CONFIG_OK = {"connect_timeout", "read_timeout", "retries", "max_pool_connections"}
_VIRTUAL_HOSTABLE_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class FastSettings(NamedTuple):
    endpoint_url: Optional[str]
    region: str
    credentials: Credentials
    verify: Any
    connect_timeout: float
    read_timeout: float
    max_attempts: int  # in all, the first one included


def _read_ini(path: str) -> Optional[configparser.RawConfigParser]:
    parser = configparser.RawConfigParser()
    try:
        parser.read([os.path.expandvars(os.path.expanduser(path))])
    except configparser.Error:
        return None
    return parser


def _profile(env: Dict[str, str], name: str) -> Optional[Dict[str, Dict[str, str]]]:
    """The profile's sections of the config and credentials files ({} when a file lacks it), or None when botocore
    would read them differently or fail (a named profile that does not exist, an unparsable file)."""
    config = _read_ini(env.get("AWS_CONFIG_FILE", "~/.aws/config"))
    credentials = _read_ini(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    if config is None or credentials is None:
        return None
    names = ("profile " + name, name) if name == "default" else ("profile " + name,)
    config_sections = [section for section in names if config.has_section(section)]
    if len(config_sections) > 1:
        return None
    found = {
        "config": dict(config.items(config_sections[0])) if config_sections else {},
        "credentials": dict(credentials.items(name)) if credentials.has_section(name) else {},
    }
    if name != "default" and not (config_sections or credentials.has_section(name)):
        return None
    return found


def fast_settings(bucket: str, params: Dict[str, Any], environ: Optional[Dict[str, str]] = None
                  ) -> Optional[FastSettings]:
    """What the fast path needs, when botocore with these `create_client` parameters would use static credentials
    and a known endpoint; else None."""
    env = dict(os.environ if environ is None else environ)
    env_keys = bool(env.get("AWS_ACCESS_KEY_ID"))  # botocore's EnvProvider ignores a secret without a key id
    for name in env:
        if name.startswith("AWS_") and not (
            name in _ENV_ALWAYS_OK or name.startswith(_ENV_AFTER_STATIC_KEYS)
            or (env_keys and name in _ENV_AFTER_ENV_KEYS)
        ):
            return None
    if set(params) - _CLIENT_PARAMS_OK:
        return None
    config = dict(params.get("config") or {})
    if set(config) - _CLIENT_CONFIG_OK:
        return None
    retries = dict(config.get("retries") or {})
    if retries.get("mode", "legacy") != "standard" or set(retries) - {"mode", "max_attempts", "total_max_attempts"}:
        return None
    profile = _profile(env, env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default")
    if profile is None:
        return None
    merged = dict(profile["config"], **profile["credentials"])  # as botocore's full_config merges them
    if set(merged) - _PROFILE_OK:
        return None

    if env_keys:  # botocore's EnvProvider comes first
        if not env.get("AWS_SECRET_ACCESS_KEY"):
            return None  # partial credentials: botocore's error
        token = env.get("AWS_SECURITY_TOKEN") or env.get("AWS_SESSION_TOKEN") or None
        credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], token)
    else:  # then the shared credentials file (the roles, SSO and web identity before it are excluded above)
        section = profile["credentials"]
        if not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
            return None
        token = section.get("aws_session_token") or section.get("aws_security_token") or None
        credentials = Credentials(section["aws_access_key_id"], section["aws_secret_access_key"], token)

    endpoint = params.get("endpoint_url")
    region = params.get("region_name") or env.get("AWS_DEFAULT_REGION") or merged.get("region")
    if endpoint:
        if not re.match(r"^https?://[^/?#@]+(/[^?#]*)?$", str(endpoint)):
            return None
        region = region or "us-east-1"
    elif not region or not re.match(r"^[a-z0-9-]+$", region) or not _VIRTUAL_HOSTABLE_BUCKET.match(bucket) \
            or bucket.endswith("--x-s3"):  # an S3 Express directory bucket: zonal endpoints, session auth
        return None
    # botocore's verify: the parameter, else its ca_bundle setting (AWS_CA_BUNDLE), else its default bundle.
    verify = params["verify"] if params.get("verify") is not None else env.get("AWS_CA_BUNDLE") or True
    attempts = retries.get("total_max_attempts") or int(retries.get("max_attempts", 2)) + 1
    return FastSettings(
        endpoint_url=endpoint, region=region, credentials=credentials, verify=verify,
        connect_timeout=float(config.get("connect_timeout", 60)), read_timeout=float(config.get("read_timeout", 60)),
        max_attempts=int(attempts),
    )
