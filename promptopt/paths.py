"""The one checker of the files and URIs a user names: a config file, a `prompt_files` template, the
`--out` of export, report, explain and lmeval-export, a `cache_path`, an `--mlflow` URI.

- A file promptopt reads must be a regular file of bounded size: a device (/dev/zero), a FIFO or a
  directory is refused with one line, and is never read (a FIFO is opened without blocking, so a
  reader cannot hang waiting for a writer).
- A file promptopt writes must be absent or a regular file; it is replaced atomically, a symlink is
  followed (the link stays a link), and an existing file keeps its permission bits.
- A URI must have one of the schemes its reader supports, and a password in it is never shown:
  `redact` is what every message prints.
"""
from __future__ import annotations

import os
import secrets
import stat
from contextlib import suppress
from pathlib import Path
from typing import Collection
from urllib.parse import SplitResult, urlsplit

from promptopt.errors import ConfigError

MAX_TEXT_BYTES = 16 * 2**20  # a config file or meta-prompt larger than this is a mistake, not a setting


def kind(mode: int) -> str:
    """What a stat mode names, in words ("a FIFO", "a character device", ...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def read_text(path: str | os.PathLike[str], what: str, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file the user named, or ConfigError with one line. `what` names it in
    the message ("config file", "template opro.meta")."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once, so it is refused instead of hanging.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {p}: cannot read it ({e.strerror or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ConfigError(f"{what} {p} is {kind(mode)}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise ConfigError(f"{what} {p}: cannot read it ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what} {p} is larger than {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def regular_or_absent(path: str | os.PathLike[str], what: str) -> Path:
    """`path` with symlinks resolved, when nothing is there yet or a regular file is; else ConfigError."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a missing folder is the writer's to report)
        return real
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot use it ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {path} is {kind(mode)}; name a regular file")
    return real


def write_text(path: str | os.PathLike[str], text: str, what: str) -> Path:
    """Write `text` to a file the user named, atomically (a failed write leaves the old file or none).
    Refused (ConfigError) when a device, FIFO, socket or directory is there. A symlink is followed, so the
    file it names is replaced and the link stays; an existing file keeps its permission bits (and owner,
    where the writer may set it), and a new one gets the ones the umask allows. Returns the path written, as given."""
    real = regular_or_absent(path, what)
    if not real.parent.is_dir():
        raise ConfigError(f"{what} {path}: folder {real.parent} does not exist")
    try:
        old: os.stat_result | None = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        old = None
    tmp = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if old is not None:
                os.chmod(tmp, stat.S_IMODE(old.st_mode))
                if hasattr(os, "chown") and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    with suppress(PermissionError):  # only a privileged user can keep another's ownership
                        os.chown(tmp, old.st_uid, old.st_gid)
            os.replace(tmp, real)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot write it ({e.strerror or e})") from None
    return Path(path)


def redact(uri: str) -> str:
    """`uri` as it may be shown: a password in it becomes ***."""
    try:
        parts = urlsplit(uri)
        if not parts.password:
            return uri
        host = parts.netloc.rpartition("@")[2]  # as written: a bad port must not make this raise
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
    except ValueError:
        return "<a URI that cannot be parsed>"


def has_password(uri: str) -> bool:
    try:
        return bool(urlsplit(uri).password)
    except ValueError:
        return False


def check_uri(uri: str, what: str, schemes: Collection[str]) -> SplitResult:
    """The parts of a URI the user gave, when it is not empty and its scheme (without a "+driver" suffix,
    as in postgresql+psycopg2) is one of `schemes` ("" = a plain path); else ConfigError, the URI redacted."""
    shown = redact(uri)
    if not uri.strip():
        raise ConfigError(f"{what}: the URI is empty")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - a bad port raises here, not later
    except ValueError as e:
        raise ConfigError(f"{what} {shown}: not a valid URI ({e})") from None
    scheme = parts.scheme.lower().split("+")[0]
    if len(scheme) == 1 and os.name == "nt":  # C:\\mlruns: a drive letter, not a scheme
        scheme = ""
    if scheme not in schemes:
        known = ", ".join(f"{s}://" if s else "a path" for s in schemes)
        raise ConfigError(f"{what} {shown}: unsupported scheme {parts.scheme!r} (supported: {known})")
    return parts


__all__ = ["MAX_TEXT_BYTES", "check_uri", "has_password", "kind", "read_text", "redact", "regular_or_absent",
           "write_text"]
