"""A stage as a value: from a ``[[stages]]`` entry and the run's models, everything its training needs
(model, loader, step, loss, optimiser plan), built once and used both by the up-front check and the run.

A stage's kind names its builder in ``STAGE_KINDS``; schedules and pair losses are built through their
registries from the stage's options (an option the chosen class does not take is an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .bank import entry_for
from .config import StageConfig, pair_loss_names, pair_loss_options, teacher_side
from .data.arrays import Loader
from .distributed import gather_rows
from .errors import FlowKDError
from .flow import InformationFlowLoss
from .losses.baselines import PAIR_LOSSES
from .registry import Registry
from .runmodels import RunModels, channels_last, seed_for
from .schedules import SCHEDULES
from .steps import DistillStep, Step, SupervisedStep
from .taps import frozen_taps, teacher_keys
from .teachers import JointTeacher, Teacher, as_teacher

__all__ = ["Stage", "Plan", "STAGE_KINDS", "build_stage", "stage_pairs", "teacher_reads"]

STAGE_KINDS: Registry = Registry("stage kind")


@dataclass(frozen=True)
class Plan:
    """How a stage optimises: ``epochs[i]`` epochs at ``lr[i]`` per phase; see ``flowkd.loop.train``."""

    epochs: tuple
    lr: tuple
    optimizer: str = "adam"
    weight_decay: float = 0.0
    restart: str = "never"
    anneal: str = "none"
    average: int = 0


@dataclass
class Stage:
    name: str
    model_name: str
    model: nn.Module              # the network trained (its parameters, its layers)
    forward: nn.Module            # what the step calls: the model, or its DDP / compiled wrapper
    loader: Loader
    step: Step
    plan: Plan
    params: list = field(default_factory=list)   # the model's and the loss's trainable parameters
    flow: InformationFlowLoss | None = None
    teacher_name: str = ""        # the stage's teacher (``learns_from``: every model it reads)
    teacher: Teacher | None = None   # what the step reads the teacher's side from (None: no teacher)
    teacher_source: object = None    # what ``teacher`` wraps: a network, a FeatureBank (shared in a cohort)
    trains_head: bool = False     # the classifier head learns from labels in this stage
    info: dict = field(default_factory=dict)
    rng: torch.Tensor | None = None  # the CPU generator's state training starts from (None: the stage's seed)
    sweep_of: str = ""            # a sweep's copy of this stage: seeded as that one
    teacher_names: tuple = ()     # every model the stage learns from (several when a pair reads "model/tap")

    @property
    def learns_from(self) -> tuple:
        """Every model the stage reads a teacher's side from."""
        return self.teacher_names or ((self.teacher_name,) if self.teacher_name else ())

    @property
    def data_key(self) -> tuple:
        """What makes two stages read the same batches (and so able to train as a cohort)."""
        ld = self.loader
        return (id(ld.data), ld.batch_size, ld.shuffle, ld.augment, ld.pad, ld.seed, ld.drop_last, ld.channels_last,
                ld.rank, ld.world, id(ld.views) if ld.views is not None else None)

    def seed(self, run_seed: int) -> None:
        """Put the random generators where this stage's training starts."""
        torch.manual_seed(seed_for(run_seed, "train/" + (self.sweep_of or self.name)))
        if self.rng is not None:
            torch.set_rng_state(self.rng)

    def close(self) -> None:
        close = getattr(self.step, "close", None)
        if close is not None:
            close()


@dataclass
class Context:
    """What building a stage needs from the run: its models, device, distribution and model wrappers."""

    cfg: object
    run: RunModels
    forward: Callable[[str], nn.Module]   # a model's forward module (DDP / compile wrapper, one per model)
    rank: int = 0
    world: int = 1
    log: Callable = print

    @property
    def distributed(self) -> bool:
        return self.world > 1


def stage_pairs(s: StageConfig, run: RunModels) -> list[tuple[str, str]]:
    if s.pairs:
        return [(p[0], p[1]) for p in s.pairs]
    if s.pairs_from == "representation":
        return [(run.representation(s.teacher), run.representation(s.model))]
    t, st = run.flow_taps(s.teacher), run.flow_taps(s.model)
    if not t or not st or len(t) != len(st):
        raise FlowKDError(f"stage {s.name!r}: pairs_from='flow' needs both models to declare the same number of "
                          "flow_taps; give pairs explicitly")
    return list(zip(t, st))


def _loader(s: StageConfig, ctx: Context, augment: bool, views=None) -> Loader:
    cfg = ctx.cfg
    # every stage of a run reads the same stream of batches (order and augmentation draws): a fair comparison
    # of students, and what lets consecutive stages train as a cohort (flowkd.cohort)
    return Loader(ctx.run.train_set, cfg.data.batch_size, shuffle=True, augment=augment,
                  seed=seed_for(cfg.seed, "data"), channels_last=channels_last(cfg, ctx.run.device), drop_last=cfg.data.drop_last,
                  rank=ctx.rank, world=ctx.world, views=views)


