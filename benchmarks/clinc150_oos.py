"""Out-of-scope detectors and cheap add-ons on a trained CLINC150 model, chosen on val only.

Reads the directory written by ``benchmarks/clinc150.py --dump DIR`` (the model, each epoch's weights,
pooled embeddings + logits of train / val / test / oos_test) and compares, with every threshold chosen
the way ``hotelbot train`` chooses it (macro-F1 over the 150 intents + out_of_scope, on val + oos_val):

* the product's detector: softmax confidence below a threshold -> out_of_scope;
* a nearest-neighbour detector (Sun et al., "Out-of-distribution detection with deep nearest
  neighbors", ICML 2022): cosine similarity to the k-th nearest in-scope training query below a
  threshold -> out_of_scope, the intent still from the classifier;

then reports test + oos_test once for each. ``--combined K ...`` adds the two together (both below their own
threshold; a weighted sum of their standardized scores below one), chosen on val the same way, test reported.
``--fusion`` and ``--average`` print val figures only (argmax in-scope accuracy) for kNN-probability fusion
and for averaging the last epochs' weights. Any directory with the same ``dump.npz`` works (the hotel data's
splits, for instance).

    .venv/bin/python benchmarks/clinc150_oos.py DIR [--combined 1 5 10] [--fusion] [--average 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hotelbot_cli.data import OUT_OF_SCOPE  # noqa: E402

def macro_f1(y: np.ndarray, pred: np.ndarray, n: int) -> float:
    """Macro-F1 over all n labels, a label never true nor predicted scoring 0: hotelbot's
    classification_metrics (scikit-learn's definitions, zero_division=0) vectorised for a threshold sweep."""
    tp = np.bincount(y[pred == y], minlength=n)
    support = np.bincount(pred, minlength=n) + np.bincount(y, minlength=n)
    return float(np.mean(2 * tp / np.maximum(support, 1)))


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Dump:
    def __init__(self, directory: Path) -> None:
        data = np.load(directory / "dump.npz")
        self.labels = [str(v) for v in data["labels"]]
        self.oos = self.labels.index(OUT_OF_SCOPE)
        index = {label: i for i, label in enumerate(self.labels)}
        self.split = {name: {"emb": data[f"{name}_emb"], "logits": data[f"{name}_logits"],
                             "y": np.array([index[str(v)] for v in data[f"{name}_y"]])}
                      for name in ("train", "val", "test", "oos_test")}

    def scores(self, name: str, pred: np.ndarray) -> tuple[float, float]:
        """(in-scope accuracy, out-of-scope recall) in percent, over the split's own rows."""
        y = self.split[name]["y"]
        inside = y != self.oos
        acc = 100 * float(np.mean(pred[inside] == y[inside])) if inside.any() else float("nan")
        rec = 100 * float(np.mean(pred[~inside] == self.oos)) if (~inside).any() else float("nan")
        return acc, rec


def softmax_confidence(d: Dump, name: str) -> np.ndarray:
    z = d.split[name]["logits"]
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)


def knn_similarity(d: Dump, name: str, k: int) -> np.ndarray:
    train = d.split["train"]
    memory = normalized(train["emb"][train["y"] != d.oos])
    sim = normalized(d.split[name]["emb"]) @ memory.T
    return -np.partition(-sim, k - 1, axis=1)[:, k - 1]


