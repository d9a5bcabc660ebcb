"""One self-contained HTML report (images inlined as PNG data URIs, no scripts, no external files) and
the small pieces it is built from. The content is decided by the caller; this module only renders."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.pix { image-rendering: pixelated; } .note { color: #666; font-size: 0.9em; }
figure { display: inline-block; margin: 0.3em; text-align: center; } figcaption { font-size: 0.85em; max-width: 260px; }
.ok { color: #176f2c; } .bad { color: #a32020; }
"""


@dataclass
class Section:
    title: str
    blocks: list[str] = field(default_factory=list)  # HTML fragments, already escaped


def png_uri(image: np.ndarray | Image.Image) -> str:
    """uint8 HWC array (or PIL image) -> ``data:image/png;base64,...``."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def img(image: np.ndarray | Image.Image, width: int | None = None, alt: str = "") -> str:
    size = f' width="{width}"' if width else ""
    return f'<img class="pix" src="{png_uri(image)}"{size} alt="{html.escape(alt)}">'


def figure(image: np.ndarray | Image.Image, caption: str, width: int | None = None) -> str:
    return f"<figure>{img(image, width, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class Raw(str):
    """An HTML fragment placed in a table cell as is (an image, a styled word)."""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [f'<td class="num">{fmt(v, digits)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
                 else f"<td>{v if isinstance(v, Raw) else html.escape(fmt(v, digits))}</td>" for v in row]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def paragraph(text: str, note: bool = False) -> str:
    return f'<p{" class=note" if note else ""}>{html.escape(text)}</p>'


def render(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
    parts = [f'<h2 id="s{i}">{html.escape(s.title)}</h2>' + "\n".join(s.blocks) for i, s in enumerate(sections)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{paragraph(subtitle, note=True) if subtitle else ''}<ul>{toc}</ul>" + "\n".join(parts)
            + "</body></html>\n")


def line_plot(rows: Sequence[dict[str, Any]], keys: Sequence[str], title: str) -> np.ndarray | None:
    """Curves of ``keys`` against ``step`` as a uint8 image (None when no key has data)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    present = [k for k in keys if any(r.get(k) not in (None, "") for r in rows)]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for key in present:
        points = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        ax.plot(*zip(*points, strict=True), label=key, lw=1.3)
    ax.set(title=title, xlabel="step", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
