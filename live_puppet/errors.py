"""The one error type the user sees: a sentence saying what is wrong and what to do; and the
lines (notes, warnings) printed while the program goes on."""

import contextlib
import os
import sys


class UserError(Exception):
    """A problem with the user's input or machine, reported as one line and a non-zero exit.

    The message is a complete sentence naming what is wrong and what to do about it.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _read_umask() -> int:
    mask = os.umask(0o022)  # (read at import, before any thread could create a file meanwhile)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def usual_permissions(path) -> None:
    """Give a file written through a temporary one (made 0600 by mkstemp or safetensors) the mode
    a plain new file gets, so that a shared engines/ folder or a checkpoint sent on works."""
    try:
        os.chmod(path, 0o666 & ~_UMASK)
    except OSError:
        pass


def say(message: str, file=None) -> None:
    """Print a line (stdout by default) without breaking a progress bar being drawn."""
    from tqdm import tqdm

    file = file or sys.stdout
    tqdm.write(message, file=file)
    file.flush()


def warn(message: str) -> None:
    say(f"live-puppet: {message}", file=sys.stderr)


def writable_file(path, what: str, flag: str, inputs=()):
    """`path` as a Path, checked before any work is done: it is not a folder, not one of the
    command's `inputs` (files; a folder stands for the pictures and clips it holds), and its folder
    exists and can be written. `what` names it for the user ("the fine-tuned model"), `flag` is
    the option that sets it ("--out")."""
    from pathlib import Path

    path = Path(path).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{flag} '{path}' is a folder; give a file name for {what} (e.g. "
                        f"'{path / 'out'}').")
    if is_input(path, inputs):
        raise UserError(f"{flag} '{path}' is one of the inputs and would be overwritten; choose "
                        f"another file name.")
    if not folder.is_dir():
        raise UserError(f"The folder '{folder}' for {what} ({flag}) does not exist; create it or "
                        f"choose another path.")
    _try_writing(folder, what, flag, path)
    return path


def is_input(path, inputs) -> bool:
    """Whether writing `path` would overwrite one of `inputs` (see writable_file)."""
    from pathlib import Path

    from live_puppet.capture import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    target = path.resolve()
    for item in inputs:
        if item is None or str(item).isdigit():  # unset, or a camera index
            continue
        source = Path(item).expanduser().resolve()
        if target == source:
            return True
        if source.is_dir() and target.parent == source and target.is_file() and \
                target.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            return True  # a picture or clip the folder already holds (a new file there is fine)
    return False


def writable_folder(path, what: str, flag: str):
    """`path` as a Path: a folder that exists or can be created, and can be written; created."""
    from pathlib import Path

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} '{path}' is a file; give a folder for {what}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder '{path}' for {what} ({flag}): "
                        f"{exc.strerror or exc}; choose a folder you can write.") from None
    _try_writing(path, what, flag, path)
    return path


@contextlib.contextmanager
def folder_made_for(path, what: str, flag: str):
    """writable_folder(path, ...) for the block; removed again when this made it and the block
    fails before writing anything to it (a mistyped input leaves no empty folder behind)."""
    from pathlib import Path

    wanted = Path(path).expanduser()
    made = [p for p in (wanted, *wanted.parents) if not p.exists()]  # what mkdir will make
    folder = writable_folder(path, what, flag)
    try:
        yield folder
    except BaseException:
        with contextlib.suppress(OSError):
            for p in made:  # innermost first; each only when empty
                p.rmdir()
        raise


def _try_writing(folder, what: str, flag: str, target) -> None:
    """Create and remove a file in `folder` (os.access says yes to root everywhere, even /proc)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"Cannot write {what} to '{target}' ({flag}): the folder '{folder}' cannot "
                        f"be written to ({exc.strerror or exc}); choose a folder you can write.") from None
