"""A figure (ours, baseline, ratio) and the table they are printed in."""
from __future__ import annotations

from typing import Sequence


def figure(section: str, name: str, ours, baseline, unit: str = "", better: str = "higher", note: str = "",
           ratio: float | None = None) -> dict:
    if ratio is None and isinstance(ours, (int, float)) and isinstance(baseline, (int, float)) and baseline:
        ratio = ours / baseline
    return {"section": section, "figure": name, "unit": unit, "ours": ours, "baseline": baseline,
            "ratio": None if ratio is None else round(ratio, 3), "better": better, "note": note}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.3g}" if a < 1 else f"{v:.2f}" if a < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(figs: Sequence[dict]) -> str:
    head = ["section", "figure", "ours", "baseline", "ratio", "baseline is"]
    rows = [[f["section"], f["figure"] + (f" ({f['unit']})" if f["unit"] else ""), _fmt(f["ours"]),
             _fmt(f["baseline"]), ("-" if f["ratio"] is None else f"{f['ratio']:.2f}x"), f["note"]] for f in figs]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
