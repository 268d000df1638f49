"""Pretrain the toy-world model from scratch, with checkpoints that resume exactly.

    python -m toyworld.pretrain --out toyworld/runs/NAME --minutes 60 [--resume] [--threads 1]
    python -m toyworld.pretrain --out toyworld/runs/NAME --export toyworld/model

v-prediction, AdamW with warm-up, gradient clip 1, caption dropout (empty prompt, for guidance),
EMA of the weights, timesteps biased to high noise. Every batch is a pure function of (seed, step),
so the data stream position is the step. The run directory holds checkpoint.pt (full state, written
atomically), config.json, train_log.jsonl (loss; probe accuracy of EMA samples at intervals) and
best/ (the EMA weights with the best probe score so far, as a model folder). SIGTERM stops a run
after the current step with a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from copy import deepcopy
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toyworld import model as toymodel
from toyworld import probe as toyprobe
from toyworld import world
from toyworld.sample import generate

# Settings that define the run, fixed at its start; a resume keeps them (only the stage may move on).
RUN_KEYS = (
    "seed", "res", "stage", "batch", "lr", "warmup", "weight_decay", "ema", "caption_dropout", "t_power", "t_uniform",
    "snr_weight", "gamma", "zero_snr", "freeze_text", "few_positions_until", "channels",
    "text_attention_scale", "colourless", "init_from", "pseudo", "place_first", "placeless",
)
FEW_POSITIONS = ("left", "right")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run directory")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall time for this invocation")
    ap.add_argument("--max-steps", type=int, default=None, help="stop at this total step count")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device (cuda runs the same code and random streams)")
    ap.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (0: none)")
    ap.add_argument("--export", type=Path, default=None, help="write EMA weights to this model folder and exit")
    ap.add_argument("--which", choices=("best", "last"), default="best", help="what --export writes")
    ap.add_argument("--checkpoint-minutes", type=float, default=4.0)
    ap.add_argument("--eval-every", type=int, default=500, help="probe evaluation interval in steps (0: off)")
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--res", type=int, default=16)
    ap.add_argument("--stage", type=int, default=None,
                    help="world stage (default 1); given with --resume, the run moves to it from the current step")
    ap.add_argument("--channels", default="32,64,64", help="UNet block widths")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--colourless", type=float, default=0.0,
                    help="probability of leaving an object's colour out of its caption (a bare shape word)")
    ap.add_argument("--pseudo", type=float, default=0.0,
                    help="probability of naming an object by a pseudo-word bound to its look (stage 3 on)")
    ap.add_argument("--place-first", type=float, default=None,
                    help=f"share of captions naming each object's place before it (stage 4 on; default "
                         f"{world.PLACE_FIRST})")
    ap.add_argument("--placeless", type=float, default=0.0,
                    help="share of captions saying no place (the sampler, or a painted region, places the objects)")
    ap.add_argument("--t-power", type=float, default=0.5, help="t = 999 u^p; p < 1 favours high noise")
    ap.add_argument("--t-uniform", type=float, default=0.3, help="fraction of timesteps drawn uniformly instead")
    ap.add_argument("--snr-weight", choices=("minsnr", "minsnr1", "none"), default="minsnr1",
                    help="minsnr: min(SNR,g)/(SNR+1), vanishes at high noise; minsnr1: min(1, g/(SNR+1))")
    ap.add_argument("--gamma", type=float, default=5.0)
    ap.add_argument("--zero-snr", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--text-attention-scale", type=float, default=0.25,
                    help="scale of the text encoder's attention output at initialisation (1: plain CLIP init)")
    ap.add_argument("--freeze-text", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the random text encoder fixed (trained jointly, it merges the position words)")
    ap.add_argument("--init-from", type=str, default=None,
                    help="start a new run from this model folder's weights (a new world stage for a shipped model)")
    ap.add_argument("--few-positions-until", type=int, default=0,
                    help="before this step, single objects only on the left or right")
    return ap.parse_args(argv)


def model_config(cfg: dict) -> toymodel.ModelConfig:
    """Model sizes for a run configuration."""
    channels = tuple(int(c) for c in str(cfg["channels"]).split(","))
    cross_attn = (False,) + (True,) * (len(channels) - 1)  # no attention at full resolution
    return toymodel.ModelConfig(res=cfg["res"], channels=channels, cross_attn=cross_attn, zero_snr=cfg["zero_snr"],
                                  text_attention_scale=cfg.get("text_attention_scale", 1.0))  # runs before the knob: 1


def snr_weight(snr: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    """Per-sample weight of the v-prediction MSE."""
    if kind == "minsnr":
        return snr.clamp(max=gamma) / (snr + 1)
    if kind == "minsnr1":
        return (gamma / (snr + 1)).clamp(max=1.0)
    return torch.ones_like(snr)


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Run:
    """State of one pretraining run: model, EMA, optimiser, step and random streams."""

    def __init__(self, cfg: dict, device: str = "cpu", workers: int = 0, starting: bool = False):
        """`starting`: a new run, whose weights come from `cfg["init_from"]` if it names a folder (a resumed run's
        come from its checkpoint)."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = toymodel.build(model_config(cfg), seed=cfg["seed"])
        self.model.place_first = grammar_places_first(cfg)
        if starting and cfg.get("init_from"):
            toymodel.init_from(self.model, cfg["init_from"])
        self.model.unet.to(self.device)
        self.model.text_encoder.to(self.device)
        self.model.text_encoder.requires_grad_(not cfg["freeze_text"])
        self.params = [p for m in (self.model.unet, self.model.text_encoder) for p in m.parameters()
                       if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=cfg["lr"], betas=(0.9, 0.99),
                                     weight_decay=cfg["weight_decay"])
        self.gen = torch.Generator().manual_seed(cfg["seed"])
        self.step = 0
        self.train_seconds = 0.0
        self.best = -1.0
        ac = self.model.scheduler.alphas_cumprod
        self.snr = (ac / (1 - ac)).to(self.device)
        self.batches = Batches(self.batch_args, workers)

    def state(self) -> dict:
        return {
            "cfg": self.cfg, "step": self.step, "train_seconds": self.train_seconds, "best": self.best,
            "unet": self.model.unet.state_dict(), "text_encoder": self.model.text_encoder.state_dict(),
            "ema": self.ema, "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
        }

    def load_state(self, st: dict) -> None:
        self.step, self.train_seconds, self.best = st["step"], st["train_seconds"], st["best"]
        self.model.unet.load_state_dict(st["unet"])
        self.model.text_encoder.load_state_dict(st["text_encoder"])
        for e, s in zip(self.ema, st["ema"], strict=True):
            e.copy_(s)
        self.opt.load_state_dict(st["opt"])
        self.gen.set_state(st["gen"].cpu())
        torch.set_rng_state(st["torch_rng"].cpu())
        np.random.set_state(st["numpy_rng"])
        random.setstate(st["python_rng"])

    def batch_args(self, step: int) -> tuple:
        """Arguments of `world.batch` for `step`."""
        cfg = self.cfg
        positions = FEW_POSITIONS if step < cfg["few_positions_until"] else None
        return (cfg["seed"], step, cfg["batch"], cfg["stage"], cfg["res"], positions, cfg.get("colourless", 0.0), True,
                cfg.get("pseudo", 0.0), cfg.get("place_first"), cfg.get("placeless", 0.0))

    def train_step(self) -> float:
        cfg, m = self.cfg, self.model
        images, captions = self.batches.get(self.step)
        drop = torch.rand(len(captions), generator=self.gen) < cfg["caption_dropout"]
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        # Random streams stay on the CPU generator, so a run draws the same numbers on every device.
        noise = torch.randn(images.shape, generator=self.gen).to(self.device)
        u = torch.rand(len(captions), generator=self.gen)
        uniform = torch.rand(len(captions), generator=self.gen) < cfg["t_uniform"]
        t = (999 * torch.where(uniform, u, u ** cfg["t_power"])).round().long().to(self.device)
        x0 = torch.from_numpy(images).to(self.device)
        xt = m.scheduler.add_noise(x0, noise, t)
        target = m.scheduler.get_velocity(x0, noise, t)
        pred = m.unet(xt, t, encoder_hidden_states=m.encode(captions)).sample
        mse = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (mse * snr_weight(self.snr[t], cfg["snr_weight"], cfg["gamma"])).mean()
        for g in self.opt.param_groups:
            g["lr"] = cfg["lr"] * min(1.0, (self.step + 1) / cfg["warmup"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(cfg["ema"], (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        self.step += 1
        return float(mse.detach().mean())

    def ema_model(self) -> toymodel.ToyModel:
        """A copy of the model carrying the EMA weights."""
        m = deepcopy(self.model)
        ema = iter(self.ema)
        with torch.no_grad():
            for p in (p for mod in (m.unet, m.text_encoder) for p in mod.parameters()):
                if p.requires_grad:
                    p.copy_(next(ema))
        return m


def _render_batch(args: tuple) -> tuple[np.ndarray, list[str]]:
    images, captions, _ = world.batch(*args)
    return images, captions


class Batches:
    """`world.batch` for successive steps, rendered ahead by worker processes (or here, with none)."""

    def __init__(self, args_for: Callable[[int], tuple], workers: int):
        self.args_for, self.workers = args_for, workers
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers else None
        self.pending: dict[int, Future] = {}

    def get(self, step: int) -> tuple[np.ndarray, list[str]]:
        if self.pool is None:
            return _render_batch(self.args_for(step))
        for ahead in range(step, step + 2 * self.workers):
            if ahead not in self.pending:
                self.pending[ahead] = self.pool.submit(_render_batch, self.args_for(ahead))
        images, captions = self.pending.pop(step).result()
        # Pickling made the array contiguous; restore the channels-last memory of `world.batch`, since the
        # layout changes the convolutions' rounding and a run must not depend on where its batches were drawn.
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), captions


def eval_scenes(n: int, stage: int) -> list[world.Scene]:
    """The fixed evaluation prompts: n one-object scenes (plus n/2 two-object scenes from stage 2), textured as
    the stage's scenes are."""
    rng = world.scene_rng(12345, 0)
    scenes = [world.random_scene(rng, 1) for _ in range(n)]
    if stage >= 3:
        rng = world.scene_rng(12345, 2)
        scenes = [s for s in (world.random_scene(rng, 3) for _ in range(4 * n)) if len(s.objects) == 1][:n]
    if stage >= 2:
        rng = world.scene_rng(12345, 1)
        while len(scenes) < n + n // 2:
            s = world.random_scene(rng, stage)
            if len(s.objects) == 2:
                scenes.append(s)
    return scenes


def names_place_first(i: int, stage: int, share: float | None) -> bool:
    """Whether evaluation prompt i names places first: none before stage 4, then every other one (all where the
    run's captions all do)."""
    share = world.PLACE_FIRST if share is None else share
    return stage >= 4 and share > 0 and (share >= 1 or i % 2 == 1)


def pseudo_eval(m: toymodel.ToyModel, probe: toyprobe.Probe, n: int, stage: int = 3,
                place_first: float | None = None) -> dict[str, float]:
    """Probe accuracy of samples for fixed prompts that name objects by pseudo-words: `pseudo_all` for n one-object
    prompts, `pseudo_second` for n/2 pairs with the pseudo-word named second, `pseudo_both` for n/2 with two;
    places first as `names_place_first` says."""
    names = sorted(world.pseudo_lexicon())
    rng = world.scene_rng(12345, 5)
    out = {}
    for key, count, named in (("pseudo_all", n, (True,)), ("pseudo_second", n // 2, (False, True)),
                              ("pseudo_both", n // 2, (True, True))):
        scenes, captions = [], []
        while len(scenes) < count:
            s = world.random_scene(rng, 3)
            if len(s.objects) != len(named):
                continue
            words = tuple(names[rng.integers(len(names))] if p else None for p in named)
            scenes.append(world.named_by(s, words))
            captions.append(world.caption(scenes[-1], words, names_place_first(len(captions), stage, place_first)))
        acc = toyprobe.score(probe, generate(m, captions, list(range(count))).cpu(), scenes)
        out[key] = acc["all" if len(named) == 1 else "pair"]
    return out


def evaluate(m: toymodel.ToyModel, probe: toyprobe.Probe, n: int, stage: int, bare: bool = False,
             pseudo: bool = False, place_first: float | None = None) -> dict[str, float]:
    """Probe accuracy of samples (DDIM 20 steps, guidance 4, noise seeds 0..) for the fixed prompts; with `bare`,
    also of the one-object prompts with the colour left out (`bare_*`: shape, position, background, all three);
    with `pseudo`, of prompts naming objects by pseudo-words (`pseudo_eval`); `place_first` as the run's captions."""
    scenes = eval_scenes(n, stage)
    captions = [world.caption(s, place_first=names_place_first(i, stage, place_first)) for i, s in enumerate(scenes)]
    images = generate(m, captions, list(range(len(scenes))), steps=20, guidance=4.0)
    acc = toyprobe.score(probe, images.cpu(), scenes)
    if bare:
        single = [s for s in scenes if len(s.objects) == 1]
        captions = [world.caption(s, (s.objects[0].shape,), names_place_first(i, stage, place_first))
                    for i, s in enumerate(single)]
        images = generate(m, captions, list(range(len(single))))
        keys = ("shape", "position", "background")
        hits = np.array([[r[k] == s.attributes()[k] for k in keys]
                         for r, s in zip(toyprobe.read(probe, images.cpu()), single, strict=True)])
        acc |= {f"bare_{k}": float(v) for k, v in zip(keys, hits.mean(0), strict=True)}
        acc["bare_all"] = float(hits.all(1).mean())
    if pseudo:
        acc |= pseudo_eval(m, probe, n, stage, place_first)
    return acc


def grammar_places_first(cfg: dict) -> bool:
    """Whether a run's model reads places first: all of its captions named them so."""
    return cfg["stage"] >= 4 and (cfg.get("place_first") or 0.0) >= 1.0


def export(run_dir: Path, dest: Path, which: str) -> None:
    """Write the run's best (or last-checkpoint) EMA weights as an fp16 model folder at `dest`, with the grammar of
    its captions."""
    best = run_dir / "best"
    if which == "best" and best.exists():
        m = toymodel.load(best)
        m.place_first = grammar_places_first(json.loads((run_dir / "config.json").read_text()))
    else:
        st = torch.load(run_dir / "checkpoint.pt", weights_only=False, map_location="cpu")
        run = Run(st["cfg"])
        run.load_state(st)
        m = run.ema_model()
    if dest.exists():
        shutil.rmtree(dest)
    toymodel.save(m, dest)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # Denormal floats in the convolutions' backward pass made CPU steps 10-20x slower from stage 3's step ~1400 on
    torch.set_flush_denormal(True)
    out: Path = args.out
    if args.export is not None:
        export(out, args.export, args.which)
        return
    ckpt = out / "checkpoint.pt"
    log_path = out / "train_log.jsonl"
    stage_event = None
    if args.resume:
        st = torch.load(ckpt, weights_only=False, map_location=args.device)
        run = Run(st["cfg"], args.device, args.workers)
        run.load_state(st)
        if args.stage is not None and args.stage != run.cfg["stage"]:
            run.cfg["stage"] = args.stage
            run.best = -1.0  # scores of a new stage are not comparable
            stage_event = {"step": run.step, "event": f"stage {args.stage}"}
            (out / "config.json").write_text(json.dumps(run.cfg, indent=2) + "\n")
        # Drop log lines written after the checkpoint (a run that stopped between saves).
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        log_path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= run.step))
        if stage_event:
            with open(log_path, "a") as f:
                f.write(json.dumps(stage_event) + "\n")
    else:
        if ckpt.exists():
            raise SystemExit(f"{ckpt} exists: pass --resume or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        cfg = {k: getattr(args, k) for k in RUN_KEYS} | {"stage": args.stage or 1}
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        run = Run(cfg, args.device, args.workers, starting=True)
        log_path.write_text("")
    probe = toyprobe.load(res=run.cfg["res"]) if args.eval_every else None

    def log(entry: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def checkpoint() -> None:
        atomic_save(run.state(), ckpt)

    stop = []  # SIGTERM ends the run cleanly, with a checkpoint, after the current step
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    start = time.time()
    last_ckpt = start
    losses: list[float] = []
    while (not stop and time.time() - start < args.minutes * 60
           and (args.max_steps is None or run.step < args.max_steps)):
        t0 = time.time()
        losses.append(run.train_step())
        run.train_seconds += time.time() - t0
        if run.step % args.log_every == 0:
            log({"step": run.step, "loss": float(np.mean(losses)), "train_seconds": round(run.train_seconds, 1),
                 "wall": round(time.time(), 1)})
            losses = []
        if probe is not None and run.step % args.eval_every == 0:
            ema = run.ema_model()
            acc = evaluate(ema, probe, args.eval_prompts, run.cfg["stage"], bare=run.cfg.get("colourless", 0) > 0,
                           pseudo=run.cfg.get("pseudo", 0) > 0, place_first=run.cfg.get("place_first"))
            log({"step": run.step, "eval": acc, "train_seconds": round(run.train_seconds, 1)})
            print(f"step {run.step}: {acc}", flush=True)
            score = acc["all"] + acc.get("pair", 0.0) + acc.get("bare_all", 0.0) + sum(
                acc.get(k, 0.0) for k in ("pseudo_all", "pseudo_second", "pseudo_both"))
            if score > run.best:
                run.best = score
                tmp = out / "best.tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                toymodel.save(ema, tmp)
                (tmp / "eval.json").write_text(json.dumps({"step": run.step, **acc}) + "\n")
                if (out / "best").exists():
                    shutil.rmtree(out / "best")
                os.replace(tmp, out / "best")
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint()
    print(f"stopped at step {run.step} ({run.train_seconds / 60:.1f} min of training)", flush=True)


if __name__ == "__main__":
    main()
