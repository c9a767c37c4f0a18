"""deers.download against a local HTTP server: full download, resume, Range ignored, bad checksum, offline."""
import hashlib
import os
import re

import pytest

from deers.download import ChecksumError, DownloadError, cache_dir, download
from deers.errors import DeersError
from local_http_server import LocalServer, closed_port_url

DATA = os.urandom(3 * (1 << 20) + 12345)  # a bit over 3 chunks, so streaming takes several reads
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


def test_full_download_verifies_and_renames(tmp_path):
    dest = tmp_path / "sub" / "blob.bin"
    with LocalServer({"/blob.bin": DATA}) as server:
        out = download(server.url("/blob.bin"), dest, sha256=SHA, md5=MD5, timeout=5)
    assert out == dest and dest.read_bytes() == DATA
    assert not (tmp_path / "sub" / "blob.bin.part").exists()
    assert server.requests == [("/blob.bin", None)]


def test_existing_destination_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"already here")
    with LocalServer({"/blob.bin": DATA}) as server:
        assert download(server.url("/blob.bin"), dest) == dest
    assert server.requests == [] and dest.read_bytes() == b"already here"


def test_resumes_a_partial_file_with_range(tmp_path):
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(DATA[:1000])
    with LocalServer({"/blob.bin": DATA}) as server:
        download(server.url("/blob.bin"), dest, sha256=SHA, timeout=5)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/blob.bin", "bytes=1000-")]


def test_connection_dropped_midway_is_resumed(tmp_path):
    dest = tmp_path / "blob.bin"
    with LocalServer({"/blob.bin": DATA}, drop_after={"/blob.bin": 100_000}) as server:
        download(server.url("/blob.bin"), dest, md5=MD5, timeout=5)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=100000-")]


def test_server_that_ignores_range_restarts_from_scratch(tmp_path):
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes that would corrupt the file if kept")
    with LocalServer({"/blob.bin": DATA}, ignore_range={"/blob.bin"}) as server:
        download(server.url("/blob.bin"), dest, sha256=SHA, timeout=5)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/blob.bin", "bytes=47-")]


def test_partial_that_is_already_complete_is_kept(tmp_path):
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(DATA)
    with LocalServer({"/blob.bin": DATA}) as server:
        download(server.url("/blob.bin"), dest, sha256=SHA, timeout=5)
    assert dest.read_bytes() == DATA


def test_wrong_checksum_raises_and_leaves_nothing(tmp_path):
    dest = tmp_path / "blob.bin"
    wrong = "0" * 64
    with LocalServer({"/blob.bin": DATA}) as server:
        with pytest.raises(ChecksumError) as info:
            download(server.url("/blob.bin"), dest, sha256=wrong, timeout=5)
    message = str(info.value)
    assert "blob.bin" in message and wrong in message and SHA in message
    assert list(tmp_path.iterdir()) == []


def test_bad_mirror_falls_through_to_a_good_one(tmp_path):
    dest = tmp_path / "blob.bin"
    with LocalServer({"/good.bin": DATA, "/corrupt.bin": DATA[::-1]}) as server:
        urls = [closed_port_url(), server.url("/missing.bin"), server.url("/corrupt.bin"), server.url("/good.bin")]
        download(urls, dest, md5=MD5, timeout=5)
    assert dest.read_bytes() == DATA


def test_all_mirrors_failing_lists_every_url(tmp_path):
    dest = tmp_path / "blob.bin"
    with LocalServer({}) as server:
        urls = [closed_port_url("/a.bin"), server.url("/b.bin")]
        with pytest.raises(DownloadError) as info:
            download(urls, dest, timeout=5)
    message = str(info.value)
    assert all(url in message for url in urls)
    assert "HTTP 404" in message and "Connection" in message
    assert isinstance(info.value, DeersError) and isinstance(info.value, OSError)
    assert not dest.exists()


def test_content_check_rejects_before_rename(tmp_path):
    dest = tmp_path / "story.txt"

    def must_be_text(path):
        if b"<|endoftext|>" not in path.read_bytes():
            raise ValueError("no <|endoftext|> separator")

    with LocalServer({"/story.txt": b"not a story file"}) as server:
        with pytest.raises(DownloadError, match=re.escape("no <|endoftext|> separator")):
            download(server.url("/story.txt"), dest, check=must_be_text, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEERS_DATA_DIR", str(tmp_path))
    assert cache_dir("mnist") == tmp_path / "mnist"
    monkeypatch.delenv("DEERS_DATA_DIR")
    assert cache_dir("mnist").parts[-3:] == (".cache", "deers", "mnist")
