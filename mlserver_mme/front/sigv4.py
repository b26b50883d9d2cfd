"""Verifying AWS Signature Version 4 on SageMaker runtime requests.

The signature is recomputed with botocore's own signer (``SigV4Auth``) over the
request as received, and binds:

- the method, the raw path and the query;
- the headers listed in ``SignedHeaders``, which must include ``host`` and
  ``x-amz-date``, plus ``content-type`` and every ``x-amzn-sagemaker-*`` header
  the request carries (the target model among them), as boto3 and the AWS CLI
  sign them: such a header added after signing is refused;
- the body received: its sha256 always goes into the canonical request, whatever
  an ``x-amz-content-sha256`` header says (botocore would take that header's
  value, an S3 convention). When the header is sent it must be that hash;
  ``UNSIGNED-PAYLOAD`` and ``STREAMING-*`` are refused.

Headers outside those rules (``accept``, ``user-agent``, ...) are bound only if
the client signed them. Requests older than 15 minutes (or that far in the
future) are refused, as AWS does. Keys come from ``MLSERVER_MME_SIGV4_KEYS``
(``ACCESS_KEY_ID:SECRET`` pairs separated by commas) and/or a file of such pairs
(one or more per line, ``#`` comments allowed), for secrets an orchestrator mounts.
"""

import datetime
import hashlib
import hmac
import re
from typing import Dict, Mapping, Optional

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..config import MMESettings
from ..errors import SignatureRejected

MAX_SKEW = datetime.timedelta(minutes=15)
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[^/\s,]+)/"
    r"(?P<service>[^/\s,]+)/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9;\-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
# Headers that must be signed whenever the request carries them (boto3 signs them all).
ALWAYS_SIGNED = ("host", "x-amz-date")
SIGNED_IF_PRESENT = ("content-type",)
SIGNED_IF_PRESENT_PREFIXES = ("x-amzn-sagemaker-",)


def configured_keys(settings: MMESettings) -> Dict[str, str]:
    """The configured SigV4 keys, from the setting and the file (empty: no verification)."""
    keys = parse_keys(settings.sigv4_keys)
    if settings.sigv4_keys_file:
        with open(settings.sigv4_keys_file) as file:
            keys.update(parse_keys(file.read()))
    return keys


def parse_keys(text: str) -> Dict[str, str]:
    """``"AKID:SECRET,AKID2:SECRET2"`` (commas or new lines, ``#`` comments) -> {AKID: SECRET}."""
    keys = {}
    for line in text.splitlines():
        for pair in line.split("#", 1)[0].split(","):
            pair = pair.strip()
            if not pair:
                continue
            key_id, separator, secret = pair.partition(":")
            if not separator or not key_id.strip() or not secret.strip():
                raise ValueError("each SigV4 key must be written ACCESS_KEY_ID:SECRET")
            keys[key_id.strip()] = secret.strip()
    return keys


class SigV4Verifier:
    def __init__(self, keys: Mapping[str, str], service: str = "sagemaker"):
        self.keys = dict(keys)
        self.service = service

    def verify(
        self,
        method: str,
        raw_path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: Optional[datetime.datetime] = None,
    ) -> str:
        """Return the access key id that signed the request, or raise SignatureRejected."""
        authorization = headers.get("authorization")
        if not authorization:
            raise SignatureRejected("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTHORIZATION.match(authorization.strip())
        if match is None:
            raise SignatureRejected("IncompleteSignatureException", "The Authorization header is not a valid SigV4 one.")
        secret = self.keys.get(match["key"])
        if secret is None:
            raise SignatureRejected("UnrecognizedClientException", "The security token included in the request is invalid.")
        if match["service"] != self.service:
            raise SignatureRejected("InvalidSignatureException", f"Credential should be scoped to service '{self.service}'.")
        amz_date = headers.get("x-amz-date", "")
        try:
            signed_at = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise SignatureRejected("IncompleteSignatureException", "X-Amz-Date is missing or malformed.") from None
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if abs(now - signed_at) > MAX_SKEW:
            raise SignatureRejected(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is not within 15 minutes of the server's time.",
            )
        if amz_date[:8] != match["date"]:
            raise SignatureRejected("InvalidSignatureException", "The credential date does not match X-Amz-Date.")
        signed_names = match["headers"].split(";")
        must_sign = [*ALWAYS_SIGNED]
        must_sign += [n for n in headers if n in SIGNED_IF_PRESENT or n.startswith(SIGNED_IF_PRESENT_PREFIXES)]
        for name in must_sign:
            if name not in signed_names:
                raise SignatureRejected("InvalidSignatureException", f"The header '{name}' must be signed.")
        if any(name not in headers for name in signed_names):
            raise SignatureRejected("InvalidSignatureException", "A signed header is missing from the request.")
        body_hash = hashlib.sha256(body).hexdigest()
        content_sha256 = headers.get("x-amz-content-sha256")
        if content_sha256 is not None and content_sha256 != body_hash:
            if content_sha256 == "UNSIGNED-PAYLOAD" or content_sha256.startswith("STREAMING-"):
                message = "X-Amz-Content-SHA256 UNSIGNED-PAYLOAD or STREAMING-* is not accepted: sign the body."
            else:
                message = "X-Amz-Content-SHA256 is not the sha256 of the body received."
            raise SignatureRejected("InvalidSignatureException", message)
        url = f"http://{headers['host']}{raw_path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, data=body, headers={n: headers[n] for n in signed_names})
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(match["key"], secret), self.service, match["region"])
        # The canonical request ends with the payload hash; botocore takes it from X-Amz-Content-SHA256
        # when that header is there. Always put the hash of the body received there instead.
        canonical_request = signer.canonical_request(request).rpartition("\n")[0] + "\n" + body_hash
        expected = signer.signature(signer.string_to_sign(request, canonical_request), request)
        if not hmac.compare_digest(expected, match["signature"]):
            raise SignatureRejected(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return match["key"]
