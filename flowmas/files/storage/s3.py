"""``S3StorageManager``: a file store in an S3 bucket (or an S3-compatible one: MinIO, Ceph, moto).

    s3://<bucket>/<prefix>
    ├── secret                          32 random bytes, created once (PUT If-None-Match: *)
    ├── objects/<k>                     data objects: one PUT up to ``part_size``, else a multipart upload
    ├── meta/<k>.json                   metadata documents; the ETag is their version (If-Match)
    ├── expiry/<YYYYMMDDHHMM>/<k>.<ref> empty markers: the expiry index, one prefix per UTC minute
    └── sessions/<ref>/<k>              empty markers: the session index

A sweep lists ``expiry/`` with a delimiter (bucket prefixes only, in order, stopping at the first bucket
still running), then the objects of each ended bucket: requests proportional to what expired, never a
listing of the bucket, never a GET per file it does not delete. Listing a session reads its prefix only.

Large objects go up as a multipart upload of ``part_size`` parts, one part in flight while the next fills
(memory: about two parts); any failure or cancellation aborts the upload, so no part is left billed and
invisible; ``purge_incomplete`` aborts what a killed process left (uploads begun before its cutoff by
S3's ``Initiated``, never one this manager has in flight: moto reports a fixed ``Initiated``). Reads are
one ranged GET streamed in ``chunk_size`` pieces, one piece read ahead. Metadata changes after the upload
are compare-and-swaps on the ETag (``If-Match`` on PUT and DELETE); a store that ignores ``If-Match``
degrades to last-writer-wins.

boto3 is synchronous: every request runs in the manager's own thread pool (``max_workers``, matched by
the connection pool), never on the event loop. boto3 errors are translated once, here, into
``FileStorageError`` sentences (or ``FileServiceNotFoundError``); credentials are never logged, shown in
``repr`` or put in a message (any text from S3 is scrubbed of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from flowmas.errors import (
    ConfigurationError,
    FileServiceNotFoundError,
    FileStorageError,
    FileTooLargeError,
    TransientFileStorageError,
)
from flowmas.files.storage.base import (
    BUCKET_RE,
    DEFAULT_CHUNK_SIZE,
    KEY_RE,
    SECRET_BYTES,
    IndexEntry,
    Versioned,
    aiter_chunks,
    bucket_of,
    bucket_start,
    check_key,
    due_bucket,
    marker_name,
    parse_marker,
    too_large_message,
)
from flowmas.text import one_line, shorten

T = TypeVar("T")

MIN_PART_SIZE = 5 * 2**20
"""S3's smallest part (all but the last)."""
MAX_PART_SIZE = 5 * 2**30
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * 2**20
METADATA_MAX_BYTES = 16 * 2**20

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CHANGED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"} | _NOT_FOUND


