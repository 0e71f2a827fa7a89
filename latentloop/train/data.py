"""Training data: packed token shards on disk, procedurally generated tasks, and the batches a step reads.

Shards: each source becomes files of rows of `block_size + 1` token ids (uint16 when the vocabulary
fits, else uint32), read through numpy memmaps; every `val_every`-th block is held out for validation.
Batches are a pure function of (seed, step): the rows of a step's global batch are drawn by a
generator seeded with the step, so a resumed run reads exactly what it would have read, and each
rank takes its own slice of the same global batch (the loader is sharded by rank, not by file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..fsutil import atomic_write_bytes, atomic_write_text, read_json, read_jsonl, read_text

META_FILE = "meta.json"
FORMAT = "latentloop-shards-v1"
DTYPE_LIMITS = {"uint16": 2**16, "uint32": 2**32}
Batch = tuple[Tensor, Tensor]  # input_ids [B, T], labels [B, T] (shifted, -100 ignored)


def shard_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= DTYPE_LIMITS["uint16"] else "uint32"


class DataSource(Protocol):
    """What the trainer reads: a global batch per step and a fixed validation set."""

    vocab_size: int
    block_size: int
    tokenizer: Any  # saved beside the trained model when not None

    def global_batch(self, step: int, batch_size: int) -> Batch: ...

    def validation(self, batches: int, batch_size: int) -> list[Batch]: ...


# --- preparing shards ---------------------------------------------------------------------------------
@dataclass
class TextSource:
    """One input of `data prepare`: a .txt, .jsonl or .parquet file with a mixture weight."""

    path: Path
    weight: float = 1.0
    name: str = ""
    text_field: str = "text"
    separator: str = "<|endoftext|>"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or self.path.stem.replace(".", "_")

    def documents(self) -> Iterator[str]:
        """Documents in file order (plain text is split on `separator`; no separator: one document)."""
        if not self.path.is_file():
            raise FileNotFoundError(f"data source {self.path} does not exist")
        suffix = self.path.suffix.lower()
        if suffix == ".jsonl":
            for i, record in read_jsonl(self.path):
                if not isinstance(record, dict):
                    raise ValueError(f"{self.path}:{i} is a JSON {type(record).__name__}, not an object with "
                                     f"a {self.text_field!r} field")
                if self.text_field not in record:
                    raise ValueError(f"{self.path}:{i} has no field {self.text_field!r}; "
                                     f"pass --text-field with one of {sorted(record)}")
                yield str(record[self.text_field])
        elif suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(f"{self.path} is parquet: install pyarrow (pip install pyarrow)") from None
            for value in pq.read_table(self.path, columns=[self.text_field]).column(self.text_field):
                yield str(value.as_py())
        else:
            for doc in read_text(self.path).split(self.separator):
                if doc.strip():
                    yield doc.strip("\n")


def prepare_shards(sources: list[TextSource], tokenizer: Any, out_dir: str | Path, block_size: int,
                   val_every: int = 20, dtype: str | None = None, docs_per_shard: int = 2000,
                   progress: bool = True) -> dict[str, Any]:
    """Tokenize `sources` into `out_dir`; resumable: finished shards and sources are not redone."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.vocab_size
    dtype = dtype or shard_dtype(vocab)
    if dtype not in DTYPE_LIMITS:
        raise ValueError(f"--dtype {dtype!r}: use uint16 or uint32")
    if vocab > DTYPE_LIMITS[dtype]:
        raise ValueError(f"the tokenizer's vocabulary ({vocab}) does not fit {dtype} shards "
                         f"(max {DTYPE_LIMITS[dtype]} ids); use --dtype uint32")
    eos = tokenizer.eos_id
    if eos is None:
        raise ValueError("the tokenizer has no <|end_text|> token to separate documents; "
                         "train one with `latentloop tokenizer train`")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data sources need distinct names, got {names}; name them with PATH:WEIGHT:NAME")
    settings = {"block_size": block_size, "val_every": val_every, "dtype": dtype, "vocab_size": vocab}
    tokenizer.save(out)
    meta_sources = {}
    for source in sources:
        meta_sources[source.name] = _prepare_source(source, tokenizer.backend, eos, out, settings,
                                                    docs_per_shard, progress, tqdm)
    meta = {"format": FORMAT, **settings, "eos_id": eos, "sources": meta_sources}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def _prepare_source(source: TextSource, backend: Any, eos: int, out: Path, settings: dict, docs_per_shard: int,
                    progress: bool, tqdm: Any) -> dict[str, Any]:
    progress_file = out / f"{source.name}.progress.json"
    state = {"settings": settings, "path": str(source.path), "docs_done": 0, "blocks_seen": 0,
             "pending": [], "files": {"train": [], "val": []}, "done": False}
    if progress_file.is_file():
        saved = read_json(progress_file, "data prepare progress")
        if saved["settings"] != settings:
            raise ValueError(f"{out} holds shards made with {saved['settings']}, not {settings}; "
                             "use a fresh output directory")
        state = saved
    width = settings["block_size"] + 1
    np_dtype = np.dtype(settings["dtype"])
    bar = tqdm(desc=f"tokenizing {source.name}", unit="doc", initial=state["docs_done"],
               disable=None if progress else True)  # None: shown on a terminal, not in pipes and logs
    try:
        _tokenize(source, backend, eos, out, settings, docs_per_shard, state, progress_file, width, np_dtype, bar)
    except BaseException:
        bar.leave = False  # the error message, not a half-drawn bar, is what stays on the terminal
        bar.close()
        raise
    bar.close()
    for split in ("train", "val"):
        if not state["files"][split]:
            raise ValueError(f"{source.path} gave no {split} blocks of {width} tokens; "
                             "use more text, a smaller --block-size or a smaller --val-every")
    return {"path": state["path"], "weight": source.weight, "files": state["files"]}


