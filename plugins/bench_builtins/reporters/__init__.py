"""Built-in reporters plugin: the ``--format`` values of ``bench report``.

Each factory imports its renderer lazily, so ``bench list`` imports neither tabulate nor PIL.
Contract (see ``bench.hookspecs.register_reporters``): ``factory(**options) -> reporter`` with
``reporter(report) -> str``.
"""

from bench import hookimpl


@hookimpl
def register_reporters(register):
    register("plain", make_plain, aliases=("simple", "terminal"))
    register("github", make_github, aliases=("markdown", "md"))
    register("latex", make_latex, aliases=("tex",))
    register("csv", make_csv)
    register("json", make_json)
    register("html", make_html)


def make_plain(**options):
    """Terminal tables (tabulate "simple") under a config header."""
    from bench_builtins.reporters.tabular import TabularReporter

    return TabularReporter("simple", **options)


def make_github(**options):
    """GitHub-flavoured Markdown tables under a config header."""
    from bench_builtins.reporters.tabular import TabularReporter

    return TabularReporter("github", **options)


def make_latex(**options):
    """LaTeX table environments (booktabs rules), config header as comments."""
    from bench_builtins.reporters.tabular import LatexReporter

    return LatexReporter(**options)


def make_csv(**options):
    """One CSV row per config (aggregated over seeds), raw numbers for spreadsheets."""
    from bench_builtins.reporters.csv_table import CsvReporter

    return CsvReporter(**options)


def make_json(**options):
    """The whole report as JSON: header, tables, aggregated records, plot points."""
    from bench_builtins.reporters.json_doc import JsonReporter

    return JsonReporter(**options)


def make_html(**options):
    """One self-contained HTML page: tables, the Pareto plot and image grids as data URIs."""
    from bench_builtins.reporters.html_page import HtmlReporter

    return HtmlReporter(**options)