def banked_teacher(s: StageConfig, ctx: Context, name: str, reads: list[tuple[str, nn.Module]]):
    """Model ``name`` as a stage's teacher served from a bank of its views (``models.<name>.views``): the bank's
    teacher (reading, for each (tap, pair loss) of ``reads``, the entry that loss needs) and the view table the
    loader serves; (None, None) for a teacher run live. The bank's views are drawn by a loader like the stage's,
    seeded with the teacher's ``view_seed`` (-1: the run's data seed, so that views = epochs serves exactly the
    live augmentation)."""
    cfg, run = ctx.cfg, ctx.run
    m = cfg.models[name]
    if not m.views or name not in run.models:
        return None, None
    count = s.views if s.views > 0 else m.views
    seed = seed_for(cfg.seed, "data") if m.view_seed < 0 else m.view_seed
    drawing = Loader(run.train_set, cfg.data.batch_size, shuffle=True, augment=True, seed=seed,
                     drop_last=cfg.data.drop_last)
    bank = run.view_bank(name, drawing)
    entries, forms = {}, {}
    for tap, loss in reads:
        entries[tap], form = entry_for(tap, loss)
        forms[entries[tap]] = form
    if sum(s.epochs):  # a stage switched off reads nothing
        run.want_views(name, forms, count)
    return bank.teacher_for(entries, count), bank.view_table(count)


def _plan(s: StageConfig) -> Plan:
    return Plan(tuple(s.epochs), tuple(s.lr), s.optimizer, s.weight_decay, s.restart_optimizer, s.lr_anneal,
                s.average_last)


def check_pair_order(s: StageConfig, pairs, t_order: list[str], s_order: list[str]) -> None:
    """Pairs go shallow -> deep on both sides (the order of the taps in each network's forward pass), no tap
    in two pairs: the schedule treats the last pair as the final representation. ``allow_unordered_pairs``
    lets a user pair otherwise on purpose. A teacher side not in ``t_order`` (a tap of another teacher,
    ``model/tap``) has no place in the stage teacher's order and is not checked for it."""
    if s.allow_unordered_pairs:
        return
    hint = "; if this pairing is intended, set allow_unordered_pairs = true on the stage"
    for side, taps, order in (("teacher", [t for t, _ in pairs], t_order), ("student", [st for _, st in pairs], s_order)):
        twice = [t for i, t in enumerate(taps) if t in taps[:i]]
        if twice:
            raise FlowKDError(f"stage {s.name!r}: the {side} tap {twice[0]!r} is in two layer pairs{hint}")
        placed = [i for i, t in enumerate(taps) if t in order]
        for a, b in zip(placed, placed[1:]):
            if order.index(taps[b]) < order.index(taps[a]):
                raise FlowKDError(f"stage {s.name!r}: layer pairs must go shallow -> deep, the last being the final "
                                  f"representation, but the {side}'s {taps[b]!r} (pair {b + 1}) runs before "
                                  f"{taps[a]!r} (pair {a + 1}) in its forward pass{hint}")


def _check_trainable(s: StageConfig, model: nn.Module) -> None:
    if sum(s.epochs) and not any(p.requires_grad for p in model.parameters()):
        raise FlowKDError(f"stage {s.name!r}: model {s.model!r} has no trainable parameters")


@STAGE_KINDS.register("supervised")
def build_supervised(s: StageConfig, ctx: Context) -> Stage:
    model = ctx.run.models[s.model]
    _check_trainable(s, model)
    classes = ctx.run.train_set.num_classes
    out = None
    if sum(s.epochs):  # a stage switched off (0 epochs) trains nothing: its model may be no classifier (HOG)
        with frozen_taps(model, []) as frozen:
            out = frozen.run(ctx.run.train_set.normalize(ctx.run.train_set.images[:2]))[0]
    if out is not None and (not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes):
        got = f"outputs of shape {tuple(out.shape[1:])}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise FlowKDError(f"stage {s.name!r}: model {s.model!r} gives {got} per image, but a supervised stage needs "
                          f"one logit per class: the data has {classes} classes")
    forward = ctx.forward(s.model)
    return Stage(s.name, s.model, model, forward, _loader(s, ctx, ctx.cfg.data.augment),
                 SupervisedStep(forward), _plan(s), list(model.parameters()), trains_head=True,
                 info={"kind": "supervised"}, sweep_of=s.sweep_of)


def teacher_reads(s: StageConfig, run: RunModels) -> dict[str, list[str]]:
    """Each model a distill stage reads, with the taps it reads of it."""
    out: dict[str, list[str]] = {}
    for t, _ in stage_pairs(s, run):
        for key in teacher_keys(t):
            m, tap = teacher_side(s, key)
            out.setdefault(m, []).append(tap)
    return out


