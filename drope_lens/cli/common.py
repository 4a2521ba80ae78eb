"""Options shared by every subcommand: which pair to load, on what, and where output goes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from drope_lens.jsonio import to_jsonable_or_str
from drope_lens.options import DEFAULT_BATCH_SIZE


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("models (default: embedded SmolLM2-135M and its zero-shot NoPE twin)")
    g.add_argument("--rope", metavar="ID_OR_DIR", help="RoPE model: hub id or local folder")
    g.add_argument(
        "--drope",
        metavar="ID_OR_DIR",
        help="DroPE checkpoint (hub id or folder), or 'recalibrated' for the cached "
        "`drope-lens recalibrate` run of the embedded model; omit for the zero-shot NoPE twin of --rope",
    )
    g.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="model dtype (attention scores are always computed in float32)",
    )
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    add_backend_arg(g)
    g.add_argument(
        "--offload",
        default=None,
        metavar="DEVICE",
        help="keep the idle model of the pair here (e.g. cpu): one model on --device at a time",
    )
    g.add_argument(
        "--n-devices",
        type=int,
        default=1,
        metavar="N",
        help="split each model's layers over N devices (TransformerLens n_devices; hooked backend)",
    )
    add_quantize_arg(g)
    g.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="place each model's layers over several devices with accelerate (bridge backend; replaces --device): "
        "auto, balanced, balanced_low_0, sequential, a JSON object {module: device} or a .json file holding one; "
        "with --offload, one model of the pair is on its map at a time",
    )
    g.add_argument(
        "--max-memory",
        default=None,
        metavar="BUDGETS",
        help="per-device budgets for --device-map, e.g. 0=20GiB,1=20GiB (device index or name = size)",
    )


QUANTIZE_HELP = (
    "load the linear weights quantized by bitsandbytes (bridge backend; hooks see dequantized activations, "
    "attention stays float32): nf4 (4-bit NormalFloat, double quantization, as the study), fp4, int8 (LLM.int8()); "
    "compute in --dtype (the study: float16)"
)


def add_quantize_arg(parser: Any, help: str = QUANTIZE_HELP) -> None:
    from drope_lens.loading.facts import QUANTIZATIONS

    parser.add_argument("--quantize", default=None, choices=("none", *QUANTIZATIONS), help=help)


def parse_device_map(value: Optional[str]) -> Any:
    """``--device-map``: a strategy name, a JSON object, or a .json file holding one."""
    from drope_lens.errors import DropeLensInputError

    if value is None:
        return None
    text = value.strip()
    if text.endswith(".json") and not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise DropeLensInputError(f"--device-map {value}: no such file")
        text = path.read_text()
    if not text.startswith("{"):
        return text
    try:
        mapping = json.loads(text)
    except ValueError as exc:
        raise DropeLensInputError(f"--device-map is not a valid JSON object ({exc})") from exc
    if not isinstance(mapping, dict):
        raise DropeLensInputError("--device-map must be a JSON object {module: device}")
    return mapping


def parse_max_memory(value: Optional[str]) -> Optional[dict]:
    """``--max-memory 0=20GiB,1=20GiB,cpu=64GiB`` -> ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}``."""
    from drope_lens.errors import DropeLensInputError

    if value is None:
        return None
    budgets: dict = {}
    for item in value.split(","):
        device, sep, size = item.strip().partition("=")
        if not sep or not device.strip() or not size.strip():
            raise DropeLensInputError(f"--max-memory {value}: give DEVICE=SIZE pairs, e.g. 0=20GiB,1=20GiB")
        key: Any = int(device) if device.strip().isdigit() else device.strip()
        budgets[key] = size.strip()
    return budgets


def placement_kwargs(args: argparse.Namespace) -> dict:
    """``quantize`` / ``device_map`` / ``max_memory`` keywords of ``load_pair`` from ``--quantize``,
    ``--device-map``, ``--max-memory`` (absent options give none)."""
    quantize = getattr(args, "quantize", None)
    return {
        "quantize": None if quantize in (None, "none") else quantize,
        "device_map": parse_device_map(getattr(args, "device_map", None)),
        "max_memory": parse_max_memory(getattr(args, "max_memory", None)),
    }


def add_backend_arg(parser: Any) -> None:
    from drope_lens.loading.backend import BACKENDS

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="TransformerLens class the models live in: hooked (HookedTransformer, TransformerLens < 4; SAELens) "
        "or bridge (TransformerBridge); default: hooked on TransformerLens 3.x, bridge on 4.x, or $DROPE_LENS_BACKEND",
    )


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="PATH", dest="json_out", help="also write the full result as JSON to PATH ('-' for stdout)"
    )


def add_pair_args(parser: argparse.ArgumentParser) -> None:
    """The pair's model options (:func:`add_model_args`) and ``--json`` (:func:`add_output_args`)."""
    add_model_args(parser)
    add_output_args(parser)