class S3StorageManager:
    """A store in ``bucket`` under ``prefix``. Thread-safe; many processes may share one bucket and prefix."""

    def __init__(
        self,
        bucket: str | None = None,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        boto3_config: Mapping[str, Any] | None = None,
        bucket_name: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_workers: int = 8,
        addressing_style: str | None = None,
        client: Any = None,
    ) -> None:
        name = bucket or bucket_name
        if not name or not isinstance(name, str):
            raise ConfigurationError("The S3 file store needs a bucket (`bucket`, or SAM's `bucket_name`).")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigurationError(f"S3 part_size must be between {MIN_PART_SIZE:,} (5 MiB, S3's minimum) and "
                                     f"{MAX_PART_SIZE:,} bytes (5 GiB); got {part_size:,}.")
        if not 1 <= max_workers <= 256:
            raise ConfigurationError(f"S3 max_workers must be between 1 and 256; got {max_workers}.")
        if any(not ch.isprintable() for ch in prefix) or ".." in prefix.split("/"):
            raise ConfigurationError(f"S3 prefix {shorten(one_line(prefix), 60)!r} must be printable and must "
                                     "not contain '..'.")
        self.bucket = name
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.part_size = int(part_size)
        self.chunk_size = max(4096, int(chunk_size))
        self.stats: dict[str, int] = {"index_buckets_read": 0, "index_markers_read": 0, "list_requests": 0}
        session_kwargs = dict(boto3_config or {})
        for key, value in (("aws_access_key_id", aws_access_key_id), ("aws_secret_access_key", aws_secret_access_key),
                           ("aws_session_token", aws_session_token), ("region_name", region),
                           ("profile_name", profile_name)):
            if value is not None:
                session_kwargs[key] = value
        self._session_kwargs = session_kwargs
        self._secrets = [str(v) for k, v in session_kwargs.items()
                         if k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token") and v]
        self._addressing_style = addressing_style
        self._max_workers = max_workers
        self._client = client
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flowmas-files-s3")
        self._secret: bytes | None = None
        self._uploading: set[str] = set()
        """Upload ids of this manager's multipart uploads in flight: ``purge_incomplete`` never aborts them,
        whatever ``Initiated`` the store reports (a skewed clock; moto reports a fixed date)."""

    def __repr__(self) -> str:  # never the credentials
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3StorageManager('s3://{self.bucket}/{self.prefix}'{where})"

    # --- plumbing -------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s3: dict[str, Any] = {"addressing_style": self._addressing_style} if self._addressing_style else {}
            config = Config(signature_version="s3v4", s3=s3, retries={"mode": "standard", "max_attempts": 5},
                            max_pool_connections=self._max_workers * 2)
            try:
                self._client = boto3.session.Session(**self._session_kwargs).client(
                    "s3", endpoint_url=self.endpoint_url, config=config)
            except Exception as exc:  # noqa: BLE001 - botocore raises many kinds here; one sentence for all
                raise FileStorageError(f"Could not set up the S3 client for bucket {self.bucket!r}: "
                                       f"{self._scrub(str(exc))}. Check the S3 configuration.") from None
        return self._client

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _object(self, key: str) -> str:
        return self._key("objects", key)

    def _meta(self, key: str) -> str:
        return self._key("meta", f"{key}.json")

    def _expiry_marker(self, key: str, session: str, expires_at: float) -> str:
        return self._key("expiry", bucket_of(expires_at), marker_name(key, session))

    def _session_marker(self, key: str, session: str) -> str:
        return self._key("sessions", session, key)

    def _submit(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except (FileStorageError, FileServiceNotFoundError):
                raise
            except Exception as exc:  # noqa: BLE001 - boto3 raises many kinds: all become one sentence
                raise self._translate(exc, op) from None

        return self._pool.submit(run)

    async def _call(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self._submit(op, fn, *args, **kwargs))

    def _request(self, op: str, **kwargs: Any) -> Any:
        """One S3 request by operation name (``put_object``, ...), in the calling thread, errors translated."""
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        except FileStorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - boto3 raises many kinds: all become one sentence
            raise self._translate(exc, op) from None

    async def _ask(self, op: str, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self._pool.submit(self._request, op, **kwargs))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return shorten(one_line(text), 300)

    def _translate(self, exc: BaseException, op: str) -> FileStorageError:
        """The one place a boto3/botocore error becomes a sentence: what failed, where, what to do."""
        where = f"bucket {self.bucket!r}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            code = str(error.get("Code") or "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                at = f" at {self.endpoint_url}" if self.endpoint_url else ""
                message = f"The S3 bucket {self.bucket!r} does not exist{at}: create it or fix the bucket name."
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                message = (f"S3 refused the credentials for {where} ({code}): check the access key id, secret and "
                           "session token.")
            elif code in ("AccessDenied", "AllAccessDisabled") or status == 403:
                message = (f"S3 denied {op} in {where} ({code or 'HTTP 403'}): check the credentials' permissions "
                           "and the bucket policy.")
            elif code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout") or (status or 0) >= 500:
                return _TransientS3Error(
                    f"S3 {op} failed in {where}: {code or 'HTTP ' + str(status)} after retries; the service is "
                    "unavailable or throttling, try again later.", code, status)
            else:
                said = self._scrub(str(error.get("Message") or ""))
                message = f"S3 {op} failed in {where}: {code or 'error'} (HTTP {status})" + (
                    f": {said}." if said else ".")
            return _S3Error(message, code, status)
        name = type(exc).__name__
        if name == "NoCredentialsError" or name == "PartialCredentialsError":
            return FileStorageError(f"No usable AWS credentials for {where}: configure aws_access_key_id and "
                                    "aws_secret_access_key, or boto3's own chain (environment, ~/.aws, a role).")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
            return TransientFileStorageError(f"Cannot reach S3 for {where} ({name}): check the endpoint and the "
                                             "network; the operation can be retried.")
        return FileStorageError(f"S3 {op} failed in {where}: {name}: {self._scrub(str(exc))}.")

    # --- data ---------------------------------------------------------------------------------------------

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        check_key(key)
        target = self._object(key)
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        pending: Future[dict[str, Any]] | None = None
        try:
            async for chunk in aiter_chunks(chunks):
                if not chunk:
                    continue
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLargeError(too_large_message(max_bytes))
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        created = await self._ask("create_multipart_upload", Key=target)
                        upload_id = str(created["UploadId"])
                        self._uploading.add(upload_id)
                    body = bytes(buffer[:self.part_size])
                    del buffer[:self.part_size]
                    if pending is not None:
                        job, pending = pending, None
                        parts.append(await asyncio.wrap_future(job))  # one part in flight, the next filling
                    pending = self._pool.submit(self._upload_part, target, upload_id, len(parts) + 1, body)
            if upload_id is None:
                await self._ask("put_object", Key=target, Body=bytes(buffer))
                return size
            if pending is not None:
                job, pending = pending, None
                parts.append(await asyncio.wrap_future(job))
            if buffer:
                parts.append(await asyncio.wrap_future(
                    self._pool.submit(self._upload_part, target, upload_id, len(parts) + 1, bytes(buffer))))
                buffer.clear()
            await self._ask("complete_multipart_upload", Key=target, UploadId=upload_id,
                            MultipartUpload={"Parts": parts})
            self._uploading.discard(upload_id)
            upload_id = None
            return size
        except BaseException:
            if upload_id is not None:
                try:
                    await _settle(self._pool.submit(self._abort, target, upload_id, pending))
                finally:
                    self._uploading.discard(upload_id)
            raise

    def _upload_part(self, target: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        if number > MAX_PARTS:
            raise FileStorageError(
                f"The file needs more than {MAX_PARTS:,} parts of {self.part_size:,} bytes (S3's limit); nothing "
                "was stored. Raise the S3 part size (FLOWMAS_FILES_S3_PART_BYTES or config part_size).")
        answer = self._request("upload_part", Key=target, UploadId=upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _abort(self, target: str, upload_id: str, pending: Future[Any] | None) -> None:
        """Abort a multipart upload once its part in flight has landed (a part landing after would be kept)."""
        if pending is not None:
            with contextlib.suppress(BaseException):
                pending.result()
        with contextlib.suppress(FileStorageError):
            self._request("abort_multipart_upload", Key=target, UploadId=upload_id)

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        if start < 0 or (end is not None and end < start):
            return
        kwargs: dict[str, Any] = {"Key": self._object(key)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{end if end is not None else ''}"
        try:
            answer = await self._ask("get_object", **kwargs)
        except _S3Error as exc:
            if exc.code in _NOT_FOUND:
                raise FileServiceNotFoundError("The store has no data object for this key.") from None
            if exc.code == "InvalidRange" or exc.status == 416:
                return  # a range that starts past the end: nothing to read
            raise
        body = answer["Body"]
        ahead: Future[bytes] | None = self._submit("get_object", body.read, self.chunk_size)
        try:
            while ahead is not None:
                job, ahead = ahead, None
                data = await asyncio.wrap_future(job)
                if not data:
                    return
                ahead = self._submit("get_object", body.read, self.chunk_size)
                yield data
        finally:
            if ahead is not None:
                with contextlib.suppress(BaseException):
                    ahead.result()
            with contextlib.suppress(Exception):
                body.close()

    async def delete(self, key: str) -> bool:
        check_key(key)
        existed = await self._exists(self._meta(key)) or await self._exists(self._object(key))
        await self._ask("delete_object", Key=self._meta(key))
        await self._ask("delete_object", Key=self._object(key))
        return existed

    async def _exists(self, name: str) -> bool:
        try:
            await self._ask("head_object", Key=name)
            return True
        except _S3Error as exc:
            if exc.code in _NOT_FOUND:
                return False
            raise

    # --- metadata -----------------------------------------------------------------------------------------

    async def write_metadata(self, key: str, data: bytes, *, expected_version: str | None = None) -> bool:
        check_key(key)
        condition = {"IfMatch": expected_version} if expected_version is not None else {}
        try:
            await self._ask("put_object", Key=self._meta(key), Body=bytes(data), ContentType="application/json",
                            **condition)
            return True
        except _S3Error as exc:
            if expected_version is not None and exc.code in _CHANGED:
                return False
            raise

    async def read_metadata(self, key: str) -> bytes | None:
        found = await self.read_metadata_versioned(key)
        return found.data if found is not None else None

    async def read_metadata_versioned(self, key: str) -> Versioned | None:
        check_key(key)
        return await self._call("get_object", self._get_small, self._meta(key))

    def _get_small(self, name: str) -> Versioned | None:
        try:
            answer = self._request("get_object", Key=name)
        except _S3Error as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        body = answer["Body"]
        try:
            data = body.read(METADATA_MAX_BYTES + 1)
        finally:
            body.close()
        if len(data) > METADATA_MAX_BYTES:
            raise FileStorageError(f"S3 object {name!r} is larger than any metadata document this service writes; "
                                   "it is not one of ours.")
        return Versioned(data, str(answer["ETag"]))

    async def delete_metadata(self, key: str, *, expected_version: str | None = None) -> bool:
        check_key(key)
        if expected_version is None:
            existed = await self._exists(self._meta(key))
            await self._ask("delete_object", Key=self._meta(key))
            return existed
        try:
            await self._ask("delete_object", Key=self._meta(key), IfMatch=expected_version)
            return True
        except _S3Error as exc:
            if exc.code in _CHANGED:
                return False
            raise

    # --- indexes ------------------------------------------------------------------------------------------

    async def index_expiry(self, key: str, session: str, expires_at: float, previous: float | None = None) -> None:
        check_key(key)
        check_key(session, "session ref")
        jobs = [self._pool.submit(self._request, "put_object", Key=name, Body=b"")
                for name in (self._expiry_marker(key, session, expires_at), self._session_marker(key, session))]
        await asyncio.gather(*(asyncio.wrap_future(job) for job in jobs))
        if previous is not None and bucket_of(previous) != bucket_of(expires_at):
            await self._ask("delete_object", Key=self._expiry_marker(key, session, previous))

    async def unindex(self, key: str, session: str, expires_at: float) -> None:
        check_key(key)
        check_key(session, "session ref")
        await self._ask("delete_objects", Delete={"Quiet": True, "Objects": [
            {"Key": self._expiry_marker(key, session, expires_at)}, {"Key": self._session_marker(key, session)}]})

    def _list_page(self, **kwargs: Any) -> dict[str, Any]:
        self.stats["list_requests"] += 1
        return dict(self._request("list_objects_v2", **kwargs))

    async def _list(self, prefix: str, delimiter: str | None = None) -> AsyncGenerator[dict[str, Any], None]:
        kwargs: dict[str, Any] = {"Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = await self._call("list_objects_v2", self._list_page, **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def expired(self, now: float, *, limit: int | None = None) -> AsyncIterator[IndexEntry]:
        root = self._key("expiry") + "/"
        due = due_bucket(now)
        buckets: list[str] = []
        listing = self._list(root, "/")
        try:
            async for page in listing:
                for stray in page.get("Contents", []):
                    await self._ask("delete_object", Key=stray["Key"])
                    yield IndexEntry("", "", 0.0, "", problem=f"{_shown(stray['Key'])} is not a bucket of the "
                                     "expiry index; it was removed")
                ended = False
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(root):].rstrip("/")
                    if not BUCKET_RE.fullmatch(name):
                        yield IndexEntry("", "", 0.0, "", problem=f"{_shown(common['Prefix'])} is not a bucket of "
                                         "the expiry index; it was left in place (remove it by hand)")
                    elif name > due:
                        ended = True  # listed in order: every later bucket is still running
                        break
                    else:
                        buckets.append(name)
                if ended:
                    break
        finally:
            await listing.aclose()
        yielded = 0
        for bucket in buckets:
            start = bucket_start(bucket)
            self.stats["index_buckets_read"] += 1
            async for page in self._list(f"{root}{bucket}/"):
                contents = page.get("Contents", [])
                self.stats["index_markers_read"] += len(contents)
                for item in contents:
                    name = item["Key"][len(root) + len(bucket) + 1:]
                    parsed = parse_marker(name)
                    if parsed is None:
                        await self._ask("delete_object", Key=item["Key"])
                        yield IndexEntry("", "", start, bucket, problem=(
                            f"expiry/{bucket}/{_shown(name)} is not a marker of the expiry index; it was removed"))
                        continue
                    yield IndexEntry(parsed[0], parsed[1], start, bucket)
                    yielded += 1
                    if limit is not None and yielded >= limit:
                        return

    async def session_keys(self, session: str) -> AsyncIterator[str]:
        check_key(session, "session ref")
        root = self._key("sessions", session) + "/"
        async for page in self._list(root):
            for item in page.get("Contents", []):
                name = item["Key"][len(root):]
                if KEY_RE.fullmatch(name):
                    yield name

    # --- secret, leftovers, closing -----------------------------------------------------------------------

    async def get_secret(self) -> bytes:
        if self._secret is None:
            self._secret = await self._call("get_object", self._load_secret)
        return self._secret

    def _load_secret(self) -> bytes:
        import secrets

        name = self._key("secret")
        for _ in range(3):
            found = self._get_small(name)
            if found is not None:
                if len(found.data) != SECRET_BYTES:
                    raise FileStorageError(
                        f"The file store's secret s3://{self.bucket}/{name} is damaged ({len(found.data)} bytes "
                        f"instead of {SECRET_BYTES}). Delete it: a new one is made, and share URLs made before "
                        "stop working.")
                return found.data
            try:
                self._request("put_object", Key=name, Body=secrets.token_bytes(SECRET_BYTES), IfNoneMatch="*")
            except _S3Error as exc:
                if exc.code not in _CHANGED:
                    raise
        raise FileStorageError(f"The file store's secret s3://{self.bucket}/{name} could not be created.")

    async def purge_incomplete(self, older_than: float) -> int:
        return await self._call("list_multipart_uploads", self._purge, older_than)

    def _purge(self, older_than: float) -> int:
        aborted = 0
        kwargs: dict[str, Any] = {"Prefix": self._key("objects") + "/"}
        while True:
            page = self._request("list_multipart_uploads", **kwargs)
            for upload in page.get("Uploads", []):
                if upload["UploadId"] in self._uploading:
                    continue  # ours, in flight
                if upload["Initiated"].timestamp() < older_than:
                    with contextlib.suppress(FileStorageError):
                        self._request("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


class _S3Error(FileStorageError):
    """A translated S3 error that still knows its code, so the manager can tell "not found" from a failure."""

    def __init__(self, message: str, code: str, status: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class _TransientS3Error(_S3Error, TransientFileStorageError):
    """S3 throttled or failed on its side: retrying may help."""


async def _settle(job: Future[None]) -> None:
    """Wait for a cleanup job even through a second cancellation: a cancelled upload has been aborted by the
    time its task is done."""
    try:
        await asyncio.shield(asyncio.wrap_future(job))
    except asyncio.CancelledError:
        job.result()
        raise


def _shown(name: str) -> str:
    return shorten(one_line(name), 80)
