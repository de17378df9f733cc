"""One manifest schema for every artifact, and one check before an artifact is reused.

Every artifact folder (activation store, SAE, probe result, CAV, steering vector) records what
made it with the same five fields:

    model             the model's name (`interp.models.model_name`)
    points            the hook points, in order
    widths            {point: width of the activation row at that point}
    data_fingerprint  `interp.data.fingerprint` of the text it was made from (None: no data)
    ctx_len           context length in tokens, BOS included (None: not a fixed length)

`check_manifest(have, want, what)` compares an artifact's manifest with what the caller is about
to do and raises one `InterpError` that names every field that differs. A field the caller sets to
None in `want` is not checked (an SAE applied to new text does not care about the text it was
trained on); `want`'s points must be among `have`'s, with equal widths.
"""

from __future__ import annotations

from typing import Any, Mapping

from interp.errors import InterpError

FIELDS = ("model", "points", "widths", "data_fingerprint", "ctx_len")
UNKNOWN_MODELS = (None, "", "unknown")


def make_manifest(
    model: str | None,
    widths: Mapping[str, int],
    data_fingerprint: str | None = None,
    ctx_len: int | None = None,
) -> dict[str, Any]:
    """The schema's five fields, for `widths` `{point: width}` (its order is the points' order)."""
    return {
        "model": model,
        "points": list(widths),
        "widths": {p: int(w) for p, w in widths.items()},
        "data_fingerprint": data_fingerprint,
        "ctx_len": None if ctx_len is None else int(ctx_len),
    }


def differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """`field: have vs want` for each schema field in which `have` does not serve `want`."""
    out: list[str] = []
    if want.get("model") not in UNKNOWN_MODELS and have.get("model") not in UNKNOWN_MODELS and have.get("model") != want.get("model"):
        out.append(f"model {have.get('model')!r} vs {want.get('model')!r}")
    have_widths = dict(have.get("widths") or {})
    want_widths = dict(want.get("widths") or {p: None for p in want.get("points") or []})
    missing = [p for p in want_widths if p not in have_widths]
    if missing:
        out.append(f"points {list(have_widths)} lack {missing}")
    wrong = [f"{p} {have_widths[p]} vs {w}" for p, w in want_widths.items() if p in have_widths and w is not None and have_widths[p] != w]
    if wrong:
        out.append("width " + ", ".join(wrong))
    for key in ("data_fingerprint", "ctx_len"):
        if want.get(key) is not None and have.get(key) != want.get(key):
            out.append(f"{key} {have.get(key)!r} vs {want.get(key)!r}")
    return out


def check_manifest(have: Mapping[str, Any], want: Mapping[str, Any], what: str, fix: str = "") -> None:
    """Raise InterpError when the artifact `what` (manifest `have`) cannot serve `want`.

    The message lists every differing field (`have` value vs wanted value) and ends with `fix`
    (what to do), e.g. "choose another --store or delete it".
    """
    diff = differences(have, want)
    if diff:
        tail = f": {fix}" if fix else ""
        raise InterpError(f"{what} was made with other settings ({'; '.join(diff)}){tail}")
