"""What the searching and pruning kinds (optembed, mixed_dim, dnis) share beyond their table
files: masks with straight-through gradients, the evolutionary search, and the multi-stage
training procedures that `run_training` hands these kinds to (`procedures.PROCEDURES`).

Nothing here is imported by `recemb.tables` except `masks`, so the table kinds load without
the training machinery.
"""
