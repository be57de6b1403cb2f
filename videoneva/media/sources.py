"""MediaRoot: read media by relative path from a folder or from inside a .tar, confined to that root.

The role of NeMo's TarOrFolderVideoLoader/TarOrFolderImageLoader: a root ending in `.tar` is
indexed by member name once and members are read in place (no extraction); otherwise paths are
joined to the folder. Unlike NeMo, a missing file is a MediaError (the caller reports it per
line), and a path may not leave the root: absolute paths, `..` and symlinks that resolve
outside the folder, and tar member names with `..` or a leading `/` are refused.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
from pathlib import Path
from typing import Optional, Union

from videoneva.errors import MediaError
from videoneva.media.settings import DEFAULT_MAX_BYTES

PathLike = Union[str, "os.PathLike[str]"]
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\x — absolute on Windows, refused everywhere


def _clean_rel(rel: object, where: str) -> str:
    """Validate a relative media path lexically; returns it normalised with '/' separators."""
    if isinstance(rel, os.PathLike):
        rel = os.fspath(rel)
    if not isinstance(rel, str) or not rel.strip():
        raise MediaError(f"media path must be a non-empty string, got {rel!r}")
    if "\x00" in rel:
        raise MediaError(f"media path {rel!r} contains a NUL byte")
    if rel.startswith(("/", "\\")) or _DRIVE.match(rel):
        raise MediaError(f"{rel}: absolute paths are not allowed; give a path relative to the media root {where}")
    # '\\' separates only on Windows; on POSIX it is an ordinary file-name character
    norm = posixpath.normpath(rel.replace("\\", "/") if os.sep == "\\" else rel)
    if norm == ".." or norm.startswith("../"):
        raise MediaError(f"{rel}: path escapes the media root {where} through '..'")
    if norm == ".":
        raise MediaError(f"{rel}: names the media root {where} itself, not a file")
    return norm


def _check_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise MediaError(f"{name}: file is {size} bytes, over the limit max_bytes={max_bytes}")


class MediaRoot:
    """Where relative media paths are resolved: a folder, a .tar file, or None (paths as given).

    Args:
        root: folder or `.tar` file; None or "" takes paths as given (absolute or relative to
            the working directory) with no confinement.
        max_bytes: default size limit for `read_bytes`.
    """

    def __init__(self, root: Optional[PathLike], max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self._tar_index: dict[str, tarfile.TarInfo] = {}
        if root is None or os.fspath(root) == "":
            self.kind, self.root, self._real = "none", None, None
            return
        self.root = Path(root).expanduser()
        if self.root.is_dir():
            self.kind, self._real = "folder", self.root.resolve()
        elif self.root.is_file() and self.root.suffix.lower() == ".tar":
            self.kind, self._real = "tar", self.root.resolve()
            self._index_tar()
        elif not self.root.exists():
            raise MediaError(f"media root {self.root} does not exist")
        else:
            raise MediaError(f"media root {self.root} is neither a folder nor a .tar file "
                             "(compressed tars cannot be read in place; unpack or re-tar without compression)")

    def __repr__(self) -> str:
        return f"MediaRoot({str(self.root) if self.root else None!r}, kind={self.kind!r})"

    # -- tar -------------------------------------------------------------------------------
    def _index_tar(self) -> None:
        # Reads only the member headers. Members whose names would escape the root are left out
        # of the index, so no request can reach them.
        try:
            with tarfile.open(self._real, mode="r:") as tar:  # "r:" = uncompressed: members are seekable
                members = tar.getmembers()
        except (tarfile.TarError, OSError) as e:
            raise MediaError(f"media root {self.root}: not a readable uncompressed tar ({e})") from None
        for m in members:
            name = posixpath.normpath(m.name)
            if name.startswith(("/", "../")) or name in ("..", "."):
                continue
            self._tar_index[name] = m  # a later member of the same name wins, as tar extraction does

    def _tar_member(self, rel: str) -> tarfile.TarInfo:
        norm = _clean_rel(rel, str(self.root))
        m = self._tar_index.get(norm)
        if m is None:
            raise MediaError(f"{rel}: no such member in {self.root}")
        if m.isdir():
            raise MediaError(f"{rel}: is a directory in {self.root}, not a media file")
        if m.issym() or m.islnk():
            raise MediaError(f"{rel}: is a link inside {self.root}; only regular members are read")
        if not m.isreg() or m.issparse():
            raise MediaError(f"{rel}: is not a regular (non-sparse) file member of {self.root}")
        return m

    # -- folder / as given -----------------------------------------------------------------
    def _file_path(self, rel: str) -> Path:
        """The real path of a regular file, confined to the folder root (symlinks resolved)."""
        if self.kind == "none":
            if isinstance(rel, os.PathLike):
                rel = os.fspath(rel)
            if not isinstance(rel, str) or not rel or "\x00" in rel:
                raise MediaError(f"media path must be a non-empty string without NUL bytes, got {rel!r}")
            path = Path(rel).expanduser()
        else:
            norm = _clean_rel(rel, str(self.root))
            path = Path(os.path.realpath(self._real / norm))
            if not path.is_relative_to(self._real):
                raise MediaError(f"{rel}: resolves to {path}, outside the media root {self.root} (symlink out of the root)")
        try:
            st = path.stat()
        except FileNotFoundError:
            where = f" under {self.root}" if self.root else ""
            raise MediaError(f"{rel}: file not found{where}") from None
        except OSError as e:
            raise MediaError(f"{rel}: cannot access ({e.strerror or e})") from None
        if stat.S_ISDIR(st.st_mode):
            raise MediaError(f"{rel}: is a directory, not a media file")
        if not stat.S_ISREG(st.st_mode):
            # FIFOs and devices would block or never end on read.
            raise MediaError(f"{rel}: is not a regular file")
        return path

    # -- public ----------------------------------------------------------------------------
    def local_path(self, rel: str) -> Optional[Path]:
        """A real, confined path to the file when it lives on the file system; None for tar members.

        Raises MediaError when the path escapes the root, is missing or is not a regular file.
        """
        if self.kind == "tar":
            self._tar_member(rel)  # same checks, so callers see the same errors for both kinds
            return None
        return self._file_path(rel)

    def size(self, rel: str) -> int:
        """Size in bytes of the file or tar member (with the same checks as read_bytes)."""
        if self.kind == "tar":
            return self._tar_member(rel).size
        return self._file_path(rel).stat().st_size

    def read_bytes(self, rel: str, max_bytes: Optional[int] = None) -> bytes:
        """The whole content of a media file or tar member.

        Args:
            rel: path relative to the root (a tar member name for a .tar root).
            max_bytes: size limit (default: the root's); larger files raise MediaError.
        """
        limit = self.max_bytes if max_bytes is None else int(max_bytes)
        if self.kind == "tar":
            m = self._tar_member(rel)
            _check_size(rel, m.size, limit)
            # A fresh handle per read: safe across threads and forked dataloader workers.
            with open(self._real, "rb") as f:
                f.seek(m.offset_data)
                data = f.read(m.size)
            if len(data) != m.size:
                raise MediaError(f"{rel}: tar member is truncated in {self.root} "
                                 f"(expected {m.size} bytes, read {len(data)})")
            return data
        path = self._file_path(rel)
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # +1: detects a file that grew past the limit after stat
        _check_size(rel, len(data), limit)
        return data

    def members(self) -> list[str]:
        """Names readable from a .tar root (empty for folders)."""
        return sorted(n for n, m in self._tar_index.items() if m.isreg())
