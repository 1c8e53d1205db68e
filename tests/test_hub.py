"""wsss_blocks.hub against a real HTTP server on 127.0.0.1 (stdlib http.server in a thread, the
``http_server`` fixture of tests/conftest.py): it serves files the tests write, honours ``Range`` unless told
not to, can drop the connection after a number of body bytes, and logs every request.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from wsss_blocks import hub
from wsss_blocks.hub import ChecksumError, DownloadError, OfflineError, download, verify_file


@pytest.fixture
def server(http_server):
    """The shared 127.0.0.1 file server of tests/conftest.py."""
    return http_server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for k in (hub.OFFLINE_ENV, hub.MIRROR_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))


def _payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 251 for i in range(n))


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_good_file_verified_and_cached(server, tmp_path):
    data = _payload(50_000)
    server.files["/w/model.pth"] = data
    dest = tmp_path / "cache" / "weights" / "model.pth"
    out = download(server.url + "/w/model.pth", dest, sha256=_sha(data), md5=hashlib.md5(data).hexdigest(),
                   size=len(data), progress=False)
    assert out == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("model.pth.part").exists()
    assert [(e["path"], e["range"], e["status"], e["sent"]) for e in server.log] == [
        ("/w/model.pth", None, 200, len(data))]
    # second call: verified from disk, no request
    download(server.url + "/w/model.pth", dest, sha256=_sha(data), progress=False)
    assert len(server.log) == 1
    # a torch.hub-style sha256 prefix is accepted
    assert verify_file(dest, sha256=_sha(data)[:8])["sha256"] == _sha(data)


def test_wrong_checksum_names_hashes_and_leaves_nothing(server, tmp_path):
    data = _payload(20_000)
    server.files["/w/bad.pth"] = data
    expected = _sha(b"the file the registry expects")
    dest = tmp_path / "cache" / "bad.pth"
    with pytest.raises(ChecksumError) as ei:
        download(server.url + "/w/bad.pth", dest, sha256=expected, progress=False)
    msg = str(ei.value)
    assert "bad.pth" in msg
    assert expected in msg
    assert _sha(data) in msg
    assert "deleted" in msg
    assert ei.value.expected == expected
    assert ei.value.actual == _sha(data)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bad.pth.lock"]  # no file, no .part
    # a wrong md5 (sources that publish only an md5) and a wrong prefix are refused too
    with pytest.raises(ChecksumError, match=f"expected md5 {'0' * 32}"):
        download(server.url + "/w/bad.pth", dest, md5="0" * 32, progress=False)
    with pytest.raises(ChecksumError, match="expected sha256 prefix deadbeef"):
        download(server.url + "/w/bad.pth", dest, sha256="deadbeef", progress=False)
    assert not dest.exists()
    assert not dest.with_name("bad.pth.part").exists()


def test_size_mismatch_is_refused_before_the_body(server, tmp_path):
    data = _payload(30_000)
    server.files["/w/x.bin"] = data
    with pytest.raises(ChecksumError, match="serves 30000 bytes, expected 12345"):
        download(server.url + "/w/x.bin", tmp_path / "x.bin", size=12345, progress=False)
    assert not (tmp_path / "x.bin").exists()
    assert not (tmp_path / "x.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    data = _payload(100_000, seed=1)
    server.files["/w/big.bin"] = data
    server.drop_after["/w/big.bin"] = 30_000
    dest = tmp_path / "big.bin"
    download(server.url + "/w/big.bin", dest, sha256=_sha(data), size=len(data), progress=False, retry_wait=0)
    assert dest.read_bytes() == data
    first, second = server.log
    assert (first["range"], first["status"], first["sent"]) == (None, 200, 30_000)
    assert (second["range"], second["status"], second["sent"]) == ("bytes=30000-", 206, 70_000)


def test_partial_file_of_an_earlier_process_is_resumed(server, tmp_path):
    data = _payload(64_000, seed=2)
    server.files["/w/r.bin"] = data
    dest = tmp_path / "r.bin"
    dest.with_name("r.bin.part").write_bytes(data[:40_000])  # left by a killed process
    download(server.url + "/w/r.bin", dest, sha256=_sha(data), progress=False)
    assert dest.read_bytes() == data
    assert [(e["range"], e["status"], e["sent"]) for e in server.log] == [("bytes=40000-", 206, 24_000)]


def test_server_without_range_support_restarts(server, tmp_path):
    data = _payload(50_000, seed=3)
    server.files["/w/n.bin"] = data
    server.no_range.add("/w/n.bin")
    server.drop_after["/w/n.bin"] = 10_000
    dest = tmp_path / "n.bin"
    download(server.url + "/w/n.bin", dest, sha256=_sha(data), progress=False, retry_wait=0)
    assert dest.read_bytes() == data
    first, second = server.log
    assert (first["status"], first["sent"]) == (200, 10_000)
    assert second["range"] == "bytes=10000-"
    assert (second["status"], second["sent"]) == (200, 50_000)


def test_stale_partial_file_is_discarded_after_a_hash_failure(server, tmp_path):
    data = _payload(40_000, seed=4)
    server.files["/w/s.bin"] = data
    dest = tmp_path / "s.bin"
    dest.with_name("s.bin.part").write_bytes(b"\xff" * 10_000)  # bytes of some other file
    download(server.url + "/w/s.bin", dest, sha256=_sha(data), progress=False)
    assert dest.read_bytes() == data
    assert [(e["range"], e["status"]) for e in server.log] == [("bytes=10000-", 206), (None, 200)]


def test_offline_mode_forbids_network(server, tmp_path, monkeypatch):
    data = _payload(1000)
    server.files["/w/o.bin"] = data
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    dest = tmp_path / "o.bin"
    with pytest.raises(OfflineError) as ei:
        download(server.url + "/w/o.bin", dest, sha256=_sha(data), progress=False)
    msg = str(ei.value)
    assert str(dest) in msg
    assert "WSSS_BLOCKS_OFFLINE=1" in msg
    assert server.url + "/w/o.bin" in msg
    assert server.log == []
    dest.write_bytes(data)  # placed by hand: accepted offline after verification
    assert download(server.url + "/w/o.bin", dest, sha256=_sha(data), progress=False) == dest
    assert server.log == []
    assert hub.is_offline()
    monkeypatch.setenv(hub.OFFLINE_ENV, "0")
    assert not hub.is_offline()


def test_mirror_variable_is_tried_first(server, tmp_path, monkeypatch):
    data = _payload(5000, seed=5)
    server.files["/mirror/weights-1234.pth"] = data
    server.files["/orig/weights-1234.pth"] = data
    monkeypatch.setenv(hub.MIRROR_ENV, server.url + "/mirror/")
    dest = tmp_path / "weights-1234.pth"
    download(server.url + "/orig/weights-1234.pth", dest, sha256=_sha(data), progress=False)
    assert [e["path"] for e in server.log] == ["/mirror/weights-1234.pth"]
    # a mirror without the file: the original host is still tried
    dest2 = tmp_path / "other.pth"
    server.files["/orig/other.pth"] = data
    download(server.url + "/orig/other.pth", dest2, sha256=_sha(data), progress=False)
    assert [(e["path"], e["status"]) for e in server.log[1:]] == [("/mirror/other.pth", 404), ("/orig/other.pth", 200)]
    assert hub.mirror_urls("a b.pth") == [server.url + "/mirror/a%20b.pth"]


def test_fallback_to_second_url_and_all_failing(server, tmp_path):
    data = _payload(3000, seed=6)
    server.files["/b/f.bin"] = data
    dest = tmp_path / "f.bin"
    download([server.url + "/a/f.bin", server.url + "/b/f.bin"], dest, sha256=_sha(data), progress=False)
    assert [(e["path"], e["status"]) for e in server.log] == [("/a/f.bin", 404), ("/b/f.bin", 200)]
    with pytest.raises(DownloadError) as ei:
        download([server.url + "/a/g.bin", server.url + "/c/g.bin"], tmp_path / "g.bin", progress=False)
    assert "/a/g.bin: HTTP 404" in str(ei.value)
    assert "/c/g.bin: HTTP 404" in str(ei.value)
    assert [u for u, _ in ei.value.failures] == [server.url + "/a/g.bin", server.url + "/c/g.bin"]


def test_existing_wrong_file_is_reported_not_replaced(server, tmp_path):
    dest = tmp_path / "placed.bin"
    dest.write_bytes(b"not the right bytes")
    with pytest.raises(ChecksumError, match="already in place; delete it"):
        download(server.url + "/w/placed.bin", dest, sha256=_sha(b"right"), progress=False)
    assert dest.read_bytes() == b"not the right bytes"
    assert server.log == []


def test_file_urls_and_cache_dir(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 100)
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")  # a file:// URL is not the network: still read offline
    out = download(src.as_uri(), tmp_path / "dst" / "src.bin", sha256=_sha(b"abc" * 100), progress=False)
    assert out.read_bytes() == b"abc" * 100
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "c"))
    assert hub.cache_dir("weights", "x.pth") == tmp_path / "c" / "weights" / "x.pth"
    monkeypatch.delenv(hub.CACHE_ENV)
    assert hub.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "wsss_blocks"


@pytest.mark.parametrize(("kw", "match"), [
    ({"sha256": "xyz"}, "sha256 must be 8 to 64 hex digits"),
    ({"sha256": "abc"}, "sha256 must be 8 to 64 hex digits"),
    ({"md5": "12345"}, "md5 must be 32 hex digits"),
    ({"size": -1}, "size must be a non-negative int"),
])
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        download("http://127.0.0.1:9/x", tmp_path / "x", **kw)


def test_no_url_known(tmp_path):
    with pytest.raises(DownloadError, match="no URL is known"):
        download([], tmp_path / "nothing.bin")
