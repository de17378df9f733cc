"""One CLI dialect (../shared/STYLE.md): every command's options are read from typer, and one name
with two meanings, or one meaning with two names, fails here."""

from __future__ import annotations

import typer

from interp.cli import _mount, app, main
from interp.cli_aliases import RENAMED, rewrite

# Names STYLE.md retires: the name, and the name that replaces it.
RETIRED = {"--point": "--hook", "--points": "--hooks", "--probe-point": "--hook", "--batch-size": "--batch-texts|-contexts|-tokens",
           "--n-top": "--top-n", "--limit": "--max-texts"}
# A name with one meaning: every command that has it says this in its help (lower case).
MEANING = {
    "--alpha": "strength", "--k": "latents", "--batch-tokens": "tokens", "--batch-texts": "texts",
    "--batch-contexts": "contexts", "--top-n": "top", "--hook": "hook point", "--hooks": "hook point",
    "--model": "model", "--device": "cuda", "--seed": "seed", "--resume": "continue",
    "--overwrite": "replace", "--significance": "significance", "--n-concepts": "concepts", "--max-texts": "first",
    "--top-k": "sample",
}
# One thing, one name: help texts that say these words belong to the named options only.
OWNER = {"significance level": {"--significance"}, "number of concepts": {"--n-concepts"}, "random seed": {"--seed"}}
SHORT = {"--model": "-m", "--out": "-o"}


def _options() -> list[tuple[str, str, object]]:
    """(command path, option name, click parameter) for every visible option of every command."""
    _mount()
    found = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        for p in cmd.params:
            if p.param_type_name == "option" and not p.hidden:
                for name in p.opts + p.secondary_opts:
                    if name.startswith("--"):
                        found.append((path, name, p))

    walk(typer.main.get_command(app), "")
    return found


def test_the_command_tree_is_read():
    paths = {path for path, _, _ in _options()}
    assert {"cache", "probe", "tcav", "steer build", "steer generate", "sae train", "sae eval", "concepts nmf"} <= paths


def test_retired_names_are_gone():
    bad = sorted({f"{path} {name} (use {RETIRED[name]})" for path, name, _ in _options() if name in RETIRED})
    assert not bad, bad


def test_one_name_one_meaning():
    wrong = sorted(f"{path} {name}: help lacks {word!r}" for path, name, p in _options()
                   if (word := MEANING.get(name)) and word not in (p.help or "").lower())
    assert not wrong, wrong


def test_one_meaning_one_name():
    wrong = sorted(f"{path} {name} says {phrase!r}" for path, name, p in _options()
                   for phrase, owners in OWNER.items() if phrase in (p.help or "").lower() and name not in owners)
    assert not wrong, wrong


def test_short_flags_and_types_agree_everywhere():
    shorts = {(name, tuple(sorted(o for o in p.opts if not o.startswith("--")))) for _, name, p in _options() if name in SHORT}
    assert shorts == {(name, (flag,)) for name, flag in SHORT.items()}, shorts
    kinds: dict[str, set[str]] = {}
    for _, name, p in _options():  # a repeatable option (list[str]) takes the same values as a single one
        kinds.setdefault(name, set()).add("flag" if p.is_flag else str(p.bare_type()).removeprefix("list[").removesuffix("]"))
    assert not {n: k for n, k in kinds.items() if len(k) > 1}, kinds


def test_retired_names_still_work_with_a_note(capsys):
    assert rewrite(["sae", "train", "--batch-size", "64", "--hook=blocks.0.hook_resid_post"]) == [
        "sae", "train", "--batch-tokens", "64", "--hooks=blocks.0.hook_resid_post"]
    assert rewrite(["steer", "generate", "--point", "x"]) == ["steer", "generate", "--hook", "x"]
    assert rewrite(["inspect", "--point", "x"]) == ["inspect", "--point", "x"]
    err = capsys.readouterr().err
    assert "sae train --batch-size is now --batch-tokens" in err and err.count("note:") == 3
    # every retired name maps onto a current option of its command
    current = {(path, name) for path, name, _ in _options()}
    missing = sorted((path, new) for path, table in RENAMED.items() for new in table.values() if (" ".join(path), new) not in current)
    assert not missing, missing
    assert main(["sae", "train", "--batch-size", "0", "--out", "/nonexistent/x"]) == 1
    assert "--batch-tokens must be positive" in capsys.readouterr().err
