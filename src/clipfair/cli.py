"""Command line: `clipfair run` (Hydra app), `clipfair cache`, `clipfair compare`,
`clipfair collect`.

Layer: cli (the edge).

Hydra and `instantiate` live here only; the core takes typed objects (the config validated by
:func:`clipfair.run.schema.validate`) and the analyses composed from the registry
(:mod:`clipfair.analyses.compose`); this module names no analysis.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("clipfair")

CONFIG_PATH = "pkg://clipfair.configs"


def demo_dir() -> Path:
    return Path(__file__).resolve().parent / "demo"


def _demo_resolver(part: str) -> str:
    return str(demo_dir() / part)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("clipfair_demo"):
        OmegaConf.register_new_resolver("clipfair_demo", _demo_resolver)


def _plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (None stays None)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _slices(raw: Any) -> list[Any] | str:
    raw = _plain(raw)
    if raw is None or raw == "auto":
        return "auto"
    return [tuple(s) if isinstance(s, (list, tuple)) else str(s) for s in raw]


def _require_model(plain: dict[str, Any], overrides: Sequence[str]) -> None:
    """The bundled toy model runs only on the demo data, unless chosen on purpose."""
    from .run.schema import ConfigError, loader_argument

    if loader_argument(plain.get("model") or {}, "loader") != "hf":  # e.g. open_clip: the toy is an hf folder
        return
    model = str((plain.get("model") or {}).get("name_or_path", ""))
    if not model or Path(model).expanduser().resolve() != (demo_dir() / "model").resolve():
        return
    ds = plain.get("dataset") or {}
    root = ds.get("root")
    if ds.get("name") == "fairface" and root and Path(str(root)).expanduser().resolve() == (demo_dir() / "fairface").resolve():
        return
    if any(o.split("=", 1)[0].lstrip("+~") in ("model", "model.name_or_path") for o in overrides):
        return
    raise ConfigError("no model chosen for this dataset (the default is the bundled toy demo model, whose results "
                      "say nothing about real models): choose one, e.g. model=clip_vit_b32 or "
                      "model.name_or_path=<hub id or local folder> (model=demo runs the toy on purpose)")


def check_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> "RunConfig":
    """Validate the whole config against the typed schema (clipfair.run.schema) before any work;
    returns the typed config, which is what the core receives."""
    from .run.schema import validate

    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    run = validate(plain, sorted(OmegaConf.missing_keys(cfg)))
    _require_model(plain, overrides)
    return run


def _analyses(cfg: DictConfig, run: Any, dataset: Any) -> list[Any]:
    """The run's analyses, composed from the registry (clipfair.analyses.compose): the
    ``analyses:`` mapping and today's shorthand keys. Run-level inputs an analysis declares
    (``Analysis.run_inputs``) are built here, at the edge: a train split (Hydra instantiate), the
    run's confidence, how the images were chosen."""
    from hydra.utils import instantiate

    from .analyses import compose

    def train(opts: dict[str, Any]) -> Any:
        if opts.get("train") is not None:
            return opts["train"]
        if run.probe.train_dataset:
            return instantiate(cfg.probe.train_dataset, _convert_="all")
        return instantiate(cfg.dataset, split=run.probe.train_split, limit=run.probe.train_limit, _convert_="all")

    subset = run.subset
    inputs = {"train": train, "confidence": lambda opts: float(run.confidence),
              "image_subset": lambda opts: (f"seeded random {subset.n} (seed {subset.seed})" if subset.n is not None
                                            else f"all {len(dataset)} images")}
    return compose.build(compose.entries(run), inputs=inputs)


