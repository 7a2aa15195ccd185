"""value.png: PIL images and matplotlib figures.

  * value.png: PIL images in a mode PNG stores (1, L, LA, I, I;16, P, RGB, RGBA) are saved as they are; other
    modes are converted to RGBA when they carry alpha, else RGB. Matplotlib figures are saved with
    `savefig(format="png")` at the figure's own dpi.

PIL and matplotlib are imported only inside the renderers, and only for a value of their own module.
"""
from __future__ import annotations

import io
from typing import Any, List

from .rule import Example, ExportRule, WrongKind


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


def _read_png(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data))


def _image_examples() -> List[Example]:
    from PIL import Image

    gradient = Image.linear_gradient("L").resize((37, 21))
    buffer = io.BytesIO()
    gradient.convert("RGBA").save(buffer, format="PNG")
    opened = Image.open(io.BytesIO(buffer.getvalue()))  # a PngImageFile, as an artifact often is
    cmyk = gradient.convert("CMYK")
    return [
        Example(gradient, gradient),
        Example(gradient.convert("RGB"), gradient.convert("RGB")),
        Example(opened, opened),
        Example(cmyk, cmyk.convert("RGB")),
    ]


def _figure_examples() -> List[Example]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    figure = Figure(figsize=(3, 2), dpi=50)
    figure.add_subplot().plot([0, 1, 2], [2, 0, 1])
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = Image.frombuffer("RGBA", canvas.get_width_height(), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
    return [Example(figure, pixels)]


PIL_IMAGE = ExportRule("value.png", fits=_is_pil_image_type, needs=("PIL",),
                       render=_render_image_png, read_back=_read_png, examples=_image_examples)
FIGURE = ExportRule("value.png", fits=lambda qualname: qualname == "matplotlib.figure.Figure", needs=("matplotlib",),
                    render=_render_figure_png, read_back=_read_png, examples=_figure_examples)
