"""Build a network from the lecture's grammar, and describe a network back in it.

``parse("[CONV3-64-RELU]x2,POOL2,FC-10,SOFTMAX", input_shape=(3, 32, 32))`` returns a
:class:`GrammarNet`: a ``features`` and a ``classifier`` ``nn.Sequential`` (the flatten before the
first FC is implicit, as in torchvision), with lecture-style layer names (``conv1``, ``relu1``,
``pool1`` ... ``fc6``; or VGG's ``conv5_3``). ``describe(model)`` gives the spec back, so
``parse(describe(m), input_shape=m.input_shape)`` rebuilds the same architecture.

SOFTMAX marks that the class scores are read as probabilities. ``forward`` returns the scores
*before* the softmax (S_c in the lecture), which is what training with cross-entropy, saliency and
class-model visualization need; ``predict_proba`` applies the softmax.
"""
from __future__ import annotations

import operator
from collections import OrderedDict

import torch
from torch import nn

from ..errors import InputError, ShapeError, SpecError
from .spec import Token, caret, spec_error, tokenize

DEFAULT_FILTERS = 32
DEFAULT_UNITS = 128
MAX_PARAMS = 2_000_000_000
LRN_ARGS = dict(alpha=1e-4, beta=0.75, k=2.0)  # Krizhevsky et al. 2012, section 3.3
SPATIAL = {"conv", "pool", "avgpool", "gap", "lrn"}
NAMINGS = ("caffe", "vgg")
LAYOUTS = ("named", "torchvision")


