"""value.png: PIL images and matplotlib figures.

  * value.png: PIL images in a mode PNG stores (1, L, LA, I, I;16, P, RGB, RGBA) are saved as they are; other
    modes are converted to RGBA when they carry alpha, else RGB. Matplotlib figures are saved with
    `savefig(format="png")` at the figure's own dpi.

PIL and matplotlib are imported only inside the renderers, and only for a value of their own module.
"""
from __future__ import annotations

import io
from typing import Any

from .rule import ExportRule, WrongKind


def _is_pil_image_type(qualname: str) -> bool:
    # Image.open() returns format subclasses (PIL.PngImagePlugin.PngImageFile, ...), which pickle as themselves.
    return qualname == "PIL.Image.Image" or (qualname.startswith("PIL.") and qualname.endswith("ImageFile"))


_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})  # not "LAB": its A is a colour axis


def _render_image_png(value: Any) -> bytes:
    if type(value).__module__.split(".")[0] == "PIL":
        from PIL import Image

        if isinstance(value, Image.Image):
            image = value
            if image.mode not in _PNG_MODES:
                has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    raise WrongKind("a PIL image")


def _render_figure_png(value: Any) -> bytes:
    if type(value).__module__.split(".")[0] == "matplotlib":
        from matplotlib.figure import Figure

        if isinstance(value, Figure):
            buffer = io.BytesIO()
            value.savefig(buffer, format="png")
            return buffer.getvalue()
    raise WrongKind("a matplotlib figure")


PIL_IMAGE = ExportRule("value.png", _is_pil_image_type, _render_image_png, needs=("PIL",))
FIGURE = ExportRule(
    "value.png", lambda qualname: qualname == "matplotlib.figure.Figure", _render_figure_png, needs=("matplotlib",)
)
