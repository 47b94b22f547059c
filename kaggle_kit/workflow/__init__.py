"""The workflow layer: what a person runs around the library.

    cells      the one-liners notebook cells call (load the model once, resolve the device, ...)
    notebooks  papermill: the ordered stages in one kernel, sweeps, the Kaggle bundle
    golden     the nbval golden notebooks
    kaggle     kernel-metadata.json checks, `kaggle kernels push` / `output`
    doctor     the preflight: what will fail on this machine, and the one-line fix
    wheels     the offline wheels folder for Kaggle's image
    demo       the README's `make demo`
The experiment itself (generate, evaluate, records, tables) is `kaggle_kit.experiment`.
"""
