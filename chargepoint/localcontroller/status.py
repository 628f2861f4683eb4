"""``chargepoint status`` against a local controller: the site view as text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _a(v: Any) -> str:
    return "-" if not isinstance(v, int | float) or isinstance(v, bool) else f"{v:.1f}"


def format_site(snap: Mapping[str, Any]) -> str:
    site = snap.get("site") or {}
    lines = [
        f"local controller {snap.get('id')} on {snap.get('url')}: CSMS {snap.get('csms')} "
        f"(boot {snap.get('boot')}), queued messages: {snap.get('queued')}",
        "site limit per phase: " + " / ".join(_a(x) for x in site.get("limit_a", [])) + " A "
        f"({site.get('limit_source')}; fuse " + " / ".join(_a(x) for x in site.get("fuse_a", [])) + " A), "
        "committed: " + " / ".join(_a(x) for x in site.get("committed_a", [])) + " A",
        "",
    ]
    header = ["ID", "LINK", "UPSTREAM", "STATUS", "ALLOC A", "MEASURED A", "SAFE A", "QUEUED", "WHY"]
    rows = []
    for b in snap.get("charge_points") or []:
        statuses = ",".join(f"{k}:{v}" for k, v in (b.get("statuses") or {}).items()) or "-"
        measured = "/".join(_a(x) for x in b.get("measured_a") or []) or "-"
        rows.append([str(b.get("id")), "up" if b.get("connected") else "down", str(b.get("upstream")), statuses,
                     _a(b.get("allocation_a")), measured, _a(b.get("safe_default_a")) + ("" if b.get("safe_default_installed") else " (not installed)"),
                     str(b.get("queued")),
                     str(b.get("why"))])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines.append(fmt.format(*header).rstrip())
    lines += [fmt.format(*r).rstrip() for r in rows]
    return "\n".join(lines)
