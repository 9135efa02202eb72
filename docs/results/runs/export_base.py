"""The base ResNet of a trained BlockDrop model folder as a plain weight file, the ``pretrained_file`` from which a
curriculum run trains a new policy on that base (e.g. another policy network on a finetuned base):

    .venv/bin/python docs/results/runs/export_base.py MODEL_FOLDER OUT.safetensors
"""
import sys

from safetensors.torch import save_file

from timm_blockdrop.models.loading import load_model


def main(folder, out):
    model = load_model(checkpoint=folder, require='blockdrop')
    state = {k: v.contiguous() for k, v in model.base.state_dict().items()}
    save_file(state, out, metadata={'source': f'base of {folder}', 'format': 'pt'})
    print(f'saved {out}: {len(state)} tensors of {model._model_args["base_model"]}')


if __name__ == '__main__':
    main(*sys.argv[1:3])
