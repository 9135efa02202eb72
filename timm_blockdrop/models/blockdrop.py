"""BlockDropResNet: a timm ResNet whose residual blocks are kept or dropped per image by a policy network.

Paper Sec. 3: the policy network f_pn looks at the image once and outputs s = sigmoid(f_pn(x)) in [0,1]^K
(Eq. 2); the ResNet then runs only the blocks of the policy u (Eq. 1). At test time u is the greedy policy
(s >= threshold, 0.5 in the paper); in train mode ``forward`` samples u from the alpha-bounded s with a
straight-through gradient so the model trains end to end like any timm model. REINFORCE training
(recipes) uses ``policy_probs`` and ``forward_with_policy`` directly.

Every forward runs the model's own modules (routed in eval mode, ``routing.py``); nothing is cached. Fusion for
CPU inference is explicit and returns a frozen copy: ``model.fuse()`` (``fused.py``), which
``timm.utils.reparameterize_model`` also calls on a BlockDrop model held inside another module.

The base ResNet's blocks are one flat list of K blocks in order (``layer1.0`` ... ``layer4.2``); column k of
every (B, K) policy refers to block k, as do the FLOPs table and the plots.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import ResNet, generate_default_cfgs, is_model, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from ..errors import CheckpointError, UnsupportedModelError
from .checkpoints import build_with_clear_errors, check_state_dict_fits
from .flops import BlockFlops, block_flops_table, count_flops, frozen_eval
from .fused import FusedBlockDrop
from .routing import BlockKernels, Routing, keep_nonfinite, residual_stages, run_blocks
from .policies import check_alpha, check_threshold, greedy, straight_through
from .cifar_resnet import CifarResNet
from .policy_net import STEM_POLICIES, keep_probabilities, reads_stem
from .pretrained_cfgs import PAPER_ID, RELEASE_MODEL_ARGS, blockdrop_pretrained_cfgs

__all__ = ['BlockDropResNet', 'wrap', 'UnsupportedModelError', 'SUPPORTED_BASES']

SUPPORTED_BASES = (ResNet, CifarResNet)

# pretrained_cfg keys that locate the *base* model's weights: not carried over to a wrapped model
_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'tag', 'custom_load')
# base construction args recorded at the top level of a BlockDrop model's args instead of in base_kwargs
_TOP_LEVEL_ARGS = ('num_classes', 'in_chans', 'global_pool', 'drop_rate', 'drop_path_rate', 'pretrained_model_args')


def _check_supported(base: nn.Module) -> None:
    if isinstance(base, SUPPORTED_BASES):
        return
    arch = getattr(base, 'pretrained_cfg', {}).get('architecture') or '(no timm architecture)'
    raise UnsupportedModelError(
        f'BlockDrop can only wrap ResNet-class models with residual stages layer1..layerN: timm.models.ResNet '
        f'(resnet*, resnext*, seresnet*, seresnext*, wide_resnet*, ecaresnet*, resnet*d/t variants) and '
        f'timm_blockdrop CifarResNet (cifar_resnet*). Got {type(base).__module__}.{type(base).__name__} '
        f"('{arch}')."
    )


def _stem_width(base: nn.Module) -> int:
    """Channels of the base's stem output (the input of block 0)."""
    return base.bn1.num_features


def _create_policy(policy_model: str, num_blocks: int, in_chans: int, base: nn.Module) -> nn.Module:
    """The policy network f_pn with K outputs, refused here (not on the first forward) if it cannot be one.

    A head on the stem (``policy_stem_head``) is built for the base's stem width; any other policy sees the image.
    """
    if not isinstance(policy_model, str) or not is_model(policy_model):
        raise ValueError(f'unknown policy model {policy_model!r}: not a registered timm model (use policy_resnet8, '
                         f'policy_resnet10 or policy_stem_head, or another ResNet-class timm model)')
    on_stem = policy_model in STEM_POLICIES
    policy = timm.create_model(policy_model, num_classes=num_blocks,
                               in_chans=_stem_width(base) if on_stem else in_chans)
    if on_stem:
        return policy
    # the policy runs as a ResNet (stem, residual stages, head), in the model and in its fused copy
    if not isinstance(policy, SUPPORTED_BASES) or not residual_stages(policy):
        raise UnsupportedModelError(
            f"policy model '{policy_model}' is a {type(policy).__name__}: the policy network must be a ResNet-class "
            f'timm model (policy_resnet8, policy_resnet10, or any resnet* / cifar_resnet*)')
    if policy.num_classes != num_blocks:
        raise UnsupportedModelError(f"policy model '{policy_model}' gives {policy.num_classes} outputs, the policy "
                                    f'needs one per block: K = {num_blocks}')
    return policy