def _tokenize(source: TextSource, backend: Any, eos: int, out: Path, settings: dict, docs_per_shard: int,
              state: dict, progress_file: Path, width: int, np_dtype: np.dtype, bar: Any) -> None:
    docs = source.documents()
    for _ in range(state["docs_done"]):
        next(docs)
    while not state["done"]:
        chunk = [d for _, d in zip(range(docs_per_shard), docs, strict=False)]
        tokens = list(state["pending"])
        for enc in backend.encode_batch(chunk, add_special_tokens=False):
            tokens.extend(enc.ids)
            tokens.append(eos)
        n_blocks = len(tokens) // width
        blocks = np.asarray(tokens[: n_blocks * width], dtype=np_dtype).reshape(n_blocks, width)
        index = state["blocks_seen"] + np.arange(n_blocks)
        is_val = index % settings["val_every"] == settings["val_every"] - 1
        shard_no = state["docs_done"] // docs_per_shard
        for split, rows in (("train", blocks[~is_val]), ("val", blocks[is_val])):
            if len(rows):
                name = f"{source.name}.{split}.{shard_no:05d}.bin"
                atomic_write_bytes(out / name, rows.tobytes())
                state["files"][split].append([name, len(rows)])
        state["pending"] = tokens[n_blocks * width:]
        state["blocks_seen"] += n_blocks
        state["docs_done"] += len(chunk)
        state["done"] = len(chunk) < docs_per_shard
        atomic_write_text(progress_file, json.dumps(state))
        bar.update(len(chunk))


