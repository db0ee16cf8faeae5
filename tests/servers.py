"""Real servers the tests start themselves: a throwaway PostgreSQL cluster in a temporary folder.

The cluster runs as the ``postgres`` system user (PostgreSQL refuses to run as root), listens on
127.0.0.1 at a free port and on a socket in its folder, requires a password (so that a wrong one
is refused as on a real server), and is stopped and removed when the test session ends.
``why_not`` says why one cannot be started here (no PostgreSQL installed, not root and not the
postgres user), which is the only reason its tests are skipped.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres() -> list[str]:
    """The command prefix that runs a program as the postgres user ([] if this process is that user)."""
    import pwd

    if pwd.getpwuid(os.getuid()).pw_name == "postgres":
        return []
    return ["runuser", "-u", "postgres", "--"]


def why_not() -> str | None:
    """Why a PostgreSQL server cannot be started here; None if it can."""
    if _binaries() is None:
        return "PostgreSQL is not installed (Debian package postgresql; .ci/setup installs it when run as root)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres system user to run the server as"
    if os.getuid() != 0 and _as_postgres():
        return "starting PostgreSQL needs root (to run it as the postgres user) or the postgres user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'recipe-compose[postgres]')"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    folder: Path
    port: int
    password: str
    user: str = "postgres"

    def url(self, database: str, *, password: str | None = None, host: str = "127.0.0.1") -> str:
        return f"postgresql+psycopg://{self.user}:{password or self.password}@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*_as_postgres(), str(_binaries() / "pg_ctl"), "-D", str(self.folder / "data"), "stop", "-m", "immediate"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> PostgresServer:
    """Initialise and start a throwaway cluster; RuntimeError with its log if it does not come up."""
    bin_dir = _binaries()
    folder = Path(tempfile.mkdtemp(prefix="recipe-compose-pg-"))
    password = secrets.token_hex(12)
    as_postgres = _as_postgres()
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    (folder / "pwfile").write_text(password + "\n", encoding="utf-8")
    if as_postgres:
        shutil.chown(folder / "pwfile", "postgres", "postgres")
    port = _free_port()
    init = [*as_postgres, str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres"]
    init += ["--auth=scram-sha-256", f"--pwfile={folder / 'pwfile'}", "--no-sync"]
    done = subprocess.run(init, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=50"
    ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log")]
    done = subprocess.run([*ctl, "-o", options, "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=90)
    if done.returncode != 0:
        log = (folder / "log").read_text(errors="replace")[-2000:] if (folder / "log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {done.stderr[-1000:]} {log}")
    return PostgresServer(folder, port, password)