def gate(d: Dump, name: str, confidence: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(confidence < threshold, d.oos, d.split[name]["logits"].argmax(axis=1))


def choose_threshold(d: Dump, confidence: np.ndarray, candidates: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, val macro-F1): as hotelbot's calibrate_threshold, every val confidence rounded to 3
    decimals is a candidate (or ``candidates``) and ties go to the lowest."""
    y = d.split["val"]["y"]
    best_t, best = -np.inf, macro_f1(y, gate(d, "val", confidence, -np.inf), len(d.labels))
    for t in np.unique(np.round(confidence, 3)) if candidates is None else candidates:
        score = macro_f1(y, gate(d, "val", confidence, t), len(d.labels))
        if score > best + 1e-12:
            best_t, best = float(t), score
    return best_t, best


def report(d: Dump, title: str, threshold: str, f1: float, confidence: dict[str, np.ndarray], t: float) -> None:
    """One row: the detector gating ``confidence`` at ``t`` on val, test and oos_test."""
    val_in, val_oos = d.scores("val", gate(d, "val", confidence["val"], t))
    test_in, _ = d.scores("test", gate(d, "test", confidence["test"], t))
    _, test_oos = d.scores("oos_test", gate(d, "oos_test", confidence["oos_test"], t))
    print(f"{title:<28} {threshold:>9} {f1:>12.4f} {val_in:>6.2f}/{val_oos:<5.1f} {test_in:>13.2f} {test_oos:>10.1f}")


def detectors(d: Dump) -> None:
    print(f"{'detector':<28} {'threshold':>9} {'val macro-F1':>12} {'val in/oos':>12} {'TEST in-scope':>13} "
          f"{'oos recall':>10}")
    rows = [("softmax confidence (product)", softmax_confidence)] + [
        (f"kNN similarity, k={k}", lambda d, n, k=k: knn_similarity(d, n, k)) for k in (1, 5, 20)]
    for title, confidence_of in rows:
        conf = {name: confidence_of(d, name) for name in ("val", "test", "oos_test")}
        t, f1 = choose_threshold(d, conf["val"])
        report(d, title, f"{t:.3f}", f1, conf, t)


def standardized(d: Dump, confidence_of, names=("val", "test", "oos_test")) -> dict[str, np.ndarray]:
    """A detector's scores on each split, centred and scaled by its val in-scope scores (so that two detectors'
    scores add up on one scale)."""
    conf = {name: confidence_of(d, name) for name in names}
    inside = conf["val"][d.split["val"]["y"] != d.oos]
    return {name: (c - inside.mean()) / (inside.std() or 1.0) for name, c in conf.items()}


def combined(d: Dump, k: int = 5) -> None:
    """Softmax confidence and kNN similarity together, everything chosen on val macro-F1 as above:
    "and": out_of_scope when both are below their own threshold (a 2-D grid of their val quantiles);
    "mix a": out_of_scope when a * kNN + (1 - a) * softmax (each standardized on val in-scope) is below one."""
    soft = standardized(d, softmax_confidence)
    near = standardized(d, lambda d, n: knn_similarity(d, n, k))
    y = d.split["val"]["y"]

    def both(ts: float, tk: float, names=tuple(soft)) -> dict[str, np.ndarray]:
        """Both below their own threshold <=> the larger of the two margins below 0."""
        return {n: np.maximum(soft[n] - ts, near[n] - tk) for n in names}

    qs, qk = np.quantile(soft["val"], np.linspace(0, 0.4, 61)), np.quantile(near["val"], np.linspace(0, 0.4, 61))
    best = (macro_f1(y, gate(d, "val", soft["val"], -np.inf), len(d.labels)), -np.inf, -np.inf)
    for ts in qs:
        for tk in qk:
            f1 = macro_f1(y, gate(d, "val", both(ts, tk, ("val",))["val"], 0.0), len(d.labels))
            if f1 > best[0] + 1e-12:
                best = (f1, ts, tk)
    f1, ts, tk = best
    report(d, f"softmax AND kNN k={k}", f"{ts:.2f}/{tk:.2f}", f1, both(ts, tk), 0.0)
    for a in (0.25, 0.5, 0.75):
        mix = {n: a * near[n] + (1 - a) * soft[n] for n in soft}
        t, f1 = choose_threshold(d, mix["val"], np.unique(np.round(np.quantile(mix["val"], np.linspace(0, 0.4, 401)), 3)))
        report(d, f"mix a={a} kNN k={k}", f"{t:.3f}", f1, mix, t)


def fusion(d: Dump) -> None:
    """Val argmax in-scope accuracy of (1-a) * softmax + a * (kNN vote, weights exp(sim / T))."""
    train = d.split["train"]
    memory, owners = normalized(train["emb"]), train["y"]
    val = d.split["val"]
    z = val["logits"] - val["logits"].max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    sim = normalized(val["emb"]) @ memory.T
    print(f"val argmax in-scope accuracy, classifier alone: {d.scores('val', probs.argmax(axis=1))[0]:.2f}")
    for k in (5, 10, 20):
        nearest = np.argpartition(-sim, k, axis=1)[:, :k]
        for temperature in (0.02, 0.05):
            votes = np.zeros_like(probs)
            weights = np.exp(np.take_along_axis(sim, nearest, axis=1) / temperature)
            np.add.at(votes, (np.repeat(np.arange(len(probs)), k), owners[nearest].ravel()), weights.ravel())
            votes /= votes.sum(axis=1, keepdims=True)
            cells = [f"a={a}: {d.scores('val', ((1 - a) * probs + a * votes).argmax(axis=1))[0]:.2f}"
                     for a in (0.2, 0.4, 1.0)]
            print(f"  kNN k={k:<2} T={temperature}: " + "  ".join(cells))


def average(directory: Path, d: Dump, last_n: int) -> None:
    """Val argmax in-scope accuracy of the mean of the last 1..last_n epochs' trainable weights."""
    import torch
    from safetensors.torch import load_file

    from clinc150 import DATA, encode_split, load
    from hotelbot_cli.modeling import load_classifier

    model, tokenizer = load_classifier(directory / "model")
    params = dict(model.named_parameters())
    epochs = sorted(int(p.stem[5:]) for p in directory.glob("epoch*.safetensors"))
    texts = [e.text for e in load(DATA)["val"]]
    for n in range(1, min(last_n, len(epochs)) + 1):
        snaps = [load_file(str(directory / f"epoch{e}.safetensors")) for e in epochs[-n:]]
        with torch.no_grad():
            for name in snaps[0]:
                params[name].copy_(sum(s[name] for s in snaps) / n)
        _, logits = encode_split(model, tokenizer, texts)
        print(f"mean of epochs {epochs[-n]}-{epochs[-1]}: val argmax in-scope "
              f"{d.scores('val', logits.argmax(axis=1))[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path, help="a directory written by benchmarks/clinc150.py --dump")
    parser.add_argument("--fusion", action="store_true", help="also: kNN-probability fusion (val only)")
    parser.add_argument("--combined", type=int, nargs="*", default=[], metavar="K",
                        help="also: softmax and kNN (k=K) detectors combined, chosen on val, test reported")
    parser.add_argument("--average", type=int, default=0, metavar="N",
                        help="also: average the last 1..N epochs' weights (val only; re-encodes val)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    d = Dump(args.dump)
    detectors(d)
    for k in args.combined:
        combined(d, k)
    if args.fusion:
        fusion(d)
    if args.average:
        average(args.dump, d, args.average)


if __name__ == "__main__":
    main()
