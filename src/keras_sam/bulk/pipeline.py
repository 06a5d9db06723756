"""Bulk inference on Ray Data: pictures read and decoded in Ray tasks, the
model run in a pool of actors (each loads it once), results written as
each picture finishes.

The only module of the package that imports Ray.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

import numpy as np

from keras_sam import io
from keras_sam.bulk import listing
from keras_sam.bulk import results
from keras_sam.bulk.outputs import Destination

TASKS = ("auto", "embed")
MANIFEST = "keras-sam-bulk.jsonl"
"""The manifest's name in the output folder: one JSON line per picture
finished or failed (`picture`, `name`, `status` "done" or "failed",
`masks`, `error`, `seconds`), appended run after run."""

PICTURES_PER_BLOCK = 4
"""Pictures per read task: small blocks keep decoded pictures streaming to
the actors instead of piling up in the object store."""

INSTALL_HINT = 'pip install "keras-sam[ray]"'


def suffixes(task: str) -> tuple[str, ...]:
    """The files each picture gets, the marker (written last) last."""
    if task == "auto":
        return (results.OVERLAY_SUFFIX, results.JSON_SUFFIX)
    from keras_sam.inference.embeddings import SUFFIX

    return (SUFFIX,)


@dataclasses.dataclass
class Summary:
    """What a bulk run did.

    Attributes:
        pictures: pictures listed.
        skipped: of them, already done in the output folder.
        done: finished in this run.
        failed: `(picture, error)` of the pictures that failed.
        masks: masks written (0 for `embed`).
        seconds: wall time of the Ray job (not the listing).
    """

    pictures: int = 0
    skipped: int = 0
    done: int = 0
    failed: list = dataclasses.field(default_factory=list)
    masks: int = 0
    seconds: float = 0.0

    @property
    def pictures_per_second(self) -> float:
        """Pictures done or failed in this run per second of the job."""
        finished = self.done + len(self.failed)
        return finished / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The summary as one line."""
        text = (
            f"{self.pictures} picture(s): {self.done} done, "
            f"{len(self.failed)} failed, {self.skipped} already done; "
            f"{self.masks} mask(s); {self.seconds:.1f} s, "
            f"{self.pictures_per_second:.2f} pictures/s"
        )
        return text


def connect(address: str | None = None, **kwargs) -> bool:
    """Start a local Ray cluster (`address` None: Ray's default, which is
    `$RAY_ADDRESS` when set) or join one (`"auto"`, `"HOST:PORT"`,
    `"ray://HOST:PORT"`); other arguments go to `ray.init`. The Keras
    backend of this process (`$KERAS_BACKEND`) and its OpenMP and
    TensorFlow settings are passed to the workers.

    Returns:
        False when this process was already connected (nothing done), so
        that the caller leaves the connection to its owner.
    """
    import ray

    if ray.is_initialized():
        return False
    env = {
        name: os.environ[name]
        for name in (
            "KERAS_BACKEND",
            "OMP_WAIT_POLICY",
            "TF_CPP_MIN_LOG_LEVEL",
            "TF_ENABLE_ONEDNN_OPTS",
        )
        if name in os.environ
    }
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
    return True


def disconnect() -> None:
    """Leave the Ray cluster (stopping it if `connect` started it)."""
    import ray

    ray.shutdown()


def _read(row: dict) -> dict:
    """A Ray task: the picture of `row["source"]` decoded, or the reason it
    could not be."""
    try:
        image, error = listing.read_picture(row["source"]), ""
    except (ValueError, OSError) as e:
        image, error = np.zeros((0, 0, 3), np.uint8), str(e)
    return {**row, "image": image, "error": error}


