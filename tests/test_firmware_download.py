"""download()/upload() against real loopback HTTP and FTP servers."""

from __future__ import annotations

import hashlib
import os
from collections import namedtuple
from pathlib import Path

import pytest
from fakes_firmware import FakeClock, FtpServer, HttpServer, closed_port

from chargepoint.firmware.download import (
    DownloadFailed,
    UploadFailed,
    download,
    expected_checksum_from_url,
    safe_url,
    upload,
)

Usage = namedtuple("Usage", "total used free")
BODY = os.urandom(200_000)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def http():
    with HttpServer() as srv:
        srv.files["/fw/pi_chargepoint-1.0.0-py3-none-any.whl"] = BODY
        yield srv


@pytest.fixture
def clock():
    from datetime import UTC, datetime

    return FakeClock(datetime(2025, 1, 1, tzinfo=UTC))


async def test_http_download_verifies_fragment_checksum(http, tmp_path):
    url = f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl#sha256={SHA}"
    res = await download(url, tmp_path / "f.whl")
    assert res.path.read_bytes() == BODY
    assert res.sha256 == SHA and res.size == len(BODY)
    assert res.checksum == "sha256 from URL fragment"
    assert not (tmp_path / "f.whl.part").exists()


async def test_fragment_checksum_mismatch_is_retried_then_fails(http, tmp_path, clock):
    url = f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl#sha256={'0' * 64}"
    with pytest.raises(DownloadFailed, match="checksum mismatch.*gave up after 2 attempts"):
        await download(url, tmp_path / "f.whl", retries=2, retry_interval_s=7, sleep=clock.sleep)
    assert http.hits["/fw/pi_chargepoint-1.0.0-py3-none-any.whl"] == 2
    assert clock.sleeps == [7]
    assert list(tmp_path.iterdir()) == []


async def test_malformed_fragment_is_a_clear_error(http, tmp_path):
    with pytest.raises(DownloadFailed, match="not a sha256 hex digest"):
        await download(f"{http.base}/fw/x.whl#sha256=nothex", tmp_path / "f")
    assert expected_checksum_from_url("http://h/x#sha512=" + "a" * 128) == ("sha512", "a" * 128)
    assert expected_checksum_from_url("http://h/x") is None


async def test_sidecar_checksum_is_used_and_enforced(http, tmp_path):
    http.files["/fw/pi_chargepoint-1.0.0-py3-none-any.whl.sha256"] = f"{SHA}  pi_chargepoint-1.0.0.whl\n".encode()
    res = await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "ok.whl")
    assert res.checksum == "sha256 sidecar"

    http.files["/fw/pi_chargepoint-1.0.0-py3-none-any.whl.sha256"] = ("f" * 64).encode()
    with pytest.raises(DownloadFailed, match="checksum mismatch"):
        await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "bad.whl")
    assert not (tmp_path / "bad.whl").exists()


async def test_no_checksum_offered_still_downloads(http, tmp_path):
    res = await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "f.whl")
    assert res.checksum is None and res.sha256 == SHA
    assert http.hits["/fw/pi_chargepoint-1.0.0-py3-none-any.whl.sha256"] == 1  # it did look for one


async def test_unreachable_url_connection_refused(tmp_path, clock):
    url = f"http://127.0.0.1:{closed_port()}/fw/pi_chargepoint-1.0.0-py3-none-any.whl"
    with pytest.raises(DownloadFailed) as ei:
        await download(url, tmp_path / "f.whl", retries=3, retry_interval_s=30, sleep=clock.sleep)
    assert "cannot reach 127.0.0.1: connection refused" in str(ei.value)
    assert "gave up after 3 attempts" in str(ei.value)
    assert clock.sleeps == [30, 30]
    assert list(tmp_path.iterdir()) == []


async def test_404_is_not_retried(http, tmp_path, clock):
    with pytest.raises(DownloadFailed, match=r"HTTP 404 Not Found for http://127\.0\.0\.1:\d+/fw/missing\.whl"):
        await download(f"{http.base}/fw/missing.whl", tmp_path / "f", retries=5, sleep=clock.sleep)
    assert http.hits["/fw/missing.whl"] == 1
    assert clock.sleeps == []


async def test_503_is_retried(http, tmp_path, clock):
    http.status["/fw/busy.whl"] = 503
    with pytest.raises(DownloadFailed, match="HTTP 503"):
        await download(f"{http.base}/fw/busy.whl", tmp_path / "f", retries=3, sleep=clock.sleep)
    assert http.hits["/fw/busy.whl"] == 3


async def test_truncated_download(http, tmp_path, clock):
    http.truncate["/fw/pi_chargepoint-1.0.0-py3-none-any.whl"] = 50_000
    with pytest.raises(DownloadFailed, match=f"truncated: received 50000 of {len(BODY)} bytes"):
        await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "f.whl",
                       retries=2, sleep=clock.sleep)
    assert http.hits["/fw/pi_chargepoint-1.0.0-py3-none-any.whl"] == 2
    assert list(tmp_path.iterdir()) == []


async def test_full_disk_refuses_before_writing(http, tmp_path):
    calls = []

    def tiny(path: Path) -> Usage:
        calls.append(Path(path))
        return Usage(10**9, 10**9 - 40 * 1024 * 1024, 40 * 1024 * 1024)  # 40 MiB: reserve fits, file not

    with pytest.raises(DownloadFailed, match=r"not enough free disk space .* 41943040 bytes free") as ei:
        await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "f.whl",
                       reserve_bytes=40 * 1024 * 1024, disk_usage=tiny, retries=3)
    assert f"{len(BODY)} bytes for the file" in str(ei.value)  # Content-Length was taken into account
    assert calls and all(c == tmp_path for c in calls)
    assert list(tmp_path.iterdir()) == []

    def empty(path: Path) -> Usage:
        return Usage(10**9, 10**9, 0)

    with pytest.raises(DownloadFailed, match="not enough free disk space"):
        await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "g.whl",
                       disk_usage=empty)
    assert http.hits["/fw/pi_chargepoint-1.0.0-py3-none-any.whl"] == 1  # second one never connected