def load_pair_from_args(args: argparse.Namespace):
    check_model_args(args)
    print(f"Loading {'embedded default pair' if args.rope is None else args.rope} ...", file=sys.stderr)
    return pair_from_args(args)


def pair_from_args(args: argparse.Namespace):
    """``load_pair`` with the model options of ``args`` (--rope/--drope/--dtype/--device/--offload/--n-devices/
    --backend/--quantize/--device-map/--max-memory)."""
    from drope_lens.loading import load_pair

    return load_pair(
        args.rope,
        args.drope,
        dtype=args.dtype,
        device=args.device,
        offload=getattr(args, "offload", None),
        n_devices=getattr(args, "n_devices", 1),
        backend=getattr(args, "backend", None),
        **placement_kwargs(args),
    )


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temp file and rename, so a crash never leaves a half-written file."""
    from drope_lens.jsonio import atomic_write_json

    atomic_write_json(Path(path), payload)


def add_texts_args(parser: argparse.ArgumentParser, title: str, *, genre: bool = False):
    """A texts group with ``--text`` / ``--texts-file`` (and ``--genre`` of the built-in texts), returned
    for the command's own text options; read back by :func:`given_texts` / :func:`texts_from_args`."""
    g = parser.add_argument_group(title)
    g.add_argument("--text", action="append", metavar="TEXT", help="a text (repeatable)")
    g.add_argument("--texts-file", metavar="PATH", help="UTF-8 file, one text per paragraph")
    if genre:
        g.add_argument("--genre", help="one genre of the built-in texts")
    return g


def add_pair_texts_args(parser: argparse.ArgumentParser, texts_title: str, *, genre: bool = False):
    """:func:`add_pair_args`, ``--only rope|drope``, and :func:`add_texts_args` (returned)."""
    add_pair_args(parser)
    parser.add_argument("--only", choices=["rope", "drope"], help="run one model of the pair only")
    return add_texts_args(parser, texts_title, genre=genre)


def add_batch_size(parser: Any, default: int = DEFAULT_BATCH_SIZE, help: str = "texts per forward pass") -> None:
    parser.add_argument("--batch-size", type=int, default=default, help=help + " (default %(default)s)")


def add_batch_args(parser: Any, max_length: Optional[int]) -> None:
    """``--max-length`` (default ``max_length``; None: whole texts) and ``--batch-size``, as
    :func:`batch_kwargs` passes them to an analysis."""
    whole = " (default: whole texts)" if max_length is None else " (default %(default)s)"
    parser.add_argument(
        "--max-length",
        type=int,
        default=max_length,
        help="truncate each text to this many tokens, BOS included" + whole,
    )
    add_batch_size(parser)


def batch_kwargs(args: argparse.Namespace) -> dict:
    """The ``batch_size`` / ``max_length`` keywords of an analysis, from :func:`add_batch_args`."""
    return {"batch_size": args.batch_size, "max_length": args.max_length}


def given_texts(args: argparse.Namespace) -> Optional[list[str]]:
    """The texts of ``--text`` or ``--texts-file``, or None when neither was given."""
    if args.text:
        return list(args.text)
    if args.texts_file:
        from drope_lens.data.texts import load_text_file

        return load_text_file(args.texts_file)
    return None


