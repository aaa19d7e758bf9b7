"""``--push-to-hub``: the exported folder uploaded to a Hugging Face hub repository with
huggingface_hub (the token from ``HF_TOKEN`` or ``hf auth login``; never printed). Every failure
is one line saying what to do; the export stays on disk either way."""

from __future__ import annotations

from pathlib import Path

from selftrain.export.write import ExportError


def check_repo(repo: str) -> None:
    """Refuse a malformed repository id or an offline hub before anything is exported."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ExportError(
            f"--push-to-hub {repo}: not a repository id (NAME or USER/NAME): {e}"
        ) from None
    if constants.HF_HUB_OFFLINE:
        raise ExportError(
            f"--push-to-hub {repo}: the hub is switched off here (HF_HUB_OFFLINE is set); "
            "export without --push-to-hub, then upload the folder where the hub is reachable"
        )


def push(folder: Path, repo: str, private: bool = False) -> str:
    """Upload ``folder`` to the model repository ``repo`` (created when missing); its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    later = f"the export is in {folder}; upload it later with: hf upload {repo} {folder}"
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo, folder_path=folder, commit_message="Upload a model exported by selftrain"
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        why = {
            401: "not logged in (set HF_TOKEN or run `hf auth login`)",
            403: "this token may not write to it (a write token, or your own namespace)",
        }.get(status, f"the hub answered {status}")
        raise ExportError(f"--push-to-hub {repo}: {why}; {later}") from None
    except LocalTokenNotFoundError:
        raise ExportError(
            f"--push-to-hub {repo}: not logged in (set HF_TOKEN or run `hf auth login`); {later}"
        ) from None
    except (OSError, ConnectionError) as e:  # offline, DNS, refused, timeouts
        raise ExportError(
            f"--push-to-hub {repo}: the hub is not reachable ({type(e).__name__}); {later}"
        ) from None
    except Exception as e:  # httpx's transport errors are not OSErrors
        if type(e).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise ExportError(
                f"--push-to-hub {repo}: the hub is not reachable ({type(e).__name__}); {later}"
            ) from None
        raise
    return str(url)
