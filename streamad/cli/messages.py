"""Error messages of the command line: name the options that users type, not the Python parameters."""

from __future__ import annotations

import argparse
import re


def name_options(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Rewrite the Python parameters in ``message`` that are options of ``parser`` as those options.

    Library errors name the Python parameter (``max_fill=-1 is invalid; ... raise max_fill``)
    that the command passed on from its option of the same destination. ``name=value``
    becomes ``--name value``, a list of names ``name=['a', 'b']`` becomes ``--name a,b``, and
    a bare name with an underscore becomes ``--name``. A bare name without an underscore is
    left alone, because it may be an ordinary word such as "window", and so is a name in
    braces, which is a template placeholder.
    Names that are not options of ``parser``, such as the fields of a ``select`` grid file,
    are left as they are.
    """
    if parser is None:
        return message
    flags = {}
    for action in parser._actions:  # argparse has no public list of a parser's actions
        long_flags = [option for option in action.option_strings if option.startswith("--")]
        if long_flags and action.dest not in ("help", "config"):
            flags[action.dest] = long_flags[0]
    if not flags:
        return message

    names = "|".join(re.escape(dest) for dest in sorted(flags, key=len, reverse=True))
    # A list of names, "channels=['a', 'b']", becomes the comma-separated "--channels a,b".
    name_list = re.compile(rf"(?<![\w.-])({names})=\[((?:'[^',]*'(?:, )?)+)\]")
    message = name_list.sub(
        lambda match: flags[match.group(1)] + " " + ",".join(re.findall(r"'([^']*)'", match.group(2))), message
    )
    assignment = re.compile(rf"(?<![\w.-])({names})=")
    for dest in set(assignment.findall(message)):
        # A message that already names the option after the parameter: "resolve_after=0 (--resolve-after)".
        message = message.replace(f" ({flags[dest]})", "")
    message = assignment.sub(lambda match: flags[match.group(1)] + " ", message)

    identifiers = "|".join(re.escape(dest) for dest in sorted(flags, key=len, reverse=True) if "_" in dest)
    if identifiers:
        # A name in braces is a template placeholder such as "{top_channels}", not an option.
        bare = re.compile(rf"(?<![\w.{{-])({identifiers})(?![\w=}}])")
        message = bare.sub(lambda match: flags[match.group(1)], message)
    return message
