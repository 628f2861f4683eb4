"""``chargepoint set-password``: the web UI's admin (or user) password, as a scrypt hash in ``[web]``.

In a local controller's file (a ``[local_controller]`` section and no ``[chargepoint]``) the table is
``[local_controller.web]``, the site page's (:mod:`chargepoint.localcontroller.web`); adding it turns the page on.

The hash is written into the configuration file itself (``[web] password_hash``), changing only that one
line (comments and layout stay), through a temporary file and a rename; the file's mode and owner are kept.
The result is parsed again before it replaces the file, and nothing is written when the file is not TOML.
The password itself is never stored or printed. The running service reads it at its next start.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from chargepoint.frontends.web.auth import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, hash_password
from chargepoint.localcontroller.config import is_local_controller_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


WEB_TABLE = "web"
LOCAL_CONTROLLER_WEB_TABLE = "local_controller.web"


def web_table_of(data: dict[str, Any]) -> str:
    """Which table holds the web passwords in a parsed configuration file."""
    return LOCAL_CONTROLLER_WEB_TABLE if is_local_controller_file(data) else WEB_TABLE


def set_key_in_web_table(text: str, key: str, value: str, table: str = WEB_TABLE) -> str:
    """``text`` with ``[table] key = "value"`` set: the existing line replaced, or the key added to the
    table, or the table appended."""
    lines = text.splitlines(keepends=True)
    entry = f'{key} = "{value}"\n'
    start = next((i for i, line in enumerate(lines)
                  if (m := _HEADER.match(line)) and m.group(1).replace(" ", "") == table), None)
    if start is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + f"[{table}]\n" + entry
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if key_re.match(lines[i]):
            lines[i] = entry
            return "".join(lines)
    lines.insert(start + 1, entry)
    return "".join(lines)


def write_password_hash(path: Path, key: str, stored: str) -> str:
    """Set ``key`` in the file's web table (:func:`web_table_of`) and return the table's name; ValueError when
    the file is not TOML or the edit did not land."""
    text = path.read_text(encoding="utf-8")
    table = web_table_of(tomllib.loads(text))  # not TOML: the installer fixes that first (check-config says where)
    new = set_key_in_web_table(text, key, stored, table)
    try:
        node: object = tomllib.loads(new)
        for part in table.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        written = node.get(key) if isinstance(node, dict) else None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the [{table}] table of {path} could not be edited ({exc}); set {key} by hand") from None
    if written != stored:
        raise ValueError(f"{path} defines [{table}] in a form this command does not edit; set {key} by hand")
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=".chargepoint-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return table


def read_password(stdin: bool, inp: TextIO) -> str:
    if stdin:
        return inp.readline().rstrip("\r\n")
    first = getpass.getpass("New web UI password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def cmd_set_password(args: argparse.Namespace) -> int:
    key = "user_password_hash" if args.user else "password_hash"
    path = Path(args.config)
    if not path.is_file():
        print(f"set-password: {path} does not exist (give --config FILE)", file=sys.stderr)
        return 2
    try:
        password = read_password(args.stdin, sys.stdin)
        stored = hash_password(password)
    except ValueError as exc:
        print(f"set-password: {exc}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("set-password: no password given; nothing changed", file=sys.stderr)
        return 2
    try:
        table = write_password_hash(path, key, stored)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"set-password: {exc}; nothing changed", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"set-password: cannot write {path}: {exc.strerror or exc} (run as root: sudo chargepoint "
              "set-password)", file=sys.stderr)
        return 2
    service = "chargepoint-local-controller" if table == LOCAL_CONTROLLER_WEB_TABLE else "chargepoint"
    print(f"{path}: [{table}] {key} set. The running service uses it after: sudo systemctl restart {service}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``chargepoint set-password`` (registered by chargepoint.cli)."""
    p = sub.add_parser("set-password", help="set the web UI's admin password (stored as a scrypt hash in [web])",
                       description=f"Asks for a password ({MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} "
                       "characters) and stores its scrypt hash as [web] password_hash in the configuration file.")
    p.add_argument("--config", default="/etc/chargepoint/chargepoint.toml")
    p.add_argument("--user", action="store_true",
                   help="the user role's password instead (sessions, limits, availability; no installer pages)")
    p.add_argument("--stdin", action="store_true", help="read the password from one line of standard input")
    p.set_defaults(func=cmd_set_password)
