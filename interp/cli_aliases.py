"""Option names retired from the `interp` command, still understood for one release.

The command speaks one dialect (../shared/STYLE.md): one name per thing, units in names. Names used
before it are rewritten to the current ones before the command line is parsed, with one note on
stderr per rewritten name, so old scripts keep working while they are updated. Only `interp.cli.main`
(the console script) rewrites; the commands themselves declare the current names alone.
"""

from __future__ import annotations

import sys

# command path -> {old option: current option}
RENAMED: dict[tuple[str, ...], dict[str, str]] = {
    ("cache",): {"--batch-size": "--batch-contexts"},
    ("probe",): {"--points": "--hooks", "--batch-size": "--batch-texts", "--limit": "--max-texts"},
    ("tcav",): {"--points": "--hooks", "--batch-size": "--batch-texts", "--alpha": "--significance"},
    ("concepts", "nmf"): {"--point": "--hook", "--k": "--n-concepts", "--batch-size": "--batch-texts"},
    ("steer", "build"): {"--hook": "--hooks", "--batch-size": "--batch-texts"},
    ("steer", "generate"): {"--point": "--hook"},
    ("steer", "eval"): {"--probe-point": "--hook"},
    ("sae", "train"): {"--hook": "--hooks", "--batch-size": "--batch-tokens"},
    ("sae", "eval"): {"--batch-size": "--batch-contexts"},
    ("sae", "features"): {"--batch-size": "--batch-contexts", "--n-top": "--top-n"},
    ("grains", "build"): {"--hook": "--hooks", "--top-k": "--n-tokens"},
}


def rewrite(argv: list[str]) -> list[str]:
    """`argv` with retired option names of its command replaced by the current ones (a note on stderr
    for each). The command is the longest prefix of `argv` that names one in `RENAMED`."""
    path = next((p for p in sorted(RENAMED, key=len, reverse=True) if tuple(argv[: len(p)]) == p), None)
    if path is None:
        return argv
    table = RENAMED[path]
    out = list(argv[: len(path)])
    for arg in argv[len(path):]:
        name, eq, value = arg.partition("=")
        if name in table:
            print(f"note: {' '.join(path)} {name} is now {table[name]}; the old name stops working in the next release",
                  file=sys.stderr)
            arg = table[name] + eq + value
        out.append(arg)
    return out
