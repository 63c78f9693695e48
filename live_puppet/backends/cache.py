"""The on-disk cache of compiled engines under `engines/`.

An engine file is named by a key: the sha256 of everything it depends on (checkpoint content, the
portrait's embedding, resolution, precision, backend, library versions, GPU name). Beside each file
lies a sidecar `<key>.json` with its size and sha256, written last: a file without a sidecar, or
whose size or hash disagrees with it (a build that was killed, a truncated copy, a full disk), is
stale and gets rebuilt. Both are written to temporary files first and moved into place with
os.replace, so a reader never sees half a file under a valid name.

The sha256 finds damage, not tampering. A backend whose engine files can run code when loaded
(torch-tensorrt's hold pickles) only loads files this user's live-puppet signed: the sidecar
carries an HMAC of the file's hash under a secret kept in the user's data folder, readable by the
user only (as Jupyter signs the notebooks it trusts). Whoever can write a shared engines/ folder
cannot forge it, and what is loaded is a private copy whose own bytes were checked. The signer is
part of such an engine's key: users sharing a folder each keep their own engines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from live_puppet.errors import UserError, usual_permissions, warn, writable_folder

T = TypeVar("T")


class EngineChanged(UserError):
    """A signed engine file whose bytes no longer match its signature when loaded."""


SIDECAR_SUFFIX = ".json"
SIGNING_KEY_FILE = "engine-signing.key"  # in platformdirs' user data folder for live-puppet
KEY_BYTES = 32
UNSIGNED = "not signed by you"  # validate's answer for a file that may not be loaded
CACHE_FORMAT = 1  # bump when what an engine file holds changes meaning
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a big checkpoint is read once."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _CONTENT_HASHES:
        _CONTENT_HASHES[memo] = file_sha256(p)
    return _CONTENT_HASHES[memo]


_SIGNING_KEY: list[bytes] = []
_KEY_KEPT = [True]  # emptied when the key could not be kept: it lives as long as this process


def signing_key_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("live-puppet")) / SIGNING_KEY_FILE


def signing_key() -> bytes:
    """This user's secret for signing engine files: made on first use (written whole to a private
    temporary file, then linked into place, so two starts at once agree and a crash leaves no
    empty key), readable by the user only. Where it cannot be kept, a secret for this process
    only, said once: engines it signs are rebuilt by the next run."""
    if not _SIGNING_KEY:
        import secrets

        path = signing_key_path()
        try:
            exists = path.is_file()
            key = path.read_bytes() if exists else b""
            if len(key) < KEY_BYTES:  # none yet, or a damaged one (cut short by a crash)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".engine-signing.")  # 0600
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(secrets.token_bytes(KEY_BYTES))
                        f.flush()
                        os.fsync(f.fileno())
                    if exists:
                        os.replace(tmp, path)
                    else:
                        try:
                            os.link(tmp, path)  # (another start may have made it first: theirs)
                        except FileExistsError:
                            pass
                        except OSError:  # no hard links here (FAT, some network shares)
                            _create_once(path, Path(tmp).read_bytes())
                finally:
                    Path(tmp).unlink(missing_ok=True)
                key = path.read_bytes()
                if len(key) < KEY_BYTES:
                    raise OSError("the key file is damaged")
        except OSError as exc:
            why = getattr(exc, "strerror", None) or exc
            warn(f"could not keep the engine signing key at {path} ({why}); TensorRT engines built "
                 f"by this run are built again by the next one.")
            key = secrets.token_bytes(KEY_BYTES)
            _KEY_KEPT.clear()
        _SIGNING_KEY.append(key)
    return _SIGNING_KEY[0]


def _create_once(path: Path, data: bytes) -> None:
    """Write `path` unless it exists (another start was first: its key stands)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def signer() -> str:
    """A public name for this user's key: part of a signed engine's cache key, so that users
    sharing an engines/ folder each keep their own engines instead of rebuilding each other's."""
    key = signing_key()
    if not _KEY_KEPT:  # (a key of this run only: the next run rebuilds in the same place)
        return "unkept"
    return hashlib.sha256(b"live-puppet signer:" + key).hexdigest()[:16]


def signature(key: str, digest: str) -> str:
    """The HMAC that says this user's live-puppet wrote the engine `key` with hash `digest`."""
    return hmac.new(signing_key(), f"{key}:{digest}".encode(), hashlib.sha256).hexdigest()


def _signed_by_me(meta: dict, key: str, digest: str) -> bool:
    given = meta.get("signature")
    return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                          signature(key, digest).encode())


