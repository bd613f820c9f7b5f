"""Options from TOML files and matrix values from the command line.

``--config FILE.toml`` supplies defaults for any option of a command; flags given on the
command line win. A file may hold options at top level or in a table named after the
command (``[run]``, ``[train]``), with dashes or underscores in the keys.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import click

from bench.guidance import GuidanceIntervalError, parse_interval


def read_config_file(path: str | Path, command: str, commands: Collection[str] = ()) -> dict[str, Any]:
    """The option defaults for ``command`` from a TOML file (keys normalised to underscores).

    ``commands``: the table names a file may hold (the CLI's commands); another table, e.g. a
    misspelt ``[runn]``, is an error rather than options silently ignored.
    """
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (some editors write one) read as "Invalid statement" at 1:1
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise click.BadParameter(f"config file {path} does not exist", param_hint="--config") from None
    except UnicodeDecodeError as e:  # a UTF-16 save or a binary file was a traceback
        raise click.BadParameter(
            f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8, as TOML requires",
            param_hint="--config",
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise click.BadParameter(
            f"config file {path} is not valid TOML: {e}", param_hint="--config"
        ) from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    strangers = [t for t in tables if commands and t not in commands and t != command]
    if strangers:
        raise click.BadParameter(
            f"config file {path} has table(s) [{'], ['.join(strangers)}] that name no bench command "
            f"(tables are named after commands: {', '.join(sorted(commands))})",
            param_hint="--config",
        )
    section = data.get(command, {})
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if not flat and not section:
        # A [train-judge] file given to `bench run` started the whole default run instead.
        held = f"it holds only [{'], ['.join(tables)}]" if tables else "it is empty"
        raise click.BadParameter(
            f"config file {path} gives `bench {command}` no option: {held}; "
            f"put them under [{command}] or at the top level",
            param_hint="--config",
        )
    merged = {**flat, **(section if isinstance(section, dict) else {})}
    return {key.replace("-", "_"): value for key, value in merged.items()}


def _as_option_value(param: click.Parameter, value: Any, key: str = "", path: str = "") -> Any:
    """A TOML value as the option takes it: a list for a repeatable option (one string becomes a
    list of one); for the others a TOML list becomes the comma-separated text the matrix options
    parse (``scheduler = ["cosine", "ddim"]`` reads as ``--scheduler cosine,ddim``). A number goes
    as the text typed on the command line would, so ``batch-size = 1.5`` is refused as
    ``--batch-size 1.5`` is (click's integer type truncated the float); a flag takes true or false."""
    if getattr(param, "multiple", False):
        return [str(v) for v in value] if isinstance(value, list) else [value]
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise click.BadParameter(
                f"{key} = {value!r} in {path}: write true or false", param_hint="--config"
            )
        return value
    if isinstance(value, bool):
        raise click.BadParameter(
            f"{key} = {value!r} in {path}: this option takes a value", param_hint="--config"
        )
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value) if isinstance(value, int | float) else value


def _apply_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        # A key is an option as typed on the command line (``scheduler``, ``batch-size``) or its
        # parameter name (``schedulers``); both reach the same parameter.
        names = {p.name: p.name for p in ctx.command.params if p.name and p.name != "config"}
        for param in ctx.command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and param.name != "config":
                    names[opt[2:].replace("-", "_")] = param.name
        group = ctx.parent.command if ctx.parent is not None else None
        commands = list(group.commands) if isinstance(group, click.Group) else []
        defaults = read_config_file(value, ctx.command.name or "", commands)
        unknown = sorted(set(defaults) - set(names))
        if unknown:
            raise click.BadParameter(
                f"unknown option(s) in {value}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(k.replace('_', '-') for k in names))})",
                param_hint="--config",
            )
        params = {p.name: p for p in ctx.command.params}
        mapped = {names[k]: _as_option_value(params[names[k]], v, k, value) for k, v in defaults.items()}
        ctx.default_map = {**(ctx.default_map or {}), **mapped}
    return value


def config_option(f):
    """The ``--config FILE`` option; processed first so its values become defaults."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_apply_config,
        help="TOML file of option defaults; command-line flags win.",
    )(f)


def parse_list(value: str | None) -> list[str]:
    """``"cosine,ddim"`` -> ``["cosine", "ddim"]`` (empty items dropped)."""
    if value is None:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()]


def parse_int_list(value: str | None, what: str = "value") -> list[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"25,100"`` -> ``[25, 100]``; ranges and lists mix."""
    out: list[int] = []
    for item in parse_list(value):
        try:
            if "-" in item.lstrip("-")[0:] and not item.startswith("-"):
                lo, hi = (int(x) for x in item.split("-", 1))
                if hi < lo:
                    raise click.BadParameter(f"{what} range {item!r} runs backwards; write {hi}-{lo}")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise click.BadParameter(f"{what} {item!r} is not an integer or a range like 1-3") from None
    return out


def parse_float_list(value: str | None, what: str = "value") -> list[float]:
    out = []
    for item in parse_list(value):
        try:
            out.append(float(item))
        except ValueError:
            raise click.BadParameter(f"{what} {item!r} is not a number") from None
    return out


class IntervalParam(click.ParamType):
    """``LO,HI`` -> ``(lo, hi)`` training timesteps (``--guidance-interval 300,1000``)."""

    name = "LO,HI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        try:
            return parse_interval(value)
        except GuidanceIntervalError as error:
            self.fail(str(error), param, ctx)


INTERVAL = IntervalParam()
