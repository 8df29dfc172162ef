"""`rl-lifecycle ablation`: what the feature groups of a partition challenger's spec are worth (materializes
`feature_ablation`, its own job). Registered as a top-level command by `rl_lifecycle.cli.main`."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated

import typer

from rl_lifecycle.cli.common import check_range, check_windows_exist, print_table
from rl_lifecycle.config_files import validated
from rl_lifecycle.db.migrate import open_database
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.markets.keys import Market, partition_key
from rl_lifecycle.settings import load_settings


def ablation(
    market: Annotated[str, typer.Option(help="market key, e.g. BTCUSDT-1h")],
    window: Annotated[str, typer.Option(help="window key: ablates that partition's challenger spec on its dataset")],
    groups: Annotated[str | None, typer.Option(help="comma-separated feature groups to ablate (default: all of "
                                               "the feature set's)")] = None,
    folds: Annotated[int, typer.Option(help="walk-forward folds (each variant trains a model per fold)")] = 3,
    test_size: Annotated[int | None, typer.Option(help="rows per test range (default: the largest that fits)")] = None,
    purge: Annotated[int | None, typer.Option(help="bars purged before each test range (default: the label horizon)")] = None,
    embargo: Annotated[int, typer.Option(help="bars embargoed after each test range")] = 0,
    workers: Annotated[int, typer.Option(help="fold backtests at once, one process each")] = 2,
    repeats: Annotated[int, typer.Option(help="seeded block permutations per fold and group")] = 5,
    block: Annotated[int | None, typer.Option(help="bars per permuted block (default: n^(1/3) of each test range)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the permutations")] = 0,
    version: Annotated[int | None, typer.Option(help="ablate this model version's spec (default: the partition's "
                                                "challenger)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Feature-group ablation: the challenger's spec without each group, the full spec and a position-only
    baseline, each trained and backtested on the same folds (every variant a trial of the market), plus the
    permutation importance of each group. Deltas are variant minus full set: negative = the group helps."""
    from rl_lifecycle.evaluation.folds import MAX_FOLDS
    from rl_lifecycle.orchestration.assets.ablation import FeatureAblationConfig
    from rl_lifecycle.orchestration.assets.evaluation import fold_config
    from rl_lifecycle.orchestration.partitions import WINDOW_SCHEME
    from rl_lifecycle.research.ablation import ablation_json, parse_groups

    parsed_market, parsed_window = Market.parse(market), WINDOW_SCHEME.parse(window)
    key = partition_key(parsed_market, parsed_window)
    check_windows_exist([key])
    check_range("--folds", folds, 1, MAX_FOLDS, "the walk-forward folds (each trains a model per variant)")
    config = {"folds": folds, "test_size": test_size, "purge": purge, "embargo": embargo, "workers": workers,
              "feature_groups": list(parse_groups(groups) or []) or None, "permutation_repeats": repeats,
              "permutation_block": block, "permutation_seed": seed, "model_version": version}
    options = validated(FeatureAblationConfig, config, "ablation options", "(command line)")
    fold_config(options, purge or 0)
    settings = load_settings()
    url = open_database(settings)
    _check_groups(url, parsed_market, parsed_window, options.feature_groups)
    from rl_lifecycle.cli.runs import materialize_with_progress

    # with --json, stdout holds the one JSON object: the run's progress lines go to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        (result,) = materialize_with_progress(settings, url, ["feature_ablation"], [key],
                                              run_config={"ops": {"feature_ablation": {"config": config}}})
    detail = (result.metadata.get("feature_ablation") or {}).get("detail")
    if detail is not None:
        if as_json:
            typer.echo(json.dumps(ablation_json(detail), indent=2))
        else:
            print_ablation(detail)
    if not result.ok:
        for error in result.errors:
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)


def print_ablation(detail: dict) -> None:
    """The ablation table as people read it (also `make run`'s)."""
    from rl_lifecycle.research.ablation import ABLATION_HEADERS, ablation_table

    typer.echo(f"{detail['market']} {detail['window']}: feature set {detail['feature_set']} "
               f"(fingerprint {detail['fingerprint'][:12]}, grouping {str(detail['grouping_digest'])[:12]}), "
               f"spec {detail['model_spec']}; deltas are variant - full set (negative: the group helps)")
    print_table(ABLATION_HEADERS, ablation_table(detail))
    typer.echo(f"trials of {detail['market']}: {detail['n_trials']} (+{detail['trials_added']} by this "
               "ablation's variants; they count in the DSR and the PBO)")


def _check_groups(url: str, market: Market, window, groups: list[str] | None) -> None:
    """Refuse, before a run is launched, groups the partition dataset's feature set does not have."""
    from rl_lifecycle.db.connection import connect
    from rl_lifecycle.features.spec import load_feature_set
    from rl_lifecycle.models.service import training_data

    with connect(url) as conn:
        data = training_data(conn, market, window)
    features = load_feature_set(data.features.name, anchor=data.features.anchor)
    if features.groups is None:
        raise UserInputError(f"feature set {features.name} declares no feature groups: nothing to ablate; nothing was run")
    for group in groups or ():
        features.group_features(group)


feature_set_app = typer.Typer(no_args_is_help=True, help="Feature sets: constrained sets derived from evidence.")


@feature_set_app.command("derive")
def derive(
    base: Annotated[str, typer.Option("--from", help="the set to start from: a shipped name (ta_v2) or a YAML path")],
    drop: Annotated[list[str], typer.Option(help="a feature group to leave out (repeat, or comma-separated)")],
    name: Annotated[str, typer.Option(help="the new set's name (its file: rl_lifecycle/features/sets/NAME.yaml)")],
    out: Annotated[str | None, typer.Option(help="write the YAML here instead")] = None,
    version: Annotated[int, typer.Option(help="the new set's version")] = 1,
) -> None:
    """Write a new versioned feature-set YAML: the base set without the dropped groups' features, computed by
    the same canonical pipeline (same warmup: the kept features' values are the base's), a fingerprint of its
    own. Select it with RL_FEATURE_SET or a model spec's `feature_set`."""
    from pathlib import Path

    from rl_lifecycle.features.spec import load_feature_set, write_derived_feature_set

    groups = [g.strip() for item in drop for g in item.split(",") if g.strip()]
    path = write_derived_feature_set(base, groups, name, Path(out) if out else None, version)
    derived = load_feature_set(path)
    typer.echo(f"{path}: feature set {derived.name} v{derived.version}, {len(derived.feature_names)} features "
               f"({', '.join(derived.feature_names)}), groups {', '.join(derived.group_names)}, "
               f"fingerprint {derived.fingerprint[:12]}")
