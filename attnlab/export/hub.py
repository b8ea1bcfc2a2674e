"""Upload an exported folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExportError


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises for a failed or refused request: its HTTP library's error base (whichever
    library that is), OS-level network errors and invalid repository ids."""
    from huggingface_hub import errors

    return OSError, ValueError, getattr(errors, "HTTPError", OSError)


def _reason(exc: BaseException) -> str:
    """One line on why the push failed: the hub's own answer, or that the hub could not be reached."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    server = (getattr(exc, "server_message", None) or "").strip()
    if server and server not in line:
        line = f"{line}: {server.splitlines()[0]}"
    if type(exc).__module__.startswith("huggingface_hub") or isinstance(exc, ValueError):
        return line
    return f"the hub cannot be reached ({line})"


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create the model repository ``repo_id`` (private if asked; an existing one is reused as it is) and
    upload the folder into it; return the repository's URL. An ``ExportError`` with one line when the hub
    cannot be reached or refuses."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} is not an exported model folder: no config.json there")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload a model exported by attnlab")
    except _hub_errors() as exc:
        message = f"could not push {folder} to the Hugging Face Hub as {repo_id}: {_reason(exc)}"
        raise ExportError(message) from None
    return str(url)
