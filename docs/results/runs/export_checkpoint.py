"""A training checkpoint (accelerate save_state folder of recipes/curriculum.py or finetune.py) as a model/ folder
in timm's save_for_hf layout, for `blockdrop eval --checkpoint` while a run is not finished:

    .venv/bin/python docs/results/runs/export_checkpoint.py RUN_DIR/checkpoints/step_... RUN_DIR/config.yaml OUT_DIR

The model is built from the run's resolved config (the base ResNet, or init_from for finetuning) and then takes
every tensor of the checkpoint's model.safetensors (the step module's 'model.' prefix removed).
"""
import sys
from pathlib import Path

from safetensors.torch import load_file

from timm_blockdrop.train.build import build_model
from timm_blockdrop.train.checkpointing import save_model
from timm_blockdrop.train.config import load_config


def main(checkpoint, config_file, out):
    config = load_config(config_file)
    model = build_model(config)
    state = load_file(str(Path(checkpoint) / 'model.safetensors'))
    state = {k[len('model.'):]: v for k, v in state.items() if k.startswith('model.')}
    model.load_state_dict(state, strict=True)
    folder = save_model(model.eval(), Path(out))
    print(f'saved {folder}')


if __name__ == '__main__':
    main(*sys.argv[1:4])
