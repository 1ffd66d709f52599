"""Training runs: the loop (`engine`), the shared start of a run (`start`), a base learner
(`base`), the meta-learner (`meta`) and the learning-rate range test (`lr_finder`)."""
