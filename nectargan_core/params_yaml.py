"""Reading a params file's YAML safely: no tags that build Python objects, no key given twice, and
input that would crash or stall Python (deep nesting, unhashable keys, numbers past 4300 digits)
stopped with its line, so that ``settings`` reports it as one line naming the file and the line.
"""

from __future__ import annotations

from typing import Any

import yaml

_MAX_DEPTH = 64
_MERGE = "tag:yaml.org,2002:merge"


class ParamsLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not 'the last wins',
    and that nesting, keys and numbers that would crash Python stop with the line instead."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {_MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        """The scanner reads ahead through an open '[' or '{' (time grows with the square of the depth)."""
        if self.flow_level >= _MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {_MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, "a number too long for Python (over 4300 digits)", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():  # !!set [a]: refused below
            if key_node.tag == _MERGE:  # '<<: *anchor' merges a mapping: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name, not a list or a mapping", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in one mapping (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_constructor("tag:yaml.org,2002:int", ParamsLoader.construct_yaml_int)


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """PyYAML's several-line message as one line: where (line, column) and what."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return f"not valid YAML{where}: {exc.problem or exc.context}{context}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return f"not valid YAML at line {line}: character #x{exc.character:04x}: {exc.reason}"
    return f"not valid YAML: {exc}"
