"""Label files: a pickled dict (``label_type.pkl``), JSON (list, dict or ``{"relations": [...]}``) or text.

Torch-free. The order of the names is the order of the logit columns everywhere in the toolkit.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from kfold.core.errors import DataError, data_error
from kfold.core.textio import read_text

#: Files looked for next to a data file when no label file is given.
LABEL_FILE_NAMES = ("label_type.pkl", "relation_list.json", "label.txt", "labels.txt", "labels.json")
#: The value a test row carries instead of a label.
BLIND = "blind"


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every class: a label file may hold only dicts, lists, str and int."""

    def find_class(self, module, name):  # noqa: D401 - pickle hook
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a label file")


def read_label_file(path: str | Path) -> tuple[str, ...]:
    """Read label names in index order.

    Parameters
    ----------
    path: a ``.pkl`` dict name -> index, a ``.json`` list / dict / ``{"relations": [...]}``,
        or a text file with one name per line.

    Returns
    -------
    tuple of label names; position i is label index i.

    Raises
    ------
    DataError: unreadable file, duplicate names, indices that are not 0..n-1.

    Example
    -------
    >>> read_label_file("label.txt")  # doctest: +SKIP
    ('Other', 'Cause-Effect(e1,e2)', ...)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read label file: {exc.strerror}") from None
        try:
            obj = _SafeUnpickler(io.BytesIO(raw)).load()
        except Exception as exc:  # pickle raises many types on garbage input
            raise data_error(path, None, None, f"<{type(exc).__name__}: {exc}>",
                             "a pickled dict of label name -> index") from None
    elif suffix == ".json":
        text = read_text(path)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise data_error(path, exc.lineno, None, f"<invalid JSON: {exc.msg}>",
                             "a JSON list of names or a dict name -> index") from None
        if isinstance(obj, dict) and "relations" in obj:
            obj = obj["relations"]
    else:
        lines = read_text(path).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        obj = [line.rstrip("\r") for line in lines]
    return _names_from(path, obj)


def _names_from(path: Path, obj) -> tuple[str, ...]:
    """Validate a list of names or a dict name -> index and return names in index order."""
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != BLIND}
        for name, idx in obj.items():
            if not isinstance(name, str) or not isinstance(idx, int) or isinstance(idx, bool):
                raise data_error(path, None, str(name), idx, "string names mapped to integer indices")
        n = len(obj)
        by_index = sorted(obj.items(), key=lambda kv: kv[1])
        indices = [idx for _, idx in by_index]
        if indices != list(range(n)):
            missing = sorted(set(range(n)) - set(indices))
            raise data_error(path, None, "index", f"<indices {indices[:5]}...>",
                             f"indices 0..{n - 1} each once (missing {missing[:5]})")
        names = [name for name, _ in by_index]
    elif isinstance(obj, list):
        names = obj
    else:
        raise data_error(path, None, None, f"<a {type(obj).__name__}>", "a list of names or a dict name -> index")
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if not isinstance(name, str) or not name.strip():
            raise data_error(path, i, "label", name, "a non-empty label name")
        if name in seen:
            raise data_error(path, i, "label", name, f"unique names (already at row {seen[name]})")
        seen[name] = i
    if len(names) < 2:
        raise data_error(path, None, None, f"<{len(names)} label(s)>", "at least 2 labels")
    return tuple(names)


def find_label_file(data_path: str | Path) -> Path | None:
    """Return the first known label file next to ``data_path``, or None."""
    folder = Path(data_path).parent
    for name in LABEL_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None
