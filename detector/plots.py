"""Training plots (placeholder until the plotting module lands)."""


def training_plots(out, best_path, val_info, device):
    return []