class _Worker:
    """A Ray actor: loads the model once, then segments (`auto`) or encodes
    (`embed`) the pictures of each batch and writes their files."""

    def __init__(self, task, make_model, generator_args, output):
        model = make_model()
        self.task = task
        self.destination = Destination(output)
        self.suffixes = suffixes(task)
        if task == "auto":
            from keras_sam.inference.automatic_mask_generator import (
                SAMAutomaticMaskGenerator,
            )

            self.generator = SAMAutomaticMaskGenerator(
                model, **(generator_args or {}), output_mode="uncompressed_rle"
            )
        else:
            from keras_sam.inference.embeddings import model_fingerprint
            from keras_sam.inference.predictor import SAMPredictor

            self.predictor = SAMPredictor(model)
            self.fingerprint = model_fingerprint(model)

    def __call__(self, batch: dict) -> dict:
        out = {
            "source": [],
            "name": [],
            "masks": [],
            "error": [],
            "seconds": [],
        }
        for i in range(len(batch["name"])):
            source, name = str(batch["source"][i]), str(batch["name"][i])
            start = time.perf_counter()
            masks, error = 0, str(batch["error"][i])
            if not error:
                try:
                    masks = self._one(
                        source, name, np.asarray(batch["image"][i])
                    )
                except Exception as e:  # a bad picture must not stop the job
                    error = str(e) or type(e).__name__
                    if not isinstance(e, (ValueError, OSError)):
                        error = f"{type(e).__name__}: {error}"
            out["source"].append(source)
            out["name"].append(name)
            out["masks"].append(masks)
            out["error"].append(error)
            out["seconds"].append(time.perf_counter() - start)
        return {k: np.asarray(v) for k, v in out.items()}

    def _one(self, source: str, name: str, image: np.ndarray) -> int:
        names = [name + s for s in self.suffixes]
        with self.destination.staging() as folder:
            paths = [os.path.join(folder, *n.split("/")) for n in names]
            if self.task == "auto":
                records = self.generator.generate(image)
                # `source` is absolute (`run_bulk`), as `auto` names it
                results.write_masks(image, records, source, paths[1], paths[0])
                count = len(records)
            else:
                from keras_sam.inference.embeddings import save_embedding

                os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
                save_embedding(
                    paths[0],
                    self.predictor,
                    image,
                    fingerprint=self.fingerprint,
                )
                count = 0
            self.destination.publish(folder, names)
        return count


