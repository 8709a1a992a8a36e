"""The options of ``featurebank compare`` (standard library only: the command line builds its
flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from featurebank.classical import CLASSIFIERS
from featurebank.options import Interval, Items, Options, check_options, option
from featurebank.spec import DEFAULT_MODEL, SPATIAL_POOLS, TOKEN_POOLS

#: images per class of the screening slice by default: off, because on the digits benchmark a
#: slice of 5 per class screened out the backbone that cross-validation chose on all of TRAIN
#: (benchmarks/results/compare.json, "with_screen")
SCREEN_PER_CLASS = 0


@dataclass(frozen=True)
class CompareOptions:
    """Which candidates ``compare`` ranks, and how it confirms them.

    Parameters
    ----------
    models : tuple of str
        Backbones: registry names, ``timm:NAME`` / ``torchvision:NAME``, or self-describing ONNX
        files (exported, or adopted with ``featurebank adopt``).
    layers : tuple of str, optional
        Cuts to consider, by name, in every backbone (default: each backbone's catalogue but
        its ``logits``).
    pools : tuple of str
        Poolings of the cuts; each is one more pass over the images.
    classifiers : tuple of str
        Classifier kinds cross-validated, each with its regularisation searched.
    top : int
        Feature sets (ranked by LogME) that go on to cross-validation.
    concat : bool
        Also rank the concatenation of the two best cuts of each backbone and pooling.
    folds : int
        Stratified cross-validation folds on TRAIN.
    factor : int
        Successive halving keeps the best 1/factor of the candidates each round, on factor
        times more images.
    screen : int
        Images per class that every backbone and pooling embeds first; LogME on them keeps the
        passes holding the ``top`` sets, and only those embed the rest of TRAIN (0, the default:
        off, every pass embeds all of TRAIN; skipped by itself when the slice would be half of TRAIN or
        more, or there is one pass only).
    seed : int
        Seeds the folds and the halving's image order.
    batch_size : int
        Images per embedding batch.
    budget : float, optional
        Minutes for the whole run. With it, fine-tuning the chosen backbone is one more
        candidate, run only when its estimated minutes fit in what is left (default: none,
        no fine-tuning).
    finetune_epochs : int
        Most epochs of that fine-tuning.
    finetune_from : str, optional
        The ``blocks.N``/``stage.N`` cut above which it trains (default: the deepest such cut
        of the chosen feature set, else of the backbone).
    """

    models: tuple[str, ...] = option((DEFAULT_MODEL,), Items(str), help="a backbone: registry "
                                     "name, timm:NAME, torchvision:NAME or a self-describing "
                                     f"ONNX file; repeat (default: {DEFAULT_MODEL})")
    layers: tuple[str, ...] | None = option(None, None, Items(str),
                                            help="a cut to consider (default: every catalogue "
                                            "cut but logits); repeat")
    pools: tuple[str, ...] = option(("avg",), Items(Options((*SPATIAL_POOLS, *TOKEN_POOLS))),
                                    help="a pooling; repeat (each is one more pass; "
                                    "default: avg)")
    classifiers: tuple[str, ...] = option(CLASSIFIERS, Items(Options(CLASSIFIERS)),
                                          help="a classifier kind, its regularisation "
                                          "searched; repeat (default: all)")
    top: int = option(4, Interval(int, 1, None),
                      help="feature sets, ranked by LogME, that go on to cross-validation")
    concat: bool = option(True, bool, help="also rank the concatenation of each backbone's two "
                          "best cuts")
    folds: int = option(5, Interval(int, 2, None), help="cross-validation folds on TRAIN")
    factor: int = option(3, Interval(int, 2, None), help="successive halving's factor")
    screen: int = option(SCREEN_PER_CLASS, Interval(int, 0, None),
                         help="images per class every backbone embeds first; LogME on them "
                         "keeps the backbones holding the --top sets, only those embed the rest "
                         f"of TRAIN (0: off; default {SCREEN_PER_CLASS}; skipped when the slice "
                         "is half of TRAIN or more)")
    seed: int = option(0, int, help="seeds the folds and the halving's image order")
    batch_size: int = option(32, Interval(int, 1, None), help="images per embedding batch")
    budget: float | None = option(None, None, Interval(float, 0, None, "neither"),
                                  help="minutes for the run: fine-tuning is one more candidate "
                                  "when its estimate fits in what is left (default: no "
                                  "fine-tuning)")
    finetune_epochs: int = option(8, Interval(int, 1, None),
                                  help="most epochs of fine-tuning (with --budget)")
    finetune_from: str | None = option(None, None, str, help="cut above which fine-tuning "
                                       "trains (with --budget; default: the chosen set's "
                                       "deepest blocks.N or stage.N)")

    def __post_init__(self) -> None:
        for name in ("models", "layers", "pools", "classifiers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        check_options(self)
        for name in ("models", "pools", "classifiers"):
            if not getattr(self, name):
                from featurebank.errors import OptionError

                raise OptionError(name, "must name at least one value",
                                  owner=type(self).__name__)
