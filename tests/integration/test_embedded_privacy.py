"""The embedded server's data is its owner's only, and its password shows nowhere another
user of the machine can read: not in its data dir's mode, not on its command line, not in
a URL printed for the operator."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError

from framefleet.queue import EmbeddedServer, connect, embedded, redacted
from framefleet.settings import RedisSettings


def test_a_data_dir_made_open_by_someone_else_is_closed_to_other_users(tmp_path: Path) -> None:
    """`mkdir(mode=0o700)` does nothing to a directory that exists: one made 0755 first (by
    `mkdir -p`, a volume, an older framefleet) kept the append-only files readable to all."""
    data = tmp_path / ".framefleet" / "redis"
    data.mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    with embedded(RedisSettings(data_dir=data)) as url:
        connect(url).set("ff:{videos}:item:x", "uri=s3://bucket/secret.mp4")
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "password").stat().st_mode) == 0o600


def test_the_password_is_not_on_the_servers_command_line(tmp_path: Path) -> None:
    """/proc/PID/cmdline is world-readable: the password goes in on stdin. (The server
    rewrites its process title once it runs, so argv showed it only for the ~35 ms of every
    start: what is handed to exec is what matters.)"""
    with EmbeddedServer(tmp_path / "redis") as server:
        assert server.password not in " ".join(server.args())
        assert server.pid is not None
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert server.password.encode() not in b" ".join(cmdline), cmdline
        assert connect(server.url).ping()  # and the password holds
        with pytest.raises(AuthenticationError):
            connect(server.url.replace(server.password, "wrong"))


def test_a_url_is_shown_without_its_password_wherever_it_is() -> None:
    pw = "S3cr3tPW"
    for url in (
        f"redis://:{pw}@127.0.0.1:7599/0",
        f"redis://default:{pw}@127.0.0.1:7599/0",
        f"redis://127.0.0.1:7599/0?password={pw}",
        f"rediss://u:{pw}@h:6380/0?ssl_ca_certs=/etc/ca.pem&password={pw}",
        f"redis://:{pw}@127.0.0.1:75x9/0",
    ):
        shown = redacted(url)
        assert pw not in shown and "***" in shown, shown
    assert redacted("redis://h:6379/0?ssl_ca_certs=/etc/ca.pem") == (
        "redis://h:6379/0?ssl_ca_certs=/etc/ca.pem"
    )
