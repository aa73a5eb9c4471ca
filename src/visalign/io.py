"""Small file helpers shared by every stage: atomic writes, JSON/JSONL, clear data errors.

Every stage reads and writes plain files; a crash must never leave a half-written output, so
whole-file writes go to a temp file in the same directory and are renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input data. The message names the file, the record (index or id) and the field."""

    def __init__(self, path: str | os.PathLike | None, message: str, *, record: Any = None,
                 field: str | None = None):
        where = [str(path) if path is not None else "<memory>"]
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}")
        self.path, self.record, self.field = path, record, field


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a result file should get the permissions open() would give it
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
               records_per_line: bool = False) -> Path:
    """Atomically write ``obj`` as JSON (UTF-8, keys in insertion order).

    ``records_per_line``: containers inside lists (per-item records) go on one line each;
    the rest is indented as usual. Same JSON value, and for a result with thousands of
    records several times faster to write (indented output uses Python's pure encoder).
    """
    if records_per_line and indent is not None:
        text = _dumps_records_per_line(obj, indent, 0)
    else:
        text = json.dumps(obj, indent=indent, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def _json_key(key: Any) -> str:
    # The key conversions json.dumps makes (bool before int: True is an int).
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, (int, float)):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _dumps_records_per_line(obj: Any, indent: int, level: int, in_list: bool = False) -> str:
    if in_list or not isinstance(obj, (dict, list)) or not obj:
        return json.dumps(obj, ensure_ascii=False)
    pad = "\n" + " " * (indent * (level + 1))
    if isinstance(obj, dict):
        items = [json.dumps(_json_key(k), ensure_ascii=False) + ": "
                 + _dumps_records_per_line(v, indent, level + 1) for k, v in obj.items()]
        open_, close = "{", "}"
    else:
        items = [_dumps_records_per_line(v, indent, level + 1, in_list=True) for v in obj]
        open_, close = "[", "]"
    return open_ + pad + ("," + pad).join(items) + "\n" + " " * (indent * level) + close


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike, *, tolerate_partial_last_line: bool = False
               ) -> Iterator[dict]:
    """Yield one dict per non-empty line.

    ``tolerate_partial_last_line`` skips a truncated final line (what a killed appender leaves);
    any other bad line raises :class:`DataError` with its line number.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_partial_last_line and i == len(lines) - 1 and not line.endswith("\n"):
                return
            raise DataError(path, f"invalid JSON: {e.msg}", record=f"line {i + 1}") from None
        if not isinstance(obj, dict):
            raise DataError(path, "expected a JSON object per line", record=f"line {i + 1}")
        yield obj


def read_jsonl(path: str | os.PathLike, **kw) -> list[dict]:
    return list(iter_jsonl(path, **kw))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically write all ``rows`` as JSONL."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read a JSON list of objects or a JSONL file (decided by content, not extension)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 12).lstrip()
    if head.startswith("["):
        data = read_json(path)
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                raise DataError(path, "expected a JSON object", record=i)
        return data
    return read_jsonl(path)


class JsonlAppender:
    """Append-only JSONL writer for resumable stages: one flushed line per record.

    A killed run leaves at most one partial last line; :func:`repair_jsonl` drops it before
    appending resumes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def repair_jsonl(path: str | os.PathLike) -> None:
    """Truncate a trailing partial line (left by a killed appender) so appends stay valid."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)
