"""The meta-learner: U-Net per-pixel weights over base depths, the stacked ensemble."""
