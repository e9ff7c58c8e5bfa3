"""Sharing a run through the Hugging Face Hub, and finding a delta wherever it lives.

A pushed repo (or a `push --local-dir` folder) holds exactly what a delta needs: `delta.safetensors`,
the resolved `recipe.yaml`, `data.json` (the class names), `summary.json` and the model card
(`README.md`). A SOURCE, for `load_delta`, `eval`, `predict` and `export`, is a run folder, a folder with
that layout, a delta file, or a Hub repo id (`owner/name`), downloaded through
huggingface_hub's cache (so it works offline once cached). Only those files are ever downloaded, and
none of them is unpickled: safetensors, YAML read with safe_load, JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .delta import DELTA_NAME
from .atomic import USER_ERRNOS, user_error
from .errors import UserError, first_line
from .modelcard import check_license
from .rundir import CARD, DATA, RECIPE, SUMMARY, card
from .outputs import check_output

HUB_FILES = (DELTA_NAME, RECIPE, DATA, SUMMARY, CARD)


def resolve(source: str | Path) -> Path:
    """A local path for SOURCE: the path itself when it exists, else the Hub repo's cached snapshot
    (downloaded when online). Raises UserError naming what was tried."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if text.count("/") > 1 or text.startswith((".", "/", "~")) or text.endswith(".safetensors"):
        raise UserError(f"no delta at {source}: no such run folder or file")
    try:
        check_repo_id(text)
    except UserError:
        raise UserError(f"no delta at {source}: no such run folder or file, nor a Hub repo id") from None
    return download(text)


def download(repo_id: str) -> Path:
    """The files of a pushed run (HUB_FILES only), through huggingface_hub's cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(HUB_FILES)))
    except LocalEntryNotFoundError:
        raise UserError(f"{repo_id} is neither a local path nor a Hub repo in the local cache, and the Hub "
                        "cannot be reached (offline mode, HF_HUB_OFFLINE=1, or no connection)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id} is neither a local path nor a Hub repo you can access") from None
    except Exception as e:  # network, permissions, invalid ids: one line, not a traceback
        raise UserError(f"cannot download {repo_id} from the Hub: {first_line(e)}") from None
    if not (folder / DELTA_NAME).is_file():
        raise UserError(f"Hub repo {repo_id} holds no {DELTA_NAME}: not a model pushed by partial_ft")
    return folder


def check_repo_id(repo_id: str) -> None:
    """A repo id the Hub accepts (owner/name), before anything is written or uploaded."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"repo id '{repo_id}': {first_line(e)}") from None


def stage(run_dir: str | Path, out: Path, repo_id: Optional[str] = None, license: Optional[str] = None) -> list[Path]:
    """Write HUB_FILES for the run in `run_dir` (a finished run folder or a pushed layout) into the
    existing folder `out`: copies of the delta, recipe and summary, the class names as data.json, and a
    model card whose loading instructions name `repo_id`, under `license` (a Hub license id). Returns the
    paths written."""
    run_dir = Path(run_dir)
    needed = [DELTA_NAME, RECIPE, SUMMARY, DATA]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if not run_dir.is_dir() or missing:
        raise UserError(f"{run_dir} is not a finished run folder (missing {', '.join(missing) or 'the folder'})")
    text = card(run_dir, repo_id, license)  # reads (and so checks) recipe, summary and class names
    for name in (DELTA_NAME, RECIPE, SUMMARY):
        shutil.copyfile(run_dir / name, out / name)
    # class names only: the run's data.json may name local paths and the carved split's row indices
    class_names = json.loads((run_dir / DATA).read_text())["class_names"]
    (out / DATA).write_text(json.dumps({"class_names": class_names}, indent=2) + "\n")
    (out / CARD).write_text(text)
    return [out / name for name in HUB_FILES]


def write_local(run_dir: str | Path, target: Path, repo_id: str, license: Optional[str] = None) -> Path:
    """push --local-dir: the Hub files in a new or empty folder, all or nothing (built in a temporary
    sibling, then renamed into place); never inside a run's own files or through a link."""
    check_output(target, "push --local-dir", [], [run_dir])
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise UserError(f"--local-dir {target} must be a new or empty folder")
    with tempfile.TemporaryDirectory() as staging:
        stage(run_dir, Path(staging), repo_id, license)  # every check passes before the target is touched
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".pft-"))
        except OSError as e:
            raise (user_error(e, target) if e.errno in USER_ERRNOS else e) from None
        try:
            for name in HUB_FILES:
                shutil.copyfile(Path(staging) / name, tmp / name)
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # as any new folder (mkdtemp makes private ones)
            os.replace(tmp, target)  # onto a missing or empty folder: the rename is the commit
        except OSError as e:
            raise (user_error(e, target) if e.errno in USER_ERRNOS else e) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def push(run_dir: str | Path, repo_id: str, private: bool = False, local_dir: Optional[str | Path] = None,
         license: Optional[str] = None) -> str:
    """Upload a run's delta, recipe, class names, summary and model card to the Hub repo `repo_id`
    (created when missing, private with `private`); with `local_dir`, write exactly those files there
    instead (a new or empty folder). `license` (a Hub license id) goes into the card. Returns the repo's
    URL or the folder."""
    check_repo_id(repo_id)
    check_license(license)
    if local_dir is not None:
        if private:
            raise UserError("--private applies to uploads; it means nothing with --local-dir")
        return str(write_local(run_dir, Path(local_dir), repo_id, license))
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        stage(run_dir, Path(tmp), repo_id, license)
        api = HfApi()
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model",
                              commit_message=f"partial_ft: upload {Path(run_dir).name}")
        except Exception as e:  # offline mode, no token, no permission: one line
            raise UserError(f"cannot push to {repo_id}: {first_line(e)}") from None
    return str(url)
