"""A real labelled text set available offline, with 10 % of the training labels flipped (issue 19).

The texts are the docstrings of the Python standard library of the running interpreter, labelled
by the top-level module or package they are written in. They are read with :mod:`ast` from the
source files (nothing is imported or run), one text per module, class or function docstring with
at least ``MIN_WORDS`` words, whitespace collapsed; tests (``test``/``tests`` folders, and
``unittest/test``) are left out, and a text that occurs twice anywhere is kept once (overridden
methods repeat their base's docstring), then dropped altogether if two modules share it.

From each of ``MODULES`` the first ``PER_CLASS`` texts of a seeded shuffle are kept; the whole
set is shuffled with the same seed and split into ``N_TEST`` test texts (balanced: the same
number per class) and the rest for training, and ``FLIP`` of the training labels are flipped,
each to a class drawn uniformly from the *other* classes (seeded as well).  Texts are later
truncated by the tokenizer (64 tokens in the benchmarks), not here.

    python benchmarks/mislabel_data.py            # prints the counts and the data set's hash
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

MODULES = ("asyncio", "email", "logging", "unittest", "xml")
PER_CLASS = 120
N_TEST = 100
FLIP = 0.10
MIN_WORDS = 5
SEED = 19


@dataclass(frozen=True)
class Split:
    """The data set: texts and labels, the clean training labels and which were flipped."""

    classes: tuple[str, ...]
    train_texts: list[str]
    train_labels: list[int]  # as given to training: 10 % flipped
    clean_labels: list[int]  # the true modules
    flipped: list[bool]
    test_texts: list[str]
    test_labels: list[int]

    def fingerprint(self) -> str:
        blob = json.dumps(
            [self.classes, self.train_texts, self.train_labels, self.test_texts, self.test_labels]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _skip(rel: Path) -> bool:
    return rel.parts[0] == "site-packages" or bool({"test", "tests"} & set(rel.parts))


def all_modules(stdlib: Path | None = None) -> list[str]:
    """The top-level modules and packages of the standard library (sorted)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    names = {p.stem for p in root.glob("*.py")}
    names |= {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    return sorted(names - {"test", "site-packages", "this", "antigravity"})


def docstrings(
    stdlib: Path | None = None, modules: tuple[str, ...] = MODULES
) -> dict[str, list[str]]:
    """Each module of ``modules`` with its docstrings, in file and line order, deduplicated."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    found: dict[str, list[str]] = {m: [] for m in modules}
    owners: dict[str, set[str]] = {}
    for module in modules:
        files = [root / f"{module}.py"] if (root / f"{module}.py").is_file() else []
        files += sorted((root / module).rglob("*.py")) if (root / module).is_dir() else []
        for path in files:
            if _skip(path.relative_to(root)):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            except (SyntaxError, UnicodeDecodeError):  # lib2to3's test data and the like
                continue
            defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            inner = [n for n in ast.walk(tree) if isinstance(n, defs)]
            nodes = [tree, *sorted(inner, key=lambda n: n.lineno)]
            for node in nodes:
                doc = ast.get_docstring(node)  # type: ignore[arg-type]
                if not doc:
                    continue
                text = " ".join(doc.split())
                if len(text.split()) < MIN_WORDS:
                    continue
                owners.setdefault(text, set()).add(module)
                if text not in found[module]:
                    found[module].append(text)
    return {m: [t for t in texts if len(owners[t]) == 1] for m, texts in found.items()}


def corpus(seed: int = SEED) -> list[str]:
    """Every docstring of the whole standard library (tests left out), deduplicated, shuffled
    with ``seed``: real text of ragged length for the speed benchmarks."""
    texts = sorted({t for ts in docstrings(modules=tuple(all_modules())).values() for t in ts})
    random.Random(seed).shuffle(texts)
    return texts


def windows(n: int, words: int = 12, stride: int = 2, seed: int = SEED) -> list[str]:
    """``n`` short texts: windows of ``words`` words every ``stride`` words over :func:`corpus`
    (cycled with a marker word when it runs out), for indexes of 100,000 examples."""
    flat = " ".join(corpus(seed)).split()
    out: list[str] = []
    k = 0
    while len(out) < n:
        for s in range(0, len(flat) - words, stride):
            out.append(" ".join(flat[s : s + words]) + (f" v{k}" if k else ""))
            if len(out) == n:
                break
        k += 1
    return out


def load(seed: int = SEED, per_class: int = PER_CLASS, n_test: int = N_TEST) -> Split:
    """The seeded split with flipped training labels (see the module docstring)."""
    rng = random.Random(seed)
    by_module = docstrings()
    classes = tuple(MODULES)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    per_test = n_test // len(classes)
    for label, module in enumerate(classes):
        texts = list(by_module[module])
        if len(texts) < per_class:
            raise SystemExit(f"{module}: only {len(texts)} docstrings, {per_class} needed")
        rng.shuffle(texts)
        texts = texts[:per_class]
        test += [(t, label) for t in texts[:per_test]]
        train += [(t, label) for t in texts[per_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    n_flip = round(FLIP * len(train))
    flip_at = set(rng.sample(range(len(train)), n_flip))
    labels = []
    for i, (_, y) in enumerate(train):
        if i in flip_at:
            y = rng.choice([c for c in range(len(classes)) if c != y])
        labels.append(y)
    return Split(
        classes=classes,
        train_texts=[t for t, _ in train],
        train_labels=labels,
        clean_labels=[y for _, y in train],
        flipped=[i in flip_at for i in range(len(train))],
        test_texts=[t for t, _ in test],
        test_labels=[y for _, y in test],
    )


def main() -> int:
    split = load()
    print(f"Python {sys.version.split()[0]}, stdlib {sysconfig.get_paths()['stdlib']}")
    counts = {m: len(v) for m, v in docstrings().items()}
    print(f"docstrings available per module: {counts}")
    print(
        f"classes {split.classes}; train {len(split.train_texts)} "
        f"({sum(split.flipped)} flipped), test {len(split.test_texts)}; "
        f"fingerprint {split.fingerprint()}"
    )
    for t, y, c in list(
        zip(split.train_texts, split.train_labels, split.clean_labels, strict=True)
    )[:5]:
        print(f"  [{split.classes[c]} -> {split.classes[y]}] {t[:100]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
