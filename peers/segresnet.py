"""MONAI's SegResNet (Myronenko 2018) with MONAI's BraTS tutorial settings, as a small PyTorch loop
on the project's 3 mm cache: the EEN's 3D backbone without the embedding.

    python -m peers.segresnet train --cache OUT/cache --out RUN --max-minutes 10 [--epochs N]
    python -m peers.segresnet predict --run RUN --input VALIDATION --output PREDICTIONS

Network: SegResNet(blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), init_filters 16, in_channels 4,
out_channels 3, dropout_prob 0.2): input (N, 4, H, W, D) FLAIR, T1, T1ce, T2 (the cache's brain
z-scores, as the tutorial's NormalizeIntensityd(nonzero, channel_wise)), output (N, 3, H, W, D)
logits of WT, TC, ET (sigmoid). DiceLoss(smooth_nr 0, smooth_dr 1e-5, squared_pred, sigmoid),
Adam 1e-4 with weight decay 1e-5 and the tutorial's cosine schedule over 300 epochs (the budget
ends training first), batch 1, random flips on each axis and intensity scale and shift of 0.1.
The cache's whole 64x64x48 crop is the input (the tutorial's 224x224x144 random crop does not fit
a 3 mm brain). Validation Dice on the held-out 20 % after every epoch; the best weights predict.
RUN: best.pt, last.pt, settings.json, history.csv, peer.json (for compare.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from util.outputs import atomic, exits_cleanly
from peers.plumbing import (Budget, PeerError, epoch_row, prediction_cases, require, split_cases,
                          without_tensorflow, write_case_labels, write_history, write_record)

TUTORIAL_EPOCHS = 300  # the tutorial's max_epochs, the cosine schedule's period
USES_CACHE = True  # compare.py gives train --cache OUT/cache


def build():
    """The tutorial's network: (N, 4, H, W, D) -> (N, 3, H, W, D) logits, H, W, D multiples of 8."""
    from monai.networks.nets import SegResNet

    return SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16,
                     in_channels=4, out_channels=3, dropout_prob=0.2)


def case_arrays(cache, case_id: str) -> tuple:
    """(image float32 (4, H, W, D), regions float32 (3, H, W, D)) of a cached case."""
    from brats.cases import MODALITIES

    image = np.moveaxis(np.array(cache.image(case_id, MODALITIES), np.float32), -1, 0)
    return image, np.moveaxis(cache.regions(case_id).astype(np.float32), -1, 0)


def augmented(image: np.ndarray, regions: np.ndarray, rng) -> tuple:
    """The tutorial's RandFlip (each spatial axis, p 0.5), RandScaleIntensity and
    RandShiftIntensity (factors and offsets 0.1, p 1): (4, H, W, D), (3, H, W, D) -> same."""
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            image, regions = np.flip(image, axis), np.flip(regions, axis)
    image = image * np.float32(1 + rng.uniform(-0.1, 0.1)) + np.float32(rng.uniform(-0.1, 0.1))
    return np.ascontiguousarray(image), np.ascontiguousarray(regions)


def mean_dice(model, pairs: list) -> float:
    """Mean over cases and regions of the Dice of sigmoid > 0.5 (an empty pair counts 1)."""
    import torch

    scores = []
    model.eval()
    with torch.no_grad():
        for image, regions in pairs:
            predicted = torch.sigmoid(model(torch.from_numpy(image)[None]))[0].numpy() > 0.5
            for p, t in zip(predicted, regions > 0.5):
                total = p.sum() + t.sum()
                scores.append(1.0 if total == 0 else 2 * (p & t).sum() / total)
    return float(np.mean(scores))


