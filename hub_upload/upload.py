"""Push a PruMerge Hub folder to the Hugging Face Hub, after validating it again.

One `create_commit` holds the whole variant, so the repo never shows a half-pushed model (as the
export never leaves a half-written folder), with a commit message and a target branch; a 7B variant
is about ten 2 GB shards, far from where `upload_large_folder` pays off. The commit lists exactly the
validated files, one by one (no `allow_patterns`: those are globs, and a file named `*` would let
hidden files such as `.env` through). Every file but the weights is read into memory between two
passing checks, compared after the second and pushed from memory, so what is pushed is what was
checked (the weights' headers are checked; their data cannot run code). An interrupted push is resumed by running the command again:
the Hub skips LFS files whose content it already holds.
The token comes from huggingface_hub's standard places (HF_TOKEN, or `hf auth login`); this
module never reads, prints or logs it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..errors import InvalidHubFolder, UsageError
from .validate import hidden_files, validate_hub_folder

WEIGHT_SUFFIX = ".safetensors"


def human_size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def upload_hub_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> list[Path]:
    """Validate `folder`, then create the repo (and branch) if needed and push the folder in one commit.

    With `dry_run`, print what would be pushed and touch nothing. `api` defaults to a fresh
    `HfApi()` (tests pass a recording stand-in). Returns the pushed (or listed) files.
    """
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id ({error}); pass NAME or ORG/NAME"
        ) from None
    files = validate_hub_folder(folder)
    contents = _small_file_contents(folder, files)
    if validate_hub_folder(folder) != files or _small_file_contents(folder, files) != contents:
        raise InvalidHubFolder(f"{folder} changed while it was being checked; run the upload again")
    total = sum((folder / path).stat().st_size for path in files)
    target = f"{repo_id}@{revision or 'main'} ({'private' if private else 'public'})"
    print(
        f"{'Would push' if dry_run else 'Pushing'} {len(files)} files ({human_size(total)}) from {folder} to {target}:"
    )
    for path in files:
        print(f"  {path.as_posix():<50} {human_size((folder / path).stat().st_size):>10}")
    hidden = hidden_files(folder)
    if hidden:
        print(f"Not pushed (hidden): {', '.join(path.as_posix() for path in hidden)}")
    if dry_run:
        print("Dry run: nothing was pushed.")
        return files

    api = api or HfApi()
    print(f"Authenticated as {api.whoami()['name']}")
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)
    operations = [
        CommitOperationAdd(
            path_in_repo=path.as_posix(),
            path_or_fileobj=contents[path] if path in contents else str(folder / path),
        )
        for path in files
    ]
    commit = api.create_commit(
        repo_id=repo_id,
        repo_type="model",
        operations=operations,
        revision=revision,
        commit_message=commit_message or f"Upload {folder.name}",
    )
    print(f"Pushed: {getattr(commit, 'commit_url', commit)}")
    return files


def _small_file_contents(folder: Path, files: list[Path]) -> dict[Path, bytes]:
    """The bytes of every file to push but the weights (code, configs, tokenizer, card)."""
    return {path: (folder / path).read_bytes() for path in files if path.suffix != WEIGHT_SUFFIX}