# --- reading shards -------------------------------------------------------------------------------------
def read_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} has no {META_FILE}; make shards with `latentloop data prepare`")
    meta = read_json(meta_path, "shard index")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a latentloop shard index (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


class ShardData:
    """Packed shards of one `data prepare` directory, mixed by source weight."""

    def __init__(self, directory: str | Path, seed: int = 0, mixture: dict[str, float] | None = None) -> None:
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        self.seed = seed
        self.block_size = self.meta["block_size"]
        self.vocab_size = self.meta["vocab_size"]
        self.dtype = self.meta["dtype"]
        self.tokenizer = None
        if (self.directory / "tokenizer.json").is_file():
            from ..tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.directory / "tokenizer.json")
        sources = self.meta["sources"]
        unknown = sorted(set(mixture or {}) - set(sources))
        if unknown:
            raise ValueError(f"data.mixture names unknown source(s) {unknown}; this data has {sorted(sources)}")
        self.names = sorted(sources)
        weights = np.array([(mixture or {}).get(n, sources[n]["weight"]) for n in self.names], dtype=np.float64)
        if weights.sum() <= 0:
            raise ValueError("data.mixture gives every source weight 0")
        self.weights = weights / weights.sum()
        self.train = [self._open(sources[n]["files"]["train"]) for n in self.names]
        self.val = [self._open(sources[n]["files"]["val"]) for n in self.names]

    def _open(self, files: list[list]) -> list[np.ndarray]:
        width = self.block_size + 1
        arrays = []
        for name, rows in files:
            path = self.directory / name
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} listed in {META_FILE} is missing; re-run data prepare")
            arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(rows, width)))
        return arrays

    @staticmethod
    def _row(arrays: list[np.ndarray], index: int) -> np.ndarray:
        for array in arrays:
            if index < len(array):
                return array[index]
            index -= len(array)
        raise IndexError(index)

    def global_batch(self, step: int, batch_size: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, 1])
        picks = rng.choice(len(self.names), size=batch_size, p=self.weights)
        counts = [sum(len(a) for a in arrays) for arrays in self.train]
        rows = [self._row(self.train[s], int(rng.integers(counts[s]))) for s in picks]
        return to_batch(np.stack(rows))

    def validation(self, batches: int, batch_size: int) -> list[Batch]:
        rows = [row for arrays in self.val for array in arrays for row in array]
        wanted = min(len(rows), batches * batch_size)
        picks = np.linspace(0, len(rows) - 1, wanted).round().astype(int)
        return [to_batch(np.stack([rows[i] for i in picks[j:j + batch_size]]))
                for j in range(0, wanted, batch_size)]


def to_batch(rows: np.ndarray) -> Batch:
    tokens = torch.from_numpy(rows.astype(np.int64))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


# --- generated tasks -------------------------------------------------------------------------------------
class TaskData:
    """A procedurally generated task (`latentloop.tasks.get_task`): fresh problems every step.

    The interface is `task.batch(rng, batch_size) -> (input_ids, labels)` and `task.vocab_size`; a task
    that also offers `problems(split, count, seed)` and `encode(problems)` is validated on its
    held-out split, otherwise on batches from a generator stream training never uses.
    """

    VALIDATION_STREAM = 2**31 - 1  # a step number training never reaches

    def __init__(self, name: str, task_args: dict[str, Any], seed: int = 0) -> None:
        try:
            from .. import tasks
        except ImportError as err:
            raise ValueError(f"data.source = 'task:{name}' needs the latentloop.tasks package: {err}") from None
        self.task = tasks.get_task(name, **task_args)
        self.spec = {"name": name, "args": dict(task_args)}  # written as task.json beside saved models
        self.seed = seed
        self.vocab_size = int(self.task.vocab_size)
        self.tokenizer = getattr(self.task, "tokenizer", None)
        self.block_size = int(self._batch(np.random.default_rng([seed, self.VALIDATION_STREAM]), 8)[0].shape[1])

    def _batch(self, rng: np.random.Generator, batch_size: int) -> Batch:
        input_ids, labels = self.task.batch(rng, batch_size)
        return torch.as_tensor(input_ids, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)

    def global_batch(self, step: int, batch_size: int) -> Batch:
        return self._batch(np.random.default_rng([self.seed, step, 1]), batch_size)

    def validation(self, batches: int, batch_size: int) -> list[Batch]:
        if hasattr(self.task, "problems") and hasattr(self.task, "encode"):
            problems = self.task.problems("validation", batches * batch_size, seed=self.seed)
            return [tuple(torch.as_tensor(t, dtype=torch.long) for t in self.task.encode(problems[i:i + batch_size]))
                    for i in range(0, len(problems), batch_size)]
        return [self._batch(np.random.default_rng([self.seed, self.VALIDATION_STREAM, i]), batch_size)
                for i in range(batches)]
