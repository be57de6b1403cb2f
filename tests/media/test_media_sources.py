"""MediaRoot: folder and .tar sources, confinement to the root, size limit."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from videoneva.errors import MediaError
from videoneva.media.sources import MediaRoot


@pytest.fixture()
def tree(tmp_path) -> dict:
    """root/ with clip.mp4, sub/x.bin, a symlink out and a symlink in; secret.mp4 outside the root."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "clip.mp4").write_bytes(b"clip-bytes")
    (root / "sub" / "x.bin").write_bytes(b"x" * 100)
    (tmp_path / "secret.mp4").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.mp4", root / "link_out.mp4")
    os.symlink(tmp_path, root / "dir_out")
    os.symlink(root / "clip.mp4", root / "link_in.mp4")
    return {"root": root, "outside": tmp_path / "secret.mp4"}


def test_folder_reads_and_local_path(tree):
    r = MediaRoot(tree["root"])
    assert r.read_bytes("clip.mp4") == b"clip-bytes"
    assert r.read_bytes("sub/x.bin") == b"x" * 100
    assert r.read_bytes("sub/../clip.mp4") == b"clip-bytes"  # '..' that stays inside is fine
    assert r.read_bytes("link_in.mp4") == b"clip-bytes"      # a symlink inside the root is fine
    p = r.local_path("sub/x.bin")
    assert p == (tree["root"] / "sub" / "x.bin").resolve() and p.is_file()
    assert r.size("sub/x.bin") == 100


@pytest.mark.parametrize("rel,cause", [
    ("../secret.mp4", "escapes the media root"),
    ("sub/../../secret.mp4", "escapes the media root"),
    ("link_out.mp4", "outside the media root"),
    ("dir_out/secret.mp4", "outside the media root"),
])
def test_folder_escapes_are_refused(tree, rel, cause):
    r = MediaRoot(tree["root"])
    for call in (r.read_bytes, r.local_path):
        with pytest.raises(MediaError, match=cause) as e:
            call(rel)
        assert rel in str(e.value)


def test_folder_absolute_path_is_refused(tree):
    r = MediaRoot(tree["root"])
    for rel in (str(tree["outside"]), str(tree["root"] / "clip.mp4"), "C:\\x.mp4"):
        with pytest.raises(MediaError, match="absolute"):
            r.read_bytes(rel)


def test_folder_missing_directory_fifo_and_size(tree):
    r = MediaRoot(tree["root"])
    with pytest.raises(MediaError, match="nope.mp4: file not found"):
        r.read_bytes("nope.mp4")
    with pytest.raises(MediaError, match="is a directory"):
        r.read_bytes("sub")
    os.mkfifo(tree["root"] / "pipe.mp4")
    with pytest.raises(MediaError, match="not a regular file"):
        r.read_bytes("pipe.mp4")  # would block forever if opened
    with pytest.raises(MediaError, match="max_bytes=10"):
        r.read_bytes("sub/x.bin", max_bytes=10)
    with pytest.raises(MediaError, match="max_bytes=50"):
        MediaRoot(tree["root"], max_bytes=50).read_bytes("sub/x.bin")
    for bad in ("", ".", "a\x00b"):
        with pytest.raises(MediaError):
            r.read_bytes(bad)


def test_no_root_takes_paths_as_given(tree):
    r = MediaRoot(None)
    assert r.read_bytes(str(tree["outside"])) == b"secret"
    assert r.local_path(str(tree["outside"])) == tree["outside"]
    assert MediaRoot("").kind == "none"
    with pytest.raises(MediaError, match="not found"):
        r.read_bytes(str(tree["root"] / "missing.mp4"))


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


@pytest.fixture()
def tar_root(tmp_path) -> Path:
    path = tmp_path / "media.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "clip.mp4", b"clip-bytes")
        _add(tar, "./sub/x.bin", b"x" * 100)
        _add(tar, "../evil.mp4", b"evil")
        _add(tar, "/abs.mp4", b"abs")
        _add(tar, "link.mp4", kind=tarfile.SYMTYPE, link="../../etc/passwd")
        _add(tar, "dir", kind=tarfile.DIRTYPE)
    return path


def test_tar_reads_members_in_place(tar_root):
    before = sorted(os.listdir(tar_root.parent))
    r = MediaRoot(tar_root)
    assert r.kind == "tar"
    assert r.read_bytes("clip.mp4") == b"clip-bytes"
    assert r.read_bytes("./clip.mp4") == b"clip-bytes"
    assert r.read_bytes("sub/x.bin") == b"x" * 100
    assert r.local_path("clip.mp4") is None
    assert r.size("sub/x.bin") == 100
    assert r.members() == ["clip.mp4", "sub/x.bin"]  # unsafe names never indexed
    assert sorted(os.listdir(tar_root.parent)) == before  # nothing extracted


@pytest.mark.parametrize("rel,cause", [
    ("../evil.mp4", "escapes the media root"),
    ("/abs.mp4", "absolute"),
    ("evil.mp4", "no such member"),
    ("abs.mp4", "no such member"),
    ("link.mp4", "is a link"),
    ("dir", "is a directory"),
    ("missing.mp4", "no such member"),
])
def test_tar_refusals(tar_root, rel, cause):
    r = MediaRoot(tar_root)
    for call in (r.read_bytes, r.local_path):
        with pytest.raises(MediaError, match=cause):
            call(rel)


def test_tar_size_limit_and_truncated_tar(tar_root, tmp_path):
    with pytest.raises(MediaError, match="max_bytes=5"):
        MediaRoot(tar_root).read_bytes("sub/x.bin", max_bytes=5)
    r = MediaRoot(tar_root)
    offset = r._tar_index["sub/x.bin"].offset_data
    data = tar_root.read_bytes()
    short = tmp_path / "short.tar"
    short.write_bytes(data[: offset + 10])
    with pytest.raises(MediaError, match="short.tar: not a readable uncompressed tar"):
        MediaRoot(short)
    tar_root.write_bytes(data[: offset + 10])  # cut after indexing: the read sees it
    with pytest.raises(MediaError, match="truncated"):
        r.read_bytes("sub/x.bin")


def test_bad_roots(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        MediaRoot(tmp_path / "nope")
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(MediaError, match="neither a folder nor a .tar"):
        MediaRoot(tmp_path / "a.tar.gz")
    (tmp_path / "bad.tar").write_bytes(os.urandom(3000))
    with pytest.raises(MediaError, match="bad.tar"):
        MediaRoot(tmp_path / "bad.tar")
