"""Where a sweep keeps its files: a local folder (also a mounted path every node sees), or a
storage URI that every node reaches (`s3://`, `gs://`, anything `pyarrow.fs` opens; the same
filesystem layer Ray Train and Tune use for their storage_path).

On a cluster the sweep's driver, its trial actors and Ray Train's workers run on different
machines, so nothing may pass through a path only one of them sees. A process works in a local
folder (`SweepStore.local`: the sweep folder itself when the output is local, else a private
temporary folder) and pushes what it wrote to the URI / pulls what another process wrote from
it. For a local output push and pull do nothing: local sweeps behave as they always did.

S3-compatible servers: pyarrow and boto3 read AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (and the
usual AWS_* credentials) from the environment of every process, so a job passes them in its
runtime env.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from trainables.errors import InputError


# A trial's small files (its model/ aside): what the driver and `undial pareto` read back.
TRIAL_FILES = ("status.json", "result.json", "metrics.json", "config.yaml", "train_result.json", "attempts.log")


def is_remote(output: str | Path) -> bool:
    """A URI other than a local path (file:// counts as local)."""
    text = str(output)
    return "://" in text and not text.startswith("file://")


def _fs_and_path(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, bad bucket name, missing credentials provider
        raise InputError(f"--output: {uri}: not a storage URI this machine can open "
                         f"({str(exc).splitlines()[0]})") from None


class SweepStore:
    """A sweep's files: `local` (a folder this process writes in) mirrored to `uri` (None when
    the sweep folder is local). Picklable: the filesystem is opened again in each process.
    `cleanup` removes `local` of a remote sweep (the store keeps everything)."""

    def __init__(self, output: str | Path, local: str | Path | None = None):
        text = str(output)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if is_remote(text):
            self.uri: str | None = text.rstrip("/")
            # The driver's folder is the same path on every run of the same sweep: Tune's restored
            # searcher reopens the Optuna SQLite file at the path it was pickled with.
            digest = hashlib.sha1(self.uri.encode()).hexdigest()[:12]
            self.local = Path(local) if local is not None else Path(tempfile.gettempdir()) / f"undial-sweep-{digest}"
            self.local.mkdir(parents=True, exist_ok=True)
            self._owns_local = True
        else:
            self.uri = None
            self.local = Path(text).resolve()
            self._owns_local = False
        self._fs = None
        self._root = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fs"] = None
        return state

    @property
    def remote(self) -> bool:
        return self.uri is not None

    @property
    def display(self) -> str:
        """Where the sweep lives, as the user named it."""
        return self.uri or str(self.local)

    def where(self, rel: str = "") -> str:
        """The URI (or local path) of `rel` inside the sweep: what Ray Train / Tune get as storage."""
        if self.uri is None:
            return str(self.local / rel) if rel else str(self.local)
        return f"{self.uri}/{rel}" if rel else self.uri

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._root = _fs_and_path(self.uri)
        return self._fs

    def _path(self, rel: str) -> str:
        self.fs  # noqa: B018 (opens the filesystem, sets _root)
        return f"{self._root.rstrip('/')}/{rel}" if rel else self._root.rstrip("/")

    # ---- queries on the store itself

    def exists(self, rel: str) -> bool:
        if self.uri is None:
            return (self.local / rel).exists()
        import pyarrow.fs

        return self.fs.get_file_info(self._path(rel)).type != pyarrow.fs.FileType.NotFound

    def listdir(self, rel: str) -> list[str]:
        """Names of the folders directly under `rel` ([] when it does not exist)."""
        if self.uri is None:
            base = self.local / rel
            return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        import pyarrow.fs

        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(rel), allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(Path(i.path).name for i in infos if i.type == pyarrow.fs.FileType.Directory)

    def is_empty(self) -> bool:
        if self.uri is None:
            return not self.local.exists() or not any(self.local.iterdir())
        import pyarrow.fs

        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(""), allow_not_found=True))
        except FileNotFoundError:
            return True
        return not infos

    # ---- moving files between `local` and the store

    def push(self, *rels: str) -> None:
        """Upload local/<rel> (a file or a folder) to the store; missing ones are skipped."""
        if self.uri is None:
            return
        import pyarrow.fs

        for rel in rels:
            src = self.local / rel
            if src.is_dir():
                self.fs.create_dir(self._path(rel), recursive=True)
                pyarrow.fs.copy_files(str(src), self._path(rel), source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=self.fs)
            elif src.is_file():
                parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
                if parent:
                    self.fs.create_dir(self._path(parent), recursive=True)
                # via a temporary name: a reader sees the old object or the new one
                with src.open("rb") as fh, self.fs.open_output_stream(self._path(rel)) as out:
                    shutil.copyfileobj(fh, out)

    def pull(self, *rels: str) -> None:
        """Download the store's <rel> (a file or a folder) to local/<rel>; missing ones are skipped."""
        if self.uri is None:
            return
        import pyarrow.fs

        for rel in rels:
            info = self.fs.get_file_info(self._path(rel))
            dst = self.local / rel
            if info.type == pyarrow.fs.FileType.Directory:
                dst.mkdir(parents=True, exist_ok=True)
                pyarrow.fs.copy_files(self._path(rel), str(dst), source_filesystem=self.fs,
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
            elif info.type == pyarrow.fs.FileType.File:
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.pull")
                with self.fs.open_input_stream(self._path(rel)) as fh, tmp.open("wb") as out:
                    shutil.copyfileobj(fh, out)
                tmp.replace(dst)

    def remove(self, rel: str = "") -> None:
        """Delete <rel> (the whole sweep for "") in the store and locally."""
        target = self.local / rel if rel else self.local
        if self.uri is not None:
            import pyarrow.fs

            path = self._path(rel)
            info = self.fs.get_file_info(path)
            if not rel:  # the sweep's prefix may be a bucket's root: empty it, never delete the bucket
                if info.type == pyarrow.fs.FileType.Directory:
                    self.fs.delete_dir_contents(path, missing_dir_ok=True)
            elif info.type == pyarrow.fs.FileType.Directory:
                self.fs.delete_dir(path)
            elif info.type == pyarrow.fs.FileType.File:
                self.fs.delete_file(path)
        shutil.rmtree(target, ignore_errors=True)

    def cleanup(self) -> None:
        """Remove the private local folder of a remote sweep (the store keeps everything)."""
        if self._owns_local:
            shutil.rmtree(self.local, ignore_errors=True)


def fetch_folder(uri: str, dst: str | Path) -> Path:
    """Copy the folder at `uri` (a storage URI or a local path) to the local folder `dst`."""
    dst = Path(dst)
    if not is_remote(uri):
        src = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not src.is_dir():
            raise InputError(f"{uri}: no such folder")
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return dst
    import pyarrow.fs

    fs, path = _fs_and_path(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise InputError(f"{uri}: no such folder in the store")
    dst.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(dst), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return dst