async def test_max_bytes(http, tmp_path):
    with pytest.raises(DownloadFailed, match="more than the allowed 1000"):
        await download(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", tmp_path / "f", max_bytes=1000)


async def test_unsupported_scheme_and_bad_url(tmp_path):
    with pytest.raises(DownloadFailed, match="unsupported URL scheme 'file'.*allowed: http, https, ftp"):
        await download("file:///etc/passwd", tmp_path / "f")
    with pytest.raises(DownloadFailed, match="invalid URL"):
        await download("http://127.0.0.1:99999999/x", tmp_path / "f")


def test_safe_url_masks_password():
    assert safe_url("ftp://user:topsecret@h:21/a/b#sha256=1") == "ftp://user:***@h:21/a/b"
    assert "topsecret" not in safe_url("https://u:topsecret@h/x")


async def test_basic_auth_from_url_is_sent_and_not_echoed(http, tmp_path):
    http.status["/private/x.whl"] = 403
    url = f"http://cp1:pa55word@127.0.0.1:{http.port}/private/x.whl"
    with pytest.raises(DownloadFailed) as ei:
        await download(url, tmp_path / "f")
    assert "pa55word" not in str(ei.value) and "cp1:***@" in str(ei.value)


# ---------------------------------------------------------------------------------------------------------
# FTP


@pytest.fixture
def ftp(tmp_path):
    root = tmp_path / "ftproot"
    (root / "fw").mkdir(parents=True)
    (root / "fw" / "pi_chargepoint-1.0.0-py3-none-any.whl").write_bytes(BODY)
    (root / "fw" / "pi_chargepoint-1.0.0-py3-none-any.whl.sha256").write_text(SHA + "\n")
    (root / "diag").mkdir()
    with FtpServer(root) as srv:
        yield srv


async def test_ftp_download_with_sidecar(ftp, tmp_path):
    res = await download(ftp.url("fw", "fwpass", "fw/pi_chargepoint-1.0.0-py3-none-any.whl"),
                         tmp_path / "dl" / "f.whl")
    assert res.path.read_bytes() == BODY and res.checksum == "sha256 sidecar"


async def test_ftp_missing_file_and_bad_login(ftp, tmp_path):
    with pytest.raises(DownloadFailed, match="FTP server refused"):
        await download(ftp.url("fw", "fwpass", "fw/nothere.whl"), tmp_path / "f", retries=3)
    with pytest.raises(DownloadFailed, match="refused the login as 'fw'") as ei:
        await download(ftp.url("fw", "wrongpw", "fw/pi_chargepoint-1.0.0-py3-none-any.whl"), tmp_path / "f")
    assert "wrongpw" not in str(ei.value)


async def test_ftp_upload_stor(ftp, tmp_path):
    f = tmp_path / "report.tar.gz"
    f.write_bytes(b"x" * 5000)
    target = await upload(ftp.url("up", "uppass", "diag/"), f)
    assert (ftp.root / "diag" / "report.tar.gz").read_bytes() == b"x" * 5000
    assert target.endswith("/diag/report.tar.gz") and "uppass" not in target


async def test_ftp_refuses_upload(ftp, tmp_path, clock):
    f = tmp_path / "report.tar.gz"
    f.write_bytes(b"x")
    with pytest.raises(UploadFailed, match=r"FTP server refused the upload of report\.tar\.gz.*550"):
        await upload(ftp.url("ro", "ropass", "diag"), f, retries=3, sleep=clock.sleep)
    assert not (ftp.root / "diag" / "report.tar.gz").exists()
    assert clock.sleeps == []  # a permanent refusal is not retried


# ---------------------------------------------------------------------------------------------------------
# HTTP upload


async def test_http_put_and_post(http, tmp_path):
    f = tmp_path / "d.tar.gz"
    f.write_bytes(b"diagnostic bytes")
    target = await upload(f"{http.base}/upload/", f)
    assert target == f"{http.base}/upload/d.tar.gz"
    assert http.received["/upload/d.tar.gz"] == b"diagnostic bytes"

    await upload(f"{http.base}/form", f, method="POST", remote_name="other.tar.gz")
    body = http.received["/form"]
    assert b'filename="other.tar.gz"' in body and b"diagnostic bytes" in body
    assert http.received_headers["/form"]["Content-Type"].startswith("multipart/form-data; boundary=")


async def test_http_upload_failures(http, tmp_path, clock):
    f = tmp_path / "d.tar.gz"
    f.write_bytes(b"d")
    http.upload_status = 500
    with pytest.raises(UploadFailed, match="HTTP 500.*gave up after 2 attempts"):
        await upload(f"{http.base}/upload", f, retries=2, retry_interval_s=5, sleep=clock.sleep)
    assert http.hits["/upload/d.tar.gz"] == 2 and clock.sleeps == [5]
    with pytest.raises(UploadFailed, match="connection refused"):
        await upload(f"http://127.0.0.1:{closed_port()}/u/", f)
    with pytest.raises(UploadFailed, match="does not exist"):
        await upload(f"{http.base}/u/", tmp_path / "nothing")
