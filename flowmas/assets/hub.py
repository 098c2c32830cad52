"""Fetch an asset from the Hugging Face Hub through the real ``huggingface_hub`` client.

The file lands in the Hub's own shared cache (``HF_HUB_CACHE``: deduplicated across projects, resumed by
the Hub client) and is then hardlinked, or copied when links are impossible, into our ``.part`` while it is
hashed. The resolved commit is taken from the snapshot path the client returns. ``HF_ENDPOINT`` and
``HF_HUB_CACHE`` are read at call time, because huggingface_hub reads them only once, at import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from flowmas.assets.manifest import AssetConfig, HubSourceConfig
from flowmas.assets.progress import Progress
from flowmas.assets.record import Fetched
from flowmas.assets.streaming import copy_and_hash, sha256_file
from flowmas.errors import AuthenticationError, DownloadError, SourceNotFoundError, TransientDownloadError


class HubSource:
    def fetch(self, asset: AssetConfig, part: Path, token: str | None, progress: Progress) -> Fetched:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors

        source = asset.source
        assert isinstance(source, HubSourceConfig)
        endpoint = os.environ.get("HF_ENDPOINT") or None
        cache_dir = os.environ.get("HF_HUB_CACHE") or None
        where = f"{source.repo_id}/{source.filename}@{source.revision}"
        try:
            path = Path(
                huggingface_hub.hf_hub_download(
                    source.repo_id,
                    source.filename,
                    repo_type=source.repo_type,
                    revision=source.revision,
                    token=token,
                    endpoint=endpoint,
                    cache_dir=cache_dir,
                    tqdm_class=None if asset.progress_report else _SilentTqdm,
                )
            )
        except hf_errors.GatedRepoError:
            raise AuthenticationError(
                f"Asset {asset.name!r}: {source.repo_id} is gated; accept its terms on the Hub and configure a "
                "token with access (HF_TOKEN or 'authentication.hf.token_env_var').",
                asset=asset.name,
            ) from None
        except hf_errors.RepositoryNotFoundError:
            raise SourceNotFoundError(
                f"Asset {asset.name!r}: repository {source.repo_id!r} ({source.repo_type}) was not found, or it is "
                "private and the token has no access; check 'repo_id' and the token.",
                asset=asset.name,
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise SourceNotFoundError(
                f"Asset {asset.name!r}: revision {source.revision!r} does not exist in {source.repo_id}; "
                "check 'revision' (a branch, tag or commit sha).",
                asset=asset.name,
            ) from None
        except hf_errors.EntryNotFoundError:
            raise SourceNotFoundError(
                f"Asset {asset.name!r}: {source.filename!r} is not in {source.repo_id}@{source.revision}; "
                "check 'filename' (its path inside the repository).",
                asset=asset.name,
            ) from None
        except hf_errors.LocalEntryNotFoundError as exc:
            raise TransientDownloadError(
                f"Asset {asset.name!r}: the Hub could not be reached for {where} and nothing is cached ({exc}).",
                asset=asset.name,
            ) from None
        except hf_errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            cls = TransientDownloadError if status is None or status >= 500 or status == 429 else DownloadError
            raise cls(f"Asset {asset.name!r}: the Hub answered {status} for {where}.", asset=asset.name,
                      status_code=status) from None
        except OSError as exc:  # connection errors after huggingface_hub's own retries
            raise TransientDownloadError(
                f"Asset {asset.name!r}: could not download {where}: {type(exc).__name__}.", asset=asset.name
            ) from None
        commit = _commit_of(path)
        size = path.stat().st_size
        progress.start(size, 0)
        part.unlink(missing_ok=True)
        try:
            os.link(path.resolve(), part)
            digest = sha256_file(part, progress.advance)
        except OSError:
            with open(path, "rb") as blob:
                digest, size = copy_and_hash(blob, part, progress.advance)
        return Fetched(sha256=digest, size=size, details={"commit": commit})


def _commit_of(path: Path) -> str | None:
    """``.../snapshots/<commit>/<filename>`` -> ``<commit>``."""
    parts = path.parts
    for index, part in enumerate(parts[:-1]):
        if part == "snapshots":
            return parts[index + 1]
    return None


class _SilentTqdm(tqdm):
    """Hugging Face's bar, switched off, for ``progress_report: false`` (its env switch is read at import)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