def texts_from_args(args: argparse.Namespace) -> list[str]:
    """:func:`given_texts`, else ``--hf-dataset`` rows (where the command has it), else the built-in
    texts (of ``--genre``)."""
    texts = given_texts(args)
    if texts is not None:
        return texts
    from drope_lens.data.texts import builtin_texts, load_hf_texts

    if getattr(args, "hf_dataset", None):
        return load_hf_texts(
            args.hf_dataset, config=args.hf_config, split=args.hf_split, column=args.hf_column, n=args.n_texts
        )
    return builtin_texts(args.genre)


def command_options(args: argparse.Namespace):
    """The command's options object (``build_options``): built and validated by
    :func:`validate_common_args` before any model code, or here when a run function is called directly."""
    if getattr(args, "options", None) is None:
        args.options = args.build_options(args)
    return args.options


def emit_json(args: argparse.Namespace, payload: Any) -> None:
    if not getattr(args, "json_out", None):
        return
    if args.json_out == "-":
        json.dump(payload, sys.stdout, indent=2, default=to_jsonable_or_str)
        sys.stdout.write("\n")
    else:
        write_json_atomic(Path(args.json_out), payload)
        print(f"wrote {args.json_out}", file=sys.stderr)


def check_out_dir(path: "str | Path") -> Path:
    """Refuse, before any model is loaded, an output folder that is a file or cannot be written."""
    from drope_lens.atomic import unwritable_reason
    from drope_lens.errors import DropeLensInputError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DropeLensInputError(f"--out {out} is an existing file, not a folder; choose a folder path")
    why = unwritable_reason(out)
    if why:
        raise DropeLensInputError(f"--out {out}: {why}; choose a folder you can write to")
    return out


def check_cache_dir(args: argparse.Namespace) -> None:
    """The embedded pair is converted into ``$DROPE_LENS_CACHE`` on first use: that folder must be writable."""
    if not hasattr(args, "rope") or args.rope is not None:
        return
    from drope_lens.loading.embedded import check_cache_writable, embedded_checkpoint_cached

    if not embedded_checkpoint_cached():
        check_cache_writable()


