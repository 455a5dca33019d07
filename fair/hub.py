"""Uploads to the Hugging Face hub: a folder (an exported dataset, a trained model) into one repository.

    fair export RUN --format hf --push-to-hub you/svamp-fair        (gen/export.py)
    fair push-model checkpoints/svamp-smollm2-135m-mixed/final you/svamp-student   (train/card.py)

Private unless the user says public: a new repository is created private, and an existing public one is
refused without `public` (the upload would publish what the user meant to keep private). The token is
huggingface_hub's own: HF_TOKEN in the environment, else the one `hf auth login` saved. This module never
passes or prints it; it reads it only to blank it out of a failure's message (a proxy or server may echo a
request header), which is then one line naming the folder and the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fair.errors import FairError

RepoType = Literal["dataset", "model"]


def push_folder(folder: Path, repo: str, repo_type: RepoType, public: bool, message: str) -> str:
    """Upload every file of `folder` to the hub repository `repo` in one commit; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HTTPError,  # its HTTP stack's: a refused request and a failed connection
    )

    api = HfApi()
    where = f"{repo_type} repository {repo}"
    try:
        url = str(api.create_repo(repo, repo_type=repo_type, private=not public, exist_ok=True))
        private = api.repo_info(repo, repo_type=repo_type).private  # an existing repository keeps its own
        if not public and not private:
            raise FairError(f"the hub's {where} exists and is public: pass --public to upload {folder} to it")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type=repo_type, commit_message=message)
    except (HTTPError, OSError, ValueError) as e:  # ValueError: a malformed repo id
        raise FairError(f"uploading {folder} to the hub's {where} failed: {redact(str(e))}") from None
    print(f"uploaded {folder} to {url} ({'private' if private else 'public'})")
    return url


def redact(text: str) -> str:
    """`text` without the hub token (whole lines of a failure's message are kept: a token never is)."""
    from huggingface_hub import get_token

    token = get_token()
    text = " ".join(text.split())  # one line
    return text.replace(token, "[token]") if token else text
