"""Load and save HF-style checkpoint directories (config.json + single or sharded safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ConfigError, ModelConfig
from .fsutil import atomic_directory, atomic_write_text, read_json, recover_directory
from .model import RecurrentDepthLM

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
IGNORED_TENSORS = {"freqs_cis"}  # the published RoPE table; recomputed in float32
# The files a save writes; a new save replaces them all (stale shards of an earlier sharded save go too)
# and keeps everything else in the directory (a tokenizer, a README, a run's checkpoints/ and metrics).
MODEL_FILES = ("config.json", WEIGHTS_NAME, INDEX_NAME, "model-*-of-*.safetensors")
BUNDLED = Path(__file__).parent / "assets"


class CheckpointError(ValueError):
    """A checkpoint directory that does not hold a loadable huginn-family model."""


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Map a directory, the bundled name 'default', or a hub id ('org/name') to a local directory."""
    name = str(name_or_path)
    if name != "default":
        recover_directory(Path(name).expanduser())  # a save killed between its renames: finish or roll back
    bundled = BUNDLED / name
    if name == "default" or (bundled / "config.json").is_file():
        if not (bundled / "config.json").is_file():
            raise CheckpointError(f"the bundled model {name!r} is not installed ({bundled} is missing)")
        return bundled
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
        return path
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")):
        return _download(name)
    raise CheckpointError(f"no such model directory: {path} (pass a checkpoint directory, 'default', or a hub id)")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id!r} is not a local directory; to fetch it from the Hugging Face hub, "
            "install the hub extra: pip install 'latentloop[hub]'"
        ) from None
    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as err:  # network, auth, missing repo: report them the same way
        raise CheckpointError(f"could not fetch {repo_id!r} from the hub: {err}") from err
    return Path(local)


def load_config(directory: str | Path) -> ModelConfig:
    directory = resolve_model_dir(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a checkpoint directory?")
    try:
        return ModelConfig.from_json_file(path)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            data = read_json(index)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index} has no 'weight_map' object of tensor name -> shard file; "
                                  "re-save the checkpoint or delete the index to load model.safetensors")
        files = [directory / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} names shard(s) that are missing: {absent}")
        return files
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise CheckpointError(f"{directory} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def load_model(
    name_or_path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> RecurrentDepthLM:
    """Load a huginn-family checkpoint: a directory, 'default' (bundled), or a hub id.

    `dtype=None` keeps the stored dtype; `device=None` loads to CPU.
    """
    directory = resolve_model_dir(name_or_path)
    config = load_config(directory)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    device = torch.device(device or "cpu")

    with torch.device("meta"):
        model = RecurrentDepthLM(config)
    expected = dict(model.state_dict())
    if config.tie_embeddings:  # the head is the embedding: a stored copy is checked, not loaded
        expected.pop("lm_head.weight")

    tensors: dict[str, torch.Tensor] = {}
    stored_head: torch.Tensor | None = None
    unexpected: list[str] = []
    mismatched: list[str] = []
    for file in _weight_files(directory):
        _check_safetensors(file)
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name in IGNORED_TENSORS:
                    continue
                if name == "lm_head.weight" and config.tie_embeddings:
                    stored_head = f.get_tensor(name)
                    continue
                if name not in expected:
                    unexpected.append(name)
                    continue
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[name].shape):
                    mismatched.append(f"{name}: checkpoint {shape} vs model {tuple(expected[name].shape)}")
                    continue
                tensors[name] = f.get_tensor(name)
    missing = sorted(set(expected) - set(tensors))
    problems = []
    if missing:
        hint = ""
        if "lm_head.weight" in missing and not config.tie_embeddings:
            hint = (" (config.json says tie_embeddings false, so the head is stored separately; "
                    "if the head is the embedding, set tie_embeddings to true)")
        problems.append(f"missing tensors: {missing}{hint}")
    if unexpected:
        problems.append(f"unexpected tensors: {sorted(unexpected)}")
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise CheckpointError(f"{directory} does not match its config.json: " + " | ".join(problems))
    not_finite = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if not_finite:
        raise CheckpointError(f"{directory}: tensor(s) {not_finite[:5]}{' ...' if len(not_finite) > 5 else ''} hold "
                              "NaN or inf values; the weights are corrupt (a diverged run?): use an earlier checkpoint")

    if stored_head is not None and not torch.equal(stored_head, tensors["transformer.wte.weight"]):
        raise CheckpointError(
            f"{directory}: tie_embeddings is true but lm_head.weight differs from transformer.wte.weight; "
            "set tie_embeddings to false in config.json to load separate weights"
        )
    stored_dtype = tensors["transformer.wte.weight"].dtype
    target_dtype = dtype or stored_dtype
    tensors = {k: v.to(device=device, dtype=target_dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def _check_safetensors(file: Path) -> None:
    """Open the header (safetensors checks it against the file's size): a truncated or garbage file
    is named here instead of failing inside the loader."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            f.keys()
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError, ValueError)
        raise CheckpointError(f"{file} is not a readable safetensors file ({str(err).splitlines()[0]}); "
                              "it may be truncated or corrupt: re-download or re-save it") from None


def save_model(model: RecurrentDepthLM, directory: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write `directory` in the published format. Atomic, and it keeps whatever else is in the
    directory (a tokenizer, a README, a run's checkpoints/): only the model's own files are replaced."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    config = model.config.to_hf_dict() | {"torch_dtype": str(model.dtype).removeprefix("torch.")}
    with atomic_directory(directory, owned=MODEL_FILES) as tmp:
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        shards = _shard(state, max_shard_bytes)
        if len(shards) == 1:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            return
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(tmp / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def _shard(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if not max_bytes:
        return [state]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards
