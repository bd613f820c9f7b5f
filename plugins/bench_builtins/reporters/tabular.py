"""Text tables through tabulate: terminal, GitHub Markdown and LaTeX."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate


class TabularReporter:
    """A config header, then each table under its title, in one tabulate format."""

    def __init__(self, tablefmt: str = "simple", **options: Any) -> None:
        self.tablefmt = tablefmt
        self.options = options

    def __call__(self, report) -> str:
        markdown = self.tablefmt == "github"
        parts = []
        if report.header:
            if markdown:
                parts.append("\n".join(f"> {line}  " for line in report.header))
            else:
                parts.append("\n".join(report.header))
        for table in report.tables:
            title = f"### {table.title}" if markdown else table.title
            rows = table.rows
            if markdown:  # a | opened a column of its own, a newline (a torch error's) a row
                rows = [[_markdown_cell(cell) for cell in row] for row in rows]
            body = tabulate(rows, headers=table.headers, tablefmt=self.tablefmt, disable_numparse=True)
            parts.append(f"{title}\n\n{body}")
        if not report.tables:
            parts.append("(no rows)")
        return "\n\n".join(parts) + "\n"


def _markdown_cell(cell: Any) -> Any:
    if not isinstance(cell, str):
        return cell
    return " ".join(cell.split()).replace("|", "\\|")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # OT1, pdflatex's default font encoding, prints these three as an em dash and inverted ! and ?
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
# after escaping: symbols that plain pdflatex cannot typeset from Unicode
_LATEX_SYMBOLS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "×": r"$\times$"}


def latex_escape(text: Any) -> str:
    """Escape LaTeX specials, then spell arrows and ± as math symbols."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for symbol, macro in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, macro)
    return out


class LatexReporter:
    """One ``table`` environment per table (booktabs rules, needs ``\\usepackage{booktabs}``).

    Built by hand rather than through tabulate's latex formats, which would escape our
    ``$\\pm$`` and arrows a second time.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options

    def __call__(self, report) -> str:
        header = ["% bench report; needs \\usepackage{booktabs}"] + [f"% {line}" for line in report.header]
        parts = ["\n".join(header)]
        for table in report.tables:
            # figures with a direction are numbers: right-aligned
            spec = "".join("r" if ("↑" in h or "↓" in h) else "l" for h in table.headers)
            lines = [
                "\\begin{table}[ht]",
                "\\centering",
                f"\\caption{{{latex_escape(table.title)}}}",
                f"\\begin{{tabular}}{{{spec}}}",
                "\\toprule",
                " & ".join(latex_escape(h) for h in table.headers) + " \\\\",
                "\\midrule",
            ]
            lines += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in table.rows]
            lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"