def run_bulk(
    pictures: list[tuple[str, str]],
    output: str,
    *,
    task: str,
    make_model: Callable,
    generator_args: dict | None = None,
    num_actors: int = 1,
    actor_cpus: float = 0.5,
    actor_gpus: float = 0.0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> Summary:
    """Run `task` over `pictures` on the Ray cluster this process is
    connected to (`connect`, or `ray.init`; Ray starts a local one
    otherwise).

    Each picture is read and decoded in a Ray task
    (`keras_sam.io.read_image`), then segmented or encoded by one of
    `num_actors` actors, which writes its files (those of `keras-sam auto`:
    `<name>.json` and `<name>.overlay.png`, or of `keras-sam embed`:
    `<name>.embedding.npz`) below `output` as soon as it is done. A picture
    whose marker file (`.json` / `.embedding.npz`) exists is skipped
    unless `overwrite`; files are written atomically, so a stopped run
    leaves only complete results and a rerun does the rest. A picture that
    fails is recorded with its error and the others go on. Ray restarts an
    actor that dies and retries its pictures; they are written again under
    the same names, never twice.

    Args:
        pictures: `(source, name)`: a local path or URI, and the name of
            its results below `output` ("/"-separated, e.g. `sub/a.jpg`),
            distinct per picture.
        output: a local (or shared) folder, or a URI (`s3://...`).
        task: "auto" or "embed".
        make_model: a picklable callable that returns the `keras_sam.SAM`
            to run; each actor calls it once.
        generator_args: `SAMAutomaticMaskGenerator` arguments for "auto"
            (not `output_mode`).
        num_actors: actors holding a model.
        actor_cpus: CPUs Ray reserves per actor. Keep some CPUs free for
            the read tasks: actors taking every CPU leave none for reading
            and the job waits forever.
        actor_gpus: GPUs per actor (a fraction shares one).
        overwrite: redo pictures already done.
        log: called with progress lines (pictures skipped); Ray Data draws
            its own progress bars on stderr.
        on_record: called with each picture's manifest record as it
            arrives, plus `"path"`: its marker file (path or URI).

    Returns:
        A `Summary`. The manifest `MANIFEST` in `output` gets one line per
        picture finished or failed.
    """
    import ray

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}. Received: task={task}")
    if num_actors < 1:
        raise ValueError(
            f"num_actors must be at least 1. Received: num_actors={num_actors}"
        )
    if actor_cpus < 0 or actor_gpus < 0:
        raise ValueError(
            "actor_cpus and actor_gpus must be >= 0. Received: "
            f"actor_cpus={actor_cpus}, actor_gpus={actor_gpus}"
        )
    _check_names([name for _, name in pictures])
    log = log or (lambda _: None)
    destination = Destination(output)
    marker = suffixes(task)[-1]
    summary = Summary(pictures=len(pictures))
    existing = set() if overwrite else destination.existing()
    todo = [
        {"source": _absolute(source), "name": name}
        for source, name in pictures
        if name + marker not in existing
    ]
    summary.skipped = len(pictures) - len(todo)
    if summary.skipped:
        log(
            f"skipped {summary.skipped} picture(s) already done in {output} "
            "(--overwrite redoes them)"
        )
    if not todo:
        return summary
    if not destination.remote:
        _remove_leftovers(destination, todo)
    manifest = _Manifest(destination)
    start = time.perf_counter()
    blocks = max(1, math.ceil(len(todo) / PICTURES_PER_BLOCK))
    dataset = ray.data.from_items(todo, override_num_blocks=blocks)
    dataset = dataset.map(_read)
    dataset = dataset.map_batches(
        _Worker,
        fn_constructor_args=(task, make_model, generator_args, output),
        batch_size=1,
        batch_format="numpy",
        # no more actors than blocks: the others would only wait
        compute=ray.data.ActorPoolStrategy(size=min(num_actors, blocks)),
        num_cpus=actor_cpus,
        num_gpus=actor_gpus,
    )
    seen = set()
    try:
        for row in dataset.iter_rows():
            name = str(row["name"])
            if name in seen:
                continue  # a retried block's rows, already counted
            seen.add(name)
            error = str(row["error"])
            record = {
                "picture": str(row["source"]),
                "name": name,
                "status": "failed" if error else "done",
                "masks": int(row["masks"]),
                "error": error,
                "seconds": round(float(row["seconds"]), 3),
            }
            manifest.add(record)
            if on_record is not None:
                on_record({**record, "path": destination.uri(name + marker)})
            if error:
                summary.failed.append((record["picture"], error))
            else:
                summary.done += 1
                summary.masks += record["masks"]
    finally:
        summary.seconds = time.perf_counter() - start
        manifest.close()
        if not destination.remote:
            _remove_leftovers(destination, todo)
    return summary


def _check_names(names: list[str]) -> None:
    """Each picture's results get their own files below the output."""
    seen = set()
    for name in names:
        parts = name.split("/")
        if not name or name.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(
                "a picture's name must be a relative path below the output "
                f"folder. Received: {name!r}"
            )
        if name in seen:
            raise ValueError(
                f"two pictures have the name {name!r}; their results would "
                "overwrite each other"
            )
        seen.add(name)


def _absolute(source: str) -> str:
    """Local paths absolute: Ray workers do not share the driver's
    working folder."""
    return source if listing.is_uri(source) else os.path.abspath(source)


def _remove_leftovers(destination: Destination, todo: list[dict]) -> None:
    """Temporary files of writers killed mid-write (a dead actor's)."""
    folders = {os.path.dirname(destination.uri(job["name"])) for job in todo}
    for folder in sorted(folders | {destination.output}):
        io.remove_leftovers(folder)


class _Manifest:
    """The manifest file: lines appended and flushed as pictures finish
    (a local output), or added to it when the run ends (a URI)."""

    def __init__(self, destination: Destination):
        self.destination = destination
        self.lines: list[str] = []
        self.file = None
        if not destination.remote:
            os.makedirs(destination.output, exist_ok=True)
            path = destination.uri(MANIFEST)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def add(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        if self.file is not None:
            self.file.write(line)
            self.file.flush()
        else:
            self.lines.append(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            return
        if not self.lines:
            return
        # object stores cannot append: earlier runs' lines, then this one's
        earlier = self.destination.read(MANIFEST)
        with self.destination.staging() as folder:
            with open(os.path.join(folder, MANIFEST), "wb") as f:
                f.write(earlier)
                f.write("".join(self.lines).encode())
            self.destination.publish(folder, [MANIFEST])