def results_places(cfg: Any) -> list[tuple[str, Any, bool]]:
    """The places a results folder must not be, contain or (where True) lie inside: the dataset
    roots, the cache folder, the bundled demo folder; and the home folder (is or contains)."""
    def get(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except Exception:  # an interpolation that fails here fails in check_config with its message
            return None

    places: list[tuple[str, Any, bool]] = [("the dataset root", get("dataset.root"), True),
                                           ("the probe's dataset root", get("probe.train_dataset.root"), True)]
    for key, what in (("dataset.path", "the dataset"), ("probe.train_dataset.path", "the probe dataset")):
        local = get(key)  # a CSV file (its folder is the root when root is null) or a local data folder
        if isinstance(local, str) and local and Path(local).expanduser().exists():
            p = Path(local).expanduser()
            places.append((f"{what} folder", p, True) if p.is_dir() else (f"{what} file", p, False))
            if p.is_file() and get(key.replace(".path", ".root")) is None:
                places.append((f"{what} image folder", p.parent, True))
    if get("cache.enabled") and isinstance(get("cache.dir"), str):
        places.append(("the cache folder", get("cache.dir"), True))
    places += [("clipfair's bundled demo folder", demo_dir(), True), ("the home folder", Path.home(), False)]
    return [(w, p, inside) for w, p, inside in places if isinstance(p, (str, Path)) and str(p)]


def check_results_folder(cfg: Any, out_dir: Path | str, write_probe: bool = True) -> None:
    """Before any work: the results folder is in an allowed place and holds nothing but an
    earlier run's recorded outputs (replaced only with overwrite=true); see clipfair.utility.outputs."""
    from .utility.outputs import check_location, check_run_dir

    check_location(out_dir, results_places(cfg))
    check_run_dir(out_dir, bool(OmegaConf.select(cfg, "overwrite", default=False)), write_probe=write_probe)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra < 1.1
    _HydraCallback = object  # type: ignore[misc,assignment]


class _Refused(BaseException):
    """Carries a refusal out of a Hydra callback: Hydra turns an Exception raised by a callback
    into a warning and goes on, so the refusal travels as a BaseException to `_hydra_run`."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class RunDirCheck(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback (configs/config.yaml: hydra.callbacks): the results folder is checked
    before Hydra creates it or writes .hydra/ and the log into it, so a refused run writes
    nothing there. A sweep's folder is checked for its place (each job's folder again when the
    job starts)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from .utility.outputs import OutputError

        try:
            check_results_folder(config, str(config.hydra.run.dir), write_probe=False)
        except OutputError as e:
            raise _Refused(e) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from .utility.outputs import OutputError, check_location

        try:
            check_location(str(config.hydra.sweep.dir), results_places(config))
        except OutputError as e:
            raise _Refused(e) from None


def run_from_config(cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (),
                    hydra_info: dict[str, Any] | None = None) -> Path:
    """Run one configured experiment and write every output into ``out_dir``.

    The analyses come from the registry (``analyses:`` and the shorthand keys); this function
    names none of them. Under torchrun or an srun step of several tasks, every process embeds
    its shard of the images into the shared cache; rank 0 then scores and writes the outputs,
    the others return without writing anything."""
    from hydra.utils import instantiate

    from .run import distributed
    from .utility.outputs import staged_outputs
    from .run.pipeline import check_analyses, check_run, embed_shard, evaluate, write_outputs
    from .run.record import build_record
    from .run.schema import loader_argument
    from .data.taxonomy import load_taxonomies

    run = check_config(cfg, overrides)
    check_results_folder(cfg, out_dir)
    dataset = None  # the analyses' options are validated before the slow parts
    dist = distributed.from_env()
    distributed.setup(dist, float(run.distributed.timeout_min), str(run.distributed.backend))
    dataset = instantiate(cfg.dataset, _convert_="all")
    if run.subset.n is not None:
        dataset = dataset.sample(int(run.subset.n), int(run.subset.seed))
    analyses = _analyses(cfg, run, dataset)
    taxonomies = load_taxonomies(run.taxonomies) if run.taxonomies else []
    for a in analyses:  # e.g. prompt sensitivity's variants taxonomy@set
        taxonomies = a.adjust_taxonomies(taxonomies)
    slices = check_run(dataset, taxonomies, _slices(run.slices))  # before the slow model load
    check_analyses(analyses, dataset, taxonomies, slices, None, float(run.confidence))
    model = instantiate(cfg.model, _convert_="all")
    cache_dir = run.cache.dir if run.cache.enabled else None
    log.info("dataset %s: %d images; model %s (%s, %s); %d taxonomies; analyses: %s", dataset.name, len(dataset),
             model.name_or_path, model.device, str(model.dtype).replace("torch.", ""), len(taxonomies),
             ", ".join(a.name for a in analyses))
    embed_options = {"fast_preprocess": run.embed.fast_preprocess, "fast_decode": run.embed.fast_decode,
                     "gpu_decode": run.embed.gpu_decode, "compile": bool(run.embed.compile)}
    embed_settings = dict(num_workers=run.embed.num_workers, chunk_size=int(run.embed.chunk_size),
                          progress=bool(run.progress))
    on_error = loader_argument(run.dataset, "on_error")  # decoding errors as the dataset's loader treats them
    if on_error is not None:
        embed_settings["on_error"] = str(on_error)
    shards = None
    if dist.enabled:  # every rank embeds its shard into the shared cache; rank 0 goes on
        mine = embed_shard(dataset, model, cache_dir, dist, analyses=analyses, **embed_settings, **embed_options)
        shards = {**dist.describe(), "ranks": distributed.barrier(mine)}  # waits for every rank's shard
        if not dist.is_main:
            log.info("rank %d of %d: shard embedded; rank 0 writes the outputs", dist.rank, dist.world_size)
            return out_dir
    ev = evaluate(dataset, model, taxonomies, cache_dir=cache_dir, slices=slices,
                  confidence=float(run.confidence), analyses=analyses, config=run,
                  disparity_min_n=int(run.disparity_min_n), embed_options=embed_options,
                  disparity_correction=str(run.disparity_correction),
                  topk=[int(k) for k in run.topk], small_group_n=int(run.small_group_n), **embed_settings)
    if shards is not None and ev.counts.get("images_encoded"):
        log.warning("%d images were not in the cache after every rank's shard and were encoded by rank 0 "
                    "(set embed.fast_decode to true or false so that all ranks decode alike)",
                    ev.counts["images_encoded"])
    demo = Path(model.name_or_path).resolve() == (demo_dir() / "model").resolve()
    record = build_record(
        config=OmegaConf.to_container(cfg, resolve=True), overrides=list(overrides),
        model=model.describe(),
        dataset={"name": dataset.name, "source": dataset.source, "n_images": len(dataset),
                 "fingerprint": dataset.fingerprint(), "file_list_hash": dataset.file_list_hash(),
                 "label_hash": dataset.label_hash(), "attributes": dataset.attributes,
                 "skipped_at_load": dataset.skipped,
                 "skipped_at_load_items": dataset.skipped_items[:1000]},
        taxonomies=[{**t.to_dict(), "source": t.source, "fingerprint": t.fingerprint()} for t in taxonomies],
        demo=demo, hydra=hydra_info, distributed=shards)
    # every output goes to a staging folder, moved into out_dir only when all are written
    with staged_outputs(out_dir, run.overwrite) as stage:
        write_outputs(ev, stage, record, demo=demo, taxonomies=taxonomies, slices=slices)
    log.info("wrote results to %s", out_dir)
    return out_dir


def _user_error(e: BaseException) -> BaseException | None:
    """The user-facing error (bad data, taxonomy, model, config value) behind ``e``, if any;
    Hydra's instantiate wraps errors raised by the dataset and model loaders."""
    from .data.attributes import LabelError
    from .data.base import DatasetError
    from .data.images import ImageError
    from .models import ModelError
    from .utility.outputs import OutputError, os_error_message
    from .utility.registry import RegistryError
    from .run.schema import ConfigError
    from .data.taxonomy import TaxonomyError

    from .run.distributed import DistributedError

    from .analyses.registry import user_errors

    known = (TaxonomyError, DatasetError, LabelError, ImageError, ModelError, RegistryError, ConfigError,
             OutputError, DistributedError, *user_errors())
    while e is not None:
        if isinstance(e, known):
            return e
        if isinstance(e, OSError) and (msg := os_error_message(e)):  # disk full, not writable
            return OutputError(msg)
        e = e.__cause__ or e.__context__
    return None


class JobFailed(CompactHydraException):
    """A sweep job stopped by a user error: Hydra records the job as failed (with this one-line
    message) and the sweep goes on; ``SystemExit`` would escape Hydra's job handling and end it."""


def _hydra_info(hc: Any) -> dict[str, Any]:
    """What run.json records about Hydra: the config group choices and, in a sweep, the job."""
    from hydra.types import RunMode

    multirun = hc.mode == RunMode.MULTIRUN
    return {"mode": "multirun" if multirun else "run",
            "choices": OmegaConf.to_container(hc.runtime.choices, resolve=True),
            "job_num": int(hc.job.num) if multirun else None,
            "job_id": OmegaConf.select(hc, "job.id", default=None, throw_on_missing=False),
            "launcher": OmegaConf.select(hc, "launcher._target_", default=None),
            "sweep_dir": str(hc.sweep.dir) if multirun else None}


INTERRUPTED = ("clipfair: interrupted; image embeddings finished so far are cached: run the same command "
               "again to resume")


def _hydra_error(e: Exception) -> str:
    """One line for an error Hydra raises while composing the config (a misspelt key gets a
    'did you mean')."""
    from .run.schema import unknown_key

    c = e.__cause__
    key, parent = getattr(c, "key", None), getattr(c, "parent_node", None)
    if "Could not override" in str(e) and key is not None and parent is not None:
        full = str(getattr(c, "full_key", key))
        at, allowed = full[: len(full) - len(str(key))], [str(k) for k in parent.keys()]
        if not allowed:  # a mapping that is empty in the config, e.g. template_sets: {}
            mapping = at.rstrip(".")
            return (f"unknown config key {full}: {mapping} has no keys yet; add keys to a mapping with a leading +, "
                    f"e.g. '+{mapping}={{{key}: ...}}' or '+{full}=...' (quote the whole override in the shell)")
        msg = str(unknown_key(str(key), at, allowed))
        if "did you mean" not in msg:  # e.g. dataset.attributes: a key the group does not have yet
            msg += f"; to add a new key write '+{full}=...', e.g. '+{full}={{a: b}}' for a mapping"
        return msg
    text = " ".join(str(e).split())
    if "LexerNoViableAltException" in text or "missing EQUAL" in text:
        text += (" (a value with spaces or non-ASCII characters must be quoted inside the override, and the "
                 "override quoted for the shell, e.g. 'hydra.run.dir=\"/data/my results\"')")
    return text


def _remove_dead_scratch(tmp: Path) -> None:
    """Scratch folders of ranks > 0 (``clipfair-rank-<pid>-*``) whose process is gone (a
    torchrun failure kills them before they clean up)."""
    import re
    import shutil

    from .utility.outputs import pid_alive

    try:
        children = list(tmp.iterdir())
    except OSError:
        return
    for p in children:
        m = re.match(r"^clipfair-rank-(\d+)-", p.name)
        if m and p.is_dir() and not p.is_symlink() and p.stat().st_uid == os.getuid() \
                and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _hydra_run(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .run.collect import FAILED_FILE  # why a job stopped, for `clipfair collect`
    from .run.distributed import DistributedError, from_env
    from .utility.outputs import RunDirRefused, own_failed_note
    from .run.record import write_json

    register_resolvers()

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
    def app(cfg: DictConfig) -> None:
        hc = HydraConfig.get()
        out, info = Path(hc.runtime.output_dir), _hydra_info(hc)
        if own_failed_note(out / FAILED_FILE):
            (out / FAILED_FILE).unlink(missing_ok=True)
        try:
            run_from_config(cfg, out, list(hc.overrides.task), hydra_info=info)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as e:  # a user's mistake gets its message, not a traceback
            err = _user_error(e)
            # a refused folder gets nothing; an intact earlier run keeps its folder as it was
            if not isinstance(err, RunDirRefused) and not (out / "run.json").exists():
                write_json(out / FAILED_FILE, {"error": type(err or e).__name__, "message": str(err or e),
                                               "user_error": err is not None,
                                               "overrides": list(hc.overrides.task),
                                               "hydra": info})
            if err is None:
                raise
            message = f"clipfair: error: {err}"
            print(message, file=sys.stderr)
            if hc.mode == RunMode.MULTIRUN:  # fail this job only; the sweep goes on
                raise JobFailed(message) from None
            raise SystemExit(2) from None

    from hydra.errors import HydraException

    try:
        rank = from_env().rank
    except DistributedError as e:
        print(f"clipfair: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    scratch = None
    if rank > 0:  # only rank 0 writes outputs: the others run in a scratch folder
        import tempfile

        _remove_dead_scratch(Path(tempfile.gettempdir()))
        scratch = tempfile.mkdtemp(prefix=f"clipfair-rank-{os.getpid()}-")
        argv = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
        argv += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}"]
    sys.argv = ["clipfair run", *argv]
    full_error = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach the handlers below
    try:
        app()
    except JobFailed as e:  # a sweep in which a job failed for a user error (the others ran)
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    except HydraException as e:
        if full_error:
            raise
        print(f"clipfair: error: {_hydra_error(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # Hydra creating the results folder
        if full_error or e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST,
                                         errno.ENOSPC):
            raise
        print(f"clipfair: error: cannot create the results folder {e.filename}: {e.strerror}; choose another "
              "with hydra.run.dir=...", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    except _Refused as e:  # the results folder, refused by RunDirCheck before Hydra made it
        if full_error:
            raise e.error from None
        print(f"clipfair: error: {e.error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        if scratch:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


def _cache_cmd(argv: list[str]) -> int:
    from .run.cache import clear, default_cache_dir, list_entries

    p = argparse.ArgumentParser(prog="clipfair cache", description="List or clear cached embeddings.")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--dir", default=None, help="cache folder (default $CLIPFAIR_CACHE or ~/.cache/clipfair)")
    p.add_argument("--match", default=None, help="with clear: only entries whose metadata contains this text")
    a = p.parse_args(argv)
    root = Path(a.dir).expanduser() if a.dir else default_cache_dir()
    found = list_entries(root, unrecognised=True)
    strangers = [e for e in found if not e.recognised]
    if a.action == "list":
        entries = [e for e in found if e.recognised]
        print(f"cache {root}: {len(entries)} entries")
        for e in entries:
            m = e.meta
            print(f"  {e.kind:5s} {e.path.name}  {e.size_bytes / 1e6:8.2f} MB  {e.n_chunks:4d} chunks  "
                  f"model={m.get('model_name', '?')} ({m.get('model', '?')}) dtype={m.get('dtype', '?')}")
    else:
        n = clear(root, a.match)
        print(f"removed {n} cache entr{'y' if n == 1 else 'ies'} from {root}")
    if strangers:
        shown = ", ".join(str(e.path) for e in strangers[:5]) + (f" and {len(strangers) - 5} more"
                                                                if len(strangers) > 5 else "")
        print(f"{len(strangers)} folder(s) with a meta.json are not recognised as this cache's entries (no "
              f"clipfair cache marker, or files the cache does not write) and were left alone: {shown}")
    return 0


#: the commands beside `run` and `cache`: name -> module with main(argv)
COMMANDS = {"compare": "clipfair.methods.compare", "collect": "clipfair.run.collect"}

USAGE = """usage: clipfair <command> [args]

commands:
  run [hydra overrides]   run an experiment (no overrides: the offline demo); --help lists config groups
  cache list|clear        list or clear cached embeddings
  compare RUN_DIR...      compare runs: each taxonomy with its namesake in the other runs
  collect DIR...          gather finished runs (e.g. a multirun folder) into one table; lists failed ones

Not for surveillance, face recognition or identifying people. English prompts only.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        _hydra_run(rest)
        return 0
    if cmd == "cache":
        return _cache_cmd(rest)
    if cmd in COMMANDS:
        import importlib

        module = importlib.import_module(COMMANDS[cmd])
        try:
            return module.main(rest)
        except Exception as e:  # an unfinished or missing run folder, a bad option: one line
            err = _user_error(e) or (e if type(e).__name__ == "CollectError" else None)
            if err is None:
                raise
            print(f"clipfair: error: {err}", file=sys.stderr)
            return 2
    print(f"unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
