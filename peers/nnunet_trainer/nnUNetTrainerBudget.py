"""nnU-Net's default trainer under a wall-clock budget (peers/nnunet.py builds it; with a working
torchvision, nnUNetv2_train -tr nnUNetTrainerBudget finds it through nnUNet_extTrainer too).

nnUNetTrainer unchanged (network, loss, augmentation, SGD with poly schedule over its 1000 nominal
epochs) except: epochs of EEN_NNUNET_ITERATIONS training and EEN_NNUNET_VAL_ITERATIONS validation
iterations (nnU-Net: 250 and 50); training stops after the epoch that ends past
EEN_NNUNET_BUDGET_MINUTES, or after EEN_NNUNET_MAX_EPOCHS epochs (as train.py --max-minutes); each
epoch's steps and seconds go to <fold>/budget_history.json; and the final validation of the held-out
fold is skipped (compare.py scores held-out cases with evaluate.py instead).
"""
import json
import os
from time import perf_counter

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = int(os.environ.get("EEN_NNUNET_ITERATIONS", 250))
        self.num_val_iterations_per_epoch = int(os.environ.get("EEN_NNUNET_VAL_ITERATIONS", 50))
        self.budget_seconds = float(os.environ.get("EEN_NNUNET_BUDGET_MINUTES", "inf")) * 60
        self.max_epochs = int(os.environ.get("EEN_NNUNET_MAX_EPOCHS", self.num_epochs))

    def run_training(self):
        """nnUNetTrainer.run_training, timed per epoch and ended by the budget."""
        start = perf_counter()
        self.on_train_start()
        rows, history = [], os.path.join(self.output_folder, "budget_history.json")
        parameters = sum(p.numel() for p in self.network.parameters())
        for epoch in range(self.current_epoch, self.num_epochs):
            began = perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            train_seconds = perf_counter() - began
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            rows.append({"epoch": epoch, "loss": float(self.logger.get_value("train_losses", -1)),
                         "val_loss": float(self.logger.get_value("val_losses", -1)),
                         "steps": self.num_iterations_per_epoch, "train_seconds": train_seconds,
                         "epoch_seconds": perf_counter() - began})
            with open(history, "w") as handle:
                json.dump({"parameters": parameters, "configuration": self.configuration_name,
                           "patch_size": list(self.configuration_manager.patch_size),
                           "batch_size": self.batch_size, "rows": rows}, handle, indent=1)
            if perf_counter() - start >= self.budget_seconds or len(rows) >= self.max_epochs:
                self.print_to_log_file(f"budget: stopping after {len(rows)} epochs, "
                                       f"{perf_counter() - start:.0f} s")
                break
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("validation of the held-out fold skipped (nnUNetTrainerBudget)")