def make_key(fields: dict[str, Any]) -> str:
    """A stable 32-hex-digit key of JSON-able `fields` (order does not matter)."""
    blob = json.dumps({"cache_format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class CacheEntry:
    """Where one engine lives, and its sidecar."""

    key: str
    path: Path
    sidecar: Path


def _atomic_write_text(dest: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        usual_permissions(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Engine files under one folder, validated by their sidecars, built when missing or stale."""

    def __init__(self, root: str | os.PathLike, keep: int = 24):
        self.root = Path(root)
        self.keep = keep  # at most this many engines are kept; the least recently used go first

    def entry(self, key: str, suffix: str) -> CacheEntry:
        return CacheEntry(key, self.root / f"{key}{suffix}", self.root / f"{key}{SIDECAR_SUFFIX}")

    def validate(self, entry: CacheEntry, signed: bool = False) -> str | None:
        """None when the engine file matches its sidecar (and, if `signed`, the sidecar carries
        this user's signature), else why not."""
        if not entry.path.is_file():
            return "missing"
        try:
            meta = json.loads(entry.sidecar.read_text())
            size, digest = int(meta["size"]), str(meta["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return "no valid sidecar"
        actual = entry.path.stat().st_size
        if actual != size:
            return f"size {actual} bytes, expected {size}"
        if file_sha256(entry.path) != digest:
            return "content hash mismatch"
        if signed and not _signed_by_me(meta, entry.key, digest):
            return UNSIGNED
        return None

    def lookup(self, key: str, suffix: str, on_damage: Callable[[str], None] | None = None,
               signed: bool = False) -> Path | None:
        """The engine file for `key` when present and intact (and signed, if `signed`); a
        damaged or unsigned one is removed (and `on_damage` told why)."""
        entry = self.entry(key, suffix)
        problem = self.validate(entry, signed)
        if problem is None:
            try:
                os.utime(entry.sidecar)  # mark as recently used for pruning
            except OSError:
                pass  # a read-only engine folder (a shared install) is used as it is
            return entry.path
        if problem != "missing" or entry.sidecar.exists():
            if on_damage and problem == UNSIGNED:
                on_damage(f"cached engine {entry.path.name} carries no valid signature of yours (an "
                          f"older live-puppet's, or changed since), and loading one runs code stored "
                          f"in it; rebuilding")
            elif on_damage:
                on_damage(f"cached engine {entry.path.name} is damaged ({problem}); rebuilding")
            self.invalidate(key, suffix)
        return None

    def invalidate(self, key: str, suffix: str) -> None:
        entry = self.entry(key, suffix)
        for f in (entry.sidecar, entry.path):
            try:
                f.unlink(missing_ok=True)
            except OSError:
                pass  # (a folder this user cannot write: the build says so in a sentence)

    def build(self, key: str, suffix: str, write: Callable[[Path], None],
              meta: dict[str, Any] | None = None, signed: bool = False) -> Path:
        """Run `write(tmp_path)`, then move the file into place and write its sidecar (signed by
        this user, if `signed`)."""
        writable_folder(self.root, "compiled engines", "--engine-dir")
        entry = self.entry(key, suffix)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=f".tmp{suffix}")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise RuntimeError(f"the engine build wrote nothing to {tmp}")
            digest = file_sha256(tmp)
            info = {"size": tmp.stat().st_size, "sha256": digest, "key": key,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {})}
            if signed:
                info["signature"] = signature(key, digest)
            entry.sidecar.unlink(missing_ok=True)  # never a valid sidecar beside a changing file
            usual_permissions(tmp)
            os.replace(tmp, entry.path)
            _atomic_write_text(entry.sidecar, json.dumps(info, indent=1, sort_keys=True, default=str))
        finally:
            tmp.unlink(missing_ok=True)
        self.prune()
        return entry.path

    def get_or_build(self, key: str, suffix: str, write: Callable[[Path], None],
                     load: Callable[[Path], T], meta: dict[str, Any] | None = None,
                     on_rebuild: Callable[[str], None] | None = None,
                     signed: bool = False) -> tuple[T, bool]:
        """(loaded engine, whether it came from the cache); damaged or unloadable files, and with
        `signed` ones this user's live-puppet did not sign, are rebuilt."""
        path = self.lookup(key, suffix, on_damage=on_rebuild, signed=signed)
        if path is not None:
            try:
                return self._load(self.entry(key, suffix), load, signed), True
            except Exception as exc:  # a valid-looking file the runtime refuses: rebuild it
                if on_rebuild:
                    on_rebuild(f"cached engine {path.name} could not be loaded "
                               f"({type(exc).__name__}); rebuilding")
                self.invalidate(key, suffix)
        self.build(key, suffix, write, meta, signed=signed)
        return self._load(self.entry(key, suffix), load, signed), False

    @staticmethod
    def _load(entry: CacheEntry, load: Callable[[Path], T], signed: bool) -> T:
        """`load` the engine; a signed one from a private copy whose own bytes were checked
        against the signature (the file in a shared folder could be swapped between a check of
        it and its loading)."""
        if not signed:
            return load(entry.path)
        with tempfile.TemporaryDirectory(prefix="live-puppet-engine-",  # 0700
                                         ignore_cleanup_errors=True) as private:
            copy = Path(private) / entry.path.name
            h, size = hashlib.sha256(), 0
            with open(entry.path, "rb") as src, open(copy, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            try:
                meta = json.loads(entry.sidecar.read_text())
            except (OSError, ValueError):
                meta = None
            if not isinstance(meta, dict) or size != meta.get("size") or \
                    h.hexdigest() != meta.get("sha256") or not _signed_by_me(meta, entry.key, h.hexdigest()):
                raise EngineChanged(f"The compiled engine '{entry.path}' changed while it was being "
                                    f"loaded (another run building it at the same time?); run again, "
                                    f"and if it keeps happening use an --engine-dir only you can write.")
            return load(copy)

    def entries(self) -> list[Path]:
        """The sidecars of every engine, most recently used first."""
        if not self.root.is_dir():
            return []
        sidecars = [p for p in self.root.glob(f"*{SIDECAR_SUFFIX}") if not p.name.startswith(".")]
        return sorted(sidecars, key=lambda p: p.stat().st_mtime, reverse=True)

    def prune(self) -> None:
        """Delete the least recently used engines beyond `keep`, and orphaned temporary files."""
        for sidecar in self.entries()[self.keep:]:
            for f in self.root.glob(f"{sidecar.stem}.*"):
                f.unlink(missing_ok=True)
        hour_ago = time.time() - 3600
        for tmp in self.root.glob(".*.tmp*"):  # left by a build that was killed
            try:
                if tmp.stat().st_mtime < hour_ago:
                    tmp.unlink()
            except OSError:
                pass
