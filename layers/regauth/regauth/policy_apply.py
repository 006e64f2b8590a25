"""Validate and apply a policy file, from S3 or from the command line, with an audit event.

The apply function runs `PolicyUploadHandler` for each `s3:ObjectCreated:*` record
of `policy.yaml` in the policy bucket. It writes the outcome beside the file as
`policy.yaml.result.json`: the applied version, or every problem with its line and
column. A rejected file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from regauth.audit import AuditSink, RequestContext, policy_event
from regauth.errors import PolicyError, RegauthError, StoreUnavailableError
from regauth.policy import compile_policy, policy_version
from regauth.policy_file import load_policy
from regauth.policy_store import PolicyStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

POLICY_KEY = "policy.yaml"
RESULT_SUFFIX = ".result.json"
# A policy of 10,000 users and 2,000 hosts is about 400 KB of YAML. Anything far
# larger is refused before it is parsed.
MAX_POLICY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """The result of one apply attempt, as written to `policy.yaml.result.json`."""

    status: str  # "applied", "unchanged", "rejected" or "failed"
    source: str
    content_hash: str = ""
    version: int | None = None
    previous: int | None = None
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "source": self.source,
            "content_hash": self.content_hash,
            "version": self.version,
            "previous": self.previous,
            "problems": list(self.problems),
        }


def apply_policy_text(
    policies: PolicyStore,
    audit: AuditSink,
    text: str,
    *,
    source: str,
    actor: str,
    context: RequestContext | None = None,
) -> ApplyOutcome:
    """Validate, compile and apply a policy file, and audit the outcome.

    A file with problems is rejected with every problem listed, and nothing changes.
    Raises PolicyConflictError or StoreUnavailableError when the apply itself fails,
    which also leaves the active version in place.
    """
    context = context or RequestContext()
    try:
        policy = load_policy(text, source=source)
    except PolicyError as exc:
        problems = tuple(str(problem) for problem in exc.problems)
        logger.warning("policy rejected", extra={"source": source, "problems": len(problems)})
        # An invalid file has no canonical form, so the SHA-256 of its text identifies it.
        file_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        audit.emit(
            policy_event(
                context, actor=actor, version="", content_hash=file_hash, problems=problems
            )
        )
        return ApplyOutcome("rejected", source, file_hash, problems=problems)

    compiled = compile_policy(policy)
    result = policies.apply(
        compiled, actor=actor, source=source, text=text, descriptions=policy.descriptions()
    )
    audit.emit(
        policy_event(
            context,
            actor=actor,
            version=str(result.version),
            content_hash=result.content_hash,
            changed=result.changed,
        )
    )
    status = "applied" if result.changed else "unchanged"
    return ApplyOutcome(status, source, result.content_hash, result.version, result.previous)


def content_hash_of(text: str, source: str) -> str:
    """Return the content hash a policy file would be applied under."""
    return policy_version(load_policy(text, source=source))


class PolicyUploadHandler:
    """Apply `policy.yaml` objects uploaded to the policy bucket."""

    def __init__(
        self,
        s3: S3Client,
        dynamodb: DynamoDBClient,
        table_name: str,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s3 = s3
        self._policies = PolicyStore(dynamodb, table_name, clock=clock)
        self._audit = audit
        self._clock = clock

    def handle_record(self, record: dict[str, Any], request_id: str = "") -> ApplyOutcome | None:
        """Apply the object of one S3 event record; ignore objects other than `policy.yaml`."""
        bucket = str(record["s3"]["bucket"]["name"])
        key = str(record["s3"]["object"]["key"])
        if key != POLICY_KEY:
            return None
        version_id = record["s3"]["object"].get("versionId")
        # S3 names the uploading principal, such as `AWS:AIDA...`, in the record.
        actor = str(record.get("userIdentity", {}).get("principalId") or "s3-upload")
        source = f"s3://{bucket}/{key}"
        if version_id:
            source += f"?versionId={version_id}"
        context = RequestContext(request_id=request_id, source_ip=_source_ip(record))

        body = self._read(bucket, key, version_id)
        text = _decode(body)
        if text is None:
            problem = f"{source}:1:1: the file is not UTF-8 text or is larger than 10 MB"
            file_hash = hashlib.sha256(body).hexdigest()
            self._audit.emit(
                policy_event(
                    context, actor=actor, version="", content_hash=file_hash, problems=[problem]
                )
            )
            outcome = ApplyOutcome("rejected", source, file_hash, problems=(problem,))
        else:
            try:
                outcome = apply_policy_text(
                    self._policies, self._audit, text, source=source, actor=actor, context=context
                )
            except RegauthError as exc:
                # The active version is unchanged. The error is raised again so that
                # Lambda retries the asynchronous invocation.
                failed = ApplyOutcome("failed", source, problems=(f"{type(exc).__name__}: {exc}",))
                self._write_result(bucket, key, failed)
                raise
        self._write_result(bucket, key, outcome)
        return outcome

    def _read(self, bucket: str, key: str, version_id: str | None) -> bytes:
        arguments: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            # The exact version that triggered the event, even if a newer one followed.
            arguments["VersionId"] = version_id
        try:
            response = self._s3.get_object(**arguments)
            # The first bytes past the limit are enough to reject the file unread.
            body: bytes = response["Body"].read(MAX_POLICY_BYTES + 1)
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailableError(f"S3 GetObject of {key} failed") from exc
        return body

    def _write_result(self, bucket: str, key: str, outcome: ApplyOutcome) -> None:
        result = outcome.to_json()
        result["written_at"] = datetime.fromtimestamp(self._clock(), UTC).isoformat()
        try:
            self._s3.put_object(
                Bucket=bucket,
                Key=key + RESULT_SUFFIX,
                Body=(json.dumps(result, indent=2) + "\n").encode("utf-8"),
                ContentType="application/json",
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailableError(f"S3 PutObject of {key}{RESULT_SUFFIX} failed") from exc


def _decode(body: bytes) -> str | None:
    if len(body) > MAX_POLICY_BYTES:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _source_ip(record: dict[str, Any]) -> str:
    return str(record.get("requestParameters", {}).get("sourceIPAddress", ""))
