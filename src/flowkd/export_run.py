"""Export a model of a run directory (``flowkd export RUN_DIR --model NAME``): rebuilt from the run's
``config.json`` with the weights of the last stage that trained it and the training set's normalisation."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import FlowKDError
from .export import format_of, export
from .taps import default_representation

__all__ = ["export_run"]


def export_run(run_dir, model_name: str, path, *, format: str | None = None, output: str = "representation",
               tap: str | None = None, input_dtype: str = "uint8", queries: int = 500, database: int = 2000,
               int8: bool = False, calibration: int = 512, force: bool = False, log=print, **kw) -> dict:
    """Export model ``model_name`` of a run directory with the weights of the last stage that trained it.

    The model is rebuilt from the run's ``config.json`` (arch, width, options; ``auxiliary_of`` resolved),
    the training set's mean/std are baked in, and the check uses a stratified held-out sample of
    ``queries`` test images against ``database`` training images of the run's data. ``int8`` (ONNX only):
    also ``<stem>.int8.onnx``, statically quantised, calibrated on ``calibration`` training images (other
    than the check's database sample), with its latency and mAP change (flowkd.quantize). ``force``: replace
    files that exist (without it, an existing output file is refused before any work).
    """
    from .checks import check_number
    from .config import config_from_dict
    from .export import check_outputs
    from .data.load import stratified_index
    from .runmodels import RunModels, load_data
    from .io import load_into, read_json

    check_number("--queries", queries, ">= 1", whole=True)
    check_number("--database", database, ">= 1", whole=True)
    check_number("--calibration", calibration, ">= 1", whole=True)
    for k in ("atol", "rtol"):
        if k in kw:
            check_number(f"--{k}", kw[k], ">= 0")
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FlowKDError(f"{run_dir} is not a run directory (no config.json)")
    raw = read_json(cfg_path, "the run folder is damaged")
    models = raw.get("models", {})
    if model_name not in models:
        raise FlowKDError(f"run {run_dir} has no model {model_name!r}; its models: {', '.join(models) or '(none)'}")
    m = models[model_name]
    if m.get("features"):
        raise FlowKDError(f"model {model_name!r} is precomputed features ({m['features']}), not a network")
    fmt = (format or format_of(str(path))).lower()
    if int8 and fmt != "onnx":
        raise FlowKDError(f"--int8 needs --format onnx (got {fmt})")
    if input_dtype not in ("uint8", "float32"):
        raise FlowKDError(f"input dtype must be uint8 or float32, got {input_dtype!r}")
    path = Path(path)
    int8_path = path.with_name(path.stem + ".int8.onnx")
    check_outputs([path, path.with_name(path.name + ".json")]
                  + ([int8_path, int8_path.with_name(int8_path.name + ".json")] if int8 else []), force)
    cfg = config_from_dict(raw)
    cfg.fast.channels_last = False  # the exported graph takes plain NCHW images
    stages = [s for s in raw.get("stages", []) if s.get("model") == model_name and sum(s.get("epochs", [])) > 0]
    if stages:  # a stage's checkpoint replaces whatever the model started from
        cfg.models[model_name].weights = ""
    train_set, test_set = load_data(cfg)
    c, h, _ = train_set.shape
    cpu = torch.device("cpu")

    def fresh():  # the model as the run builds it (arch, width, auxiliary_of, options, a weights file)
        return RunModels(cfg, train_set, cpu, only=[model_name]).models[model_name]

    run = RunModels(cfg, train_set, cpu, only=[model_name])
    model, (arch, width) = run.models[model_name], run.archs[model_name]
    if stages:
        stage = stages[-1]["name"]
        weights = run_dir / "checkpoints" / f"{stage}.{raw.get('weights_format', 'pt')}"
        if not weights.is_file():
            raise FlowKDError(f"run {run_dir}: no checkpoint for stage {stage!r} ({weights}); did the run finish?")
        load_into(model, weights, f"model {model_name!r} ({arch} x{width:g})")
    else:  # RunModels loaded the model's own weights file, if any
        stage, weights = None, Path(m["weights"]) if m.get("weights") else None
        if weights is None and any(True for _ in model.parameters()):
            raise FlowKDError(f"model {model_name!r} was not trained in {run_dir} and has no weights file")
    model.eval()
    if output == "representation":
        tap = tap or m.get("representation") or default_representation(model)
    q = test_set.subset(stratified_index(test_set, queries, cfg.seed + 11))
    db = train_set.subset(stratified_index(train_set, database, cfg.seed + 12))
    example = q.images[:2]
    if input_dtype == "float32":
        example = example.float()
    meta = {"model": {"name": model_name, "arch": arch, "width": width, "options": m.get("options") or {},
                      "in_channels": c, "in_size": h, "num_classes": train_set.num_classes,
                      "run_dir": str(run_dir), "stage": stage, "weights": str(weights) if weights else None},
            "data": {"name": cfg.data.name, "classes": list(train_set.classes)}}

    log(f"exporting {model_name!r} ({arch} x{width:g}, weights {weights or 'none'}) as {format or format_of(str(path))}, "
        f"output {tap if output == 'representation' else 'logits'}")
    rep = export(model, example, path, format=format, output=output, tap=tap,
                 normalize=(train_set.mean, train_set.std), check=(q, db), fresh=fresh, metadata=meta, log=log,
                 force=force, **kw)
    if int8:
        from .io import atomic_write_json
        from .quantize import quantize_onnx

        picked = set(stratified_index(train_set, database, cfg.seed + 12))
        rest = [i for i in range(len(train_set)) if i not in picked] or list(range(len(train_set)))
        calib = train_set.subset(rest).subset(stratified_index(train_set.subset(rest), calibration, cfg.seed + 13))
        images = calib.images if input_dtype == "uint8" else calib.images.float()
        qpath = Path(path).with_name(Path(path).stem + ".int8.onnx")
        rep["int8"] = quantize_onnx(path, qpath, images, check=(q, db), log=log)
        atomic_write_json(qpath.with_name(qpath.name + ".json"), {**{k: v for k, v in rep.items() if k not in (
            "path", "metadata_path", "bytes", "int8", "check")}, "format": "onnx (int8, QDQ, static)", "int8": rep["int8"]})
    return rep
