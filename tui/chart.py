"""A line chart in braille cells, for the console's metric curves (no plotting dependency).

Each terminal cell holds a 2x4 grid of braille dots, so a 60x10 chart has 120x40 points of
resolution. Series are drawn in order, each in its own style; where two cross, the later one's
style colours the cell. Points are joined by straight segments; a `None` value breaks the line.
textual-plotext was tried in its place: it took about 9 times the CPU to draw the same curve at the
same size (docs/architecture.md gives the figures), so this stays.

>>> text = line_chart({"a": [(0, 0.0), (1, 1.0)]}, width=4, height=2, y_range=(0.0, 1.0))
>>> [line.rstrip() for line in text.plain.splitlines()]
['1.000 │  ⡠⠊', '0.000 │⡠⠊', '      └────']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # (row, column) -> braille bit
PALETTE = ("bold green", "cyan", "magenta", "yellow", "blue", "red", "white")

Point = tuple[float, "float | None"]


def line_chart(series: dict[str, Sequence[Point]], width: int, height: int,
               y_range: tuple[float, float] | None = None, styles: dict[str, str] | None = None,
               x_label: Callable[[float], str] | None = None, y_format: str = ".3f") -> Text:
    """Render `series` (name -> [(x, y)]) into `height` rows of `width` chart cells, plus axes.

    The y axis spans `y_range` (default: the data's range, padded); the x axis the data's range.
    `x_label` formats the first and last x under the chart.
    """
    width, height = max(2, width), max(2, height)
    points = [(x, y) for values in series.values() for x, y in values if y is not None]
    label_width = len(format(0.0, y_format)) + 1
    if not points:
        return Text("\n".join([" " * label_width + "│"] * height + [" " * label_width + "└ no points yet"]),
                    style="dim")
    xs = [x for x, _ in points]
    x0, x1 = min(xs), max(xs)
    if y_range is None:
        ys = [y for _, y in points]
        low, high = min(ys), max(ys)
        pad = (high - low) * 0.05 or 0.01
        y_range = (low - pad, high + pad)
    y0, y1 = y_range
    dots_w, dots_h = width * 2, height * 4
    cells = [[0] * width for _ in range(height)]
    owner: list[list[str | None]] = [[None] * width for _ in range(height)]

    def to_dot(x: float, y: float) -> tuple[int, int]:
        col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (dots_w - 1))
        row = round((y1 - min(max(y, y0), y1)) / ((y1 - y0) or 1.0) * (dots_h - 1))
        return col, row

    def plot(col: int, row: int, name: str) -> None:
        cell_row, cell_col = row // 4, col // 2
        cells[cell_row][cell_col] |= _DOTS[row % 4][col % 2]
        owner[cell_row][cell_col] = name

    for name, values in series.items():
        previous = None
        for x, y in values:
            if y is None:
                previous = None
                continue
            current = to_dot(x, y)
            if previous is None:
                plot(*current, name)
            else:
                steps = max(abs(current[0] - previous[0]), abs(current[1] - previous[1]), 1)
                for step in range(1, steps + 1):
                    plot(round(previous[0] + (current[0] - previous[0]) * step / steps),
                         round(previous[1] + (current[1] - previous[1]) * step / steps), name)
            previous = current

    styles = styles or {}
    palette = {name: styles.get(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(series)}
    text = Text()
    for row in range(height):
        if row == 0:
            label = format(y1, y_format)
        elif row == height - 1:
            label = format(y0, y_format)
        else:
            label = ""
        text.append(label.rjust(label_width - 1) + " │", style="dim")
        for col in range(width):
            bits = cells[row][col]
            text.append(chr(0x2800 + bits) if bits else " ", style=palette.get(owner[row][col] or "", ""))
        text.append("\n")
    axis = " " * label_width + "└" + "─" * width
    text.append(axis + "\n", style="dim")
    if x_label is not None:
        left, right = x_label(x0), x_label(x1)
        gap = max(1, width + 1 - len(left) - len(right))
        text.append(" " * label_width + left + " " * gap + right, style="dim")
    return text


def legend(names: Sequence[str], styles: dict[str, str] | None = None) -> Text:
    """One line naming each series in its chart style."""
    styles = styles or {}
    text = Text()
    for i, name in enumerate(names):
        text.append("⣿ ", style=styles.get(name, PALETTE[i % len(PALETTE)]))
        text.append(f"{name}   ")
    return text