def build_flow(s: StageConfig, run: RunModels) -> InformationFlowLoss:
    """The stage's information-flow loss: its layer pairs, each with the stage's pair loss (or the one the pair
    names), weighted by its schedule (both through their registries)."""
    pairs = stage_pairs(s, run)
    options = pair_loss_options(s)
    if options.get("log_eps") == 0:  # 0: plain logs, as the reference code
        options["log_eps"] = None
    sides = {k: teacher_side(s, k) for t, _ in pairs for k in teacher_keys(t)}
    t_shapes: dict[str, tuple] = {}
    for model in dict.fromkeys(m for m, _ in sides.values()):  # each teacher's taps, in the order they fire
        key_of = {tap: key for key, (m, tap) in sides.items() if m == model}
        t_shapes.update({key_of[tap]: shape for tap, shape in run.tap_shapes(model, list(key_of)).items()})
    s_shapes = run.tap_shapes(s.model, [st for _, st in pairs])
    check_pair_order(s, pairs, [k for k in t_shapes if sides[k][0] == s.teacher], list(s_shapes))
    names = pair_loss_names(s) if s.pairs else [s.loss] * len(pairs)
    # the stage's options go to the pairs of its `loss`; a pair naming another loss takes that loss's defaults
    losses = [PAIR_LOSSES.get(n)(t_shapes[teacher_keys(t)[0]], s_shapes[st], **(options if n == s.loss else {}))
              for (t, st), n in zip(pairs, names)]
    sched = dict(s.schedule)
    schedule = SCHEDULES.build(sched.pop("name"), sched, f"stage {s.name!r}, schedule")
    return InformationFlowLoss(pairs, schedule, pair_losses=losses, term=names).to(run.device)


@STAGE_KINDS.register("distill")
def build_distill(s: StageConfig, ctx: Context) -> Stage:
    run, cfg = ctx.run, ctx.cfg
    model = run.models[s.model]
    _check_trainable(s, model)
    torch.manual_seed(seed_for(cfg.seed, "train/" + (s.sweep_of or s.name)))  # a trainable loss (FitNets) draws its init here
    flow = build_flow(s, run)  # unknown layers fail here, naming the closest valid ones
    rng = torch.get_rng_state()
    reads: dict[str, dict] = {}  # teacher -> {a pair's teacher key: (its tap, the pair's loss)}
    for keys, loss in zip(flow.parts, flow.pair_losses):
        for k in keys:
            m, tap = teacher_side(s, k)
            reads.setdefault(m, {})[k] = (tap, loss)
    parts, sources, banks, tables = {}, {}, [], []
    for m, keyed in reads.items():  # each teacher the stage reads: live, precomputed, or from its bank of views
        banked, table = banked_teacher(s, ctx, m, list(keyed.values()))
        sources[m] = banked if banked is not None else run.teacher(m)
        keys = {t: tap for t, (tap, _) in keyed.items()}
        parts[m] = (as_teacher(sources[m], list(keys.values()), cfg.fast.inference_teacher), keys)
        if banked is not None:
            banks.append(banked)
            tables.append(table)
    precomputed = [m for m in reads if m in run.banks]
    augment = s.augment if isinstance(s.augment, bool) else cfg.data.augment and not precomputed
    if precomputed and cfg.data.augment and s.augment == "auto":
        ctx.log(f"[{s.name}] teacher {precomputed[0]!r} is precomputed on the augmentation-free images: "
                "this stage trains without augmentation (set augment = true to override)")
    forward = ctx.forward(s.model)
    gather = gather_rows if ctx.distributed and cfg.distributed.gather_features else None
    (m, (teacher, keys)), *more = parts.items()
    if not more and all(k == tap for k, tap in keys.items()):  # one teacher, its own taps: a cohort shares it
        source = sources[m]
    else:  # several: each answers its pairs' taps under the pairs' keys; not shared with a cohort
        teacher, source = JointTeacher(parts), None
    step = DistillStep(forward, teacher, flow, s.ce_weight, gather=gather)
    info = {"kind": "distill", "loss": s.loss if len(set(flow.terms)) == 1 else flow.terms, "pairs": flow.pairs,
            "schedule": repr(flow.schedule), "augment": augment, "teacher_precomputed": bool(precomputed)}
    if len(parts) > 1:
        info["teachers"] = list(parts)
    if banks:
        info.update(augment=True, teacher_views=banks[0].count, bank=str(banks[0].bank.dir) if len(banks) == 1
                    else [str(b.bank.dir) for b in banks])
    # every bank the stage reads serves the same view of each image in each epoch (config.py checks their views)
    loader = _loader(s, ctx, True, views=tables[0]) if tables else _loader(s, ctx, augment)
    return Stage(s.name, s.model, model, forward, loader, step, _plan(s),
                 list(model.parameters()) + list(flow.parameters()), flow, s.teacher, teacher, source,
                 trains_head=s.ce_weight > 0, info=info, rng=rng, sweep_of=s.sweep_of,
                 teacher_names=tuple(parts))


def build_stage(s: StageConfig, ctx: Context) -> Stage:
    return STAGE_KINDS.get(s.kind)(s, ctx)