def _check_img_size(img_size) -> Tuple[int, int]:
    """(H, W) from an int or a pair of positive ints; a sentence otherwise."""
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    try:
        size = tuple(size)
    except TypeError:
        size = None
    if (size is None or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or min(size) < 1):
        raise ValueError(f'img_size must be a positive int or a pair (H, W) of positive ints, got {img_size!r}')
    return size


def _prefix_pattern(pattern: str, prefix: str) -> str:
    return rf'^{prefix}\.(?:' + pattern.replace('^', '') + ')'


class BlockDropResNet(nn.Module):
    """A ResNet gated block by block by a policy network (BlockDrop, Wu et al. CVPR 2018)."""

    def __init__(
            self,
            base_model: str = 'resnet101',
            base_kwargs: Optional[Dict[str, Any]] = None,
            policy_model: str = 'policy_resnet10',
            policy_img_size: Optional[int] = 112,
            threshold: float = 0.5,
            alpha: float = 0.8,
            num_blocks: Optional[int] = None,
            num_classes: Optional[int] = None,
            in_chans: int = 3,
            global_pool: Optional[str] = None,
            drop_rate: Optional[float] = None,
            drop_path_rate: Optional[float] = None,
            base: Optional[nn.Module] = None,
    ):
        """
        Args:
            base_model: timm name of the base ResNet (built untrained; weights come from the checkpoint).
            base_kwargs: extra construction arguments of the base (e.g. ``{'shortcut': 'B'}``).
            policy_model: timm name of the policy network (``policy_resnet8`` / ``policy_resnet10`` on the image,
                ``policy_stem_head`` on the base's stem features).
            policy_img_size: side the image is average-pooled to for the policy (None: as given; must be None for
                a policy on the stem).
            threshold: greedy policy at test time keeps block k where s_k >= threshold.
            alpha: exploration bound of sampled policies, s' = alpha s + (1 - alpha)(1 - s).
            num_blocks: K, checked against the base when given (it is recorded in saved configs).
            base: an already built base model to wrap (see ``wrap``), instead of ``base_model``.
        """
        super().__init__()
        self.policy_img_size = policy_img_size
        self.alpha = check_alpha(alpha)
        self._threshold = check_threshold(threshold)
        self.grad_checkpointing = False
        self._flops_cache: Dict[Tuple[int, int], Tuple[BlockFlops, int]] = {}
        if base is None:
            if not is_model(base_model):
                raise ValueError(f"unknown base model '{base_model}': not a registered timm model")
            kwargs = dict(base_kwargs or {})
            for key, value in dict(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool,
                                   drop_rate=drop_rate, drop_path_rate=drop_path_rate).items():
                if value is not None:
                    kwargs[key] = value
            base = timm.create_model(base_model, **kwargs)
            _check_supported(base)
        else:
            _check_supported(base)
            if num_classes is not None and num_classes != base.num_classes:
                base.reset_classifier(num_classes)
        self.base = base
        self._refresh_blocks()
        if num_blocks is not None and num_blocks != self.num_blocks:
            raise ValueError(f"num_blocks={num_blocks} does not match base '{base_model}', which has K = "
                             f'{self.num_blocks} residual blocks')
        self.in_chans = in_chans
        self.policy = _create_policy(policy_model, self.num_blocks, in_chans, self.base)
        if self.policy_reads_stem and policy_img_size is not None:
            raise ValueError(f"policy_img_size={policy_img_size} resizes the image for an image policy, but "
                             f"'{policy_model}' reads the base's stem features: leave policy_img_size None")
        self.num_classes = self.base.num_classes
        self.num_features = self.base.num_features
        self.head_hidden_size = self.base.head_hidden_size
        self.feature_info = [dict(fi, module=f"base.{fi['module']}") for fi in self.base.feature_info]
        self._model_args = dict(
            base_model=base_model, base_kwargs=dict(base_kwargs or {}), policy_model=policy_model,
            policy_img_size=policy_img_size, threshold=self._threshold, alpha=self.alpha, num_blocks=self.num_blocks,
        )

    # ---- structure ----

    def _refresh_blocks(self) -> None:
        stages = residual_stages(self.base)
        self.stage_sizes = tuple(len(s) for s in stages)
        self._stage_blocks = [list(s) for s in stages]
        if not hasattr(self, '_num_blocks'):
            if sum(self.stage_sizes) == 0:
                raise UnsupportedModelError(f'{type(self.base).__name__} has no residual blocks to gate')
            self._num_blocks = sum(self.stage_sizes)

    @property
    def policy_reads_stem(self) -> bool:
        """Whether the policy network reads the base's stem output (``policy_stem_head``) rather than the image."""
        return reads_stem(self.policy)

    @property
    def num_blocks(self) -> int:
        """K, the number of residual blocks the policy decides on."""
        return self._num_blocks

    @property
    def blocks(self) -> List[nn.Module]:
        """The K residual blocks, in order."""
        return [b for stage in self._stage_blocks for b in stage]

    @property
    def global_pool(self) -> nn.Module:
        return self.base.global_pool

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_threshold(value)
        self._model_args['threshold'] = self._threshold

    # ---- timm model interface ----

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        matcher = {k: _prefix_pattern(v, 'base') for k, v in self.base.group_matcher(coarse).items()}
        matcher['policy'] = r'^policy\.'
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'base.' + self.base.get_classifier(name_only=True) if name_only else self.base.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.base.reset_classifier(num_classes, global_pool)
        self.num_classes = self.base.num_classes
        self.head_hidden_size = self.base.head_hidden_size
        self._flops_cache.clear()

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        take_indices = self.base.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        self._refresh_blocks()
        self.num_classes = self.base.num_classes
        self.num_features = self.base.num_features
        self.head_hidden_size = self.base.head_hidden_size
        self._flops_cache.clear()
        return take_indices

    @torch.no_grad()
    def fuse(self) -> FusedBlockDrop:
        """A frozen, fused inference copy of this model as it is now (``fused.py``); this model is left unchanged.

        timm's reparameterization protocol: ``timm.utils.reparameterize_model`` replaces a BlockDrop model held in
        another module by ``fuse()``'s result. Fuse again after editing, training or moving the model.
        """
        return FusedBlockDrop(self)

    def kernels(self) -> List[BlockKernels]:
        """The K blocks as ``routing.BlockKernels`` (their own modules), in order."""
        return [BlockKernels(b) for b in self.blocks]

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Refuse anything but a (B, C, H, W) image batch with a sentence, before torch fails deep inside."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'the input must be a torch.Tensor of shape (B, {self.in_chans}, H, W), got '
                            f'{type(x).__name__}')
        if x.dim() != 4:
            hint = ' (one image? add the batch dimension: x.unsqueeze(0))' if x.dim() == 3 else ''
            raise ValueError(f'the input must be a batch of images of shape (B, {self.in_chans}, H, W), got shape '
                             f'{tuple(x.shape)}{hint}')
        if x.shape[1] != self.in_chans:
            raise ValueError(f'the input has {x.shape[1]} channels, the model expects {self.in_chans} '
                             f'(shape (B, {self.in_chans}, H, W)), got shape {tuple(x.shape)}')
        return x

    # ---- policy ----

    def policy_probs(self, x: torch.Tensor, stem: Optional[torch.Tensor] = None) -> torch.Tensor:
        """s = sigmoid(f_pn(x)), the (B, K) keep probabilities (Eq. 2); f_pn sees the image, or the stem's output
        for a policy on the stem (``stem``: that output, when the caller has computed it already; run again in
        train mode, the stem's BatchNorm statistics would move twice)."""
        x = self.check_input(x)
        if self.policy_reads_stem:
            return keep_probabilities(self.policy, self.forward_stem(x) if stem is None else stem, None)
        return keep_probabilities(self.policy, x, self.policy_img_size)

    def default_policy(self, x: torch.Tensor) -> torch.Tensor:
        """Train mode: a sampled policy with straight-through gradient; eval: greedy at ``threshold``."""
        probs = self.policy_probs(x)
        if self.training:
            return straight_through(probs, self.alpha)
        return greedy(probs, self.threshold)

    def check_keep(self, keep: torch.Tensor, batch: Optional[int] = None) -> torch.Tensor:
        """Validate a (B, K) 0/1 policy and return it."""
        if not isinstance(keep, torch.Tensor):
            raise TypeError(f'keep must be a torch.Tensor of shape (B, K={self.num_blocks}), got {type(keep).__name__}')
        if keep.dim() != 2 or keep.shape[1] != self.num_blocks or (batch is not None and keep.shape[0] != batch):
            want = f'({batch if batch is not None else "B"}, {self.num_blocks})'
            raise ValueError(f'keep must have shape (batch, K) = {want}, got {tuple(keep.shape)}')
        if keep.dtype == torch.bool:
            return keep
        if keep.dtype.is_complex or not (keep.is_floating_point() or keep.dtype in (
                torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise TypeError(f'keep must be a bool, integer or floating tensor of 0/1, got dtype {keep.dtype}')
        if not bool(((keep == 0) | (keep == 1)).all()):
            raise ValueError('keep must hold only 0 and 1 (drop / keep)')
        return keep

    # ---- gated execution ----

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        return b.act1(b.bn1(b.conv1(x)))

    def _maxpool(self, x: torch.Tensor) -> torch.Tensor:
        pool = getattr(self.base, 'maxpool', None)
        return x if pool is None else pool(x)

    def _use_routing(self, keep: torch.Tensor, mode: Optional[str]) -> bool:
        if mode is None or mode == 'auto':
            return not self.training and not keep.requires_grad
        if mode not in ('masked', 'routed'):
            raise ValueError(f"mode must be 'auto', 'masked' or 'routed', got {mode!r}")
        return mode == 'routed'

    def _gated(
            self,
            x: torch.Tensor,
            keep: torch.Tensor,
            mode: Optional[str] = None,
            take_indices: Optional[List[int]] = None,
            max_index: Optional[int] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem, then the K blocks under ``keep``; collects stage outputs listed in ``take_indices``."""
        routing = Routing(keep, device=x.device) if self._use_routing(keep, mode) else None
        intermediates = []
        kernels = self.kernels()
        images = x
        x = self._stem(x)
        if take_indices is not None and 0 in take_indices:
            intermediates.append(x)
        x = self._maxpool(x)
        start = 0
        sizes = self.stage_sizes if max_index is None else self.stage_sizes[:max_index]
        for feat_idx, size in enumerate(sizes, start=1):
            # the stem's output is ours to route into in place, unless a stage output is handed out
            x = run_blocks(kernels, x, keep, routing, start, start + size, self.grad_checkpointing,
                           owned=take_indices is None)
            start += size
            if take_indices is not None and feat_idx in take_indices:
                intermediates.append(x)
        return keep_nonfinite(images, x), intermediates

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The base's stem (conv, norm, act, pool): the input of block 0."""
        return self._maxpool(self._stem(self.check_input(x)))

    def forward_blocks(
            self, x: torch.Tensor, keep: torch.Tensor, start: int = 0, end: Optional[int] = None,
            mode: Optional[str] = None,
    ) -> torch.Tensor:
        """Run blocks ``start .. end-1`` on ``x`` (the output of block ``start-1``, or of ``forward_stem``).

        ``keep`` is the whole (B, K) policy; only its columns ``start .. end-1`` are read. Lets training share
        the always-on prefix of the curriculum between the sampled and the greedy pass.
        """
        end = self.num_blocks if end is None else end
        if not 0 <= start <= end <= self.num_blocks:
            raise ValueError(f'blocks {start}..{end} are outside 0..{self.num_blocks}')
        keep = self.check_keep(keep, x.shape[0])
        routing = Routing(keep, device=x.device) if self._use_routing(keep, mode) else None
        return run_blocks(self.kernels(), x, keep, routing, start, end, self.grad_checkpointing)

    def forward_features_with_policy(self, x: torch.Tensor, keep: torch.Tensor, mode: Optional[str] = None):
        return self._gated(self.check_input(x), self.check_keep(keep, x.shape[0]), mode)[0]

    def forward_with_policy(self, x: torch.Tensor, keep: torch.Tensor, mode: Optional[str] = None) -> torch.Tensor:
        """Logits of the ResNet run with an explicit (B, K) 0/1 policy ``keep`` (no policy network).

        ``mode``: 'masked' (every block on the whole batch, mixed by keep; differentiable), 'routed' (each
        block only on the rows that keep it) or None/'auto' (routed in eval mode, masked in train mode). In
        """
        return self.forward_head(self.forward_features_with_policy(x, keep, mode))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._gated(x, self.default_policy(x))[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.base.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            keep: Optional[torch.Tensor] = None,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stem and stage outputs of the gated network (policy from the network unless ``keep`` is given)."""
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.stage_sizes) + 1, indices)
        self.check_input(x)
        keep = self.default_policy(x) if keep is None else self.check_keep(keep, x.shape[0])
        x, intermediates = self._gated(x, keep, None, take_indices, max_index if stop_early else None)
        return intermediates if intermediates_only else (x, intermediates)

    # ---- FLOPs ----

    def flops_table(self, img_size: Optional[Tuple[int, int]] = None) -> Tuple[BlockFlops, int]:
        """(per-part FLOPs of the base, FLOPs of the policy network) at ``img_size`` (default: the cfg's)."""
        if img_size is None:
            img_size = tuple(self.pretrained_cfg['input_size'][-2:])
        img_size = _check_img_size(img_size)
        if img_size not in self._flops_cache:
            param = next(self.parameters())
            x = torch.zeros(1, self.in_chans, *img_size, device=param.device, dtype=param.dtype)
            with frozen_eval(self):
                table = block_flops_table(
                    lambda t: self._maxpool(self._stem(t)), self.blocks, self.forward_head, x)
                # a policy on the stem costs its head only: the stem is the base's, counted in the table
                policy_flops, _ = (count_flops(self.policy, self.forward_stem(x)) if self.policy_reads_stem
                                   else count_flops(self.policy_probs, x))
            self._flops_cache[img_size] = (table, policy_flops)
        return self._flops_cache[img_size]

    def flops(
            self,
            keep: torch.Tensor,
            include_policy: bool = True,
            img_size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """Per-image FLOPs (float64, CPU) for each row of ``keep``; the policy net counts when it runs."""
        table, policy_flops = self.flops_table(img_size)
        return table.cost(self.check_keep(keep)) + (policy_flops if include_policy else 0)


# ---- building, wrapping, loading ----

def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: BlockDropResNet) -> Dict[str, torch.Tensor]:
    """Check that a BlockDrop checkpoint fits the model; name what does not."""
    cfg = getattr(model, 'pretrained_cfg', {})
    source = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or 'state_dict'
    if not any(k.startswith(('base.', 'policy.')) for k in state_dict):
        raise CheckpointError(
            f"checkpoint {source} holds a plain ResNet, not a BlockDrop model (no 'base.'/'policy.' keys): load it "
            f"with its base architecture (e.g. timm.create_model('{model._model_args['base_model']}', "
            f"pretrained=True, pretrained_cfg_overlay=dict(file=...))) and call timm_blockdrop.wrap() on it"
        )
    head_changes = cfg.get('num_classes') not in (None, model.num_classes)
    skip = (model.get_classifier(name_only=True) + '.',) if head_changes else ()
    check_state_dict_fits(state_dict, model, source, skip_prefixes=skip)
    return state_dict


def _create_blockdrop(variant: str, pretrained: bool = False, defaults: Optional[Dict[str, Any]] = None,
                      **kwargs) -> BlockDropResNet:
    """The entry's ``defaults``, then the args a pretrained tag's weights were released with (when they are what
    loads: not a local-dir:/hf-hub: config, which brings its own args, nor a weight file of the caller's), then the
    caller's."""
    cfg = kwargs.get('pretrained_cfg')
    release = {}
    own_file = (kwargs.get('pretrained_cfg_overlay') or {}).get('file')
    if pretrained and not isinstance(cfg, dict) and not own_file:
        tag = resolve_pretrained_cfg(variant, cfg, kwargs.get('pretrained_cfg_overlay')).tag
        release = RELEASE_MODEL_ARGS.get(f'{variant}.{tag}', {})
    kwargs = {**(defaults or {}), **release, **kwargs}
    # features: the stem and every stage (4 taps for CIFAR ResNets, 5 for ImageNet ones), gated
    cifar = 'cifar' in kwargs.get('base_model', variant)
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3) if cifar else (0, 1, 2, 3, 4))
    return build_with_clear_errors(
        BlockDropResNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=out_indices),
        **kwargs,
    )


def _entry_for(arch: str) -> str:
    """The timm entry a wrapped ``arch`` is saved under: ``blockdrop_<arch>`` where one is registered, else the
    generic ``blockdrop`` entry (the base is then named by ``base_model`` in config.json's model_args)."""
    name = f'blockdrop_{arch}'
    return name if is_model(name) else GENERIC_ENTRY


def wrap(
        base: nn.Module,
        policy_model: Optional[str] = None,
        policy_img_size: Union[int, None, str] = 'auto',
        threshold: float = 0.5,
        alpha: float = 0.8,
) -> BlockDropResNet:
    """Wrap a ResNet-class timm model (weights kept as they are) with a fresh policy network.

    The policy defaults follow the paper: ResNet-8 on the full image for inputs up to 64 px (CIFAR), else
    ResNet-10 on the image average-pooled to 112 px. The result saves with ``timm.models.save_for_hf`` and
    loads back with ``timm.create_model('local-dir:...', pretrained=True)``; its ``config.json`` names the
    architecture ``blockdrop_<base>`` where that entry exists (``blockdrop_resnet50``), else ``blockdrop`` with the
    base in ``model_args.base_model`` (``seresnext26d_32x4d``).
    """
    _check_supported(base)
    base_cfg = dict(getattr(base, 'pretrained_cfg', None) or {})
    arch = base_cfg.get('architecture')
    if not arch:
        raise ValueError('wrap() needs a base built by timm.create_model (its pretrained_cfg names the '
                         'architecture, so the wrapped model can be saved and rebuilt)')
    small_input = base_cfg.get('input_size', (3, 224, 224))[-1] <= 64
    if policy_model is None:
        policy_model = 'policy_resnet8' if small_input else 'policy_resnet10'
    if policy_img_size == 'auto':
        policy_img_size = None if small_input or policy_model in STEM_POLICIES else 112
    base_kwargs = {k: v for k, v in getattr(base, '_model_args', {}).items() if k not in _TOP_LEVEL_ARGS}

    entry = _entry_for(arch)
    cfg = {k: v for k, v in base_cfg.items() if k not in _SOURCE_KEYS}
    first_conv = base_cfg.get('first_conv') or 'conv1'
    first_conv = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
    policy_first_conv = () if policy_model in STEM_POLICIES else ('policy.conv1',)
    cfg.update(
        architecture=entry,
        first_conv=tuple(f'base.{c}' for c in first_conv) + policy_first_conv,
        classifier='base.' + base.get_classifier(name_only=True),
        num_classes=base.num_classes,
        paper_ids=PAPER_ID,
    )
    return build_with_clear_errors(
        BlockDropResNet, entry, False, pretrained_cfg=cfg,
        feature_cfg=dict(feature_cls='getter'),
        base=base, base_model=arch, base_kwargs=base_kwargs, policy_model=policy_model,
        policy_img_size=policy_img_size, threshold=threshold, alpha=alpha, in_chans=getattr(base, 'in_chans', 3),
    )


GENERIC_ENTRY = 'blockdrop'

default_cfgs = generate_default_cfgs({
    **blockdrop_pretrained_cfgs(),
    # what wrap() saves a base with no blockdrop_* entry under; its own config.json replaces these values
    GENERIC_ENTRY: dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation='bilinear', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv=('base.conv1', 'policy.conv1'), classifier='base.fc', paper_ids=PAPER_ID),
})


def _imagenet_args(depth: int) -> Dict[str, Any]:
    return dict(base_model=f'resnet{depth}', policy_model='policy_resnet10', policy_img_size=112)


def _cifar_args(depth: int) -> Dict[str, Any]:
    return dict(base_model=f'cifar_resnet{depth}', policy_model='policy_resnet8', policy_img_size=None)


@register_model
def blockdrop(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on any supported base named by ``base_model`` (``wrap()`` saves bases with no entry of their own
    under it), e.g. ``timm.create_model('blockdrop', base_model='seresnext26d_32x4d')``."""
    if not kwargs.get('base_model'):
        raise ValueError("the 'blockdrop' entry needs base_model=<a ResNet-class timm model>, e.g. "
                         "timm.create_model('blockdrop', base_model='resnet50d')")
    return _create_blockdrop(GENERIC_ENTRY, pretrained, **kwargs)


@register_model
def blockdrop_resnet18(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on timm resnet18 (K = 8), ResNet-10 policy at 112 px."""
    return _create_blockdrop('blockdrop_resnet18', pretrained, _imagenet_args(18), **kwargs)


@register_model
def blockdrop_resnet34(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on timm resnet34 (K = 16), ResNet-10 policy at 112 px."""
    return _create_blockdrop('blockdrop_resnet34', pretrained, _imagenet_args(34), **kwargs)


@register_model
def blockdrop_resnet50(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on timm resnet50 (K = 16), ResNet-10 policy at 112 px."""
    return _create_blockdrop('blockdrop_resnet50', pretrained, _imagenet_args(50), **kwargs)


@register_model
def blockdrop_resnet101(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on timm resnet101 (K = 33), ResNet-10 policy at 112 px: the paper's ImageNet model."""
    return _create_blockdrop('blockdrop_resnet101', pretrained, _imagenet_args(101), **kwargs)


@register_model
def blockdrop_resnet152(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on timm resnet152 (K = 50), ResNet-10 policy at 112 px."""
    return _create_blockdrop('blockdrop_resnet152', pretrained, _imagenet_args(152), **kwargs)


@register_model
def blockdrop_cifar_resnet20(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on CIFAR ResNet-20 (K = 9), ResNet-8 policy."""
    return _create_blockdrop('blockdrop_cifar_resnet20', pretrained, _cifar_args(20), **kwargs)


@register_model
def blockdrop_cifar_resnet32(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on CIFAR ResNet-32 (K = 15), ResNet-8 policy: the paper's Table 1 model."""
    return _create_blockdrop('blockdrop_cifar_resnet32', pretrained, _cifar_args(32), **kwargs)


@register_model
def blockdrop_cifar_resnet44(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on CIFAR ResNet-44 (K = 21), ResNet-8 policy."""
    return _create_blockdrop('blockdrop_cifar_resnet44', pretrained, _cifar_args(44), **kwargs)


@register_model
def blockdrop_cifar_resnet56(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on CIFAR ResNet-56 (K = 27), ResNet-8 policy."""
    return _create_blockdrop('blockdrop_cifar_resnet56', pretrained, _cifar_args(56), **kwargs)


@register_model
def blockdrop_cifar_resnet110(pretrained: bool = False, **kwargs) -> BlockDropResNet:
    """BlockDrop on CIFAR ResNet-110 (K = 54), ResNet-8 policy: the paper's Table 1/3 model."""
    return _create_blockdrop('blockdrop_cifar_resnet110', pretrained, _cifar_args(110), **kwargs)
