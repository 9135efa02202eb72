"""Floor 2, training: the reward (Eq. 3), curriculum (Alg. 1), REINFORCE steps (Eq. 5-6), the recipe config and a
run's plumbing. Imports the model floor (``timm_blockdrop.models``, ``timm_blockdrop.data``), never ``tools``."""
