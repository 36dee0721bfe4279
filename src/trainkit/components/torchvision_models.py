"""Any torchvision.models classifier, built for the dataset: its input channels, image size and classes.

torchvision builds the architecture (and gives its ImageNet weights, from its cache); what is ours
is fitting it to a dataset it was not made for: a new head for the classes, the stem conv for the
channels and, for small images, a stem without its stride-2 and max-pool downsampling (the usual
CIFAR adaptation of an ImageNet net, which would otherwise shrink a 28x28 image to 1x1).
"""

from __future__ import annotations

import difflib
import warnings

import torch
from torch import nn

from trainkit.components.transfer import adapt_input_channels, blocks
from trainkit.errors import UserError, allowed

SMALL_IMAGE = 64  # below this side, stem="auto" drops the stem's downsampling


def classifier_names() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_classifier(in_channels: int, image_size: int, num_classes: int, norm=None, activation=None,
                           dropout: float = 0.0, name: str = "resnet18", stem: str = "auto") -> nn.Module:
    """torchvision's `name`, its head replaced for `num_classes` (after a dropout, if any) and its stem
    fitted to the images. The trainkit norm and activation groups do not apply: the architecture keeps
    its own layers. Pretrained weights (model.weights ...) are loaded by the run, after the init scheme."""
    import torchvision.models as tvm

    names = classifier_names()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        raise allowed("model.name", name, f"a torchvision.models classifier{f' (did you mean {close[0]}?)' if close else ''}: "
                      f"{', '.join(names)}")
    if stem not in ("auto", "keep", "small"):
        raise allowed("model.stem", stem, "auto, keep or small")
    kwargs = {}
    if name in ("inception_v3", "googlenet"):  # their ImageNet-only auxiliary heads are left out
        kwargs = {"aux_logits": False, "init_weights": False}
    if name.startswith("vit_"):  # a ViT is built for one image size (its position embeddings)
        kwargs["image_size"] = image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            model = tvm.get_model(name, weights=None, **kwargs)
        except (ValueError, AssertionError) as e:  # a ViT's image size its patches do not divide
            raise does_not_take(name, in_channels, image_size, e) from None
    replace_head(model, num_classes, dropout)
    fit_stem(model, in_channels, small=(stem == "small" or (stem == "auto" and image_size < SMALL_IMAGE)))
    check_forward(model, name, in_channels, image_size, num_classes)
    return model


def imagenet_state(name: str, weights: str) -> dict:
    """The state dict of one of torchvision's weights for `name`, from its cache (downloaded once)."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    member = str(weights).rpartition(".")[2]
    if member not in enum.__members__:
        raise allowed("model.weights", weights, f"one of {enum.__name__}'s members: {', '.join(enum.__members__)} "
                      f"(or null for random weights)")
    chosen = enum[member]
    try:
        return chosen.get_state_dict(progress=False, check_hash=True)
    except OSError as e:  # URLError, a failed download, an unreadable cache
        from torch.hub import get_dir

        raise UserError(f"model.weights={weights}: {chosen.url.rpartition('/')[2]} is not in torchvision's cache "
                        f"({get_dir()}/checkpoints) and could not be downloaded ({type(e).__name__}: {str(e)[:100]}); "
                        "download it once with internet, or give the file as model.weights_path") from None


def replace_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """The last Linear (or 1x1 conv, squeezenet) becomes a fresh one with `num_classes` outputs."""
    name = blocks(model)[-1].name
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, leaf)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)
        if dropout:
            new = nn.Sequential(nn.Dropout(dropout), new)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    else:
        raise UserError(f"model.name: the last layer ({name}, {type(old).__name__}) is not a Linear or Conv2d head")
    setattr(parent, leaf, new)


def fit_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    """The first conv takes `in_channels`; for small images it keeps full resolution (stride 1, and no
    max-pool before the next conv)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stem_name, stem = convs[0]
    if stem.in_channels != in_channels:
        new = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.dilation,
                        stem.groups if stem.groups == 1 else in_channels, stem.bias is not None)
        with torch.no_grad():
            new.weight.copy_(adapt_input_channels(stem.weight, in_channels))
            if stem.bias is not None:
                new.bias.copy_(stem.bias)
        set_submodule(model, stem_name, new)
        stem = new
    if not small:
        return
    stem.stride = (1, 1)
    second = convs[1][0] if len(convs) > 1 else None
    for name, module in model.named_modules():
        if name == second:
            break
        if isinstance(module, nn.MaxPool2d):
            set_submodule(model, name, nn.Identity())
            break


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def check_forward(model: nn.Module, name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    """One forward pass on a blank image, so an architecture that cannot take these images fails here."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise does_not_take(name, in_channels, image_size, e) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        raise allowed("model.name", name, f"a classifier whose output is one score per class; {name} gives "
                      f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")


def does_not_take(name: str, in_channels: int, image_size: int, error: Exception):
    first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    return allowed("model.name", name, f"an architecture that takes {in_channels}x{image_size}x{image_size} images; "
                   f"{name} fails on them ({first})")