def check_model_path(value: "str | None", flag: str) -> None:
    """A --rope/--drope value that looks like a local path must be a readable Llama-family model folder."""
    import json
    import os

    from drope_lens.errors import CorruptFileError, DropeLensInputError, MissingFileError

    if value is None:
        return
    p = Path(value).expanduser()
    looks_local = p.exists() or value.startswith((".", "/", "~")) or value.count("/") > 1
    if not looks_local:
        return
    if not p.exists():
        raise MissingFileError(f"{flag} {value}: no such folder (give a local model folder or a hub id)")
    if not p.is_dir():
        raise DropeLensInputError(f"{flag} {value}: not a folder (a model folder holds config.json and weights)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise DropeLensInputError(f"{flag} {value}: folder is not readable")
    if not (p / "config.json").exists():
        raise MissingFileError(f"{flag} {value}: no config.json in this folder; is it a model folder?")
    try:
        raw = json.loads((p / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(
            f"{flag} {value}: config.json is not valid JSON ({exc}); re-save or re-download the checkpoint"
        ) from exc
    from drope_lens.loading.source import check_model_folder

    check_model_folder(p, raw, flag=flag)


def check_model_args(args: argparse.Namespace) -> None:
    """--backend, --rope/--drope folders, and what only the bridge can do (--quantize, --device-map, Qwen
    models) against an explicit hooked backend, before anything is loaded."""
    from drope_lens.loading.backend import check_backend

    check_backend(getattr(args, "backend", None), what="--backend")
    check_model_path(getattr(args, "rope", None), "--rope")
    check_model_path(getattr(args, "drope", None), "--drope")
    from drope_lens.errors import DropeLensInputError
    from drope_lens.loading.load import bridge_reasons, resolve_backend
    from drope_lens.loading.source import read_family

    families = []
    for flag in ("rope", "drope"):
        value = getattr(args, flag, None)
        if value is not None and value != "recalibrated" and Path(value).expanduser().is_dir():
            families.append(read_family(value))
    placement = placement_kwargs(args)
    reasons = bridge_reasons(**placement, families=tuple(families))
    backend = resolve_backend(getattr(args, "backend", None), reasons, what="--backend")
    if placement["device_map"] is not None or placement["max_memory"] is not None:
        from drope_lens.loading.bridge.devices import check_device_map

        if getattr(args, "n_devices", 1) > 1:
            raise DropeLensInputError("give --device-map or --n-devices, not both")
        if backend == "bridge":
            check_device_map(placement["device_map"], placement["max_memory"], what="--device-map")


def validate_common_args(args: argparse.Namespace) -> None:
    """Check every numeric/path option a subcommand has, before anything is loaded."""
    from drope_lens.errors import DropeLensInputError
    from drope_lens.validation import check_tau, check_threshold

    def num(name: str):
        return getattr(args, name, None)

    if num("threshold") is not None:
        check_threshold(args.threshold, "--threshold (λ)")
    for name in ("tau", "gu_eps"):
        if num(name) is not None:
            check_tau(getattr(args, name), f"--{name.replace('_', '-')}")
    for name, lo in (
        ("max_length", 2),
        ("batch_size", 1),
        ("n_texts", 1),
        ("n_seeds", 2),
        ("task_n", 1),
        ("top", 1),
        ("context_length", 2),
    ):
        v = num(name)
        if isinstance(v, int) and not isinstance(v, bool) and v < lo:
            raise DropeLensInputError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")
    lens = getattr(args, "passkey_lengths", None)
    if lens is not None and (not lens or min(lens) < 1):
        raise DropeLensInputError(f"--passkey-lengths must be positive token counts, got {lens}")
    for name in ("texts_file", "identify_file"):
        v = getattr(args, name, None)
        if v and not Path(v).is_file():
            raise DropeLensInputError(f"--{name.replace('_', '-')} {v}: no such file")
    texts = getattr(args, "text", None)
    if isinstance(texts, str):  # summary takes one --text, the other commands a list
        texts = [texts]
    if texts is not None and any(not t.strip() for t in texts):
        raise DropeLensInputError("--text is empty; give a non-empty text")
    j = getattr(args, "json_out", None)
    if j and j != "-":
        from drope_lens.atomic import unwritable_reason

        p = Path(j)
        if p.is_dir():
            raise DropeLensInputError(f"--json {j} is a folder; give a file path")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise DropeLensInputError(f"--json {j}: folder {parent} does not exist; create it or choose another path")
        why = unwritable_reason(parent)
        if why:
            raise DropeLensInputError(f"--json {j}: {why}; choose a folder you can write to")
    _check_names(args)
    build = getattr(args, "build_options", None)
    if build is not None:  # the command's options object (drope_lens.options), validated before any model code
        args.options = build(args)
    check_model_args(args)
    check_cache_dir(args)


def _check_names(args: argparse.Namespace) -> None:
    """--tasks / --conditions / --bos-layer values known without a model."""
    from drope_lens.errors import DropeLensInputError

    if getattr(args, "command", None) == "tasks":
        from drope_lens.options import CONDITIONS, TASKS

        for flag, given, known in (("--tasks", args.tasks, TASKS), ("--conditions", args.conditions, CONDITIONS)):
            unknown = [v for v in given if v not in known]
            if unknown or not given:
                what = f"unknown {unknown}" if unknown else "nothing given"
                raise DropeLensInputError(f"{flag}: {what}; choose from {','.join(known)}")
        if not 0.0 <= args.passkey_depth <= 1.0:
            raise DropeLensInputError(f"--passkey-depth must be in [0, 1], got {args.passkey_depth}")
    given = getattr(args, "bos_layer", None)
    layers = [given] if isinstance(given, int) else given
    if layers is not None and any(v < 0 for v in layers):
        shown = ",".join(map(str, layers))
        raise DropeLensInputError(f"--bos-layer must be >= 0, got {shown}")