class GrammarNet(nn.Module):
    """A CNN built from a grammar spec: ``features`` (conv part), then ``classifier`` (FC part)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, *, input_shape: tuple[int, int, int],
                 softmax: bool, lecture_names: dict[str, str], naming: str, layout: str):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.input_shape = tuple(input_shape)
        self.softmax = softmax
        self.lecture_names = dict(lecture_names)  # lecture name -> module path, in forward order
        self.naming = naming
        self.layout = layout

    @property
    def spec(self) -> str:
        return describe(self)

    @property
    def num_classes(self) -> int | None:
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.classifier) and tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise ShapeError(f"this network expects input of shape (N, {c}, {h}, {w}); got {tuple(x.shape)}")
        x = self.features(x)  # (N, C, H, W)
        if len(self.classifier):
            x = torch.flatten(x, 1)  # (N, C*H*W)
            x = self.classifier(x)
        elif x.dim() == 4 and x.shape[-2:] == (1, 1):
            x = torch.flatten(x, 1)  # fully convolutional net ending in 1x1 maps: (N, C)
        return x

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=1)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, softmax={self.softmax}"


def parse(spec: str, input_shape: tuple[int, int, int] = (3, 224, 224), *, num_classes: int = 10,
          repeats: dict[str, int] | None = None, naming: str = "caffe", layout: str = "named",
          filters: int = DEFAULT_FILTERS, units: int = DEFAULT_UNITS) -> GrammarNet:
    """Build the network a grammar spec describes (see ``convlens.arch.spec`` for the grammar).

    ``input_shape`` is (C, H, W); ``num_classes`` sizes a final ``FC`` written without a width;
    ``repeats`` gives the letters of ``[...]xN`` (default N=2, M=1); ``filters``/``units`` size a
    bare ``CONV``/``FC``. ``naming`` is ``"caffe"`` (conv1, relu1, pool1, fc6) or ``"vgg"``
    (conv1_1, conv1_2, pool1, fc6). ``layout`` is ``"named"`` (module paths ``features.conv1``) or
    ``"torchvision"`` (``features.0``, ``classifier.6``: torchvision's state_dict keys).
    """
    input_shape = check_input_shape(input_shape)
    for name, value in (("num_classes", num_classes), ("filters", filters), ("units", units)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive int; got {value!r}")
    if naming not in NAMINGS:
        raise InputError(f"naming must be one of {NAMINGS}; got {naming!r}")
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    tokens = tokenize(spec, repeats)
    return _Builder(spec, tokens, input_shape, num_classes, filters, units, naming, layout).build()


def check_input_shape(shape, name: str = "input_shape") -> tuple[int, int, int]:
    """``shape`` as a (C, H, W) tuple of positive ints, or InputError naming ``name``."""
    try:  # operator.index accepts ints of any kind (numpy, torch.Size) and refuses floats
        dims = tuple(operator.index(d) for d in shape if not isinstance(d, bool))
        ok = len(dims) == 3 == len(tuple(shape)) and min(dims) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"{name} must be three positive ints (C, H, W) such as (3, 224, 224); got {shape!r}")
    return dims


def _hwc(shape: tuple[int, ...]) -> str:
    """(C, H, W) -> '224x224x3' as the lecture writes it; (F,) -> '1x1xF'."""
    if len(shape) == 3:
        return f"{shape[1]}x{shape[2]}x{shape[0]}"
    return f"1x1x{shape[0]}"


def _pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Output length of PyTorch's max/avg pooling (including its ceil-mode rule)."""
    span = size + 2 * p - k
    if span < 0:
        return 0
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


class _Builder:
    def __init__(self, spec, tokens, input_shape, num_classes, filters, units, naming, layout):
        self.spec, self.tokens = spec, tokens
        self.input_shape, self.num_classes = input_shape, num_classes
        self.filters, self.units, self.naming, self.layout = filters, units, naming, layout
        self.names: list[str] = []
        self.taken: set[str] = set()
        self.n_params = 0
        self.stage = 0      # caffe: number of conv/fc layers so far; vgg: block index
        self.sub = 0        # vgg: conv index inside the block
        self.pools = 0

    def fail(self, tok: Token, message: str) -> SpecError:
        return spec_error(self.spec, tok.start, tok.end, message)

    def build(self) -> GrammarNet:
        toks = self.tokens
        first_fc = next((i for i, t in enumerate(toks) if t.kind == "fc"), len(toks))
        for i, t in enumerate(toks):
            if t.kind == "softmax" and i != len(toks) - 1:
                raise self.fail(t, "SOFTMAX must be the last layer")
            if i > first_fc and t.kind in SPATIAL:
                raise self.fail(t, f"{t.kind.upper()} after the first FC: convolution, pooling and normalization "
                                   "must come before the fully connected layers")
        softmax = bool(toks) and toks[-1].kind == "softmax"
        body = toks[:-1] if softmax else toks
        if not body:
            raise self.fail(toks[-1], "expected at least one layer besides SOFTMAX")
        # Dropouts right before the first FC belong to the classifier (torchvision's AlexNet layout).
        split = first_fc
        while split > 0 and split <= len(body) and body[split - 1].kind == "dropout":
            split -= 1
        split = min(split, len(body))
        last_fc = max((i for i, t in enumerate(body) if t.kind == "fc"), default=-1)

        shape: tuple[int, ...] = self.input_shape
        features, classifier = [], []
        for i, tok in enumerate(body):
            if i == split and len(shape) == 3:
                shape = (shape[0] * shape[1] * shape[2],)  # implicit flatten
            module, shape = self.layer(tok, shape, is_last_fc=(i == last_fc))
            (features if i < split else classifier).append((self.name(tok), module))
        return self.assemble(features, classifier, softmax)

    def assemble(self, features, classifier, softmax) -> GrammarNet:
        lecture = {}
        if self.layout == "torchvision":
            feats = nn.Sequential(*[m for _, m in features])
            cls = nn.Sequential(*[m for _, m in classifier])
            for part, items in (("features", features), ("classifier", classifier)):
                for idx, (name, _) in enumerate(items):
                    lecture[name] = f"{part}.{idx}"
        else:
            feats = nn.Sequential(OrderedDict(features))
            cls = nn.Sequential(OrderedDict(classifier))
            for part, items in (("features", features), ("classifier", classifier)):
                for name, _ in items:
                    lecture[name] = f"{part}.{name}"
        return GrammarNet(feats, cls, input_shape=self.input_shape, softmax=softmax, lecture_names=lecture,
                          naming=self.naming, layout=self.layout)

    # -- one layer ---------------------------------------------------------------------------------
    def layer(self, tok: Token, shape: tuple[int, ...], is_last_fc: bool):
        a, kind = tok.args, tok.kind
        if kind == "conv":
            c, h, w = shape
            k, n = a.get("kernel", 3), a.get("filters", self.filters)
            s, g = a.get("stride", 1), a.get("groups", 1)
            p = a.get("padding", (k - 1) // 2)
            self.positive(tok, kernel=k, filters=n, stride=s, groups=g)
            if c % g or n % g:
                raise self.fail(tok, f"groups={g} must divide both the {c} input channels and the {n} filters")
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            self.fits(tok, shape, (n, oh, ow), f"kernel {k} with padding {p}")
            self.count(tok, n * (c // g) * k * k + n)
            return nn.Conv2d(c, n, k, stride=s, padding=p, groups=g), (n, oh, ow)
        if kind in ("pool", "avgpool"):
            c, h, w = shape
            k = a.get("kernel", 2)
            s, p, ceil = a.get("stride", k), a.get("padding", 0), a.get("ceil", False)
            self.positive(tok, kernel=k, stride=s)
            if p > k // 2:
                raise self.fail(tok, f"pool padding {p} must be at most half the kernel size {k}")
            oh, ow = _pool_out(h, k, s, p, ceil), _pool_out(w, k, s, p, ceil)
            self.fits(tok, shape, (c, oh, ow), f"a {k}x{k} window")
            cls = nn.MaxPool2d if kind == "pool" else nn.AvgPool2d
            return cls(k, stride=s, padding=p, ceil_mode=ceil), (c, oh, ow)
        if kind == "gap":
            return nn.AdaptiveAvgPool2d(1), (shape[0], 1, 1)
        if kind == "lrn":
            size = a.get("size", 5)
            self.positive(tok, size=size)
            return nn.LocalResponseNorm(size, **LRN_ARGS), shape
        if kind == "bn":
            self.count(tok, 2 * shape[0])
            return (nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])), shape
        if kind == "dropout":
            rate = a.get("rate", 0.5)
            if not 0.0 <= rate < 1.0:
                raise self.fail(tok, f"a dropout rate must be in [0, 1); got {rate}")
            return nn.Dropout(rate), shape
        if kind == "fc":
            n = a.get("units", self.num_classes if is_last_fc else self.units)
            self.positive(tok, units=n)
            self.count(tok, shape[0] * n + n)
            return nn.Linear(shape[0], n), (n,)
        return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[kind](), shape

    def positive(self, tok: Token, **values: int) -> None:
        for name, v in values.items():
            if v < 1:
                raise self.fail(tok, f"{tok.kind.upper()} {name} must be at least 1; got {v}")

    def fits(self, tok: Token, before: tuple, after: tuple, what: str) -> None:
        if after[1] < 1 or after[2] < 1:
            name = self.peek_name(tok)
            raise ShapeError(
                f"{name} ({self.spec[tok.start:tok.end]}) cannot apply to a {_hwc(before)} input: {what} would give "
                f"a {after[1]}x{after[2]} output; use a larger input_shape or fewer downsampling layers\n"
                f"{caret(self.spec, tok.start, tok.end)}")

    def count(self, tok: Token, n: int) -> None:
        self.n_params += n
        if self.n_params > MAX_PARAMS:
            raise self.fail(tok, f"the network would have more than {MAX_PARAMS:,} parameters by this layer")

    # -- lecture-style names -------------------------------------------------------------------------
    _PREFIX = {"pool": "pool", "avgpool": "pool", "gap": "gap", "lrn": "norm", "bn": "bn", "relu": "relu",
               "tanh": "tanh", "sigmoid": "sigmoid", "dropout": "drop"}

    def peek_name(self, tok: Token) -> str:
        saved = (self.stage, self.sub, self.pools, set(self.taken))
        name = self.name(tok)
        self.stage, self.sub, self.pools, self.taken = saved
        return name

    def name(self, tok: Token) -> str:
        kind = tok.kind
        if self.naming == "vgg":
            if kind == "conv":
                self.sub += 1
                base = f"conv{self.pools + 1}_{self.sub}"
            elif kind == "fc":
                self.stage = max(self.stage, self.pools) + 1
                self.sub = 0
                base = f"fc{self.stage}"
            elif kind in ("pool", "avgpool"):
                self.pools += 1
                self.stage = self.pools
                self.sub = 0
                base = f"pool{self.pools}"
            else:
                suffix = f"{self.pools + 1}_{self.sub}" if self.sub else f"{self.stage}"
                base = f"{self._PREFIX[kind]}{suffix}"
        else:
            if kind in ("conv", "fc"):
                self.stage += 1
                base = f"{kind}{self.stage}"
            else:
                base = f"{self._PREFIX[kind]}{self.stage}"
        name, extra = base, 1
        while name in self.taken:
            extra += 1
            name = f"{base}{chr(ord('a') + extra - 1)}" if extra <= 26 else f"{base}_{extra}"
        self.taken.add(name)
        return name


# -- describe ----------------------------------------------------------------------------------------
def describe(model: nn.Module) -> str:
    """The grammar spec of a model built by ``parse`` (or of an ``nn.Sequential`` of such layers)."""
    if isinstance(model, GrammarNet):
        modules = list(model.features) + list(model.classifier)
        softmax = model.softmax
    elif isinstance(model, nn.Sequential):
        modules, softmax = list(model), False
        if modules and isinstance(modules[-1], nn.Softmax):
            modules, softmax = modules[:-1], True
    else:
        raise InputError(f"describe needs a model built by convlens.parse or an nn.Sequential; got {type(model).__name__}")
    words = [w for w in (_word(m, i) for i, m in enumerate(modules)) if w]
    if softmax:
        words.append("SOFTMAX")
    return ",".join(words)


def _word(m: nn.Module, index: int) -> str | None:
    if isinstance(m, nn.Conv2d):
        k, s, p, d = m.kernel_size[0], m.stride[0], m.padding, m.dilation
        square = m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
        if not square or isinstance(p, str) or p[0] != p[1] or d != (1, 1) or m.bias is None or m.padding_mode != "zeros":
            raise _undescribable(m, index, "a square kernel and stride, equal zero padding, no dilation and a bias")
        word = f"CONV{k}-{m.out_channels}" + (f"/{s}" if s != 1 else "")
        word += f"p{p[0]}" if p[0] != (k - 1) // 2 else ""
        return word + (f"g{m.groups}" if m.groups != 1 else "")
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (_single(v, m, index) for v in (m.kernel_size, m.stride, m.padding))
        if isinstance(m, nn.MaxPool2d) and _single(m.dilation, m, index) != 1:
            raise _undescribable(m, index, "no dilation")
        if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override):
            raise _undescribable(m, index, "count_include_pad=True and no divisor_override")
        word = ("POOL" if isinstance(m, nn.MaxPool2d) else "AVGPOOL") + f"{k}" + (f"/{s}" if s != k else "")
        return word + (f"p{p}" if p else "") + ("c" if m.ceil_mode else "")
    if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        return "GAP"
    if isinstance(m, nn.LocalResponseNorm):
        if (m.alpha, m.beta, m.k) != (LRN_ARGS["alpha"], LRN_ARGS["beta"], LRN_ARGS["k"]):
            raise _undescribable(m, index, f"AlexNet's alpha/beta/k {tuple(LRN_ARGS.values())}")
        return "LRN" if m.size == 5 else f"LRN{m.size}"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "BN"
    if isinstance(m, nn.Dropout):
        return "DROPOUT" if m.p == 0.5 else f"DROPOUT{m.p:g}" if m.p not in (0, 1) else f"DROPOUT{int(m.p)}"
    if isinstance(m, nn.Linear):
        return f"FC-{m.out_features}"
    if isinstance(m, nn.Flatten):
        return None
    for cls, word in ((nn.ReLU, "RELU"), (nn.Tanh, "TANH"), (nn.Sigmoid, "SIGMOID")):
        if isinstance(m, cls):
            return word
    raise _undescribable(m, index, "one of the grammar's layers")


def _single(v, m, index) -> int:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if t[0] != t[1]:
        raise _undescribable(m, index, "square windows")
    return t[0]


def _undescribable(m: nn.Module, index: int, needs: str) -> InputError:
    return InputError(f"layer {index} ({m!r}) has no grammar spelling: the grammar needs {needs}")

