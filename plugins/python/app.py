"""textcase-python: the Python implementation of textcase.

Every supported language implements the same plugin; the golden table in
plugins/golden/textcase.json and docs/PLUGINS.md give the behaviour.
Built with componentize-py (see plugins/python/README.md).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host_api
from wit_world.imports.types import ErrorKind, KeyValue, ProcessError, ProcessResult

MODES = ("upper", "lower", "title", "snake")
# The contract's whitespace: space, tab, LF, FF and CR (not str.split()'s
# Unicode whitespace, which also splits at U+3000 or U+00A0).
SPACE = frozenset(" \t\n\f\r")


def words(text: str) -> list[str]:
    """The maximal runs of non-whitespace characters."""
    out, start = [], None
    for i, c in enumerate(text):
        if c in SPACE:
            if start is not None:
                out.append(text[start:i])
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append(text[start:])
    return out


def title(text: str) -> str:
    """Each word: first character uppercased, the rest lowercased."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] in SPACE:
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < n and text[j] not in SPACE:
            j += 1
        out.append(text[i].upper() + text[i + 1 : j].lower())
        i = j
    return "".join(out)


class Plugin(exports.Plugin):
    def get_name(self) -> str:
        return "textcase-python"

    def get_version(self) -> str:
        return "1.0.0"

    def process(self, input: str) -> ProcessResult:
        mode = host_api.get_config("mode")
        if mode is None:
            mode = "title"
        if mode not in MODES:
            raise Err(
                ProcessError(
                    ErrorKind.UNSUPPORTED_FORMAT,
                    f"unsupported mode: {mode} (expected upper, lower, title or snake)",
                )
            )
        if input == "":
            raise Err(ProcessError(ErrorKind.INVALID_INPUT, "empty input"))
        ws = words(input)
        if mode == "upper":
            output = input.upper()
        elif mode == "lower":
            output = input.lower()
        elif mode == "snake":
            output = "_".join(w.lower() for w in ws)
        else:
            output = title(input)
        host_api.log(host_api.LogLevel.INFO, f"textcase: mode={mode} words={len(ws)}")
        return ProcessResult(output, [KeyValue("words", str(len(ws)))])
