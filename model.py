"""Build a network from a configuration and print its size or its Keras summary.

    python model.py --config configs/paper.yaml --summary

The EEN itself (Messaoudi et al., BrainLes 2020; SPEC.md section 2) lives in systems/een.py; its
public names are re-exported here, so `import model; model.build_model(config)` keeps working in
notebooks and scripts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

from systems.baselines import baseline_module
from systems.een import (BACKBONES, COMPRESSED_IMAGE, DECODED_IMAGE, FAST,  # noqa: F401
                         NETWORK_OUTPUT, OUTPUT, STOCK, Backbone, Kernels, build_model,
                         feature_model)
from util.config import ConfigError, load_config
from util.outputs import exits_cleanly


@exits_cleanly(ConfigError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/paper.yaml"),
                        help="YAML configuration (default configs/paper.yaml)")
    parser.add_argument("--summary", action="store_true", help="print the Keras summary")
    parser.add_argument("--weights", default="none",
                        help="EEN backbone weights: none (default; a summary needs none), "
                             "imagenet, or a local weights file")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    config.model.backbone_weights = None if args.weights == "none" else args.weights
    family = config.model.family  # the EEN, or the baseline it names
    model = build_model(config) if family == "een" else baseline_module(family).build(config)
    if args.summary:
        model.summary(expand_nested=False, line_length=110)
    else:
        print(f"{model.name}: {model.count_params():,} parameters, input {model.input_shape}, "
              f"output {model.output_shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