def train(args) -> int:
    from datasets.cache import Cache, CacheError

    try:
        cache = Cache(args.cache)
    except CacheError as error:
        raise PeerError(str(error)) from None
    if any(n % 8 for n in cache.crop_size):
        raise PeerError(f"{args.cache}: crop {cache.crop_size} is not a multiple of 8 (SegResNet "
                        f"halves the grid three times)")
    split = split_cases(cache.labelled_ids())
    without_tensorflow()
    import torch
    from monai.losses import DiceLoss

    training = [case_arrays(cache, i) for i in split["train"]]
    validation = [case_arrays(cache, i) for i in split["validation"]]
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build()
    loss_function = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False,
                             sigmoid=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TUTORIAL_EPOCHS)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps({**cache.settings, **split}, indent=1))
    clock, history, best = Budget(args.max_minutes, args.epochs), [], -1.0
    parameters = sum(p.numel() for p in model.parameters())
    print(f"SegResNet, {parameters:,} parameters; {len(training)} training and "
          f"{len(validation)} validation cases of {args.cache}", flush=True)
    while not clock.spent(len(history)):
        start, losses = time.perf_counter(), []
        model.train()
        for index in rng.permutation(len(training)):
            image, regions = augmented(*training[index], rng)
            optimizer.zero_grad()
            loss = loss_function(model(torch.from_numpy(image)[None]),
                                 torch.from_numpy(regions)[None])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        schedule.step()
        train_seconds = time.perf_counter() - start
        dice = mean_dice(model, validation)
        if dice > best:
            best = dice
            with atomic(args.out / "best.pt") as temporary:
                torch.save(model.state_dict(), temporary)
        history.append(epoch_row(len(history), len(training), train_seconds,
                                 time.perf_counter() - start, loss=np.mean(losses),
                                 val_mean_dice=dice))
        write_history(history, args.out / "history.csv")
        print(f"epoch {len(history)}: loss {np.mean(losses):.4f}, validation mean Dice "
              f"{dice:.4f}, {time.perf_counter() - start:.1f} s", flush=True)
    with atomic(args.out / "last.pt") as temporary:
        torch.save(model.state_dict(), temporary)
    write_record(args.out, parameters, history, best_validation_dice=best)
    return 0


def predict(args) -> int:
    """Each case as the cache was made (preprocess_case), the whole crop through the network,
    sigmoid probabilities back on the case grid (datasets.volumes.full_grid), labels as predict.py writes."""
    from brats.cases import MODALITIES, CaseError, load_case
    from datasets.volumes import full_grid
    from datasets.volumes import preprocess_case

    settings_file, weights = args.run / "settings.json", args.run / "best.pt"
    if not settings_file.is_file() or not weights.is_file():
        raise PeerError(f"{args.run}: not a trained SegResNet run (no settings.json or best.pt)")
    settings = json.loads(settings_file.read_text())
    without_tensorflow()
    import torch

    model = build()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    cases, codings = prediction_cases(args.input, args.output)
    failed = []
    for files in cases:
        try:
            case = load_case(dataclasses.replace(files, seg=None))  # labels unread
            arrays, meta = preprocess_case(case, tuple(settings["crop_size"]),
                                           settings["crop_mode"], settings["downsample"])
        except CaseError as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(files.id)
            continue
        image = np.stack([arrays[m] for m in MODALITIES])[None]
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(image)))
        probabilities = np.moveaxis(torch.sigmoid(logits)[0].numpy(), 0, -1)
        write_case_labels(case, full_grid(probabilities, meta), codings[case.id], args.output)
    print(f"{len(cases) - len(failed)} cases written to {args.output}, {len(failed)} failed")
    return 1 if failed else 0


@exits_cleanly(PeerError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    steps = parser.add_subparsers(dest="step", required=True)
    training = steps.add_parser("train", help="train on a preprocess.py cache")
    training.add_argument("--cache", type=Path, required=True)
    training.add_argument("--out", type=Path, required=True)
    training.add_argument("--max-minutes", type=float, required=True)
    training.add_argument("--epochs", type=int)
    training.add_argument("--seed", type=int, default=0)
    predicting = steps.add_parser("predict", help="label maps of BraTS cases")
    predicting.add_argument("--run", type=Path, required=True)
    predicting.add_argument("--input", type=Path, required=True)
    predicting.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    require("monai", "monai")
    require("torch", "torch")
    return train(args) if args.step == "train" else predict(args)


if __name__ == "__main__":
    sys.exit(main())
