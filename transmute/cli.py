"""The `transmute` command line.

Importing this module must stay cheap: `transmute --help` imports click, pluggy
and the plugin modules' hook files, never torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from transmute import __version__
from transmute.errors import TransmuteError


class TransmuteGroup(click.Group):
    """Adds plugin commands lazily and turns user errors into one-line messages."""

    def _plugin_commands(self) -> None:
        from transmute.plugins import get_manager

        get_manager().add_commands(self)

    def list_commands(self, ctx):
        self._plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        if name not in self.commands:
            self._plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TransmuteError as exc:
            error = click.ClickException(" ".join(str(exc).split()))
            error.exit_code = exc.exit_code  # 130/143 for training stopped by Ctrl-C/SIGTERM, as `run` exits
            raise error from None


class PluginCommandGroup(click.Group):
    """A command group whose subcommands come from a plugin hook (trainers, evaluators)."""

    hookname = ""

    def _fill(self):
        from transmute.plugins import get_manager

        get_manager().add_subcommands(self, self.hookname)

    def list_commands(self, ctx):
        self._fill()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._fill()
        return super().get_command(ctx, name)


class TrainGroup(PluginCommandGroup):
    hookname = "register_trainers"


class EvalGroup(PluginCommandGroup):
    hookname = "register_evaluators"


def _disable_plugins(ctx, param, values):
    from transmute import plugins

    for name in values:
        plugins.disable(name)
    for warning in plugins.configuration_warnings(values):
        click.echo(f"warning: {warning}", err=True)
    return values


@click.group(cls=TransmuteGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="transmute")
@click.option("--disable-plugin", "disabled", multiple=True, is_eager=True, expose_value=False,
              callback=_disable_plugins, metavar="NAME",
              help="Do not load this plugin (repeatable). Also: TRANSMUTE_DISABLE_PLUGINS=a,b; "
                   "TRANSMUTE_PLUGINS=a,b loads only those.")
def cli():
    """Translate audio and images between domains through pipelines of plugin stages.

    \b
    Quick start:
      transmute pipelines                      what pipelines are installed
      transmute run resynthesize in/ -o out/   run one on files or folders
      transmute stages                         the stages pipelines can use
      transmute plugins                        installed plugins and their status
    """


def _manager():
    from transmute.plugins import get_manager

    return get_manager()


# --------------------------------------------------------------------------- listing


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json):
    """List plugins: version, status, hooks, and the stages they provide."""
    manager = _manager()
    manager.add_commands(cli)
    manager.add_subcommands(train_group, "register_trainers")
    manager.add_subcommands(eval_group, "register_evaluators")
    infos = sorted(manager.plugins.values(), key=lambda p: p.name)
    if as_json:
        click.echo(json.dumps([p.as_dict(manager.registry) for p in infos], indent=2))
        return
    for info in infos:
        status = info.status if info.status == "ok" else info.status.upper()
        click.echo(f"{info.name} {info.version or '-'}  [{status}]  ({info.module})")
        if info.reason:
            click.echo(f"  reason: {info.reason}")
        if info.hooks:
            click.echo(f"  hooks: {', '.join(info.hooks)}")
        for name in info.stages:
            d = info.stage_classes[name].describe()
            notes = ""
            if d["replaces"] and manager.registry.stage_plugin.get(d["replaces"]) == info.name:
                notes += f"; replaces {d['replaces']}"
            if name in info.replaced_by:
                notes += f"; replaced by {manager.registry.stages[name].name} (plugin {info.replaced_by[name]})"
            click.echo(f"  stage {name}: {' | '.join(d['consumes'])} -> {d['produces']}; "
                       f"params: {', '.join(d['params']) or 'none'}{notes}")
        for failed in info.failed_stages:
            click.echo(f"  stage FAILED {failed['name']} ({failed['class']}): {failed['reason']}")
        if info.pipelines:
            click.echo(f"  pipelines: {', '.join(info.pipelines)}")
        if info.commands:
            click.echo(f"  commands: {', '.join(info.commands)}")
        for warning in info.warnings:
            click.echo(f"  warning: {warning}")


@cli.command("stages")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stages_command(names, as_json):
    """List stages with what they consume and produce and their parameters."""
    registry = _manager().registry
    selected = names or sorted(registry.stages)
    for name in selected:
        if name not in registry.stages:
            from transmute.stages import suggest

            raise TransmuteError(f"no stage named '{name}'{suggest(name, registry.stages)}{registry.why_missing(name)}")
    described = []
    for n in selected:  # a replaced stage is listed under its own name, implemented by its replacement
        d = registry.stages[n].describe()
        described.append(dict(d, name=n, plugin=registry.stage_plugin[n],
                              implemented_by=d["name"] if d["name"] != n else None))
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for d in described:
        by = f", as {d['implemented_by']}" if d["implemented_by"] else ""
        click.echo(f"{d['name']}  ({d['role']}: {' | '.join(d['consumes'])} -> {d['produces']}; plugin {d['plugin']}{by})")
        if d["summary"]:
            click.echo(f"    {d['summary']}")
        for key, p in d["params"].items():
            default = "required" if p["required"] else f"default {p['default']!r}"
            choices = f"; one of {', '.join(map(str, p['choices']))}" if "choices" in p else ""
            click.echo(f"    {key} ({p['type']}, {default}{choices}): {p['help']}")


@cli.command("pipelines")
def pipelines_command():
    """List the pipelines that can be run by name."""
    from transmute.pipeline import read_pipeline_file

    registry = _manager().registry
    if not registry.pipelines:
        click.echo("no pipelines registered")
    for name in sorted(registry.pipelines):
        path = registry.pipelines[name]
        try:
            description = read_pipeline_file(path).get("pipeline", {}).get("description", "")
        except TransmuteError as exc:
            description = f"(unreadable: {exc})"
        click.echo(f"{name:24s} {description}  [{registry.pipeline_plugin[name]}: {path}]")


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_command(as_json):
    """List the models installed plugins ship (usable wherever a stage takes a model)."""
    from transmute.checkpoint import read_metadata

    registry = _manager().registry
    rows = []
    for name in sorted(registry.models):
        path, description = registry.models[name]
        try:
            meta = read_metadata(path)
            made = f"{meta.get('plugin')}/{meta.get('model')} {meta.get('version')}"
        except TransmuteError as exc:
            meta, made = {}, f"unreadable: {exc}"
        rows.append({"name": name, "plugin": registry.model_plugin[name], "path": str(path),
                     "description": description, "checkpoint": made, "extra": meta.get("extra", {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models registered")
    for row in rows:
        click.echo(f"{row['name']:16s} {row['description']}  [{row['plugin']}: {row['checkpoint']}; {row['path']}]")


_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE",
    help="Override a stage parameter (repeatable); values are TOML literals, e.g. --set griffinlim.n_iter=64.",
)


@cli.command("describe")
@click.argument("pipeline")
@_set_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def describe_command(pipeline, overrides, as_json):
    """Check a pipeline and show its stages, parameters and the signal between each."""
    from transmute.pipeline import build_pipeline

    built = build_pipeline(pipeline, _manager().registry, list(overrides))
    d = built.describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{d['name']}: {d['description']}")
    click.echo(f"  file: {d['source']}  batch_size: {d['batch_size']}  device: {d['device']}")
    click.echo("  stages (name = what --set NAME.PARAM=VALUE refers to; use = the stage type):")
    for i, s in enumerate(d["stages"], 1):
        params = ", ".join(f"{k}={v!r}" for k, v in s["params"].items())
        click.echo(f"  {i}. name = {s['name']!r}, use = {s['use']!r}: {' | '.join(s['consumes'])} -> {s['produces']}")
        click.echo(f"       {params}")
    click.echo("  check: ok (types and specs match from first to last stage)")


# --------------------------------------------------------------------------- running


workers_option = click.option(
    "--workers", type=click.IntRange(min=0), default=None, metavar="N",
    help="Threads that decode inputs and encode outputs while the model computes "
         "(default: one per CPU core, 2 to 8; 0: all on the main thread). Outputs do not depend on it.")
tf32_option = click.option(
    "--tf32/--no-tf32", default=None,
    help="Allow TensorFloat-32 matmuls and convolutions on CUDA: faster, less exact "
         "(default: off, or TRANSMUTE_TF32=1).")


class RunPrinter:
    """What the command line shows of a transmute.run: progress, failures, warnings, summary, exit status.

    Commands pass .start and .outcome as run()'s on_start and on_outcome, then
    call .finish(report), which exits 1 if an input failed, 130/143 if stopped.
    Under torchrun, every rank prints its own files' failures and warnings; only
    rank 0 shows a progress bar (of its share) and the summary (of every rank),
    and only its exit status counts the failures: another rank that exits
    first with 1 would make torchrun stop rank 0 before its summary.
    """

    def __init__(self, name: str, outdir, quiet: bool = False):
        self.name, self.outdir, self.quiet = name, outdir, quiet
        self.bar = None

    def start(self, total: int) -> None:
        from transmute.runner import torchrun_shard

        if not self.quiet and sys.stderr.isatty() and torchrun_shard().rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", desc=self.name, file=sys.stderr, dynamic_ncols=True)

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)

    def outcome(self, outcome) -> None:
        for warning in outcome.warnings:
            self.say(f"warning: {outcome.job.label}: {warning}")
        if outcome.status == "failed":
            self.say(f"FAILED {outcome.job.label}: {outcome.reason}")
        if self.bar is not None:
            self.bar.update(1)

    def finish(self, report) -> None:
        if self.bar is not None:
            self.bar.close()
        if report.rank != 0:
            if report.interrupted:
                sys.exit(128 + int(report.interrupted))
            return
        if report.removed_temporaries and not self.quiet:
            click.echo(f"removed {len(report.removed_temporaries)} temporary file(s) that an earlier, "
                       "killed run left", err=True)
        if report.ignored and not self.quiet:
            shown = ", ".join(str(p) for p in report.ignored[:3]) + (" ..." if len(report.ignored) > 3 else "")
            click.echo(f"ignored {len(report.ignored)} file(s) this pipeline does not read: {shown}", err=True)
        where = f"device {report.device}" if report.world_size == 1 else \
            f"{report.world_size} processes, device {report.device}"
        click.echo(f"{report.pipeline or self.name}: {report.summary()} -> {self.outdir} ({where})", err=True)
        if report.interrupted:
            click.echo("interrupted: run the same command again to continue where it stopped", err=True)
            sys.exit(128 + int(report.interrupted))
        if report.failed:
            sys.exit(1)


@cli.command("run")
@click.argument("pipeline")
@click.argument("inputs", nargs=-1, type=click.Path(readable=False))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False, readable=False),
              help="Folder for the outputs (created if missing). What is inside each input folder lands directly "
                   "in it, sub-folders mirrored; a file named on the command line lands at its top.")
@_set_option
@click.option("--device", default=None, metavar="auto|cpu|cuda[:N]",
              help="Where stages run (default: the pipeline's, else auto).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Items per batch.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="For generating pipelines: how many items to make.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist (default: skip them).")
@workers_option
@tf32_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; only failures, warnings and the summary.")
def run_command(pipeline, inputs, outdir, overrides, device, batch_size, count, overwrite, workers, tf32, quiet):
    """Run PIPELINE (a name or a .toml path) on INPUTS (files or folders) into OUTPUT.

    Outputs are written atomically; existing ones are skipped, so running the
    same command again after an interruption (Ctrl-C, SIGTERM) continues where
    it stopped. An input that fails is reported and the rest go on; the exit
    status is 1 if any input failed.
    """
    from transmute.runner import run

    name = Path(pipeline).stem if pipeline.endswith(".toml") else pipeline
    printer = RunPrinter(name, outdir, quiet)
    report = run(pipeline, inputs, outdir, overrides=overrides, device=device, batch_size=batch_size, count=count,
                 overwrite=overwrite, workers=workers, tf32=tf32, on_start=printer.start,
                 on_outcome=printer.outcome)
    printer.finish(report)


@cli.group("train", cls=TrainGroup)
def train_group():
    """Train a model family: transmute train FAMILY --help shows its options."""


@cli.group("eval", cls=EvalGroup)
def eval_group():
    """Evaluate results: transmute eval KIND --help shows its options."""


@cli.command("new-plugin")
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False))
def new_plugin_command(name, directory):
    """Write a ready-to-install plugin package NAME into DIRECTORY to start from."""
    from transmute.scaffold import write_plugin

    written = write_plugin(name, Path(directory))
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"next: pip install -e {directory} && transmute stages {name}.gain "
               f"&& (cd {directory} && python -m pytest)")


def main(argv=None):
    return cli.main(args=argv, prog_name="transmute")


if __name__ == "__main__":  # pragma: no cover
    main()
